"""The CDS Hooks request an EHR would send, built from the command line (pure, no I/O but files).

Fresh hookInstance, ``Practitioner/example`` as the user, the hook's context, the prefetch
templates filled the way an EHR fills them. The FHIR bearer token is read from an environment
variable (``--token-env``), never from the command line, and is never printed.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from service.cli.errors import CliError
from service.fhir import FetchResult
from service.fhir.client import is_read_query
from service.knowledge.schema import HOOKS

DEFAULT_USER = "Practitioner/example"
_TOKEN = re.compile(r"\{\{\s*([A-Za-z0-9_.]+)\s*\}\}")
_ORDER_TYPES = frozenset(
    {
        "MedicationRequest",
        "ServiceRequest",
        "NutritionOrder",
        "VisionPrescription",
        "DeviceRequest",
        "CommunicationRequest",
        "Appointment",
        "ImmunizationRecommendation",
    }
)


def read_fhir_file(path: Path, error: type[Exception]) -> dict[str, Any]:
    """A FHIR resource (or Bundle) from a JSON file; ``error`` with a one-line reason when the
    file cannot be read, is not JSON, or has no ``resourceType`` (the draft orders of ``hook``
    and the files ``load`` sends to the FHIR server)."""
    try:
        doc = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise error(f"{path}: cannot read JSON ({exc.__class__.__name__})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("resourceType"), str):
        raise error(f"{path}: not a FHIR resource (no resourceType)")
    return doc


def read_drafts(paths: Sequence[Path], patient_id: str) -> list[dict[str, Any]]:
    """Draft orders from files (a resource, or a Bundle whose entries are taken).

    Like an EHR's order entry, a draft without ``id`` gets one and a draft without ``subject``
    gets the patient; nothing else is changed.
    """
    drafts: list[dict[str, Any]] = []
    for path in paths:
        doc = read_fhir_file(path, CliError)
        if doc["resourceType"] == "Bundle":
            found = [e.get("resource") for e in doc.get("entry", []) if isinstance(e, dict)]
        else:
            found = [doc]
        for resource in found:
            if not isinstance(resource, dict) or resource.get("resourceType") not in _ORDER_TYPES:
                kind = resource.get("resourceType") if isinstance(resource, dict) else "?"
                raise CliError(f"{path}: {kind} is not an order resource")
            resource.setdefault("id", f"draft-{uuid.uuid4().hex[:12]}")
            if "subject" not in resource and "patient" not in resource:
                resource["subject"] = {"reference": f"Patient/{patient_id}"}
            drafts.append(resource)
    return drafts


def build_context(
    hook: str,
    patient_id: str,
    user_id: str,
    drafts: Sequence[dict[str, Any]] = (),
    selections: Sequence[str] = (),
    encounter_id: str | None = None,
) -> dict[str, Any]:
    """The hook's context as CDS Hooks 2.0 defines it (patient-view, order-select, order-sign)."""
    if hook not in HOOKS:
        raise CliError(f"unknown hook {hook!r} (expected one of {', '.join(HOOKS)})")
    context: dict[str, Any] = {"userId": user_id, "patientId": patient_id}
    if encounter_id:
        context["encounterId"] = encounter_id
    if hook == "patient-view":
        return context
    if not drafts:
        raise CliError(f"{hook} needs at least one --draft FILE")
    entries = [{"resource": draft} for draft in drafts]
    context["draftOrders"] = {"resourceType": "Bundle", "type": "collection", "entry": entries}
    if hook == "order-select":
        ids = {f"{d['resourceType']}/{d['id']}" for d in drafts}
        chosen = list(selections) or sorted(ids)
        unknown = [s for s in chosen if s not in ids]
        if unknown:
            raise CliError(f"--select {unknown[0]} is not one of the draft orders")
        context["selections"] = chosen
    return context


def render_template(template: str, context: dict[str, Any]) -> str | None:
    """Fill prefetch tokens; ``None`` if a token cannot be filled (the key is then omitted)."""
    user = str(context.get("userId", ""))
    user_type, _, user_ref_id = user.partition("/")
    values: dict[str, str] = {
        f"context.{k}": v for k, v in context.items() if isinstance(v, str) and v
    }
    role_tokens = {
        "Practitioner": "userPractitionerId",
        "PractitionerRole": "userPractitionerRoleId",
        "Patient": "userPatientId",
        "RelatedPerson": "userRelatedPersonId",
    }
    if user_type in role_tokens and user_ref_id:
        values[role_tokens[user_type]] = user_ref_id
    missing = False

    def fill(match: re.Match[str]) -> str:
        nonlocal missing
        value = values.get(match.group(1))
        if value is None:
            missing = True
            return ""
        return value

    rendered = _TOKEN.sub(fill, template)
    return None if missing else rendered


def prefetch_value(query: str, result: FetchResult) -> dict[str, Any] | None:
    """What an EHR would put in ``prefetch[key]``: the resource, ``None``, or a full searchset."""
    if is_read_query(query):
        return result.resources[0] if result.resources else None
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(result.resources),
        "entry": [{"resource": r} for r in result.resources],
    }


def build_request(
    hook: str,
    fhir_server: str,
    context: dict[str, Any],
    prefetch: dict[str, Any] | None,
    token: str | None,
    patient_id: str,
) -> dict[str, Any]:
    request: dict[str, Any] = {
        "hook": hook,
        "hookInstance": str(uuid.uuid4()),
        "fhirServer": fhir_server.rstrip("/"),
        "context": context,
    }
    if token:
        request["fhirAuthorization"] = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": "sleep-cds-cli",
            "patient": patient_id,
        }
    if prefetch is not None:
        request["prefetch"] = prefetch
    return request


def token_from_env(name: str | None) -> str | None:
    """The bearer token from the environment variable ``name`` (``None`` without one)."""
    if not name:
        return None
    token = os.environ.get(name, "").strip()
    if not token:
        raise CliError(f"--token-env {name}: the environment variable is empty or unset")
    return token
