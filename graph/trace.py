"""Read-only views of a run directory: the run list, one line per step, one step in full, one candidate's life.

Everything here reads the run directory through `nncaption.graph.rundir` (a run
directory may come from someone else): the results database read-only with a time
bound (views and triggers refused), ids validated before they touch a path, files
opened without following links and size-capped. So it works on a run that is still
going and on a killed one, and never changes a run. The functions return plain,
strict-JSON-able dicts; `nncaption trace` prints them (candidate and LLM text through
`safe_text`) or dumps them with `--json`. A step shows at most `TEXT_LIMIT`
characters of any text.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import sqlite3
import time
from pathlib import Path
from typing import Any

from nncaption.graph import rundir
from nncaption.graph.runlock import is_live
from nncaption.netapi.errors import NNCaptionError
from nncaption.netapi.safetext import safe_text

log = logging.getLogger(__name__)

RESULTS_DB = "results.sqlite"
CHECKPOINT_DB = "checkpoints.sqlite"
CONFIG_FILE = "config.json"
TEXT_LIMIT = 200_000  # characters of one blob shown in a step
LOG_TAIL_BYTES = 8_000
JOB_LOG_FILES = ("sandbox-stderr.txt", "sandbox-stdout.txt", "progress.jsonl")


class RunNotFound(NNCaptionError):
    """The folder is not a run directory (no results database)."""

    category = "usage"
    exit_code = 2


class TraceLookupError(NNCaptionError):
    """A step or candidate asked for is not in the run."""

    category = "usage"
    exit_code = 2


def connect_ro(path: Path) -> sqlite3.Connection:
    """A read-only, time-bounded connection (see rundir.connect_ro): never writes the database file."""
    return rundir.connect_ro(path)


def loads(text: str | None, default: Any = None) -> Any:
    """JSON from a run's database (`default` when empty, malformed or too deeply nested)."""
    if not text:
        return default
    try:
        return json.loads(text)
    except (ValueError, RecursionError, TypeError):
        return default


# Columns that hold numbers in every table of the schema: anything else there (text, a blob, NaN) reads as None.
NUMERIC = frozenset({
    "idx", "attempts", "fix_rounds", "debug_depth", "planned_step", "recorded_step", "params", "bleu1", "bleu2",
    "bleu3", "bleu4", "lemur_bleu4", "best_bleu4", "train_loss", "seconds", "epoch", "step", "superstep", "attempt",
    "tokens", "latency_s", "queued_s", "prompt_tokens", "completion_tokens", "reasoning_tokens", "total_tokens",
    "http_attempts", "ok", "reused", "line", "seed", "sessions", "elapsed_s", "created_at", "updated_at",
    "started_at", "finished_at", "n", "m", "t",
})


def _clean(row: sqlite3.Row) -> dict[str, Any]:
    """A row as a run writes it: texts with control characters escaped, blobs shown as their size, and numeric
    columns holding finite numbers or None (an edited database may put anything anywhere)."""
    out: dict[str, Any] = {}
    for k, v in dict(row).items():
        if k in NUMERIC and v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or
                                               not math.isfinite(v) or abs(v) > 1e18):
            log.warning("ignoring a non-numeric %s in the run's database", k)
            v = None
        elif isinstance(v, str):
            v = safe_text(v, None)
        elif isinstance(v, (bytes, memoryview)):
            v = f"<{len(v)} bytes>"
        out[k] = v
    return out


