"""The patient's record as the rules see it, read from raw FHIR R4 JSON.

Reading is defensive and cheap: resources arrive as dicts (orjson), are filtered by type and
status first, and only the elements some rule reads are touched. A resource that cannot be read is
skipped and counted; it never fails the call. The FHIR status semantics below are FHIR's, not
clinical knowledge: which statuses mean "usable", "active", "entered in error".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from operator import attrgetter
from typing import Any, Literal

from service.knowledge.base import CODESYSTEM_URL, KnowledgeBase
from service.knowledge.valuesets import CodeKey

FindingKind = Literal["condition", "observation", "journal"]

USABLE_OBSERVATION_STATUS = frozenset({"final", "amended", "corrected"})
REPORTED_OBSERVATION_STATUS = USABLE_OBSERVATION_STATUS | {"preliminary", "registered"}
ACTIVE_CONDITION_STATUS = frozenset({"active", "recurrence", "relapse"})
EXCLUDED_VERIFICATION_STATUS = frozenset({"refuted", "entered-in-error"})
ACTIVE_REQUEST_STATUS = frozenset({"active", "on-hold"})
ACTIVE_STATEMENT_STATUS = frozenset({"active", "intended"})
COMPLETED_MEDICATION_STATUS = "completed"
COMPLETED_JOURNAL_STATUS = frozenset({"completed", "amended"})
# Procedures and studies: what "ordered" and "done" mean for each resource type (FHIR R4 status
# value sets). A draft ServiceRequest is an order being written: the order hooks judge it.
ORDERED_REQUEST_STATUS = frozenset({"active", "on-hold"})
DONE_REQUEST_STATUS = frozenset({"completed"})
ORDERED_PROCEDURE_STATUS = frozenset({"preparation", "in-progress", "on-hold"})
DONE_PROCEDURE_STATUS = frozenset({"completed"})
DONE_REPORT_STATUS = frozenset(
    {"partial", "preliminary", "final", "amended", "corrected", "appended"}
)
SYMPTOM_CATEGORIES = frozenset({"survey", "exam"})
UCUM = "http://unitsofmeasure.org"
MAX_ITEM_DEPTH = 8
# Clause boundaries for negation scope: punctuation, a spaced dash, and the " | " joining the
# text and the displays of one concept.
_CLAUSE = re.compile(r"[.,;:()\[\]|]| - | \u2013 ")

# Data categories: one per prefetch key family, so a failed query disables only the rules that
# need that data.
CATEGORIES = (
    "patient",
    "conditions",
    "observations",
    "symptoms",
    "medications",
    "journal",
    "procedures",
)


@dataclass(frozen=True, slots=True)
class Concept:
    codings: tuple[CodeKey, ...]
    text: str
    """Lower-case ``text`` and coding displays, for synonym matching."""
    label: str
    """What a clinician would call it: the text, else the first display, else the code."""


@dataclass(frozen=True, slots=True)
class Finding:
    kind: FindingKind
    ref: str
    concept: Concept
    when: date | None
    status: str | None = None
    """A Condition's clinicalStatus code (``recurrence``, ``relapse``...)."""


@dataclass(frozen=True, slots=True)
class LabResult:
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


@dataclass(frozen=True, slots=True)
class IgnoredLab:
    """A result left out because its unit cannot be converted exactly (never guessed)."""

    analyte: str
    ref: str
    raw_value: float
    raw_unit: str
    when: date


@dataclass(frozen=True, slots=True)
class MedicationUse:
    ref: str
    concept: Concept
    started: date | None
    last: date | None = None
    """The latest date the record gives for a completed course (its end, else its start)."""
    daily_mg: float | None = None
    """Total daily dose in mg from the structured dosage, when every part of it is readable."""


@dataclass(frozen=True, slots=True)
class DraftOrder:
    ref: str
    resource_type: str
    concept: Concept


@dataclass(frozen=True, slots=True)
class ProcedureEvent:
    """A procedure or study on the record: ordered (not yet done) or done."""

    state: Literal["ordered", "done"]
    ref: str
    concept: Concept
    when: date | None


@dataclass(frozen=True, slots=True)
class JournalNight:
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
        if self.birth_date is None:
            return None
        born, today = self.birth_date, self.as_of
        return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


# --- primitives -------------------------------------------------------------------------------

