"""Property tests: arbitrary, truncated and type-confused FHIR resources through the engine.

The record reader, the rule engine and the card composer (and the whole pipeline, prefetch
reading included) never raise, whatever the resources look like. A resource that cannot be read
is skipped and counted; a good ferritin Observation beside bad resources still counts.
"""

from __future__ import annotations

import asyncio
import copy
from datetime import date
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.config import Settings
from service.engine.pipeline import HookCall, HookPipeline
from service.errors import PrefetchUnavailable
from service.knowledge.base import load_knowledge
from service.knowledge.schema import HOOKS
from tests.conftest import PATIENT_VIEW_KEYS
from tests.factories import ferritin, rls_condition

AS_OF = date(2026, 11, 25)
PROPERTY = settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_PIPELINE: list[HookPipeline] = []


def engine() -> HookPipeline:
    """One pipeline (knowledge base loaded once) for every example: it keeps no state."""
    if not _PIPELINE:
        config = Settings()
        _PIPELINE.append(
            HookPipeline(load_knowledge(config.fhir_profiles_dir, config.knowledge_dir))
        )
    return _PIPELINE[0]


GOOD_FERRITIN = ferritin("p1", 40, oid="good-ferritin")

TEMPLATES: list[dict[str, Any]] = [
    GOOD_FERRITIN,
    rls_condition("p1"),
    {"resourceType": "Patient", "id": "p1", "birthDate": "1970-01-01", "gender": "female"},
    {
        "resourceType": "MedicationRequest",
        "id": "mr1",
        "status": "active",
        "subject": {"reference": "Patient/p1"},
        "authoredOn": "2026-01-01",
        "medicationCodeableConcept": {
            "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "36437"}],
            "text": "sertraline",
        },
    },
    {
        "resourceType": "MedicationStatement",
        "id": "ms1",
        "status": "active",
        "subject": {"reference": "Patient/p1"},
        "medicationReference": {"reference": "Medication/m1"},
    },
    {"resourceType": "Medication", "id": "m1", "code": {"text": "mirtazapine"}},
    {
        "resourceType": "Observation",
        "id": "sym1",
        "status": "final",
        "category": [{"coding": [{"code": "survey"}]}],
        "code": {"text": "leg jerks at sleep onset"},
        "subject": {"reference": "Patient/p1"},
        "valueBoolean": True,
        "interpretation": [{"coding": [{"code": "POS"}]}],
        "referenceRange": [{"low": {"value": 30, "code": "ng/mL"}}],
    },
    {
        "resourceType": "QuestionnaireResponse",
        "id": "qr1",
        "status": "completed",
        "questionnaire": "https://sleep-cds.example.org/fhir/Questionnaire/sleep-journal",
        "subject": {"reference": "Patient/p1"},
        "authored": "2026-11-20",
        "item": [
            {"linkId": "night", "answer": [{"valueDate": "2026-11-19"}]},
            {"linkId": "jerks", "answer": [{"valueBoolean": True}]},
            {"linkId": "group", "item": [{"linkId": "count", "answer": [{"valueInteger": 3}]}]},
        ],
    },
]

FHIR_KEYS = sorted(
    {key for resource in TEMPLATES for key in resource}
    | {"coding", "system", "code", "value", "unit", "reference", "text", "linkId", "answer"}
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["final", "active", "2026-11-01", "Patient/p1", "ng/mL", "2276-4", ""])
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(FHIR_KEYS) | st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@st.composite
def type_confused(draw: st.DrawFn) -> dict[str, Any]:
    """A realistic resource with values at random paths swapped for values of another type."""
    resource: dict[str, Any] = copy.deepcopy(draw(st.sampled_from(TEMPLATES)))
    for _ in range(draw(st.integers(1, 4))):
        node: Any = resource
        path = []
        while isinstance(node, dict | list) and node and draw(st.booleans()):
            key = draw(
                st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node)))
            )
            path.append((node, key))
            node = node[key]
        if path:
            parent, key = path[-1]
            parent[key] = draw(json_values)
        else:
            resource[draw(st.sampled_from(FHIR_KEYS))] = draw(json_values)
    return resource


def _drop_keys(value: Any, draw: st.DrawFn) -> Any:
    if isinstance(value, dict):
        kept = {k: v for k, v in value.items() if draw(st.integers(0, 3)) > 0}
        return {k: _drop_keys(v, draw) for k, v in kept.items()}
    if isinstance(value, list):
        cut = draw(st.integers(0, len(value)))
        return [_drop_keys(v, draw) for v in value[:cut]]
    return value


