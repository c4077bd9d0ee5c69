"""Deployment settings, read once from the environment (prefix ``CDS_``).

Clinical thresholds are never settings: they live in the knowledge files.
"""

from __future__ import annotations

import ipaddress
import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DB = REPO_ROOT / "var" / "cds.db"
SANDBOX_ORIGIN = "https://sandbox.cds-hooks.org"  # the public CDS Hooks Sandbox (README)


DATABASE_URL_FORMS = (
    "sqlite:///PATH, sqlite+aiosqlite:///PATH, postgresql://USER@HOST/DB, "
    "postgresql+psycopg://USER@HOST/DB"
)
# Scheme as written → the async driver the service runs on (the plain forms hosting providers
# hand out name no driver, or a sync one SQLAlchemy cannot use from asyncio).
_ASYNC_SCHEMES = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgres": "postgresql+psycopg",
    "postgresql": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}


def async_database_url(url: str) -> str:
    """``url`` with the async driver the service uses; a ValueError naming the setting and the
    accepted forms otherwise (never quoting the URL: it may carry a password)."""
    scheme, sep, rest = url.partition("://")
    driver = _ASYNC_SCHEMES.get(scheme.lower()) if sep else None
    if driver is None:
        named = f"scheme {scheme!r}" if sep and len(scheme) < 40 else "not a database URL"
        raise ValueError(
            f"CDS_DATABASE_URL: unsupported ({named}); accepted forms: {DATABASE_URL_FORMS}"
        )
    return f"{driver}://{rest}"