_from_iso = date.fromisoformat
_ONLY_VALUE = {
    "valueBoolean": "bool",
    "valueInteger": "number",
    "valueDecimal": "number",
    "valueDate": "text",
    "valueDateTime": "text",
    "valueTime": "text",
    "valueString": "text",
}
_INF = float("inf")
_WHEN = attrgetter("when")
_NIGHT = attrgetter("night")
_NO_FLAGS: frozenset[str] = frozenset()


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
    """A CodeableConcept (dict) → Concept; None when it carries neither codes nor text."""
    if not isinstance(value, dict):
        return None
    codings: list[CodeKey] = []
    words: list[str] = []
    label = ""
    raw_codings = value.get("coding")
    if isinstance(raw_codings, list):
        for coding in raw_codings:
            if not isinstance(coding, dict):
                continue
            system, code, display = coding.get("system"), coding.get("code"), coding.get("display")
            if isinstance(code, str) and isinstance(system, str):
                codings.append((system, code))
            if isinstance(display, str) and display:
                words.append(display)
                label = label or display
            elif not label and isinstance(code, str):
                label = code
    text = value.get("text")
    if isinstance(text, str) and text:
        words.append(text)
        label = text
    if not codings and not words:
        return None
    return Concept(tuple(codings), " | ".join(words).lower(), label[:200])


def _analyte_of(value: object, by_code: Mapping[CodeKey, str]) -> tuple[str, str] | None:
    """(analyte, label) when a CodeableConcept codes a lab analyte, else None.

    The first coding in ``by_code`` names the analyte and the label is ``concept_of``'s, without
    building the concept: a record's labs are most of its resources.
    """
    if not isinstance(value, dict):
        return None
    raw_codings = value.get("coding")
    if not isinstance(raw_codings, list):
        return None
    analyte = None
    label = ""
    for coding in raw_codings:
        if not isinstance(coding, dict):
            continue
        code, display = coding.get("code"), coding.get("display")
        if analyte is None and isinstance(code, str):
            system = coding.get("system")
            if isinstance(system, str):
                analyte = by_code.get((system, code))
        if isinstance(display, str) and display:
            label = label or display
        elif not label and isinstance(code, str):
            label = code
    if analyte is None:
        return None
    text = value.get("text")
    if isinstance(text, str) and text:
        label = text
    return analyte, label[:200]


def _merge(concepts: Iterable[Concept | None]) -> Concept | None:
    present = [c for c in concepts if c is not None]
    if not present:
        return None
    return Concept(
        tuple(k for c in present for k in c.codings),
        " | ".join(c.text for c in present),
        present[0].label,
    )


def _codes(value: object) -> Iterable[str]:
    """The ``code`` of each coding of a CodeableConcept."""
    if isinstance(value, dict) and isinstance(value.get("coding"), list):
        for coding in value["coding"]:
            if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                yield coding["code"]


def _status_code(value: object) -> str | None:
    return next(iter(_codes(value)), None)


def _ref(resource: dict[str, Any]) -> str:
    rid = resource.get("id")
    return f"{resource.get('resourceType')}/{rid}" if isinstance(rid, str) else ""


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if number == number and abs(number) != _INF else None


def _finite(value: float) -> float | None:
    """``_number`` of an exact int or float."""
    number = float(value)
    return number if number == number and abs(number) != _INF else None


# --- the reader -------------------------------------------------------------------------------


