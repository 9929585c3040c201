"""Typed records of LLM calls: token usage and the full exchange.

Every agent call produces `LLMExchange` records (also for failed calls) that the
graph stores in its trace. They hold the reasoning separately from the reply so
it is kept for inspection but never ends up in candidate code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Usage:
    """Token counts of one call.

    `reasoning_tokens` comes from the server (completion_tokens_details) when it
    reports it; otherwise it is estimated from the character share of the
    reasoning in the completion and `reasoning_estimated` is True.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    total_tokens: int = 0
    reasoning_estimated: bool = False

    @classmethod
    def from_response(cls, usage: dict[str, Any] | None, reasoning: str, reply: str) -> Usage:
        usage = usage or {}
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        total = int(usage.get("total_tokens") or prompt + completion)
        details = usage.get("completion_tokens_details") or {}
        reported = details.get("reasoning_tokens") if isinstance(details, dict) else None
        if reported is not None:
            return cls(prompt, completion, int(reported), total, False)
        chars = len(reasoning) + len(reply)
        estimate = round(completion * len(reasoning) / chars) if chars and reasoning else 0
        return cls(prompt, completion, estimate, total, bool(reasoning))

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
            self.total_tokens + other.total_tokens,
            self.reasoning_estimated or other.reasoning_estimated,
        )


@dataclass
class LLMExchange:
    """One chat call as the trace keeps it: what was asked, what came back, what it cost.

    `reply` is the answer with reasoning removed; `reasoning` the thinking (split
    out by the server or stripped from `<think>` blocks). `error` is
    "category: message" when the call failed; `attempts` counts HTTP tries.
    `model` is the name that was asked for, `model_returned` the one the server
    put in its answer (the offline composer always answers `nncaption-offline-composer`).
    """

    role: str
    endpoint: str
    model: str  # the model name requested
    messages: list[dict[str, Any]]
    params: dict[str, Any] = field(default_factory=dict)
    reply: str = ""
    reasoning: str = ""
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    latency_s: float = 0.0  # from sending the first try to the final answer, retries and backoff included
    queued_s: float = 0.0  # waiting for the shared concurrency limit before that
    attempts: int = 0
    error: str | None = None
    started_at: float = 0.0
    finished_at: float = 0.0
    response_id: str | None = None
    model_returned: str | None = None  # the model name the server answered with (None: no answer)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def truncated(self) -> bool:
        """The server stopped because of max_tokens."""
        return self.finish_reason == "length"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LLMExchange:
        d = dict(d)
        d["usage"] = Usage(**(d.get("usage") or {}))
        d.setdefault("model_returned", None)
        return cls(**d)


def usage_by_role(exchanges: list[LLMExchange]) -> dict[str, dict[str, Any]]:
    """Totals per role: calls, failures, attempts, tokens and seconds (for run reports)."""
    out: dict[str, dict[str, Any]] = {}
    for ex in exchanges:
        row = out.setdefault(ex.role, {"calls": 0, "failed": 0, "attempts": 0, "latency_s": 0.0,
                                       "usage": Usage()})
        row["calls"] += 1
        row["failed"] += 0 if ex.ok else 1
        row["attempts"] += ex.attempts
        row["latency_s"] += ex.latency_s
        row["usage"] = row["usage"] + ex.usage
    for row in out.values():
        row["usage"] = asdict(row["usage"])
    return out
