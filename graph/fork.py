"""Fork a run: continue it from step N, possibly on another LLM endpoint, into a NEW run directory.

LangGraph time travel on a copy. Every candidate is its own thread (thread_id =
its id); step N is candidate C's node at step S of C's thread, so C continues from
the checkpoint saved after its step S-1 (its `checkpoint_id` is looked up in the
original's checkpoint database, read-only). The new directory gets

- consistent copies of both databases (SQLite's backup API from read-only
  connections, so a running original is fine), the blobs (hard links: blobs are
  immutable) and copies of the candidate files and sandbox jobs;
- in the copied results database: everything steps N and later wrote (steps, LLM
  calls, attempts, verdicts, jobs, candidates planned from N on, the final fields
  of candidates recorded from N on) removed, step numbering continuing;
- in the copied checkpoint database: the threads of the dropped candidates
  removed, and every kept candidate that had steps from N on rewound to the
  checkpoint before its first such step, so each of those steps runs again;
- config.json with the new endpoint, and fork.json saying where it came from.

Then `SearchRun(..., resume=True)` continues the copy. Steps before N are
identical to the original's; later ones are made by the new endpoint. The
original is never opened for writing: its databases hash the same before and
after.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import shutil
import sqlite3
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nncaption.graph import rundir
from nncaption.graph.trace import CHECKPOINT_DB, CONFIG_FILE, RESULTS_DB, RunReader, TraceLookupError, connect_ro
from nncaption.netapi.errors import ConfigError, UsageError
from nncaption.netapi.safetext import safe_text

log = logging.getLogger(__name__)

LEGACY_THREAD_ID = "search"  # the one thread of runs made before the per-candidate scheduler
FORK_FILE = "fork.json"
Masker = Callable[[Any], dict[str, Any]]


def fork_checkpoint(run_dir: Path, cid: str, thread_step: int) -> str:
    """The checkpoint of `cid`'s thread saved after its step `thread_step - 1` (read-only): where that step began."""
    db = connect_ro(run_dir / CHECKPOINT_DB)
    try:
        rows = db.execute("SELECT checkpoint_id, metadata FROM checkpoints WHERE thread_id=? AND checkpoint_ns='' "
                          "ORDER BY checkpoint_id", (cid,)).fetchall()
        legacy = db.execute("SELECT 1 FROM checkpoints WHERE thread_id=? LIMIT 1", (LEGACY_THREAD_ID,)).fetchone()
    finally:
        db.close()
    if legacy is not None and not rows:
        raise UsageError(f"{run_dir} was made by the superstep engine (one thread for the whole run)",
                         "fork it with the nncaption version that made it, or start a new run")
    found = None
    for r in rows:
        try:
            meta = json.loads(r["metadata"])
        except (TypeError, ValueError, RecursionError):
            log.debug("checkpoint %s: unreadable metadata", r["checkpoint_id"], exc_info=True)
            continue
        if isinstance(meta, dict) and meta.get("step") == thread_step - 1:
            found = str(r["checkpoint_id"])  # the latest one wins (a resumed run may have redone the step)
    if found is None:
        raise TraceLookupError(f"no checkpoint of {cid} before its step {thread_step} in {run_dir / CHECKPOINT_DB}",
                               "fork from a step of a run that checkpointed it (see `nncaption trace RUN_DIR`)")
    return found


def _backup(src: Path, dst: Path) -> None:
    """A consistent copy of a SQLite database, read from a read-only connection."""
    source = connect_ro(src)
    target = sqlite3.connect(dst)
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()


def _copy_file(src: Path, dst: Path, *, link: bool) -> None:
    """One regular file (hard link when `link`), never a link, FIFO or device: those are skipped."""
    st = os.lstat(src)
    if not stat.S_ISREG(st.st_mode):
        log.warning("fork: not copying %s (not a regular file)", safe_text(str(src), 300))
        return
    if link:
        try:
            os.link(src, dst, follow_symlinks=False)
            return
        except OSError:
            pass
    data = rundir.read_bytes(src.parent, src.name, max(st.st_size, 1))
    if data is not None:
        rundir.write_file(dst.parent, dst.name, data)


