"""What ``create_app`` builds once and every request shares, as one typed object.

Route handlers receive it (or a part of it) through the dependencies in ``service/api/deps.py``;
nothing else reads ``app.state``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from service.api.body_budget import BodyBudget
from service.api.slots import HookSlots
from service.clock import Clock
from service.config import Settings
from service.db.database import Database
from service.engine.pipeline import HookPipeline
from service.knowledge.base import KnowledgeBase

if TYPE_CHECKING:
    import httpx

    from service.api.feedback import FeedbackMemory
    from service.security import TokenVerifier


@dataclass(eq=False)
class AppContext:
    settings: Settings
    kb: KnowledgeBase
    clock: Clock
    db: Database
    pipeline: HookPipeline
    discovery: dict[str, Any]
    hook_slots: HookSlots
    """Replaced in the lifespan: a semaphore binds to the loop that first waits on it."""
    body_budget: BodyBudget
    """The request-body bytes held at once (``RequestGuard`` reserves and returns them)."""
    feedback: FeedbackMemory
    journal_servers: list[str] | None = None
    """The FHIR bases the journal app may use, read from the settings on first use."""
    token_verifier: TokenVerifier | None = None
    """Built by ``security.token_verifier_for`` (authenticated mode only)."""
    security_http_client: httpx.AsyncClient | None = None
