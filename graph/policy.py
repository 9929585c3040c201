"""The search policy: draft a new candidate, debug a failed one, or improve a good one.

One small pure function (`choose`), in the style of AIDE's `search_policy`: the
scheduler (graph/scheduler.py) calls it whenever a slot frees, with the journal as
it stands at that planning step and a random generator seeded by (run seed,
candidate index), so the same journal and seed make the same choice. Rules, in order:

1. fewer than `num_drafts` drafts so far -> draft;
2. with probability `p_debug`, a failed candidate that can be repaired (a
   candidate failure, not an endpoint failure; not yet debugged; debug depth
   below `max_debug_depth`) -> debug it (the fixer makes a child, origin `fix`);
3. with probability `p_improve` (of what remains), and some candidate scored ->
   improve one of the `improve_top_k` best (origin `improve`);
4. otherwise draft (origin `compose`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field

from nncaption.graph.journal import Entry, Origin, ranked


class Mode(str, Enum):
    DRAFT = "draft"
    DEBUG = "debug"
    IMPROVE = "improve"

    def __str__(self) -> str:
        return self.value

    @property
    def origin(self) -> Origin:
        return {Mode.DRAFT: Origin.COMPOSE, Mode.DEBUG: Origin.FIX, Mode.IMPROVE: Origin.IMPROVE}[self]


class PolicySettings(BaseModel):
    """Knobs of the search policy (the `[policy]` table of the run config)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_drafts: int = Field(default=2, ge=0, description="drafts before the policy may debug or improve")
    p_debug: float = Field(default=0.3, ge=0.0, le=1.0, description="probability of debugging a failed candidate")
    p_improve: float = Field(default=0.6, ge=0.0, le=1.0, description="probability of improving a good one otherwise")
    max_debug_depth: int = Field(default=2, ge=0, description="longest chain of fix-children of one failure")
    improve_top_k: int = Field(default=3, ge=1, description="improve one of the best K")


@dataclass(frozen=True)
class Plan:
    """What the next candidate is: its mode and, for debug/improve, its parent's id."""

    mode: Mode
    parent: str | None = None


def choose(entries: Sequence[Entry], settings: PolicySettings, rng: random.Random) -> Plan:
    """The next plan, from the journal `entries` (in-flight planned ones included) and a seeded `rng`."""
    drafts = sum(1 for e in entries if e.origin is Origin.COMPOSE)
    # Draw both numbers every time, so that one choice does not shift the random stream of the next rule.
    u_debug, u_improve, u_pick = rng.random(), rng.random(), rng.random()
    if drafts < settings.num_drafts:
        return Plan(Mode.DRAFT)
    debugged = {e.parent for e in entries if e.origin is Origin.FIX}
    buggy = [e for e in entries if e.debuggable and e.cid not in debugged
             and e.debug_depth < settings.max_debug_depth]
    if buggy and u_debug < settings.p_debug:
        return Plan(Mode.DEBUG, buggy[int(u_pick * len(buggy))].cid)
    good = ranked(entries)[: settings.improve_top_k]
    if good and u_improve < settings.p_improve:
        return Plan(Mode.IMPROVE, good[int(u_pick * len(good))].cid)
    return Plan(Mode.DRAFT)
