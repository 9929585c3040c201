"""The designer agent: asks an LLM for a new candidate file (`compose`) or a change to a parent (`improve`).

The prompt (rendered by nncaption.prompts.library) carries the Net API contract,
the dataset facts, K backbone snippets (5 or 10, sampled by seed), a decoder
family hint and the feedback section. When the endpoint says the prompt does not
fit its context, the designer asks again with fewer snippets (10 -> 5 -> 2 -> 0);
a reply cut off at its token budget is asked again once (`agents/truncation.py`).
In improve mode a share of the requests (`diff_edits` of the designer's endpoint
settings) asks for SEARCH/REPLACE edits to the parent instead of the whole file
(`agents/diffask.py`); `Design.edit` and `Design.notes` show how they applied.
It returns the extracted code, the hyperparameters the reply asked for (`prm`,
validated; see `nncaption.agents.hparams`) and a one-line summary, plus every
exchange made; a reply without usable code or with invalid hyperparameters raises
`ExtractionError` carrying its exchange. The request's seed is sent as OpenAI's
`seed` sampling parameter, never inside the prompt.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from nncaption.agents.client import LLMClient, run_sync
from nncaption.agents.diffask import EditReport, ask_for_edit
from nncaption.agents.diffedit import wants_diff
from nncaption.agents.errors import ContextLengthExceeded
from nncaption.agents.extract import extract_summary, module_docstring_line
from nncaption.agents.feedback import Feedback
from nncaption.agents.hparams import Prm, PrmError, validate_prm
from nncaption.agents.records import LLMExchange
from nncaption.agents.truncation import ask_for_candidate
from nncaption.prompts.library import DatasetFacts, ParentCandidate, Snippet, designer_messages, sample_snippets

log = logging.getLogger(__name__)

Mode = Literal["compose", "improve"]
Decoder = Literal["lstm", "gru", "transformer"]
SNIPPET_FALLBACKS: tuple[int, ...] = (10, 5, 2, 0)

__all__ = ["Design", "DatasetFacts", "ParentCandidate", "design", "design_sync", "inherited_prm", "snippet_schedule"]


@dataclass(kw_only=True)
class Design:
    """A designed candidate: the file, the hyperparameters to train it with, and how it was obtained.

    `prm` holds what the designer asked for (validated; empty means the training
    defaults); `producer` names what made it: the model name the endpoint answered
    with for an LLM design, `nncaption-offline-composer` for the random-search
    baseline; `trace` is the baseline's labelled trace (empty for LLM designs, whose
    reasoning stays in `exchanges`).
    """

    code: str
    prm: Prm = field(default_factory=dict)
    summary: str
    mode: Mode
    decoder: str | None
    snippets: list[str]  # names of the snippets in the prompt that produced the code
    exchanges: list[LLMExchange] = field(default_factory=list)
    producer: str = ""
    trace: str = ""
    notes: list[str] = field(default_factory=list)  # what was changed in the reply (unknown hyperparameters dropped)
    # SEARCH/REPLACE edits: EditReport.to_dict() (asked, used, fallback, reason, blocks); None: whole file asked
    edit: dict[str, Any] | None = None

    @property
    def exchange(self) -> LLMExchange:
        """The exchange whose reply holds the code (LLM designs only)."""
        if not self.exchanges:
            raise AttributeError(f"design by {self.producer or 'an in-process agent'} made no LLM exchange")
        return self.exchanges[-1]


def snippet_schedule(k: int) -> list[int]:
    """Snippet counts to try: K, then the smaller fallbacks (10 -> 5 -> 2 -> 0)."""
    return [k] + [n for n in SNIPPET_FALLBACKS if n < k]


def summary_of(reply: str, code: str, reasoning: str | None = None) -> str:
    """The reply's SUMMARY line, else the code's docstring line, else a placeholder."""
    return extract_summary(reply, reasoning) or module_docstring_line(code) or "(no summary given)"


def inherited_prm(hparams: Mapping[str, Any], code: str) -> Prm:
    """A parent's hyperparameters that are still valid for `code` (a reply that names none keeps them)."""
    keep: Prm = {}
    for key, value in hparams.items():
        try:
            keep.update(validate_prm({key: value}, code))
        except PrmError as e:
            log.info("not inheriting the parent's %s: %s", key, e.message)
    return keep


async def design(
    client: LLMClient,
    facts: DatasetFacts,
    *,
    mode: Mode = "compose",
    k: int = 5,
    seed: int = 0,
    decoder: Decoder | None = None,
    parent: ParentCandidate | None = None,
    feedback: Feedback | None = None,
    snippets: Sequence[Snippet] | None = None,
    from_lemur: bool = False,
) -> Design:
    """Ask the designer endpoint for a candidate.

    `snippets` overrides the seeded sample of `k` snippets. Raises the client's
    `LLMError`s (a `ContextLengthExceeded` only after the 0-snippet prompt also
    failed) and `ExtractionError` (with `.exchange`) when the reply holds no code or
    asks for invalid hyperparameters (category bad-hyperparameters, `.candidate` = the code).
    A reply that names no hyperparameters keeps the parent's that are still valid (improve
    mode), else gets an empty prm (the training defaults).
    """
    feedback = feedback or Feedback()
    offered = list(snippets) if snippets is not None else (
        sample_snippets(k, seed, from_lemur=from_lemur) if k > 0 else [])
    exchanges: list[LLMExchange] = []
    schedule = snippet_schedule(len(offered))
    edits = (mode == "improve" and parent is not None and parent.code.strip() != "" and
             wants_diff(client.settings.for_role("designer").diff_edits, "designer", seed, parent.code))
    for i, n in enumerate(schedule):
        shown = offered[:n]

        def messages(edit_format: Literal["full", "diff"] = "full", note: str | None = None,
                     shown: Sequence[Snippet] = shown) -> list[dict[str, str]]:
            return designer_messages(
                facts, shown, decoder=decoder, mode=mode, parent=parent,
                top=[c.to_prompt() for c in feedback.top], failures=[f.to_prompt() for f in feedback.failures],
                edit_format=edit_format, edit_note=note,
            )

        report: EditReport | None = None
        try:
            if edits and parent is not None:
                ex, cand, report = await ask_for_edit(client, "designer", parent.code, messages("diff"),
                                                      lambda note: messages("full", note), exchanges, seed=seed)
            else:
                ex, cand = await ask_for_candidate(client, "designer", messages(), exchanges, seed=seed)
        except ContextLengthExceeded as e:
            if e.exchange is not None:
                exchanges.append(e.exchange)
            if i + 1 == len(schedule):
                raise
            log.warning("designer prompt with %d snippets is too long for %s; retrying with %d",
                        n, e.endpoint, schedule[i + 1])
            continue
        prm = cand.prm if cand.prm is not None else inherited_prm(parent.hparams if parent else {}, cand.code)
        return Design(code=cand.code, prm=prm, summary=cand.summary or summary_of(ex.reply, cand.code, ex.reasoning),
                      mode=mode, decoder=decoder, snippets=[s.name for s in shown], exchanges=exchanges,
                      producer=ex.model_returned or ex.model,
                      notes=list(cand.notes) + (report.notes() if report else []),
                      edit=report.to_dict() if report else None)
    raise AssertionError("unreachable: the snippet schedule is never empty")


def design_sync(client: LLMClient, facts: DatasetFacts, **kwargs: object) -> Design:
    """`design` for synchronous callers (not inside a running event loop)."""
    return run_sync(design(client, facts, **kwargs), client)  # type: ignore[arg-type]
