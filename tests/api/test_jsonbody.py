"""The byte-level depth check gives the answer of a walk over the decoded document."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.api.jsonbody import _depth_ok, _same_in_both, decode_hook_request, parse_json
from service.engine.fhir_json import Resource
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


def _body_with(resource: bytes) -> bytes:
    return (
        b'{"hook": "patient-view", "hookInstance": "i-1", "context": {"patientId": "p1", '
        b'"userId": "Practitioner/u1"}, "prefetch": {"patient": ' + resource + b"}}"
    )


def _hook_body(extra: bytes) -> bytes:
    """A patient-view body with ``extra`` as the value of an element no reader reads."""
    return _body_with(
        b'{"resourceType": "Patient", "id": "p1", "birthDate": "1970-01-01", "meta": '
        + extra
        + b"}"
    )


@pytest.mark.parametrize(
    "extra",
    [b'"\xff"', b'"\xed\xa0\x80"', b"1e400", b"[1E+400 ]", b"-1.5e999", b"[1, 2,]", b"01"],
)
def test_what_orjson_refuses_in_a_skipped_element_is_still_a_400(extra: bytes) -> None:
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        decode_hook_request(_hook_body(extra), max_depth=64)


@pytest.mark.parametrize("extra", [b"123456789012345678901234567890", b'"5e123a"', b"1e-400"])
def test_numbers_read_as_orjson_reads_them(extra: bytes) -> None:
    request = decode_hook_request(_hook_body(extra), max_depth=64)
    assert request.prefetch is not None
    patient = request.prefetch["patient"]
    assert isinstance(patient, Resource) and patient.birthDate == "1970-01-01"


def test_the_prefetch_is_slim_structs_on_both_paths() -> None:
    fast = decode_hook_request(_hook_body(b"{}"), max_depth=64)
    slow = decode_hook_request(_hook_body(b"12345678901234567890123"), max_depth=64)
    assert fast.prefetch is not None and slow.prefetch is not None
    assert fast.prefetch == slow.prefetch


def test_malformed_elements_are_kept_as_they_came() -> None:
    body = orjson.dumps(
        {
            "resourceType": "Observation",
            "code": "not a concept",
            "valueQuantity": [1],
            "referenceRange": {"low": 1},
            "subject": {"reference": 5},
        }
    )
    resource = decode_hook_request(_body_with(body), max_depth=64)
    assert resource.prefetch is not None
    observation = resource.prefetch["patient"]
    assert isinstance(observation, Resource)
    assert observation.code == "not a concept" and observation.valueQuantity == [1]
    assert observation.referenceRange == {"low": 1}


@pytest.mark.parametrize(
    ("body", "fast"),
    [
        (b'{"id": "adf10f47e3476513557398912740be34", "x": "5e123a"}', True),
        (b'{"id": "12345678901234567890"}', True),
        (b'{"x": 12345678901234567890}', False),
        (b'{"x": [1.5e300 ]}', False),
        (b'{"x": 1E+300}', False),
        (b'{"x": -2.5e+1000}', False),
        (b'{"x": 1e+30}', True),
        (b'{"x": "caf\xc3\xa9"}', True),
        (b'{"x": "caf\xe9"}', False),
    ],
)
def test_only_numbers_that_may_read_apart_take_the_orjson_path(body: bytes, fast: bool) -> None:
    assert _same_in_both(body) is fast
