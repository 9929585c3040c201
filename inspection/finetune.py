"""Generator fine-tuning data from a run: `nncaption export RUN_DIR --sft OUT.jsonl --pairs OUT.jsonl`.

As nn-gpt fine-tunes its generator on its own results, a run's LLM calls become
training data, one strict JSON object per line (RFC 8259: no NaN, non-ASCII escaped):

--sft: one line per LLM call whose reply became a candidate's code (the last successful
designer/fixer call of the step that made an attempt):
    {"messages": [the prompt's messages..., {"role": "assistant", "content": reply}],
     "reasoning": the server's separate reasoning or null, "verdict", "category", "stage",
     "scores": {"bleu4", "lemur_bleu4", "bleu4_per_epoch", "params", "parent_bleu4", "gain"},
     "candidate", "attempt", "role", "made_by", "mode", "parent", "model", "step"}
  `verdict` is what became of that attempt's code: scored (the candidate's last attempt,
  scored), failed (a check or training rejected it; `category`/`stage` say which),
  duplicate, interrupted, planned, or superseded (a later attempt replaced it without a
  recorded failure). Scores are set for scored attempts only (null otherwise).

--pairs: better and worse children of the same parent, for DPO / KTO. The children are
the first attempts of candidates with the same parent made by the same role (drafts form
the group of parent null); a scored child is `chosen` against every sibling that scored
lower or failed (at most MAX_PAIRS_PER_GROUP pairs a group):
    {"prompt": the chosen child's prompt messages, "chosen": its reply, "rejected": the
     sibling's reply, "rejected_prompt": the sibling's own prompt (siblings see different
     feedback), "chosen_score", "rejected_score" (null: it failed), "rejected_verdict",
     "rejected_category", "parent", "role", "chosen_candidate", "rejected_candidate"}

The run directory is read only through `RunReader` (read-only, time-bounded SQLite;
control characters escaped in row texts) and `rundir` (validated ids, link-free capped
blob reads); a prompt or reply at the read cap is left out rather than cut. The files
are written by rename over the target (`rundir.write_path`).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nncaption.graph import rundir
from nncaption.graph.trace import RunReader, loads
from nncaption.netapi.safetext import strict_dumps

log = logging.getLogger(__name__)

BLOB_LIMIT = 2_000_000  # characters of one prompt, reply or reasoning; one at the cap is left out
MAX_PAIRS_PER_GROUP = 64
MAX_OUTPUT_CHARS = 512 << 20  # per file; lines past it are left out with a note
GENERATOR_ROLES = ("designer", "fixer")
MESSAGE_ROLES = ("system", "user", "assistant")
STAGE_ORDER = ("design", "static", "review", "smoke", "train", "score", "fix")


@dataclass
class Example:
    """One LLM call that produced an attempt's code, with what became of that code."""

    record: dict[str, Any]
    prompt: list[dict[str, str]]
    reply: str


@dataclass
class Export:
    """What was exported: lines per file and notes for the user."""

    examples: list[Example] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _run_tables(reader: RunReader) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(attempts, verdicts, generator LLM calls): the only SQL here, as RunReader has no method for these tables."""
    attempts = reader.rows("SELECT cid, attempt, made_by, step FROM attempts ORDER BY cid, attempt")
    verdicts = reader.rows("SELECT cid, attempt, stage, ok, category FROM verdicts")
    calls = reader.rows("SELECT id, step, cid, role, model, model_returned, ok, messages_ref, reply_ref, "
                        "reasoning_ref FROM llm_calls ORDER BY id")
    return attempts, verdicts, calls


def _messages(text: str | None) -> list[dict[str, str]] | None:
    """A stored prompt as chat messages ({role, content} strings), or None when it is not one."""
    value = loads(text, None)
    if not isinstance(value, list) or not value:
        return None
    out = []
    for m in value:
        if not isinstance(m, dict) or m.get("role") not in MESSAGE_ROLES or not isinstance(m.get("content"), str):
            return None
        out.append({"role": str(m["role"]), "content": str(m["content"])})
    return out


def _blob(reader: RunReader, ref: Any) -> tuple[str | None, bool]:
    """(text, complete): complete is False when the blob reached the read cap (it would be cut)."""
    text = reader.blob(ref, BLOB_LIMIT)
    return text, text is None or len(text) < BLOB_LIMIT


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _verdict(cand: dict[str, Any], attempt: int, last: int,
             failing: dict[tuple[str, int], dict[str, Any]]) -> tuple[str, str | None, str | None]:
    """(verdict, category, stage) of one attempt's code."""
    bad = failing.get((str(cand["cid"]), attempt))
    if bad is not None:
        return "failed", bad.get("category"), bad.get("stage")
    if attempt == last:
        return str(cand.get("status") or "planned"), cand.get("category"), cand.get("stage")
    return "superseded", None, None


