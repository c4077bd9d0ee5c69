"""Test data builders: FHIR resources, prefetch bundles, CDS Hooks request and feedback bodies,
trusted issuers and their signed tokens.

One copy of each, so a change in a resource's shape is made once. Plain functions that return a
fresh dict the caller may change; the defaults make the common record (an adult with restless
legs and a ferritin of 40 ng/mL, which yields the iron cards) and every argument says what a test
varies.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from tests.conftest import PATIENT_VIEW_KEYS

PV = "/cds-services/sleep-movement-patient-view"
LOCAL = "https://sleep-cds.example.org/fhir/CodeSystem/sleep-cds"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
ACTIVE = {
    "coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}
    ]
}
RLS = "32914008"  # SNOMED CT restless legs syndrome
WEAKNESS = "26544005"  # SNOMED CT muscle weakness (a neurological red flag)
FERRITIN = "2276-4"  # LOINC ferritin, ng/mL
MAGNESIUM = "19123-9"  # LOINC magnesium, mg/dL


def condition(
    patient_id: str, code: str, *, onset: str | None = None, cid: str | None = None
) -> dict[str, Any]:
    """An active SNOMED-coded Condition (id ``<patient>-<code>`` unless given)."""
    resource: dict[str, Any] = {
        "resourceType": "Condition",
        "id": cid or f"{patient_id}-{code}",
        "clinicalStatus": ACTIVE,
        "code": {"coding": [{"system": SNOMED, "code": code}]},
        "subject": {"reference": f"Patient/{patient_id}"},
    }
    if onset:
        resource["onsetDateTime"] = onset
    return resource


def rls_condition(patient_id: str = "p1", cid: str = "rls") -> dict[str, Any]:
    """Restless legs since June 2026."""
    return condition(patient_id, RLS, onset="2026-06-01", cid=cid)


def observation(
    patient_id: str, loinc: str, value: float, unit: str, when: str, *, oid: str | None = None
) -> dict[str, Any]:
    """A final LOINC-coded lab with a UCUM quantity (id ``<patient>-<loinc>`` unless given)."""
    return {
        "resourceType": "Observation",
        "id": oid or f"{patient_id}-{loinc}",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": loinc}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
    }


def ferritin(
    patient_id: str = "p1", value: float = 40, when: str = "2026-11-01", *, oid: str | None = None
) -> dict[str, Any]:
    """A ferritin in ng/mL (id ``<patient>-ferritin-<when>`` unless given: two dates, two ids)."""
    return observation(
        patient_id, FERRITIN, value, "ng/mL", when, oid=oid or f"{patient_id}-ferritin-{when}"
    )


def medication_request(
    mid: str = "m", *, patient_id: str = "p1", status: str = "active", **fields: Any
) -> dict[str, Any]:
    """A MedicationRequest order; ``fields`` add the medication[x], dosageInstruction, ...."""
    return {
        "resourceType": "MedicationRequest",
        "id": mid,
        "status": status,
        "intent": "order",
        "subject": {"reference": f"Patient/{patient_id}"},
        **fields,
    }


def searchset(*resources: Any) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r} for r in resources],
    }


def patient(patient_id: str = "p1", birth_date: str = "1970-01-01") -> dict[str, Any]:
    return {"resourceType": "Patient", "id": patient_id, "birthDate": birth_date}


def patient_view(
    patient_id: str = "p1",
    *,
    ferritin_value: float = 40,
    patient: dict[str, Any] | None = None,
    fhir_server: str | None = None,
    token: str | None = None,
    omit: tuple[str, ...] = (),
    conditions: list[dict[str, Any]] | None = None,
    observations: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A patient-view call; by default its prefetch (RLS + ferritin 40 ng/mL) yields the iron cards.

    Keys in ``omit`` are left out of the prefetch, so the service fetches them from fhirServer.
    """
    # Every key discovery advertises: the ones not set here are null (no data), never fetched.
    prefetch: dict[str, Any] = dict.fromkeys(PATIENT_VIEW_KEYS) | {
        "patient": patient or _patient(patient_id),
        "conditions": searchset(
            *(conditions if conditions is not None else [rls_condition(patient_id)])
        ),
        "observations": searchset(
            *(observations if observations is not None else [ferritin(patient_id, ferritin_value)])
        ),
    }
    for key in omit:
        prefetch.pop(key, None)
    body: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"patientId": patient_id, "userId": "Practitioner/u1"},
        "prefetch": prefetch,
    }
    if fhir_server is not None:
        body["fhirServer"] = fhir_server
    if token is not None:
        body["fhirAuthorization"] = fhir_authorization(token)
    return body


