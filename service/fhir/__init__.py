"""FHIR server access for the prefetch fallback."""

from service.fhir.client import FetchResult, FhirClient, make_http_client

__all__ = ["FetchResult", "FhirClient", "make_http_client"]
