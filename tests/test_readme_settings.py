"""The README's settings table names every ``CDS_`` setting in ``service/config.py``, and nothing
that is not one: an operator reading it sees all the knobs."""

from __future__ import annotations

import re
from pathlib import Path

from service.config import Settings

README = Path(__file__).resolve().parent.parent / "README.md"


def _readme_settings() -> set[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `CDS_"):
            first_column = line.split("|")[1]
            names.update(re.findall(r"`(CDS_[A-Z0-9_]+)`", first_column))
    return names


def test_readme_settings_table_lists_every_setting() -> None:
    expected = {f"CDS_{name.upper()}" for name in Settings.model_fields}
    assert _readme_settings() == expected
