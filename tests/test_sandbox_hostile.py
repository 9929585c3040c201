"""Hostile and broken candidates through the real runner, on every backend that runs here.

Each candidate (tests/hostile/<name>.py + a small valid model) goes straight to
the sandbox, bypassing the static validator. Each must end with the right
status and category, leave no process behind, leave the host unharmed, and a
normal job afterwards must still succeed. Docker cases are marked `docker`:
they skip when no engine is reachable, except under CI=true where they fail.

Only the runner's outputs come back from a job's directory, so hostile code
reports what it did on stdout ("NNCAPTION-MARK name data" lines, see `marks`).
Besides the sandbox's walls, the suite attacks what the parent believes: limits
patched from inside the candidate's process, forged outputs and image ids,
hostile text and progress events, deep directories and huge files, a runner
killed after forging its files. Every result must serialise as strict JSON.
"""

from __future__ import annotations

import json
import os
import resource
import select
import socket
import stat
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sandbox_support import (
    docker_engine_or_skip,
    ensure_offline_image,
    host_can_fork,
    leftover_processes,
    make_job,
)

import nncaption
from nncaption.sandbox import CRASHED, FAILED, KILLED, OK, OUT_OF_MEMORY, TIMEOUT, RunResult, Sandbox, get_sandbox
from nncaption.sandbox.quota import STAGE_PREFIX

pytestmark = pytest.mark.sandbox  # every test here runs hostile jobs in each backend

# the stages of this test process's sandboxes (stage names carry their owner's pid): the stages of other runs on the
# same machine (another test session, a search) are not this test's survivors
OWN_STAGES = f"{STAGE_PREFIX}{os.getpid()}-"


@pytest.fixture(
    scope="module",
    params=[
        "local",
        "local-prewarm",
        pytest.param("docker", marks=pytest.mark.docker),
        pytest.param("docker-prewarm", marks=pytest.mark.docker),
    ],
)
def sandbox(
    request: pytest.FixtureRequest, tiny_dataset: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Sandbox]:
    backend, _, warm = request.param.partition("-")
    options: dict[str, Any] = {"prewarm": bool(warm)}
    if backend == "docker":
        options["image"] = ensure_offline_image(docker_engine_or_skip())
    sb = get_sandbox(backend, **options)
    if warm:  # one job first, so that the next jobs with the same settings find a pre-started sandbox
        r = sb.run(make_job(tmp_path_factory.mktemp("warmup") / "job", Path(tiny_dataset.public_dir), "good"))
        assert r.status == OK, describe(r)
    yield sb
    if warm:
        sb.close()
        assert leftover_processes(OWN_STAGES) == []


@pytest.fixture
def hang_timeout(sandbox: Sandbox) -> float:
    """Wall-clock limit for candidates that never finish: long enough for the runner to reach learn()."""
    # a prewarmed slot may still be importing torch when the job arrives (right after the previous job)
    return 15.0 if getattr(sandbox, "prewarm", False) else 20.0


@pytest.fixture
def data_dir(tiny_dataset: Any) -> Path:
    return Path(tiny_dataset.public_dir)


def run(sandbox: Sandbox, job_dir: Path, data_dir: Path, name: str, *, spec: dict[str, Any] | None = None,
        events: list[dict[str, Any]] | None = None, **kw: Any) -> RunResult:
    """Run hostile candidate `name`; check that nothing of it survives and that its result is strict JSON."""
    job = make_job(job_dir, data_dir, name, **kw)
    for key, value in (spec or {}).items():
        setattr(job.spec, key, value)
    t0 = time.monotonic()
    result = sandbox.run(job, on_event=events.append if events is not None else None)
    elapsed = time.monotonic() - t0
    assert elapsed < job.limits.timeout_s + 30, f"the job outlived its limit: {elapsed:.1f}s"
    # the job dir and its stage (a sibling directory) are both under job_dir.parent; so are the stages of the warm
    # processes started after the job, which may still be forking (bwrap's inner process): scan first, then ask
    # which pids are warm (a process seen in the scan is by then in its warm slot's tree and cgroup)
    left = leftover_processes(str(job_dir.parent))
    survivors = leftover_processes(OWN_STAGES)  # a prewarmed job ran in a stage beside an earlier test's job
    warm: set[int] = getattr(sandbox, "warm_pids", lambda: set())()
    left = [p for p in left if int(p.split(":")[0]) not in warm]
    assert left == [], "processes of the job survived it"
    survivors = [p for p in survivors if int(p.split(":")[0]) not in warm]
    assert survivors == [], "processes of a prewarmed job survived it"
    assert host_can_fork()
    json.dumps(result.to_dict(), allow_nan=False, default=str)  # strict JSON, whatever the job wrote
    if result.verdict is not None:
        json.dumps(dict(result.verdict), allow_nan=False, default=str)
    return result


