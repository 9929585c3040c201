"""Separate a reasoning model's thinking from its answer.

Servers with a reasoning parser (vLLM `--reasoning-parser deepseek_r1`) return the
thinking in `message.reasoning` (newer vLLM) or `message.reasoning_content`.
Without one, R1-style models put it inline as `<think>...</think>`; the chat
template may already have emitted the opening tag, so only `</think>` appears;
and a reply cut by max_tokens leaves a think block open. All three are handled.
"""

from __future__ import annotations

import re

OPEN = "<think>"
CLOSE = "</think>"
_BLOCK = re.compile(r"<think>(.*?)</think>", re.DOTALL | re.IGNORECASE)


def split_reasoning(content: str | None, server_reasoning: str | None = None) -> tuple[str, str]:
    """Return (answer, reasoning) for a reply's `content` and the server's reasoning field."""
    text = content or ""
    parts: list[str] = [server_reasoning.strip()] if server_reasoning and server_reasoning.strip() else []

    # Template-opened think: a closing tag before any opening tag ends the reasoning.
    low = text.lower()
    close_at, open_at = low.find(CLOSE), low.find(OPEN)
    if close_at != -1 and (open_at == -1 or close_at < open_at):
        parts.append(text[:close_at].strip())
        text = text[close_at + len(CLOSE):]

    # Complete blocks anywhere.
    parts.extend(m.group(1).strip() for m in _BLOCK.finditer(text))
    text = _BLOCK.sub("", text)

    # A block left open by truncation: everything after the tag is reasoning.
    open_at = text.lower().find(OPEN)
    if open_at != -1:
        parts.append(text[open_at + len(OPEN):].strip())
        text = text[:open_at]

    return text.strip(), "\n\n".join(p for p in parts if p)


def has_unclosed_think(content: str | None) -> bool:
    """True when the text opens a think block it never closes (a reply cut short while thinking)."""
    low = (content or "").lower()
    return low.rfind(OPEN) > low.rfind(CLOSE)
