"""The LLM implementations of the agent protocols: `LLMDesigner`, `LLMReviewer`, `LLMFixer`.

Thin wrappers that bind an `LLMClient` (and, for the designer, the dataset facts)
to the `design()`, `review()` and `fix()` functions, so the graph can hold them
behind the `Designer` / `Reviewer` / `Fixer` protocols beside the baseline.
"""

from __future__ import annotations

from typing import Literal

from nncaption.agents.client import LLMClient
from nncaption.agents.designer import Design, design
from nncaption.agents.fixer import ErrorInput, Fix, fix
from nncaption.agents.hparams import Prm
from nncaption.agents.protocols import DesignRequest
from nncaption.agents.reviewer import Review, review
from nncaption.prompts.library import DatasetFacts

__all__ = ["LLMDesigner", "LLMFixer", "LLMReviewer"]


def _model(client: LLMClient, role: str) -> str:
    return client.settings.for_role(role).model


class LLMDesigner:
    """Designs candidates by asking the designer endpoint (`design()`)."""

    kind: Literal["llm"] = "llm"

    def __init__(self, client: LLMClient, facts: DatasetFacts, *, from_lemur: bool = False) -> None:
        self.client = client
        self.facts = facts
        self.from_lemur = from_lemur
        self.name = f"llm:{_model(client, 'designer')}"

    async def design(self, req: DesignRequest) -> Design:
        return await design(self.client, self.facts, mode=req.mode, k=req.k, seed=req.seed,
                            decoder=req.decoder,  # type: ignore[arg-type]
                            parent=req.parent, feedback=req.feedback, from_lemur=self.from_lemur)


class LLMReviewer:
    """Static check, then (with `use_llm`, the default) the LLM's structured compliance review."""

    kind: Literal["llm"] = "llm"

    def __init__(self, client: LLMClient, facts: DatasetFacts | None = None, *, use_llm: bool = True) -> None:
        self.client = client
        self.facts = facts  # accepted for a uniform constructor; the review prompt does not need them
        self.use_llm = use_llm
        self.name = f"llm:{_model(client, 'reviewer')}"

    async def review(self, code: str, prm: Prm) -> Review:
        return await review(code, self.client, use_llm=self.use_llm, prm=prm)


class LLMFixer:
    """Corrects candidates by asking the fixer endpoint (`fix()`); the prompt shows code, prm and the error."""

    kind: Literal["llm"] = "llm"

    def __init__(self, client: LLMClient, facts: DatasetFacts | None = None) -> None:
        self.client = client
        self.facts = facts  # accepted for a uniform constructor; the fix prompt does not need them
        self.name = f"llm:{_model(client, 'fixer')}"

    async def fix(self, code: str, prm: Prm, error: ErrorInput) -> Fix:
        return await fix(self.client, code, error, prm=prm)
