"""The local backend's measures, checked from inside with the probe entry (no torch: fast),
plus the pure parts: outcome mapping, bounded tails, progress tailing, the environment allow-list."""

from __future__ import annotations

import json
import os
import select
import socket
import uuid
from pathlib import Path
from typing import Any

import pytest

from nncaption.netapi.job import JobSpec
from nncaption.sandbox import (
    OK,
    RUNNER_ENTRY,
    TIMEOUT,
    Job,
    Limits,
    RunResult,
    cgroups,
    get_sandbox,
    hostenv,
)
from nncaption.sandbox.local import LocalSandbox
from nncaption.sandbox.probe import read_facts
from nncaption.sandbox.quota import STAGE_PREFIX
from nncaption.sandbox.streams import ProgressTail, TailBuffer

PROBE = "nncaption.sandbox.probe"


def probe_job(tmp_path: Path, instructions: dict | None = None, data_dir: Path | None = None, **limits: float) -> Job:
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    if data_dir is None:
        data_dir = tmp_path / "data"
        data_dir.mkdir()
        (data_dir / "meta.json").write_text("{}")
    spec = JobSpec(data_dir=str(data_dir))
    spec.write(job_dir)
    if instructions:
        (job_dir / "probe.json").write_text(json.dumps(instructions))
    return Job(job_dir, spec, Limits(timeout_s=limits.get("timeout_s", 30.0)), entry=PROBE)


def facts(result: RunResult, job: Job) -> dict:
    assert result.status == OK, (result.status, result.message, result.stderr_tail)
    return read_facts(job.job_dir)


# ---------------------------------------------------------------------------- real isolation, probed


def test_get_sandbox_names() -> None:
    assert get_sandbox().name == "local"
    assert isinstance(get_sandbox("local", isolation="none"), LocalSandbox)
    from nncaption.netapi.errors import ConfigError

    with pytest.raises(ConfigError):
        get_sandbox("vm")


@pytest.mark.sandbox
def test_probe_sees_the_isolation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = uuid.uuid4().hex
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    monkeypatch.setenv("NNCAPTION_TOKEN", secret)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(4)
        port = srv.getsockname()[1]
        job = probe_job(tmp_path, {"connect": [["127.0.0.1", port]], "write": [str(tmp_path / "data" / "x")]})
        result = get_sandbox("local").run(job)
        assert select.select([srv], [], [], 0.1)[0] == []
    f = facts(result, job)
    assert secret not in json.dumps(f["env"])
    # the job's CPU share decides its threads, and the job.json it read says so (one source of truth)
    threads = JobSpec.read(job.job_dir).threads
    assert threads and f["env"]["OMP_NUM_THREADS"] == str(threads) and f["env"]["CUDA_VISIBLE_DEVICES"] == ""
    assert f["env"]["HOME"] == f["cwd"] + "/home" and f["cwd"] != str(job.job_dir)  # a per-job stage
    assert not f["connect"][f"127.0.0.1:{port}"].startswith("connected")
    assert f["write"][str(tmp_path / "data" / "x")].startswith("refused")
    assert not (tmp_path / "data" / "x").exists()
    sb = LocalSandbox(prewarm=False)
    if sb.mode() != "none":
        assert f["interfaces"] == ["lo"]
        assert any(m.startswith("netns:") for m in result.isolation)
    if os.geteuid() == 0:
        assert f["uid"] == 65534 and f["status"]["CapEff"] == "0" * 16 and f["status"]["NoNewPrivs"] == "1"
        assert "uid:65534" in result.isolation
    assert result.timings["total_s"] < 60


@pytest.mark.sandbox
def test_isolation_none_still_scrubs_env_and_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NNCAPTION_SECRET", "hidden-value")
    job = probe_job(tmp_path)
    result = get_sandbox("local", isolation="none", use_cgroups=False).run(job)
    f = facts(result, job)
    assert "NNCAPTION_SECRET" not in f["env"]
    assert "rlimit-as" in result.isolation and not any(m.startswith("netns") for m in result.isolation)


