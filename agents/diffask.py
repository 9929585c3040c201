"""Asking for SEARCH/REPLACE edits, and for the whole file once when they do not apply.

`ask_for_edit` sends the edit prompt (the parent file plus the diff answer format),
applies the reply's blocks to the parent (`nncaption.agents.diffedit`) and returns
the edited file as a `Candidate`, with the hyperparameters of the reply's json
block (else the file's `PRM` literal; else none, so the caller keeps the parent's)
and its SUMMARY line. A reply with no blocks but a whole file is used as it is.
When any block does not apply, the edited file does not parse while the parent
did, the reply has a malformed block or was cut off, ONE request for the whole
file follows (`ask_for_candidate`, with a note saying why) and its file is used.

Every step is in the returned `EditReport`: `to_dict()` is the structured record
(`Design.edit` / `Fix.edit`, for the step's detail) and `notes()` the lines for
`Design.notes` / `Fix.notes` (one per block: applied at which match level, or why not).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nncaption.agents.client import LLMClient
from nncaption.agents.diffedit import BlockResult, DiffFormatError, apply_diff, parse_diff
from nncaption.agents.errors import TruncatedReply
from nncaption.agents.extract import (
    PARSE_TIMEOUT_S,
    Candidate,
    ExtractionError,
    candidate_from_exchange,
    extract_summary,
    fenced_blocks,
)
from nncaption.agents.hparams import PRM_CATEGORY, PrmError, prm_from_json_blocks, prm_literal, validate_llm_prm
from nncaption.agents.reasoning import split_reasoning
from nncaption.agents.records import LLMExchange
from nncaption.agents.truncation import ask_for_candidate
from nncaption.netapi import pyast
from nncaption.netapi.safetext import safe_text

log = logging.getLogger(__name__)

Messages = list[dict[str, Any]]
FALLBACK_NOTE = ("Your previous answer's SEARCH/REPLACE edits could not be used ({reason}). This time do not "
                 "answer with edits: answer with the WHOLE file in one ```python block, as described above.")


@dataclass
class EditReport:
    """How an edit request went: what was asked, what was used, each block's result, and any fallback."""

    asked: str = "diff"
    used: str = ""  # diff | full (the reply held a whole file) | fallback-full (the second request's file)
    reason: str = ""  # why the edits were not used ("" when they were)
    blocks: list[BlockResult] = field(default_factory=list)

    @property
    def fallback(self) -> bool:
        return self.used == "fallback-full"

    def to_dict(self) -> dict[str, Any]:
        return {"asked": self.asked, "used": self.used, "fallback": self.fallback, "reason": self.reason,
                "blocks": [b.to_dict() for b in self.blocks]}

    def notes(self) -> list[str]:
        out = [b.note(len(self.blocks)) for b in self.blocks]
        if self.used == "diff":
            out.append(f"asked for SEARCH/REPLACE edits: all {len(self.blocks)} applied to the parent")
        elif self.used == "full":
            out.append("asked for SEARCH/REPLACE edits: the reply held the whole file instead, used as it is")
        else:
            out.append(f"asked for SEARCH/REPLACE edits: not used ({self.reason}); asked once more for the "
                       "whole file")
        return out


def _parses(code: str) -> tuple[bool, int | None]:
    try:
        pyast.parse(code)
        return True, None
    except SyntaxError as e:
        return False, e.lineno
    except ValueError:
        return False, None


def edited_candidate(ex: LLMExchange, parent_code: str, report: EditReport) -> Candidate | None:
    """The candidate an edit reply makes from `parent_code`, or None (with `report.reason`) to ask for the file.

    Raises ExtractionError (category bad-hyperparameters, the edited file as `candidate`) when the
    edits apply but the hyperparameters the reply asked for are invalid, as a whole-file reply would.
    """
    if ex.truncated:
        report.reason = "the reply was cut off at its token budget"
        return None
    answer, _ = split_reasoning(ex.reply or "", ex.reasoning or None)
    try:
        blocks = parse_diff(answer)
    except DiffFormatError as e:
        report.reason = safe_text(str(e), 300, keep="head")
        return None
    if not blocks:
        try:
            cand = candidate_from_exchange(ex)
        except ExtractionError as e:
            report.reason = f"the reply holds no SEARCH/REPLACE block and no usable file ({e.category})"
            return None
        report.used = "full"
        return cand
    outcome = apply_diff(parent_code, blocks)
    report.blocks = outcome.results
    if not outcome.ok:
        failed = [r.index for r in outcome.results if not r.applied]
        report.reason = f"block(s) {', '.join(map(str, failed))} of {len(blocks)} did not apply"
        return None
    ok, line = _parses(outcome.code)
    if not ok and _parses(parent_code)[0]:
        report.reason = f"the edited file does not parse (line {line})" if line else "the edited file does not parse"
        return None
    code = outcome.code if outcome.code.endswith("\n") else outcome.code + "\n"
    try:
        raw = prm_from_json_blocks([b.code for b in fenced_blocks(answer) if b.lang == "json"])
        if raw is None:
            raw = prm_literal(code)
        prm, notes = validate_llm_prm(raw, code) if raw is not None else (None, [])
    except PrmError as e:
        err = ExtractionError(PRM_CATEGORY, e.message, candidate=code)
        err.exchange = ex
        raise err from None
    report.used = "diff"
    return Candidate(code=code, prm=prm, summary=extract_summary(answer), notes=notes)


async def ask_for_edit(client: LLMClient, role: str, parent_code: str, edit_messages: Messages,
                       full_messages: Callable[[str], Messages], exchanges: list[LLMExchange], *,
                       seed: int | None = None) -> tuple[LLMExchange, Candidate, EditReport]:
    """Ask `role` for edits to `parent_code`; on failure ask once for the whole file (`full_messages(note)`).

    Every exchange made is appended to `exchanges`. Raises what `ask_for_candidate` raises
    (the client's `LLMError`s, `ExtractionError`), plus the bad-hyperparameters error of
    `edited_candidate`.
    """
    report = EditReport()
    try:
        ex = await client.chat(role, edit_messages, seed=seed)
    except TruncatedReply as e:
        if e.exchange is not None:
            exchanges.append(e.exchange)
        report.reason = "the reply was cut off at its token budget"
    else:
        exchanges.append(ex)
        try:  # parsing and applying are CPU work on hostile text: off the event loop, with a time bound
            cand = await asyncio.wait_for(asyncio.to_thread(edited_candidate, ex, parent_code, report),
                                          PARSE_TIMEOUT_S)
        except TimeoutError:
            report.reason = f"applying the edits took more than {PARSE_TIMEOUT_S:.0f} s"
            cand = None
        if cand is not None:
            return ex, cand, report
    log.info("%s edits not used (%s); asking for the whole file", role, report.reason)
    ex, cand = await ask_for_candidate(client, role, full_messages(FALLBACK_NOTE.format(reason=report.reason)),
                                       exchanges, seed=seed)
    report.used = "fallback-full"
    return ex, cand, report