def fhir_authorization(token: str, subject: str = "cds-service") -> dict[str, Any]:
    """The request's ``fhirAuthorization``: a bearer token for patient-scoped reads."""
    return {
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": subject,
    }


_patient = patient  # patient_view's ``patient`` argument hides the builder


def cards_by_topic(response: Any) -> dict[str, dict[str, Any]]:
    """A 200 hook response's cards, keyed by topic code."""
    assert response.status_code == 200, response.text
    return {c["source"]["topic"]["code"]: c for c in response.json()["cards"]}


def feedback_item(
    card_uuid: str,
    *,
    outcome: str = "overridden",
    when: str = "2026-11-25T09:00:00Z",
    reason: str | None = "not-clinically-relevant",
    suggestion: str | None = None,
) -> dict[str, Any]:
    """One feedback item: overridden (with ``reason`` unless None) or accepted (``suggestion``,
    or a random suggestion id)."""
    item: dict[str, Any] = {"card": card_uuid, "outcome": outcome, "outcomeTimestamp": when}
    if outcome != "overridden":
        item["acceptedSuggestions"] = [{"id": suggestion or str(uuid.uuid4())}]
    elif reason is not None:
        item["overrideReason"] = {"reason": {"system": LOCAL, "code": reason}}
    return item


# --- callers: issuers, keys and signed tokens ---------------------------------------------------


def ec_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-384 key (ES384, the algorithm the registry examples use)."""
    return ec.generate_private_key(ec.SECP384R1())


def public_jwk(private_key: ec.EllipticCurvePrivateKey, kid: str = "k1") -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(ECAlgorithm.to_jwk(private_key.public_key()))
    return {**jwk, "kid": kid}


def issuer(
    iss: str, private_key: ec.EllipticCurvePrivateKey, kid: str = "k1", **fields: Any
) -> dict[str, Any]:
    """A trusted-issuer registry entry with the key's public half inline."""
    return {"iss": iss, "jwks": {"keys": [public_jwk(private_key, kid)]}, **fields}


def jwks_url_issuer(iss: str = "https://ehr.example.com", **fields: Any) -> dict[str, Any]:
    """A registry entry whose keys are fetched from ``<iss>/jwks`` (never, in these tests)."""
    return {"iss": iss, "jwks_url": f"{iss}/jwks", **fields}


def issuers_file(tmp_path: Path, *entries: dict[str, Any]) -> Path:
    """``CDS_TRUSTED_ISSUERS_FILE`` holding ``entries``."""
    path = tmp_path / "issuers.json"
    path.write_text(json.dumps(list(entries)))
    return path


def signed_token(
    private_key: ec.EllipticCurvePrivateKey, iss: str, aud: str, kid: str = "k1", **claims: Any
) -> str:
    """An ES384 JWT valid for five minutes from now, with a fresh jti (``claims`` override)."""
    now = int(time.time())
    payload = {"iss": iss, "aud": aud, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
    return jwt.encode({**payload, **claims}, private_key, algorithm="ES384", headers={"kid": kid})


# --- reading answers ------------------------------------------------------------------------------


def outcome_diagnostics(response: Any, status: int) -> str:
    """The diagnostics of the FHIR OperationOutcome a refusal answers with."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["severity"] == "error"
    diagnostics: str = body["issue"][0]["diagnostics"]
    return diagnostics
