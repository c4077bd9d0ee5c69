"""``age``: the patient's age in whole years against a bound."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from service.engine.conditions.base import COMPARATORS, Leaf, Reads, reading
from service.engine.result import Result
from service.knowledge import schema
from service.knowledge.base import KnowledgeBase

if TYPE_CHECKING:
    from service.engine.evaluator import Evaluator


@dataclass(slots=True, eq=False, kw_only=True)
class AgeNode(Leaf):
    operator = "age"
    spec: schema.AgeSpec
    compare: Callable[[Any, Any], bool]

    @classmethod
    def build(cls, spec: schema.AgeSpec, kb: KnowledgeBase) -> AgeNode:
        return cls(spec=spec, label=f"age {spec.op} {spec.years}", compare=COMPARATORS[spec.op])

    @classmethod
    def reads(cls, condition: schema.AgeCond) -> Reads:
        return reading(("patient",))

    def evaluate(self, ev: Evaluator) -> Result:
        age = ev.record.age_years
        if age is None:
            return ev.result(self.label, None, "no birth date")
        return ev.result(self.label, self.compare(age, self.spec.years), f"age {age}")
