"""Find the candidate's Python code in an LLM reply.

Replies come in many shapes: several fenced blocks (```python, ```py, unlabelled,
~~~), prose before and after, a final fence left open because max_tokens cut the
reply, the code only inside a `<think>` block with an empty answer, or a bare
reply that is just code. `extract_code` picks the block that defines the Net API
(`class Net` and `supported_hyperparameters`), judging validity with `ast.parse`.
When nothing usable is there it raises `ExtractionError` with a category the
fixer can act on: `empty-reply`, `no-code`, `truncated`,
`multiple-candidates-none-valid`.

A single complete block with a syntax error is returned as it is: the static
validator then reports `syntax` with the line, which tells the fixer more than an
extraction error would.

Replies in JSON mode (an object, bare or in a ```json fence, with the file in a
`code` field and the hyperparameters in `prm`) are understood too.
`extract_candidate` returns the code together with the hyperparameters the reply
asked for (see `nncaption.agents.hparams`) and its summary.
"""

from __future__ import annotations

import ast
import asyncio
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nncaption.agents.fences import NET_TEXT, PYTHON_LABELS, CodeBlock, bare_code, fenced_blocks, judge, parses
from nncaption.agents.hparams import HINT as PRM_HINT
from nncaption.agents.hparams import (
    PRM_CATEGORY,
    Prm,
    PrmError,
    prm_from_json_blocks,
    prm_from_object,
    prm_literal,
    validate_llm_prm,
)
from nncaption.agents.jsonparse import parse_json_object
from nncaption.agents.reasoning import has_unclosed_think, split_reasoning
from nncaption.netapi import pyast
from nncaption.netapi.errors import NNCaptionError
from nncaption.netapi.safetext import safe_text

if TYPE_CHECKING:
    from nncaption.agents.records import LLMExchange

EXTRACTION_CATEGORIES: tuple[str, ...] = ("empty-reply", "no-code", "truncated", "multiple-candidates-none-valid",
                                          PRM_CATEGORY)
CODE_FIELDS: tuple[str, ...] = ("code", "python", "file", "source")
PARSE_TIMEOUT_S = 60.0

_HINTS: dict[str, str] = {
    "empty-reply": "the model returned nothing: check max_tokens and the endpoint, then ask again.",
    "no-code": "answer with the complete candidate file in one ```python fenced block.",
    "truncated": "the reply was cut off (max_tokens reached): raise max_tokens or ask for a shorter model "
                 "and less reasoning.",
    "multiple-candidates-none-valid": "the reply held several code blocks and none parses as Python: "
                                      "answer with ONE complete ```python block that defines the whole file.",
    PRM_CATEGORY: PRM_HINT,
}

_SUMMARY = re.compile(r"^\W*summary\W*\s*:\s*(?P<text>.+?)\s*$", re.IGNORECASE | re.MULTILINE)


class ExtractionError(NNCaptionError):
    """No usable code in a reply. `category` is one of EXTRACTION_CATEGORIES.

    `candidate` holds the most promising (broken) code when there was some, so a
    fixer can still work from it; `exchange` is set by the agent that made the call.
    """

    category = "no-code"

    def __init__(self, category: str, message: str, *, candidate: str | None = None) -> None:
        super().__init__(message, _HINTS.get(category, ""), category=category)
        self.candidate = candidate
        self.exchange: LLMExchange | None = None


class _NoCandidates(Exception):
    """The section holds no code at all (as opposed to broken code)."""


