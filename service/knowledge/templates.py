"""Card text templates: Jinja2 in a sandbox, with every data value escaped for Markdown.

Values such as drug names come from the EHR's free text; escaping them keeps card Markdown (and
any HTML a client might render) exactly as the rule author wrote it.
"""

from __future__ import annotations

import re
from datetime import date
from functools import lru_cache
from typing import Any

from jinja2 import ChainableUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

TEMPLATE_GLOBALS = ("patient_age",)

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|])")


def escape_markdown(text: str) -> str:
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def _plain(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, date):
        return value.isoformat()
    return value


def _markdown(value: Any) -> Any:
    return escape_markdown(value) if isinstance(value, str) else _plain(value)


@lru_cache(maxsize=2)
def environment(markdown: bool = True) -> ImmutableSandboxedEnvironment:
    """Templates for ``detail`` (Markdown: data values escaped) or ``summary`` (plain text:
    CDS Hooks clients show it verbatim, so an escape backslash would be visible)."""
    return ImmutableSandboxedEnvironment(
        undefined=ChainableUndefined,
        autoescape=False,
        finalize=_markdown if markdown else _plain,
        trim_blocks=True,
        lstrip_blocks=True,
    )
