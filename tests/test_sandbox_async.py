"""Concurrent sandboxes for real: arun cancellation (local and docker) kills the job and reclaims everything,
run_many / arun_many, several warm runs at once, CPU shares. Probe jobs (no torch) keep it fast."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from sandbox_support import docker_engine_or_skip, ensure_offline_image, leftover_processes

from nncaption.netapi.job import JobSpec
from nncaption.sandbox import CANCELLED, OK, Job, Limits, RunStatus, cgroups, get_sandbox
from nncaption.sandbox.local import LocalSandbox
from nncaption.sandbox.probe import read_facts
from nncaption.sandbox.quota import STAGE_PREFIX

PROBE = "nncaption.sandbox.probe"


def probe_job(root: Path, name: str, instructions: dict | None = None, timeout_s: float = 60.0) -> Job:
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    job_dir = root / name
    job_dir.mkdir(parents=True)
    if instructions:
        (job_dir / "probe.json").write_text(json.dumps(instructions))
    return Job(job_dir, JobSpec(data_dir=str(data)), Limits(timeout_s=timeout_s, memory_mb=3000), entry=PROBE)


def own_cgroups() -> list[Path]:
    out: list[Path] = []
    for ctl in ("memory", "pids", "unified"):
        base = Path("/sys/fs/cgroup") / ctl
        out += [p for p in base.rglob(f"{cgroups.PREFIX}{os.getpid()}-*") if p.is_dir()] if base.is_dir() else []
    return out


def assert_reclaimed(root: Path) -> None:
    assert leftover_processes(str(root)) == []
    assert not list(root.glob(f"{STAGE_PREFIX}*")), "a job stage was left behind"
    assert str(root) not in Path("/proc/self/mountinfo").read_text()


async def cancel_after_start(sb: Any, job: Job, started: Path | None = None) -> float:
    """Start `job` with arun, cancel it once it runs; returns seconds from cancel to CancelledError."""
    task = asyncio.create_task(sb.arun(job))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        if leftover_processes(str(job.job_dir.parent)):  # the job's processes are up
            break
    await asyncio.sleep(0.5)
    assert not task.done(), task.result() if task.done() else None
    t0 = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return time.monotonic() - t0


@pytest.mark.sandbox
def test_cancelling_arun_kills_a_local_job_and_reclaims_it(tmp_path: Path) -> None:
    job = probe_job(tmp_path, "job", {"daemon": True, "sleep": 600})

    async def main() -> float:
        async with get_sandbox("local", prewarm=False) as sb:
            return await cancel_after_start(sb, job)

    took = asyncio.run(main())
    assert took < 5, took
    assert_reclaimed(tmp_path)
    assert own_cgroups() == []


@pytest.mark.sandbox
def test_cancel_event_returns_cancelled(tmp_path: Path) -> None:
    import threading

    cancel = threading.Event()
    threading.Timer(1.0, cancel.set).start()
    with LocalSandbox(prewarm=False) as sb:
        r = sb.run(probe_job(tmp_path, "job", {"sleep": 600}), cancel=cancel)
    assert r.status is RunStatus.CANCELLED and r.status == CANCELLED == "cancelled"
    assert r.timings["total_s"] < 30  # cancelled after 1 s, not the 600 s sleep
    assert_reclaimed(tmp_path)


@pytest.mark.sandbox
def test_run_many_and_concurrent_warm_runs(tmp_path: Path) -> None:
    events: list[dict] = []
    with LocalSandbox() as sb:
        first = sb.run_many([probe_job(tmp_path, f"a{i}") for i in range(3)], on_event=events.append)
        assert [r.status for r in first] == [OK] * 3
        cores = [next(m for m in r.isolation if m.startswith("cpus:")) for r in first]
        assert all(c.count(",") == 0 for c in cores), cores  # 3 jobs on <= 2 cores: one core each
        assert sb.warm_count() >= 2  # warm slots for the next batch (one per job seen at once, <= 4)

        batch_two = [probe_job(tmp_path, f"b{i}") for i in range(3)]

        async def batch() -> list[Any]:
            return await sb.arun_many(batch_two)

        second = asyncio.run(batch())
        assert [r.status for r in second] == [OK] * 3, [(r.status, r.message, r.stderr_tail[-300:]) for r in second]
        assert sum("prewarmed" in r.isolation for r in second) >= 2
        stages = {read_facts(j.job_dir)["cwd"] for j in batch_two}
        assert len(stages) == 3  # each job its own stage
    assert_reclaimed(tmp_path)


@pytest.mark.sandbox
def test_gpu_allocator_gives_the_job_its_own_devices(tmp_path: Path) -> None:
    from nncaption.sandbox import GpuAllocator

    alloc = GpuAllocator([3, 5], jobs_per_gpu=1)
    jobs = [probe_job(tmp_path, f"g{i}") for i in range(2)]
    for j in jobs:
        j.num_gpus = 1
    with get_sandbox("local", prewarm=False, gpu_allocator=alloc) as sb:
        results = sb.run_many(jobs)
    assert [r.status for r in results] == [OK, OK]
    seen = sorted(read_facts(j.job_dir)["env"]["CUDA_VISIBLE_DEVICES"] for j in jobs)
    assert seen == ["3", "5"] and alloc.usage() == {3: 0, 5: 0}


@pytest.mark.sandbox
@pytest.mark.docker
def test_cancelling_arun_removes_the_docker_container(tmp_path: Path) -> None:
    from nncaption.sandbox.docker import LABEL_OWNER, owner_label

    engine = docker_engine_or_skip()
    ensure_offline_image(engine)
    job = probe_job(tmp_path, "job", {"daemon": True, "sleep": 600})

    async def main() -> float:
        async with get_sandbox("docker", prewarm=False) as sb:
            task = asyncio.create_task(sb.arun(job))
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                await asyncio.sleep(0.3)
                rows = engine.api.containers(filters={"label": f"{LABEL_OWNER}={owner_label()}"})  # type: ignore[attr-defined]
                if rows:
                    break
            await asyncio.sleep(1.0)
            assert not task.done()
            t0 = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return time.monotonic() - t0

    took = asyncio.run(main())
    assert took < 10, took
    mine = engine.api.containers(all=True, filters={"label": f"{LABEL_OWNER}={owner_label()}"})  # type: ignore[attr-defined]
    assert mine == []
    assert_reclaimed(tmp_path)


def test_arun_waiting_for_a_gpu_is_cancelled_without_starting_the_job(tmp_path: Path) -> None:
    from nncaption.sandbox import GpuAllocator

    alloc = GpuAllocator([0])
    job = probe_job(tmp_path, "job")
    job.num_gpus = 1

    async def main() -> None:
        async with get_sandbox("local", prewarm=False, gpu_allocator=alloc) as sb:
            async with alloc.acquire() as held:  # the only GPU is busy
                assert held == [0]
                task = asyncio.create_task(sb.arun(job))
                await asyncio.sleep(0.3)
                assert not task.done()
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task

    asyncio.run(main())
    assert alloc.usage() == {0: 0}
    assert not (job.job_dir / "result.json").exists() and not (job.job_dir / "job.json").exists()
    assert_reclaimed(tmp_path)