def _scores(reader: RunReader, cand: dict[str, Any], parent: dict[str, Any] | None, scored: bool) -> dict[str, Any]:
    bleu4 = _number(cand.get("bleu4")) if scored else None
    parent_bleu4 = _number(parent.get("bleu4")) if parent and parent.get("status") == "scored" else None
    curve = [b for b in (_number(e.get("bleu4")) for e in reader.epochs(str(cand["cid"]))) if b is not None]
    return {"bleu4": bleu4, "lemur_bleu4": _number(cand.get("lemur_bleu4")) if scored else None,
            "bleu4_per_epoch": curve if scored else [], "params": _number(cand.get("params")) if scored else None,
            "parent_bleu4": parent_bleu4,
            "gain": bleu4 - parent_bleu4 if bleu4 is not None and parent_bleu4 is not None else None}


def collect(reader: RunReader) -> Export:
    """Every LLM call that produced an attempt's code, with its prompt, reply, verdict and scores."""
    out = Export()
    cands = {str(c["cid"]): c for c in reader.candidates() if rundir.cid(c.get("cid"))}
    attempts, verdicts, calls = _run_tables(reader)
    failing: dict[tuple[str, int], dict[str, Any]] = {}
    for v in sorted(verdicts, key=lambda v: STAGE_ORDER.index(v["stage"]) if v.get("stage") in STAGE_ORDER else 99):
        if v.get("ok") == 0 and isinstance(v.get("attempt"), int):
            failing.setdefault((str(v.get("cid")), v["attempt"]), v)
    producing: dict[tuple[str, int], dict[str, Any]] = {}  # (cid, step) -> the last ok generator call
    n_calls = 0
    for c in calls:
        n_calls += 1
        if c.get("ok") == 1 and c.get("role") in GENERATOR_ROLES and isinstance(c.get("step"), int):
            producing[(str(c.get("cid")), c["step"])] = c
    last: dict[str, int] = {}
    for a in attempts:
        if isinstance(a.get("attempt"), int):
            last[str(a.get("cid"))] = max(last.get(str(a.get("cid")), 0), a["attempt"])
    skipped = 0
    for a in attempts:
        cid, attempt, step = str(a.get("cid")), a.get("attempt"), a.get("step")
        cand = cands.get(cid)
        call = producing.get((cid, step)) if isinstance(step, int) else None
        if cand is None or call is None or not isinstance(attempt, int):
            continue
        prompt_text, whole_prompt = _blob(reader, call.get("messages_ref"))
        reply, whole_reply = _blob(reader, call.get("reply_ref"))
        reasoning, whole_reasoning = _blob(reader, call.get("reasoning_ref"))
        prompt = _messages(prompt_text)
        if prompt is None or reply is None or not (whole_prompt and whole_reply and whole_reasoning):
            skipped += 1
            continue
        verdict, category, stage = _verdict(cand, attempt, last.get(cid, 0), failing)
        parent = cands.get(str(cand.get("parent"))) if cand.get("parent") else None
        record = {"messages": [*prompt, {"role": "assistant", "content": reply}], "reasoning": reasoning or None,
                  "verdict": verdict, "category": category, "stage": stage,
                  "scores": _scores(reader, cand, parent, verdict == "scored"), "candidate": cid,
                  "attempt": attempt, "role": call.get("role"), "made_by": a.get("made_by"),
                  "mode": cand.get("mode"), "parent": cand.get("parent"),
                  "model": call.get("model_returned") or call.get("model"), "step": step}
        out.examples.append(Example(record=record, prompt=prompt, reply=reply))
    if n_calls == 0:
        out.notes.append("the run made no LLM calls (a baseline run, or one whose designer ran in-process): "
                         "there is nothing to fine-tune on, so the files are empty")
    elif not out.examples:
        out.notes.append("no LLM call of this run produced a candidate's code: the files are empty")
    if skipped:
        out.notes.append(f"{skipped} call(s) left out: prompt or reply missing, not chat messages, or over "
                         f"{BLOB_LIMIT} characters")
    return out


