"""Demo patients for the sandbox (package data: ``patients/*.json``; index in README.md).

Their clinical dates are written relative to ``DEMO_ANCHOR``; the sandbox, the tests and the bench
shift them by ``demo_shift_days()`` so that "recent" stays recent.
"""

from __future__ import annotations

import datetime as dt
import re
from importlib import resources
from pathlib import Path
from typing import Any

DEMO_ANCHOR = dt.date(2026, 11, 25)
_SHIFTED_KEYS = frozenset(
    {
        "effectiveDateTime",
        "issued",
        "authoredOn",
        "recordedDate",
        "onsetDateTime",
        "abatementDateTime",
        "authored",
        "dateAsserted",
        "start",
        "end",
        "valueDate",  # the sleep journal's night-date answer: the night the engine reads
    }
)
_DATE_RE = re.compile(r"^(\d{4}-\d{2}-\d{2})(.*)$")


def shift_dates(node: Any, days: int) -> Any:
    """Move clinical event dates (``_SHIFTED_KEYS``) by ``days``; ``birthDate`` never moves."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in _SHIFTED_KEYS and isinstance(value, str) and (m := _DATE_RE.match(value)):
                day = dt.date.fromisoformat(m.group(1)) + dt.timedelta(days=days)
                out[key] = day.isoformat() + m.group(2)
            else:
                out[key] = shift_dates(value, days)
        return out
    if isinstance(node, list):
        return [shift_dates(item, days) for item in node]
    return node


def demo_patient_files() -> list[Path]:
    """The demo bundles shipped as package data, in name order."""
    folder = resources.files("service.demo") / "patients"
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".json"))


def demo_shift_days(today: dt.date | None = None) -> int:
    return ((today or dt.date.today()) - DEMO_ANCHOR).days
