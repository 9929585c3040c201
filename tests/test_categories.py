"""The one category vocabulary: every category any module can emit is in `Category`, with its properties set.

The scan reads the package sources (no import side effects): `category = "..."` class
attributes, `category="..."` keyword arguments, `ExtractionError("...")` calls, and the
`category` of every `NNCaptionError` subclass reachable from the imported packages.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import pytest

from nncaption.netapi import categories as cats
from nncaption.netapi.categories import PROPERTIES, Category, CategoryProps
from nncaption.netapi.errors import NNCaptionError

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("agents", "graph", "netapi", "sandbox", "nncaption", "prompts", "evals")
_PATTERNS = (
    re.compile(r"""\bcategory\s*(?::\s*str\s*)?=\s*["']([a-z][a-z0-9-]*)["']"""),
    re.compile(r"""["']category["']\s*:\s*["']([a-z][a-z0-9-]*)["']"""),
    re.compile(r"""ExtractionError\(\s*["']([a-z][a-z0-9-]*)["']"""),
    re.compile(r"""\bcategory\s*==\s*["']([a-z][a-z0-9-]*)["']"""),
)


def _sources() -> list[Path]:
    return [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if ".venv" not in p.parts]


def emitted_in_sources() -> dict[str, str]:
    """Category literal -> first file that names it."""
    found: dict[str, str] = {}
    for path in _sources():
        text = path.read_text(encoding="utf-8")
        for pattern in _PATTERNS:
            for m in pattern.finditer(text):
                found.setdefault(m.group(1), str(path.relative_to(ROOT)))
    return found


def _subclasses(cls: type[NNCaptionError]) -> set[type[NNCaptionError]]:
    out: set[type[NNCaptionError]] = set()
    for sub in cls.__subclasses__():
        out |= {sub} | _subclasses(sub)
    return out


def error_categories() -> dict[str, str]:
    """`category` of every NNCaptionError subclass in the agents, graph and netapi packages."""
    for pkg in ("nncaption.agents", "nncaption.netapi", "nncaption.graph"):
        mod = importlib.import_module(pkg)
        for info in pkgutil.iter_modules(mod.__path__, pkg + "."):
            try:
                importlib.import_module(info.name)
            except ImportError:  # optional extras (ray, docker) not installed here
                continue
    return {str(c.category): c.__qualname__ for c in _subclasses(NNCaptionError) | {NNCaptionError}}


def test_the_scan_finds_what_we_know_is_emitted() -> None:
    """Guard against a scan that finds nothing (and so could never fail)."""
    found = emitted_in_sources()
    for known in ("truncated", "no-code", "empty-reply", "bad-structured-reply", "endpoint-timeout", "internal",
                  "duplicate"):
        assert known in found, known
    errors = error_categories()
    assert {"context-length", "truncated", "context-truncated", "reply-too-large"} <= set(errors)


def test_every_emitted_category_is_in_the_enum() -> None:
    values = {c.value for c in Category}
    missing = {k: v for k, v in {**emitted_in_sources(), **error_categories()}.items() if k not in values}
    assert not missing, f"categories emitted but not in netapi.categories.Category: {missing}"


def test_extraction_categories_are_in_the_enum() -> None:
    from nncaption.agents.extract import EXTRACTION_CATEGORIES
    assert set(EXTRACTION_CATEGORIES) <= {c.value for c in Category}


@pytest.mark.parametrize("category", list(Category))
def test_every_category_has_properties_and_a_hint(category: Category) -> None:
    assert isinstance(PROPERTIES[category], CategoryProps)
    assert category.stops_run in (None, "endpoint", "machine")
    assert category.hint.strip()
    assert not (category.transient and category.candidates_fault), "a candidate's fault is never transient"
    if category.debuggable:
        assert category.candidates_fault, "only a candidate's own failure goes to the fixer"


def test_the_graph_sets_are_derived_from_the_enum() -> None:
    from nncaption.graph import journal, nodes, pipeline
    assert pipeline.TRANSIENT_CATEGORIES == {"endpoint-unavailable", "endpoint-timeout", "rate-limited"}
    assert nodes.ENDPOINT_CATEGORIES == cats.ENDPOINT_CATEGORIES
    assert nodes.JOB_ERROR_CATEGORIES == {"job-error"}
    for never in ("bad-structured-reply", "truncated", "empty-reply", "context-truncated", "reply-too-large",
                  "endpoint-rejected", "internal", "job-error", "no-code"):
        assert never in journal.NOT_DEBUGGABLE, never
    for code_fault in ("syntax", "shape-error", "bad-hyperparameters", "multiple-candidates-none-valid"):
        assert code_fault not in journal.NOT_DEBUGGABLE
    assert "structured-reply" not in {c.value for c in Category}, "the name agents/errors.py emits is kept"
