"""One hook call end to end: prefetch → FHIR fallback → record → rules → cards.

The FHIR server is reached through a ``Fetcher`` (the httpx client in ``service.fhir``), so this
module knows nothing about HTTP. A failed query disables only the rules that need its data.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Protocol

from service.engine.cards import CardComposer, CardMeta
from service.engine.fhir_json import UNSET, Reference, Resource, resource_of
from service.engine.prefetch import (
    KEY_CATEGORY,
    OPTIONAL_CATEGORIES,
    PrefetchRead,
    fill_template,
    read_prefetch,
    templates_for,
)
from service.engine.reader import RecordReader
from service.engine.record import PatientRecord
from service.engine.rules import RuleEngine, RuleOutcome
from service.errors import PrefetchUnavailable
from service.knowledge.base import KnowledgeBase
from service.knowledge.schema import HOOKS


class FetchResultLike(Protocol):
    @property
    def ok(self) -> bool: ...
    @property
    def resources(self) -> list[dict[str, Any]]: ...
    @property
    def reason(self) -> str | None: ...


class Fetcher(Protocol):
    async def search_many(
        self, base_url: str, queries: dict[str, str], token: str | None, deadline_s: float
    ) -> Mapping[str, FetchResultLike]: ...

    async def read_references(
        self, base_url: str, refs: list[str], token: str | None, deadline_s: float
    ) -> dict[str, dict[str, Any]]: ...


@dataclass(frozen=True)
class HookCall:
    """The parts of a validated CDS Hooks request the pipeline reads."""

    hook: str
    patient_id: str
    user_id: str | None = None
    encounter_id: str | None = None
    prefetch: dict[str, Any] | None = None
    fhir_server: str | None = None
    token: str | None = None
    draft_orders: list[Any] = field(default_factory=list)
    selections: frozenset[str] | None = None


@dataclass
class HookResult:
    cards: list[dict[str, Any]]
    metas: list[CardMeta]
    outcomes: list[RuleOutcome]
    record: PatientRecord
    prefetch_hits: int
    prefetch_keys: int
    fetches: dict[str, str] = field(default_factory=dict)
    """key → "ok" or the failure reason, for each query run against the FHIR server."""
    fetch_ms: dict[str, float] = field(default_factory=dict)
    """key → elapsed ms of those queries (where the client measured it); the API layer counts
    both in metrics, so the engine imports no metrics library."""


def render_query(template: str, call: HookCall) -> str:
    """Fill the 2.0 tokens the templates use, each value encoded (never spliced in raw)."""
    user = call.user_id or ""
    return fill_template(
        template,
        {
            "context.patientId": call.patient_id,
            "context.userId": user,
            "userPractitionerId": user.split("/")[-1],
            "context.encounterId": call.encounter_id or "",
        },
    )


_MEDICATION_USERS = ("MedicationRequest", "MedicationStatement")


def _medication_targets(resources: list[Any]) -> tuple[set[str], list[tuple[Resource, str]]]:
    """(the ``Medication/id`` keys present, each (resource, reference) naming its drug by a
    non-contained ``medicationReference`` instead of a code)."""
    have = {
        f"Medication/{r.id}"
        for r in resources
        if isinstance(r, Resource) and r.resourceType == "Medication"
    }
    targets: list[tuple[Resource, str]] = []
    for resource in resources:
        if not isinstance(resource, Resource) or resource.resourceType not in _MEDICATION_USERS:
            continue
        if resource.medicationCodeableConcept is not UNSET:
            continue
        reference = resource.medicationReference
        target = reference.reference if isinstance(reference, Reference) else None
        if isinstance(target, str) and not target.startswith("#"):
            targets.append((resource, target))
    return have, targets


def unresolved_medication_refs(resources: list[Any]) -> list[str]:
    """Relative ``Medication/id`` references whose Medication nobody sent: these may be read."""
    have, targets = _medication_targets(resources)
    return sorted(
        {t for _, t in targets if t.startswith("Medication/") and t.count("/") == 1} - have
    )


def _unreadable_medications(resources: list[Any]) -> int:
    """Medication orders/statements whose drug is still unknown: a reference to a Medication
    neither sent nor read (matched by its last two segments, as the record reader does)."""
    have, targets = _medication_targets(resources)
    return sum(1 for _, t in targets if "/".join(t.rstrip("/").split("/")[-2:]) not in have)


class HookPipeline:
    def __init__(
        self,
        kb: KnowledgeBase,
        fetcher: Fetcher | None = None,
        *,
        deadline_s: float = 3.0,
        app_base_url: str | None = None,
    ) -> None:
        self.kb = kb
        self.fetcher = fetcher
        self.deadline_s = deadline_s
        self.reader = RecordReader(kb)
        self.engine = RuleEngine(kb)
        self.composer = CardComposer(kb, app_base_url)
        self.templates: dict[str, dict[str, str]] = {
            hook: templates_for(kb, hook) for hook in HOOKS
        }

    async def run(self, call: HookCall, as_of: date, *, explain: bool = False) -> HookResult:
        started = time.monotonic()
        templates = self.templates[call.hook]
        prefetched = read_prefetch(templates, call.prefetch)
        resources = list(prefetched.resources)
        unavailable: set[str] = set()
        fetches, fetch_ms = await self._fetch_missing(
            call, templates, prefetched, resources, unavailable
        )
        remaining = self.deadline_s - (time.monotonic() - started)
        resources.extend(await self._resolve_medications(call, resources, remaining))
        if _unreadable_medications(resources):
            # The drug of an order could not be read: a medication rule is not evaluable (a
            # "no such drug" answer could be wrong), and the card detail says what is missing.
            unavailable.add("medications")
        record = self.reader.read(
            call.patient_id,
            as_of,
            resources,
            unavailable=unavailable,
            drafts=call.draft_orders,
            selections=call.selections,
        )
        outcomes = self.engine.run(call.hook, record, explain=explain)
        cards, metas = self.composer.compose(record, outcomes)
        return HookResult(
            cards=cards,
            metas=metas,
            outcomes=outcomes,
            record=record,
            prefetch_hits=len(templates) - len(prefetched.missing),
            prefetch_keys=len(templates),
            fetches=fetches,
            fetch_ms=fetch_ms,
        )

    async def _fetch_missing(
        self,
        call: HookCall,
        templates: dict[str, str],
        prefetched: PrefetchRead,
        resources: list[Any],
        unavailable: set[str],
    ) -> tuple[dict[str, str], dict[str, float]]:
        """Fetch what the prefetch lacks (adding to ``resources`` and ``unavailable``); the
        status and time of each fetch. Raises when nothing needed can be had."""
        to_fetch = list(prefetched.missing)
        if call.fhir_server:
            to_fetch += [k for k in prefetched.paged if k not in to_fetch]
        fetches: dict[str, str] = {}
        fetch_ms: dict[str, float] = {}
        if to_fetch and not (call.fhir_server and self.fetcher is not None):
            # Optional data (a study already done) never fails the call: it is marked unreadable.
            optional = [k for k in to_fetch if KEY_CATEGORY[k] in OPTIONAL_CATEGORIES]
            unavailable.update(KEY_CATEGORY[k] for k in optional)
            to_fetch = [k for k in to_fetch if k not in optional]
        if not to_fetch:
            return fetches, fetch_ms
        if not call.fhir_server or self.fetcher is None:
            raise PrefetchUnavailable(
                "Prefetch keys absent and no fhirServer to fetch them from: "
                + ", ".join(sorted(to_fetch))
            )
        fetched = await self._fetch(call, {k: templates[k] for k in to_fetch}, self.deadline_s)
        for key in to_fetch:
            result = fetched.get(key)
            if result is not None and result.ok:
                resources.extend(map(resource_of, result.resources))
                fetches[key] = "ok"
            else:
                fetches[key] = (result.reason if result is not None else None) or "timeout"
                if key not in prefetched.paged:
                    unavailable.add(KEY_CATEGORY[key])
            elapsed_ms = getattr(result, "elapsed_ms", None)
            if isinstance(elapsed_ms, int | float):
                fetch_ms[key] = float(elapsed_ms)
        if (
            all(status != "ok" for status in fetches.values())
            and not prefetched.resources
            and (len(prefetched.missing) == len(templates))
        ):
            raise PrefetchUnavailable(
                "None of the data the service needs could be obtained from the FHIR server: "
                + ", ".join(f"{k} ({v})" for k, v in sorted(fetches.items())),
                fetches=fetches,
                fetch_ms=fetch_ms,
            )
        return fetches, fetch_ms

    async def _fetch(
        self, call: HookCall, templates: dict[str, str], deadline_s: float
    ) -> Mapping[str, FetchResultLike]:
        assert self.fetcher is not None and call.fhir_server is not None
        queries = {key: render_query(t, call) for key, t in templates.items()}
        return await self.fetcher.search_many(call.fhir_server, queries, call.token, deadline_s)

    async def _resolve_medications(
        self, call: HookCall, resources: list[Any], deadline_s: float
    ) -> list[object]:
        """Fetch the Medications that MedicationRequest/Statement reference but nobody sent."""
        pending = unresolved_medication_refs(resources)
        if not pending or not call.fhir_server or self.fetcher is None or deadline_s <= 0.05:
            return []
        resolved = await self.fetcher.read_references(
            call.fhir_server, pending, call.token, deadline_s
        )
        return [resource_of(resource) for resource in resolved.values()]
