"""Draft FHIR resources for card suggestions, built from ``orders.yaml`` and analyte order codes.

Each template is validated once with fhir.resources at start-up; per request only the subject and
reasons are filled in, so suggestions cost microseconds, not a model validation each.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from service.errors import KnowledgeError
from service.knowledge import schema
from service.knowledge.fhir_models import validate_resource


def _coding(spec: schema.CodingSpec) -> dict[str, str]:
    return {"system": spec.system, "code": spec.code, "display": spec.display}


def order_template(order: schema.OrderSpec) -> dict[str, Any]:
    """The resource without subject or reasons."""
    if order.resource_type == "ServiceRequest":
        resource: dict[str, Any] = {
            "resourceType": "ServiceRequest",
            "status": "draft",
            "intent": "proposal",
            "code": {"coding": [_coding(c) for c in order.codes], "text": order.label},
        }
        if order.category is not None:
            resource["category"] = [{"coding": [_coding(order.category)]}]
        if order.note:
            resource["note"] = [{"text": order.note}]
        return resource
    resource = {
        "resourceType": "CommunicationRequest",
        "status": "draft",
        "payload": [{"contentString": order.note or order.label}],
    }
    if order.category is not None:
        resource["category"] = [{"coding": [_coding(order.category)]}]
    if order.codes:
        resource["reasonCode"] = [{"coding": [_coding(c) for c in order.codes]}]
    return resource


def lab_order(analyte: schema.Analyte, category: schema.CodingSpec) -> dict[str, Any]:
    """A draft lab ServiceRequest; the loader guarantees the analyte has an order code."""
    if analyte.order is None:
        raise ValueError(f"{analyte.display} has no order code")
    return {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "proposal",
        "category": [{"coding": [_coding(category)]}],
        "code": {"coding": [_coding(analyte.order)], "text": analyte.display},
    }


def instantiate(template: dict[str, Any], patient_id: str, reasons: list[str]) -> dict[str, Any]:
    """A copy of ``template`` for this patient, citing the evidence resources as reasons."""
    resource = copy.deepcopy(template)
    resource["subject"] = {"reference": f"Patient/{patient_id}"}
    if reasons:
        resource["reasonReference"] = [{"reference": ref} for ref in reasons]
    return resource


def validate_order_templates(path: Path, orders: dict[str, schema.OrderSpec]) -> None:
    for name, order in orders.items():
        resource = instantiate(order_template(order), "example", ["Condition/example"])
        try:
            validate_resource(resource)
        except Exception as exc:
            raise KnowledgeError(
                f"{path}: field 'orders.{name}': invalid FHIR resource: {exc}"
            ) from exc
