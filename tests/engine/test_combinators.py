"""The evaluator's three-valued combinators: ``all``, ``any``, ``not`` and ``at_least`` with
unknowns (Kleene's logic: an unknown leaf is data that could not be read, never false).

The truth tables are written out, not recomputed; leaves are fixed-value nodes so each table row
is exactly one combination of child values.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import date

import pytest
from pydantic import TypeAdapter

from service.config import Settings
from service.engine.conditions.base import Node
from service.engine.conditions.combinators import AllNode, AnyNode, AtLeastNode, NotNode
from service.engine.evaluator import Evaluator
from service.engine.record import PatientRecord
from service.engine.result import Evidence, Result, Truth
from service.knowledge import schema
from service.knowledge.base import load_knowledge

SETTINGS = Settings()
KB = load_knowledge(SETTINGS.fhir_profiles_dir, SETTINGS.knowledge_dir)
T, F, U = True, False, None
VALUES: tuple[Truth, ...] = (T, F, U)
CONDITION: TypeAdapter[schema.Condition] = TypeAdapter(schema.Condition)


@dataclass(slots=True, eq=False, kw_only=True)
class Fixed(Node):
    """A leaf with a fixed value; it counts its evaluations."""

    value: Truth
    calls: list[int] = field(default_factory=list)

    def evaluate(self, ev: Evaluator) -> Result:
        self.calls.append(1)
        evidence = [Evidence("test", f"leaf {self.slot}", f"key {self.slot}")] if self.value else []
        bindings = {f"b{self.slot}": self.slot} if self.value else {}
        return Result(self.value, evidence, bindings)


class Tree:
    """Builds nodes with distinct memo slots, as the compiler would."""

    def __init__(self) -> None:
        self.slots = itertools.count()

    def leaf(self, value: Truth) -> Fixed:
        return Fixed(value=value, slot=next(self.slots))

    def all(self, *children: Node) -> AllNode:
        free = all(c.trace_free for c in children)
        return AllNode(children=children, trace_free=free, slot=next(self.slots))

    def any(self, *children: Node) -> AnyNode:
        free = all(c.trace_free for c in children)
        return AnyNode(children=children, trace_free=free, slot=next(self.slots))

    def not_(self, inner: Node) -> NotNode:
        return NotNode(inner=inner, trace_free=False, slot=next(self.slots))

    def at_least(self, need: int, *children: Node) -> AtLeastNode:
        return AtLeastNode(need=need, children=children, trace_free=False, slot=next(self.slots))


def evaluate(node: Node, *, explain: bool = False) -> Result:
    record = PatientRecord("p1", date(2026, 6, 1))
    return Evaluator(KB, record, explain=explain).eval(node)


ALL = {
    (T, T): T, (T, F): F, (T, U): U,
    (F, T): F, (F, F): F, (F, U): F,
    (U, T): U, (U, F): F, (U, U): U,
}  # fmt: skip
ANY = {
    (T, T): T, (T, F): T, (T, U): T,
    (F, T): T, (F, F): F, (F, U): U,
    (U, T): T, (U, F): U, (U, U): U,
}  # fmt: skip
NOT = {T: F, F: T, U: U}


@pytest.mark.parametrize("explain", [False, True])
@pytest.mark.parametrize(("a", "b"), list(ALL))
def test_all_truth_table(a: Truth, b: Truth, explain: bool) -> None:
    tree = Tree()
    assert evaluate(tree.all(tree.leaf(a), tree.leaf(b)), explain=explain).value is ALL[a, b]


@pytest.mark.parametrize("explain", [False, True])
@pytest.mark.parametrize(("a", "b"), list(ANY))
def test_any_truth_table(a: Truth, b: Truth, explain: bool) -> None:
    tree = Tree()
    assert evaluate(tree.any(tree.leaf(a), tree.leaf(b)), explain=explain).value is ANY[a, b]


@pytest.mark.parametrize("a", VALUES)
def test_not_truth_table(a: Truth) -> None:
    tree = Tree()
    assert evaluate(tree.not_(tree.leaf(a))).value is NOT[a]


@pytest.mark.parametrize("values", list(itertools.product(VALUES, repeat=3)))
def test_all_and_any_of_three(values: tuple[Truth, ...]) -> None:
    """n-ary: ``all`` is false with any false, else unknown with any unknown; ``any`` is true
    with any true, else unknown with any unknown."""
    tree = Tree()
    every = evaluate(tree.all(*(tree.leaf(v) for v in values))).value
    some = evaluate(tree.any(*(tree.leaf(v) for v in values))).value
    assert every is (F if F in values else U if U in values else T)
    assert some is (T if T in values else U if U in values else F)


AT_LEAST_2_OF_3 = {
    (T, T, T): T, (T, T, F): T, (T, T, U): T,
    (T, F, F): F, (T, F, U): U, (T, U, U): U,
    (F, F, F): F, (F, F, U): F, (F, U, U): U,
    (U, U, U): U,
}  # fmt: skip


@pytest.mark.parametrize(("values", "expected"), list(AT_LEAST_2_OF_3.items()))
def test_at_least_two_of_three(values: tuple[Truth, ...], expected: Truth) -> None:
    """True with two true; unknown while the unknown ones could still make two; else false.
    The order of the children does not matter."""
    for order in set(itertools.permutations(values)):
        tree = Tree()
        result = evaluate(tree.at_least(2, *(tree.leaf(v) for v in order)))
        assert result.value is expected, order


@pytest.mark.parametrize(
    ("need", "values", "expected"),
    [
        (1, (F, F), F),
        (1, (U, F), U),
        (1, (F, T), T),
        (3, (T, T, T), T),
        (3, (T, T, U), U),
        (3, (T, T, F), F),
    ],
)
def test_at_least_bounds(need: int, values: tuple[Truth, ...], expected: Truth) -> None:
    tree = Tree()
    assert evaluate(tree.at_least(need, *(tree.leaf(v) for v in values))).value is expected


def test_double_negation_keeps_unknown_unknown() -> None:
    tree = Tree()
    assert evaluate(tree.not_(tree.not_(tree.leaf(U)))).value is None
    assert evaluate(tree.not_(tree.not_(tree.leaf(F)))).value is False


def test_a_true_combination_carries_the_evidence_and_bindings_of_its_true_parts_only() -> None:
    tree = Tree()
    yes, no, unknown = tree.leaf(T), tree.leaf(F), tree.leaf(U)
    result = evaluate(tree.any(yes, no, unknown))
    assert [e.key for e in result.evidence] == [f"key {yes.slot}"]
    assert result.bindings == {f"b{yes.slot}": yes.slot}
    other = tree.leaf(T)
    result = evaluate(tree.at_least(2, yes, no, other))
    assert [e.key for e in result.evidence] == [f"key {yes.slot}", f"key {other.slot}"]


def test_one_fact_read_twice_is_listed_once() -> None:
    tree = Tree()
    fact = tree.leaf(T)
    result = evaluate(tree.all(fact, tree.any(fact, tree.leaf(F))))
    assert [e.key for e in result.evidence] == [f"key {fact.slot}"]


def test_false_and_unknown_combinations_carry_no_evidence() -> None:
    tree = Tree()
    yes = tree.leaf(T)
    assert evaluate(tree.all(yes, tree.leaf(F))).evidence == []
    assert evaluate(tree.all(yes, tree.leaf(U))).evidence == []
    assert evaluate(tree.not_(tree.leaf(F))).evidence == []  # "not" states no fact


def test_all_stops_at_the_first_false_without_explain_but_not_before_a_traced_child() -> None:
    """Without ``explain`` the rest of a false ``all`` is skipped, except ``not``/``at_least``
    children, whose trace lines the outcome keeps."""
    tree = Tree()
    skipped, traced = tree.leaf(T), tree.leaf(T)
    node = tree.all(tree.leaf(F), skipped, tree.not_(traced))
    result = evaluate(node)
    assert result.value is False
    assert skipped.calls == [] and traced.calls == [1]
    assert result.trace == ["not → false"]
    evaluate(node, explain=True)
    assert skipped.calls == [1]


def test_each_node_is_evaluated_once_per_record() -> None:
    tree = Tree()
    shared = tree.leaf(U)
    record = PatientRecord("p1", date(2026, 6, 1))
    evaluator = Evaluator(KB, record, explain=False)
    evaluator.eval(tree.any(shared, tree.all(shared, tree.leaf(T)), tree.not_(shared)))
    assert shared.calls == [1]


def test_traces_say_why_with_explain() -> None:
    tree = Tree()
    result = evaluate(tree.at_least(2, tree.leaf(T), tree.leaf(F), tree.leaf(U)), explain=True)
    assert result.value is None
    assert result.trace == ["at least 2: 1 true"]
    assert evaluate(tree.not_(tree.leaf(U)), explain=True).trace == ["not → unknown"]


def test_rule_file_combinators_compile_to_the_same_logic() -> None:
    """From the schema: ``age`` with no birth date is unknown, so ``not`` keeps it unknown,
    ``any`` with a true sibling is true and ``at_least`` 1 of (unknown, false) is unknown."""
    unknown = {"age": {"op": ">=", "years": 18}}
    cases = [
        ({"not": unknown}, None),
        ({"any": [unknown, {"not": {"all": [unknown, {"not": unknown}]}}]}, None),
        ({"all": [unknown, {"any": [unknown]}]}, None),
        ({"at_least": {"count": 1, "of": [unknown, {"not": {"not": unknown}}]}}, None),
    ]
    record = PatientRecord("p1", date(2026, 6, 1))
    for data, expected in cases:
        tree = _condition(data)
        assert Evaluator(KB, record, explain=False).evaluate(tree).value is expected, data
    adult = PatientRecord("p1", date(2026, 6, 1), birth_date=date(1970, 1, 1))
    for data, expected in [
        ({"not": unknown}, False),
        ({"at_least": {"count": 2, "of": [unknown, {"not": unknown}]}}, False),
        ({"any": [{"not": unknown}, unknown]}, True),
    ]:
        assert Evaluator(KB, adult, explain=False).evaluate(_condition(data)).value is expected


def _condition(data: object) -> schema.Condition:
    return CONDITION.validate_python(data)