class RunReader:
    """A read-only view of one run directory's results database and blobs."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir).expanduser()
        db = self.run_dir / RESULTS_DB
        if not (db.is_file() or db.is_symlink()):
            raise RunNotFound(f"{self.run_dir} is not a run directory (no {RESULTS_DB})",
                              "pass a folder made by `nncaption run`; `nncaption runs` lists them")
        self.db = connect_ro(db)
        self._trusted: bool | None = None

    def __enter__(self) -> RunReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        """Rows as dicts; every text with its control characters escaped (it reaches terminals and reports)."""
        try:
            return [_clean(r) for r in self.db.execute(sql, params).fetchall()]
        except sqlite3.Error as e:
            raise rundir.query_error(self.run_dir / RESULTS_DB, e) from None

    def one(self, sql: str, params: tuple[Any, ...] = ()) -> dict[str, Any] | None:
        try:
            r = self.db.execute(sql, params).fetchone()
        except sqlite3.Error as e:
            raise rundir.query_error(self.run_dir / RESULTS_DB, e) from None
        return _clean(r) if r is not None else None

    def blob(self, ref: str | None, limit: int = TEXT_LIMIT) -> str | None:
        """The text stored under `ref`, at most `limit` characters (None when missing, a bad ref, a link, a FIFO)."""
        return rundir.blob_text(self.run_dir, ref, limit)

    def config(self) -> dict[str, Any]:
        data = rundir.read_json(self.run_dir, CONFIG_FILE)
        return data if isinstance(data, dict) else {}

    def trusted(self) -> bool:
        """Whether this user started the run (graph/runtrust.py): only then are folders its config names outside
        the run directory (a shared jobs root, the prepared dataset) read."""
        if self._trusted is None:
            from nncaption.graph import runtrust

            self._trusted = runtrust.is_trusted(self.run_dir, self.config())
        return self._trusted

    def run_row(self) -> dict[str, Any]:
        return self.one("SELECT * FROM runs LIMIT 1") or {}

    def candidates(self) -> list[dict[str, Any]]:
        """Every candidate whose index is an integer (a row without one is not a candidate a run made)."""
        return [c for c in self.rows("SELECT * FROM candidates ORDER BY idx") if c["idx"] is not None]

    def steps(self) -> list[dict[str, Any]]:
        return [s for s in self.rows("SELECT * FROM steps ORDER BY step") if s["step"] is not None]

    def epochs(self, cid: str) -> list[dict[str, Any]]:
        """The candidate's epochs with integer numbers (an epoch that is a path or a text is left out)."""
        return [e for e in self.rows("SELECT * FROM epochs WHERE cid=? ORDER BY epoch", (cid,))
                if e["epoch"] is not None]

    def models(self) -> list[str]:
        """Models that answered in this run ('requested -> returned'), or the agents' names for a baseline run."""
        out = [f"{r['model']} -> {r['model_returned'] or '?'}" for r in self.rows(
            "SELECT DISTINCT model, model_returned FROM llm_calls WHERE model IS NOT NULL ORDER BY model")]
        if out:
            return out
        run = self.run_row()
        return sorted({str(run[k]) for k in ("designer", "reviewer", "fixer") if run.get(k)})


# ---------------------------------------------------------------------------------------------- runs
def run_summary(run_dir: Path) -> dict[str, Any]:
    """One line of `nncaption runs`: status, candidates, best BLEU-4, endpoint models, start time."""
    with RunReader(run_dir) as r:
        run = r.run_row()
        counts = {row["status"]: row["n"] for row in r.rows(
            "SELECT status, COUNT(*) AS n FROM candidates GROUP BY status")}
        best = r.one("SELECT cid, bleu4 FROM candidates WHERE status='scored' AND bleu4 IS NOT NULL "
                     "ORDER BY bleu4 DESC, idx LIMIT 1")
        act = r.one("SELECT MAX(COALESCE(finished_at, started_at)) AS t FROM steps") or {}
        last = max(t for t in (act.get("t"), run.get("updated_at"), run.get("created_at"), 0.0)
                   if isinstance(t, (int, float)) and math.isfinite(t))
        live = is_live(r.run_dir)
        status = run.get("status") or "unknown"
        if status == "running" and live is False:  # its process is gone (killed, or a second Ctrl-C)
            status = "stopped"
        return {"run_dir": str(r.run_dir), "run_id": run.get("run_id") or r.run_dir.name,
                "last_activity": last or None, "idle_s": round(time.time() - last, 1) if last else None,
                "status": status, "live": live, "candidates": sum(counts.values()), "counts": counts,
                "best_cid": best["cid"] if best else None, "best_bleu4": best["bleu4"] if best else None,
                "models": r.models(), "started_at": run.get("created_at"), "updated_at": run.get("updated_at"),
                "dataset": run.get("dataset"), "seed": run.get("seed"), "stop_reason": run.get("stop_reason")}


def list_runs(root: Path) -> list[dict[str, Any]]:
    """Every run directory directly under `root` (and `root` itself if it is one), newest first."""
    root = Path(root).expanduser()
    dirs = [root] if (root / RESULTS_DB).is_file() else sorted(
        (p for p in root.iterdir() if (p / RESULTS_DB).is_file()), key=lambda p: p.name) if root.is_dir() else []
    out = []
    for d in dirs:
        try:
            out.append(run_summary(d))
        except (sqlite3.Error, NNCaptionError) as e:
            log.warning("skipping %s: %s", d, e)
            out.append({"run_dir": str(d), "run_id": d.name, "status": f"unreadable ({type(e).__name__})",
                        "candidates": 0, "counts": {}, "best_cid": None, "best_bleu4": None, "models": [],
                        "started_at": None})
    return sorted(out, key=lambda s: s["started_at"] if isinstance(s.get("started_at"), (int, float)) else 0.0,
                  reverse=True)