def pairs(examples: list[Example]) -> list[dict[str, Any]]:
    """Better/worse siblings (first attempts of the same parent, same role) as preference pairs."""
    groups: dict[tuple[Any, Any], list[Example]] = {}
    for ex in examples:
        r = ex.record
        if r["attempt"] == 1 and r["verdict"] in ("scored", "failed"):
            groups.setdefault((r["parent"], r["role"]), []).append(ex)
    out: list[dict[str, Any]] = []
    for (parent, role), members in groups.items():
        made = 0
        for better, worse in itertools.permutations(members, 2):
            b, w = better.record["scores"]["bleu4"], worse.record["scores"]["bleu4"]
            if better.record["verdict"] != "scored" or b is None:
                continue
            if worse.record["verdict"] == "scored" and (w is None or w >= b):
                continue
            out.append({"prompt": better.prompt, "chosen": better.reply, "rejected": worse.reply,
                        "rejected_prompt": worse.prompt, "chosen_score": b, "rejected_score": w,
                        "rejected_verdict": worse.record["verdict"], "rejected_category": worse.record["category"],
                        "parent": parent, "role": role, "chosen_candidate": better.record["candidate"],
                        "rejected_candidate": worse.record["candidate"]})
            made += 1
            if made == MAX_PAIRS_PER_GROUP:
                break
    return out


def _write(path: Path, records: list[dict[str, Any]], notes: list[str]) -> int:
    """Strict JSON lines written by rename over `path`; returns the lines written."""
    lines: list[str] = []
    size = 0
    for r in records:
        line = strict_dumps(r)
        size += len(line) + 1
        if size > MAX_OUTPUT_CHARS:
            notes.append(f"{path.name}: {len(records) - len(lines)} line(s) left out past {MAX_OUTPUT_CHARS} "
                         "characters")
            break
        lines.append(line)
    path.parent.mkdir(parents=True, exist_ok=True)
    rundir.write_path(path, "".join(f"{ln}\n" for ln in lines))
    return len(lines)


def export_finetune(run_dir: Path, *, sft: Path | None = None, pair_file: Path | None = None) -> dict[str, Any]:
    """Write the SFT and/or preference-pair files of a run; returns {"sft": {...}, "pairs": {...}, "notes": [...]}."""
    with RunReader(Path(run_dir).expanduser()) as reader:
        got = collect(reader)
    result: dict[str, Any] = {"run_dir": str(run_dir), "notes": got.notes}
    if sft is not None:
        result["sft"] = {"path": str(sft), "records": _write(sft, [e.record for e in got.examples], got.notes)}
    if pair_file is not None:
        made = pairs(got.examples)
        if got.examples and not made:
            got.notes.append("no preference pair: no parent has a scored child and a worse sibling")
        result["pairs"] = {"path": str(pair_file), "records": _write(pair_file, made, got.notes)}
    return result
