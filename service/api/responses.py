"""The one JSON response helper of the API layer (orjson: faster than the stdlib and it emits
UTF-8 directly); OperationOutcome errors have theirs in problems.py (FHIR media type)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.responses import Response


def json_response(
    data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(data),
        status_code=status,
        media_type="application/json",
        headers=dict(headers) if headers else None,
    )
