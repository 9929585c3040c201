"""Typed records of LLM calls: token usage and the full exchange.

Every agent call produces `LLMExchange` records (also for failed calls) that the
graph stores in its trace. They hold the reasoning separately from the reply so
it is kept for inspection but never ends up in candidate code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

MAX_TOKEN_COUNT = 10_000_000  # a reported count above this is not believed (and would overflow nothing)


def token_count(value: Any) -> int | None:
    """A usage count the server reported, if it is believable: a non-negative integer below MAX_TOKEN_COUNT.

    NaN, strings, booleans, negatives, 1e30 and non-integral floats are None (unknown).
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value <= MAX_TOKEN_COUNT else None
    if isinstance(value, float) and value.is_integer() and 0 <= value <= MAX_TOKEN_COUNT:
        return int(value)
    return None


def estimate_tokens(chars: int) -> int:
    """Tokens in `chars` characters of text (about 4 characters per token; never below 0)."""
    return max(0, (chars + 3) // 4)


@dataclass
class Usage:
    """Token counts of one call.

    Counts come from the server when it reports believable ones (see `token_count`);
    otherwise they are estimated from the text and `estimated` is True, so a hostile
    or broken usage block can never lower the run's budget or overflow a column.
    `reasoning_tokens` comes from completion_tokens_details when reported; otherwise it
    is estimated from the character share of the reasoning and `reasoning_estimated` is True.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    total_tokens: int = 0
    reasoning_estimated: bool = False
    estimated: bool = False

    @classmethod
    def from_response(cls, usage: Any, reasoning: str, reply: str, prompt_chars: int = 0) -> Usage:
        usage = usage if isinstance(usage, dict) else {}
        prompt = token_count(usage.get("prompt_tokens"))
        completion = token_count(usage.get("completion_tokens"))
        estimated = prompt is None or completion is None
        if prompt is None:
            prompt = estimate_tokens(prompt_chars)
        if completion is None:
            completion = estimate_tokens(len(reasoning) + len(reply))
        total = token_count(usage.get("total_tokens"))
        total = max(total or 0, prompt + completion)
        details = usage.get("completion_tokens_details")
        reported = token_count(details.get("reasoning_tokens")) if isinstance(details, dict) else None
        if reported is not None:
            return cls(prompt, completion, min(reported, completion), total, False, estimated)
        chars = len(reasoning) + len(reply)
        estimate = round(completion * len(reasoning) / chars) if chars and reasoning else 0
        return cls(prompt, completion, estimate, total, bool(reasoning), estimated)

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
            self.total_tokens + other.total_tokens,
            self.reasoning_estimated or other.reasoning_estimated,
            self.estimated or other.estimated,
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
    streamed: bool = False  # the reply came as server-sent events
    first_byte_s: float | None = None  # from sending the last try to its first byte
    tokens_per_s: float | None = None  # completion tokens per second of the last try (from its first byte)
    profile: str = ""  # the endpoint kind the request was shaped for (vllm, openai, ollama, ...)

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
        d["usage"] = Usage(**{k: v for k, v in (d.get("usage") or {}).items() if k in _USAGE_FIELDS})
        d.setdefault("model_returned", None)
        return cls(**{k: v for k, v in d.items() if k in _EXCHANGE_FIELDS})


_USAGE_FIELDS = frozenset(f.name for f in fields(Usage))
_EXCHANGE_FIELDS = frozenset(f.name for f in fields(LLMExchange))


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
