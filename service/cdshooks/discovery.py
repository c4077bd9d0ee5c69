"""The three CDS services and the shape of their discovery document (plain data: the prefetch
templates come from the caller, service/api/discovery.py, so this wire module imports nothing of
the engine or the knowledge base)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ServiceSpec:
    id: str
    hook: str
    title: str
    description: str


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec(
        "sleep-movement-patient-view",
        "patient-view",
        "Sleep-related leg movements: chart review",
        "When a chart opens for a patient with hypnic jerks, restless legs, periodic limb "
        "movements or night-time leg cramps: red flags, labs to check (iron, electrolytes), "
        "medicines that worsen symptoms, sleep-study referral and tailored lifestyle advice.",
    ),
    ServiceSpec(
        "sleep-movement-order-select",
        "order-select",
        "Sleep-related leg movements: order selection",
        "While orders are selected for a patient with a sleep-movement complaint: flags drugs "
        "that worsen restless legs or sleep jerks and sleep studies ordered without iron studies.",
    ),
    ServiceSpec(
        "sleep-movement-order-sign",
        "order-sign",
        "Sleep-related leg movements: order signing",
        "Before orders are signed for a patient with a sleep-movement complaint: the same checks "
        "as order selection, over every draft order.",
    ),
)

USAGE_REQUIREMENTS = (
    "Send prefetch as listed (or fhirServer with fhirAuthorization so the service can fetch it). "
    "Authenticate with a JWT signed by a key registered with the service (CDS Hooks 2.0)."
)


def service_by_id(service_id: str) -> ServiceSpec | None:
    return next((s for s in SERVICES if s.id == service_id), None)


def discovery_document(prefetch: Mapping[str, Mapping[str, str]]) -> dict[str, Any]:
    """The document for ``prefetch``: hook → the prefetch templates its service advertises."""
    return {
        "services": [
            {
                "hook": spec.hook,
                "id": spec.id,
                "title": spec.title,
                "description": spec.description,
                "prefetch": dict(prefetch[spec.hook]),
                "usageRequirements": USAGE_REQUIREMENTS,
            }
            for spec in SERVICES
        ]
    }