class RecordReader:
    """Turns resources into a ``PatientRecord``; one per knowledge base, reused across calls."""

    def __init__(self, kb: KnowledgeBase) -> None:
        self.kb = kb
        self.analyte_by_code = kb.analyte_by_code
        self.unit_aliases = kb.unit_aliases
        self.journal_url = kb.journal_url
        self.absent_codes = frozenset(c.code for c in kb.policy.absent_codes)
        self.not_about_patient = kb.not_about_patient
        self.negation_after = kb.negation_after
        self.negation_breaks = kb.negation_breaks
        self._conversions = {name: a.conversions for name, a in kb.analytes.items()}
        self._units = {name: a.unit for name, a in kb.analytes.items()}
        self._lookback = kb.policy.finding_lookback_days
        # A journal answer's finding concept depends only on its linkId: built once, shared.
        self._journal_concepts = {
            link_id: Concept(
                ((CODESYSTEM_URL, link_id),), "", kb.journal_labels.get(link_id, link_id)
            )
            for link_id in kb.journal_items
        }

    def _codes_only(self, concept: Concept | None) -> Concept | None:
        """The concept with negated text removed, NegEx-style, so text synonyms match only what
        is asserted about the patient; every code still counts.

        Within each clause (split at punctuation, " - ", " | " and scope breaks such as "but"),
        a trigger before a term negates the rest of the clause ("hypnic jerks, no seizures" keeps
        "hypnic jerks"); a trigger after a term negates the clause up to it ("rls ruled out").
        "Restless legs not controlled on gabapentin" keeps "restless legs": its "not" follows."""
        before = self.not_about_patient
        if concept is None or not concept.text or before is None:
            return concept
        after, breaks = self.negation_after, self.negation_breaks
        if not before.search(concept.text) and not (after and after.search(concept.text)):
            return concept
        kept: list[str] = []
        for clause in _CLAUSE.split(concept.text):
            segments = breaks.split(clause) if breaks is not None else [clause]
            for segment in segments:
                start = 0
                if after is not None:
                    for found in after.finditer(segment):
                        start = found.end()
                first = before.search(segment)
                end = first.start() if first is not None else len(segment)
                text = segment[start:end].strip() if start < end else ""
                if text:
                    kept.append(text)
        text = " | ".join(kept)
        if text == concept.text:
            return concept
        return Concept(concept.codings, text, concept.label)

    def read(
        self,
        patient_id: str,
        as_of: date,
        resources: Iterable[object],
        *,
        unavailable: Iterable[str] = (),
        drafts: Iterable[object] = (),
        selections: frozenset[str] | None = None,
    ) -> PatientRecord:
        record = PatientRecord(patient_id=patient_id, as_of=as_of)
        record.unavailable = frozenset(unavailable)
        medications: dict[str, dict[str, Any]] = {}
        pending_meds: list[dict[str, Any]] = []
        seen: set[str] = set()
        subjects: dict[str, bool] = {}  # reference → about this patient, once per distinct value
        for resource in resources:
            if not isinstance(resource, dict):
                record.skipped += 1
                continue
            kind = resource.get("resourceType")
            rid = resource.get("id")
            ref = f"{kind}/{rid}" if isinstance(rid, str) else ""
            if ref:
                if ref in seen:
                    continue  # the same resource from two prefetch keys counts once
                seen.add(ref)
            if not self._about_patient(resource, record.patient_id, subjects):
                record.skipped += 1  # another patient's data must never reach this patient's cards
                continue
            try:
                if kind == "Observation":
                    self._observation(record, resource, ref)
                elif kind == "Condition":
                    self._condition(record, resource)
                elif kind in ("MedicationRequest", "MedicationStatement"):
                    pending_meds.append(resource)
                elif kind == "Medication":
                    medications[ref] = resource
                elif kind == "QuestionnaireResponse":
                    self._journal(record, resource)
                elif kind == "Patient":
                    self._patient(record, resource)
                elif kind in ("ServiceRequest", "Procedure", "DiagnosticReport"):
                    self._procedure(record, resource, kind, ref)
            except (TypeError, ValueError, AttributeError, KeyError, IndexError):
                record.skipped += 1
        for resource in pending_meds:
            try:
                self._medication(record, resource, medications)
            except (TypeError, ValueError, AttributeError, KeyError, IndexError):
                record.skipped += 1
        draft_list = list(drafts)
        draft_medications = {
            _ref(r): r
            for r in draft_list
            if isinstance(r, dict) and r.get("resourceType") == "Medication"
        }
        for resource in draft_list:
            if isinstance(resource, dict) and resource.get("resourceType") == "Medication":
                continue
            try:
                self._draft(record, resource, selections, draft_medications)
            except (TypeError, ValueError, AttributeError, KeyError, IndexError):
                record.skipped += 1
        self._derive(record)
        _one_entry_per_night(record)
        for results in record.labs.values():
            results.sort(key=_WHEN, reverse=True)
        for ignored in record.ignored_labs.values():
            ignored.sort(key=_WHEN, reverse=True)
        record.nights.sort(key=_NIGHT, reverse=True)
        return record

    @staticmethod
    def _about_patient(
        resource: dict[str, Any], patient_id: str, known: dict[str, bool] | None = None
    ) -> bool:
        """False when the resource's subject/patient names a different Patient."""
        for key in ("subject", "patient"):
            reference = resource.get(key)
            target = reference.get("reference") if isinstance(reference, dict) else None
            if isinstance(target, str) and "Patient/" in target:
                if known is not None:
                    about = known.get(target)
                    if about is not None:
                        return about
                about = target.rstrip("/").rsplit("Patient/", 1)[1].split("/")[0] == patient_id
                if known is not None:
                    known[target] = about
                return about
        return True

    def _derive(self, record: PatientRecord) -> None:
        """Compute a value the lab did not report (TSAT from iron and TIBC on the same day)."""
        for name, analyte in self.kb.analytes.items():
            spec = analyte.derived
            if spec is None:
                continue
            reported = {lab.when for lab in record.labs.get(name, [])}
            denominators = {lab.when: lab for lab in record.labs.get(spec.denominator, [])}
            for top in record.labs.get(spec.numerator, []):
                bottom = denominators.get(top.when)
                if top.when in reported or bottom is None or bottom.value <= 0:
                    continue
                value = top.value / bottom.value * spec.factor
                record.labs.setdefault(name, []).append(
                    LabResult(
                        analyte=name,
                        ref=top.ref,
                        value=value,
                        unit=analyte.unit,
                        raw_value=value,
                        raw_unit=analyte.unit,
                        when=top.when,
                        interpretation=frozenset(),
                        ref_low=None,
                        ref_high=None,
                        label=f"{analyte.display} (calculated)",
                    )
                )
                reported.add(top.when)

    # Patient ---------------------------------------------------------------------------------

    def _patient(self, record: PatientRecord, resource: dict[str, Any]) -> None:
        if resource.get("id") not in (None, record.patient_id):
            return
        record.birth_date = parse_date(resource.get("birthDate"))

    # Condition -------------------------------------------------------------------------------

    def _condition(self, record: PatientRecord, resource: dict[str, Any]) -> None:
        verification = _status_code(resource.get("verificationStatus"))
        if verification in EXCLUDED_VERIFICATION_STATUS:
            return
        clinical = _status_code(resource.get("clinicalStatus"))
        if clinical is not None and clinical not in ACTIVE_CONDITION_STATUS:
            return
        concept = self._codes_only(concept_of(resource.get("code")))
        if concept is None:
            record.skipped += 1
            return
        period = resource.get("onsetPeriod")
        when = (
            parse_date(resource.get("onsetDateTime"))
            or (parse_date(period.get("start")) if isinstance(period, dict) else None)
            or parse_date(resource.get("recordedDate"))
        )
        # No clinical status (allowed for some encounter diagnoses): only a recent one counts.
        lookback = self.kb.policy.finding_lookback_days
        if clinical is None and (when is None or (record.as_of - when).days > lookback):
            return
        record.findings.append(Finding("condition", _ref(resource), concept, when, clinical))

    # Procedures and studies ------------------------------------------------------------------

    def _procedure(
        self, record: PatientRecord, resource: dict[str, Any], kind: str, ref: str
    ) -> None:
        """An ordered or done study (a sleep study already requested or reported)."""
        status = resource.get("status")
        state: Literal["ordered", "done"]
        if kind == "ServiceRequest":
            if status in DONE_REQUEST_STATUS:
                state = "done"
            elif status in ORDERED_REQUEST_STATUS and resource.get("intent") != "proposal":
                state = "ordered"
            else:
                return
            when = parse_date(resource.get("occurrenceDateTime")) or parse_date(
                resource.get("authoredOn")
            )
        elif kind == "Procedure":
            if status in DONE_PROCEDURE_STATUS:
                state = "done"
            elif status in ORDERED_PROCEDURE_STATUS:
                state = "ordered"
            else:
                return
            period = resource.get("performedPeriod")
            when = parse_date(resource.get("performedDateTime")) or (
                parse_date(period.get("start")) if isinstance(period, dict) else None
            )
        else:
            if status not in DONE_REPORT_STATUS:
                return
            state = "done"
            when = self._effective(resource)
        concept = self._codes_only(concept_of(resource.get("code")))
        if concept is None:
            record.skipped += 1
            return
        record.procedures.append(ProcedureEvent(state, ref, concept, when))

    # Observation -----------------------------------------------------------------------------

    def _observation(self, record: PatientRecord, resource: dict[str, Any], ref: str) -> None:
        status = resource.get("status")
        code = resource.get("code")
        found = _analyte_of(code, self.analyte_by_code)
        if found is not None:
            analyte, label = found
            if status not in USABLE_OBSERVATION_STATUS:
                record.unusable_labs += 1
                return
            when = self._effective(resource)
            if when is None:
                record.unusable_labs += 1
                return
            lab = self._lab(analyte, resource, when, label, ref)
            if lab is None:
                record.unusable_labs += 1
                return
            if isinstance(lab, IgnoredLab):
                record.unusable_labs += 1
                record.ignored_labs.setdefault(analyte, []).append(lab)
                return
            labs = record.labs.get(analyte)
            if labs is None:
                record.labs[analyte] = [lab]
            else:
                labs.append(lab)
            return
        concept = concept_of(code)
        if concept is None:
            record.skipped += 1
            return
        if status not in REPORTED_OBSERVATION_STATUS:
            return
        if not self._positive(resource):
            return
        when = self._effective(resource)
        # The value is part of the finding: LOINC "Pregnancy status" = SNOMED "Pregnant".
        concept = self._codes_only(
            _merge([concept, concept_of(resource.get("valueCodeableConcept"))])
        )
        assert concept is not None
        record.findings.append(Finding("observation", ref, concept, when))

    @staticmethod
    def _effective(resource: dict[str, Any]) -> date | None:
        when = parse_date(resource.get("effectiveDateTime"))
        if when is not None:
            return when
        period = resource.get("effectivePeriod")
        return (
            (parse_date(period.get("start")) if isinstance(period, dict) else None)
            or parse_date(resource.get("effectiveInstant"))
            or parse_date(resource.get("issued"))
        )

    def _positive(self, resource: dict[str, Any]) -> bool:
        """A symptom Observation counts unless its value says the symptom is absent."""
        if "valueBoolean" in resource:
            return resource["valueBoolean"] is True
        for key in ("valueInteger", "valueQuantity"):
            if key in resource:
                raw = resource[key]
                number = _number(raw.get("value") if isinstance(raw, dict) else raw)
                return number is not None and number > 0
        absent = self.absent_codes
        value = resource.get("valueCodeableConcept")
        if isinstance(value, dict):
            return not set(_codes(value)) & absent
        interpretation = resource.get("interpretation")
        if isinstance(interpretation, list):
            for item in interpretation:
                if set(_codes(item)) & absent:
                    return False
        return True

    def _lab(
        self, analyte: str, resource: dict[str, Any], when: date, label: str, ref: str
    ) -> LabResult | IgnoredLab | None:
        # Called for every lab Observation of the record: the helpers are inlined.
        quantity = resource.get("valueQuantity")
        raw_unit = ""
        comparator = None
        if isinstance(quantity, dict):
            comparator = quantity.get("comparator")
            if comparator not in (None, "<", "<=", ">", ">="):
                return None  # "ad" (sufficient to achieve) is not a measured bound
            raw = quantity.get("value")
            code = quantity.get("code")
            if isinstance(code, str) and quantity.get("system") in (UCUM, None):
                raw_unit = code
            else:
                unit_text = quantity.get("unit")
                if isinstance(unit_text, str):
                    raw_unit = unit_text
        else:
            raw = resource.get("valueInteger")
        value = _finite(raw) if raw.__class__ is float or raw.__class__ is int else _number(raw)
        if value is None:
            return None
        conversions = self._conversions[analyte]
        aliases = self.unit_aliases
        factor = conversions.get(aliases.get(raw_unit, raw_unit))
        if factor is None:
            # An unknown unit is never guessed; the result is kept to say why it was not used.
            return IgnoredLab(analyte, ref, value, raw_unit, when)
        ref_low = ref_high = None
        ranges = resource.get("referenceRange")
        if isinstance(ranges, list) and ranges and isinstance(ranges[0], dict):
            first = ranges[0]
            for side in ("low", "high"):
                bound = first.get(side)
                if not isinstance(bound, dict):
                    continue
                raw = bound.get("value")
                number = (
                    _finite(raw) if raw.__class__ is float or raw.__class__ is int else _number(raw)
                )
                unit = bound.get("code") or bound.get("unit") or ""
                if not isinstance(unit, str):
                    unit = ""
                scale = conversions.get(aliases.get(unit, unit))
                if number is not None and scale is not None:
                    if side == "low":
                        ref_low = number * scale
                    else:
                        ref_high = number * scale
        interpretation = _NO_FLAGS
        raw_interp = resource.get("interpretation")
        if isinstance(raw_interp, list) and raw_interp:
            flags: set[str] = set()
            for item in raw_interp:
                codings = item.get("coding") if isinstance(item, dict) else None
                if isinstance(codings, list):
                    for coding in codings:
                        if isinstance(coding, dict):
                            flag = coding.get("code")
                            if isinstance(flag, str):
                                flags.add(flag)
            interpretation = frozenset(flags)
        return LabResult(
            analyte,
            ref,
            value * factor,
            self._units[analyte],
            value,
            raw_unit,
            when,
            interpretation,
            ref_low,
            ref_high,
            label,
            comparator,
        )

    # Medications -----------------------------------------------------------------------------

    def _medication_concept(
        self, resource: dict[str, Any], medications: Mapping[str, dict[str, Any]]
    ) -> Concept | None:
        concept = concept_of(resource.get("medicationCodeableConcept"))
        if concept is not None:
            return concept
        reference = resource.get("medicationReference")
        target = reference.get("reference") if isinstance(reference, dict) else None
        medication: object = None
        if isinstance(target, str) and target.startswith("#"):
            for contained in resource.get("contained") or []:
                if isinstance(contained, dict) and contained.get("id") == target[1:]:
                    medication = contained
        elif isinstance(target, str):
            medication = medications.get(target) or medications.get(
                "/".join(target.rstrip("/").split("/")[-2:])
            )
        fallback = concept_of({"text": reference.get("display")}) if reference else None
        if not isinstance(medication, dict):
            return fallback
        ingredients = [
            concept_of(item.get("itemCodeableConcept"))
            for item in medication.get("ingredient") or []
            if isinstance(item, dict)
        ]
        return _merge([concept_of(medication.get("code")), *ingredients, fallback])

    def _medication(
        self,
        record: PatientRecord,
        resource: dict[str, Any],
        medications: Mapping[str, dict[str, Any]],
    ) -> None:
        kind, status = resource.get("resourceType"), resource.get("status")
        completed = status == COMPLETED_MEDICATION_STATUS
        ended: date | None = None
        if kind == "MedicationRequest":
            if status not in ACTIVE_REQUEST_STATUS and not completed:
                return
            started = parse_date(resource.get("authoredOn"))
            if completed:
                ended = _bounds_end(resource.get("dosageInstruction"))
        else:
            if status not in ACTIVE_STATEMENT_STATUS and not completed:
                return
            period = resource.get("effectivePeriod")
            started = (
                parse_date(resource.get("effectiveDateTime"))
                or (parse_date(period.get("start")) if isinstance(period, dict) else None)
                or parse_date(resource.get("dateAsserted"))
            )
            if completed and isinstance(period, dict):
                ended = parse_date(period.get("end"))
        concept = self._medication_concept(resource, medications)
        if concept is None:
            record.skipped += 1
            return
        if completed:
            # Only "given recently" conditions read these; they are never an active medicine.
            last = ended or started
            record.completed_medications.append(
                MedicationUse(_ref(resource), concept, started, last)
            )
            return
        dosages = resource.get("dosageInstruction" if kind == "MedicationRequest" else "dosage")
        record.medications.append(
            MedicationUse(_ref(resource), concept, started, daily_mg=daily_mg(dosages, concept))
        )
        # The indication of an active medicine is a condition the patient has: Tylenol PM
        # "for restless legs" (the FHIR MedicationStatement example) documents RLS.
        reasons = resource.get("reasonCode")
        if isinstance(reasons, list):
            for reason in reasons[:5]:
                indication = self._codes_only(concept_of(reason))
                if indication is not None:
                    record.findings.append(
                        Finding("condition", _ref(resource), indication, started)
                    )

    def _draft(
        self,
        record: PatientRecord,
        resource: object,
        selections: frozenset[str] | None,
        medications: Mapping[str, dict[str, Any]],
    ) -> None:
        if not isinstance(resource, dict):
            record.skipped += 1
            return
        ref = _ref(resource)
        if selections is not None and ref not in selections:
            return
        kind = str(resource.get("resourceType"))
        if kind in ("MedicationRequest", "MedicationStatement"):
            concept = self._medication_concept(resource, medications)
        else:
            concept = concept_of(resource.get("code"))
        if concept is None:
            record.skipped += 1
            return
        record.drafts.append(DraftOrder(ref, kind, concept))

    # Sleep journal ---------------------------------------------------------------------------

    def _journal(self, record: PatientRecord, resource: dict[str, Any]) -> None:
        questionnaire = resource.get("questionnaire")
        if not isinstance(questionnaire, str) or questionnaire.split("|")[0] != self.journal_url:
            return
        if resource.get("status") not in COMPLETED_JOURNAL_STATUS:
            return
        answers: dict[str, bool | float | str] = {}
        self._answers(resource.get("item"), answers, 0)
        night = parse_date(answers.get("night-date")) or parse_date(resource.get("authored"))
        if night is None:
            record.skipped += 1
            return
        ref = _ref(resource)
        authored = str(resource.get("authored") or "")
        record.nights.append(JournalNight(ref, night, answers, authored))
        # Codes only: "tingling-numbness" must not match a "numbness" synonym.
        concepts = self._journal_concepts
        findings = record.findings
        for link_id, value in answers.items():
            concept = concepts.get(link_id)
            if concept is not None and (value is True or (value.__class__ is float and value > 0)):
                findings.append(Finding("journal", f"{ref}#{link_id}", concept, night))

    def _answers(self, items: object, out: dict[str, bool | float | str], depth: int) -> None:
        if not isinstance(items, list) or depth > MAX_ITEM_DEPTH:
            return
        for item in items:
            if not isinstance(item, dict):
                continue
            link_id = item.get("linkId")
            answers = item.get("answer")
            if isinstance(link_id, str) and isinstance(answers, list) and answers:
                first = answers[0]
                if isinstance(first, dict):
                    value: bool | float | str | None
                    if len(first) == 1:
                        # The usual answer: one value[x] and nothing else (``_answer_value``).
                        ((key, raw),) = first.items()
                        kind = _ONLY_VALUE.get(key)
                        if kind == "bool":
                            value = raw if raw is True or raw is False else None
                        elif kind == "number":
                            value = (
                                _finite(raw)
                                if raw.__class__ is float or raw.__class__ is int
                                else _number(raw)
                            )
                        elif kind == "text":
                            value = str(raw) if isinstance(raw, str) else None
                        else:
                            value = _answer_value(first)
                    else:
                        value = _answer_value(first)
                    if value is not None:
                        out[link_id] = value
                    if len(answers) == 1:
                        if "item" in first:
                            self._answers(first["item"], out, depth + 1)
                    else:
                        for answer in answers:
                            if isinstance(answer, dict) and "item" in answer:
                                self._answers(answer["item"], out, depth + 1)
            if "item" in item:  # most items have no children: skip the call
                self._answers(item["item"], out, depth + 1)


