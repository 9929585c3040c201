"""Unit tests of the GPU and CPU allocators, the docker GPU request and the seccomp program (no GPU needed)."""

from __future__ import annotations

import asyncio
import struct
import threading
from pathlib import Path

import pytest

from nncaption.netapi.errors import ConfigError
from nncaption.netapi.job import JobSpec
from nncaption.sandbox import GpuAllocator, Job, Limits, parse_gpus
from nncaption.sandbox.cpus import CpuAllocator
from nncaption.sandbox.docker import DockerSandbox, gpu_device_requests


def test_parse_gpus() -> None:
    assert parse_gpus("0,1, 2,3") == [0, 1, 2, 3] and parse_gpus("") == [] and parse_gpus(None) == []
    for bad in ("0,,1", "a", "1,1", "-1"):
        with pytest.raises(ConfigError):
            parse_gpus(bad)


@pytest.mark.parametrize("jobs_per_gpu", [1, 2])
def test_async_jobs_never_over_share_a_gpu(jobs_per_gpu: int) -> None:
    alloc = GpuAllocator([0, 1, 2, 3], jobs_per_gpu=jobs_per_gpu)
    live: dict[int, int] = {g: 0 for g in alloc.gpus}
    peak: dict[int, int] = {g: 0 for g in alloc.gpus}
    concurrent = {"now": 0, "max": 0}

    async def job(n: int) -> list[int]:
        async with alloc.acquire(n) as ids:
            assert len(set(ids)) == n
            concurrent["now"] += 1
            concurrent["max"] = max(concurrent["max"], concurrent["now"])
            for g in ids:
                live[g] += 1
                peak[g] = max(peak[g], live[g])
            await asyncio.sleep(0.01)
            for g in ids:
                live[g] -= 1
            concurrent["now"] -= 1
            return ids

    async def main() -> list[list[int]]:
        return await asyncio.gather(*(job(1 + i % 2) for i in range(40)))

    got = asyncio.run(main())
    assert all(got) and max(peak.values()) == jobs_per_gpu and alloc.usage() == {0: 0, 1: 0, 2: 0, 3: 0}
    assert concurrent["max"] > 1  # they did run side by side


def test_cancelled_waiter_releases_nothing_it_did_not_get() -> None:
    alloc = GpuAllocator([7])

    async def main() -> None:
        async with alloc.acquire() as ids:
            assert ids == [7]
            waiter = asyncio.create_task(_hold(alloc))
            await asyncio.sleep(0.05)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
        assert alloc.usage() == {7: 0}
        assert await _hold(alloc) == [7]

    asyncio.run(main())


async def _hold(alloc: GpuAllocator) -> list[int]:
    async with alloc.acquire() as ids:
        return ids


def test_sync_acquire_from_threads_and_timeout() -> None:
    alloc = GpuAllocator([0, 1], jobs_per_gpu=1)
    seen: list[list[int]] = []
    lock = threading.Lock()

    def worker() -> None:
        with alloc.acquire_sync(1) as ids:
            with lock:
                seen.append(ids)
                assert sum(alloc.usage().values()) <= 2

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 8 and alloc.usage() == {0: 0, 1: 0}
    with alloc.acquire_sync(2):
        with pytest.raises(TimeoutError):
            with alloc.acquire_sync(1, timeout_s=0.05):
                pass
    with pytest.raises(ConfigError):
        alloc.try_acquire(3)
    with pytest.raises(ConfigError):
        GpuAllocator([0], jobs_per_gpu=0)


def test_docker_gets_exactly_the_allocated_devices(tmp_path: Path) -> None:
    (req,) = gpu_device_requests([2, 3])
    assert req["DeviceIDs"] == ["2", "3"] and req["Capabilities"] == [["gpu"]] and req.get("Count") in (None, 0)
    spec = JobSpec(data_dir=str(tmp_path))
    job = Job(tmp_path, spec, Limits(), gpus=[1])
    kw = DockerSandbox().container_kwargs(job, tmp_path, tmp_path, "x", cores=[0])
    assert kw["device_requests"][0]["DeviceIDs"] == ["1"] and "CUDA_VISIBLE_DEVICES" not in kw["environment"]
    assert kw["cpuset_cpus"] == "0" and kw["nano_cpus"] == 1_000_000_000
    cpu_only = DockerSandbox().container_kwargs(Job(tmp_path, spec, Limits()), tmp_path, tmp_path, "y")
    assert "device_requests" not in cpu_only and cpu_only["environment"]["CUDA_VISIBLE_DEVICES"] == ""


def test_cpu_shares() -> None:
    cpus = CpuAllocator([0, 1, 2, 3])
    a = cpus.acquire(concurrent=2)
    b = cpus.acquire(concurrent=2)
    assert len(a) == len(b) == 2 and not set(a) & set(b)
    c = cpus.acquire()  # a third job while all cores are taken: one core, the least loaded
    assert len(c) == 1
    for x in (a, b, c):
        cpus.release(x)
    assert cpus.acquire() == [0, 1, 2, 3]  # alone: every core
    assert len(CpuAllocator([0, 1]).acquire(wanted=1)) == 1


def test_seccomp_program_shape() -> None:
    from nncaption.sandbox import seccomp

    prog = seccomp.build_filter()
    assert len(prog) % 8 == 0 and len(prog) // 8 < 4096
    insns = [struct.unpack("=HBBI", prog[i : i + 8]) for i in range(0, len(prog), 8)]
    assert insns[0] == (0x20, 0, 0, 4) and insns[1][3] == seccomp.AUDIT_ARCH_X86_64  # arch checked first
    assert insns[-1] == (0x06, 0, 0, seccomp.SECCOMP_RET_ALLOW)  # default allow
    compared = {k for code, _, _, k in insns if code == 0x15}
    for name in ("add_key", "keyctl", "request_key", "mount", "ptrace", "bpf", "perf_event_open", "userfaultfd"):
        assert seccomp.DENIED_X86_64[name] in compared, name
    assert any(code == 0x45 and k == seccomp.CLONE_NEWUSER for code, _, _, k in insns)  # clone flags checked


def test_cgroup_v2_cpu_quota_is_written_where_delegated(tmp_path: Path) -> None:
    """On a plain-file stand-in of a v2 tree (this host may be v1): cpu.max = cores x period."""
    from nncaption.sandbox.cgroups import JobCgroup

    leaf = tmp_path / "parent" / "nncaption-1-x"
    leaf.mkdir(parents=True)
    (tmp_path / "parent" / "cgroup.subtree_control").write_text("memory pids cpu")
    cg = JobCgroup(2, [leaf], leaf, leaf, 0)
    assert cg.limit_cpu(2) and (leaf / "cpu.max").read_text() == "200000 100000"
    assert "cgroup-v2-cpu-max:2" in cg.applied
    assert not JobCgroup(1, [leaf], leaf, leaf, 0).limit_cpu(2)
