"""Crash safety: `nncaption run` killed with SIGKILL at several points, resumed each time, loses nothing.

A reference run goes through uninterrupted. A second run with the same seed is killed (the whole process group,
as a machine crash would) when a training starts, right after a candidate is scored, and when a smoke check
starts; `nncaption run --resume RUN_DIR` continues it each time. At the end: every candidate is final, no
finished training ran twice (a training that finished is only ever reused), and the leaderboard equals the
reference's. Each resumed session announces itself once (`resumed`, with the whole run's counts) and never
announces a candidate that finished before the kill again.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

ARGS = ["--candidates", "3", "--concurrency", "2", "--seed", "1", "--fault-rate", "0.3", "--epochs", "1",
        "--max-train-batches", "2", "--max-val-images", "8", "--threads", "1", "--json-logs"]


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "nncaption.cli", "run", *args]


def run_until(cmd: list[str], stop_at: Any = None, timeout: float = 600) -> tuple[int | None, list[dict[str, Any]]]:
    """Run `cmd` reading its JSON events; SIGKILL its process group at the first event where `stop_at` is true."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    events: list[dict[str, Any]] = []
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            event = json.loads(line)
            events.append(event)
            if stop_at is not None and stop_at(event):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
                return None, events
        return proc.wait(timeout=timeout), events
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def leaderboard(run_dir: Path) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(run_dir / "results.sqlite")
    try:
        return list(db.execute("SELECT cid, parent, origin, status, category, bleu4, fix_rounds, code_ref "
                               "FROM candidates ORDER BY idx"))
    finally:
        db.close()


def test_sigkill_at_several_points_then_resume(tiny_dataset: Any, tmp_path: Path) -> None:
    prepared = ["--prepared", str(tiny_dataset.root)]
    code, ref_events = run_until(_cmd(*ARGS, *prepared, "--run-dir", str(tmp_path / "reference")))
    assert code == 0, ref_events[-3:]
    reference = leaderboard(tmp_path / "reference")
    assert any(row[3] == "scored" for row in reference)

    run_dir = tmp_path / "killed"
    kills = [
        lambda e: e["event"] == "node_started" and e["node"] == "train",
        lambda e: e["event"] == "candidate_scored",
        lambda e: e["event"] == "node_started" and e["node"] == "smoke",
    ]
    sessions: list[list[dict[str, Any]]] = []
    code, events = run_until(_cmd(*ARGS, *prepared, "--run-dir", str(run_dir)), kills[0])
    assert code is None, "the run ended before the first kill point"
    sessions.append(events)
    for stop_at in kills[1:]:
        code, events = run_until(_cmd("--resume", str(run_dir), "--json-logs"), stop_at)
        sessions.append(events)
        if code is not None:
            break
    if code is None:
        code, events = run_until(_cmd("--resume", str(run_dir), "--json-logs"))
        sessions.append(events)
    assert code == 0, sessions[-1][-3:]
    assert len(sessions) >= 3, "fewer than two kills happened before the run ended"

    assert leaderboard(run_dir) == reference
    # none trained twice: a training that finished (not reused) happens once per job over all sessions
    trained = [e["job_id"] for s in sessions for e in s
               if e["event"] == "node_finished" and e["node"] == "train" and e.get("job_id") and not e.get("reused")]
    assert len(trained) == len(set(trained)), trained
    # finished candidates are never redone after a resume
    for i, later in enumerate(sessions[1:], start=1):
        done_before = {e["candidate"] for s in sessions[:i] for e in s
                       if e["event"] in ("candidate_scored", "candidate_failed")}
        designed_again = {e["candidate"] for e in later if e["event"] == "node_started" and e["node"] == "design"}
        assert not (done_before & designed_again)
    # each resumed session says so once, with the whole run's counts, and announces no earlier candidate again
    for i, later in enumerate(sessions[1:], start=1):
        announced = {e["candidate"] for s in sessions[:i] for e in s
                     if e["event"] in ("candidate_scored", "candidate_failed")}
        [resumed] = [e for e in later if e["event"] == "resumed"]
        assert resumed["counts"]["finished"] == len(announced), (resumed, announced)
        assert resumed["funnel"]["designed"] >= len(announced)
        again = {e["candidate"] for e in later if e["event"] in ("candidate_scored", "candidate_failed")}
        assert not (announced & again), announced & again
    assert not any(e["event"] == "resumed" for e in sessions[0])
    final = [e for e in sessions[-1] if e["event"] == "run_finished"]
    assert final and final[0]["status"] == "finished"
