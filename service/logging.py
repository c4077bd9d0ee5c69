"""Structured JSON logs: one object per line, with request context and never PHI or tokens.

Handlers add fields through ``log_fields`` (a context variable), so every line written while a
request is handled carries its hookInstance, service id and caller without passing them around.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

log_fields: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "log_fields", default=None
)

# Only these keys are ever written from ``extra`` or the context: an allow-list keeps patient
# data and tokens out of the log even when a caller passes them by mistake.
ALLOWED_FIELDS = frozenset(
    {
        "event",
        "method",
        "path",
        "status",
        "latency_ms",
        "hook_instance",
        "service_id",
        "hook",
        "iss",
        "jti",
        "outcome",
        "reason",
        "cards",
        "suppressed",
        "card_topics",
        "fetches",
        "skipped_resources",
        "error_type",
        "items",
        "stored",
        "duplicates",
        "rule",
        "host",
        "port",
        "mode",
    }
)


def bind(**fields: Any) -> None:
    """Add fields to every log line of the current request."""
    current = dict(log_fields.get() or {})
    current.update(fields)
    log_fields.set(current)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in (log_fields.get() or {}).items():
            if key in ALLOWED_FIELDS:
                entry[key] = value
        for key, value in record.__dict__.items():
            if key in ALLOWED_FIELDS:
                entry[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            # The exception type only: messages and tracebacks can quote request data.
            entry["error_type"] = record.exc_info[0].__name__
        return orjson.dumps(entry, default=str).decode()


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Database drivers log statements with their parameters at DEBUG: patient ids, comments.
    for noisy in ("uvicorn.access", "httpx", "httpcore", "aiosqlite", "sqlalchemy", "psycopg"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
