"""Reading request bodies: JSON with a depth bound, and validation errors a person can act on."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from service.errors import InvalidRequest

M = TypeVar("M", bound=BaseModel)


def _depth_ok(value: Any, limit: int) -> bool:
    """False if containers nest deeper than ``limit``. Recursion is safe: orjson refuses
    documents nested over 1,024 levels, and this walk stops at ``limit``."""

    def walk(node: Any, depth: int) -> bool:
        if depth > limit:
            return False
        children = node.values() if type(node) is dict else node
        for child in children:
            kind = type(child)
            if (kind is dict or kind is list) and not walk(child, depth + 1):
                return False
        return True

    return walk(value, 1)


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
