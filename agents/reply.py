"""A successful completion into the exchange, and the checks that turn some "successes" into errors.

`fill_exchange` copies what the server said into the `LLMExchange`, every string
sanitised (no NUL, no lone surrogate), the reasoning split from the answer, usage
validated (see `Usage.from_response`) and the speed measured. `check_reply` raises
for what must not pass as a reply: reasoning over its cap, a prompt the server
silently cut (reported prompt tokens far below the prompt's size), and a reply cut
at max_tokens before any answer.
"""

from __future__ import annotations

from typing import Any

from nncaption.agents.errors import ContextTruncated, ReplyTooLarge, TruncatedReply
from nncaption.agents.jsonparse import clean_text
from nncaption.agents.reasoning import split_reasoning
from nncaption.agents.records import LLMExchange, Usage
from nncaption.agents.settings import EndpointSettings
from nncaption.agents.stream import Timing
from nncaption.netapi.safetext import safe_text

TRUNCATED_PROMPT_SHARE = 0.6  # reported prompt_tokens below this share of chars/4 means the server cut the prompt
MIN_CHECKED_PROMPT_CHARS = 4000


def fill_exchange(ex: LLMExchange, data: dict[str, Any], timing: Timing, prompt_chars: int) -> None:
    """Reply, reasoning, finish reason, ids, usage and speed of completion `data` into `ex`."""
    choice = data["choices"][0]
    message = choice["message"]
    content = message.get("content")
    server_reasoning = message.get("reasoning_content")
    if not isinstance(server_reasoning, str) or not server_reasoning:
        server_reasoning = message.get("reasoning")
    thought = clean_text(server_reasoning) if isinstance(server_reasoning, str) else None
    ex.reply, ex.reasoning = split_reasoning(clean_text(content) if isinstance(content, str) else "", thought)
    finish = choice.get("finish_reason")
    ex.finish_reason = safe_text(finish, 40) if isinstance(finish, str) else None
    rid, returned = data.get("id"), data.get("model")
    ex.response_id = safe_text(rid, 200) if isinstance(rid, str) else None
    ex.model_returned = safe_text(returned, 200) if isinstance(returned, str) else None
    ex.usage = Usage.from_response(data.get("usage"), ex.reasoning, ex.reply, prompt_chars)
    ex.streamed = timing.streamed
    ex.first_byte_s = (timing.first_byte - timing.sent) if timing.first_byte is not None else None
    start = timing.first_token or timing.first_byte
    if start is not None and timing.done is not None and timing.done > start:
        ex.tokens_per_s = round(ex.usage.completion_tokens / (timing.done - start), 2)


def check_reply(ep: EndpointSettings, ex: LLMExchange) -> None:
    """Truncation, a silently cut prompt and oversized reasoning are errors, not replies."""
    limit = ep.max_reasoning_chars
    if len(ex.reasoning) > limit:
        raise ReplyTooLarge(f"{ep.describe()} sent {len(ex.reasoning)} characters of reasoning (cap {limit})",
                            endpoint=ep.safe_url())
    prompt_chars = sum(len(str(m.get("content") or "")) for m in ex.messages)
    if not ex.usage.estimated and prompt_chars >= MIN_CHECKED_PROMPT_CHARS \
            and ex.usage.prompt_tokens < TRUNCATED_PROMPT_SHARE * prompt_chars / 4:
        raise ContextTruncated(
            f"{ep.describe()} read only {ex.usage.prompt_tokens} prompt tokens of a {prompt_chars}-character "
            f"prompt (about {prompt_chars // 4} tokens): the server cut the prompt to its context window",
            endpoint=ep.safe_url())
    if ex.truncated and not ex.reply.strip():
        budget = ex.params.get("max_tokens") or ex.params.get("max_completion_tokens")
        raise TruncatedReply(f"{ep.describe()} stopped at max_tokens ({budget}) before answering "
                             f"({len(ex.reasoning)} characters of reasoning, no answer)", endpoint=ep.safe_url())
