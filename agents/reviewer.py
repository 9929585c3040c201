"""The reviewer agent: the static validator first, then (optionally) an LLM compliance review.

The static check (`nncaption.netapi.validate.static_check`) is free and exact, so
it always runs; only a file it accepts is shown to the LLM, which is asked for a
structured verdict (`response_format` with a JSON schema; a tolerant parse when
the server rejects that). The hyperparameters the candidate will train with are
checked statically too (`bad-hyperparameters`) and shown to the LLM. The result is
a `Review` that says where it came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from nncaption.agents.client import LLMClient, run_sync
from nncaption.agents.hparams import PRM_CATEGORY, PrmError, validate_prm
from nncaption.agents.records import LLMExchange
from nncaption.netapi.categories import Category, Verdict
from nncaption.netapi.safetext import safe_text
from nncaption.netapi.validate import static_check
from nncaption.prompts.library import reviewer_messages

CATEGORY_VALUES: list[str] = [c.value for c in Category]

REVIEW_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "ok": {"type": "boolean"},
        "category": {"anyOf": [{"type": "string", "enum": CATEGORY_VALUES}, {"type": "null"}]},
        "message": {"type": "string"},
        "line": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
    },
    "required": ["ok", "category", "message", "line"],
    "additionalProperties": False,
}


@dataclass
class Review:
    """A reviewer verdict; `source` says whether the static validator or the LLM decided."""

    ok: bool
    category: str | None
    message: str
    line: int | None
    source: Literal["static", "llm"]
    exchanges: list[LLMExchange] = field(default_factory=list)

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
    message = str(obj.get("message") or ("accepted" if ok else "rejected by the LLM reviewer without a reason"))
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
    obj, exchanges = await client.chat_json("reviewer", messages, schema=REVIEW_SCHEMA, schema_name="review")
    return review_from_json(obj, exchanges)


def review_sync(code: str, client: LLMClient | None = None, *, use_llm: bool = False,
                prm: Mapping[str, Any] | None = None) -> Review:
    """`review` for synchronous callers."""
    return run_sync(review(code, client, use_llm=use_llm, prm=prm), client)
