"""The reviewer agent: the static validator first, then (optionally) an LLM compliance review.

The static check (`nncaption.netapi.validate.static_check`) is free and exact, so
it always runs; only a file it accepts is shown to the LLM, which is asked for a
structured verdict (`response_format` with a JSON schema; a tolerant parse when
the server rejects that). The hyperparameters the candidate will train with are
checked statically too (`bad-hyperparameters`) and shown to the LLM. The result is
a `Review` that says where it came from.

The LLM reviewer advises, it never kills: when it cannot give a verdict (a truncated,
empty or JSON-less reply, a context error, a rejected request: any `LLMError` that is
not transient) the candidate goes on with its static verdict, and the Review says
"review skipped" and why (`skipped`). A JSON verdict found only in the reasoning of a
reply that was not cut off is used. Transient endpoint failures still raise, so the
graph can retry them and notice an endpoint that is down.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from nncaption.agents.client import LLMClient, run_sync
from nncaption.agents.errors import LLMError, StructuredReplyError
from nncaption.agents.hparams import PRM_CATEGORY, PrmError, validate_prm
from nncaption.agents.records import LLMExchange
from nncaption.netapi.categories import CODE_CATEGORIES, Category, Verdict
from nncaption.netapi.safetext import safe_text
from nncaption.netapi.validate import static_check
from nncaption.prompts.library import reviewer_messages

log = logging.getLogger(__name__)

CATEGORY_VALUES: list[str] = [c.value for c in Category]
REVIEW_CATEGORIES: list[str] = list(CODE_CATEGORIES)  # what a verdict on candidate code can name
SKIPPED_PREFIX = "review skipped"
REASONING_SCAN_CHARS = 20_000  # how much of the reasoning's end is searched for a verdict
MESSAGE_CHARS = 1000

REVIEW_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "ok": {"type": "boolean"},
        "category": {"anyOf": [{"type": "string", "enum": REVIEW_CATEGORIES}, {"type": "null"}]},
        "message": {"type": "string"},
        "line": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
    },
    "required": ["ok", "category", "message", "line"],
    "additionalProperties": False,
}


@dataclass
class Review:
    """A reviewer verdict; `source` says whether the static validator or the LLM decided.

    `skipped` holds why the LLM review gave no verdict ("truncated: ..."); the candidate
    then goes on with its static verdict (`ok` True, `source` "static", `message`
    beginning with "review skipped").
    """

    ok: bool
    category: str | None
    message: str
    line: int | None
    source: Literal["static", "llm"]
    exchanges: list[LLMExchange] = field(default_factory=list)
    skipped: str | None = None

    @property
    def exchange(self) -> LLMExchange | None:
        return self.exchanges[-1] if self.exchanges else None

    def to_verdict(self) -> Verdict:
        """As a validator-style verdict (stage "static" or "review") for the fixer."""
        stage = "static" if self.source == "static" else "review"
        if self.ok:
            return Verdict.accept(stage, self.message or "accepted")
        category = Category(self.category) if self.category in CATEGORY_VALUES else None
        return Verdict(ok=False, stage=stage, category=category, message=self.message, line=self.line)


def review_from_json(obj: dict[str, Any], exchanges: list[LLMExchange]) -> Review:
    """Normalise the LLM's JSON (unknown categories become None, lines int or None)."""
    ok = obj.get("ok")
    ok = ok if isinstance(ok, bool) else str(ok).strip().lower() in ("true", "yes", "1")
    category = obj.get("category")
    category = category if isinstance(category, str) and category in CATEGORY_VALUES else None
    line = obj.get("line")
    try:
        line = int(line) if line is not None and not isinstance(line, bool) else None
    except (TypeError, ValueError):
        line = None
    default = "accepted" if ok else "rejected by the LLM reviewer without a reason"
    message = safe_text(str(obj.get("message") or default), MESSAGE_CHARS, keep="head")
    return Review(ok=ok, category=None if ok else category, message=message, line=None if ok else line,
                  source="llm", exchanges=exchanges)


