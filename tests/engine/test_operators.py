"""The one registry of condition operators covers the schema, and each operator's declared
references and reads are what the loader and prefetch rely on."""

from __future__ import annotations

from typing import get_args

from service.engine.conditions import OPERATORS
from service.engine.conditions.base import Leaf
from service.knowledge import schema


def _schema_conditions() -> set[type[schema.Cond]]:
    union = get_args(get_args(schema.Condition)[0])
    return {get_args(member)[0] for member in union}


def test_every_schema_operator_has_exactly_one_node_class() -> None:
    assert set(OPERATORS) == _schema_conditions()
    assert len(set(OPERATORS.values())) == len(OPERATORS)


def test_leaf_node_operator_names_match_the_rule_file_keys() -> None:
    for condition, node in OPERATORS.items():
        if issubclass(node, Leaf):
            assert issubclass(condition, schema.LeafCond)
            assert node.operator == next(iter(condition.model_fields))


def test_declared_references_name_fields_of_the_spec() -> None:
    for condition in OPERATORS:
        if issubclass(condition, schema.LeafCond):
            spec = condition.model_fields[next(iter(condition.model_fields))].annotation
            assert isinstance(spec, type)
            for _, name in spec.references:
                assert name in spec.model_fields, (spec.__name__, name)
