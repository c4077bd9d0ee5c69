"""Reading request bodies: JSON with a depth bound, and validation errors a person can act on."""

from __future__ import annotations

import re
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from service.errors import InvalidRequest

M = TypeVar("M", bound=BaseModel)


# The depth check runs on the raw bytes, at C speed, before anything is decoded: escapes that
# could hide a quote are dropped, every byte but quotes and brackets is deleted ("{}" become
# "[]"), strings (now only their brackets) are removed, and each ``replace`` pass deletes the
# innermost pairs, so the number of passes is the nesting depth. Only valid JSON reaches the
# answer (the decoder runs first), so quotes pair up and brackets balance.
_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{}')
_STRING = re.compile(rb'"[^"]*"')


def _depth_ok(body: bytes, limit: int) -> bool:
    """False if the JSON document ``body`` nests containers deeper than ``limit``."""
    if b"\\" in body:
        # Escaped backslashes first, then escaped quotes: in "\\\"" only the last quote closes.
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    shape = body.translate(_BRACKETS, _NOT_STRUCTURE).replace(b'""', b"")
    if b'"' in shape:
        shape = _STRING.sub(b"", shape)  # strings that held brackets
    for _ in range(limit):
        if not shape:
            return True
        shape = shape.replace(b"[]", b"")
    return not shape


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
    if not _depth_ok(body, max_depth):
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
