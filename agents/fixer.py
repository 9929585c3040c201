"""The fixer agent: candidate code plus what went wrong -> corrected code.

The error may be a validator `Verdict` (static or smoke), a reviewer `Review`, a
sandbox traceback (text), or an `ExtractionError` from a reply without usable
code (or with invalid hyperparameters); it is turned into the fixer prompt's error
section with the category and the category's hint, so the model knows what to
change. The prompt also shows the hyperparameters the candidate trains with. A reply
cut off at its token budget is asked again once (`agents/truncation.py`). A share of
the requests (`diff_edits` of the fixer's endpoint settings) asks for SEARCH/REPLACE
edits instead of the whole file (`agents/diffask.py`; `Fix.edit` shows how they applied).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nncaption.agents.client import LLMClient, run_sync
from nncaption.agents.designer import inherited_prm, summary_of
from nncaption.agents.diffask import EditReport, ask_for_edit
from nncaption.agents.diffedit import wants_diff
from nncaption.agents.extract import ExtractionError
from nncaption.agents.hparams import Prm
from nncaption.agents.records import LLMExchange
from nncaption.agents.reviewer import CATEGORY_VALUES, Review
from nncaption.agents.truncation import ask_for_candidate
from nncaption.netapi.categories import Category, Verdict
from nncaption.netapi.safetext import safe_text
from nncaption.prompts.library import fixer_messages

ERROR_CHARS = 3000
ErrorInput = Verdict | Review | ExtractionError | str


@dataclass(kw_only=True)
class Fix:
    """A corrected candidate, the hyperparameters to train it with, and how it was obtained.

    `prm` is what the fixer's reply asked for, else the prm it was given; `producer`
    as in `Design` (the model name the endpoint answered with, or the baseline's name).
    """

    code: str
    prm: Prm = field(default_factory=dict)
    summary: str
    category: str | None  # the category of the error that was fixed
    exchanges: list[LLMExchange] = field(default_factory=list)
    producer: str = ""
    trace: str = ""
    notes: list[str] = field(default_factory=list)  # what was changed in the reply (unknown hyperparameters dropped)
    # SEARCH/REPLACE edits: EditReport.to_dict() (asked, used, fallback, reason, blocks); None: whole file asked
    edit: dict[str, Any] | None = None

    @property
    def exchange(self) -> LLMExchange:
        if not self.exchanges:
            raise AttributeError(f"fix by {self.producer or 'an in-process agent'} made no LLM exchange")
        return self.exchanges[-1]


def describe_error(error: ErrorInput) -> tuple[str, str | None]:
    """(error text for the prompt, category) from any supported error form.

    Everything taken from the candidate's run (verdict messages, tracebacks) passes
    through `safe_text`: control characters escaped, length bounded (the end kept).
    """
    if isinstance(error, Review):
        if not error.ok and error.category is not None and error.category not in CATEGORY_VALUES:
            # a reviewer category outside the validator's (bad-hyperparameters)
            where = f" at line {error.line}" if error.line else ""
            text = safe_text(f"{error.source} review rejected the candidate{where}: {error.message}", ERROR_CHARS)
            return text, error.category
        error = error.to_verdict()
    if isinstance(error, Verdict):
        where = f" at line {error.line}" if error.line else ""
        text = safe_text(f"{error.stage} check rejected the file{where}: {error.message}", ERROR_CHARS)
        if isinstance(error.category, Category):
            text += f"\nWhat to do: {error.category.hint}"
        return text, error.category.value if error.category else None
    if isinstance(error, ExtractionError):
        text = safe_text(f"the previous reply was not usable ({error.category}): {error.message}", ERROR_CHARS)
        return f"{text}\n{error.hint}", error.category
    return safe_text(str(error), ERROR_CHARS), None


async def fix(client: LLMClient, code: str, error: ErrorInput, *, prm: Mapping[str, Any] | None = None,
              category: str | None = None) -> Fix:
    """Ask the fixer endpoint to correct `code` (trained with `prm`); raises LLMError or ExtractionError.

    The reply's hyperparameters replace `prm` when it names some; otherwise the
    given ones that are still valid for the corrected file are kept.
    """
    text, found = describe_error(error)
    category = category or found
    given = dict(prm or {})
    exchanges: list[LLMExchange] = []
    report: EditReport | None = None
    if code.strip() and wants_diff(client.settings.for_role("fixer").diff_edits, "fixer", code, text):
        ex, cand, report = await ask_for_edit(
            client, "fixer", code, fixer_messages(code, text, category=category, prm=given, edit_format="diff"),
            lambda note: fixer_messages(code, text, category=category, prm=given, edit_note=note), exchanges)
    else:
        ex, cand = await ask_for_candidate(client, "fixer", fixer_messages(code, text, category=category, prm=given),
                                           exchanges)
    new_prm = cand.prm if cand.prm is not None else inherited_prm(given, cand.code)
    return Fix(code=cand.code, prm=new_prm, summary=cand.summary or summary_of(ex.reply, cand.code, ex.reasoning),
               category=category, exchanges=exchanges, producer=ex.model_returned or ex.model,
               notes=list(cand.notes) + (report.notes() if report else []),
               edit=report.to_dict() if report else None)


def fix_sync(client: LLMClient, code: str, error: ErrorInput, *, prm: Mapping[str, Any] | None = None,
             category: str | None = None) -> Fix:
    """`fix` for synchronous callers."""
    return run_sync(fix(client, code, error, prm=prm, category=category), client)
