"""Schemathesis against the service's own OpenAPI schema: every operation, derandomized.

Checks on every generated request: no 5xx; status code, content type and body conform to what
the schema documents; every 4xx carries a FHIR OperationOutcome. The run totals at least 1,000
cases (asserted by the last test of this module).

The FHIR fallback is a stub that answers "connect-error" at once: generated ``fhirServer`` URLs
are never contacted (the service runs in local mode, where any https URL would be allowed).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hypothesis
import orjson
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.cdshooks.discovery import SERVICES
from service.main import create_app
from tests.conftest import PATIENT_VIEW_KEYS, make_settings

SEED = 20261125
EXAMPLES_PER_OPERATION = 300
MIN_CASES = 1000
CASES: dict[str, int] = {}
STATUSES: dict[str, dict[int, int]] = {}


class _Failed:
    ok = False
    resources: list[dict[str, Any]] = []  # noqa: RUF012
    reason = "connect-error"
    elapsed_ms = 0.0


class OfflineFetcher:
    """Every FHIR query fails at once; nothing leaves the process."""

    async def search_many(
        self, base_url: str, queries: dict[str, str], token: str | None, deadline_s: float
    ) -> Mapping[str, _Failed]:
        return {key: _Failed() for key in queries}

    async def read_references(
        self, base_url: str, refs: list[str], token: str | None, deadline_s: float
    ) -> dict[str, dict[str, Any]]:
        return {}


HOOK_OF = {spec.id: spec.hook for spec in SERVICES}


def _steer(case: Any) -> None:
    """Positive hook calls: name the hook of the service in the path, give order hooks their
    draft orders, and (every other case) answer the remaining prefetch keys with null, so the
    generated resources reach the record reader and the rules. A schema cannot tie a body field
    to a path parameter; without this nearly every call stops at "hook does not match" or 412."""
    meta = case.meta
    if meta is None or str(meta.generation.mode) != "positive":
        return
    if not case.operation.path.endswith("{service_id}") and not case.operation.path.endswith(
        "/explain"
    ):
        return
    body, hook = case.body, HOOK_OF.get(str(case.path_parameters.get("service_id")))
    if not isinstance(body, dict) or hook is None:
        return
    body["hook"] = hook
    context = body.get("context")
    if isinstance(context, dict) and hook != "patient-view":
        if context.get("draftOrders") is None:
            context["draftOrders"] = {"resourceType": "Bundle", "entry": []}
        if hook == "order-select" and context.get("selections") is None:
            context["selections"] = []
    if len(str(body.get("hookInstance"))) % 2 == 0:
        prefetch = body.get("prefetch")
        body["prefetch"] = dict.fromkeys(PATIENT_VIEW_KEYS) | (
            prefetch if isinstance(prefetch, dict) else {}
        )


@schemathesis.check
def operation_outcome_on_4xx(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every client error is a FHIR OperationOutcome with at least one issue."""
    if not 400 <= response.status_code < 500:
        return None
    content_type = response.headers.get("content-type", [""])
    content_type = content_type[0] if isinstance(content_type, list) else content_type
    assert content_type.startswith("application/fhir+json"), content_type
    body = orjson.loads(response.content)
    assert body.get("resourceType") == "OperationOutcome", body
    assert body["issue"] and body["issue"][0]["severity"] == "error", body
    return True


def _schema() -> Any:
    # Built at import: schemathesis's lazy ``from_fixture`` does not work with this pytest.
    workdir = Path(tempfile.mkdtemp(prefix="cds-fuzz-"))
    settings = make_settings(f"sqlite+aiosqlite:///{workdir / 'cds.db'}", explain_enabled=True)
    app = create_app(settings, fetcher=OfflineFetcher(), configure_logging=False)
    loaded = schemathesis.openapi.from_asgi("/openapi.json", app)
    loaded.config.seed = SEED
    loaded.config.generation.update(deterministic=True, max_examples=EXAMPLES_PER_OPERATION)
    return loaded


schema = _schema()


@schema.parametrize()  # type: ignore[untyped-decorator]  # schemathesis is untyped here
@hypothesis.settings(
    max_examples=EXAMPLES_PER_OPERATION,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    print_blob=True,
)
def test_api_conforms_to_its_schema(case: Any) -> None:
    CASES[case.operation.label] = CASES.get(case.operation.label, 0) + 1
    _steer(case)
    response = case.call_and_validate(
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
            operation_outcome_on_4xx,
        ]
    )
    tally = STATUSES.setdefault(case.operation.label, {})
    tally[response.status_code] = tally.get(response.status_code, 0) + 1


def test_enough_cases_ran() -> None:
    """The parametrized test above ran first (same module, file order) over every operation."""
    if not CASES:
        pytest.skip("run together with test_api_conforms_to_its_schema")
    total = sum(CASES.values())
    print(f"schemathesis cases: {total} {CASES} {STATUSES}")
    assert len(CASES) >= 7, CASES
    assert total >= MIN_CASES, CASES
    for label, statuses in STATUSES.items():  # the generated calls also got past validation
        if label.startswith("POST"):
            assert statuses.get(200, 0) >= 20, (label, statuses)