@st.composite
def truncated(draw: st.DrawFn) -> Any:
    """A resource cut short: elements dropped at every level, lists cut, or the raw JSON text
    cut mid-way (which reaches the engine as a string, not an object)."""
    resource = draw(st.sampled_from(TEMPLATES))
    if draw(st.booleans()):
        return _drop_keys(resource, draw)
    text = orjson.dumps(resource).decode()
    return text[: draw(st.integers(0, len(text) - 1))]


arbitrary = st.dictionaries(
    st.sampled_from(FHIR_KEYS) | st.text(max_size=8), json_values, max_size=8
)
any_resource = arbitrary | type_confused() | truncated() | json_values


def _run_engine(resources: list[Any], drafts: list[Any] | None = None) -> Any:
    pipeline = engine()
    record = pipeline.reader.read(
        "p1",
        AS_OF,
        resources,
        drafts=drafts or [],
        selections=frozenset({"MedicationRequest/mr1"}),
    )
    for hook in HOOKS:
        for explain in (False, True):
            outcomes = pipeline.engine.run(hook, record, explain=explain)
            cards, metas = pipeline.composer.compose(record, outcomes)
            assert len(cards) == len(metas)
    return record


@PROPERTY
@given(st.lists(any_resource, max_size=12), st.lists(any_resource, max_size=3))
def test_engine_never_raises(resources: list[Any], drafts: list[Any]) -> None:
    record = _run_engine(resources, drafts)
    assert record.skipped >= sum(not isinstance(r, dict) for r in resources)


@PROPERTY
@given(
    st.lists(
        st.none() | st.integers() | st.text(max_size=30) | st.lists(scalars, max_size=3),
        max_size=5,
    ),
    st.lists(json_values.filter(lambda v: not isinstance(v, dict) or not v), max_size=4),
    st.randoms(use_true_random=False),
)
def test_bad_resources_are_skipped_and_counted_and_good_ferritin_still_counts(
    not_objects: list[Any], bad_codes: list[Any], rnd: Any
) -> None:
    # Observations whose code is unreadable (not a CodeableConcept, or empty): skipped, counted.
    unreadable = [
        {**GOOD_FERRITIN, "id": f"bad-{i}", "code": code} for i, code in enumerate(bad_codes)
    ]
    resources = [GOOD_FERRITIN, *not_objects, *unreadable]
    rnd.shuffle(resources)
    record = _run_engine(resources)
    assert record.skipped == len(not_objects) + len(unreadable)
    assert [lab.ref for lab in record.labs["ferritin"]] == ["Observation/good-ferritin"]
    assert record.labs["ferritin"][0].value == 40


@PROPERTY
@given(st.lists(any_resource, max_size=10), st.randoms(use_true_random=False))
def test_good_ferritin_counts_whatever_is_beside_it(junk: list[Any], rnd: Any) -> None:
    # Junk never shares the good Observation's id (the reader counts one resource id once).
    junk = [r for r in junk if not (isinstance(r, dict) and r.get("id") == "good-ferritin")]
    resources = [GOOD_FERRITIN, *junk]
    rnd.shuffle(resources)
    record = _run_engine(resources)
    assert "Observation/good-ferritin" in [lab.ref for lab in record.labs.get("ferritin", [])]


bundles = st.builds(
    lambda entries: {"resourceType": "Bundle", "type": "searchset", "entry": entries},
    st.lists(st.fixed_dictionaries({"resource": any_resource}) | json_values, max_size=6),
)


@PROPERTY
@given(st.dictionaries(st.sampled_from(PATIENT_VIEW_KEYS), json_values | any_resource | bundles))
def test_pipeline_never_raises_on_any_prefetch(prefetch: dict[str, Any]) -> None:
    """The whole pipeline, prefetch semantics included. A value that is not what the template
    asks for means "fetch it"; with no fhirServer that is the one expected error (412)."""
    full = dict.fromkeys(PATIENT_VIEW_KEYS) | prefetch
    pipeline = engine()
    for hook in HOOKS:
        call = HookCall(hook=hook, patient_id="p1", prefetch=full, draft_orders=[])
        try:
            result = asyncio.run(pipeline.run(call, AS_OF, explain=True))
        except PrefetchUnavailable:
            continue
        assert result.prefetch_keys >= result.prefetch_hits


def test_deeply_nested_questionnaire_items_do_not_recurse_forever() -> None:
    item: dict[str, Any] = {"linkId": "leaf", "answer": [{"valueBoolean": True}]}
    for depth in range(5000):
        item = (
            {"linkId": f"g{depth}", "item": [item]} if depth % 2 else {"answer": [{"item": [item]}]}
        )
    journal = {**TEMPLATES[-1], "item": [item]}
    record = _run_engine([journal, GOOD_FERRITIN])
    assert record.labs["ferritin"]
