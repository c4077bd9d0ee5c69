"""Reading request bodies: JSON with a depth bound, and validation errors a person can act on."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from service.errors import InvalidRequest

M = TypeVar("M", bound=BaseModel)


def _depth_ok(value: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return False
        if isinstance(node, dict):
            stack.extend(
                (child, depth + 1) for child in node.values() if isinstance(child, dict | list)
            )
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node if isinstance(child, dict | list))
    return True


def parse_json(body: bytes, *, max_depth: int) -> Any:
    if not body:
        raise InvalidRequest("Request body is empty; a JSON object is required")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"Request body is not valid JSON: {exc.msg} (at byte {exc.pos})"
        ) from None
    if not isinstance(data, dict):
        raise InvalidRequest("Request body must be a JSON object")
    if not _depth_ok(data, max_depth):
        raise InvalidRequest(f"Request body is nested deeper than {max_depth} levels")
    return data


def validate(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_input=False, include_url=False)[:10]:
            where = ".".join(str(p) for p in error["loc"]) or "body"
            problems.append(f"{where}: {error['msg']}")
        raise InvalidRequest("Invalid request: " + "; ".join(problems)) from None
