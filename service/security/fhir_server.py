"""Which ``fhirServer`` a hook request may name.

The service sends the request's ``fhirAuthorization`` bearer token to ``fhirServer``. Without
this check a caller could point us at any host and make us leak that token or fetch from an
internal address (SSRF), so the URL must be TLS and, for an authenticated caller, registered
for its issuer.
"""

from __future__ import annotations

from typing import Protocol
from urllib.parse import urlsplit

from service.config import is_loopback_host
from service.errors import ForbiddenFhirServer
from service.security.issuers import IssuerConfig


class AuthenticatedCaller(Protocol):
    """What the check needs from a caller: ``VerifiedCaller`` or the API's own caller type."""

    @property
    def iss(self) -> str: ...

    @property
    def issuer(self) -> IssuerConfig: ...


def check_fhir_server(url: str | None, caller: AuthenticatedCaller | None) -> None:
    """Raise ``ForbiddenFhirServer`` unless ``url`` may be called.

    * Any caller: https, or http only to a loopback host; no credentials, query or fragment.
    * Authenticated caller: ``url`` (trailing slash ignored) must be one of its
      issuer's ``fhir_servers``.
    * Local mode (``caller`` is None): the first rule alone.
    """
    if url is None:
        return
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        has_credentials = parts.username is not None or parts.password is not None
    except ValueError:
        raise ForbiddenFhirServer("fhirServer is not a valid URL") from None
    scheme = parts.scheme.lower()
    if has_credentials:
        raise ForbiddenFhirServer("fhirServer must not contain credentials")
    if "?" in url or "#" in url:
        # A base URL has neither: queries are appended to it, so either would corrupt them.
        raise ForbiddenFhirServer("fhirServer must be a base URL without a query or fragment")
    if not host or not (scheme == "https" or (scheme == "http" and is_loopback_host(host))):
        raise ForbiddenFhirServer(
            "fhirServer must be an https URL (plain http is allowed only for loopback hosts)"
        )
    if caller is not None and not caller.issuer.fhir_server_allowed(url):
        raise ForbiddenFhirServer(
            f"fhirServer is not registered for the calling CDS Client (issuer {caller.iss})"
        )
