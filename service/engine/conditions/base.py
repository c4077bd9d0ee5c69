"""The compiled condition node every operator subclasses, and what operators share.

A node is compiled once per knowledge base and holds whatever of its spec does not depend on the
record (label, value-set title, threshold in canonical units); ``evaluate`` reads the record
through the ``Evaluator``, which memoises per node and per record.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from service.knowledge.base import KnowledgeBase

if TYPE_CHECKING:
    from service.engine.evaluator import Evaluator
    from service.engine.result import Result

COMPARATORS: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
}

Reads = tuple[frozenset[str], frozenset[str], frozenset[str]]
"""(data categories, analytes, procedure ValueSets) a condition reads: what prefetch asks for."""
NOTHING: Reads = (frozenset(), frozenset(), frozenset())


class Compiler(Protocol):
    """What a node's ``compile`` needs of the program: its knowledge, child compilation and the
    table that makes structurally equal conditions one node."""

    kb: KnowledgeBase

    def node(self, condition: Any) -> Node: ...

    def intern(self, key: Hashable, node: Node) -> Node: ...


@dataclass(slots=True, eq=False, kw_only=True)
class Node:
    """A compiled condition. ``slot`` indexes the evaluator's memo; ``trace_free`` says no
    ``not`` or ``at_least`` is below, so without ``explain`` its trace is always empty."""

    label: str = ""
    trace_free: bool = True
    slot: int = -1

    @classmethod
    def compile(cls, condition: Any, program: Compiler) -> Node:
        raise NotImplementedError

    @classmethod
    def reads(cls, condition: Any) -> Reads:
        return NOTHING

    def evaluate(self, ev: Evaluator) -> Result:
        raise NotImplementedError


@dataclass(slots=True, eq=False, kw_only=True)
class Leaf(Node):
    """A condition that reads the record; two with equal specs compile to one node."""

    operator: ClassVar[str]

    @classmethod
    def compile(cls, condition: Any, program: Compiler) -> Node:
        spec = condition.spec
        key = (cls.operator, freeze(spec.model_dump()))
        return program.intern(key, cls.build(spec, program.kb))

    @classmethod
    def build(cls, spec: Any, kb: KnowledgeBase) -> Leaf:
        raise NotImplementedError


def freeze(value: Any) -> Hashable:
    """A hashable, type-exact key for a spec's fields: ``1``, ``1.0`` and ``True`` stay apart."""
    if isinstance(value, dict):
        return tuple((k, freeze(v)) for k, v in value.items())
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    return (type(value).__name__, repr(value))


def fmt(value: float) -> str:
    return f"{value:.4g}"


def reading(
    categories: tuple[str, ...], analytes: tuple[str, ...] = (), valuesets: tuple[str, ...] = ()
) -> Reads:
    return frozenset(categories), frozenset(analytes), frozenset(valuesets)