def _copy_tree(src: Path, dst: Path, *, link: bool = False, skip: tuple[str, ...] = ()) -> None:
    """Folders and regular files under `src`, walked without following links (what is not either is skipped)."""
    os.mkdir(dst)
    with os.scandir(src) as it:
        for entry in it:
            if entry.name in skip:
                continue
            if entry.is_dir(follow_symlinks=False):
                _copy_tree(Path(entry.path), dst / entry.name, link=link, skip=skip)
            elif entry.is_file(follow_symlinks=False):
                _copy_file(Path(entry.path), dst / entry.name, link=link)
            else:
                log.warning("fork: not copying %s (a link or a special file)", safe_text(entry.path, 300))


def _copy_blobs(src: Path, dst: Path) -> None:
    """Blobs whose folder and name have the blob format (`ab/abcd...`), hard-linked; nothing else."""
    os.mkdir(dst)
    with os.scandir(src) as it:
        for sub in it:
            if not (len(sub.name) == 2 and sub.is_dir(follow_symlinks=False)):
                continue
            os.mkdir(dst / sub.name)
            with os.scandir(sub.path) as files:
                for f in files:
                    if rundir.ref(f.name) and f.name[:2] == sub.name and f.is_file(follow_symlinks=False):
                        _copy_file(Path(f.path), dst / sub.name / f.name, link=True)


def _real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def copy_run(src: Path, dst: Path) -> None:
    """Databases (backup API), blobs (hard links), candidate files and sandbox jobs (copies); links are skipped."""
    dst.mkdir(parents=True)
    _backup(src / RESULTS_DB, dst / RESULTS_DB)
    _backup(src / CHECKPOINT_DB, dst / CHECKPOINT_DB)
    if _real_dir(src / "blobs"):
        _copy_blobs(src / "blobs", dst / "blobs")
    for name in ("candidates", "jobs"):
        if _real_dir(src / name):
            _copy_tree(src / name, dst / name, skip=("lock", ".trash"))


def trim_checkpoints(db_path: Path, rewind: dict[str, str], dropped: list[str]) -> int:
    """In a COPY: rewind each thread in `rewind` (cid -> checkpoint id) by dropping the checkpoints after it and
    the writes made from it (they are redone), and remove the threads of the `dropped` candidates."""
    db = sqlite3.connect(db_path)
    n = 0
    try:
        with db:
            for cid, checkpoint_id in rewind.items():
                n += db.execute("DELETE FROM checkpoints WHERE thread_id=? AND checkpoint_id > ?",
                                (cid, checkpoint_id)).rowcount
                db.execute("DELETE FROM writes WHERE thread_id=? AND checkpoint_id >= ?", (cid, checkpoint_id))
            for cid in dropped:
                n += db.execute("DELETE FROM checkpoints WHERE thread_id=?", (cid,)).rowcount
                db.execute("DELETE FROM writes WHERE thread_id=?", (cid,))
    finally:
        db.close()
    return int(n)


def rewind_points(src: Path, step: int) -> tuple[dict[str, str], list[str]]:
    """(cid -> checkpoint to rewind to, candidates to drop) for a fork at `step`, read from the original."""
    with RunReader(src) as reader:
        dropped = [r["cid"] for r in reader.rows("SELECT cid FROM candidates WHERE planned_step >= ?", (step,))]
        first = reader.rows("SELECT cid, MIN(superstep) AS s FROM steps WHERE step >= ? AND node <> 'dispatch' "
                           "AND cid <> '' GROUP BY cid", (step,))
    rewind = {r["cid"]: fork_checkpoint(src, r["cid"], int(r["s"])) for r in first if r["cid"] not in dropped}
    return rewind, dropped


