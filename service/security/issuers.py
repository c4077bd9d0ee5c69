"""The trusted-issuer registry: which CDS Clients may call, with which keys, for which FHIR servers.

The spec says a service SHOULD keep "an allowlist of `iss` and `jku` urls"; this module is that
allowlist. It is read once at start-up from ``CDS_TRUSTED_ISSUERS_FILE`` (YAML or JSON), and a
bad file stops the service with the file and field named, because a half-read allowlist is
worse than none.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from service.config import is_loopback_host
from service.errors import CDSError
from service.security.jwks import KeySet

Algorithm = Literal["ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS384"]
"""Asymmetric algorithms only: the spec forbids ``none`` and every HMAC algorithm."""

DEFAULT_ALGORITHMS: tuple[Algorithm, ...] = ("ES384", "RS384")


class ConfigurationError(CDSError):
    """A security setting is unusable; raised at start-up so the service never runs half-trusted."""


def check_url(url: str, *, what: str) -> str:
    """Allow https anywhere and http only on loopback, so keys never travel in clear text."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{what} must not carry credentials")
    if not host:
        raise ValueError(f"{what} must be an absolute URL")
    if scheme == "https" or (scheme == "http" and is_loopback_host(host)):
        return url
    raise ValueError(f"{what} must use https (http is allowed only for loopback hosts)")


def normalise_base_url(url: str) -> str:
    """Compare FHIR base URLs case-insensitively on scheme and host, ignoring a trailing slash."""
    parts = urlsplit(url.strip())
    path = parts.path.rstrip("/")
    query = f"?{parts.query}" if parts.query else ""
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{path}{query}"


class IssuerConfig(BaseModel):
    """One trusted CDS Client (``iss``) and everything the service accepts from it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    iss: str = Field(min_length=1, max_length=512)
    jwks: dict[str, Any] | None = None
    jwks_url: str | None = None
    allowed_jku: list[str] = Field(default_factory=list)
    audience: str | None = Field(default=None, min_length=1)
    tenants: list[str] | None = Field(default=None, min_length=1)
    fhir_servers: list[str] = Field(default_factory=list)
    algorithms: list[Algorithm] = Field(
        default_factory=lambda: list(DEFAULT_ALGORITHMS), min_length=1
    )

    _keys: KeySet | None = PrivateAttr(default=None)

    @field_validator("jwks_url")
    @classmethod
    def _jwks_url_is_safe(cls, value: str | None) -> str | None:
        return None if value is None else check_url(value, what="jwks_url")

    @field_validator("allowed_jku")
    @classmethod
    def _jku_are_safe(cls, value: list[str]) -> list[str]:
        return [check_url(url, what="allowed_jku entry") for url in value]

    @field_validator("fhir_servers")
    @classmethod
    def _fhir_servers_are_safe(cls, value: list[str]) -> list[str]:
        return [check_url(url, what="fhir_servers entry").rstrip("/") for url in value]

    @field_validator("algorithms")
    @classmethod
    def _algorithms_unique(cls, value: list[Algorithm]) -> list[Algorithm]:
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _one_key_source(self) -> IssuerConfig:
        if (self.jwks is None) == (self.jwks_url is None):
            raise ValueError("give exactly one of 'jwks' (inline JWK Set) or 'jwks_url'")
        if self.jwks is not None:
            try:
                keys = KeySet.from_jwks(self.jwks, strict=True)
            except ValueError as exc:
                raise ValueError(f"jwks: {exc}") from exc
            if not any(key.usable_with(alg) for key in keys for alg in self.algorithms):
                raise ValueError(f"jwks: no key can verify any of the algorithms {self.algorithms}")
            self._keys = keys
        return self

    @property
    def inline_keys(self) -> KeySet | None:
        """The parsed inline JWK Set, or None when keys come from ``jwks_url``."""
        return self._keys

    def jku_allowed(self, jku: str) -> bool:
        """A token's ``jku`` is trusted only if listed (``jwks_url`` counts as listed)."""
        return jku in self.allowed_jku or jku == self.jwks_url

    def fhir_server_allowed(self, url: str) -> bool:
        wanted = normalise_base_url(url)
        return any(normalise_base_url(server) == wanted for server in self.fhir_servers)


class _RegistryFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    issuers: list[IssuerConfig] = Field(min_length=1)


class IssuerRegistry:
    """Trusted issuers by exact ``iss`` string (no normalisation: ``iss`` is an identifier)."""

    def __init__(self, issuers: Sequence[IssuerConfig], *, source: str = "<memory>") -> None:
        self.source = source
        self._by_iss: dict[str, IssuerConfig] = {}
        for issuer in issuers:
            if issuer.iss in self._by_iss:
                raise ConfigurationError(f"{source}: issuer {issuer.iss!r} is listed twice")
            self._by_iss[issuer.iss] = issuer

    @classmethod
    def load(cls, path: Path) -> IssuerRegistry:
        """Read and validate the registry file; any problem raises ``ConfigurationError``."""
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(f"{path}: cannot read trusted-issuer file: {exc}") from exc
        try:
            data: object = (
                json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
            )
        except (ValueError, yaml.YAMLError) as exc:
            raise ConfigurationError(f"{path}: not valid YAML/JSON: {exc}") from exc
        return cls.from_data(data, source=str(path))

    @classmethod
    def from_data(cls, data: object, *, source: str = "<memory>") -> IssuerRegistry:
        """Accept a bare list of issuers or ``{issuers: [...]}``."""
        if isinstance(data, list):
            data = {"issuers": data}
        if not isinstance(data, dict):
            raise ConfigurationError(
                f"{source}: top level must be a list of issuers or a mapping with 'issuers'"
            )
        try:
            parsed = _RegistryFile.model_validate(data)
        except ValidationError as exc:
            raise ConfigurationError(f"{source}: {_describe(exc)}") from None
        return cls(parsed.issuers, source=source)

    def get(self, iss: str) -> IssuerConfig | None:
        return self._by_iss.get(iss)

    def __iter__(self) -> Iterator[IssuerConfig]:
        return iter(self._by_iss.values())

    def __len__(self) -> int:
        return len(self._by_iss)


def _describe(exc: ValidationError) -> str:
    """Name each failing field as a path (``issuers[0].jwks_url``) an operator can find."""
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        path = ""
        for part in error["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"{path or 'file'}: {message}")
    return "; ".join(lines)