def marks(r: RunResult) -> dict[str, str]:
    """The "NNCAPTION-MARK name data" lines hostile code printed (name -> data)."""
    out: dict[str, str] = {}
    for line in r.stdout_tail.splitlines():
        if line.startswith("NNCAPTION-MARK "):
            name, _, data = line[len("NNCAPTION-MARK "):].partition(" ")
            out[name] = data
    return out


def started(r: RunResult) -> bool:
    return "hostile-started" in marks(r)


def describe(r: RunResult) -> str:
    return f"{r.status}/{r.category}: {r.message}\nstderr: {r.stderr_tail[-1500:]}"


def test_fork_bomb(sandbox: Sandbox, tmp_path: Path, data_dir: Path, hang_timeout: float) -> None:
    r = run(sandbox, tmp_path / "job", data_dir, "fork_bomb", timeout_s=hang_timeout)
    assert started(r), describe(r)
    assert r.status in (TIMEOUT, FAILED, CRASHED), describe(r)
    assert r.status != OK and not r.predictions


def test_memory_bomb(sandbox: Sandbox, tmp_path: Path, data_dir: Path) -> None:
    r = run(sandbox, tmp_path / "job", data_dir, "memory_bomb", timeout_s=60.0, memory_mb=2048)
    assert started(r), describe(r)
    assert r.status == OUT_OF_MEMORY and r.category == "out-of-memory", describe(r)
    if r.peak_memory_mb is not None:
        assert r.peak_memory_mb <= 2048 * 1.05


def test_busy_loop_past_timeout(sandbox: Sandbox, tmp_path: Path, data_dir: Path, hang_timeout: float) -> None:
    r = run(sandbox, tmp_path / "job", data_dir, "busy_loop", timeout_s=hang_timeout)
    assert started(r), describe(r)
    # the sandbox's wall-clock backstop stops it; on a machine so busy that the loop got under half of the CPU it
    # asked for, the verdict is the machine's (job-error, "machine overloaded"), never ok; both give the figures
    if r.overloaded:
        assert r.status == FAILED and r.category == "job-error", describe(r)
    else:
        assert r.status == TIMEOUT and r.category == "timeout", describe(r)
    assert "CPU-seconds" in r.message and "s of wall time" in r.message, describe(r)


def test_sleep_forever_in_learn(sandbox: Sandbox, tmp_path: Path, data_dir: Path, hang_timeout: float) -> None:
    r = run(sandbox, tmp_path / "job", data_dir, "sleep_forever", timeout_s=hang_timeout)
    assert started(r), describe(r)
    # sleeping is not starving, however busy the machine: the candidate's timeout (issue 14)
    assert r.status == TIMEOUT and r.category == "timeout" and not r.overloaded, describe(r)


def test_loopback_listener_sees_nothing(sandbox: Sandbox, tmp_path: Path, data_dir: Path) -> None:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        port = srv.getsockname()[1]
        r = run(sandbox, tmp_path / "job", data_dir, "loopback_connect", port=str(port))
        readable, _, _ = select.select([srv], [], [], 0.2)
        assert readable == [], "the candidate reached the parent's loopback listener"
    assert r.status == OK, describe(r)
    seen = json.loads(marks(r)["network"])
    assert seen and all(not v.startswith("connected") for v in seen.values()), seen


