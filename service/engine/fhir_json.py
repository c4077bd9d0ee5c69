"""Slim FHIR R4 JSON: msgspec structs holding only the elements the record reader, the prefetch
checks and the rules read; every other element is skipped by the decoder at C speed.

Every field accepts any JSON value, so decoding never fails on a malformed resource: an element
of the wrong JSON type is kept as it came (a list, a string, a number...) and the reader ignores
it exactly as it ignored it in a dict, so a bad resource still degrades instead of failing the
call. Absent elements are ``None`` (what ``dict.get`` gave), except where the reader asks whether
an element is present at all (``UNSET``). Nested elements no rule reads field by field (dosage,
questionnaire items, outcome issues) stay plain JSON values. Structs are not tracked by the
garbage collector: decoded JSON has no cycles, and a heavy record is ~10^5 objects.
"""

from __future__ import annotations

from typing import Any

import msgspec

UNSET = msgspec.UNSET
UnsetType = msgspec.UnsetType

# The JSON kinds a field holds when it is not the object (or array) the element should be.
NotObject = list[Any] | str | int | float | bool | None
NotArray = dict[str, Any] | str | int | float | bool | None


class _Slim(msgspec.Struct, gc=False, omit_defaults=True):
    pass


class Coding(_Slim):
    system: Any = None
    code: Any = None
    display: Any = None


class CodeableConcept(_Slim):
    coding: list[Coding | NotObject] | NotArray = None
    text: Any = None


class Quantity(_Slim):
    value: Any = None
    comparator: Any = None
    unit: Any = None
    system: Any = None
    code: Any = None


class Reference(_Slim):
    reference: Any = None
    display: Any = None


class Period(_Slim):
    start: Any = None
    end: Any = None


class ReferenceRange(_Slim):
    low: Quantity | NotObject = None
    high: Quantity | NotObject = None


class Ingredient(_Slim):
    itemCodeableConcept: CodeableConcept | NotObject = None


Concept = CodeableConcept | NotObject
Concepts = list[CodeableConcept | NotObject] | NotArray


class Resource(_Slim):
    """Any resource: the union of the elements read across the resource types the rules use."""

    resourceType: Any = UNSET
    id: Any = None
    status: Any = None
    intent: Any = None
    subject: Reference | NotObject = None
    patient: Reference | NotObject = None
    code: Concept = None
    # Observation
    effectiveDateTime: Any = None
    effectivePeriod: Period | NotObject = None
    effectiveInstant: Any = None
    issued: Any = None
    valueQuantity: Quantity | list[Any] | str | int | float | bool | UnsetType | None = UNSET
    valueInteger: Any = UNSET
    valueBoolean: Any = UNSET
    valueCodeableConcept: Concept = None
    interpretation: Concepts = None
    referenceRange: list[ReferenceRange | NotObject] | NotArray = None
    # Condition
    clinicalStatus: Concept = None
    verificationStatus: Concept = None
    onsetDateTime: Any = None
    onsetPeriod: Period | NotObject = None
    recordedDate: Any = None
    # MedicationRequest, MedicationStatement, Medication
    medicationCodeableConcept: Concept | UnsetType = UNSET
    medicationReference: Reference | NotObject = None
    contained: list[Resource | NotObject] | NotArray = None
    ingredient: list[Ingredient | NotObject] | NotArray = None
    authoredOn: Any = None
    dateAsserted: Any = None
    dosageInstruction: Any = None
    dosage: Any = None
    reasonCode: Concepts = None
    # Patient
    birthDate: Any = None
    # QuestionnaireResponse
    questionnaire: Any = None
    authored: Any = None
    item: Any = None
    # ServiceRequest, Procedure
    occurrenceDateTime: Any = None
    performedDateTime: Any = None
    performedPeriod: Period | NotObject = None
    # OperationOutcome
    issue: Any = None
    # Bundle
    entry: list[Entry | NotObject] | NotArray = None
    link: Any = None


class Entry(_Slim):
    resource: Resource | NotObject = None


PrefetchValue = Resource | NotObject


def resource_of(value: object) -> Resource | object:
    """A resource already read as a plain dict (FHIR client, tests) as the same slim struct;
    anything else unchanged (the reader skips it)."""
    if type(value) is dict:
        try:
            return msgspec.convert(value, Resource, strict=True)
        except msgspec.ValidationError:
            return value  # not JSON (a test's Python object): skipped like any unreadable item
    return value
