"""OpenAPI descriptions of the real request and response shapes.

Request bodies are read by hand (orjson, then pydantic) so that malformed input gets a FHIR
OperationOutcome 400 rather than FastAPI's 422; these schemas tell clients (and schemathesis)
exactly what the handlers accept and answer.
"""

from __future__ import annotations

from typing import Any

from service.cdshooks import models
from service.cdshooks.discovery import SERVICES

JSON = "application/json"
FHIR_JSON = "application/fhir+json"


def inline(schema: dict[str, Any]) -> dict[str, Any]:
    """A model's JSON schema with its ``$defs`` substituted in place (the models are not
    recursive), so the OpenAPI document has no reference to a component it does not define."""
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(dict(defs[ref.removeprefix("#/$defs/")]))
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


OUTCOME_SCHEMA = inline(models.OperationOutcome.model_json_schema())


def problem(text: str) -> dict[str, Any]:
    """An error response: always a FHIR OperationOutcome (service/api/problems.py)."""
    return {"description": text, "content": {FHIR_JSON: {"schema": OUTCOME_SCHEMA}}}


ERRORS: dict[int | str, dict[str, Any]] = {
    400: problem("Malformed JSON or an invalid request"),
    401: problem("Authentication failed"),
    403: problem("fhirServer not allowed for this caller"),
    404: problem("Unknown service"),
    405: problem("Method not allowed"),
    413: problem("Body too large"),
    # Any other client error (FastAPI would otherwise document a 422 it never sends).
    "4XX": problem("Other client error"),
}


EXAMPLE_PREFETCH = {
    "patient": {"resourceType": "Patient", "id": "example", "birthDate": "1970-01-01"},
    "conditions": {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {
                "resource": {
                    "resourceType": "Condition",
                    "id": "rls",
                    "clinicalStatus": {"coding": [{"code": "active"}]},
                    "code": {"coding": [{"system": "http://snomed.info/sct", "code": "32914008"}]},
                    "subject": {"reference": "Patient/example"},
                }
            }
        ],
    },
    "observations": {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {
                "resource": {
                    "resourceType": "Observation",
                    "id": "ferritin",
                    "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "2276-4"}]},
                    "subject": {"reference": "Patient/example"},
                    "effectiveDateTime": "2026-11-01",
                    "valueQuantity": {
                        "value": 40,
                        "system": "http://unitsofmeasure.org",
                        "code": "ng/mL",
                    },
                }
            }
        ],
    },
    **dict.fromkeys(["symptoms", "medicationRequests", "medicationStatements", "journal"]),
}


def hook_body_schema() -> dict[str, Any]:
    """The hook request as the handlers check it (stricter than the lenient parsing model):
    a known hook, and a context with patientId and userId. Prefetch values are FHIR resources
    or null (null: searched, nothing found; absent: fetch it)."""
    schema = inline(models.HookRequest.model_json_schema())
    schema["properties"]["hook"]["enum"] = sorted({s.hook for s in SERVICES})
    context = schema["properties"]["context"]
    context["required"] = ["patientId", "userId"]
    fhir_id = {"type": "string", "pattern": "^[A-Za-z0-9.-]{1,64}$"}  # not "." or ".."
    context["properties"]["patientId"] = fhir_id
    context["properties"]["encounterId"] = fhir_id
    context["properties"]["userId"] = {
        "type": "string",
        "pattern": "^[A-Z][A-Za-z]{0,63}/[A-Za-z0-9.-]{1,64}$",
        "description": "A FHIR reference ResourceType/id, e.g. Practitioner/123",
    }
    auth = schema["properties"]["fhirAuthorization"]["anyOf"][0]["properties"]
    auth["access_token"]["pattern"] = "^[ -~]+$"  # printable ASCII: it becomes a header value
    auth["token_type"]["pattern"] = "^[Bb][Ee][Aa][Rr][Ee][Rr]$"
    schema["properties"]["prefetch"] = {
        "anyOf": [
            {
                "type": "object",
                "additionalProperties": {
                    "anyOf": [
                        {"type": "null"},
                        {
                            "type": "object",
                            "required": ["resourceType"],
                            "properties": {"resourceType": {"type": "string"}},
                        },
                    ]
                },
            },
            {"type": "null"},
        ]
    }
    example = {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"patientId": "example", "userId": "Practitioner/example"},
        "prefetch": EXAMPLE_PREFETCH,
    }
    return {
        "requestBody": {
            "required": True,
            "content": {JSON: {"schema": schema, "example": example}},
        }
    }


def feedback_body_schema() -> dict[str, Any]:
    """Feedback as the handler checks it: an RFC 3339 timestamp (with offset), and accepted
    items name at least one accepted suggestion."""
    schema = inline(models.FeedbackRequest.model_json_schema())
    entry = schema["properties"]["feedback"]["items"]
    entry["properties"]["outcomeTimestamp"]["format"] = "date-time"
    entry["if"] = {"properties": {"outcome": {"const": "accepted"}}}
    entry["then"] = {
        "required": ["acceptedSuggestions"],
        "properties": {"acceptedSuggestions": {"type": "array", "minItems": 1}},
    }
    example = {
        "feedback": [
            {
                "card": "4e0a3a1f-0a7b-4a0e-9d1c-2f6a3c1d9b11",
                "outcome": "overridden",
                "overrideReason": {
                    "reason": {
                        "system": "https://sleep-cds.example.org/fhir/CodeSystem/sleep-cds",
                        "code": "not-clinically-relevant",
                    }
                },
                "outcomeTimestamp": "2026-11-25T09:00:00Z",
            }
        ]
    }
    return {
        "requestBody": {
            "required": True,
            "content": {JSON: {"schema": schema, "example": example}},
        }
    }


def ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


FEEDBACK_ACK = {
    "type": "object",
    "required": ["stored", "duplicates", "ignored"],
    "properties": {
        "stored": {"type": "integer", "minimum": 0, "description": "New items stored"},
        "duplicates": {"type": "integer", "minimum": 0, "description": "Items already stored"},
        "ignored": {
            "type": "array",
            "description": "Items not stored: they name a card this service did not issue to "
            "this caller, or a suggestion that card did not carry",
            "items": {
                "type": "object",
                "required": ["item", "card", "reason"],
                "properties": {
                    "item": {"type": "integer", "minimum": 0},
                    "card": {"type": "string"},
                    "reason": {"type": "string", "enum": ["unknown-card", "unknown-suggestion"]},
                },
            },
        },
    },
}
EXPLAIN = {
    "type": "object",
    "required": ["cards", "rules", "unavailable", "fetches", "skippedResources"],
    "properties": {
        "cards": {"type": "array", "items": {"type": "object"}},
        "rules": {"type": "array", "items": {"type": "object"}},
        "unavailable": {"type": "array", "items": {"type": "string"}},
        "fetches": {"type": "object", "additionalProperties": {"type": "string"}},
        "skippedResources": {"type": "integer"},
        "unusableLabResults": {"type": "integer"},
    },
}
HEALTH = {"type": "object", "properties": {"status": {"type": "string"}}}
READY = {
    "type": "object",
    "required": ["database", "knowledge", "hookSlots"],
    "properties": {
        "database": {"type": "boolean"},
        "knowledge": {"type": "boolean"},
        "hookSlots": {
            "type": "object",
            "description": "Evaluation slots (CDS_MAX_CONCURRENT_HOOKS); not available when "
            "every slot is busy and calls are queued",
            "properties": {
                "limit": {"type": "integer"},
                "busy": {"type": "integer"},
                "waiting": {"type": "integer"},
                "available": {"type": "boolean"},
            },
        },
    },
}
