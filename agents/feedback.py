"""Feedback for the designer as plain, size-bounded data.

The graph fills these from its history: the best earlier candidates (a one-line
summary, hyperparameters, BLEU-4 per epoch) and recent failures (category plus
the last lines of the traceback or verdict message). Bounds keep a long run from
blowing up the prompt: every text is clipped and the lists are capped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nncaption.netapi.categories import Verdict
from nncaption.prompts.library import CandidateFeedback, FailureFeedback

MAX_SUMMARY_CHARS = 300
MAX_HPARAMS = 16
MAX_EPOCHS = 50
MAX_TRACEBACK_LINES = 12
MAX_TRACEBACK_CHARS = 1200
MAX_TOP = 5
MAX_FAILURES = 5


def clip_line(text: str, limit: int = MAX_SUMMARY_CHARS) -> str:
    """One line of at most `limit` characters."""
    one = " ".join((text or "").split())
    return one if len(one) <= limit else one[: limit - 3] + "..."


def tail(text: str, max_lines: int = MAX_TRACEBACK_LINES, max_chars: int = MAX_TRACEBACK_CHARS) -> str:
    """The last lines of a traceback, at most `max_chars` characters (the end matters most)."""
    out = "\n".join((text or "").strip().splitlines()[-max_lines:])
    return out if len(out) <= max_chars else "..." + out[-(max_chars - 3):]


def _scalar(v: Any) -> Any:
    return v if isinstance(v, (int, float, bool, str)) or v is None else str(v)[:40]


@dataclass(frozen=True)
class CandidateSummary:
    """An earlier scored candidate, as the designer sees it."""

    summary: str
    hparams: Mapping[str, Any] = field(default_factory=dict)
    bleu4_per_epoch: Sequence[float] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "summary", clip_line(self.summary))
        items = sorted(self.hparams.items())[:MAX_HPARAMS]
        object.__setattr__(self, "hparams", {str(k)[:40]: _scalar(v) for k, v in items})
        object.__setattr__(self, "bleu4_per_epoch", tuple(float(b) for b in self.bleu4_per_epoch)[-MAX_EPOCHS:])

    @property
    def best_bleu4(self) -> float:
        return max(self.bleu4_per_epoch, default=0.0)

    def to_prompt(self) -> CandidateFeedback:
        return CandidateFeedback(self.summary, dict(self.hparams), tuple(self.bleu4_per_epoch))


@dataclass(frozen=True)
class FailureSummary:
    """A recent failure: its category and the end of its traceback (or verdict message)."""

    category: str
    traceback_tail: str = ""
    summary: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "category", clip_line(str(self.category), 40))
        object.__setattr__(self, "traceback_tail", tail(self.traceback_tail))
        object.__setattr__(self, "summary", clip_line(self.summary))

    @classmethod
    def from_verdict(cls, verdict: Verdict, summary: str = "") -> FailureSummary:
        where = f" (line {verdict.line})" if verdict.line else ""
        return cls(str(verdict.category or "rejected"), f"{verdict.stage}{where}: {verdict.message}", summary)

    def to_prompt(self) -> FailureFeedback:
        return FailureFeedback(self.category, self.traceback_tail, self.summary)


@dataclass(frozen=True)
class Feedback:
    """The feedback section: `top` in the caller's ranking (best first, capped), most recent failures last."""

    top: Sequence[CandidateSummary] = ()
    failures: Sequence[FailureSummary] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "top", tuple(self.top)[:MAX_TOP])
        object.__setattr__(self, "failures", tuple(self.failures)[-MAX_FAILURES:])
