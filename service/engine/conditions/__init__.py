"""The one registry of condition operators: schema condition → compiled node class.

Adding an operator: its spec and condition model in ``knowledge/schema.py`` (what the rule files
say, and which value sets, analytes and units it refers to), one node class here (how it is
compiled, what it reads from the EHR, how it evaluates) and one entry below. The compiler,
prefetch and the knowledge checks find it through these two places, not through isinstance
chains.
"""

from __future__ import annotations

from service.engine.conditions.base import Node
from service.engine.conditions.combinators import AllNode, AnyNode, AtLeastNode, NotNode
from service.engine.conditions.findings import FindingNode, ProcedureNode
from service.engine.conditions.journal import JournalNode
from service.engine.conditions.labs import LabMissingNode, LabNode
from service.engine.conditions.medications import (
    DraftOrderNode,
    MedicationBeforeFindingNode,
    MedicationNode,
    RenalDoseNode,
)
from service.engine.conditions.patient import AgeNode
from service.knowledge import schema

OPERATORS: dict[type[schema.Cond], type[Node]] = {
    schema.AllCond: AllNode,
    schema.AnyCond: AnyNode,
    schema.NotCond: NotNode,
    schema.AtLeastCond: AtLeastNode,
    schema.FindingCond: FindingNode,
    schema.LabCond: LabNode,
    schema.LabMissingCond: LabMissingNode,
    schema.MedicationCond: MedicationNode,
    schema.MedicationBeforeFindingCond: MedicationBeforeFindingNode,
    schema.RenalDoseCond: RenalDoseNode,
    schema.DraftOrderCond: DraftOrderNode,
    schema.JournalCond: JournalNode,
    schema.AgeCond: AgeNode,
    schema.ProcedureCond: ProcedureNode,
}

__all__ = ["OPERATORS", "Node"]
