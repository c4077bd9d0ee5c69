"""ValueSets from ``fhir_profiles/``, indexed for matching codes and text synonyms.

Each file is validated with fhir.resources (R4B models, the R4-compatible release) once at
start-up; matching at request time touches only frozensets and one compiled regex per set.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from service.errors import KnowledgeError
from service.knowledge.fhir_models import validate_resource

TEXT_SYNONYM_URL = "https://sleep-cds.example.org/fhir/StructureDefinition/text-synonym"
SYNONYM_INGREDIENT_URL = "https://sleep-cds.example.org/fhir/StructureDefinition/synonym-ingredient"

CodeKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class ValueSetIndex:
    """An expanded ValueSet reduced to what matching needs."""

    url: str
    title: str
    codes: frozenset[CodeKey]
    displays: dict[CodeKey, str]
    synonyms: tuple[str, ...]
    pattern: re.Pattern[str] | None
    ingredients: re.Pattern[str] | None = None
    """The synonyms that are ingredient names: every synonym not marked as a brand or
    combination (``synonym-ingredient``)."""
    products: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Brand or combination synonym → the ingredients of the class it stands for."""

    def drug_names(self, codings: Iterable[CodeKey], text: str, label: str) -> tuple[str, ...]:
        """What a card calls a medicine of this class: its ingredients in plain words.

        From the display of the matched code ("N04BC05" → pramipexole, "sertraline 50 MG Oral
        Tablet" → sertraline), else the ingredient names in the record's own text, else the
        ingredients of a brand in it ("Zoloft" → sertraline), else the brand as the record
        writes it. Empty when nothing names it.
        """
        displays = [self.displays.get(key, "") for key in codings if key in self.codes]
        for source in (*displays, text):
            found = self._ingredients_in(source.lower())
            if found:
                return found
        if self.pattern is not None and label:
            spans = [m.span() for m in self.pattern.finditer(label.lower())]
            named = _unique(
                name
                for a, b in spans
                for name in self.products.get(label[a:b].lower()) or (label[a:b],)
            )
            if named:
                return named
        return tuple(d for d in displays if d)[:1]

    def _ingredients_in(self, text: str) -> tuple[str, ...]:
        """Ingredient names in the text, else the ingredients of the brands or other names of
        them it contains ("salbutamol" → albuterol)."""
        if not text:
            return ()
        if self.ingredients is not None:
            found = _unique(self.ingredients.findall(text))
            if found:
                return found
        if self.pattern is None or not self.products:
            return ()
        products = self.products
        return _unique(i for m in self.pattern.findall(text) for i in products.get(m, ()))


