"""The compiler: condition trees of one knowledge base into shared, typed nodes.

Structurally equal conditions (the same ``finding`` in six rules) compile to one node, so an
evaluator computes each once per record. Each operator's node class compiles its own condition
(``engine/conditions``); this module owns only the cache and the interning.
"""

from __future__ import annotations

from collections.abc import Hashable

from service.engine.conditions import OPERATORS, Node
from service.knowledge import schema
from service.knowledge.base import KnowledgeBase
from service.knowledge.valuesets import ValueSetMatcher


class Program:
    """The compiled condition trees of one knowledge base.

    Compiling happens at start-up (``RuleEngine``); a condition not seen before is compiled on
    first use.
    """

    def __init__(self, kb: KnowledgeBase) -> None:
        self.kb = kb
        self._by_id: dict[int, tuple[schema.Condition, Node]] = {}
        self._by_key: dict[Hashable, Node] = {}
        self.matcher = ValueSetMatcher(kb.valuesets)

    def node(self, condition: schema.Condition) -> Node:
        """The condition's compiled node (by identity first: rules hold their trees)."""
        entry = self._by_id.get(id(condition))
        if entry is not None and entry[0] is condition:
            return entry[1]
        compiled = OPERATORS[type(condition)].compile(condition, self)
        self._by_id[id(condition)] = (condition, compiled)  # the reference keeps the id valid
        return compiled

    def intern(self, key: Hashable, node: Node) -> Node:
        """The node already compiled under ``key``, else ``node`` with the next memo slot."""
        found = self._by_key.get(key)
        if found is None:
            node.slot = len(self._by_key)
            found = self._by_key[key] = node
        return found