# ---------------------------------------------------------------------------------------------- steps
def _duration(row: dict[str, Any]) -> float | None:
    start, end = row.get("started_at"), row.get("finished_at")
    if not isinstance(start, (int, float)) or not isinstance(end, (int, float, type(None))):
        return None
    return round((end if end is not None else time.time()) - start, 3)


def step_lines(reader: RunReader) -> list[dict[str, Any]]:
    """One entry per node execution: step, superstep, node, candidate, attempt, status, duration, tokens."""
    return [{"step": s["step"], "superstep": s["superstep"], "node": s["node"], "candidate": s["cid"] or None,
             "attempt": s["attempt"], "status": s["status"], "duration_s": _duration(s), "tokens": s["tokens"] or 0,
             "started_at": s["started_at"]} for s in reader.steps()]


def _code_of_attempt(reader: RunReader, cid: str, attempt: int) -> str | None:
    row = reader.one("SELECT code_ref FROM attempts WHERE cid=? AND attempt=?", (cid, attempt))
    return reader.blob(row["code_ref"]) if row else None


def previous_code(reader: RunReader, cid: str, attempt: int | None) -> tuple[str | None, str]:
    """The code this attempt is compared with: the candidate's previous attempt, or its parent's last code."""
    if attempt and attempt > 1:
        return _code_of_attempt(reader, cid, attempt - 1), f"{cid} attempt {attempt - 1}"
    cand = reader.one("SELECT parent FROM candidates WHERE cid=?", (cid,))
    if cand and cand.get("parent"):
        parent = reader.one("SELECT code_ref FROM candidates WHERE cid=?", (cand["parent"],))
        if parent and parent.get("code_ref"):
            return reader.blob(parent["code_ref"]), f"parent {cand['parent']}"
    return None, ""


def code_diff(old: str | None, new: str | None, old_name: str, new_name: str) -> str:
    if old is None or new is None:
        return ""
    return "".join(difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                        fromfile=old_name, tofile=new_name, n=2))


def _tail_file(root: Path, rel: list[str], n: int = LOG_TAIL_BYTES) -> str:
    """The last `n` bytes of root/rel, a regular file (never follows links, never blocks)."""
    data = rundir.read_bytes(root, rel, n, offset=-n)
    return data.decode("utf-8", errors="replace") if data else ""


def job_record_dir(reader: RunReader, job_id: str | None) -> Path | None:
    """The content-addressed job folder of `job_id`: RUN_DIR/jobs/<id>, or under the run's train.jobs_root."""
    if rundir.job_id(job_id) is None:
        return None
    assert job_id is not None
    roots = [reader.run_dir / "jobs"]
    train = reader.config().get("train")
    shared = train.get("jobs_root") if isinstance(train, dict) else None
    if isinstance(shared, str) and shared and reader.trusted():  # a folder outside the run: only for our own runs
        roots.append(Path(shared).expanduser())
    for root in roots:
        if (root / job_id).is_dir() and not (root / job_id).is_symlink():
            return root / job_id
    return None


