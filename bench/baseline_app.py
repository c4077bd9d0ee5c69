"""The same-run baseline: a bare FastAPI app served exactly like the service.

It reads the request body as JSON (orjson, as the service does) and answers a fixed, small card
list. No authentication, no database, no rules: what is left is the cost of the server, the
framework and parsing the same bytes, so ``service rps / baseline rps`` is the share of that
ceiling the service keeps.

    uvicorn bench.baseline_app:app --loop uvloop --http httptools --no-access-log
"""

from __future__ import annotations

import orjson
from fastapi import FastAPI, Request
from starlette.responses import Response

CARDS = {
    "cards": [
        {
            "uuid": "6f1c2b7e-0000-4000-8000-000000000001",
            "summary": "Baseline card",
            "indicator": "info",
            "detail": "A fixed card from the benchmark baseline.",
            "source": {"label": "Benchmark baseline"},
        }
    ]
}

app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


@app.post("/cds-services/{service_id}")
async def call_service(service_id: str, request: Request) -> Response:
    data = orjson.loads(await request.body())
    if not isinstance(data, dict):
        return Response(b'{"error":"not an object"}', status_code=400)
    return Response(orjson.dumps(CARDS), media_type="application/json")


@app.get("/healthz")
async def healthz() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")
