"""A candidate's state: small, bounded and serialisable (what its LangGraph thread checkpoints after every node).

Every candidate runs as its own LangGraph thread (`thread_id` = its id, e.g.
"c0003") through the per-candidate graph (graph/build.py). `Task` is that
thread's state: ids, counters, hyperparameters, a short summary and the last
failure; the code is referenced by its blob id (`code_ref`), never inlined. The
run itself has no shared graph state: counters, the leaderboard and why the run
stopped are derived from the run store (the journal), see graph/scheduler.py.
"""

from __future__ import annotations

from typing import Any, TypedDict

LEADERBOARD_SIZE = 10


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
    parents: list[str]  # the plan's parents (the first is `parent`; more for crossover), graph/policy.py
    inspirations: list[str]  # candidates the plan shows the designer as examples
    feedback: bool  # whether the designer sees the journal's feedback (False: independent drafts)
    decoder: str | None
    seed: int
    debug_depth: int
    attempt: int
    fix_rounds: int
    code_ref: str | None
    prm: dict[str, Any]
    summary: str
    failure: Failure | None
    unchanged: bool  # the fixer's last change was empty (same normalised code and hyperparameters): tell it
    status: str | None  # final status once decided (scored | failed | duplicate)
    duplicate_of: str | None
    bleu4: float | None
    job_id: str | None