# Dose units: UCUM codes and common spellings → mg. Counts (tablet, capsule) use the strength in
# the product name ("gabapentin 300 MG Oral Capsule"). FHIR/UCUM unit semantics, not clinical
# knowledge.
_MASS_MG = {"mg": 1.0, "g": 1000.0, "ug": 0.001, "mcg": 0.001, "µg": 0.001}
_COUNT_UNITS = frozenset(
    [
        *("1", "{tbl}", "{tablet}", "tablet", "tablets", "tab"),
        *("{capsule}", "capsule", "capsules", "cap"),
    ]
)
_PER_DAY = {"h": 24.0, "d": 1.0, "wk": 1 / 7, "mo": 1 / 30}
_STRENGTH = re.compile(r"(\d+(?:\.\d+)?)\s*mg\b")
_MAX_DOSAGES = 6


def daily_mg(dosages: object, concept: Concept) -> float | None:
    """The total daily dose in mg of structured dosage instructions; None when any part is
    missing or not exact (as-needed, a range, a rate, an unknown unit or timing)."""
    if not isinstance(dosages, list) or not dosages or len(dosages) > _MAX_DOSAGES:
        return None
    total = 0.0
    for dosage in dosages:
        if not isinstance(dosage, dict) or dosage.get("asNeededBoolean") is True:
            return None
        rates = dosage.get("doseAndRate")
        first = rates[0] if isinstance(rates, list) and len(rates) == 1 else None
        quantity = first.get("doseQuantity") if isinstance(first, dict) else None
        if not isinstance(quantity, dict):
            return None
        amount = _number(quantity.get("value"))
        unit = quantity.get("code") or quantity.get("unit")
        per_day = _times_per_day(dosage.get("timing"))
        if amount is None or per_day is None or not isinstance(unit, str):
            return None
        mg = _dose_mg(amount, unit.strip(), concept)
        if mg is None:
            return None
        total += mg * per_day
    return total


