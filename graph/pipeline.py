"""Small adapters between the graph's nodes and the agents / candidate service.

Each adapter makes one call (design, fix, review, static check, smoke, train)
and returns a plain outcome value: failures are values with a category, never
exceptions, so the graph can checkpoint them. The only exception that leaves an
adapter is cancellation (and, from the node, `TransientEndpointError`, raised on
purpose so that LangGraph's RetryPolicy tries the node again).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nncaption.netapi import categories as _categories
from nncaption.netapi.categories import Category, Verdict
from nncaption.netapi.errors import NNCaptionError
from nncaption.netapi.safetext import safe_text

log = logging.getLogger(__name__)

TRANSIENT_CATEGORIES: frozenset[str] = _categories.TRANSIENT_CATEGORIES
CATEGORY_VALUES: frozenset[str] = frozenset(c.value for c in Category)


class TransientEndpointError(Exception):
    """Raised by a node on a transient endpoint failure while tries remain (RetryPolicy retries the node)."""


@dataclass
class Produced:
    """What a designer or fixer call produced: code and hyperparameters, or a failure."""

    ok: bool
    code: str = ""
    prm: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    snippets: list[str] = field(default_factory=list)
    category: str | None = None
    message: str = ""
    exchanges: list[Any] = field(default_factory=list)
    producer: str = ""
    notes: list[str] = field(default_factory=list)  # what the agent changed on its own (dropped keys, edit blocks)
    edit: dict[str, Any] | None = None  # how a SEARCH/REPLACE edit went (agents/diffask.py), for the trace

    @property
    def transient(self) -> bool:
        return not self.ok and (self.category or "") in TRANSIENT_CATEGORIES

    def detail(self) -> dict[str, Any]:
        """The notes and edit record for the step's detail (bounded: at most 20 notes of 300 characters)."""
        out: dict[str, Any] = {}
        if self.notes:
            out["notes"] = [safe_text(str(n), 300) for n in self.notes[:20]]
        if self.edit is not None:
            out["edit"] = self.edit
        return out


def _agent_extras(result: Any) -> dict[str, Any]:
    """`notes` and `edit` of a Design or Fix, when the agent gave them."""
    edit = getattr(result, "edit", None)
    return {"notes": [str(n) for n in (getattr(result, "notes", None) or [])],
            "edit": edit if isinstance(edit, dict) else None}


@dataclass
class Checked:
    """A check's verdict (static, review or smoke), with the sandbox job when there was one."""

    ok: bool
    stage: str
    category: str | None = None
    message: str = ""
    line: int | None = None
    tail: str = ""
    exchanges: list[Any] = field(default_factory=list)
    job_id: str | None = None
    job_dir: str | None = None
    reused: bool = False
    seconds: float = 0.0

    @property
    def transient(self) -> bool:
        return not self.ok and (self.category or "") in TRANSIENT_CATEGORIES


@dataclass
class Trained:
    """Training and scoring of one candidate in the sandbox."""

    ok: bool
    category: str | None = None
    message: str = ""
    stage: str = "train"
    tail: str = ""
    epochs: list[dict[str, Any]] = field(default_factory=list)
    bleu4: float | None = None
    lemur_bleu4: float | None = None
    params: int | None = None
    job_id: str | None = None
    job_dir: str | None = None
    reused: bool = False
    seconds: float = 0.0
    placement: str = ""  # where the job ran, when the backend says (e.g. "ray-node:0123abcd4567")


def llm_failure(e: Exception) -> tuple[str, str, list[Any]]:
    """(category, message, exchanges) of an agent call that raised (LLMError, ExtractionError, anything else)."""
    exchanges: list[Any] = []
    ex = getattr(e, "exchange", None)
    if ex is not None:
        exchanges.append(ex)
    category = str(e.category if isinstance(e, NNCaptionError) else "internal")
    return category, safe_text(str(e), 1000, keep="head"), exchanges


def _log_unexpected(e: Exception) -> None:
    if not isinstance(e, NNCaptionError):
        log.error("agent call raised %s", type(e).__name__, exc_info=e)


def as_verdict(failure: Mapping[str, Any]) -> Verdict:
    """A stored failure as the validator-style verdict the fixer understands (traceback tail included)."""
    category = failure.get("category")
    message = str(failure.get("message") or "")
    tail = str(failure.get("tail") or "")
    if tail and tail not in message:
        message = f"{message}\n{tail}" if message else tail
    return Verdict(ok=False, stage=str(failure.get("stage") or "train"),
                   category=Category(category) if category in CATEGORY_VALUES else None,
                   message=safe_text(message, 3000), line=failure.get("line"))


