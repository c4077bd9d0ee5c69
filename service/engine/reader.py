"""Reading the patient's record (``service.engine.record``) from FHIR R4 JSON.

Resources arrive as slim structs (``service.engine.fhir_json``: decoded straight from the request
bytes, or converted from a dict the FHIR client read), are filtered by type and status first, and
only the elements some rule reads are touched. A resource that cannot be read is skipped and
counted; it never fails the call. The FHIR status semantics below are FHIR's, not clinical
knowledge: which statuses mean "usable", "active", "entered in error".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import date
from operator import attrgetter
from typing import Any, Literal

from service.engine.fhir_json import (
    UNSET,
    CodeableConcept,
    Coding,
    Ingredient,
    Period,
    Quantity,
    Reference,
    ReferenceRange,
    Resource,
    resource_of,
)
from service.engine.record import (
    Concept,
    DraftOrder,
    Finding,
    IgnoredLab,
    JournalNight,
    LabResult,
    MedicationUse,
    PatientRecord,
    ProcedureEvent,
)
from service.knowledge.base import CODESYSTEM_URL, KnowledgeBase
from service.knowledge.valuesets import CodeKey

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
UCUM = "http://unitsofmeasure.org"
MAX_ITEM_DEPTH = 8
# Clause boundaries for negation scope: punctuation, a spaced dash, and the " | " joining the
# text and the displays of one concept.
_CLAUSE = re.compile(r"[.,;:()\[\]|]| - | \u2013 ")
_COMPARATORS = (None, "<", "<=", ">", ">=")
_UNREADABLE = (TypeError, ValueError, AttributeError, KeyError, IndexError)

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


def _text_concept(text: object) -> Concept | None:
    """A concept named only by text (a reference's ``display``)."""
    return _concept([], [], "", text)


def _analyte_of(value: object, by_code: Mapping[CodeKey, str]) -> tuple[str, str] | None:
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
    if isinstance(value, CodeableConcept) and isinstance(value.coding, list):
        for coding in value.coding:
            if isinstance(coding, Coding) and isinstance(coding.code, str):
                yield coding.code


def _json_codes(value: object) -> Iterable[str]:
    """``_codes`` of a CodeableConcept inside an element kept as plain JSON (a dosage timing)."""
    if isinstance(value, dict) and isinstance(value.get("coding"), list):
        for coding in value["coding"]:
            if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                yield coding["code"]


def _status_code(value: object) -> str | None:
    return next(iter(_codes(value)), None)


def _kind(resource: Resource) -> Any:
    """``resourceType`` as a dict's ``get`` gave it (None when absent)."""
    kind = resource.resourceType
    return None if kind is UNSET else kind


def _ref(resource: Resource) -> str:
    rid = resource.id
    return f"{_kind(resource)}/{rid}" if isinstance(rid, str) else ""


def _start(period: object) -> date | None:
    return parse_date(period.start) if isinstance(period, Period) else None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if number == number and abs(number) != _INF else None


def _finite(value: float) -> float | None:
    """``_number`` of an exact int or float."""
    number = float(value)
    return number if number == number and abs(number) != _INF else None


def _value(raw: object) -> float | None:
    """``_number``, with the common exact int or float taken without the type checks."""
    return _finite(raw) if raw.__class__ is float or raw.__class__ is int else _number(raw)


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
        """The record of ``resources`` (slim structs; plain dicts are converted first)."""
        record = PatientRecord(patient_id=patient_id, as_of=as_of)
        record.unavailable = frozenset(unavailable)
        medications: dict[str, Resource] = {}
        pending_meds: list[Resource] = []
        seen: set[str] = set()
        subjects: dict[str, bool] = {}  # reference → about this patient, once per distinct value
        for item in resources:
            resource = resource_of(item) if item.__class__ is dict else item
            if not isinstance(resource, Resource):
                record.skipped += 1
                continue
            kind = _kind(resource)
            rid = resource.id
            ref = f"{kind}/{rid}" if isinstance(rid, str) else ""
            if ref:
                if ref in seen:
                    continue  # the same resource from two prefetch keys counts once
                seen.add(ref)
            if not self._about_patient(resource, record.patient_id, subjects):
                record.skipped += 1  # another patient's data must never reach this patient's cards
                continue
            if kind in ("MedicationRequest", "MedicationStatement"):
                pending_meds.append(resource)  # read once every Medication is known
            elif kind == "Medication":
                medications[ref] = resource
            else:
                self._one(record, resource, kind, ref)
        for resource in pending_meds:
            try:
                self._medication(record, resource, medications)
            except _UNREADABLE:
                record.skipped += 1
        self._drafts(record, drafts, selections)
        self._derive(record)
        _one_entry_per_night(record)
        for results in record.labs.values():
            results.sort(key=_WHEN, reverse=True)
        for ignored in record.ignored_labs.values():
            ignored.sort(key=_WHEN, reverse=True)
        record.nights.sort(key=_NIGHT, reverse=True)
        return record

    def _one(self, record: PatientRecord, resource: Resource, kind: object, ref: str) -> None:
        """Read one resource other than a medication; unreadable, it is counted as skipped."""
        try:
            if kind == "Observation":
                self._observation(record, resource, ref)
            elif kind == "Condition":
                self._condition(record, resource)
            elif kind == "QuestionnaireResponse":
                self._journal(record, resource)
            elif kind == "Patient":
                self._patient(record, resource)
            elif kind in ("ServiceRequest", "Procedure", "DiagnosticReport"):
                self._procedure(record, resource, kind, ref)
        except _UNREADABLE:
            record.skipped += 1

    def _drafts(
        self, record: PatientRecord, drafts: Iterable[object], selections: frozenset[str] | None
    ) -> None:
        """The draft orders of an order hook (a Medication among them names an order's drug)."""
        draft_list = [resource_of(r) if r.__class__ is dict else r for r in drafts]
        draft_medications = {
            _ref(r): r
            for r in draft_list
            if isinstance(r, Resource) and r.resourceType == "Medication"
        }
        for resource in draft_list:
            if isinstance(resource, Resource) and resource.resourceType == "Medication":
                continue
            try:
                self._draft(record, resource, selections, draft_medications)
            except _UNREADABLE:
                record.skipped += 1

    @staticmethod
    def _about_patient(
        resource: Resource, patient_id: str, known: dict[str, bool] | None = None
    ) -> bool:
        """False when the resource's subject/patient names a different Patient."""
        for reference in (resource.subject, resource.patient):
            target = reference.reference if isinstance(reference, Reference) else None
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

    def _patient(self, record: PatientRecord, resource: Resource) -> None:
        if resource.id not in (None, record.patient_id):
            return
        record.birth_date = parse_date(resource.birthDate)

    # Condition -------------------------------------------------------------------------------

    def _condition(self, record: PatientRecord, resource: Resource) -> None:
        verification = _status_code(resource.verificationStatus)
        if verification in EXCLUDED_VERIFICATION_STATUS:
            return
        clinical = _status_code(resource.clinicalStatus)
        if clinical is not None and clinical not in ACTIVE_CONDITION_STATUS:
            return
        concept = self._codes_only(concept_of(resource.code))
        if concept is None:
            record.skipped += 1
            return
        when = (
            parse_date(resource.onsetDateTime)
            or _start(resource.onsetPeriod)
            or parse_date(resource.recordedDate)
        )
        # No clinical status (allowed for some encounter diagnoses): only a recent one counts.
        lookback = self.kb.policy.finding_lookback_days
        if clinical is None and (when is None or (record.as_of - when).days > lookback):
            return
        record.findings.append(Finding("condition", _ref(resource), concept, when, clinical))

    # Procedures and studies ------------------------------------------------------------------

    def _procedure(self, record: PatientRecord, resource: Resource, kind: str, ref: str) -> None:
        """An ordered or done study (a sleep study already requested or reported)."""
        status = resource.status
        state: Literal["ordered", "done"]
        if kind == "ServiceRequest":
            if status in DONE_REQUEST_STATUS:
                state = "done"
            elif status in ORDERED_REQUEST_STATUS and resource.intent != "proposal":
                state = "ordered"
            else:
                return
            when = parse_date(resource.occurrenceDateTime) or parse_date(resource.authoredOn)
        elif kind == "Procedure":
            if status in DONE_PROCEDURE_STATUS:
                state = "done"
            elif status in ORDERED_PROCEDURE_STATUS:
                state = "ordered"
            else:
                return
            when = parse_date(resource.performedDateTime) or _start(resource.performedPeriod)
        else:
            if status not in DONE_REPORT_STATUS:
                return
            state = "done"
            when = self._effective(resource)
        concept = self._codes_only(concept_of(resource.code))
        if concept is None:
            record.skipped += 1
            return
        record.procedures.append(ProcedureEvent(state, ref, concept, when))

    # Observation -----------------------------------------------------------------------------

    def _observation(self, record: PatientRecord, resource: Resource, ref: str) -> None:
        status = resource.status
        code = resource.code
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
        concept = self._codes_only(_merge([concept, concept_of(resource.valueCodeableConcept)]))
        assert concept is not None
        record.findings.append(Finding("observation", ref, concept, when))

    @staticmethod
    def _effective(resource: Resource) -> date | None:
        when = parse_date(resource.effectiveDateTime)
        if when is not None:
            return when
        return (
            _start(resource.effectivePeriod)
            or parse_date(resource.effectiveInstant)
            or parse_date(resource.issued)
        )

    def _positive(self, resource: Resource) -> bool:
        """A symptom Observation counts unless its value says the symptom is absent."""
        if resource.valueBoolean is not UNSET:
            return resource.valueBoolean is True
        for raw in (resource.valueInteger, resource.valueQuantity):
            if raw is not UNSET:
                if isinstance(raw, Quantity):
                    raw = raw.value
                elif isinstance(raw, dict):
                    raw = raw.get("value")
                number = _number(raw)
                return number is not None and number > 0
        absent = self.absent_codes
        value = resource.valueCodeableConcept
        if isinstance(value, CodeableConcept):
            return not set(_codes(value)) & absent
        interpretation = resource.interpretation
        if isinstance(interpretation, list):
            for item in interpretation:
                if set(_codes(item)) & absent:
                    return False
        return True

    def _lab(
        self, analyte: str, resource: Resource, when: date, label: str, ref: str
    ) -> LabResult | IgnoredLab | None:
        """One lab result in the analyte's canonical unit (called for every lab Observation)."""
        quantity = resource.valueQuantity
        raw_unit = ""
        comparator = None
        if isinstance(quantity, Quantity):
            comparator = quantity.comparator
            if comparator not in _COMPARATORS:
                return None  # "ad" (sufficient to achieve) is not a measured bound
            raw = quantity.value
            code = quantity.code
            if isinstance(code, str) and quantity.system in (UCUM, None):
                raw_unit = code
            elif isinstance(quantity.unit, str):
                raw_unit = quantity.unit
        else:
            raw = resource.valueInteger
        value = _value(raw)
        if value is None:
            return None
        conversions = self._conversions[analyte]
        factor = conversions.get(self.unit_aliases.get(raw_unit, raw_unit))
        if factor is None:
            # An unknown unit is never guessed; the result is kept to say why it was not used.
            return IgnoredLab(analyte, ref, value, raw_unit, when)
        ref_low, ref_high = self._reference_range(resource.referenceRange, conversions)
        return LabResult(
            analyte,
            ref,
            value * factor,
            self._units[analyte],
            value,
            raw_unit,
            when,
            _flags(resource.interpretation),
            ref_low,
            ref_high,
            label,
            comparator,
        )

    def _reference_range(
        self, ranges: object, conversions: Mapping[str, float]
    ) -> tuple[float | None, float | None]:
        """(low, high) of the first reference range, in the canonical unit where convertible."""
        bounds: list[float | None] = [None, None]
        if isinstance(ranges, list) and ranges and isinstance(ranges[0], ReferenceRange):
            first = ranges[0]
            for side, bound in enumerate((first.low, first.high)):
                if not isinstance(bound, Quantity):
                    continue
                number = _value(bound.value)
                unit = bound.code or bound.unit or ""
                if not isinstance(unit, str):
                    unit = ""
                scale = conversions.get(self.unit_aliases.get(unit, unit))
                if number is not None and scale is not None:
                    bounds[side] = number * scale
        return bounds[0], bounds[1]

    # Medications -----------------------------------------------------------------------------

    def _medication(
        self, record: PatientRecord, resource: Resource, medications: Mapping[str, Resource]
    ) -> None:
        kind, status = resource.resourceType, resource.status
        completed = status == COMPLETED_MEDICATION_STATUS
        ended: date | None = None
        if kind == "MedicationRequest":
            if status not in ACTIVE_REQUEST_STATUS and not completed:
                return
            started = parse_date(resource.authoredOn)
            if completed:
                ended = _bounds_end(resource.dosageInstruction)
        else:
            if status not in ACTIVE_STATEMENT_STATUS and not completed:
                return
            period = resource.effectivePeriod
            started = (
                parse_date(resource.effectiveDateTime)
                or _start(period)
                or parse_date(resource.dateAsserted)
            )
            if completed and isinstance(period, Period):
                ended = parse_date(period.end)
        concept = medication_concept(resource, medications)
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
        dosages = resource.dosageInstruction if kind == "MedicationRequest" else resource.dosage
        record.medications.append(
            MedicationUse(_ref(resource), concept, started, daily_mg=daily_mg(dosages, concept))
        )
        # The indication of an active medicine is a condition the patient has: Tylenol PM
        # "for restless legs" (the FHIR MedicationStatement example) documents RLS.
        reasons = resource.reasonCode
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
        medications: Mapping[str, Resource],
    ) -> None:
        if not isinstance(resource, Resource):
            record.skipped += 1
            return
        ref = _ref(resource)
        if selections is not None and ref not in selections:
            return
        kind = str(_kind(resource))
        if kind in ("MedicationRequest", "MedicationStatement"):
            concept = medication_concept(resource, medications)
        else:
            concept = concept_of(resource.code)
        if concept is None:
            record.skipped += 1
            return
        record.drafts.append(DraftOrder(ref, kind, concept))

    # Sleep journal ---------------------------------------------------------------------------

    def _journal(self, record: PatientRecord, resource: Resource) -> None:
        questionnaire = resource.questionnaire
        if not isinstance(questionnaire, str) or questionnaire.split("|")[0] != self.journal_url:
            return
        if resource.status not in COMPLETED_JOURNAL_STATUS:
            return
        answers: dict[str, bool | float | str] = {}
        _answers(resource.item, answers, 0)
        night = parse_date(answers.get("night-date")) or parse_date(resource.authored)
        if night is None:
            record.skipped += 1
            return
        ref = _ref(resource)
        authored = str(resource.authored or "")
        record.nights.append(JournalNight(ref, night, answers, authored))
        # Codes only: "tingling-numbness" must not match a "numbness" synonym.
        concepts = self._journal_concepts
        findings = record.findings
        for link_id, value in answers.items():
            concept = concepts.get(link_id)
            if concept is not None and (value is True or (value.__class__ is float and value > 0)):
                findings.append(Finding("journal", f"{ref}#{link_id}", concept, night))