def _dose_mg(amount: float, unit: str, concept: Concept) -> float | None:
    factor = _MASS_MG.get(unit.lower())
    if factor is not None:
        return amount * factor
    if unit.lower() in _COUNT_UNITS:
        strengths = set(_STRENGTH.findall(concept.text))
        if len(strengths) == 1:
            return amount * float(strengths.pop())
    return None


# HL7 v3 GTSAbbreviation timing codes (the FHIR timing-abbreviation ValueSet) → times a day.
_TIMING_CODES = {"QD": 1.0, "AM": 1.0, "PM": 1.0, "BID": 2.0, "TID": 3.0, "QID": 4.0}


def _times_per_day(timing: object) -> float | None:
    if not isinstance(timing, dict):
        return None
    repeat = timing.get("repeat")
    if not isinstance(repeat, dict):
        codes = [c for c in _codes(timing.get("code")) if c in _TIMING_CODES]
        return _TIMING_CODES[codes[0]] if len(codes) == 1 else None
    frequency = repeat.get("frequency", 1)
    period = repeat.get("period")
    unit = repeat.get("periodUnit")
    if period is None and "frequency" not in repeat:
        # Daily events without a period ("at bedtime", "08:00 and 20:00"): once per event a day.
        events = repeat.get("when") or repeat.get("timeOfDay")
        return float(len(events)) if isinstance(events, list) and 0 < len(events) <= 6 else None
    if repeat.get("frequencyMax") is not None or repeat.get("periodMax") is not None:
        return None  # a range ("1-2 times a day") has no single daily dose
    number, length = _number(frequency), _number(period)
    if number is None or length is None or length <= 0 or unit not in _PER_DAY:
        return None
    return number * _PER_DAY[unit] / length


