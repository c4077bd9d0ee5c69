"""The service's one wall clock: injected into ``create_app`` and passed to the code whose
decisions depend on the time (the API, the database writer, the replay store), so a test can
freeze it in one place."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]
"""Returns an aware UTC datetime."""


def utc_now() -> datetime:
    return datetime.now(UTC)