def _flags(interpretation: object) -> frozenset[str]:
    """The interpretation codes of a lab result (H, L, N...)."""
    if not isinstance(interpretation, list) or not interpretation:
        return _NO_FLAGS
    flags: set[str] = set()
    for item in interpretation:
        codings = item.coding if isinstance(item, CodeableConcept) else None
        if isinstance(codings, list):
            for coding in codings:
                if isinstance(coding, Coding):
                    flag = coding.code
                    if isinstance(flag, str):
                        flags.add(flag)
    return frozenset(flags)


def _answers(items: object, out: dict[str, bool | float | str], depth: int) -> None:
    """The answers of questionnaire items (plain JSON), by linkId, nested items included."""
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
                value = _first_answer_value(first)
                if value is not None:
                    out[link_id] = value
                if len(answers) == 1:
                    if "item" in first:
                        _answers(first["item"], out, depth + 1)
                else:
                    for answer in answers:
                        if isinstance(answer, dict) and "item" in answer:
                            _answers(answer["item"], out, depth + 1)
        if "item" in item:  # most items have no children: skip the call
            _answers(item["item"], out, depth + 1)


def _first_answer_value(first: dict[str, Any]) -> bool | float | str | None:
    if len(first) != 1:
        return _answer_value(first)
    # The usual answer: one value[x] and nothing else (``_answer_value``).
    ((key, raw),) = first.items()
    kind = _ONLY_VALUE.get(key)
    if kind == "bool":
        return raw if raw is True or raw is False else None
    if kind == "number":
        return _value(raw)
    if kind == "text":
        return str(raw) if isinstance(raw, str) else None
    return _answer_value(first)


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


