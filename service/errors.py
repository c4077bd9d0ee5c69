"""The service's error tree. Only ``service.api`` maps these to HTTP.

CDSError
├── InvalidRequest          400  malformed JSON or a request the spec forbids
│   └── ForbiddenFhirServer 400  fhirServer not allowed for this issuer
├── UnknownService          404
├── PayloadTooLarge         413
├── RequestTimeout          408  the body did not arrive within CDS_BODY_READ_TIMEOUT_S
├── PrefetchUnavailable     412  data the rules need could not be obtained
├── AuthenticationFailed    401  the caller's JWT was refused
├── TooManyRequests         429  a client sent more than its share (feedback rate per issuer)
├── StorageUnavailable      503  the database could not store what must be stored
└── KnowledgeError              a rule or value set is invalid; the service refuses to start
"""

from __future__ import annotations


class CDSError(Exception):
    """Root of every error the service raises on purpose."""

    status_code = 500
    issue_code = "exception"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(CDSError):
    """The request body or parameters break the CDS Hooks contract."""

    status_code = 400
    issue_code = "invalid"


class ForbiddenFhirServer(InvalidRequest):
    """``fhirServer`` is not one of the caller's registered FHIR servers."""

    issue_code = "security"


class UnknownService(CDSError):
    """No CDS service with this id."""

    status_code = 404
    issue_code = "not-found"


class PayloadTooLarge(CDSError):
    """Body over ``CDS_MAX_BODY_BYTES``."""

    status_code = 413
    issue_code = "too-costly"


class RequestTimeout(CDSError):
    """The request body did not arrive in time."""

    status_code = 408
    issue_code = "timeout"


class PrefetchUnavailable(CDSError):
    """Required data was neither prefetched nor obtainable from the FHIR server.

    ``fetches`` (key → "ok" or the failure reason) and ``fetch_ms`` (key → elapsed ms) report the
    FHIR queries tried, so the API layer counts them in metrics as it does for an answered call.
    """

    status_code = 412
    issue_code = "not-found"

    def __init__(
        self,
        message: str,
        fetches: dict[str, str] | None = None,
        fetch_ms: dict[str, float] | None = None,
    ) -> None:
        super().__init__(message)
        self.fetches = fetches or {}
        self.fetch_ms = fetch_ms or {}


class AuthenticationFailed(CDSError):
    """The bearer token was refused; ``reason`` is for the log only, never the client."""

    status_code = 401
    issue_code = "login"

    def __init__(self, reason: str) -> None:
        super().__init__("Authentication failed")
        self.reason = reason


class TooManyRequests(CDSError):
    """A client exceeded a documented rate (feedback items per issuer per minute)."""

    status_code = 429
    issue_code = "throttled"


class ServerBusy(CDSError):
    """The worker holds as many request bodies as it may (``CDS_MAX_BODY_BYTES_IN_FLIGHT``) and
    this one waited for room until its body-read deadline."""

    status_code = 503
    issue_code = "transient"


class StorageUnavailable(CDSError):
    """The database could not durably store what the caller must not lose."""

    status_code = 503
    issue_code = "transient"


class KnowledgeError(CDSError):
    """A knowledge file is invalid; raised at start-up with the file and field named."""
