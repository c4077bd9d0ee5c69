"""The patient's record as the rules see it: concepts, findings, labs, medications, orders,
journal nights and procedures, already read and normalised. Reading them from FHIR JSON is
``service.engine.reader``'s job; the rules and the cards read only these types.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Literal

import msgspec

from service.knowledge.schema import FindingKind
from service.knowledge.valuesets import CodeKey


class _Value(msgspec.Struct, frozen=True, gc=False):
    """An immutable record value. A msgspec struct, not a frozen dataclass: a heavy record builds
    thousands of these per call, and a frozen dataclass's ``__init__`` costs ~15x as much.
    Untracked by the garbage collector: values hold no cycles."""


class Concept(_Value, frozen=True, gc=False):
    codings: tuple[CodeKey, ...]
    text: str
    """Lower-case ``text`` and coding displays, for synonym matching."""
    label: str
    """What a clinician would call it: the text, else the first display, else the code."""


class Finding(_Value, frozen=True, gc=False):
    kind: FindingKind
    ref: str
    concept: Concept
    when: date | None
    status: str | None = None
    """A Condition's clinicalStatus code (``recurrence``, ``relapse``...)."""


class LabResult(_Value, frozen=True, gc=False):
    analyte: str
    ref: str
    value: float
    """In the analyte's canonical unit."""
    unit: str
    raw_value: float
    raw_unit: str
    when: date
    interpretation: frozenset[str]
    ref_low: float | None
    ref_high: float | None
    label: str
    comparator: str | None = None
    """``<``, ``<=``, ``>``, ``>=`` when the lab reported a bound ("<10"), not a value."""


class IgnoredLab(_Value, frozen=True, gc=False):
    """A result left out because its unit cannot be converted exactly (never guessed)."""

    analyte: str
    ref: str
    raw_value: float
    raw_unit: str
    when: date


class MedicationUse(_Value, frozen=True, gc=False):
    ref: str
    concept: Concept
    started: date | None
    last: date | None = None
    """The latest date the record gives for a completed course (its end, else its start)."""
    daily_mg: float | None = None
    """Total daily dose in mg from the structured dosage, when every part of it is readable."""


class DraftOrder(_Value, frozen=True, gc=False):
    ref: str
    resource_type: str
    concept: Concept


class ProcedureEvent(_Value, frozen=True, gc=False):
    """A procedure or study on the record: ordered (not yet done) or done."""

    state: Literal["ordered", "done"]
    ref: str
    concept: Concept
    when: date | None


class JournalNight(_Value, frozen=True, gc=False):
    ref: str
    night: date
    answers: Mapping[str, bool | float | str]
    authored: str = ""


@dataclass
class PatientRecord:
    patient_id: str
    as_of: date
    birth_date: date | None = None
    findings: list[Finding] = field(default_factory=list)
    labs: dict[str, list[LabResult]] = field(default_factory=dict)
    unusable_labs: int = 0
    ignored_labs: dict[str, list[IgnoredLab]] = field(default_factory=dict)
    """Results whose unit cannot be converted, newest first: reported, never used."""
    medications: list[MedicationUse] = field(default_factory=list)
    completed_medications: list[MedicationUse] = field(default_factory=list)
    """Completed courses, read only for "given recently" (``recent_days``) conditions."""
    drafts: list[DraftOrder] = field(default_factory=list)
    nights: list[JournalNight] = field(default_factory=list)
    procedures: list[ProcedureEvent] = field(default_factory=list)
    unavailable: frozenset[str] = frozenset()
    skipped: int = 0

    @property
    def age_years(self) -> int | None:
        return None if self.birth_date is None else age_on(self.birth_date, self.as_of)


def age_on(born: date, today: date) -> int:
    """Whole years from ``born`` to ``today`` (the rules' age and the console's)."""
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))