def _bounds_end(dosages: object) -> date | None:
    """The latest ``timing.repeat.boundsPeriod.end`` of a request's dosage instructions."""
    ends: list[date] = []
    if isinstance(dosages, list):
        for dosage in dosages[:10]:
            timing = dosage.get("timing") if isinstance(dosage, dict) else None
            repeat = timing.get("repeat") if isinstance(timing, dict) else None
            bounds = repeat.get("boundsPeriod") if isinstance(repeat, dict) else None
            end = parse_date(bounds.get("end")) if isinstance(bounds, dict) else None
            if end is not None:
                ends.append(end)
    return max(ends, default=None)


def _one_entry_per_night(record: PatientRecord) -> None:
    """A night submitted twice counts once: the last submission wins."""
    latest: dict[date, JournalNight] = {}
    for night in record.nights:
        kept = latest.get(night.night)
        if kept is None or (night.authored, night.ref) > (kept.authored, kept.ref):
            latest[night.night] = night
    if len(latest) == len(record.nights):
        return
    keep = {night.ref for night in latest.values()}
    record.nights = list(latest.values())
    record.findings = [
        f for f in record.findings if f.kind != "journal" or f.ref.split("#")[0] in keep
    ]


def _answer_value(answer: dict[str, Any]) -> bool | float | str | None:
    flag = answer.get("valueBoolean")
    if flag is True or flag is False:
        return flag
    for key in ("valueInteger", "valueDecimal"):
        raw = answer.get(key)
        if raw is not None:
            number = _number(raw)
            if number is not None:
                return number
    quantity = answer.get("valueQuantity")
    if isinstance(quantity, dict):
        number = _number(quantity.get("value"))
        if number is not None:
            return number
    coding = answer.get("valueCoding")
    if isinstance(coding, dict) and isinstance(coding.get("code"), str):
        return str(coding["code"])
    for key in ("valueDate", "valueDateTime", "valueTime", "valueString"):
        if isinstance(answer.get(key), str):
            return str(answer[key])
    return None
