"""`nncaption run` and `nncaption config show` as a user runs them: help, config errors, secrets, SIGINT."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

FLAGS = ("--llm-base-url", "--llm-model", "--dataset", "--coco-root", "--sandbox", "--ray-address", "--gpus",
         "--concurrency", "--candidates", "--epochs", "--snippets", "--seed", "--run-dir", "--resume", "--replay",
         "--config", "--json-logs", "--wall-time", "--max-tokens")


def nncaption(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nncaption.cli", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def test_run_help_documents_every_flag() -> None:
    out = nncaption("run", "--help")
    assert out.returncode == 0
    for flag in FLAGS:
        assert flag in out.stdout, flag
    assert "random-search baseline" in out.stdout and "130" in out.stdout


def test_config_show_masks_secrets_and_names_bad_keys(tmp_path: Path) -> None:
    cfg = tmp_path / "run.toml"
    cfg.write_text('[agents]\nkind = "llm"\n[agents.llm.designer]\nbase_url = "https://h:8000/v1"\nmodel = "d"\n'
                   'api_key_env = "MY_DESIGNER_KEY"\n')
    out = nncaption("config", "show", "--config", str(cfg), "--concurrency", "6",
                    env={"MY_DESIGNER_KEY": "sk-very-secret-value"})
    assert out.returncode == 0, out.stderr
    assert "sk-very-secret-value" not in out.stdout
    shown = json.loads(out.stdout)
    assert shown["concurrency"] == 6
    designer = shown["effective_endpoints"]["designer"]
    assert {k: designer[k] for k in ("base_url", "model", "api_key_env", "api_key")} == {
        "base_url": "https://h:8000/v1", "model": "d", "api_key_env": "MY_DESIGNER_KEY",
        "api_key": "$MY_DESIGNER_KEY set (***)"}
    cfg.write_text('[sandbox]\nkind = "kubernetes"\n')
    bad = nncaption("run", "--config", str(cfg))
    assert bad.returncode == 2 and bad.stdout == ""
    lines = [ln for ln in bad.stderr.splitlines() if ln.startswith("error")]
    assert lines == ["error [config]: invalid config: sandbox.kind: Input should be 'local', 'docker' or 'ray' "
                     "(got 'kubernetes')"]
    refused = nncaption("run", "--resume", str(tmp_path), "--candidates", "3")
    assert refused.returncode == 2 and "drop --candidates" in refused.stderr


def _session_pids(sid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[3]) == sid and fields[0] != "Z":
                out.append(int(entry))
    return out


def _left_behind(pid: int, run_dir: Path) -> list[str]:
    """What is still running of a stopped `nncaption run` (given 10 s to go): its session, and every process
    that names the run directory (each job runs in its own session, in a stage under RUN_DIR/jobs)."""
    from sandbox_support import leftover_processes

    deadline = time.monotonic() + 10
    while True:
        left = [f"{p}: session" for p in _session_pids(pid)] + leftover_processes(str(run_dir))
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def _start_run(tiny_dataset: Any, run_dir: Path) -> subprocess.Popen[str]:
    """`nncaption run` in its own session (so that everything it starts can be found), JSON events on stdout."""
    return subprocess.Popen([sys.executable, "-m", "nncaption.cli", "run", "--prepared", str(tiny_dataset.root),
                             "--run-dir", str(run_dir), "--candidates", "4", "--epochs", "3", "--threads", "1",
                             "--json-logs"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


@pytest.mark.sandbox
@pytest.mark.slow
def test_sigint_stops_gracefully_with_130_and_leaves_nothing(tiny_dataset: Any, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = _start_run(tiny_dataset, run_dir)
    assert proc.stdout is not None
    events: list[dict[str, Any]] = []
    try:
        for line in proc.stdout:
            events.append(json.loads(line))
            if events[-1]["event"] == "node_started" and events[-1]["node"] == "train":
                time.sleep(1.0)
                proc.send_signal(signal.SIGINT)
                break
        t0 = time.monotonic()
        rest, err = proc.communicate(timeout=90)
        stopped_in = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err[-2000:]
    assert stopped_in < 60
    events += [json.loads(ln) for ln in rest.splitlines() if ln.strip()]
    assert events[-1]["event"] == "run_finished" and events[-1]["status"] == "interrupted"
    db = sqlite3.connect(run_dir / "results.sqlite")
    assert db.execute("SELECT status FROM runs").fetchone()[0] == "interrupted"
    assert db.execute("SELECT COUNT(*) FROM steps WHERE status='interrupted' AND node='train'").fetchone()[0] >= 1
    assert db.execute("SELECT COUNT(*) FROM steps WHERE status='running'").fetchone()[0] == 0
    db.close()
    assert (run_dir / "checkpoints.sqlite").stat().st_size > 0
    assert _left_behind(proc.pid, run_dir) == []


@pytest.mark.sandbox
@pytest.mark.slow
def test_second_sigint_stops_at_once_and_leaves_no_process_or_mount(tiny_dataset: Any, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = _start_run(tiny_dataset, run_dir)
    assert proc.stdout is not None
    saw_train = False
    try:
        for line in proc.stdout:
            event = json.loads(line)
            if event["event"] == "node_started" and event["node"] == "train":
                saw_train = True
                time.sleep(1.0)  # a training job (and, as root, its tmpfs stage) exists
                proc.send_signal(signal.SIGINT)
                time.sleep(0.05)  # while the first one's cancellation is still under way
                proc.send_signal(signal.SIGINT)
                break
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=60)
        stopped_in = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert saw_train
    # 130: stopped by the handler; -2: the graceful stop had already finished and the process ended by the signal
    # itself (a shell shows 130 for both)
    assert proc.returncode in (130, -signal.SIGINT), err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    assert stopped_in < 20
    assert _left_behind(proc.pid, run_dir) == []
    mounted = [ln for ln in Path("/proc/self/mountinfo").read_text().splitlines() if str(run_dir) in ln]
    assert mounted == []
    db = sqlite3.connect(run_dir / "results.sqlite")  # what was recorded before the stop is readable
    assert db.execute("SELECT COUNT(*) FROM candidates").fetchone()[0] >= 1
    db.close()
    from nncaption.graph.trace import list_runs

    # the row may still say "running" (no time to write), but its process is gone: `nncaption runs` says so
    summary = list_runs(run_dir)[0]
    assert summary["live"] is False and summary["status"] in ("stopped", "interrupted"), summary


@pytest.mark.sandbox
def test_unreachable_llm_endpoint_exits_1_with_one_clear_error(tiny_dataset: Any, tmp_path: Path) -> None:
    out = nncaption("run", "--prepared", str(tiny_dataset.root), "--run-dir", str(tmp_path / "r"),
                    "--llm-base-url", "http://127.0.0.1:9/v1", "--llm-model", "m", "--no-live")
    assert out.returncode == 1
    assert "error [endpoint-unavailable]: no LLM endpoint answers" in out.stderr
    assert "Traceback" not in out.stderr
