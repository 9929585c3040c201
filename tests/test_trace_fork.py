"""`nncaption trace RUN_DIR --fork N --llm-base-url ... --llm-model ...` on a real run.

The fork continues the baseline run from step N (the last candidate's design: its
thread rewinds to the checkpoint before it) against the offline composer endpoint
(real HTTP on 127.0.0.1) into a new run directory: the steps before N are identical
to the original's, the later design/review/fix steps name the new endpoint's model,
and the original's databases hash the same.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest
from run_fixture import run_cli

from nncaption.agents.offline_server import OfflineComposerServer

FORK_MODEL = "fork-test-model"


pytestmark = pytest.mark.sandbox  # every test here uses real_run (a real search run, tests/conftest.py)


def hashes(run_dir: Path) -> dict[str, str]:
    return {n: hashlib.sha256((run_dir / n).read_bytes()).hexdigest() for n in ("results.sqlite", "checkpoints.sqlite")}


def rows(run_dir: Path, sql: str) -> list[tuple]:
    db = sqlite3.connect(f"file:{run_dir / 'results.sqlite'}?mode=ro", uri=True)
    try:
        return [tuple(r) for r in db.execute(sql)]
    finally:
        db.close()


def test_fork_onto_another_endpoint(real_run: Path, tmp_path: Path) -> None:
    before = hashes(real_run)
    files_before = sorted(p.relative_to(real_run) for p in real_run.rglob("*") if "report" not in p.parts)
    steps = rows(real_run, "SELECT step, superstep, node, cid, attempt, status, code_ref FROM steps ORDER BY step")
    last = rows(real_run, "SELECT cid FROM candidates ORDER BY idx DESC LIMIT 1")[0][0]
    n, superstep = next((s[0], s[1]) for s in steps if s[3] == last and s[2] == "design")
    into = tmp_path / "forked"
    with OfflineComposerServer(seed=5) as server:
        proc = run_cli(["trace", str(real_run), "--fork", str(n), "--into", str(into), "--llm-base-url",
                        server.base_url, "--llm-model", FORK_MODEL, "--json"], timeout=900)
    [line] = proc.stdout.strip().splitlines()  # --json: exactly one JSON object on stdout
    out = json.loads(line)
    assert out["ok"] is True and out["run_dir"] == str(into) and out["superstep"] == superstep
    assert out["checkpoint_id"] and out["candidate"] == last

    # the original is untouched
    assert hashes(real_run) == before
    assert sorted(p.relative_to(real_run) for p in real_run.rglob("*") if "report" not in p.parts
                  and not p.name.endswith(("-wal", "-shm"))) == [p for p in files_before
                                                                  if not p.name.endswith(("-wal", "-shm"))]

    # before the fork point: identical steps; from it on: the new endpoint's model
    new = rows(into, "SELECT step, superstep, node, cid, attempt, status, code_ref FROM steps ORDER BY step")
    kept = [s for s in steps if s[0] < n]
    assert new[: len(kept)] == kept
    later = [s for s in new if s[0] >= n]
    assert later and any(s[2] == "design" and s[3] == last for s in later) and later[0][0] > kept[-1][0]
    calls = rows(into, f"SELECT step, role, model, model_returned FROM llm_calls WHERE step >= {later[0][0]}")
    assert calls and {c[2] for c in calls} == {FORK_MODEL}
    assert {c[3] for c in calls} == {"nncaption-offline-composer"}
    assert not rows(into, f"SELECT * FROM llm_calls WHERE step < {later[0][0]}")  # the baseline part had none
    assert rows(into, "SELECT status FROM runs") == [("finished",)]
    assert rows(into, f"SELECT status FROM candidates WHERE cid='{last}'")[0][0] in ("scored", "failed", "duplicate")
    config = json.loads((into / "config.json").read_text())
    assert config["agents"]["kind"] == "llm" and config["agents"]["llm"]["shared"]["model"] == FORK_MODEL
    assert json.loads((into / "fork.json").read_text())["source"] == str(real_run.resolve())

    # the new run's step shows both model names
    redesign = next(s for s in later if s[2] == "design" and s[3] == last)
    design = run_cli(["trace", str(into), "--step", str(redesign[0])]).stdout
    assert f"model requested {FORK_MODEL}" in design and "model that answered nncaption-offline-composer" in design
    assert "-- prompt message [system]" in design or "-- prompt message [user]" in design
    runs = json.loads(run_cli(["runs", str(tmp_path), "--json"]).stdout)
    assert any(FORK_MODEL in m for r in runs["runs"] for m in r["models"])


def test_fork_refuses_unknown_step_and_used_folder(real_run: Path, tmp_path: Path) -> None:
    bad = run_cli(["trace", str(real_run), "--fork", "99999", "--into", str(tmp_path / "x"), "--json"], check=False)
    assert bad.returncode == 2 and json.loads(bad.stdout)["category"] == "usage"
    used = tmp_path / "used"
    used.mkdir()
    (used / "something").write_text("x")
    bad = run_cli(["trace", str(real_run), "--fork", "1", "--into", str(used)], check=False)
    assert bad.returncode == 2 and "not empty" in bad.stderr
    bad = run_cli(["trace", str(real_run), "--llm-model", "m"], check=False)
    assert bad.returncode == 2 and "--fork" in bad.stderr


def test_fork_at_a_planning_step_plans_that_candidate_again(real_run: Path, tmp_path: Path) -> None:
    steps = rows(real_run, "SELECT step, node, cid, attempt, status FROM steps ORDER BY step")
    last = rows(real_run, "SELECT cid FROM candidates ORDER BY idx DESC LIMIT 1")[0][0]
    n = next(s[0] for s in steps if s[1] == "dispatch" and s[2] == last)
    into = tmp_path / "replanned"
    out = json.loads(run_cli(["trace", str(real_run), "--fork", str(n), "--into", str(into), "--json"],
                             timeout=900).stdout)
    assert out["ok"] is True and out["candidate"] == last and out["checkpoint_id"] is None
    new = rows(into, "SELECT step, node, cid, attempt, status FROM steps ORDER BY step")
    kept = [s for s in steps if s[0] < n]
    assert new[: len(kept)] == kept
    assert [s[1] for s in new if s[2] == last][:2] == ["dispatch", "design"]  # planned again, then made
    assert all(s[0] >= n for s in new if s[2] == last)
    assert rows(into, "SELECT status FROM runs") == [("finished",)]
    assert rows(into, "SELECT COUNT(*) FROM candidates") == rows(real_run, "SELECT COUNT(*) FROM candidates")
    assert rows(into, f"SELECT status FROM candidates WHERE cid='{last}'")[0][0] in ("scored", "failed", "duplicate")