def check_prm(code: str, prm: Mapping[str, Any] | None) -> Review | None:
    """A static rejection when `prm` is invalid for `code` (category bad-hyperparameters), else None."""
    if not prm:
        return None
    try:
        validate_prm(prm, code)
    except PrmError as e:
        return Review(ok=False, category=PRM_CATEGORY, message=e.message, line=None, source="static")
    return None


async def review(code: str, client: LLMClient | None = None, *, use_llm: bool = False,
                 prm: Mapping[str, Any] | None = None) -> Review:
    """Static check (code, then `prm`); if both pass and `use_llm` (with a client), the LLM's structured review."""
    verdict = static_check(code)
    if not verdict.ok:
        return Review(ok=False, category=verdict.category.value if verdict.category else None,
                      message=verdict.message, line=verdict.line, source="static")
    bad_prm = check_prm(code, prm)
    if bad_prm is not None:
        return bad_prm
    if not use_llm:
        return Review(ok=True, category=None, message=verdict.message, line=None, source="static")
    if client is None:
        raise ValueError("review(use_llm=True) needs an LLMClient")
    messages = reviewer_messages(code, static_message=safe_text(verdict.message, 500, keep="head"), prm=prm or {})
    try:
        obj, exchanges = await client.chat_json("reviewer", messages, schema=REVIEW_SCHEMA, schema_name="review")
    except LLMError as e:
        if _is_transient(e):
            raise
        found = verdict_in_reasoning(e.exchange)
        failed = [e.exchange] if e.exchange is not None else []
        if found is not None:
            log.info("reviewer reply held no verdict; using the JSON verdict in its reasoning")
            return review_from_json(found, failed)
        return skipped_review(verdict.message, e, failed)
    if "ok" not in obj:  # JSON, but not a verdict
        return skipped_review(verdict.message, StructuredReplyError(
            f"the reviewer's JSON holds no 'ok' field: {safe_text(json.dumps(obj), 150, keep='head')}"), exchanges)
    return review_from_json(obj, exchanges)


def _is_transient(e: LLMError) -> bool:
    """An endpoint failure the graph retries (down, timeout, rate limit); anything else skips the review."""
    try:
        return Category(e.category).transient
    except ValueError:
        return e.retryable


def verdict_in_reasoning(ex: LLMExchange | None) -> dict[str, Any] | None:
    """The last JSON object with a boolean `ok` in the reasoning of a reply that was not cut off, else None."""
    if ex is None or ex.finish_reason == "length" or not ex.reasoning:
        return None
    text = ex.reasoning[-REASONING_SCAN_CHARS:]  # the verdict comes at the end; bounded work on hostile text
    decoder = json.JSONDecoder()
    found: dict[str, Any] | None = None
    start = text.find("{")
    while start != -1:
        try:
            value, end = decoder.raw_decode(text, start)
        except (ValueError, RecursionError):
            start = text.find("{", start + 1)
            continue
        if isinstance(value, dict) and isinstance(value.get("ok"), bool):
            found = value
        start = text.find("{", max(end, start + 1))
    return found


def skipped_review(static_message: str, error: LLMError, exchanges: list[LLMExchange]) -> Review:
    """The static verdict stands: the LLM reviewer could not answer (why is in `skipped` and the message)."""
    why = f"{error.category}: {safe_text(error.message, 300, keep='head')}"
    log.warning("LLM review skipped (%s); the candidate goes on with its static verdict", why)
    return Review(ok=True, category=None, message=f"{SKIPPED_PREFIX} ({why}); static check: {static_message}",
                  line=None, source="static", exchanges=exchanges, skipped=why)


def review_sync(code: str, client: LLMClient | None = None, *, use_llm: bool = False,
                prm: Mapping[str, Any] | None = None) -> Review:
    """`review` for synchronous callers."""
    return run_sync(review(code, client, use_llm=use_llm, prm=prm), client)
