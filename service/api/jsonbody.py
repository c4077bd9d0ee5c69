"""Reading request bodies: JSON with a depth bound, and validation errors a person can act on."""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec
import orjson
from pydantic import BaseModel, ValidationError

from service.cdshooks.models import HookRequest
from service.engine.fhir_json import UNSET, NotObject, PrefetchValue, UnsetType
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


class _HookBody(msgspec.Struct):
    """A hook request as msgspec decodes it: the CDS Hooks fields as JSON, for the same pydantic
    validation as before, and the prefetch as slim structs (``service.engine.fhir_json``)."""

    hook: Any = UNSET
    hookInstance: Any = UNSET
    fhirServer: Any = UNSET
    fhirAuthorization: Any = UNSET
    context: Any = UNSET
    prefetch: dict[str, PrefetchValue] | NotObject | UnsetType = UNSET


_HOOK_BODY = msgspec.json.Decoder(_HookBody)
_PREFETCH = dict[str, PrefetchValue]
# What msgspec reads apart from orjson: an integer beyond 64 bits (orjson: a float, or a 400 past
# the float range) and, inside skipped fields, text that is not UTF-8 and numbers past the float
# range. A body with invalid UTF-8, or a number of 19+ digits or with an exponent of 3+ digits,
# is read by orjson (text that looks alike, "a1e100 b", only takes the longer path). In the
# shape of the body a digit is "0", "e", "E" and "+" are "e" (so "e+123" holds "e000": one search
# for both exponent forms), what may end a number is " ".
_ENDS_NUMBER = b", \t\n\r]}"
_KEPT = b"0123456789eE+" + _ENDS_NUMBER
_NUMBER_SHAPE = bytes.maketrans(
    _KEPT + bytes(b for b in range(256) if b not in _KEPT),
    b"0000000000eee" + b" " * len(_ENDS_NUMBER) + b"a" * (256 - len(_KEPT)),
)
# Patterns that end a number only when a separator follows their digits (in an id or a word, a
# letter or a quote follows: "5e123a", "adf1...3476513557398912740be34").
_LONG_NUMBERS = (b"0" * 19, b"e000")
_DIGIT, _END = ord("0"), ord(" ")


def _same_in_both(body: bytes) -> bool:
    """True when msgspec reads ``body`` exactly as orjson does (see above)."""
    if not body.isascii():
        try:
            body.decode()
        except UnicodeDecodeError:
            return False
    shape = body.translate(_NUMBER_SHAPE)
    size = len(shape)
    for pattern in _LONG_NUMBERS:
        at = shape.find(pattern)
        while at >= 0:
            end = at + len(pattern)
            while end < size and shape[end] == _DIGIT:
                end += 1
            if end == size or shape[end] == _END:
                return False
            at = shape.find(pattern, end)
    return True


def decode_hook_request(body: bytes, *, max_depth: int) -> HookRequest:
    """The validated hook request, its prefetch decoded straight into slim structs.

    Anything msgspec refuses (bad JSON, not an object), a body nested too deep, and a body msgspec
    might read apart from orjson take the general path (``parse_json`` and ``validate``), so every
    400 and every value reads as before.
    """
    # The depth check first: msgspec's own limit is a RecursionError. On bytes that are not
    # JSON its answer means nothing, but then msgspec refuses them and parse_json answers.
    if body and _depth_ok(body, max_depth) and _same_in_both(body):
        try:
            decoded = _HOOK_BODY.decode(body)
        except (msgspec.MsgspecError, RecursionError):
            pass
        else:
            fields = {
                name: value
                for name in _HookBody.__struct_fields__
                if (value := getattr(decoded, name)) is not UNSET
            }
            return validate(HookRequest, fields)
    data = parse_json(body, max_depth=max_depth)
    request = validate(HookRequest, data)
    if isinstance(request.prefetch, dict):
        request.prefetch = msgspec.convert(request.prefetch, _PREFETCH, strict=True)
    return request
