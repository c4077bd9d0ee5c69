"""``all``, ``any``, ``not`` and ``at_least``: Kleene's three-valued logic over child results.

False beats unknown in ``all``, true beats unknown in ``any``; ``not`` keeps unknown unknown;
``at_least n`` is true with n true children, unknown while the unknown ones could still reach n.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from service.engine.conditions.base import Compiler, Node
from service.engine.result import Result, Truth, combine, trace_of, word
from service.knowledge import schema

if TYPE_CHECKING:
    from service.engine.evaluator import Evaluator


@dataclass(slots=True, eq=False, kw_only=True)
class AllNode(Node):
    children: tuple[Node, ...]

    @classmethod
    def compile(cls, condition: schema.AllCond, program: Compiler) -> Node:
        children = tuple(program.node(c) for c in condition.all)
        trace_free = all(c.trace_free for c in children)
        node = cls(children=children, trace_free=trace_free)
        return program.intern(("all", tuple(c.slot for c in children)), node)

    def evaluate(self, ev: Evaluator) -> Result:
        parts = []
        children = self.children
        for index, child in enumerate(children):
            part = ev.eval(child)
            parts.append(part)
            if part.value is False and not ev.explain:
                # False whatever follows. Without ``explain`` only ``not`` and ``at_least`` nodes
                # add trace lines, so the rest is evaluated only where it could add one.
                parts += [ev.eval(c) for c in children[index + 1 :] if not c.trace_free]
                return Result(False, trace=trace_of(parts))
        values = [p.value for p in parts]
        value: Truth = False if False in values else (None if None in values else True)
        return Result(value, *combine(parts)) if value else Result(value, trace=trace_of(parts))


@dataclass(slots=True, eq=False, kw_only=True)
class AnyNode(Node):
    children: tuple[Node, ...]

    @classmethod
    def compile(cls, condition: schema.AnyCond, program: Compiler) -> Node:
        children = tuple(program.node(c) for c in condition.any)
        trace_free = all(c.trace_free for c in children)
        node = cls(children=children, trace_free=trace_free)
        return program.intern(("any", tuple(c.slot for c in children)), node)

    def evaluate(self, ev: Evaluator) -> Result:
        parts = [ev.eval(child) for child in self.children]
        values = [p.value for p in parts]
        value = True if True in values else (None if None in values else False)
        return Result(value, *combine(parts)) if value else Result(value, trace=trace_of(parts))


@dataclass(slots=True, eq=False, kw_only=True)
class NotNode(Node):
    inner: Node

    @classmethod
    def compile(cls, condition: schema.NotCond, program: Compiler) -> Node:
        inner = program.node(condition.not_)
        return program.intern(("not", inner.slot), cls(inner=inner, trace_free=False))

    def evaluate(self, ev: Evaluator) -> Result:
        inner = ev.eval(self.inner)
        value = None if inner.value is None else not inner.value
        return Result(value, trace=[f"not → {word(value)}", *inner.trace])


@dataclass(slots=True, eq=False, kw_only=True)
class AtLeastNode(Node):
    need: int
    children: tuple[Node, ...]

    @classmethod
    def compile(cls, condition: schema.AtLeastCond, program: Compiler) -> Node:
        children = tuple(program.node(c) for c in condition.at_least.of)
        need = condition.at_least.count
        node = cls(need=need, children=children, trace_free=False)
        return program.intern(("at_least", need, tuple(c.slot for c in children)), node)

    def evaluate(self, ev: Evaluator) -> Result:
        parts = [ev.eval(child) for child in self.children]
        trues = sum(p.value is True for p in parts)
        unknowns = sum(p.value is None for p in parts)
        need = self.need
        value = True if trues >= need else (None if trues + unknowns >= need else False)
        if value:
            return Result(value, *combine(parts))
        return Result(value, trace=[f"at least {need}: {trues} true", *trace_of(parts)])