def is_loopback_host(host: str) -> bool:
    """True for names and addresses that never leave this machine."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    """Everything an operator may set; defaults give a working local service."""

    model_config = SettingsConfigDict(env_prefix="CDS_", extra="ignore")

    database_url: str = f"sqlite+aiosqlite:///{DEFAULT_DB}"
    public_base_url: str = "http://127.0.0.1:8080"
    host: str = "127.0.0.1"
    port: int = 8080
    cors_origins: Annotated[list[str], NoDecode] | None = None
    """Browser origins allowed to call the service. Unset: ``*`` when authenticated (the JWT
    guards every call); in local mode only this service's own origin and the CDS Hooks Sandbox."""
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Local mode answers only requests whose ``Host`` is loopback (or this service's public
    host); extra names here (DNS rebinding: a web page cannot read the service under its name)."""
    max_body_bytes: int = 5 * 1024 * 1024
    max_json_depth: int = 64
    max_body_bytes_in_flight: int = Field(default=32 * 1024 * 1024, ge=1)
    """Request-body bytes a worker reads and holds at once (each request reserves its
    ``Content-Length``); the rest wait, first come first served, within the body-read deadline,
    then get 503. Each byte of a prefetch becomes about 2.4 bytes of parsed record, so this bounds
    a worker's memory under a burst of large bodies (docs/performance.md)."""
    max_concurrent_hooks: int = Field(default=16, ge=1)
    """Hook calls a worker parses and evaluates at once; the rest wait with their raw bodies read
    (at most ``max_body_bytes`` each), so many large prefetches arriving together cannot exhaust
    the worker's memory with parsed records. A body still arriving holds no slot."""
    body_read_timeout_s: float = Field(default=5.0, gt=0)
    """Time from a request's headers to the last byte of its body; then 408 (a stalled or
    trickling client costs only its own request)."""
    header_read_timeout_s: float = Field(default=10.0, gt=0)
    """Time a connection may take to send a request's headers (from the connection or the
    request's first byte); then it is closed (slowloris). Enforced by ``sleep-cds serve``."""
    fhir_profiles_dir: Path = REPO_ROOT / "fhir_profiles"
    knowledge_dir: Path = Path(__file__).resolve().parent / "knowledge"
    trusted_issuers_file: Path | None = None
    fhir_deadline_s: float = 3.0
    db_read_deadline_s: float = 0.3
    """How long a hook call waits for feedback history (suppression) before showing the cards."""
    feedback_max_items: int = Field(default=20, ge=1, le=1000)
    """Items one feedback request may carry (more is a 400)."""
    feedback_rate_per_minute: int = Field(default=600, ge=1)
    """Feedback items one issuer may send per minute per process (more is a 429)."""
    feedback_confirm_wait_s: float = Field(default=0.25, ge=0)
    """Wait before the second look-up of a card not yet in the audit trail (another replica may
    still be writing it)."""
    retention_days: int = Field(default=400, ge=30)
    """``sleep-cds purge`` deletes audit rows, cards shown and their feedback older than this;
    the default keeps a full year of analytics (the longest report period is 366 days)."""
    fhir_page_cap: int = 10
    fhir_max_response_bytes: int = 20 * 1024 * 1024
    explain_enabled: bool | None = None
    analytics_enabled: bool = False
    admin_token: str | None = None
    console_enabled: bool | None = None
    openapi_enabled: bool | None = None
    """``/openapi.json`` and ``/docs``: on in local mode, elsewhere only when set."""
    console_fhir_server: str | None = None
    journal_enabled: bool | None = None
    """The sleep-journal SMART app under /journal/ (docs/journal-app.md); on in local mode."""
    journal_client_id: str = "sleep-journal"
    journal_fhir_servers: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """FHIR bases the journal app may launch against; empty: the issuer registry's fhir_servers
    (local mode: any https or loopback http base)."""
    journal_connect_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Extra origins the app's page may call (an authorization server on another origin)."""
    log_level: str = "INFO"

    @field_validator(
        "cors_origins",
        "allowed_hosts",
        "journal_fhir_servers",
        "journal_connect_origins",
        mode="before",
    )
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().startswith("["):
            return json.loads(value)  # a JSON list (the NoDecode fields arrive as text)
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str) -> str:
        return async_database_url(value)

    @field_validator("public_base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @property
    def local_mode(self) -> bool:
        """Serving on loopback with no issuer registry: authentication is off."""
        return self.trusted_issuers_file is None and is_loopback_host(self.host)

    @property
    def explain_on(self) -> bool:
        return self.local_mode if self.explain_enabled is None else self.explain_enabled

    @property
    def effective_cors_origins(self) -> list[str]:
        if self.cors_origins is not None:
            return self.cors_origins
        if not self.local_mode:
            return ["*"]
        own = {self.public_base_url}
        own |= {f"http://{name}:{self.port}" for name in ("127.0.0.1", "localhost", "[::1]")}
        return [*sorted(own), SANDBOX_ORIGIN]

    def host_allowed(self, host_header: str | None) -> bool:
        """Local mode: the request's ``Host`` names this machine (no DNS rebinding)."""
        if not self.local_mode:
            return True
        if not host_header:
            return False
        host = urlsplit(f"//{host_header}").hostname or ""
        public = urlsplit(self.public_base_url).hostname or ""
        return is_loopback_host(host) or host in (public, *self.allowed_hosts)

    @property
    def openapi_on(self) -> bool:
        return self.local_mode if self.openapi_enabled is None else self.openapi_enabled

    @property
    def hsts(self) -> bool:
        """Served to browsers over https (``CDS_PUBLIC_BASE_URL``): tell them to stay on https."""
        return urlsplit(self.public_base_url).scheme == "https"

    @property
    def console_on(self) -> bool:
        return self.local_mode if self.console_enabled is None else self.console_enabled

    @property
    def journal_on(self) -> bool:
        return self.local_mode if self.journal_enabled is None else self.journal_enabled

    def sync_database_url(self) -> str:
        """The same database through a synchronous driver (Alembic, CLI)."""
        url = self.database_url
        return url.replace("sqlite+aiosqlite", "sqlite").replace(
            "postgresql+asyncpg", "postgresql+psycopg"
        )


@lru_cache
def get_settings() -> Settings:
    return Settings()
