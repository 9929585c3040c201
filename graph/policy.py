"""Search policies: what the next candidate is (draft, debug or improve, and from which parents).

The scheduler (graph/scheduler.py) asks the run's policy for a `Plan` whenever a
slot frees, with the journal as it stands at that planning step (every candidate
with its descriptor, graph/descriptor.py) and a random generator seeded by (run
seed, candidate index). A policy is any object with the `SearchPolicy` method
`plan(journal, rng) -> Plan`, made from the `[policy]` settings by a factory
registered in `POLICIES` under the name that `[policy] kind` selects:

    greedy  graph/policy_greedy.py: AIDE-style draft / debug / improve the best (the default)
    random  graph/policy_random.py: pure random drafting, no feedback (the nn-gpt-style arm)

Rules every policy keeps, so that runs are reproducible and resumable:
- the plan is a pure function of the journal, the settings and `rng` (no clock, no I/O);
- any state (islands, an archive) is derived from the journal on every call, or stored in the run store:
  on `--resume` the scheduler re-asks the policy with the journal as it stood at a candidate's planning step.

Adding a policy is one new file (a class whose `__init__` takes `PolicySettings`) and one line in `POLICIES`.
"""

from __future__ import annotations

import importlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol, cast

from pydantic import BaseModel, ConfigDict, Field, field_validator

from nncaption.graph.journal import Entry, Origin

# name -> "module:factory" (imported when a run selects it; the factory takes PolicySettings)
POLICIES: dict[str, str] = {
    "greedy": "nncaption.graph.policy_greedy:GreedyPolicy",
    "random": "nncaption.graph.policy_random:RandomDraftPolicy",
}


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
    """Knobs of the search policy (the `[policy]` table of the run config); each policy reads the ones it uses."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str = Field(default="greedy", description=f"the search policy: one of {', '.join(POLICIES)}")
    num_drafts: int = Field(default=2, ge=0, description="drafts before the policy may debug or improve")
    p_debug: float = Field(default=0.3, ge=0.0, le=1.0, description="probability of debugging a failed candidate")
    p_improve: float = Field(default=0.6, ge=0.0, le=1.0, description="probability of improving a good one otherwise")
    max_debug_depth: int = Field(default=2, ge=0, description="longest chain of fix-children of one failure")
    improve_top_k: int = Field(default=3, ge=1, description="improve one of the best K")

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        if value not in POLICIES:
            raise ValueError(f"unknown search policy {value!r} (known kinds: {', '.join(sorted(POLICIES))})")
        return value


@dataclass(frozen=True)
class Plan:
    """What the next candidate is.

    `parent`: the candidate debugged or improved (its code is shown and its decoder family kept); `others`:
    further parents (crossover); `inspirations`: candidates shown to the designer as examples; `decoder`: a
    decoder family the policy wants (None: the parent's, or a seeded draw for a draft); `feedback`: whether the
    designer sees the journal's feedback (best candidates, recent failures).
    """

    mode: Mode
    parent: str | None = None
    others: tuple[str, ...] = ()
    inspirations: tuple[str, ...] = ()
    decoder: str | None = None
    feedback: bool = True

    @property
    def parents(self) -> tuple[str, ...]:
        return ((self.parent,) if self.parent else ()) + self.others


class SearchPolicy(Protocol):
    """Plans the next candidate from the journal (in-flight planned candidates included) and a seeded `rng`."""

    def plan(self, journal: Sequence[Entry], rng: random.Random) -> Plan: ...


PolicyFactory = Callable[[PolicySettings], SearchPolicy]


def make_policy(settings: PolicySettings) -> SearchPolicy:
    """The policy `settings.kind` names (validated against `POLICIES` when the settings were made)."""
    module, _, attr = POLICIES[settings.kind].partition(":")
    factory = cast(PolicyFactory, getattr(importlib.import_module(module), attr))
    return factory(settings)


def choose(entries: Sequence[Entry], settings: PolicySettings, rng: random.Random) -> Plan:
    """The greedy policy's plan (the one-function form older callers and tests use)."""
    from nncaption.graph.policy_greedy import GreedyPolicy

    return GreedyPolicy(settings).plan(entries, rng)
