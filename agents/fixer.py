"""The fixer agent: candidate code plus what went wrong -> corrected code.

The error may be a validator `Verdict` (static or smoke), a reviewer `Review`, a
sandbox traceback (text), or an `ExtractionError` from a reply without usable
code; it is turned into the fixer prompt's error section with the category and
the category's hint, so the model knows what to change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nncaption.agents.client import LLMClient, run_sync
from nncaption.agents.designer import summary_of
from nncaption.agents.extract import ExtractionError, code_from_exchange
from nncaption.agents.records import LLMExchange
from nncaption.agents.reviewer import Review
from nncaption.netapi.categories import Category, Verdict
from nncaption.prompts.library import fixer_messages

ErrorInput = Verdict | Review | ExtractionError | str


@dataclass
class Fix:
    """A corrected candidate and the exchange that produced it."""

    code: str
    summary: str
    category: str | None  # the category of the error that was fixed
    exchanges: list[LLMExchange] = field(default_factory=list)

    @property
    def exchange(self) -> LLMExchange:
        return self.exchanges[-1]


def describe_error(error: ErrorInput) -> tuple[str, str | None]:
    """(error text for the prompt, category) from any supported error form."""
    if isinstance(error, Review):
        error = error.to_verdict()
    if isinstance(error, Verdict):
        where = f" at line {error.line}" if error.line else ""
        text = f"{error.stage} check rejected the file{where}: {error.message}"
        if isinstance(error.category, Category):
            text += f"\nWhat to do: {error.category.hint}"
        return text, error.category.value if error.category else None
    if isinstance(error, ExtractionError):
        return f"the previous reply had no usable code ({error.category}): {error.message}\n{error.hint}", None
    return str(error), None


async def fix(client: LLMClient, code: str, error: ErrorInput, *, category: str | None = None) -> Fix:
    """Ask the fixer endpoint to correct `code`; raises LLMError or ExtractionError (with `.exchange`)."""
    text, found = describe_error(error)
    category = category or found
    ex = await client.chat("fixer", fixer_messages(code, text, category=category))
    try:
        fixed = code_from_exchange(ex)
    except ExtractionError as e:
        e.message = f"fixer reply: {e.message}"
        raise
    return Fix(code=fixed, summary=summary_of(ex.reply, fixed, ex.reasoning), category=category, exchanges=[ex])


def fix_sync(client: LLMClient, code: str, error: ErrorInput, *, category: str | None = None) -> Fix:
    """`fix` for synchronous callers."""
    return run_sync(fix(client, code, error, category=category), client)
