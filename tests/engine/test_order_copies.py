"""Suggested orders are copied from their templates without ``copy.deepcopy``: same resource."""

from __future__ import annotations

from service.config import Settings
from service.engine import cards
from service.knowledge import orders
from service.knowledge.base import load_knowledge

SETTINGS = Settings()
KB = load_knowledge(SETTINGS.fhir_profiles_dir, SETTINGS.knowledge_dir)


def _templates() -> list[dict[str, object]]:
    found = [orders.order_template(spec) for spec in KB.orders.values()]
    found += [
        orders.lab_order(analyte, KB.lab_order_category)
        for analyte in KB.analytes.values()
        if analyte.order is not None
    ]
    return found


def test_fast_copy_gives_what_orders_instantiate_gives() -> None:
    for template in _templates():
        for reasons in ([], ["Condition/a", "Observation/b"]):
            expected = orders.instantiate(template, "p1", reasons)
            got = cards._instantiate(cards._copier(template), "p1", reasons)
            assert repr(got) == repr(expected)  # same keys in the same order, same types


def test_copies_are_independent() -> None:
    fresh = cards._copier(_templates()[0])
    first = cards._instantiate(fresh, "p1", [])
    first["code"]["coding"].clear()
    assert cards._instantiate(fresh, "p1", [])["code"]["coding"]


def test_a_template_that_is_not_plain_json_is_deep_copied() -> None:
    template = {"resourceType": "ServiceRequest", "code": ("a", "b")}
    copied = cards._copier(template)()
    assert copied == template and copied["code"] == ("a", "b")
