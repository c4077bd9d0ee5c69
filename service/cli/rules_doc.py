"""``sleep-cds rules-doc``: the clinician summary of the rules (``docs/rules.md``)."""

from __future__ import annotations

import argparse
import sys

from service.config import get_settings


def cmd_rules_doc(args: argparse.Namespace) -> int:
    from service.knowledge.base import load_knowledge
    from service.knowledge.summary import rules_markdown

    settings = get_settings()
    kb = load_knowledge(settings.fhir_profiles_dir, settings.knowledge_dir)
    sys.stdout.write(rules_markdown(kb))
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``rules-doc`` to the ``sleep-cds`` parser."""
    rules_doc = subparsers.add_parser("rules-doc", help="print the clinician summary of the rules")
    rules_doc.set_defaults(func=cmd_rules_doc)