def job_log_tail(reader: RunReader, job_id: str | None) -> str:
    """The end of a sandbox job's stderr, stdout and progress files (what the job wrote: hostile, bounded)."""
    record = job_record_dir(reader, job_id)
    if record is None:
        return ""
    parts = []
    for name in JOB_LOG_FILES:
        text = _tail_file(record, ["job", name], LOG_TAIL_BYTES // 2)
        if text.strip():
            parts.append(f"--- {name} (tail)\n{text}")
    return "\n".join(parts)


def _llm_calls(reader: RunReader, step: int) -> list[dict[str, Any]]:
    out = []
    for c in reader.rows("SELECT * FROM llm_calls WHERE step=? ORDER BY id", (step,)):
        messages_text = reader.blob(c["messages_ref"])
        messages = loads(messages_text, None)
        if messages is None and messages_text:
            messages = [{"role": "?", "content": messages_text}]
        out.append({"role": c["role"], "endpoint": c["endpoint"], "model_requested": c["model"],
                    "model_returned": c["model_returned"], "ok": bool(c["ok"]), "error": c["error"],
                    "tokens": {"prompt": c["prompt_tokens"], "completion": c["completion_tokens"],
                               "reasoning": c["reasoning_tokens"], "total": c["total_tokens"]},
                    "latency_s": c["latency_s"], "finish_reason": c["finish_reason"],
                    "messages": messages if isinstance(messages, list) else [], "reply": reader.blob(c["reply_ref"]),
                    "reasoning": reader.blob(c["reasoning_ref"])})
    return out


def step_detail(reader: RunReader, n: int) -> dict[str, Any]:
    """Everything about step `n`: LLM calls (prompt, reply, reasoning, models), code and its diff, verdict, logs."""
    s = reader.one("SELECT * FROM steps WHERE step=?", (n,))
    if s is None:
        last = reader.one("SELECT MAX(step) AS m FROM steps") or {}
        raise TraceLookupError(f"step {n} is not in this run (steps 1..{last.get('m') or 0})",
                               "list the steps with `nncaption trace RUN_DIR`")
    cid, attempt = s["cid"], s["attempt"]
    made = reader.one("SELECT attempt FROM attempts WHERE cid=? AND step=?", (cid, n)) if cid else None
    if made is not None:  # design and fix steps make a new attempt: show that one (diff against the one before)
        attempt = made["attempt"]
    code = reader.blob(s["code_ref"])
    old, old_name = previous_code(reader, cid, attempt) if cid and code is not None else (None, "")
    verdicts = reader.rows("SELECT stage, ok, category, message, line FROM verdicts WHERE step=?", (n,))
    jobs = reader.rows("SELECT kind, job_id, status, category, reused, seconds FROM sandbox_jobs WHERE step=?", (n,))
    log_tail = reader.blob(s["log_ref"], LOG_TAIL_BYTES) or ""
    if not log_tail and jobs:
        log_tail = job_log_tail(reader, jobs[0].get("job_id"))
    detail = loads(s["detail"], {})
    if not isinstance(detail, dict):
        detail = {}
    metrics: dict[str, Any] = {}
    if s["node"] == "train" and cid:
        metrics["epochs"] = reader.epochs(cid)
        cand = reader.one("SELECT bleu4, lemur_bleu4, params FROM candidates WHERE cid=?", (cid,)) or {}
        metrics.update({"bleu4_coco": cand.get("bleu4"), "bleu4_lemur": cand.get("lemur_bleu4"),
                        "params": cand.get("params")})
    if "bleu4" in detail:
        metrics.setdefault("bleu4_coco", detail["bleu4"])
    return {"step": n, "superstep": s["superstep"], "node": s["node"], "candidate": cid or None, "attempt": attempt,
            "status": s["status"], "started_at": s["started_at"], "finished_at": s["finished_at"],
            "duration_s": _duration(s), "tokens": s["tokens"] or 0, "detail": detail,
            "llm_calls": _llm_calls(reader, n), "code": code,
            "diff": code_diff(old, code, old_name, f"{cid} attempt {attempt}") if old is not None else "",
            "diff_against": old_name or None, "verdicts": [{**v, "ok": bool(v["ok"])} for v in verdicts],
            "jobs": [{**j, "reused": bool(j["reused"])} for j in jobs], "log_tail": log_tail, "metrics": metrics}


# ---------------------------------------------------------------------------------------------- candidates
def parent_chain(reader: RunReader, cid: str) -> list[dict[str, Any]]:
    """cid, its parent, the parent's parent, ... (each with origin, status, BLEU-4); cycles are cut."""
    chain, seen, cur = [], set(), cid
    while cur and cur not in seen:
        seen.add(cur)
        row = reader.one("SELECT cid, parent, origin, mode, status, bleu4, summary FROM candidates WHERE cid=?",
                         (cur,))
        if row is None:
            break
        chain.append(row)
        cur = row["parent"]
    return chain


def candidate_life(reader: RunReader, cid: str) -> dict[str, Any]:
    """One candidate from design to score: its row, parent chain, steps, attempts, verdicts, jobs and epochs."""
    cand = reader.one("SELECT * FROM candidates WHERE cid=?", (cid,))
    if cand is None:
        known = [r["cid"] for r in reader.rows("SELECT cid FROM candidates ORDER BY idx")]
        raise TraceLookupError(f"candidate {cid!r} is not in this run (it has {', '.join(known[:20]) or 'none'})",
                               "list the candidates with `nncaption trace RUN_DIR`")
    steps = [line for line in step_lines(reader) if line["candidate"] == cid]
    attempts = reader.rows("SELECT attempt, made_by, code_ref, prm_json, summary, step FROM attempts WHERE cid=? "
                           "ORDER BY attempt", (cid,))
    for a in attempts:
        a["prm"] = loads(a.pop("prm_json"), {})
    return {"candidate": cand, "parent_chain": parent_chain(reader, cid), "steps": steps, "attempts": attempts,
            "verdicts": reader.rows("SELECT attempt, stage, ok, category, message, line, step FROM verdicts "
                                    "WHERE cid=? ORDER BY attempt, step", (cid,)),
            "jobs": reader.rows("SELECT attempt, kind, job_id, status, category, reused, seconds, step "
                                "FROM sandbox_jobs WHERE cid=? ORDER BY step", (cid,)),
            "epochs": reader.epochs(cid),
            "children": [r["cid"] for r in reader.rows("SELECT cid FROM candidates WHERE parent=? ORDER BY idx",
                                                       (cid,))]}

