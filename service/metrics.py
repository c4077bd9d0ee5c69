"""Prometheus metrics: one registry per process, created once at import and served at ``/metrics``.

Every label has a bounded set of values (route templates, the three service ids, knowledge-base
topics, FHIR outcome reasons, HTTP status codes): nothing from a request body becomes a label, so
no patient data can reach a metric and the series count stays fixed.

Several apps built in one process (tests) share these objects; tests read deltas with
``sample(name, **labels)``. docs/operations.md says what each metric means and which alerts to set.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

__all__ = ["CONTENT_TYPE_LATEST", "REGISTRY", "render", "sample"]

disable_created_metrics()  # type: ignore[no-untyped-call]  # no ``*_created`` series: they double the output and no alert uses them
REGISTRY = CollectorRegistry(auto_describe=True)
# Process metrics (RSS, CPU, open fds), Python GC and version, on this registry too.
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUEST_SECONDS = Histogram(
    "cds_request_duration_seconds",
    "Time from the request's arrival to its last response byte.",
    ["route", "service", "status"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
GROUP_COMMIT_CALLS = Histogram(
    "cds_db_group_commit_calls",
    "Calls served by one group-commit transaction (service/db/batch.py).",
    ["kind"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    registry=REGISTRY,
)
IN_FLIGHT = Gauge(
    "cds_requests_in_flight",
    "HTTP requests being handled now.",
    registry=REGISTRY,
)
CARDS = Counter(
    "cds_cards_total",
    "Cards returned to the EHR (after suppression).",
    ["service", "topic", "indicator"],
    registry=REGISTRY,
)
SUPPRESSED = Counter(
    "cds_cards_suppressed_total",
    "Cards withheld because feedback on the same card key hides them.",
    ["service", "topic", "indicator"],
    registry=REGISTRY,
)
PREFETCH_KEYS = Counter(
    "cds_prefetch_keys_total",
    "Prefetch keys the service asked for, by whether the EHR sent them (hit) or not (miss).",
    ["service", "result"],
    registry=REGISTRY,
)
FHIR_QUERIES = Counter(
    "cds_fhir_queries_total",
    "FHIR fallback queries (prefetch keys fetched from fhirServer), by prefetch key and outcome.",
    ["key", "outcome"],
    registry=REGISTRY,
)
FHIR_SECONDS = Histogram(
    "cds_fhir_query_duration_seconds",
    "Duration of one FHIR fallback query (all its pages), by outcome.",
    ["outcome"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
RESOURCES_SKIPPED = Counter(
    "cds_resources_skipped_total",
    "FHIR resources in a hook call that could not be read (malformed, another patient's) and "
    "were skipped.",
    ["service"],
    registry=REGISTRY,
)
FEEDBACK_ITEMS = Counter(
    "cds_feedback_items_total",
    "Feedback items by result: stored (new row), duplicate (already stored), not-stored (503), "
    "ignored (no such card or suggestion issued to the caller), throttled (429).",
    ["service", "result"],
    registry=REGISTRY,
)
FEEDBACK_OUTCOMES = Counter(
    "cds_feedback_outcomes_total",
    "Acknowledged feedback items by the clinician's outcome (accepted, overridden).",
    ["service", "outcome"],
    registry=REGISTRY,
)
AUDIT_ROWS = Counter(
    "cds_audit_rows_total",
    "Hook-call audit rows: written, or skipped because the database failed.",
    ["result"],
    registry=REGISTRY,
)
DB_ERRORS = Counter(
    "cds_database_errors_total",
    "Database operations that failed, by operation (audit, suppression, feedback, readiness).",
    ["operation"],
    registry=REGISTRY,
)


def render() -> bytes:
    """The exposition text of every metric."""
    return generate_latest(REGISTRY)


def sample(name: str, **labels: str) -> float:
    """The current value of one sample (0.0 when it has not been observed yet)."""
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


# --- recording helpers: one call per event, so call sites stay one line ------------------------


def observe_request(route: str, service: str, status: int, seconds: float) -> None:
    REQUEST_SECONDS.labels(route=route, service=service, status=str(status)).observe(seconds)


def observe_cards(service: str, metas: Iterable[Any], *, suppressed: bool = False) -> None:
    counter = SUPPRESSED if suppressed else CARDS
    for meta in metas:
        counter.labels(service=service, topic=meta.topic, indicator=meta.indicator).inc()


def observe_hook(service: str, *, prefetch_hits: int, prefetch_keys: int, skipped: int) -> None:
    if prefetch_hits:
        PREFETCH_KEYS.labels(service=service, result="hit").inc(prefetch_hits)
    if prefetch_keys > prefetch_hits:
        PREFETCH_KEYS.labels(service=service, result="miss").inc(prefetch_keys - prefetch_hits)
    if skipped:
        RESOURCES_SKIPPED.labels(service=service).inc(skipped)


def observe_fhir(outcomes: Mapping[str, str], elapsed_ms: Mapping[str, float]) -> None:
    """One sample per fallback query: ``outcomes`` is key → "ok" or the failure reason,
    ``elapsed_ms`` key → the query's time where the client measured it."""
    for key, outcome in outcomes.items():
        FHIR_QUERIES.labels(key=key, outcome=outcome).inc()
        if key in elapsed_ms:
            FHIR_SECONDS.labels(outcome=outcome).observe(elapsed_ms[key] / 1000.0)


def observe_feedback(
    service: str, *, stored: int, duplicates: int, outcomes: list[str], ignored: int = 0
) -> None:
    if ignored:
        FEEDBACK_ITEMS.labels(service=service, result="ignored").inc(ignored)
    if stored:
        FEEDBACK_ITEMS.labels(service=service, result="stored").inc(stored)
    if duplicates:
        FEEDBACK_ITEMS.labels(service=service, result="duplicate").inc(duplicates)
    for outcome in outcomes:
        FEEDBACK_OUTCOMES.labels(service=service, outcome=outcome).inc()


def observe_feedback_throttled(service: str, items: int) -> None:
    FEEDBACK_ITEMS.labels(service=service, result="throttled").inc(items)


def observe_feedback_failed(service: str, items: int) -> None:
    FEEDBACK_ITEMS.labels(service=service, result="not-stored").inc(items)
    DB_ERRORS.labels(operation="feedback").inc()


def observe_audit(written: bool) -> None:
    AUDIT_ROWS.labels(result="written" if written else "skipped").inc()
    if not written:
        DB_ERRORS.labels(operation="audit").inc()
