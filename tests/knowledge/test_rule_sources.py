"""Every card cites the specific document that supports it: a DOI, a PubMed record, an FDA
safety communication, a NICE recommendation or a StatPearls chapter; never a search result or a
home page (a clinician who follows the link must land on the evidence)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest

from service.config import Settings
from service.knowledge.base import load_knowledge
from service.knowledge.schema import Rule

SETTINGS = Settings()
KB = load_knowledge(SETTINGS.fhir_profiles_dir, SETTINGS.knowledge_dir)

# host → the path shape of one document on that host
SPECIFIC_DOCUMENT = {
    "doi.org": re.compile(r"^/10\.\d{4,9}/\S+$"),
    "pubmed.ncbi.nlm.nih.gov": re.compile(r"^/\d+/?$"),
    "www.ncbi.nlm.nih.gov": re.compile(r"^/books/NBK\d+/?$"),
    "www.fda.gov": re.compile(
        r"^/drugs/[a-z0-9-]+/[a-z0-9-]*drug-safety-communication[a-z0-9-]+/?$"
    ),
    "www.nice.org.uk": re.compile(r"^/guidance/(ng|cg|qs)\d+(/chapter/[A-Za-z0-9-]+)?/?$"),
    "www.statpearls.com": re.compile(r"^/point-of-care/\d+/?$"),
}
SEARCH_WORDS = ("search", "term=", "query", "?q=")

SOURCES = [
    pytest.param(source.url, id=f"{rule.id}:{index}")
    for rule in KB.rules
    for index, source in enumerate(rule.sources)
]


@pytest.mark.parametrize("url", SOURCES)
def test_source_is_a_specific_document(url: str) -> None:
    parts = urlsplit(url)
    assert parts.scheme == "https", url
    assert not parts.query and not parts.fragment, f"{url}: a query is a search, not a source"
    assert not any(word in url.lower() for word in SEARCH_WORDS), url
    assert parts.path.strip("/"), f"{url}: a home page is not a source"
    pattern = SPECIFIC_DOCUMENT.get(parts.netloc)
    assert pattern is not None, f"{url}: not a DOI, PubMed, FDA, NICE or StatPearls document"
    assert pattern.match(parts.path), f"{url}: not the path of one document on {parts.netloc}"


@pytest.mark.parametrize("rule", KB.rules, ids=lambda r: r.id)
def test_every_source_has_a_citation(rule: Rule) -> None:
    for source in rule.sources:
        assert source.citation and len(source.citation) > 20, (rule.id, source.label)


@pytest.mark.parametrize(
    "url",
    [
        "https://pubmed.ncbi.nlm.nih.gov/?term=IRLSSG+consensus",
        "https://lhncbc.nlm.nih.gov/",
        "https://aasm.org/clinical-resources/international-classification-sleep-disorders/",
        "https://www.fda.gov/",
        "https://doi.org/",
    ],
)
def test_search_pages_and_home_pages_are_refused(url: str) -> None:
    """The check itself: the URLs the reviewer found must fail it."""
    with pytest.raises(AssertionError):
        test_source_is_a_specific_document(url)
