"""The graph's state: small, bounded and serialisable (what the checkpoint database stores every superstep).

`RunState` is shared by the outer loop: counters, the candidates in flight (at most
`concurrency`), the top of the leaderboard and why the run stopped. Its size does
not grow with the number of candidates, so the checkpoint database grows linearly
(one bounded row per superstep). The journal itself is in the run store.

`Task` is one candidate's private state, carried from node to node by `Send`:
ids, counters, hyperparameters, a short summary and the last failure; the code
is referenced by its blob id (`code_ref`), never inlined.
"""

from __future__ import annotations

from typing import Annotated, Any, TypedDict

LEADERBOARD_SIZE = 10
COUNT_KEYS: tuple[str, ...] = ("finished", "scored", "failed", "duplicate", "repaired", "tokens", "llm_calls")


def merge_inflight(old: dict[str, str] | None, new: dict[str, str | None] | None) -> dict[str, str]:
    """cid -> mode of the candidates in flight; a None value removes a candidate."""
    out = dict(old or {})
    for cid, value in (new or {}).items():
        if value is None:
            out.pop(cid, None)
        else:
            out[cid] = value
    return out


def add_counts(old: dict[str, int] | None, new: dict[str, int] | None) -> dict[str, int]:
    """Counters added key by key."""
    out = dict(old or {})
    for k, v in (new or {}).items():
        out[k] = out.get(k, 0) + int(v)
    return out


def merge_leaderboard(old: list[dict[str, Any]] | None, new: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The best LEADERBOARD_SIZE scored candidates: BLEU-4 descending, earlier candidate first on ties."""
    by_cid = {e["cid"]: e for e in (old or [])}
    for e in new or []:
        by_cid[e["cid"]] = e
    ranked = sorted(by_cid.values(), key=lambda e: (-float(e["bleu4"]), int(e["index"])))
    return ranked[:LEADERBOARD_SIZE]


class RunState(TypedDict, total=False):
    next_index: int
    inflight: Annotated[dict[str, str], merge_inflight]
    counts: Annotated[dict[str, int], add_counts]
    leaderboard: Annotated[list[dict[str, Any]], merge_leaderboard]
    stop_reason: str | None


class Failure(TypedDict, total=False):
    stage: str
    category: str | None
    message: str
    line: int | None
    tail: str


class Task(TypedDict, total=False):
    cid: str
    index: int
    mode: str  # draft | improve | debug
    origin: str  # compose | improve | fix
    parent: str | None
    decoder: str | None
    seed: int
    debug_depth: int
    attempt: int
    fix_rounds: int
    code_ref: str | None
    prm: dict[str, Any]
    summary: str
    failure: Failure | None
    status: str | None  # final status once decided (scored | failed | duplicate)
    duplicate_of: str | None
    bleu4: float | None
    job_id: str | None


def initial_state() -> RunState:
    return {"next_index": 0, "inflight": {}, "counts": {k: 0 for k in COUNT_KEYS}, "leaderboard": [],
            "stop_reason": None}
