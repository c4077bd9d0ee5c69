"""``sleep-cds load``: put FHIR files (transaction Bundles or resources) into any FHIR server.

``load_bundles`` is also how the sandbox, the integration tests and the bench load the demo
patients. The bearer token is read from an environment variable (``--token-env``), never from the
command line, and is never printed.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from service.cli.errors import CliError, SandboxError
from service.cli.request import read_fhir_file, token_from_env
from service.demo import shift_dates


@dataclass(frozen=True, slots=True)
class Loaded:
    path: Path
    method: str
    status: int
    entries: int


def _outcome_text(response: httpx.Response) -> str:
    with contextlib.suppress(orjson.JSONDecodeError, AttributeError, TypeError, IndexError):
        body = orjson.loads(response.content)
        if body.get("resourceType") == "OperationOutcome":
            return str(body["issue"][0].get("diagnostics", ""))[:200]
    return ""


def load_bundles(
    base_url: str,
    paths: Sequence[Path | str],
    *,
    token: str | None = None,
    shift_days: int = 0,
    timeout_s: float = 60.0,
) -> list[Loaded]:
    """Load files into any FHIR server; raise ``SandboxError`` naming the file, URL and status.

    A transaction/batch Bundle is POSTed to the base; any other resource with an id is PUT to
    ``Type/id`` (idempotent), without one POSTed to ``Type``. ``shift_days`` moves clinical dates
    (used for the demo patients, never for other files).
    """
    base = base_url.rstrip("/")
    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    loaded: list[Loaded] = []
    with httpx.Client(trust_env=False, timeout=timeout_s, follow_redirects=False) as http:
        for raw_path in paths:
            path = Path(raw_path)
            doc = _read_resource(path, shift_days)
            method, url = _target(doc, base)
            try:
                response = http.request(method, url, content=orjson.dumps(doc), headers=headers)
            except httpx.HTTPError as exc:
                raise SandboxError(
                    f"{path}: {method} {url} failed: {exc.__class__.__name__}"
                ) from exc
            if response.status_code >= 300:
                detail = _outcome_text(response)
                raise SandboxError(
                    f"{path}: {method} {url} -> HTTP {response.status_code}"
                    + (f": {detail}" if detail else "")
                )
            entries = len(doc.get("entry", [])) if doc["resourceType"] == "Bundle" else 1
            loaded.append(Loaded(path, method, response.status_code, entries))
    return loaded


def _read_resource(path: Path, shift_days: int) -> dict[str, Any]:
    doc = read_fhir_file(path, SandboxError)
    if not shift_days:
        return doc
    shifted: dict[str, Any] = shift_dates(doc, shift_days)
    return shifted


def _target(doc: dict[str, Any], base: str) -> tuple[str, str]:
    """(method, URL): POST a transaction/batch to the base, PUT by id, else POST to the type."""
    rtype = doc["resourceType"]
    if rtype == "Bundle" and doc.get("type") in ("transaction", "batch"):
        return "POST", base
    if isinstance(doc.get("id"), str):
        return "PUT", f"{base}/{rtype}/{doc['id']}"
    return "POST", f"{base}/{rtype}"


def cmd_load(args: argparse.Namespace) -> int:
    try:
        token = token_from_env(args.token_env)
        loaded = load_bundles(args.url, [Path(p) for p in args.files], token=token)
    except (CliError, SandboxError) as exc:
        print(f"sleep-cds: {exc}", file=sys.stderr)
        return 1
    for item in loaded:
        print(f"loaded {item.path}: {item.method} -> HTTP {item.status} ({item.entries} entries)")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``load`` to the ``sleep-cds`` parser."""
    load = subparsers.add_parser(
        "load",
        help="load FHIR Bundles/resources into a FHIR server",
        description="POST transaction/batch Bundles to the base URL; PUT other resources by id.",
    )
    load.add_argument("url", help="FHIR base URL")
    load.add_argument("files", nargs="+", metavar="FILE")
    load.add_argument("--token-env", metavar="VAR", help="env var holding a FHIR bearer token")
    load.set_defaults(func=cmd_load)