def _unique(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


def phrase_pattern(phrases: Iterable[str]) -> re.Pattern[str] | None:
    """Matches any of the phrases as whole words in lower-case text (longest first); ``None``
    when there are none. The one builder for ValueSet synonyms, renal drug names and the policy's
    negation phrases."""
    ordered = sorted(phrases, key=len, reverse=True)
    if not ordered:
        return None
    alternatives = "|".join(re.escape(p.lower()) for p in ordered)
    return re.compile(rf"(?<![a-z0-9])(?:{alternatives})(?![a-z0-9])")


class ValueSetMatcher:
    """Value-set membership of a concept, for all value sets of a knowledge base at once.

    A concept is in a ValueSet when one of its codings is in the expansion, else when one of the
    set's text synonyms occurs in its text (knowledge-format.md, "Matching"). Codes go through one
    index of every set; a text is searched per set only when some synonym of some set occurs in
    it (any set's pattern matching implies the union's pattern matches), so the engine can
    memoise ``membership`` per distinct concept and test each set's pattern only on texts that
    may match.
    """

    def __init__(self, valuesets: Mapping[str, ValueSetIndex]) -> None:
        self.valuesets = valuesets
        by_code: dict[CodeKey, set[str]] = {}
        for url, valueset in valuesets.items():
            for code in valueset.codes:
                by_code.setdefault(code, set()).add(url)
        self.urls_by_code = {code: frozenset(urls) for code, urls in by_code.items()}
        self.any_synonym = phrase_pattern(
            sorted({s for v in valuesets.values() for s in v.synonyms})
        )

    def membership(self, codings: Iterable[CodeKey], text: str) -> tuple[frozenset[str], str]:
        """The value sets the codes are in, and the text when a synonym may occur in it (else
        "")."""
        urls_by_code = self.urls_by_code
        urls: frozenset[str] = _NO_URLS
        for code in codings:
            more = urls_by_code.get(code)
            if more is not None:
                urls = urls | more
        any_synonym = self.any_synonym
        if not (text and any_synonym is not None and any_synonym.search(text)):
            text = ""
        return urls, text

    def text_matches(self, url: str, text: str) -> bool:
        """A synonym of the set occurs in ``text`` (a text ``membership`` kept)."""
        pattern = self.valuesets[url].pattern
        return bool(text) and pattern is not None and pattern.search(text) is not None

    def matches(self, url: str, codings: Iterable[CodeKey], text: str) -> bool:
        """The concept (its codings and lower-case text) is in the ValueSet ``url``."""
        urls, text = self.membership(codings, text)
        return url in urls or self.text_matches(url, text)


_NO_URLS: frozenset[str] = frozenset()


def _validate_fhir(path: Path, data: dict[str, Any]) -> None:
    try:
        validate_resource(data)
    except (
        Exception
    ) as exc:  # fhir.resources raises KeyError for unknown types, not only ValueError
        raise KnowledgeError(f"{path.name}: not a valid FHIR R4 resource: {exc}") from exc


def load_profiles(directory: Path) -> dict[str, dict[str, Any]]:
    """Every FHIR artifact in ``directory`` by canonical URL, each validated."""
    if not directory.is_dir():
        raise KnowledgeError(f"{directory}: FHIR profiles directory not found")
    artifacts: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.glob("*.json")):
        try:
            data = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError as exc:
            raise KnowledgeError(f"{path.name}: invalid JSON: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("url"), str):
            raise KnowledgeError(f"{path.name}: field 'url': a canonical URL is required")
        _validate_fhir(path, data)
        url = data["url"]
        if url in artifacts:
            raise KnowledgeError(f"{path.name}: field 'url': duplicate canonical URL {url}")
        artifacts[url] = data
    return artifacts


def index_valueset(data: dict[str, Any]) -> ValueSetIndex:
    contains = (data.get("expansion") or {}).get("contains") or []
    codes: set[CodeKey] = set()
    displays: dict[CodeKey, str] = {}
    for item in contains:
        key = (str(item.get("system")), str(item.get("code")))
        codes.add(key)
        if item.get("display"):
            displays[key] = str(item["display"])
    synonyms = tuple(
        str(ext["valueString"]).lower()
        for ext in data.get("extension") or []
        if ext.get("url") == TEXT_SYNONYM_URL and ext.get("valueString")
    )
    products = _products(data, synonyms)
    named = tuple(s for s in synonyms if s not in products)
    return ValueSetIndex(
        url=str(data["url"]),
        title=str(data.get("title") or data.get("name") or data["url"]),
        codes=frozenset(codes),
        displays=displays,
        synonyms=synonyms,
        pattern=phrase_pattern(synonyms),
        ingredients=phrase_pattern(named),
        products=products,
    )


def _products(data: dict[str, Any], synonyms: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """The ``synonym-ingredient`` marks: brand or combination synonym → its ingredients."""
    url = str(data.get("url"))
    products: dict[str, tuple[str, ...]] = {}
    for ext in data.get("extension") or []:
        if ext.get("url") != SYNONYM_INGREDIENT_URL:
            continue
        parts = [
            (p.get("url"), str(p.get("valueString", "")).lower())
            for p in ext.get("extension") or []
        ]
        names = [value for key, value in parts if key == "synonym"]
        ingredients = tuple(value for key, value in parts if key == "ingredient")
        if len(names) != 1 or names[0] not in synonyms:
            raise KnowledgeError(
                f"ValueSet {url}: synonym-ingredient names no text synonym: {names}"
            )
        if names[0] in products and products[names[0]] != ingredients:
            raise KnowledgeError(f"ValueSet {url}: synonym {names[0]!r} has two ingredient lists")
        products[names[0]] = ingredients
    for name, ingredients in products.items():
        wrong = [i for i in ingredients if i not in synonyms or i in products]
        if wrong:
            raise KnowledgeError(f"ValueSet {url}: {name!r} stands for unknown ingredients {wrong}")
    return products


def index_valuesets(artifacts: dict[str, dict[str, Any]]) -> dict[str, ValueSetIndex]:
    indexed: dict[str, ValueSetIndex] = {}
    for url, data in artifacts.items():
        if data.get("resourceType") != "ValueSet":
            continue
        index = index_valueset(data)
        if not index.codes and not index.synonyms:
            raise KnowledgeError(f"ValueSet {url}: field 'expansion.contains': empty expansion")
        indexed[url] = index
    return indexed
