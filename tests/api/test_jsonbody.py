"""The byte-level depth check gives the answer of a walk over the decoded document."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.api.jsonbody import _depth_ok, parse_json
from service.errors import InvalidRequest

# Strings full of what the check must not mistake for structure: brackets, quotes, backslashes.
_TEXT = st.text(alphabet=st.sampled_from('ab[]{}"\\/\u00e9\n'), max_size=8)
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=30,
)


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


@settings(max_examples=300, deadline=None)
@given(_JSON)
def test_depth_of_the_bytes_is_the_depth_of_the_document(value: Any) -> None:
    body = orjson.dumps(value)
    depth = _depth(value)
    assert _depth_ok(body, depth)
    if depth:
        assert not _depth_ok(body, depth - 1)


@pytest.mark.parametrize(
    ("body", "depth"),
    [
        (b'{"a": "[[[[{{", "b": [1, {"c": "\\\\"}]}', 3),
        (b'{"a": "\\"[[[\\\\"}', 1),
        (b'[{"x": "\\\\\\"]"}, []]', 2),
        (b' { "a" : [ ] , "b" : { } } ', 2),
    ],
)
def test_brackets_and_escapes_inside_strings_are_text(body: bytes, depth: int) -> None:
    assert _depth_ok(body, depth)
    assert not _depth_ok(body, depth - 1)


def test_too_deep_is_the_same_answer() -> None:
    body = b'{"a": ' * 6 + b"1" + b"}" * 6
    with pytest.raises(InvalidRequest, match="nested deeper than 5 levels"):
        parse_json(body, max_depth=5)
    assert parse_json(body, max_depth=6)["a"]