@pytest.mark.sandbox
@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to nobody needs root")
def test_no_namespaces_keeps_root_when_nobody_cannot_reach_the_job(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Without bubblewrap the job runs at its real path: under a 0700 directory (pytest's tmp_path, a mkdtemp,
    a home in /root) "nobody" cannot reach it. Seen on a GPU machine whose interpreter was world-readable: every job
    then died before writing a result. The sandbox keeps root there, as it does for an unreadable interpreter."""
    monkeypatch.setattr(hostenv, "readable_by_others", lambda p: True)  # as on that machine (here: /root/.pyenv)
    assert (tmp_path.stat().st_mode & 0o777) == 0o700 or not hostenv.traversable_by_others(tmp_path / "job")
    job = probe_job(tmp_path)
    result = get_sandbox("local", isolation="none", use_cgroups=False, prewarm=False).run(job)
    facts(result, job)
    assert "uid:root" in result.isolation and "uid:65534" not in result.isolation


def test_cgroup_is_created_limited_and_removed(tmp_path: Path) -> None:
    cg = cgroups.JobCgroup.create(f"{cgroups.PREFIX}{os.getpid()}-unit", memory_mb=512, max_pids=16)
    if cg is None:
        pytest.skip("no writable cgroup hierarchy on this host")
    try:
        limit_file = cg.memory_dir / ("memory.max" if cg.version == 2 else "memory.limit_in_bytes")
        assert int(limit_file.read_text()) == 512 * 2**20
        assert (cg.pids_dir / "pids.max").read_text().strip() == "16"
    finally:
        cg.remove()
    assert not any(d.exists() for d in cg.dirs)


def test_orphan_cgroups_of_dead_parents_are_reaped() -> None:
    dead = 2**22 + 12345  # above pid_max: never alive
    cg = cgroups.JobCgroup.create(f"{cgroups.PREFIX}{dead}-orphan", memory_mb=256, max_pids=8)
    if cg is None:
        pytest.skip("no writable cgroup hierarchy on this host")
    reaped = cgroups.reap_orphans()
    assert set(cg.dirs) <= set(reaped)
    assert not any(d.exists() for d in cg.dirs)


@pytest.mark.sandbox
def test_timeout_kills_the_job_and_its_daemon(tmp_path: Path) -> None:
    from sandbox_support import leftover_processes

    job = probe_job(tmp_path, {"daemon": True, "sleep": 600}, timeout_s=1.5)
    with get_sandbox("local", prewarm=False) as sb:
        result = sb.run(job)
        # the job ran in a stage beside its directory: both are under tmp_path, as nothing else of this test
        assert leftover_processes(str(tmp_path)) == []
    assert result.status == TIMEOUT and result.category == "timeout", result.message
    assert result.timings["total_s"] < 30  # the 1.5 s limit, not the 600 s sleep


@pytest.mark.sandbox
def test_daemon_left_by_a_finished_job_is_killed(tmp_path: Path) -> None:
    from sandbox_support import leftover_processes

    job = probe_job(tmp_path, {"daemon": True})
    with get_sandbox("local", prewarm=False) as sb:
        result = sb.run(job)
        assert leftover_processes(str(tmp_path)) == []  # the job's stage is under tmp_path too
    assert result.status == OK


def test_missing_job_file_is_a_config_error(tmp_path: Path) -> None:
    from nncaption.netapi.errors import ConfigError

    spec = JobSpec(data_dir=str(tmp_path))
    with pytest.raises(ConfigError):
        get_sandbox("local").run(Job(tmp_path / "nowhere", spec))


# The mapping from job outputs to a RunResult (sandbox/outcome.py) is tested in tests/test_job_outputs.py.


# ---------------------------------------------------------------------------- streams and environment


def test_tail_buffer_keeps_only_the_end() -> None:
    t = TailBuffer(10)
    for _ in range(1000):
        t.write(b"abcdefghij" * 7)
    assert t.total == 70_000 and len(t.text().split("\n")[-1]) == 10 and "dropped" in t.text()


def test_progress_tail_yields_complete_new_lines(tmp_path: Path) -> None:
    path = tmp_path / "progress.jsonl"
    tail = ProgressTail(path)
    assert list(tail.poll()) == []
    path.write_text('{"event": "start", "t": 1}\n{"event": "first_b')
    assert [e["event"] for e in tail.poll()] == ["start"]
    with open(path, "a") as f:
        f.write('atch", "t": 2.5}\nnot json\n')
    assert [e["event"] for e in tail.poll()] == ["first_batch"]
    assert tail.first_time("first_batch") == 2.5


def test_environment_allow_list() -> None:
    parent = {"OPENAI_API_KEY": "k", "NNCAPTION_HOME": "/x", "LANG": "C.UTF-8", "LC_ALL": "C", "HOME": "/root",
              "GITHUB_TOKEN": "t", "PATH": "/evil:/usr/bin", "OMP_NUM_THREADS": "4", "PYTHONPATH": "/evil"}
    env = hostenv.job_environment(home="/j/home", tmpdir="/tmp", gpus=[1, 3], threads=None, parent=parent)
    assert env["HOME"] == "/j/home" and env["PATH"] == hostenv.SAFE_PATH and env["CUDA_VISIBLE_DEVICES"] == "1,3"
    assert env["OMP_NUM_THREADS"] == "4" and env["LC_ALL"] == "C"
    assert not {"OPENAI_API_KEY", "NNCAPTION_HOME", "GITHUB_TOKEN", "PYTHONPATH"} & set(env)
    with pytest.raises(ValueError):
        hostenv.job_environment(home="/h", tmpdir="/t", gpus=[], threads=1, parent={}, extra={"MY_API_KEY": "x"})


def test_python_paths_cover_the_interpreter_and_project() -> None:
    import sys

    import nncaption.netapi

    roots = hostenv.python_paths()
    for needed in (Path(sys.prefix).resolve(), Path(nncaption.netapi.__file__).resolve().parent):
        assert any(needed == r or r in needed.parents for r in roots), needed


def test_process_tree_finds_grandchildren() -> None:
    import subprocess
    import time

    # sh forks sleep (a grandchild of ours once sh itself is the child): both are in the tree, the tree ends there
    proc = subprocess.Popen(["/bin/sh", "-c", "sleep 30 & wait"])
    try:
        deadline = time.monotonic() + 10
        while len(tree := hostenv.process_tree(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.pid in tree and len(tree) == 2, tree
        assert os.getpid() not in tree
    finally:
        for pid in hostenv.process_tree(proc.pid):
            os.kill(pid, 9)
        proc.wait()
    assert hostenv.process_tree(proc.pid) == set()


# ---------------------------------------------------------------------------- prewarm


@pytest.mark.sandbox
def test_prewarm_serves_the_next_job_in_a_fresh_sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sandbox_support import leftover_processes

    monkeypatch.setenv("NNCAPTION_SECRET", "warm-secret")
    for sub in "abc":
        (tmp_path / sub).mkdir()
    data = tmp_path / "data"
    data.mkdir()
    with LocalSandbox(prewarm=True) as sb:
        first = sb.run(probe_job(tmp_path / "a", data_dir=data))
        assert first.status == OK and "prewarmed" not in first.isolation
        job = probe_job(tmp_path / "b", {"write": [str(data / "x")]}, data_dir=data)
        second = sb.run(job)
        f = facts(second, job)
        assert "prewarmed" in second.isolation
        assert (job.job_dir / "verdict.json").exists() and (job.job_dir / "job.json").exists()  # files came back
        assert "NNCAPTION_SECRET" not in f["env"] and f["write"][str(data / "x")].startswith("refused")
        if os.geteuid() == 0:
            assert f["uid"] == 65534
        if sb.mode() != "none":
            assert f["interfaces"] == ["lo"]
        # a hostile third job: a daemon and a sleep past the timeout
        third = probe_job(tmp_path / "c", {"daemon": True, "sleep": 600}, data_dir=data, timeout_s=2.0)
        r = sb.run(third)
        assert r.status == TIMEOUT and "prewarmed" in r.isolation
    assert leftover_processes(str(tmp_path)) == []  # this test's sandboxes only: others may run beside it
    assert not list(tmp_path.rglob(f"{STAGE_PREFIX}*"))


# ---------------------------------------------------------------------------- a smoke job (the runner entry), for real


@pytest.mark.sandbox
@pytest.mark.parametrize("name, ok", [("good", True), ("os_exit", False)])
def test_smoke_job_returns_its_verdict(tmp_path: Path, tiny_dataset: Any, name: str, ok: bool) -> None:
    from sandbox_support import candidate_source

    from nncaption.netapi.evaluate import make_job_dir

    spec = JobSpec(data_dir=str(Path(tiny_dataset.public_dir).resolve()), threads=1).smoke(time_limit_s=60)
    job_dir = make_job_dir(tmp_path / "job", candidate_source(name), spec)
    job = Job(job_dir, JobSpec.read(job_dir), Limits(timeout_s=90), entry=RUNNER_ENTRY)
    with get_sandbox("local", prewarm=False) as sb:
        result = sb.run(job)
    assert result.ok is ok, (result.status, result.message, result.stderr_tail[-800:])
    if ok:
        assert result.verdict is not None and result.verdict == {**result.verdict, "ok": True, "stage": "smoke"}
    else:
        assert result.category == "crashed" and (result.verdict is None or not result.verdict["ok"])


def test_gpu_jobs_get_their_devices_and_ids(tmp_path: Path) -> None:
    """The local GPU path, checked on its arguments (no GPU here): /sys and /dev/nvidia* bound, ids exported."""
    from nncaption.sandbox.bwrap import Bind, bwrap_argv

    argv = bwrap_argv([Bind(tmp_path)], chdir=tmp_path, as_root=True, gpus=True)
    assert ["--ro-bind", "/sys", "/sys"] == argv[argv.index("/sys") - 1 : argv.index("/sys") + 2]
    for dev in (d for d in os.listdir("/dev") if d.startswith("nvidia")):
        assert f"/dev/{dev}" in argv
    assert "/sys" not in bwrap_argv([Bind(tmp_path)], chdir=tmp_path, as_root=True, gpus=False)
    job = probe_job(tmp_path)
    job.gpus = [0, 2]
    sb = LocalSandbox()
    plan = sb.plan(job, job.job_dir, job.data_dir, f"{cgroups.PREFIX}{os.getpid()}-gpu")
    try:
        assert plan.env["CUDA_VISIBLE_DEVICES"] == "0,2"
        if sb.mode() == "bwrap":
            assert "/sys" in plan.argv
    finally:
        if plan.cgroup is not None:
            plan.cgroup.remove()


def test_reclaim_removes_links_and_special_files(tmp_path: Path) -> None:
    from nncaption.sandbox import ownership

    d = tmp_path / "jd"
    (d / "sub").mkdir(parents=True)
    (d / "result.json").write_text("{}")
    (d / "score.json").symlink_to("/etc/passwd")
    (d / "sub" / "loop").symlink_to(d)
    os.mkfifo(d / "sub" / "fifo")
    if os.geteuid() == 0:
        ownership.give_to(d)
    assert ownership.reclaim(d) == 3
    assert sorted(p.name for p in d.rglob("*")) == ["result.json", "sub"]
    assert (d / "result.json").stat().st_uid == os.getuid() and d.stat().st_uid == os.getuid()