def _from_section(section: str) -> str:
    """Best code in one section of a reply; raises ExtractionError or _NoCandidates."""
    blocks = [b for b in fenced_blocks(section) if b.lang in PYTHON_LABELS or NET_TEXT.search(b.code)]
    blocks = [b for b in blocks if b.code.strip()]
    if not blocks:
        bare = bare_code(section)
        if bare is None:
            raise _NoCandidates
        return bare

    judged = [judge(b) for b in blocks]
    # Best by (complete API, defines Net, parses); later blocks win ties (revised versions come last).
    best = max(reversed(judged), key=lambda j: j.rank)
    if best.parses and best.has_net:
        if best.has_hparams:
            return best.block.code
        combined = "\n\n".join(j.block.code for j in judged if j.parses)
        if judge(CodeBlock("python", combined, True, 0)).rank[0]:
            return combined  # the file was split over several blocks
        return best.block.code

    unclosed = [j for j in judged if not j.block.closed]
    if unclosed and not unclosed[-1].parses:
        raise ExtractionError("truncated", "the reply ends inside an unfinished code block (cut off by max_tokens?)",
                              candidate=unclosed[-1].block.code)
    parsing = [j for j in judged if j.parses]
    if not parsing:
        if len(judged) == 1:
            return judged[0].block.code  # one complete block with a syntax error: the validator reports the line
        most_likely = max(judged, key=lambda j: (j.has_net, len(j.block.code)))
        raise ExtractionError(
            "multiple-candidates-none-valid",
            f"the reply holds {len(judged)} code blocks and none parses as Python",
            candidate=most_likely.block.code,
        )
    # Code that parses but does not define Net: let the validator say what is missing.
    combined = "\n\n".join(j.block.code for j in parsing)
    return combined if parses(combined) else best.block.code


def extract_code(text: str, reasoning: str | None = None, *, truncated: bool = False) -> str:
    """The candidate file in a reply.

    `text` is the reply content, possibly with `<think>` blocks; `reasoning` the
    server's separate reasoning field when it split one out. The answer outside the
    reasoning is searched first; the reasoning only when the answer holds no code and
    the reply was not cut off. `truncated` (the server's finish_reason was "length")
    turns "no code" into category `truncated`, and code is never taken from the
    reasoning of such a reply (the model may have rejected that draft while thinking).
    """
    try:
        return _extract(text or "", reasoning, truncated=truncated)
    except ExtractionError as e:
        if truncated and e.category in ("no-code", "empty-reply"):
            raise ExtractionError("truncated", f"{e.message}; the server stopped at max_tokens",
                                  candidate=e.candidate) from None
        raise


def code_from_exchange(exchange: LLMExchange) -> str:
    """`extract_code` on an exchange's reply and reasoning; errors carry the exchange."""
    try:
        return extract_code(exchange.reply, exchange.reasoning or None, truncated=exchange.truncated)
    except ExtractionError as e:
        e.exchange = exchange
        raise


def json_reply(section: str) -> dict[str, Any] | None:
    """A JSON-mode reply: an object (bare or in a ```json fence) with the file in a `code` field; else None."""
    stripped = section.strip()
    if not stripped or "{" not in stripped:
        return None
    obj = parse_json_object(stripped)
    if obj is None:
        return None
    for name in CODE_FIELDS:
        value = obj.get(name)
        if isinstance(value, str) and value.strip():
            return obj
    return None


def _json_code(obj: dict[str, Any]) -> str:
    code = next(str(obj[n]) for n in CODE_FIELDS if isinstance(obj.get(n), str) and str(obj[n]).strip())
    fenced = fenced_blocks(code)
    if fenced and not parses(code):  # a fence inside the JSON string
        code = fenced[-1].code
    return code.strip("\n") + "\n"


def _extract(raw: str, reasoning: str | None, *, truncated: bool = False) -> str:
    if not raw.strip() and not (reasoning or "").strip():
        raise ExtractionError("empty-reply", "the reply is empty")
    answer, thinking = split_reasoning(raw, reasoning)
    obj = json_reply(answer)
    if obj is not None:
        return _json_code(obj)
    try:
        code = _from_section(answer)
        if truncated and _ends_in_open_fence(answer):
            raise ExtractionError("truncated", "the reply was cut off (max_tokens) inside its code block",
                                  candidate=code)
        if truncated and not fenced_blocks(answer):  # unfenced code cut off: nothing marks where the file ends
            raise ExtractionError("truncated", "the reply was cut off (max_tokens) inside its unfenced code",
                                  candidate=code)
        return code
    except _NoCandidates:
        pass
    if truncated:
        raise ExtractionError("truncated", "the reply was cut off (max_tokens) before its answer held any code")
    if thinking:
        try:
            return _from_section(thinking)
        except _NoCandidates:
            pass
        except ExtractionError as e:
            if e.category == "truncated" or has_unclosed_think(raw):
                raise ExtractionError("truncated", "the reply was cut off while thinking, before the answer",
                                      candidate=e.candidate) from None
            raise
    if has_unclosed_think(raw):
        raise ExtractionError("truncated", "the reply was cut off while thinking, before any code was written")
    if not answer.strip():
        raise ExtractionError("empty-reply", "the reply holds reasoning but no answer")
    raise ExtractionError("no-code", f"the reply holds no Python code: {answer[:160]!r}")


