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
from typing import Literal

from service.engine.dosage import bounds_end, daily_mg
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
from service.engine.fhir_values import (
    analyte_of,
    codes_of,
    concept_of,
    merge_concepts,
    number_of,
    parse_date,
    period_start,
    resource_kind,
    resource_ref,
    status_code_of,
    text_concept,
    value_of,
)
from service.engine.journal_answers import questionnaire_answers
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
# Clause boundaries for negation scope: punctuation, a spaced dash, and the " | " joining the
# text and the displays of one concept.
_CLAUSE = re.compile(r"[.,;:()\[\]|]| - | \u2013 ")
_COMPARATORS = (None, "<", "<=", ">", ">=")
_UNREADABLE = (TypeError, ValueError, AttributeError, KeyError, IndexError)

_WHEN = attrgetter("when")
_NIGHT = attrgetter("night")
_NO_FLAGS: frozenset[str] = frozenset()


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
            kind = resource_kind(resource)
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
            resource_ref(r): r
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
        verification = status_code_of(resource.verificationStatus)
        if verification in EXCLUDED_VERIFICATION_STATUS:
            return
        clinical = status_code_of(resource.clinicalStatus)
        if clinical is not None and clinical not in ACTIVE_CONDITION_STATUS:
            return
        concept = self._codes_only(concept_of(resource.code))
        if concept is None:
            record.skipped += 1
            return
        when = (
            parse_date(resource.onsetDateTime)
            or period_start(resource.onsetPeriod)
            or parse_date(resource.recordedDate)
        )
        # No clinical status (allowed for some encounter diagnoses): only a recent one counts.
        lookback = self.kb.policy.finding_lookback_days
        if clinical is None and (when is None or (record.as_of - when).days > lookback):
            return
        record.findings.append(
            Finding("condition", resource_ref(resource), concept, when, clinical)
        )

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
            when = parse_date(resource.performedDateTime) or period_start(resource.performedPeriod)
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
        found = analyte_of(code, self.analyte_by_code)
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
            merge_concepts([concept, concept_of(resource.valueCodeableConcept)])
        )
        assert concept is not None
        record.findings.append(Finding("observation", ref, concept, when))

    @staticmethod
    def _effective(resource: Resource) -> date | None:
        when = parse_date(resource.effectiveDateTime)
        if when is not None:
            return when
        return (
            period_start(resource.effectivePeriod)
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
                number = number_of(raw)
                return number is not None and number > 0
        absent = self.absent_codes
        value = resource.valueCodeableConcept
        if isinstance(value, CodeableConcept):
            return not set(codes_of(value)) & absent
        interpretation = resource.interpretation
        if isinstance(interpretation, list):
            for item in interpretation:
                if set(codes_of(item)) & absent:
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
        value = value_of(raw)
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
        if ranges.__class__ is not list or not ranges:
            return None, None
        first = ranges[0]
        if first.__class__ is not ReferenceRange:
            return None, None
        return self._bound(first.low, conversions), self._bound(first.high, conversions)

    def _bound(self, bound: object, conversions: Mapping[str, float]) -> float | None:
        if bound.__class__ is not Quantity:
            return None
        number = value_of(bound.value)
        if number is None:
            return None
        unit = bound.code or bound.unit or ""
        if unit.__class__ is not str:
            unit = ""
        scale = conversions.get(self.unit_aliases.get(unit, unit))
        return None if scale is None else number * scale

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
                ended = bounds_end(resource.dosageInstruction)
        else:
            if status not in ACTIVE_STATEMENT_STATUS and not completed:
                return
            period = resource.effectivePeriod
            started = (
                parse_date(resource.effectiveDateTime)
                or period_start(period)
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
                MedicationUse(resource_ref(resource), concept, started, last)
            )
            return
        dosages = resource.dosageInstruction if kind == "MedicationRequest" else resource.dosage
        record.medications.append(
            MedicationUse(
                resource_ref(resource), concept, started, daily_mg=daily_mg(dosages, concept)
            )
        )
        # The indication of an active medicine is a condition the patient has: Tylenol PM
        # "for restless legs" (the FHIR MedicationStatement example) documents RLS.
        reasons = resource.reasonCode
        if isinstance(reasons, list):
            for reason in reasons[:5]:
                indication = self._codes_only(concept_of(reason))
                if indication is not None:
                    record.findings.append(
                        Finding("condition", resource_ref(resource), indication, started)
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
        ref = resource_ref(resource)
        if selections is not None and ref not in selections:
            return
        kind = str(resource_kind(resource))
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
        questionnaire_answers(resource.item, answers, 0)
        night = parse_date(answers.get("night-date")) or parse_date(resource.authored)
        if night is None:
            record.skipped += 1
            return
        ref = resource_ref(resource)
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
        fallback = text_concept(reference.display)
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
    return merge_concepts([concept_of(medication.code), *ingredients, fallback])


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