def test_parent_secrets_are_invisible(
    sandbox: Sandbox, tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, secret = f"sk-test-{uuid.uuid4().hex}", f"nnc-{uuid.uuid4().hex}"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    monkeypatch.setenv("NNCAPTION_SECRET", secret)
    r = run(sandbox, tmp_path / "job", data_dir, "read_secrets")
    assert r.status == OK, describe(r)
    dumped = marks(r)["secrets"]
    env = json.loads(dumped)["environ"]
    assert "PATH" in env  # the dump is real
    for value in (key, secret):
        assert value not in dumped and value not in r.stdout_tail and value not in r.stderr_tail
    assert "OPENAI_API_KEY" not in env and not any(k.startswith("NNCAPTION_") for k in env)


def test_writes_outside_the_job_dir_do_not_land(sandbox: Sandbox, tmp_path: Path, data_dir: Path) -> None:
    open_dir = Path(tempfile.mkdtemp(prefix="nnc-open-", dir="/tmp"))
    open_dir.chmod(0o777)  # world-writable: only the sandbox can stop the write
    name = f"pwned-{uuid.uuid4().hex[:8]}"
    project = Path(nncaption.__file__).resolve().parent
    targets = [
        open_dir / name,
        data_dir / name,
        project / name,
        Path(os.__file__).resolve().parent / name,  # the interpreter's standard library
        Path("/root") / name,
        Path("/etc") / name,
    ]
    try:
        r = run(sandbox, tmp_path / "job", data_dir, "write_outside", targets=json.dumps([str(t) for t in targets]))
        assert r.status == OK, describe(r)
        assert all(v.startswith("refused") for v in json.loads(marks(r)["writes"]).values())
        landed = [str(t) for t in targets if t.exists()]
        assert landed == [], f"writes landed outside the job dir: {landed}"
    finally:
        for t in targets:
            t.unlink(missing_ok=True)
        for p in open_dir.iterdir():
            p.unlink()
        open_dir.rmdir()


def test_killing_its_parent_harms_nothing(sandbox: Sandbox, tmp_path: Path, data_dir: Path) -> None:
    r = run(sandbox, tmp_path / "job", data_dir, "kill_parent")
    # The candidate's parent is the runner: killing it ends the job without a score (a namespace init, as in
    # docker, ignores the signal and the job goes on). Either way nothing survives (checked in `run`).
    assert r.status in (OK, KILLED, FAILED, CRASHED), describe(r)
    if r.status != OK:
        assert not r.predictions and r.verdict is not None and not r.verdict["ok"], describe(r)


def test_flooding_output_is_bounded(sandbox: Sandbox, tmp_path: Path, data_dir: Path) -> None:
    r = run(sandbox, tmp_path / "job", data_dir, "flood_output", timeout_s=120.0)
    assert r.status == OK, describe(r)
    cap = 4096 + 200  # the tail plus a "bytes dropped" header
    assert len(r.stdout_tail) <= cap and len(r.stderr_tail) <= cap
    assert "earlier bytes dropped" in r.stdout_tail
    job_bytes = sum(p.stat().st_size for p in (tmp_path / "job").rglob("*") if p.is_file())
    assert job_bytes < 50 * 2**20, f"the job dir grew to {job_bytes} bytes"


def test_segfault_is_crashed(sandbox: Sandbox, tmp_path: Path, data_dir: Path) -> None:
    r = run(sandbox, tmp_path / "job", data_dir, "segfault")
    assert started(r), describe(r)
    assert r.status == CRASHED and r.category == "crashed", describe(r)
    assert "SIGSEGV" in r.message


def test_sys_exit_before_predictions_fails(sandbox: Sandbox, tmp_path: Path, data_dir: Path) -> None:
    r = run(sandbox, tmp_path / "job", data_dir, "sys_exit")
    assert r.status == FAILED and not r.predictions, describe(r)
    assert r.category == "crashed", describe(r)


def test_os_exit_zero_before_predictions_fails(sandbox: Sandbox, tmp_path: Path, data_dir: Path) -> None:
    r = run(sandbox, tmp_path / "job", data_dir, "os_exit")
    assert r.status == FAILED and r.category == "crashed" and not r.predictions, describe(r)
    assert "exited with status 0" in r.message and "Net.learn" in r.message, describe(r)


def test_daemon_is_gone_when_the_job_returns(sandbox: Sandbox, tmp_path: Path, data_dir: Path) -> None:
    r = run(sandbox, tmp_path / "job", data_dir, "daemon")  # `run` checks that no process of the job is left
    assert r.status == OK, describe(r)
    assert "daemon-started" in marks(r), "the daemon never ran"
    assert not (tmp_path / "job" / "heartbeat.txt").exists()  # only the runner's outputs come back


def test_a_normal_job_still_succeeds(sandbox: Sandbox, tmp_path: Path, data_dir: Path) -> None:
    r = run(sandbox, tmp_path / "job", data_dir, "good")
    assert r.status == OK and r.category is None, describe(r)
    assert len(r.predictions) == 1 and len(r.predictions[0].ids) == 8
    if getattr(sandbox, "prewarm", False):
        assert "prewarmed" in r.isolation  # the jobs before it had the same settings
    assert r.timings.get("start_to_first_batch_s", 0) > 0
    mode = stat.S_IMODE((tmp_path / "job").stat().st_mode)
    assert mode & 0o700 == 0o700


# ---------------------------------------------------------------------------- what the parent believes (issue 8)

CONTROL = ("\x1b", "\x07", "\x9b", "\r")


def test_limits_patched_inside_the_candidate_still_hold(sandbox: Sandbox, tmp_path: Path, data_dir: Path) -> None:
    t0 = time.monotonic()
    r = run(sandbox, tmp_path / "job", data_dir, "patch_limits", sleep="60", timeout_s=90.0,
            spec={"epoch_time_limit_s": 4.0})
    assert marks(r).get("patched") == "", describe(r)  # the patches applied, in the candidate's own process
    assert r.status == TIMEOUT and r.category == "timeout", describe(r)
    assert "per-epoch time limit of 4 s" in r.message, describe(r)  # the runner's limit, not the sandbox backstop
    assert time.monotonic() - t0 < 60 and not r.predictions


def test_outputs_forged_inside_the_candidate_do_not_count(sandbox: Sandbox, tmp_path: Path, data_dir: Path) -> None:
    r = run(sandbox, tmp_path / "job", data_dir, "forge_outputs")
    assert marks(r).get("patched") == "", describe(r)
    assert r.status == OK, describe(r)
    assert "FORGED" not in r.message and r.runner is not None and r.runner.message != "FORGED"
    expected = json.loads((data_dir / "val_ids.json").read_text())[:8]
    assert len(r.predictions) == 1 and sorted(r.predictions[0].ids) == sorted(str(i) for i in expected)
    assert all(row != [7, 7, 7, 7, 7, 2] for row in r.predictions[0].ids.values())


def test_hostile_text_and_events_are_made_safe(sandbox: Sandbox, tmp_path: Path, data_dir: Path) -> None:
    events: list[dict[str, Any]] = []
    r = run(sandbox, tmp_path / "job", data_dir, "hostile_text", events=events)
    assert r.status == FAILED and r.category == "learn-error", describe(r)
    assert "model broke" in r.message and "\\x1b" in r.message  # escaped, still readable
    assert r.verdict is not None and r.verdict["category"] == "learn-error" and r.verdict["stage"] == "train"
    for text in (r.message, r.traceback_tail, r.stderr_tail, r.stdout_tail, r.verdict["message"]):
        assert not any(c in text for c in CONTROL), repr(text[-300:])
    assert events, "no progress event came through"
    for e in events:
        json.dumps(e, allow_nan=False)
        assert all(not isinstance(v, (dict, list)) for v in e.values()), e
        assert all(not any(c in str(v) for c in CONTROL) for v in e.values()), e


def test_deep_dirs_and_big_files_are_not_kept(sandbox: Sandbox, tmp_path: Path, data_dir: Path) -> None:
    r = run(sandbox, tmp_path / "job", data_dir, "deep_dirs", timeout_s=120.0)
    assert "deep-dirs-made" in marks(r), describe(r)
    assert r.status in (OK, FAILED), describe(r)  # a reclaim that gives up is a candidate failure
    if r.status == OK:
        assert len(r.predictions) == 1
    job = tmp_path / "job"
    assert not (job / "d").exists() and not (job / "big.bin").exists() and not (job / "fifo").exists()
    for other in tmp_path.iterdir():  # the job's stage is gone (a prewarmed next job may have a fresh one here)
        assert other.name == "job" or not any((other / n).exists() for n in ("d", "big.bin", "fifo", "loop"))
    assert sum(p.stat().st_size for p in job.iterdir() if p.is_file()) < 10 * 2**20


def test_a_killed_runner_leaves_no_forged_score(sandbox: Sandbox, tmp_path: Path, data_dir: Path) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r = run(sandbox, tmp_path / "job", data_dir, "kill_runner_forge", timeout_s=40.0)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert "forged" in marks(r) or r.status == TIMEOUT, describe(r)
    assert r.status != OK and not r.predictions, describe(r)
    assert r.verdict is not None and not r.verdict["ok"]
    assert "FORGED" not in r.message or r.category in ("eval-contract", "crashed"), describe(r)
    assert grown_mb < 300, f"the parent grew by {grown_mb:.0f} MB reading the job's files"