def _ends_in_open_fence(answer: str) -> bool:
    blocks = fenced_blocks(answer)
    return bool(blocks) and not blocks[-1].closed


def answer_section(text: str, reasoning: str | None = None, *, truncated: bool = False) -> str:
    """The part of a reply the candidate came from: the answer, or the reasoning when the answer holds no code
    (an R1 reasoning field holding the whole answer, with no `</think>` and empty content)."""
    answer, thinking = split_reasoning(text or "", reasoning)
    if truncated or not thinking or json_reply(answer) is not None:
        return answer
    try:
        _from_section(answer)
        return answer
    except _NoCandidates:
        return thinking
    except ExtractionError:
        return answer


@dataclass
class Candidate:
    """What a reply proposes: the file, the hyperparameters it asked for (None: none given) and its summary."""

    code: str
    prm: Prm | None
    summary: str | None
    notes: list[str] = field(default_factory=list)  # e.g. unknown hyperparameters dropped


def extract_candidate(text: str, reasoning: str | None = None, *, truncated: bool = False) -> Candidate:
    """The candidate file of a reply together with its hyperparameters (validated) and SUMMARY.

    Raises `ExtractionError`; invalid hyperparameters are category `bad-hyperparameters`
    with the extracted code as `candidate`, so a fixer can still work from it.
    """
    code = extract_code(text, reasoning, truncated=truncated)
    answer = answer_section(text, reasoning, truncated=truncated)
    obj = json_reply(answer)
    try:
        if obj is not None:
            raw = prm_from_object(obj)
            summary = obj.get("summary") if isinstance(obj.get("summary"), str) else None
        else:
            blocks = [b.code for b in fenced_blocks(answer) if b.lang == "json"]
            raw = prm_from_json_blocks(blocks)
            if raw is None:
                raw = prm_literal(code)
            summary = None
        prm, notes = validate_llm_prm(raw, code) if raw is not None else (None, [])
    except PrmError as e:
        raise ExtractionError(PRM_CATEGORY, e.message, candidate=code) from None
    summary = safe_text(" ".join(summary.split()), 300, keep="head") if summary else extract_summary(answer)
    return Candidate(code=code, prm=prm, summary=summary or None, notes=notes)


def candidate_from_exchange(exchange: LLMExchange) -> Candidate:
    """`extract_candidate` on an exchange's reply and reasoning; errors carry the exchange."""
    try:
        return extract_candidate(exchange.reply, exchange.reasoning or None, truncated=exchange.truncated)
    except ExtractionError as e:
        e.exchange = exchange
        raise


async def candidate_from_exchange_async(exchange: LLMExchange, timeout_s: float = PARSE_TIMEOUT_S) -> Candidate:
    """`candidate_from_exchange` off the event loop, bounded in time (a stuck parse fails the reply, not the run).

    On the time bound the worker thread is left to finish on its own; the reply ends as `no-code`.
    """
    try:
        return await asyncio.wait_for(asyncio.to_thread(candidate_from_exchange, exchange), timeout_s)
    except TimeoutError:
        err = ExtractionError("no-code", f"reading the code out of the reply took over {timeout_s:g} s")
        err.exchange = exchange
        raise err from None


def extract_summary(text: str, reasoning: str | None = None) -> str | None:
    """The one-line `SUMMARY: ...` of a reply (outside code blocks), without markdown decoration."""
    answer, _ = split_reasoning(text or "", reasoning)
    outside = answer
    for b in fenced_blocks(answer):
        outside = outside.replace(b.code.rstrip("\n"), "")
    found = [m.group("text") for m in _SUMMARY.finditer(outside)]
    if not found:
        return None
    summary = found[-1].strip().strip("*`_ ").strip()
    return safe_text(summary, 300, keep="head") or None


def module_docstring_line(code: str) -> str | None:
    """First line of the candidate's module docstring (a fallback summary)."""
    try:
        doc = ast.get_docstring(pyast.parse(code))
    except (SyntaxError, ValueError):
        return None
    return safe_text(doc.strip().splitlines()[0], 300, keep="head") if doc and doc.strip() else None
