"""The one module that imports ``fhir.resources`` (R4B models, the R4-compatible release):
knowledge files and order templates are validated through it at start-up, never per request.
The import is lazy: the models take seconds to import, and only loading the knowledge needs them."""

from __future__ import annotations

from typing import Any


def validate_resource(resource: dict[str, Any]) -> None:
    """Raise if ``resource`` is not a valid FHIR R4 resource of its ``resourceType``
    (fhir.resources raises KeyError for an unknown type, ValueError for invalid content)."""
    from fhir.resources.R4B import get_fhir_model_class

    get_fhir_model_class(str(resource.get("resourceType"))).model_validate(resource)
