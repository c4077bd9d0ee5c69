"""CDS Hooks 2.0.1 wire models: what an EHR sends and what the service answers.

Input models are lenient where real clients are (extra fields, Bundles without ``type``) and strict
where the spec is (required fields, enums). Output is built by the card composer as plain dicts
and documented here for the OpenAPI schema.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# FHIR R4 ``id``: what goes into a FHIR URL path or search value. "." and ".." fit the grammar
# but are dot segments in a URL path (``Patient/..`` is the server root), so they are refused.
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
REFERENCE = re.compile(r"[A-Z][A-Za-z]{0,63}/[A-Za-z0-9\-.]{1,64}")
# CDS Hooks: a card summary is under 140 characters (the one limit; cards.py shortens to it).
SUMMARY_MAX = 139
# Stored strings (audit and feedback columns) are bounded here, so a long value is a 400 and
# never a failed database write.
MAX_TOKEN_CHARS = 8192


def is_fhir_id(value: str) -> bool:
    return FHIR_ID.fullmatch(value) is not None and value not in (".", "..")


def is_reference(value: str) -> bool:
    """``ResourceType/id`` (a relative literal reference), as CDS Hooks requires for userId."""
    return REFERENCE.fullmatch(value) is not None and is_fhir_id(value.partition("/")[2])


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class FhirAuthorization(_Lenient):
    """OAuth 2.0 bearer token the service may use to query ``fhirServer``."""

    access_token: str = Field(min_length=1, max_length=MAX_TOKEN_CHARS)
    token_type: str = "Bearer"
    expires_in: int | None = None
    scope: str | None = None
    subject: str | None = None
    patient: str | None = None

    @field_validator("access_token")
    @classmethod
    def _header_safe(cls, value: str) -> str:
        # The token becomes an HTTP header value; refuse what could split or corrupt a header.
        if not value.isascii() or not value.isprintable():
            raise ValueError("access_token must be printable ASCII")
        return value

    @field_validator("token_type")
    @classmethod
    def _bearer(cls, value: str) -> str:
        if value.lower() != "bearer":
            raise ValueError("token_type must be Bearer")
        return value


class HookContext(_Lenient):
    """Union of the context fields of patient-view, order-select and order-sign."""

    userId: str | None = Field(default=None, min_length=1)
    patientId: str | None = Field(default=None, min_length=1)
    encounterId: str | None = None
    selections: list[str] | None = None
    draftOrders: dict[str, Any] | None = None

    @field_validator("patientId", "encounterId")
    @classmethod
    def _fhir_id(cls, value: str | None) -> str | None:
        # Ids go into FHIR URLs and the audit trail: only the FHIR id grammar is accepted.
        if value is not None and not is_fhir_id(value):
            raise ValueError("must be a FHIR id ([A-Za-z0-9-.]{1,64}, not '.' or '..')")
        return value

    @field_validator("userId")
    @classmethod
    def _reference(cls, value: str | None) -> str | None:
        if value is not None and not is_reference(value):
            raise ValueError("must be a FHIR reference ResourceType/id, e.g. Practitioner/123")
        return value


class HookRequest(_Lenient):
    """The body of ``POST /cds-services/{id}``."""

    hook: str = Field(min_length=1)
    hookInstance: str = Field(min_length=1, max_length=128)
    fhirServer: str | None = Field(default=None, max_length=2048)
    fhirAuthorization: FhirAuthorization | None = None
    context: HookContext
    prefetch: dict[str, Any] | None = None


class Coding(BaseModel):
    system: str
    code: str
    display: str | None = None


class ReasonCoding(BaseModel):
    """An override reason as stored: bounded like its database columns."""

    system: str = Field(max_length=256)
    code: str = Field(max_length=64)
    display: str | None = Field(default=None, max_length=1024)


class AcceptedSuggestion(_Lenient):
    id: str = Field(min_length=1, max_length=128)


class OverrideReason(_Lenient):
    reason: ReasonCoding | None = None
    userComment: str | None = Field(default=None, max_length=4000)


class FeedbackEntry(_Lenient):
    """One item of the feedback array (CDS Hooks 2.0 §Feedback)."""

    card: str = Field(min_length=1, max_length=128)
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[AcceptedSuggestion] | None = Field(default=None, max_length=100)
    overrideReason: OverrideReason | None = None
    outcomeTimestamp: str = Field(min_length=1, max_length=64)


class FeedbackRequest(_Lenient):
    feedback: list[FeedbackEntry] = Field(min_length=1, max_length=1000)


class Source(BaseModel):
    label: str
    url: str | None = None
    topic: Coding | None = None


class Action(BaseModel):
    type: Literal["create", "update", "delete"]
    description: str
    resource: dict[str, Any] | None = None
    resourceId: str | None = None


class Suggestion(BaseModel):
    label: str
    uuid: str | None = None
    isRecommended: bool | None = None
    actions: list[Action] | None = None


class Link(BaseModel):
    label: str
    url: str
    type: Literal["absolute", "smart"]
    appContext: str | None = None


class Card(BaseModel):
    uuid: str
    summary: str = Field(max_length=SUMMARY_MAX)
    detail: str | None = None
    indicator: Literal["info", "warning", "critical"]
    source: Source
    suggestions: list[Suggestion] | None = None
    selectionBehavior: Literal["at-most-one", "any"] | None = None
    overrideReasons: list[Coding] | None = None
    links: list[Link] | None = None


class HookResponse(BaseModel):
    cards: list[Card]
    systemActions: list[Action] | None = None


class ServiceDefinition(BaseModel):
    hook: str
    id: str
    title: str
    description: str
    prefetch: dict[str, str] | None = None
    usageRequirements: str | None = None


class Discovery(BaseModel):
    services: list[ServiceDefinition]


class OperationOutcomeIssue(BaseModel):
    severity: Literal["fatal", "error", "warning", "information"]
    code: str
    diagnostics: str | None = None
    expression: list[str] | None = None


class OperationOutcome(BaseModel):
    resourceType: Literal["OperationOutcome"] = "OperationOutcome"
    issue: list[OperationOutcomeIssue]