def medication_concept(resource: Resource, medications: Mapping[str, Resource]) -> Concept | None:
    """The drug a MedicationRequest/Statement names: its code, else the contained, sent or read
    Medication it references (code and ingredients), else the reference's display. Raises one of
    ``_UNREADABLE`` for a malformed reference (the reader skips such an order)."""
    concept = concept_of(resource.medicationCodeableConcept)
    if concept is not None:
        return concept
    reference = resource.medicationReference
    target = reference.reference if isinstance(reference, Reference) else None
    medication: object = None
    if isinstance(target, str) and target.startswith("#"):
        for contained in resource.contained or []:  # type: ignore[union-attr]
            if isinstance(contained, Resource) and contained.id == target[1:]:
                medication = contained
    elif isinstance(target, str):
        medication = medications.get(target) or medications.get(
            "/".join(target.rstrip("/").split("/")[-2:])
        )
    if isinstance(reference, Reference):
        fallback = _text_concept(reference.display)
    elif reference:
        raise AttributeError("medicationReference is not an object")
    else:
        fallback = None
    if not isinstance(medication, Resource):
        return fallback
    ingredients = [
        concept_of(item.itemCodeableConcept)
        for item in medication.ingredient or []  # type: ignore[union-attr]
        if isinstance(item, Ingredient)
    ]
    return _merge([concept_of(medication.code), *ingredients, fallback])


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
        codes = [c for c in _json_codes(timing.get("code")) if c in _TIMING_CODES]
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
