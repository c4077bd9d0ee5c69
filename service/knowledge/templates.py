"""Card text templates: Jinja2 in a sandbox, with every data value escaped for Markdown.

Values such as drug names come from the EHR's free text; escaping them keeps card Markdown (and
any HTML a client might render) exactly as the rule author wrote it. ``escape_markdown`` is the
one escape every piece of FHIR free text passes on its way into a card's ``detail`` (the template
finalizer here, and the evidence lines built from record labels).
"""

from __future__ import annotations

import re
from datetime import date
from functools import lru_cache
from typing import Any

from jinja2 import ChainableUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

TEMPLATE_GLOBALS = ("patient_age",)

# Inline syntax anywhere: emphasis, code, links/images, raw HTML, tables, strikethrough, entity
# references, headings. ":" and a "." before a letter break scheme and bare-domain autolinks
# ("https://x", "www.x.org", "x.com"); "0.5 mg" keeps its dot. CommonMark lets any ASCII
# punctuation be backslash-escaped, so each of these renders as itself.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|~&#!:@]|\.(?=[A-Za-z]))")
# Block syntax that can only start a line: list items and setext underlines ("-", "+", "="),
# ordered list items ("1." / "1)" then a space).
_LINE_START = re.compile(r"^(\d{1,9}(?=[.)](?:\s|$))|(?=[-+=]))")


_LINE_START_CHARS = frozenset("0123456789-+=")


def _backslash_before(match: re.Match[str]) -> str:
    # A function, not the template r"\\\1": re expands a string template per match in Python
    # (about 2% of a typical call's samples, with 27 escaped values per call).
    return "\\" + match.group(1)


def _backslash_after(match: re.Match[str]) -> str:
    return (match.group(1) or "") + "\\"


def escape_markdown(text: str) -> str:
    """``text`` as literal Markdown on one line: line breaks and runs of white space become one
    space (no heading, list, quote, code block or hard break can start), and Markdown syntax,
    raw HTML and autolinks are escaped. Rendered, it shows the same characters as ``text``."""
    flat = " ".join(text.split())
    escaped = _MARKDOWN_SPECIAL.sub(_backslash_before, flat)
    if flat[:1] not in _LINE_START_CHARS:  # the line-start syntax needs one of these first
        return escaped
    return _LINE_START.sub(_backslash_after, escaped, count=1)


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