def trim_results(run_dir: Path, step: int) -> dict[str, int]:
    """In a COPY: remove what steps >= `step` wrote, so the journal is what the fork point saw."""
    db = sqlite3.connect(run_dir / RESULTS_DB)
    removed: dict[str, int] = {}
    try:
        with db:
            db.execute("CREATE TEMP TABLE gone AS SELECT step FROM steps WHERE step >= ?", (step,))
            for table in ("llm_calls", "attempts", "verdicts", "sandbox_jobs"):
                removed[table] = db.execute(f"DELETE FROM {table} WHERE step IN (SELECT step FROM gone)").rowcount
            removed["steps"] = db.execute("DELETE FROM steps WHERE step >= ?", (step,)).rowcount
            new = [r[0] for r in db.execute("SELECT cid FROM candidates WHERE planned_step >= ?", (step,))]
            for cid in new:
                for table in ("epochs", "dedup", "attempts", "verdicts", "sandbox_jobs", "llm_calls"):
                    db.execute(f"DELETE FROM {table} WHERE cid=?", (cid,))
                if rundir.cid(cid) and _real_dir(run_dir / "candidates" / cid):  # never a path or a link
                    shutil.rmtree(run_dir / "candidates" / cid, ignore_errors=True)
            removed["candidates"] = db.execute("DELETE FROM candidates WHERE planned_step >= ?",
                                               (step,)).rowcount
            trained = {r[0] for r in db.execute("SELECT DISTINCT cid FROM steps WHERE node='train'")}
            for (cid,) in db.execute("SELECT cid FROM candidates").fetchall():
                if cid not in trained:
                    db.execute("DELETE FROM epochs WHERE cid=?", (cid,))
                    db.execute("DELETE FROM dedup WHERE cid=?", (cid,))
                    db.execute("UPDATE candidates SET dedup_key=NULL WHERE cid=?", (cid,))
                last = db.execute("SELECT attempt, code_ref, prm_json, summary FROM attempts WHERE cid=? "
                                  "ORDER BY attempt DESC LIMIT 1", (cid,)).fetchone()
                db.execute("UPDATE candidates SET attempts=?, code_ref=?, prm_json=COALESCE(?, prm_json), "
                           "summary=COALESCE(?, summary) WHERE cid=?",
                           (last[0] if last else 0, last[1] if last else None, last[2] if last else None,
                            last[3] if last else None, cid))
                folder = run_dir / "candidates" / cid if rundir.cid(cid) else None
                for f in folder.glob("attempt-*.py") if folder and _real_dir(folder) else []:
                    n = f.stem.split("-", 1)[1]
                    if not n.isdigit() or not last or int(n) > int(last[0] or 0):
                        f.unlink()
            removed["reopened"] = db.execute(
                "UPDATE candidates SET status='planned', category=NULL, stage=NULL, message=NULL, "
                "traceback_tail=NULL, bleu4=NULL, lemur_bleu4=NULL, params=NULL, duplicate_of=NULL, job_id=NULL, "
                "fix_rounds=0, recorded_step=NULL, finished_at=NULL WHERE recorded_step >= ?", (step,)).rowcount
            db.execute("UPDATE candidates SET status='planned' WHERE recorded_step IS NULL")  # in flight at the fork
            db.execute("UPDATE sqlite_sequence SET seq=(SELECT COALESCE(MAX(step), 0) FROM steps) WHERE name='steps'")
    finally:
        db.close()
    return removed


def forked_config(config: dict[str, Any], llm_base_url: str | None, llm_model: str | None) -> dict[str, Any]:
    """The original's recorded config with the new endpoint (every role) and no replay."""
    data = json.loads(json.dumps(config))
    agents = data.setdefault("agents", {})
    agents["replay"] = None
    if llm_base_url or llm_model:
        agents["kind"] = "llm"
        llm = agents.setdefault("llm", {})
        shared = llm.setdefault("shared", {})
        if llm_base_url:
            shared["base_url"] = llm_base_url
        if llm_model:
            shared["model"] = llm_model
        for role in ("designer", "reviewer", "fixer"):
            llm[role] = None
    return dict(data)


def _new_dir(src: Path, step: int) -> Path:
    return src.parent / f"{src.name}-fork{step}-{secrets.token_hex(2)}"


