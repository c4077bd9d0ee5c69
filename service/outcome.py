"""FHIR OperationOutcome semantics shared by the prefetch reader and the FHIR client.

HAPI-style servers add warning and information outcomes to ordinary search results (e.g. "the
result was truncated"); those are not failures. Only an error or fatal issue fails the query, or
``not-supported`` at any severity: the server ignored a search parameter (possibly ``patient``),
so it answered a different, possibly cross-patient, question.
"""

from __future__ import annotations

from typing import Any

FAILING_SEVERITIES = ("error", "fatal")


def is_operation_outcome(value: object) -> bool:
    """True for an OperationOutcome, read as a dict or as a slim struct (``resourceType``)."""
    if isinstance(value, dict):
        return value.get("resourceType") == "OperationOutcome"
    return getattr(value, "resourceType", None) == "OperationOutcome"


def is_failed_outcome(outcome: Any) -> bool:
    """True if the OperationOutcome says the query failed (see the module docstring)."""
    issues = outcome.get("issue") if isinstance(outcome, dict) else getattr(outcome, "issue", None)
    return isinstance(issues, list) and any(
        isinstance(issue, dict)
        and (issue.get("severity") in FAILING_SEVERITIES or issue.get("code") == "not-supported")
        for issue in issues
    )
