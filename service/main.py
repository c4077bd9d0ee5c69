"""The ASGI application, built by ``create_app``; ``service.main:app`` is what servers import.

Everything expensive (knowledge, value sets, the database engine, the FHIR client) is built once
here, never per request.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from service import logging as service_logging
from service.api import problems
from service.api.analytics import router as analytics_router
from service.api.body_budget import BodyBudget
from service.api.console import router as console_router
from service.api.context import AppContext
from service.api.discovery import build_discovery
from service.api.feedback import FeedbackMemory, RateLimit
from service.api.journal import router as journal_router
from service.api.metrics import router as metrics_router
from service.api.middleware import RequestGuard
from service.api.routes import router
from service.api.slots import HookSlots
from service.clock import Clock, utc_now
from service.config import Settings, get_settings
from service.db.database import Database
from service.engine.pipeline import Fetcher, HookPipeline
from service.knowledge.base import load_knowledge
from service.security import assert_safe_startup, close_token_verifier, token_verifier_for

log = logging.getLogger("service")


def create_app(
    settings: Settings | None = None,
    *,
    clock: Clock = utc_now,
    fetcher: Fetcher | None = None,
    configure_logging: bool = True,
) -> FastAPI:
    """Build the service. Raises ``KnowledgeError`` when a knowledge file is invalid."""
    settings = settings or get_settings()
    if configure_logging:
        service_logging.configure(settings.log_level)
    assert_safe_startup(settings)
    context = _context(settings, clock, fetcher)
    app = FastAPI(
        title="Sleep Movement CDS",
        version="0.1.0",
        description="CDS Hooks 2.0 service for sleep-related leg movements.",
        lifespan=lambda app: _serving(context),
        # The schema maps every route and parameter: published in local mode or when enabled.
        openapi_url="/openapi.json" if settings.openapi_on else None,
        docs_url="/docs" if settings.openapi_on else None,
        redoc_url=None,
    )
    app.state.context = context  # read only by service/api/deps.py
    problems.install(app)
    for module_router in (
        router,
        console_router,
        journal_router,
        analytics_router,
        metrics_router,
    ):
        app.include_router(module_router)
    _add_middleware(app, settings, context.body_budget)
    return app


def _context(settings: Settings, clock: Clock, fetcher: Fetcher | None) -> AppContext:
    """The components every request shares, built once."""
    kb = load_knowledge(settings.fhir_profiles_dir, settings.knowledge_dir)
    return AppContext(
        settings=settings,
        kb=kb,
        clock=clock,
        db=Database(settings.database_url, clock=clock),
        pipeline=HookPipeline(
            kb,
            fetcher,
            deadline_s=settings.fhir_deadline_s,
            # Cards link to the journal app (a SMART link) only where it is served.
            app_base_url=settings.public_base_url if settings.journal_on else None,
        ),
        discovery=build_discovery(kb),
        hook_slots=HookSlots(settings.max_concurrent_hooks),
        body_budget=BodyBudget(settings.max_body_bytes_in_flight),
        feedback=FeedbackMemory(limit=RateLimit(settings.feedback_rate_per_minute)),
    )


def _add_middleware(app: FastAPI, settings: Settings, body_budget: BodyBudget) -> None:
    """CORS inside, the request guard (size, time, host, security headers) outermost."""
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.effective_cors_origins,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type"],
        max_age=600,
    )
    app.add_middleware(
        RequestGuard,
        max_body_bytes=settings.max_body_bytes,
        body_budget=body_budget,
        body_read_timeout_s=settings.body_read_timeout_s,
        hsts=settings.hsts,
        host_allowed=settings.host_allowed,
    )


@asynccontextmanager
async def _serving(context: AppContext) -> AsyncIterator[None]:
    """The lifespan: what needs the serving loop is made here, and everything is closed after."""
    settings = context.settings
    http_client: Any = None
    # Made on the serving loop (a Semaphore binds to the loop that first waits on it).
    context.hook_slots = HookSlots(settings.max_concurrent_hooks)
    if context.pipeline.fetcher is None:
        from service.fhir.client import FhirClient, make_http_client

        http_client = make_http_client()
        context.pipeline.fetcher = FhirClient(
            http_client,
            page_cap=settings.fhir_page_cap,
            max_response_bytes=settings.fhir_max_response_bytes,
        )
    if not settings.local_mode:
        token_verifier_for(context)  # build (and load the registry) now, not on first call
    mode = "local (authentication off)" if settings.local_mode else "authenticated"
    log.info("service ready", extra={"mode": mode, "host": settings.host, "port": settings.port})
    try:
        yield
    finally:
        if http_client is not None:
            await http_client.aclose()
        await close_token_verifier(context)
        await context.db.dispose()


def tune_collector() -> None:
    """The served worker's garbage-collector settings (``bench/run.py``'s in-process timings use
    them too). The knowledge base is long-lived, so it leaves the collector's view; young objects
    are collected less often, since each call allocates tens of thousands of short-lived objects
    (docs/performance.md: heavy p50 171 → ~75 ms together with the faster depth check)."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def __getattr__(name: str) -> Any:
    # ``service.main:app`` is built on first access, so importing this module (tests, tools)
    # does not read the environment or the knowledge files.
    if name == "app":
        application = create_app()
        tune_collector()  # served process only, not tests
        return application
    raise AttributeError(name)