def fork_run(run_dir: Path, step: int, *, new_dir: Path | None = None, llm_base_url: str | None = None,
             llm_model: str | None = None, json_logs: bool = False, mask: Masker | None = None,
             emit: Callable[[dict[str, Any]], None] | None = None, trust_config: bool = False) -> dict[str, Any]:
    """Copy `run_dir` up to step `step` into a new run directory and continue it there.

    The original's endpoints, key variables, sandbox and folders are used only when this user made it (or
    `trust_config`); otherwise `llm_base_url` replaces all of them by the defaults, or the fork is refused
    (graph/runtrust.py)."""
    from nncaption.graph import runtrust
    from nncaption.graph.runner import SearchRun
    from nncaption.graph.settings import RunSettings

    src = Path(run_dir).expanduser().resolve()
    with RunReader(src) as reader:
        row = reader.one("SELECT superstep, node, cid FROM steps WHERE step=?", (step,))
        if row is None:
            raise TraceLookupError(f"step {step} is not in {src}", "list the steps with `nncaption trace RUN_DIR`")
        superstep, node, cid = int(row["superstep"]), str(row["node"]), str(row["cid"])
        config = reader.config()
    if not config:
        raise UsageError(f"{src} has no readable {CONFIG_FILE}", "fork a run made by `nncaption run`")
    rewind, dropped = rewind_points(src, step)
    checkpoint_id = rewind.get(cid) if node != "dispatch" else None  # a planning step: that candidate is re-planned
    dst = (new_dir.expanduser().resolve() if new_dir else _new_dir(src, step))
    if dst.exists() and any(dst.iterdir()):
        raise UsageError(f"{dst} already exists and is not empty", "give --into a new folder")
    if dst.exists():
        dst.rmdir()
    if not trust_config and not runtrust.is_trusted(src, config):
        if not llm_base_url:
            runtrust.check(src, config, trust=False, action="--fork")
        log.warning("fork: %s was not started here; its endpoints, key variables, sandbox and folders are not used",
                    safe_text(str(src), 300))
        config = runtrust.stripped(config)
    elif trust_config:
        runtrust.remember(src, config)
    data = forked_config(config, llm_base_url, llm_model)
    try:
        settings = RunSettings.model_validate(data)
    except ValueError as e:
        raise ConfigError(f"the forked configuration is invalid: {e}", "check --llm-base-url / --llm-model") from None
    masked = mask(settings) if mask else settings.masked_dump()
    copy_run(src, dst)
    trim_checkpoints(dst / CHECKPOINT_DB, rewind, dropped)
    removed = trim_results(dst, step)
    _retarget_run_row(dst, settings, masked)
    rundir.write_file(dst, CONFIG_FILE, json.dumps(masked, indent=2, sort_keys=True) + "\n")
    runtrust.remember(dst, masked)
    origin = {"source": str(src), "step": step, "superstep": superstep, "candidate": cid or None,
              "checkpoint_id": checkpoint_id,
              "llm_base_url": llm_base_url, "llm_model": llm_model, "created_at": time.time(), "removed": removed}
    rundir.write_file(dst, FORK_FILE, json.dumps(origin, indent=2, sort_keys=True) + "\n")
    search = SearchRun(settings, dst, emit=emit or _log_event, resume=True, masked_config=masked)
    outcome = asyncio.run(search.run())
    return {"run_dir": str(dst), "source": str(src), "step": step, "superstep": superstep, "candidate": cid or None,
            "checkpoint_id": checkpoint_id, "status": outcome.status, "stop_reason": outcome.stop_reason,
            "best": outcome.best, "counts": outcome.counts, "removed": removed}


def _retarget_run_row(dst: Path, settings: Any, masked: dict[str, Any]) -> None:
    a = settings.agents
    names = ({r: "baseline:random-search" for r in ("designer", "reviewer", "fixer")} if a.kind == "baseline" else
             {r: f"llm:{a.llm.for_role(r).model}" for r in ("designer", "reviewer", "fixer")})
    db = sqlite3.connect(dst / RESULTS_DB)
    try:
        with db:
            db.execute("UPDATE runs SET run_id=?, status='running', stop_reason=NULL, best_cid=NULL, best_bleu4=NULL,"
                       " config_json=?, designer=?, reviewer=?, fixer=?, created_at=?, updated_at=?",
                       (dst.name, json.dumps(masked, sort_keys=True), names["designer"], names["reviewer"],
                        names["fixer"], time.time(), time.time()))
    finally:
        db.close()


def _log_event(event: dict[str, Any]) -> None:
    log.info("fork: %s", event.get("event"))
