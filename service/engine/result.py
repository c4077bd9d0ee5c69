"""Three-valued results of conditions: a truth value, the evidence behind it, its bindings.

A leaf whose data could not be read is *unknown* (``None``), never false: "no ferritin on file"
must not be claimed because the lab query failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Truth = bool | None


@dataclass(frozen=True, slots=True)
class Evidence:
    """One fact behind a card: a line for the clinician and a key for the card fingerprint."""

    kind: str
    text: str
    key: str
    ref: str | None = None


@dataclass(slots=True)
class Result:
    value: Truth
    evidence: list[Evidence] = field(default_factory=list)
    bindings: dict[str, Any] = field(default_factory=dict)
    trace: list[str] = field(default_factory=list)


def combine(results: list[Result]) -> tuple[list[Evidence], dict[str, Any], list[str]]:
    """Evidence and bindings of the true parts; one fact read by two conditions (ferritin > 75
    and ferritin <= 100) is listed once."""
    evidence: list[Evidence] = []
    bindings: dict[str, Any] = {}
    seen: set[str] = set()
    for result in results:
        if result.value is True:
            for item in result.evidence:
                if item.key not in seen:
                    seen.add(item.key)
                    evidence.append(item)
            bindings.update(result.bindings)
    return evidence, bindings, [line for r in results for line in r.trace]


def trace_of(parts: list[Result]) -> list[str]:
    return [line for p in parts for line in p.trace]


def word(value: Truth) -> str:
    return {True: "true", False: "false", None: "unknown"}[value]
