"""The agent roles as protocols, so the graph can run LLM agents or the random-search baseline alike.

A `Designer` turns a `DesignRequest` into a `Design` (code plus the hyperparameters
`prm` it wants to train with); a `Reviewer` judges code and prm before the sandbox;
a `Fixer` turns code, prm and what went wrong into a `Fix`. Two implementations
of each exist:

- `nncaption.agents.llm_agents`: `LLMDesigner`, `LLMReviewer`, `LLMFixer` (an `LLMClient`
  and the dataset facts; `kind == "llm"`);
- `nncaption.agents.baseline`: `BaselineDesigner`, `BaselineReviewer`, `BaselineFixer`
  (the seeded random composer called in-process; `kind == "baseline"`; NOT an LLM; its
  fixer is an oracle that undoes its own planted defect, so no fix rate may be reported for it).

Failures are raised as the agents' typed errors (`LLMError`, `ExtractionError`); the
caller turns them into values for its state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from nncaption.agents.designer import Design
from nncaption.agents.feedback import Feedback
from nncaption.agents.fixer import ErrorInput, Fix
from nncaption.agents.hparams import Prm
from nncaption.agents.reviewer import Review
from nncaption.prompts.library import ParentCandidate

__all__ = [
    "AgentKind",
    "Design",
    "DesignRequest",
    "Designer",
    "ErrorInput",
    "Fix",
    "Fixer",
    "Mode",
    "Prm",
    "Review",
    "Reviewer",
]

Mode = Literal["compose", "improve"]
AgentKind = Literal["llm", "baseline"]


@dataclass(frozen=True)
class DesignRequest:
    """What the graph asks a designer for.

    `k` backbone snippets are sampled by `seed` (the same seed gives the same
    snippets and, for the baseline, the same candidate); `decoder` is a family hint
    ("lstm", "gru", "transformer") or None; `parent` (with its code, scores and
    hyperparameters in `parent.hparams`) is required in `improve` mode; `feedback`
    holds the best earlier candidates and recent failures.
    """

    mode: Mode = "compose"
    k: int = 5
    seed: int = 0
    decoder: str | None = None
    parent: ParentCandidate | None = None
    feedback: Feedback | None = None


@runtime_checkable
class Designer(Protocol):
    """Produces a candidate file plus the hyperparameters to train it with."""

    name: str
    kind: AgentKind

    async def design(self, req: DesignRequest) -> Design: ...


@runtime_checkable
class Reviewer(Protocol):
    """Judges a candidate (code and prm) before it costs sandbox time."""

    name: str
    kind: AgentKind

    async def review(self, code: str, prm: Prm) -> Review: ...


@runtime_checkable
class Fixer(Protocol):
    """Corrects a candidate given what went wrong (a verdict, a review, a traceback text, an extraction error)."""

    name: str
    kind: AgentKind

    async def fix(self, code: str, prm: Prm, error: ErrorInput) -> Fix: ...
