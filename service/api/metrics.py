"""``GET /metrics``: the Prometheus exposition of ``service.metrics``.

It carries no patient data (see service/metrics.py), so it needs no CDS Client token; expose it
only to the cluster's scraper (docs/operations.md).
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from service import metrics

router = APIRouter()


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text exposition format",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
async def prometheus_metrics() -> Response:
    return Response(metrics.render(), media_type=metrics.CONTENT_TYPE_LATEST)
