"""`nncaption runs` and `nncaption trace` on a real run (made once per session by tests/run_fixture.py).

Every command runs as a real subprocess; the run's databases must hash the same
afterwards (the trace commands open them read-only). A second part starts a real
run, traces it while it is going, kills it with SIGKILL and traces it again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from run_fixture import RUN_ARGS, prepare_tiny, run_cli

pytestmark = pytest.mark.sandbox  # every test here reads or runs a real search run (real_run: tests/conftest.py)


def db_hashes(run_dir: Path) -> dict[str, str]:
    return {name: hashlib.sha256((run_dir / name).read_bytes()).hexdigest()
            for name in ("results.sqlite", "checkpoints.sqlite")}


def steps_of(run_dir: Path) -> list[tuple[int, str, str, int | None, str]]:
    db = sqlite3.connect(f"file:{run_dir / 'results.sqlite'}?mode=ro", uri=True)
    try:
        return [tuple(r) for r in db.execute("SELECT step, node, cid, attempt, status FROM steps ORDER BY step")]
    finally:
        db.close()


def first(steps: list[tuple[int, str, str, int | None, str]], node: str | tuple[str, ...], status: str) -> tuple:
    """The first step of `node` with `status` (the fixture's planted faults make every kind appear)."""
    nodes = (node,) if isinstance(node, str) else node
    found = [s for s in steps if s[1] in nodes and s[4] == status]
    if not found:
        pytest.fail(f"the fixture run has no {status} {'/'.join(nodes)} step: {steps}")
    return found[0]


def one_json(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert len(lines) == 1, stdout[:2000]
    data = json.loads(lines[0], parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert isinstance(data, dict)
    return data


def test_runs_lists_the_run(real_run: Path) -> None:
    before = db_hashes(real_run)
    data = one_json(run_cli(["runs", str(real_run.parent), "--json"]).stdout)
    [run] = [r for r in data["runs"] if r["run_dir"] == str(real_run)]
    assert run["status"] == "finished" and run["candidates"] == 3
    assert run["best_cid"] and run["best_bleu4"] is not None
    assert run["models"] == ["baseline:random-search"] and run["started_at"] > 0
    assert run["last_activity"] >= run["started_at"] and run["idle_s"] >= 0
    text = run_cli(["runs", str(real_run.parent)]).stdout
    assert str(real_run) in text and "finished" in text and run["best_cid"] in text
    assert db_hashes(real_run) == before


def test_trace_one_line_per_step(real_run: Path) -> None:
    before = db_hashes(real_run)
    steps = steps_of(real_run)
    assert len(steps) >= 3 * 6  # design, static, review, smoke, train, record per candidate at least
    text = run_cli(["trace", str(real_run)]).stdout.splitlines()
    assert text[0].split()[:4] == ["step", "super", "node", "cand"]
    body = text[1:]
    assert len(body) == len(steps)
    for line, (step, node, cid, _attempt, status) in zip(body, steps, strict=True):
        cols = line.split()
        assert int(cols[0]) == step and cols[2] == node and cols[3] == (cid or "-") and status in cols
        assert cols[-2].endswith("s") and cols[-1].isdigit()  # duration and tokens
    data = one_json(run_cli(["trace", str(real_run), "--json"]).stdout)
    assert [s["step"] for s in data["steps"]] == [s[0] for s in steps]
    assert all(s["duration_s"] is not None and s["tokens"] == 0 for s in data["steps"])  # baseline: no tokens
    assert db_hashes(real_run) == before


def test_trace_step_shows_code_diff_verdict_and_metrics(real_run: Path) -> None:
    before = db_hashes(real_run)
    steps = steps_of(real_run)
    fix = first(steps, "fix", "ok")  # the fault rate makes the fixer work
    out = run_cli(["trace", str(real_run), "--step", str(fix[0])]).stdout
    assert f"step {fix[0]} " in out and "== code" in out and "class Net" in out
    assert f"--- {fix[2]} attempt" in out and f"+++ {fix[2]} attempt" in out  # diff against the previous attempt
    failed = first(steps, ("static", "smoke", "review"), "failed")
    out = run_cli(["trace", str(real_run), "--step", str(failed[0])]).stdout
    assert "== verdict" in out and "FAILED" in out
    train = first(steps, "train", "ok")
    d = one_json(run_cli(["trace", str(real_run), "--step", str(train[0]), "--json"]).stdout)
    assert d["node"] == "train" and d["metrics"]["epochs"] and d["metrics"]["bleu4_coco"] is not None
    assert d["jobs"] and d["jobs"][0]["kind"] == "train" and d["log_tail"]
    out = run_cli(["trace", str(real_run), "--step", str(train[0])]).stdout
    assert "BLEU-4 (COCO protocol)" in out and "sandbox log (tail)" in out
    bad = run_cli(["trace", str(real_run), "--step", "99999", "--json"], check=False)
    assert bad.returncode == 2 and one_json(bad.stdout)["category"] == "usage"
    assert db_hashes(real_run) == before


def test_trace_candidate_life_with_parent_chain(real_run: Path) -> None:
    db = sqlite3.connect(f"file:{real_run / 'results.sqlite'}?mode=ro", uri=True)
    rows = db.execute("SELECT cid, parent FROM candidates ORDER BY idx").fetchall()
    db.close()
    child = next(((c, p) for c, p in rows if p), None) or (rows[-1][0], None)
    life = one_json(run_cli(["trace", str(real_run), "--candidate", child[0], "--json"]).stdout)
    assert [p["cid"] for p in life["parent_chain"]][:2] == [child[0], child[1]][: 2 if child[1] else 1]
    nodes = [s["node"] for s in life["steps"]]
    assert nodes[:2] == ["dispatch", "design"] and nodes[-1] == "record" and "train" in nodes  # planned, then made
    out = run_cli(["trace", str(real_run), "--candidate", child[0]]).stdout
    assert f"candidate {child[0]}:" in out and "parent chain:" in out and "life:" in out
    if child[1]:
        assert f"<- {child[1]}" in out


def test_trace_escapes_hostile_text(real_run: Path, tmp_path: Path) -> None:
    """A reply, code or log with terminal escapes is printed escaped (a copy of the run is tampered with)."""
    copy = tmp_path / "copy"
    shutil.copytree(real_run, copy, ignore=shutil.ignore_patterns("jobs"))
    steps = steps_of(copy)
    step = first(steps, "static", "ok")
    db = sqlite3.connect(copy / "results.sqlite")
    ref = db.execute("SELECT code_ref FROM steps WHERE step=?", (step[0],)).fetchone()[0]
    db.close()
    blob = copy / "blobs" / ref[:2] / ref
    blob.unlink()  # a hard link may be shared with the original: replace, never write through
    blob.write_text("\x1b]0;pwned\x07\x1b[2J class Net: pass\r\n", encoding="utf-8")
    out = run_cli(["trace", str(copy), "--step", str(step[0])]).stdout
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out
    assert "\\x1b]0;pwned" in out


def test_trace_running_and_killed_run(tmp_path: Path) -> None:
    """Trace a run while it is going (read-only, with the writer holding its connection), then after SIGKILL."""
    prepared = prepare_tiny(tmp_path / "data")
    run_dir = tmp_path / "live"
    proc = subprocess.Popen([sys.executable, "-m", "nncaption.cli", "run", "--run-dir", str(run_dir), "--prepared",
                             str(prepared), "--no-live", *RUN_ARGS], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=os.environ.copy(), start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if (run_dir / "results.sqlite").exists() and any(s[1] == "smoke" for s in _safe_steps(run_dir)):
                break
            time.sleep(0.5)
        else:
            pytest.fail("the run never reached a smoke step")
        live = one_json(run_cli(["trace", str(run_dir), "--json"]).stdout)
        assert live["steps"] and any(s["status"] == "running" for s in live["steps"])
        assert one_json(run_cli(["runs", str(tmp_path), "--json"]).stdout)["runs"][0]["status"] == "running"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    killed = one_json(run_cli(["trace", str(run_dir), "--json"]).stdout)
    assert len(killed["steps"]) >= len(live["steps"])
    first = next(s for s in killed["steps"] if s["node"] == "design")  # step 1 is the dispatcher's own row
    d = one_json(run_cli(["trace", str(run_dir), "--step", str(first["step"]), "--json"]).stdout)
    assert d["node"] == "design" and d["code"]
    assert run_cli(["trace", str(run_dir), "--html", str(tmp_path / "killed.html")]).returncode == 0


def _safe_steps(run_dir: Path) -> list[tuple[int, str, str, int | None, str]]:
    try:
        return steps_of(run_dir)
    except sqlite3.Error:
        return []


def test_trace_into_a_closed_pipe_exits_quietly(real_run: Path, tmp_path: Path) -> None:
    """`trace RUN | head -2` and `trace RUN --json | head -c 300`: the output stops, no error, no crash log."""
    env = {**os.environ, "NNCAPTION_HOME": str(tmp_path / "home")}
    for args in ([str(real_run)], [str(real_run), "--json"], [str(real_run), "--candidate", "c0001"]):
        proc = subprocess.Popen([sys.executable, "-m", "nncaption.cli", "trace", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # the reader is gone before the first write: deterministic, unlike racing `head`
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=120) == 141 and err == "", err
    for pipeline, check in ((f"trace {real_run} | head -2", lambda out: len(out.splitlines()) == 2),
                            (f"trace {real_run} --json | head -c 300", lambda out: len(out) == 300)):
        shell = subprocess.run(f"{sys.executable} -m nncaption.cli {pipeline}", shell=True, text=True,
                               capture_output=True, env=env, timeout=120, check=False)
        assert shell.returncode == 0 and check(shell.stdout) and shell.stderr == "", shell.stderr
    assert not (tmp_path / "home" / "logs").exists()
