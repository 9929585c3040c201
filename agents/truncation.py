"""Asking once more when a design or fix was cut off at its token budget.

A reasoning model (R1) may spend its whole `max_tokens` thinking, so a reply ends
with `finish_reason: "length"` before the final answer: the client raises
`TruncatedReply`, or the extraction finds an unfinished file (`ExtractionError`
category "truncated"). Such a reply never becomes a candidate. `ask_for_candidate`
asks the same question once more: with twice the budget when the first request got
the configured `max_tokens` (the client clamps it to what fits the served context),
and always with a note asking for shorter reasoning and a complete file, which is
all that can help when the budget could not grow. A second truncation is raised as
it is (category "truncated").
"""

from __future__ import annotations

import logging
from typing import Any

from nncaption.agents.client import LLMClient
from nncaption.agents.errors import TruncatedReply
from nncaption.agents.extract import Candidate, ExtractionError, candidate_from_exchange_async, fenced_blocks
from nncaption.agents.records import LLMExchange

log = logging.getLogger(__name__)

TRUNCATED = "truncated"
BREVITY_NOTE = ("\n\nIMPORTANT: a previous answer to this request used up its budget of {n} tokens before the "
                "file was complete. Keep your reasoning short: decide quickly, do not draft the file while "
                "thinking, and write the complete file once, in one ```python block.")


def answer_complete(ex: LLMExchange) -> bool:
    """Whether a reply's answer (not its reasoning) holds code blocks and all of them are closed."""
    blocks = fenced_blocks(ex.reply or "")
    return bool(blocks) and all(b.closed for b in blocks)


def sent_budget(ex: LLMExchange | None, configured: int) -> int:
    """The reply budget the request actually carried (the client may have clamped it), else `configured`."""
    if ex is not None:
        for key in ("max_completion_tokens", "max_tokens"):
            value = ex.params.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return configured


def retry_budget(sent: int, configured: int) -> int | None:
    """A larger budget for the second try, or None when it cannot grow (the first was already clamped)."""
    if sent < configured:  # the client clamped it to what fits the context: more cannot be had
        return None
    return sent * 2


def with_brevity_note(messages: list[dict[str, Any]], sent: int) -> list[dict[str, Any]]:
    """`messages` with the note appended to the last user message (a new user message if there is none)."""
    out = [dict(m) for m in messages]
    note = BREVITY_NOTE.format(n=sent)
    for m in reversed(out):
        if m.get("role") == "user" and isinstance(m.get("content"), str):
            m["content"] = m["content"] + note
            return out
    out.append({"role": "user", "content": note.strip()})
    return out


async def ask_for_candidate(client: LLMClient, role: str, messages: list[dict[str, Any]],
                            exchanges: list[LLMExchange], *, seed: int | None = None
                            ) -> tuple[LLMExchange, Candidate]:
    """One chat call whose reply must hold a candidate; a truncated reply is asked again once.

    Every exchange made is appended to `exchanges`. Raises the client's `LLMError`s and
    `ExtractionError` (message prefixed with "`role` reply: "); a second truncation
    raises as it came (`TruncatedReply` or an `ExtractionError` of category truncated).
    """
    configured = client.settings.for_role(role).max_tokens
    budget: int | None = None
    asked = messages
    for attempt in (1, 2):
        try:
            ex = await client.chat(role, asked, seed=seed, max_tokens=budget)
        except TruncatedReply as e:
            if e.exchange is not None:
                exchanges.append(e.exchange)
            if attempt == 2:
                e.message = f"{role} reply cut off again after a retry: {e.message}"
                raise
            sent = sent_budget(e.exchange, budget or configured)
        else:
            exchanges.append(ex)
            try:
                cand = await candidate_from_exchange_async(ex)  # CPU-heavy parsing off the event loop
                if ex.truncated and not answer_complete(ex):
                    raise ExtractionError(TRUNCATED, "the reply was cut off (max_tokens) inside its code block",
                                          candidate=cand.code)
                return ex, cand
            except ExtractionError as e:
                e.exchange = ex
                if e.category != TRUNCATED or attempt == 2:
                    again = " again after a retry" if attempt == 2 and e.category == TRUNCATED else ""
                    e.message = f"{role} reply{again}: {e.message}"
                    raise
                sent = sent_budget(ex, budget or configured)
        budget = retry_budget(sent, configured)
        asked = with_brevity_note(messages, sent)
        log.warning("%s reply was cut off at %d tokens; asking once more (%s)", role, sent,
                    f"budget {budget}" if budget else "same budget, shorter reasoning")
    raise AssertionError("unreachable: the second attempt returns or raises")
