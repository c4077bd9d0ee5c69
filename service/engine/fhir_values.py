"""Reading FHIR datatypes from the slim structs: dates, CodeableConcepts, codes, numbers.

The reader (``service.engine.reader``), the dose arithmetic and the console use these; each
returns None for what it cannot read instead of raising, so one malformed element never
fails a call.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date
from typing import Any

from service.engine.fhir_json import UNSET, CodeableConcept, Coding, Period, Resource
from service.engine.record import Concept
from service.knowledge.valuesets import CodeKey

_from_iso = date.fromisoformat
_INF = float("inf")


def parse_date(value: object) -> date | None:
    """FHIR date/dateTime/instant → date (partial dates to their first day); None if unreadable."""
    if not isinstance(value, str) or len(value) < 4:
        return None
    if len(value) >= 10 and value[4] == "-" and value[7] == "-":
        # The usual YYYY-MM-DD: one C call. With these two dashes ISO accepts nothing else, so a
        # date it returns is the one the field-by-field parse below gives.
        try:
            return _from_iso(value[:10])
        except ValueError:
            pass  # not plain digits: the lenient parse below decides
    try:
        year = int(value[0:4])
        month = int(value[5:7]) if len(value) >= 7 else 1
        day = int(value[8:10]) if len(value) >= 10 else 1
        return date(year, month, day)
    except ValueError:
        return None


def concept_of(value: object) -> Concept | None:
    """A CodeableConcept → Concept; None when it carries neither codes nor text."""
    if not isinstance(value, CodeableConcept):
        return None
    codings: list[CodeKey] = []
    words: list[str] = []
    label = ""
    raw_codings = value.coding
    if isinstance(raw_codings, list):
        for coding in raw_codings:
            if not isinstance(coding, Coding):
                continue
            system, code, display = coding.system, coding.code, coding.display
            if isinstance(code, str) and isinstance(system, str):
                codings.append((system, code))
            if isinstance(display, str) and display:
                words.append(display)
                label = label or display
            elif not label and isinstance(code, str):
                label = code
    return _concept(codings, words, label, value.text)


def _concept(codings: list[CodeKey], words: list[str], label: str, text: object) -> Concept | None:
    if isinstance(text, str) and text:
        words.append(text)
        label = text
    if not codings and not words:
        return None
    return Concept(tuple(codings), " | ".join(words).lower(), label[:200])


def text_concept(text: object) -> Concept | None:
    """A concept named only by text (a reference's ``display``)."""
    return _concept([], [], "", text)


def analyte_of(value: object, by_code: Mapping[CodeKey, str]) -> tuple[str, str] | None:
    """(analyte, label) when a CodeableConcept codes a lab analyte, else None.

    The first coding in ``by_code`` names the analyte and the label is ``concept_of``'s, without
    building the concept: a record's labs are most of its resources.
    """
    if not isinstance(value, CodeableConcept):
        return None
    raw_codings = value.coding
    if not isinstance(raw_codings, list):
        return None
    analyte = None
    label = ""
    for coding in raw_codings:
        if not isinstance(coding, Coding):
            continue
        code, display = coding.code, coding.display
        if analyte is None and isinstance(code, str):
            system = coding.system
            if isinstance(system, str):
                analyte = by_code.get((system, code))
        if isinstance(display, str) and display:
            label = label or display
        elif not label and isinstance(code, str):
            label = code
    if analyte is None:
        return None
    text = value.text
    if isinstance(text, str) and text:
        label = text
    return analyte, label[:200]


def merge_concepts(concepts: Iterable[Concept | None]) -> Concept | None:
    present = [c for c in concepts if c is not None]
    if not present:
        return None
    return Concept(
        tuple(k for c in present for k in c.codings),
        " | ".join(c.text for c in present),
        present[0].label,
    )


def codes_of(value: object) -> Iterable[str]:
    """The ``code`` of each coding of a CodeableConcept."""
    if isinstance(value, CodeableConcept) and isinstance(value.coding, list):
        for coding in value.coding:
            if isinstance(coding, Coding) and isinstance(coding.code, str):
                yield coding.code


def json_codes_of(value: object) -> Iterable[str]:
    """``codes_of`` of a CodeableConcept inside an element kept as plain JSON (a dosage timing)."""
    if isinstance(value, dict) and isinstance(value.get("coding"), list):
        for coding in value["coding"]:
            if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                yield coding["code"]


def status_code_of(value: object) -> str | None:
    return next(iter(codes_of(value)), None)


def resource_kind(resource: Resource) -> Any:
    """``resourceType`` as a dict's ``get`` gave it (None when absent)."""
    kind = resource.resourceType
    return None if kind is UNSET else kind


def resource_ref(resource: Resource) -> str:
    rid = resource.id
    return f"{resource_kind(resource)}/{rid}" if isinstance(rid, str) else ""


def period_start(period: object) -> date | None:
    return parse_date(period.start) if isinstance(period, Period) else None


def number_of(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if number == number and abs(number) != _INF else None


def finite_number(value: float) -> float | None:
    """``number_of`` of an exact int or float."""
    number = float(value)
    return number if number == number and abs(number) != _INF else None


def value_of(raw: object) -> float | None:
    """``number_of``, with the common exact int or float taken without the type checks."""
    return finite_number(raw) if raw.__class__ is float or raw.__class__ is int else number_of(raw)
