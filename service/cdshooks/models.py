"""CDS Hooks 2.0.1 wire models: what an EHR sends and what the service answers.

Input models are lenient where real clients are (extra fields, Bundles without ``type``) and strict
where the spec is (required fields, enums). Output is built by the card composer as plain dicts
and documented here for the OpenAPI schema.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class FhirAuthorization(_Lenient):
    """OAuth 2.0 bearer token the service may use to query ``fhirServer``."""

    access_token: str = Field(min_length=1)
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


class HookRequest(_Lenient):
    """The body of ``POST /cds-services/{id}``."""

    hook: str = Field(min_length=1)
    hookInstance: str = Field(min_length=1, max_length=128)
    fhirServer: str | None = None
    fhirAuthorization: FhirAuthorization | None = None
    context: HookContext
    prefetch: dict[str, Any] | None = None


class Coding(BaseModel):
    system: str
    code: str
    display: str | None = None


class AcceptedSuggestion(_Lenient):
    id: str = Field(min_length=1)


class OverrideReason(_Lenient):
    reason: Coding | None = None
    userComment: str | None = Field(default=None, max_length=4000)


class FeedbackEntry(_Lenient):
    """One item of the feedback array (CDS Hooks 2.0 §Feedback)."""

    card: str = Field(min_length=1, max_length=128)
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[AcceptedSuggestion] | None = None
    overrideReason: OverrideReason | None = None
    outcomeTimestamp: str = Field(min_length=1)


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
    summary: str = Field(max_length=139)
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
