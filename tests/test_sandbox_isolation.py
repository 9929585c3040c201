"""The local sandbox's kernel-level isolation, probed from inside (no torch: fast), plus the disk quota.

Under CI=true nothing here may skip: a CI host without bubblewrap, seccomp or mount rights must fail the
build, so that the isolation tests elsewhere cannot pass vacuously against an unisolated sandbox.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nncaption.netapi.job import JobSpec
from nncaption.sandbox import OK, Job, Limits, RunResult, get_sandbox
from nncaption.sandbox.local import LocalSandbox
from nncaption.sandbox.probe import read_facts
from nncaption.sandbox.quota import STAGE_PREFIX, ReclaimError, remove_tree

PROBE = "nncaption.sandbox.probe"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def probe_job(root: Path, instructions: dict | None = None, **limits: float) -> Job:
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "data" / "meta.json").write_text("{}")
    job_dir = root / "job"
    job_dir.mkdir(parents=True)
    spec = JobSpec(data_dir=str(root / "data"))
    if instructions:
        (job_dir / "probe.json").write_text(json.dumps(instructions))
    return Job(job_dir, spec, Limits(**{"timeout_s": 30.0, **limits}), entry=PROBE)  # type: ignore[arg-type]


def facts(result: RunResult, job: Job) -> dict:
    assert result.status == OK, (result.status, result.message, result.stderr_tail[-1000:])
    return read_facts(job.job_dir)


def need(condition: bool, why: str) -> None:
    """Skip when the host lacks a measure, except under CI=true, where it is a failure."""
    if not condition:
        if IN_CI:
            pytest.fail(f"CI=true and {why}: the sandbox would run without this isolation")
        pytest.skip(why)


@pytest.mark.sandbox
def test_ci_runs_the_local_sandbox_isolated(tmp_path: Path) -> None:
    """Fails under CI=true when the local sandbox would run with no namespaces, filter, quota or uid drop."""
    sb = LocalSandbox(prewarm=False)
    need(sb.mode() == "bwrap", f"bubblewrap does not work here (mode {sb.mode()!r})")
    job = probe_job(tmp_path)
    result = sb.run(job)
    f = facts(result, job)
    assert {"netns:bwrap", "pidns", "seccomp", "fs-view:minimal", "env-allowlist"} <= set(result.isolation)
    assert f["interfaces"] == ["lo"] and f["status"]["Seccomp"] == "2" and f["status"]["NoNewPrivs"] == "1"
    need(os.geteuid() == 0, "not root: no uid drop and no tmpfs quota")
    assert "uid:65534" in result.isolation and f["uid"] == 65534 and f["status"]["CapEff"] == "0" * 16
    assert any(m.startswith("disk-quota:") for m in result.isolation), result.isolation


@pytest.mark.sandbox
def test_keyring_user_namespaces_and_ptrace_are_refused(tmp_path: Path) -> None:
    sb = LocalSandbox(prewarm=False)
    need(sb.mode() == "bwrap" and sb.use_seccomp, "no bubblewrap seccomp filter on this host")
    job = probe_job(tmp_path / "a", {"kernel": True})
    f = facts(sb.run(job), job)
    assert f["kernel"] == {k: "refused: EPERM" for k in f["kernel"]}, f["kernel"]
    # the control: without the filter the same calls work here, so the assertion above is not vacuous
    job = probe_job(tmp_path / "b", {"kernel": True})
    control = facts(LocalSandbox(prewarm=False, use_seccomp=False).run(job), job)
    assert control["kernel"]["add_key"] == "ok" or control["kernel"]["unshare_user"] == "ok", control["kernel"]


@pytest.mark.sandbox
def test_tmp_is_private_writable_and_sized(tmp_path: Path) -> None:
    sb = LocalSandbox(prewarm=False)
    need(sb.mode() == "bwrap", "no bubblewrap here")
    job = probe_job(tmp_path, {"tmp": True}, tmp_mb=64)
    f = facts(sb.run(job), job)
    assert f["tmp"]["tempfile"].startswith("written: /tmp/"), f["tmp"]
    assert f["tmp"]["size_mb"] == 64 and f["env"]["TMPDIR"] == "/tmp"


@pytest.mark.sandbox
def test_disk_quota_caps_what_a_job_writes_and_nothing_stays(tmp_path: Path) -> None:
    need(os.geteuid() == 0, "not root: the stage cannot be a sized tmpfs")
    job = probe_job(tmp_path, {"fill": [5, 100], "deep": 1500}, disk_mb=160)
    result = LocalSandbox(prewarm=False).run(job)
    f = facts(result, job)
    assert f["fill"] == "stopped at file 1: ENOSPC" and f["deep"] == 1500
    assert "disk-quota:160m" in result.isolation
    host = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink())
    assert host < 1 * 2**20, host
    assert sorted(p.name for p in job.job_dir.iterdir()) == [
        "job.json",
        "predictions.json",
        "probe.json",
        "result.json",
        "sandbox-stderr.txt",
        "sandbox-stdout.txt",
        "verdict.json",
    ]
    assert not list(tmp_path.glob(f"{STAGE_PREFIX}*"))
    assert str(tmp_path) not in Path("/proc/self/mountinfo").read_text()


def test_remove_tree_is_iterative_and_capped(tmp_path: Path) -> None:
    root = tmp_path / "t"
    root.mkdir()
    fd = os.open(root, os.O_RDONLY)
    for _ in range(1500):  # deeper than any recursive walk or PATH_MAX allows
        os.mkdir("d", dir_fd=fd)
        nfd = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    os.symlink("/etc", "link", dir_fd=fd)
    os.close(fd)
    remove_tree(root, max_depth=32)
    assert not root.exists() and Path("/etc/passwd").exists()
    wide = tmp_path / "w"
    wide.mkdir()
    for i in range(50):
        (wide / str(i)).write_text("x")
    with pytest.raises(ReclaimError):
        remove_tree(wide, max_entries=10)


@pytest.mark.sandbox
def test_a_stage_that_cannot_be_reclaimed_is_a_candidate_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nncaption.sandbox import quota

    def refuse(self: quota.Stage) -> None:
        raise ReclaimError("too many entries (test)")

    monkeypatch.setattr(quota.Stage, "remove", refuse)
    job = probe_job(tmp_path)
    result = LocalSandbox(prewarm=False, disk_quota=False).run(job)
    assert result.status == "failed" and result.category == "crashed" and "reclaimed" in result.message
    for stage in tmp_path.glob(f"{STAGE_PREFIX}*"):
        remove_tree(stage)


@pytest.mark.sandbox
@pytest.mark.slow
def test_a_candidate_writing_2_gib_in_400_mib_files_fails_and_leaves_nothing(
    tmp_path: Path, tiny_dataset: object
) -> None:
    """The eval-model disk attack at the sandbox level, through the real runner."""
    from sandbox_support import HOSTILE_DIR, tiny_spec

    from nncaption.netapi.evaluate import make_job_dir

    need(os.geteuid() == 0, "not root: no tmpfs quota")
    writer = (
        "import os as _os\n"
        "_block = b'\\0' * 2**20\n"
        "for _i in range(5):\n"
        "    with open(f'blob-{_i}.bin', 'wb') as _f:\n"
        "        for _ in range(400):\n"
        "            _f.write(_block)\n"
    )
    spec = tiny_spec(Path(tiny_dataset.public_dir))  # type: ignore[attr-defined]
    job_dir = make_job_dir(tmp_path / "job", writer + "\n" + (HOSTILE_DIR / "_net.py").read_text(), spec)
    limits = Limits(timeout_s=120, memory_mb=4096, disk_mb=512, cpu_time_s=300)
    with get_sandbox("local", prewarm=False) as sb:
        result = sb.run(Job(job_dir, spec, limits))
    assert result.status != OK and result.category, (result.status, result.message)
    host = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink())
    assert host < 512 * 2**20 and not list(tmp_path.rglob("blob-*")), host
    assert not list(tmp_path.glob(f"{STAGE_PREFIX}*"))
