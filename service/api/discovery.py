"""The discovery document for a knowledge base: the API layer joins the wire shape
(service/cdshooks/discovery.py) with the prefetch templates the engine derives from the rules."""

from __future__ import annotations

from typing import Any

from service.cdshooks.discovery import SERVICES, discovery_document
from service.engine.prefetch import templates_for
from service.knowledge.base import KnowledgeBase


def build_discovery(kb: KnowledgeBase) -> dict[str, Any]:
    return discovery_document({spec.hook: templates_for(kb, spec.hook) for spec in SERVICES})
