"""Discovery offers one service per hook the rules may name (``schema.HOOKS``, the one list of
hooks), so a hook added to the knowledge schema cannot be left without a service."""

from __future__ import annotations

from service.cdshooks.discovery import SERVICES
from service.knowledge.schema import HOOKS


def test_one_service_per_hook() -> None:
    assert sorted(spec.hook for spec in SERVICES) == sorted(HOOKS)
