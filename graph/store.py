"""The run store: a run directory with the results database, content-addressed blobs and per-candidate files.

Layout of RUN_DIR:
    config.json        the resolved run configuration (secrets masked)
    checkpoints.sqlite LangGraph's AsyncSqliteSaver (one thread per candidate: its small state after every node)
    results.sqlite     the journal and everything else (schema in nncaption.graph.schema)
    blobs/ab/abcd...   code, prompts, replies, reasoning, logs, stored once by SHA-256
    candidates/<cid>/attempt-<n>.py   every version of every candidate's code
    jobs/<job key>/    sandbox job dirs (content-addressed: an identical job is reused, never retrained)
    run.log            the run's log

Every write is idempotent (keyed by candidate, attempt, stage or step), so a
node redone after a crash overwrites what its first try wrote. All writes come
from the event loop's thread; a lock makes the connection safe if not.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from nncaption.graph.descriptor import Descriptor, describe
from nncaption.graph.journal import AttemptFailure, Entry, Origin, Status
from nncaption.graph.schema import DDL
from nncaption.netapi.safetext import strict_dumps

log = logging.getLogger(__name__)

RESULTS_DB = "results.sqlite"
CHECKPOINT_DB = "checkpoints.sqlite"
CONFIG_FILE = "config.json"


def _json(obj: Any) -> str:
    return strict_dumps(obj, sort_keys=True)


class RunStore:
    """The results database and blob store of one run directory."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.blob_dir = self.run_dir / "blobs"
        self._lock = threading.RLock()
        self.db = sqlite3.connect(self.run_dir / RESULTS_DB, isolation_level=None, check_same_thread=False,
                                  timeout=30.0)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(DDL)
        self._descriptors: dict[tuple[str | None, str, str | None, int | None], Descriptor] = {}

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT_DB

    @property
    def jobs_root(self) -> Path:
        return self.run_dir / "jobs"

    def close(self) -> None:
        with self._lock:
            self.db.close()

    def _exec(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> sqlite3.Cursor:
        with self._lock:
            return self.db.execute(sql, params)

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self.db.execute(sql, params).fetchall())

    # ------------------------------------------------------------------ blobs
    def put_blob(self, text: str | None) -> str | None:
        """Store `text` once under its SHA-256; returns the reference (None for None)."""
        if text is None:
            return None
        data = text.encode("utf-8", errors="surrogatepass")
        ref = hashlib.sha256(data).hexdigest()
        path = self.blob_dir / ref[:2] / ref
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{ref}.{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return ref

    def blob(self, ref: str) -> str:
        """The text stored under `ref` (KeyError when there is none, `ref` is not 64 hex digits, or the blob is a
        link, a FIFO or over the size cap: a run directory may come from elsewhere, see graph/rundir.py)."""
        from nncaption.graph import rundir

        parts = rundir.blob_path(ref)
        data = rundir.read_bytes(self.run_dir, parts, rundir.DEFAULT_MAX_BYTES + 1) if parts else None
        if data is None or len(data) > rundir.DEFAULT_MAX_BYTES:
            raise KeyError(ref)
        return data.decode("utf-8", errors="surrogatepass")

    # ------------------------------------------------------------------ run
    def write_config(self, config: Mapping[str, Any]) -> None:
        path = self.run_dir / CONFIG_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, path)

    def read_config(self) -> dict[str, Any]:
        return dict(json.loads((self.run_dir / CONFIG_FILE).read_text(encoding="utf-8")))

    def start_run(self, run_id: str, *, seed: int, config: Mapping[str, Any], agents: Mapping[str, str],
                  dataset: str) -> None:
        """Insert the run row, or count one more session of a resumed run."""
        now = time.time()
        row = self._query("SELECT run_id FROM runs WHERE run_id=?", (run_id,))
        if row:
            self._exec("UPDATE runs SET status='running', sessions=sessions+1, updated_at=? WHERE run_id=?",
                       (now, run_id))
            return
        self._exec("INSERT INTO runs (run_id, status, seed, config_json, designer, reviewer, fixer, dataset, "
                   "created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                   (run_id, "running", seed, _json(config), agents.get("designer"), agents.get("reviewer"),
                    agents.get("fixer"), dataset, now, now))

    def run_row(self) -> dict[str, Any] | None:
        rows = self._query("SELECT * FROM runs LIMIT 1")
        return dict(rows[0]) if rows else None

    def finish_run(self, run_id: str, *, status: str, stop_reason: str | None, elapsed_s: float) -> None:
        best = self.best(1)
        self._exec("UPDATE runs SET status=?, stop_reason=?, elapsed_s=elapsed_s+?, updated_at=?, best_cid=?, "
                   "best_bleu4=? WHERE run_id=?",
                   (status, stop_reason, elapsed_s, time.time(), best[0]["cid"] if best else None,
                    best[0]["bleu4"] if best else None, run_id))

    def elapsed_before(self) -> float:
        rows = self._query("SELECT elapsed_s FROM runs LIMIT 1")
        return float(rows[0]["elapsed_s"] or 0.0) if rows else 0.0

    # ------------------------------------------------------------------ steps
    def step_begin(self, superstep: int, node: str, cid: str, attempt: int | None = None) -> int:
        """Open (or reopen, when a node is retried or redone after a crash) the row of one node execution;
        `superstep` is the node's step in its candidate's LangGraph thread (0 for the planning step).

        LLM calls already recorded for the step stay: they happened and cost tokens (the trace lists them in
        order, failed tries with their error)."""
        now = time.time()
        with self._lock:
            self.db.execute(
                "INSERT INTO steps (superstep, node, cid, attempt, status, started_at) VALUES (?,?,?,?,?,?) "
                "ON CONFLICT (superstep, node, cid) DO UPDATE SET status='running', started_at=excluded.started_at,"
                " finished_at=NULL, tokens=0, attempt=excluded.attempt",
                (superstep, node, cid, attempt, "running", now))
            row = self.db.execute("SELECT step FROM steps WHERE superstep=? AND node=? AND cid=?",
                                  (superstep, node, cid)).fetchone()
        return int(row["step"])

    def step_end(self, step: int, status: str, *, tokens: int = 0, refs: Mapping[str, str | None] | None = None,
                 detail: Mapping[str, Any] | None = None) -> None:
        refs = refs or {}
        self._exec("UPDATE steps SET status=?, finished_at=?, tokens=?, prompt_ref=?, reply_ref=?, reasoning_ref=?,"
                   " code_ref=?, log_ref=?, detail=? WHERE step=?",
                   (status, time.time(), tokens, refs.get("prompt"), refs.get("reply"), refs.get("reasoning"),
                    refs.get("code"), refs.get("log"), _json(dict(detail or {})), step))

    def mark_interrupted(self) -> int:
        """Steps and candidates left in flight by a stopped session: status interrupted (a resumed run redoes
        them and overwrites this). Returns the number of steps."""
        with self._lock:
            n = self.db.execute("UPDATE steps SET status='interrupted', finished_at=? WHERE status='running'",
                                (time.time(),)).rowcount
            self.db.execute("UPDATE candidates SET status='interrupted' WHERE status='planned'")
        return int(n)

    # ------------------------------------------------------------------ candidates
    def plan_candidate(self, e: Entry, *, mode: str, snippets: Sequence[str], step: int) -> None:
        """A new candidate's row, planned at run step `step` (its `dispatch` step)."""
        self._exec(
            "INSERT OR REPLACE INTO candidates (cid, idx, parent, origin, mode, status, debug_depth, decoder, "
            "snippets_json, planned_step, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (e.cid, e.index, e.parent, e.origin.value, mode, Status.PLANNED.value, e.debug_depth, e.decoder,
             _json(list(snippets)), step, time.time()))

    def record_candidate(self, cid: str, *, step: int, **fields: Any) -> None:
        """Final fields of a candidate (status, category, stage, bleu4, ...), recorded at run step `step`.

        A duplicate always names the twin whose network ran: twins settle in any order (one may be recorded as a
        duplicate of a twin that later turns out to be a duplicate itself), so the link is followed to its end, and
        twins already recorded as duplicates of this candidate follow it to the same owner.
        """
        if fields.get("status") == "duplicate" and fields.get("duplicate_of"):
            named = str(fields["duplicate_of"])
            owner = self._network_owner(named, cid)
            message = str(fields.get("message") or f"same network as {named}")
            fields.update(duplicate_of=owner, message=message.replace(named, owner))
            self._exec("UPDATE candidates SET duplicate_of=?, message=REPLACE(COALESCE(message, ''), ?, ?) "
                       "WHERE duplicate_of=? AND status='duplicate'", (owner, cid, owner, cid))
        self.update_candidate(cid, recorded_step=step, finished_at=time.time(), **fields)

    def _network_owner(self, cid: str, start: str) -> str:
        """Follow recorded duplicate links from `cid` to the twin that is not a duplicate (bounded, cycle-safe)."""
        seen = {start}
        while cid not in seen and len(seen) < 1000:
            seen.add(cid)
            row = self._query("SELECT duplicate_of FROM candidates WHERE cid=? AND status='duplicate'", (cid,))
            if not row or not row[0]["duplicate_of"]:
                break
            cid = str(row[0]["duplicate_of"])
        return cid

    def update_candidate(self, cid: str, **fields: Any) -> None:
        """Set some columns of a candidate's row; `prm` is stored as JSON."""
        if "prm" in fields:
            fields["prm_json"] = _json(fields.pop("prm") or {})
        cols = ", ".join(f"{k}=?" for k in fields)
        self._exec(f"UPDATE candidates SET {cols} WHERE cid=?", (*fields.values(), cid))

    def add_attempt(self, cid: str, attempt: int, *, made_by: str, code: str, prm: Mapping[str, Any],
                    summary: str, step: int) -> str:
        from nncaption.graph import rundir  # a resumed run's ids come from its (maybe edited) database

        rundir.require("cid", cid, "the candidate id")
        ref = self.put_blob(code)
        assert ref is not None
        rundir.write_file(self.run_dir, ["candidates", cid, f"attempt-{int(attempt)}.py"],
                          code.encode("utf-8", "surrogatepass"))
        self._exec("INSERT OR REPLACE INTO attempts VALUES (?,?,?,?,?,?,?,?)",
                   (cid, attempt, made_by, ref, _json(dict(prm)), summary, step, time.time()))
        self._exec("UPDATE candidates SET attempts=?, code_ref=?, prm_json=?, summary=? WHERE cid=?",
                   (attempt, ref, _json(dict(prm)), summary, cid))
        return ref

    def add_verdict(self, cid: str, attempt: int, stage: str, *, ok: bool, category: str | None, message: str,
                    line: int | None, step: int) -> None:
        self._exec("INSERT OR REPLACE INTO verdicts VALUES (?,?,?,?,?,?,?,?)",
                   (cid, attempt, stage, int(ok), category, message, line, step))

    def add_epochs(self, cid: str, epochs: Iterable[Mapping[str, Any]]) -> None:
        for ep in epochs:
            self._exec("INSERT OR REPLACE INTO epochs VALUES (?,?,?,?,?,?,?,?)",
                       (cid, ep.get("epoch"), ep.get("bleu1"), ep.get("bleu2"), ep.get("bleu3"), ep.get("bleu4"),
                        ep.get("train_loss"), ep.get("seconds")))

    def add_job(self, cid: str, attempt: int, kind: str, *, job_id: str | None, status: str,
                category: str | None, reused: bool, job_dir: str | None, seconds: float, step: int,
                placement: str = "") -> None:
        self._exec("INSERT OR REPLACE INTO sandbox_jobs VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                   (cid, attempt, kind, job_id, status, category, int(reused), job_dir, seconds, step, placement))

    def add_llm_call(self, step: int, cid: str, ex: Any) -> dict[str, str | None]:
        """Store one `LLMExchange` (messages, reply and reasoning as blobs); returns its blob references."""
        refs = {"prompt": self.put_blob(_json(ex.messages)), "reply": self.put_blob(ex.reply or ""),
                "reasoning": self.put_blob(ex.reasoning) if ex.reasoning else None}
        u = ex.usage
        self._exec(
            "INSERT INTO llm_calls (step, cid, role, endpoint, model, model_returned, ok, error, prompt_tokens, "
            "completion_tokens, reasoning_tokens, total_tokens, latency_s, queued_s, http_attempts, finish_reason, "
            "messages_ref, reply_ref, reasoning_ref, started_at, finished_at) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (step, cid, ex.role, ex.endpoint, ex.model, getattr(ex, "model_returned", None), int(ex.ok), ex.error,
             u.prompt_tokens, u.completion_tokens, u.reasoning_tokens, u.total_tokens, ex.latency_s, ex.queued_s,
             ex.attempts, ex.finish_reason, refs["prompt"], refs["reply"], refs["reasoning"], ex.started_at,
             ex.finished_at))
        return refs

    def claim_dedup(self, key: str, cid: str, idx: int) -> str:
        """Claim a dedup key; returns the candidate that owns it, `cid` itself when it is to be trained.

        The owner is the first claimant recorded as scored or failed (that network ran; a `job-error` means the
        machine could not run it, so it owns nothing), else the lowest index among the claimants still on their way.
        Asked again once training ends, the rule settles twins that reached training together the same way
        whatever order their jobs took (the service ran the job once).
        """
        self._exec("INSERT OR IGNORE INTO dedup VALUES (?,?,?)", (key, cid, idx))
        done = self._query(
            "SELECT d.cid FROM dedup d JOIN candidates c ON c.cid = d.cid WHERE d.key=? AND c.status IN "
            "('scored', 'failed') AND COALESCE(c.category, '') <> 'job-error' ORDER BY c.recorded_step, d.idx LIMIT 1",
            (key,))
        if done:
            return str(done[0]["cid"])
        row = self._query(
            "SELECT d.cid FROM dedup d JOIN candidates c ON c.cid = d.cid WHERE d.key=? AND (d.cid=? OR c.status "
            "NOT IN ('scored', 'failed', 'duplicate', 'interrupted')) ORDER BY d.idx LIMIT 1", (key, cid))
        return str(row[0]["cid"]) if row else cid

    # ------------------------------------------------------------------ journal
    def journal(self, before_step: int | None = None) -> list[Entry]:
        """The candidates as they stood before run step `before_step` (all of them when None).

        Steps are numbered in order of start across the whole run. A candidate planned at or after that step
        is left out; one recorded at or after it is still `planned`: so a node (a step redone after a crash
        included) sees what the steps before it wrote, not what happened later.
        """
        limit = before_step if before_step is not None else 1 << 62
        rows = self._query("SELECT * FROM candidates WHERE planned_step < ? ORDER BY idx", (limit,))
        curves: dict[str, list[float]] = {}
        for r in self._query("SELECT cid, bleu4 FROM epochs WHERE bleu4 IS NOT NULL ORDER BY cid, epoch"):
            curves.setdefault(r["cid"], []).append(float(r["bleu4"]))
        out = []
        for r in rows:
            final = r["recorded_step"] is not None and r["recorded_step"] < limit
            out.append(Entry(
                cid=r["cid"], index=r["idx"], origin=Origin(r["origin"]), parent=r["parent"],
                status=Status(r["status"]) if final else Status.PLANNED,
                category=r["category"] if final else None, stage=r["stage"] if final else None,
                bleu4=r["bleu4"] if final else None,
                bleu4_per_epoch=tuple(curves.get(r["cid"], ())) if final and r["bleu4"] is not None else (),
                summary=r["summary"] or "", prm=json.loads(r["prm_json"] or "{}"),
                attempts=r["attempts"] or 0, fix_rounds=r["fix_rounds"] or 0, debug_depth=r["debug_depth"] or 0,
                traceback_tail=(r["traceback_tail"] or "") if final else "",
                message=(r["message"] or "") if final else "", code_ref=r["code_ref"],
                decoder=r["decoder"], duplicate_of=r["duplicate_of"],
                params=r["params"] if final else None,  # final only: what a policy sees is what it saw then
                descriptor=self._descriptor(r["code_ref"], r["summary"] or "", r["decoder"], r["params"])
                if final else None))
        return out

    def _descriptor(self, code_ref: str | None, summary: str, decoder: str | None, params: int | None) -> Descriptor:
        """A candidate's descriptor, derived from what the store holds (cached: a pure function of these four)."""
        key = (code_ref, summary, decoder, params)
        if key not in self._descriptors:
            try:
                code = self.blob(code_ref) if code_ref else None
            except KeyError:
                code = None
            self._descriptors[key] = describe(code, summary=summary, decoder=decoder, params=params)
        return self._descriptors[key]

    def failed_attempts(self, before_step: int | None = None) -> list[AttemptFailure]:
        """Every rejected attempt (static, review, smoke or train verdict) of the steps before `before_step`."""
        limit = before_step if before_step is not None else 1 << 62
        rows = self._query(
            "SELECT v.cid, v.attempt, v.stage, v.category, v.message, v.step, a.summary FROM verdicts v "
            "LEFT JOIN attempts a ON a.cid = v.cid AND a.attempt = v.attempt "
            "WHERE v.ok = 0 AND v.step < ? ORDER BY v.step, v.cid, v.attempt", (limit,))
        return [AttemptFailure(cid=r["cid"], attempt=r["attempt"], stage=r["stage"], category=r["category"] or "",
                               text=r["message"] or "", summary=r["summary"] or "", order=r["step"])
                for r in rows]

    # ------------------------------------------------------------------ answers
    def best(self, k: int = 5) -> list[dict[str, Any]]:
        return [dict(r) for r in self._query(
            "SELECT cid, bleu4, lemur_bleu4, summary, origin, parent, code_ref FROM candidates "
            "WHERE status='scored' AND bleu4 IS NOT NULL ORDER BY bleu4 DESC, idx LIMIT ?", (k,))]

    def failures_by_category(self) -> dict[str, int]:
        return {r[0] or "unknown": r[1] for r in self._query(
            "SELECT category, COUNT(*) FROM candidates WHERE status='failed' GROUP BY category ORDER BY 2 DESC")}

    def tokens_per_role(self) -> dict[str, dict[str, float]]:
        return {r["role"]: {"calls": r["calls"], "tokens": r["tokens"] or 0, "latency_s": r["lat"] or 0.0}
                for r in self._query("SELECT role, COUNT(*) AS calls, SUM(total_tokens) AS tokens, "
                                     "SUM(latency_s) AS lat FROM llm_calls GROUP BY role")}

    def candidate_rows(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._query("SELECT * FROM candidates ORDER BY idx")]

    def candidate(self, cid: str) -> dict[str, Any] | None:
        rows = self._query("SELECT * FROM candidates WHERE cid=?", (cid,))
        return dict(rows[0]) if rows else None

    def final_categories(self, since_step: int = 0) -> list[str | None]:
        """The category of every candidate finished at run step `since_step` or later, in the order they were
        recorded (None when scored)."""
        return [r[0] for r in self._query("SELECT category FROM candidates WHERE recorded_step >= ? AND "
                                          "status IN ('scored', 'failed', 'duplicate') ORDER BY recorded_step",
                                          (since_step,))]

    def last_step(self) -> int:
        rows = self._query("SELECT COALESCE(MAX(step), 0) FROM steps")
        return int(rows[0][0]) if rows else 0

    def reopen_candidate(self, cid: str) -> None:
        """A finished candidate back in flight (its failure said nothing about it: the endpoint or the machine was
        down); its attempts, verdicts and steps stay as history."""
        self._exec("UPDATE candidates SET status='planned', category=NULL, stage=NULL, message=NULL, "
                   "traceback_tail=NULL, recorded_step=NULL, finished_at=NULL WHERE cid=?", (cid,))

    def tokens_used(self) -> int:
        rows = self._query("SELECT COALESCE(SUM(tokens), 0) FROM steps")
        return int(rows[0][0]) if rows else 0

    def run_counts(self) -> dict[str, int]:
        """Whole-run counts (all sessions): candidates by status, repaired ones, tokens and LLM calls."""
        counts = {"planned": 0, "finished": 0, "scored": 0, "failed": 0, "duplicate": 0, "interrupted": 0,
                  "repaired": 0}
        for r in self._query("SELECT status, COUNT(*) FROM candidates GROUP BY status"):
            counts[str(r[0])] = int(r[1])
        counts["finished"] = counts["scored"] + counts["failed"] + counts["duplicate"]
        counts["repaired"] = int(self._query("SELECT COUNT(*) FROM candidates WHERE status='scored' AND "
                                             "(fix_rounds > 0 OR origin='fix')")[0][0])
        counts["tokens"] = self.tokens_used()
        counts["llm_calls"] = int(self._query("SELECT COUNT(*) FROM llm_calls")[0][0])
        return counts
