"""Value-set matching, tested directly: the one matcher the engine's leaves go through, and the one
phrase-pattern builder (ValueSet synonyms, renal drug names, the policy's negation phrases)."""

from __future__ import annotations

import pytest

from service.knowledge.valuesets import ValueSetIndex, ValueSetMatcher, phrase_pattern

SNOMED = "http://snomed.info/sct"


def _valueset(url: str, codes: set[tuple[str, str]], synonyms: tuple[str, ...]) -> ValueSetIndex:
    return ValueSetIndex(
        url=url,
        title=url,
        codes=frozenset(codes),
        displays={},
        synonyms=synonyms,
        pattern=phrase_pattern(synonyms),
    )


RLS = _valueset("rls", {(SNOMED, "32914008")}, ("restless legs", "rls"))
IRON = _valueset("iron", {(SNOMED, "87522002")}, ("iron deficiency",))
CODES_ONLY = _valueset("codes-only", {(SNOMED, "1")}, ())
MATCHER = ValueSetMatcher({v.url: v for v in (RLS, IRON, CODES_ONLY)})


@pytest.mark.parametrize(
    ("url", "codings", "text", "expected"),
    [
        ("rls", ((SNOMED, "32914008"),), "", True),  # a code in the expansion
        ("rls", ((SNOMED, "32914008"),), "something else", True),  # a code wins over text
        ("rls", ((SNOMED, "87522002"),), "", False),  # another set's code
        ("iron", ((SNOMED, "87522002"),), "", True),
        ("rls", (("http://other", "32914008"),), "", False),  # the system is part of the code
        ("rls", (), "worse restless legs at night", True),  # a synonym in the text
        ("rls", (), "rls", True),
        ("rls", (), "urls in the note", False),  # whole words only
        ("rls", (), "rls2", False),
        ("rls", (), "iron deficiency", False),  # another set's synonym
        ("iron", (), "iron deficiency, rls", True),
        ("codes-only", (), "anything", False),  # a set without synonyms matches codes only
        ("codes-only", ((SNOMED, "1"),), "", True),
        ("rls", (), "", False),
    ],
)
def test_matches(url: str, codings: tuple[tuple[str, str], ...], text: str, expected: bool) -> None:
    assert MATCHER.matches(url, codings, text) is expected


def test_membership_keeps_the_text_only_when_some_synonym_occurs() -> None:
    assert MATCHER.membership((), "restless legs") == (frozenset(), "restless legs")
    assert MATCHER.membership((), "no synonym here") == (frozenset(), "")
    urls, _ = MATCHER.membership(((SNOMED, "32914008"), (SNOMED, "87522002")), "")
    assert urls == {"rls", "iron"}


def test_phrase_pattern_prefers_the_longest_phrase_and_lower_cases() -> None:
    pattern = phrase_pattern(("Iron", "iron deficiency", "a.b"))
    assert pattern is not None
    assert pattern.findall("iron deficiency and iron") == ["iron deficiency", "iron"]
    assert pattern.search("a.b") and not pattern.search("axb")  # phrases are escaped
    assert not pattern.search("ironic")
    assert phrase_pattern(()) is None