class Pipeline:
    """The calls the graph makes: agents (Designer/Reviewer/Fixer protocols) and the CandidateService."""

    def __init__(self, designer: Any, reviewer: Any, fixer: Any, service: Any) -> None:
        self.designer = designer
        self.reviewer = reviewer
        self.fixer = fixer
        self.service = service

    async def design(self, request: Any) -> Produced:
        try:
            d = await self.designer.design(request)
        except Exception as e:  # agents' failures become values
            _log_unexpected(e)
            category, message, exchanges = llm_failure(e)
            return Produced(ok=False, category=category, message=message, exchanges=exchanges,
                            producer=getattr(self.designer, "name", ""))
        return Produced(ok=True, code=d.code, prm=dict(getattr(d, "prm", {}) or {}), summary=d.summary,
                        snippets=list(d.snippets), exchanges=list(d.exchanges),
                        producer=str(getattr(d, "producer", "") or getattr(self.designer, "name", "")),
                        **_agent_extras(d))

    async def fix(self, code: str, prm: Mapping[str, Any], failure: Mapping[str, Any]) -> Produced:
        try:
            f = await self.fixer.fix(code, dict(prm), as_verdict(failure))
        except Exception as e:  # agents' failures become values
            _log_unexpected(e)
            category, message, exchanges = llm_failure(e)
            return Produced(ok=False, category=category, message=message, exchanges=exchanges,
                            producer=getattr(self.fixer, "name", ""))
        return Produced(ok=True, code=f.code, prm=dict(getattr(f, "prm", None) or prm), summary=f.summary,
                        exchanges=list(f.exchanges),
                        producer=str(getattr(f, "producer", "") or getattr(self.fixer, "name", "")),
                        **_agent_extras(f))

    def static(self, code: str) -> Checked:
        from nncaption.netapi.validate import static_check

        v = static_check(code)  # its ast.parse is serialised (netapi/pyast.py): no SystemError from other threads
        return Checked(ok=v.ok, stage="static", category=v.category.value if v.category else None,
                       message=v.message, line=v.line)

    async def review(self, code: str, prm: Mapping[str, Any]) -> Checked:
        try:
            r = await self.reviewer.review(code, dict(prm))
        except Exception as e:  # agents' failures become values
            _log_unexpected(e)
            category, message, exchanges = llm_failure(e)
            return Checked(ok=False, stage="review", category=category, message=message, exchanges=exchanges)
        return Checked(ok=bool(r.ok), stage="review", category=None if r.ok else (r.category or "rejected"),
                       message=r.message, line=r.line, exchanges=list(r.exchanges))

    async def smoke(self, code: str, prm: Mapping[str, Any]) -> Checked:
        t0 = time.monotonic()
        try:
            c = await self.service.check(code, dict(prm))
        except NNCaptionError as e:  # the service's own problem (dataset, settings): a value, logged
            log.error("smoke check could not run: %s", e)
            return Checked(ok=False, stage="smoke", category="internal", message=f"{e.category}: {e.message}")
        except Exception as e:
            log.exception("smoke check raised")
            return Checked(ok=False, stage="smoke", category="internal", message=f"{type(e).__name__}: {e}")
        category = getattr(c, "category", None)
        job_id = getattr(c, "job_id", None)
        job_dir = None
        jobs = getattr(self.service, "store", None)
        if job_id and jobs is not None and hasattr(jobs, "job_dir"):
            job_dir = str(jobs.job_dir(job_id))
        return Checked(ok=bool(c.ok), stage=str(getattr(c, "stage", "smoke")),
                       category=str(category.value if hasattr(category, "value") else category) if category else None,
                       message=safe_text(c.message, 3000), line=getattr(c, "line", None), job_id=job_id,
                       job_dir=job_dir, reused=bool(getattr(c, "reused", False)), seconds=time.monotonic() - t0)

    async def train(self, code: str, prm: Mapping[str, Any], *,
                    on_event: Callable[[dict[str, Any]], None] | None = None) -> Trained:
        """Train and score in the sandbox; `on_event` gets the job's progress events (progress.jsonl lines)."""
        t0 = time.monotonic()
        try:
            r = await self.service.evaluate(code, dict(prm), on_event=on_event)
        except NNCaptionError as e:
            log.error("training could not run: %s", e)
            return Trained(ok=False, category="internal", message=f"{e.category}: {e.message}")
        except Exception as e:
            log.exception("training raised")
            return Trained(ok=False, category="internal", message=f"{type(e).__name__}: {e}")
        status = getattr(r.status, "value", r.status)
        category = getattr(r.category, "value", r.category)
        epochs = [e.to_dict() if hasattr(e, "to_dict") else dict(vars(e)) for e in (r.epochs or [])]
        ok = status == "ok" and r.bleu4 is not None
        return Trained(ok=ok, category=None if ok else str(category or "crashed"), message=safe_text(r.message, 3000),
                       stage=str(getattr(r, "stage", None) or "train"),
                       tail=safe_text(getattr(r, "traceback_tail", "") or "", 1500), epochs=epochs,
                       bleu4=r.bleu4, lemur_bleu4=getattr(r, "lemur_bleu4", None), params=getattr(r, "params", None),
                       job_id=getattr(r, "job_id", None),
                       job_dir=str(r.job_dir) if getattr(r, "job_dir", None) else None,
                       reused=bool(getattr(r, "reused", False)), seconds=time.monotonic() - t0,
                       placement=next((str(m) for m in getattr(r, "isolation", None) or []
                                       if str(m).startswith("ray-node:")), str(getattr(r, "sandbox", "") or "")))
