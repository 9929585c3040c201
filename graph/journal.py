"""The run's journal: one record per candidate, and the pure functions that read it.

Like AIDE's journal `Node`, every candidate records its parent, how it was made
(`origin`: compose / improve / fix), its attempts, the verdicts and its scores.
The records live in the run store (SQLite); the scheduler derives the run's counts from them.
What later design turns see is derived from the journal by small pure functions
here: `feedback_from` (best earlier candidates with summary, hyperparameters and
BLEU-4 per epoch; recent failures with category and traceback tail),
`parent_for` (the code and scores an `improve` turn shows) and `leaderboard`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from nncaption.agents.feedback import CandidateSummary, FailureSummary, Feedback
from nncaption.graph.descriptor import Descriptor
from nncaption.netapi import categories as _categories


class Status(str, Enum):
    """Where a candidate stands. `planned` is in flight; the others are final."""

    PLANNED = "planned"
    SCORED = "scored"
    FAILED = "failed"
    DUPLICATE = "duplicate"
    INTERRUPTED = "interrupted"

    def __str__(self) -> str:
        return self.value


class Origin(str, Enum):
    """How a candidate was made: a fresh design, a change to a good parent, or a repair of a failed one."""

    COMPOSE = "compose"
    IMPROVE = "improve"
    FIX = "fix"

    def __str__(self) -> str:
        return self.value


# Categories the search must not try to "debug" (derived from the one vocabulary in netapi.categories).
NOT_DEBUGGABLE: frozenset[str] = _categories.NOT_DEBUGGABLE


def ends_with_run(categories: list[str | None], wanted: frozenset[str], n: int) -> bool:
    """Whether the last `n` finished candidates (in order) all failed with a category in `wanted`."""
    return len(categories) >= n and all((c or "") in wanted for c in categories[-n:])


@dataclass(frozen=True)
class Entry:
    """One candidate as the journal keeps it (a row of the `candidates` table)."""

    cid: str
    index: int
    origin: Origin
    parent: str | None = None
    status: Status = Status.PLANNED
    category: str | None = None
    stage: str | None = None
    bleu4: float | None = None
    bleu4_per_epoch: tuple[float, ...] = ()
    summary: str = ""
    prm: Mapping[str, Any] = field(default_factory=dict)
    attempts: int = 0
    fix_rounds: int = 0
    debug_depth: int = 0
    traceback_tail: str = ""
    message: str = ""
    code_ref: str | None = None
    decoder: str | None = None
    duplicate_of: str | None = None
    params: int | None = None  # the training report's parameter count (final candidates)
    descriptor: Descriptor | None = None  # what kind of captioner it is (graph/descriptor.py); final candidates

    @property
    def scored(self) -> bool:
        return self.status is Status.SCORED and self.bleu4 is not None

    @property
    def debuggable(self) -> bool:
        return (self.status is Status.FAILED and self.code_ref is not None
                and (self.category or "") not in NOT_DEBUGGABLE)


@dataclass(frozen=True)
class AttemptFailure:
    """One rejected attempt (a failed check or training), whether or not the candidate was repaired later."""

    cid: str
    attempt: int
    stage: str
    category: str
    text: str  # the verdict message: what went wrong, with the traceback tail when there was one
    summary: str = ""
    order: int = 0  # the superstep it was recorded in


def ranked(entries: Iterable[Entry]) -> list[Entry]:
    """Scored candidates, best BLEU-4 first; ties go to the earlier candidate (deterministic)."""
    return sorted((e for e in entries if e.scored), key=lambda e: (-(e.bleu4 or 0.0), e.index))


def leaderboard(entries: Iterable[Entry], k: int = 10) -> list[dict[str, Any]]:
    """The top `k` as small dicts (what the graph state and the live view keep)."""
    return [{"cid": e.cid, "bleu4": e.bleu4, "origin": e.origin.value, "parent": e.parent,
             "summary": e.summary[:120]} for e in ranked(entries)[:k]]


def feedback_from(entries: Sequence[Entry], attempts: Sequence[AttemptFailure] = (), *, top: int = 3,
                  failures: int = 3) -> Feedback:
    """The designer's feedback section: the best candidates so far (summary, hyperparameters, BLEU-4 per epoch)
    and the most recent failures, oldest first: rejected attempts (category and the end of the verdict or
    traceback), then candidates that failed before any check (design or fixer call failed)."""
    best = [CandidateSummary(e.summary or "(no summary)", dict(e.prm), e.bleu4_per_epoch or (e.bleu4 or 0.0,))
            for e in ranked(entries)[:top]]
    recent = [FailureSummary(a.category or "rejected", f"{a.stage}: {a.text}", a.summary) for a in attempts
              if a.category not in NOT_DEBUGGABLE]
    early = [e for e in sorted(entries, key=lambda e: e.index)
             if e.status is Status.FAILED and e.category and e.stage in ("design", "fix")
             and e.category not in NOT_DEBUGGABLE]
    recent += [FailureSummary(e.category or "failed", e.traceback_tail or f"failed at the {e.stage} stage",
                              e.summary) for e in early]
    return Feedback(top=best, failures=recent[-failures:])


def by_id(entries: Iterable[Entry]) -> dict[str, Entry]:
    return {e.cid: e for e in entries}


def debug_depth_of(origin: Origin, parent: Entry | None) -> int:
    """0 for compose/improve; a fix of a fix of X has depth 2 (the chain of `fix` origins ending here)."""
    if origin is not Origin.FIX:
        return 0
    return 1 + (parent.debug_depth if parent is not None else 0)


def funnel(entries: Iterable[Entry]) -> dict[str, int]:
    """Designed -> statically valid -> reviewed -> smoke-passed -> trained -> scored, from final stages."""
    order = ["design", "static", "review", "smoke", "train", "score"]
    out = {"designed": 0, "static_ok": 0, "review_ok": 0, "smoke_ok": 0, "trained": 0, "scored": 0,
           "duplicate": 0}
    keys = list(out)[:6]
    for e in entries:
        if e.status is Status.PLANNED:
            continue
        if e.status is Status.DUPLICATE:
            out["duplicate"] += 1
            reached = 4
        elif e.status is Status.SCORED:
            reached = 6
        else:
            reached = order.index(e.stage) if e.stage in order else 0
        for key in keys[:reached]:
            out[key] += 1
    return out
