"""`BaseSandbox`: the run skeleton shared by the local and docker backends.

One job: write job.json from `job.spec` (the one source of truth), take a warm (pre-started) process
or start a cold one in a fresh per-job stage (a sized tmpfs, `sandbox.quota`), supervise it (wall
clock, cancellation, progress events), copy the whitelisted outputs back, remove the stage, and
interpret what happened (`outcome.interpret`). Backends implement only how a job process is started,
told to go, polled, killed, observed and disposed of.

Concurrency: `run` is thread-safe; `arun` runs it in a worker thread and turns task cancellation into
a kill; `run_many` / `arun_many` run jobs at once, each with its CPU share (`sandbox.cpus`) and, when a
`GpuAllocator` is given and `job.num_gpus` is set, its own GPUs. Warm processes are kept per setting
(up to `max_warm`, default the most jobs seen running at once, at least 2; the oldest is used first) and
each serves exactly one job.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import weakref
from abc import abstractmethod
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any, Generic, TypeVar

from nncaption.netapi.categories import Category
from nncaption.netapi.compute import Usage
from nncaption.netapi.errors import ConfigError
from nncaption.netapi.job import CANDIDATE_FILE, JOB_FILE, PROGRESS_FILE

from .base import ClosingContext, EventCallback, Job, Limits, RunResult, RunStatus
from .cpus import CpuAllocator
from .gpus import GpuAllocator
from .outcome import Observed, interpret
from .quota import OUTPUT_FILES, ReclaimError, Stage, reap_orphan_stages
from .skeleton_util import WarmSlot, close_pool, drain, remove_stage, tagged, threadsafe, write_tail
from .streams import ProgressTail

log = logging.getLogger(__name__)

H = TypeVar("H")  # a backend's handle on one started job process
STDOUT_FILE = "sandbox-stdout.txt"
STDERR_FILE = "sandbox-stderr.txt"
STALE_OUTPUTS = (*OUTPUT_FILES, STDOUT_FILE, STDERR_FILE)
CANCEL_GRACE_S = 30.0


def cpu_limit_s(limits: Limits, cores: int | None = None) -> float:
    """RLIMIT_CPU of a job (a hard cap per process; the runner's per-step limits speak first): explicit, else
    1.5 x the compute budget (else the wall-clock limit) times the cores, at least a minute."""
    n = max(1, cores or os.cpu_count() or 1)
    if limits.cpu_time_s:
        return limits.cpu_time_s
    if limits.compute_s:
        return max(60.0, 1.5 * limits.compute_s * n)
    return max(60.0, limits.timeout_s * n)


class BaseSandbox(ClosingContext, Generic[H]):
    """The shared skeleton; see the module docstring."""

    name = "base"

    def __init__(
        self,
        *,
        prewarm: bool = True,
        max_warm: int | None = None,
        cpu_allocation: bool = True,
        gpu_allocator: GpuAllocator | None = None,
        disk_quota: bool = True,
        poll_interval_s: float = 0.05,
    ) -> None:
        self.prewarm = prewarm
        self.max_warm = max_warm
        self.cpus: CpuAllocator | None = CpuAllocator() if cpu_allocation else None
        self.gpus = gpu_allocator
        self.disk_quota = disk_quota
        self.poll_interval_s = poll_interval_s
        self._warm: dict[Any, list[WarmSlot[H]]] = {}
        self._lock = threading.Lock()
        self._active = 0
        self._peak_active = 1
        self._batch = 1  # jobs a run_many runs at once (their CPU share)
        self._closed = False
        self._reaped = False
        self._executor: ThreadPoolExecutor | None = None
        self._spawn_thread: ThreadPoolExecutor | None = None
        weakref.finalize(self, close_pool, self._warm, type(self)._dispose_static, self._lock)

    def preflight(self) -> None:
        """Fail before any job when this backend cannot run jobs here (an NNCaptionError with the next step)."""
        self._ready()

    # -- backend hooks -----------------------------------------------------------------------------
    def _ready(self) -> None:
        """Fail early (ConfigError-like, with a next step) when the backend cannot run anything."""

    def _reap(self) -> None:
        """Remove what a crashed earlier parent left (once per sandbox)."""

    @abstractmethod
    def _start(self, job: Job, stage: Stage, data_dir: Path, *, warm: bool, cores: list[int] | None) -> H: ...

    @abstractmethod
    def _go(self, handle: H, job: Job, stage: Stage, cores: list[int] | None) -> bool:
        """Tell a warm process to run its job now; False when it died meanwhile."""

    @abstractmethod
    def _exited(self, handle: H) -> bool: ...

    @abstractmethod
    def _kill(self, handle: H) -> None: ...

    @abstractmethod
    def _observe(self, handle: H, job: Job, *, timed_out: bool) -> Observed:
        """After exit (or kill): exit status, signal, OOM, peak memory, output tails, isolation."""

    @abstractmethod
    def _dispose(self, handle: H) -> None:
        """Kill what is left and free the process's resources (cgroup, container); idempotent."""

    @staticmethod
    def _dispose_static(handle: Any) -> None:
        """`_dispose` without an instance (used by the finalizer); backends override."""

    def _prepare_stage(self, stage: Stage) -> None:
        """Make a stage usable by the job's user (e.g. chown to the unprivileged uid)."""

    def _usage(self, handle: H) -> Usage | None:
        """CPU time and run-queue delay of the job's processes so far (None where the backend cannot see them)."""
        return None

    # -- the skeleton ------------------------------------------------------------------------------
    def run(self, job: Job, on_event: EventCallback | None = None, cancel: threading.Event | None = None) -> RunResult:
        """Run `job` to its end; setting `cancel` kills it and returns status `cancelled`."""
        return self._run(job, on_event, cancel or threading.Event())

    def _run(self, job: Job, on_event: EventCallback | None, cancel: threading.Event) -> RunResult:
        if self._closed:
            raise ConfigError("this sandbox was closed", "create a new sandbox (or do not close it before its jobs).")
        job_dir = Path(job.job_dir).resolve()
        data_dir = Path(job.data_dir).resolve()
        if not job_dir.is_dir():
            raise ConfigError(f"job directory {job_dir} does not exist",
                              "create it with candidate.py (nncaption.netapi.evaluate.make_job_dir).")
        if not data_dir.is_dir():
            raise ConfigError(f"data directory {data_dir} does not exist",
                              "prepare the dataset first (nncaption data prepare).")
        self._ready()
        with self._lock:
            if not self._reaped:
                self._reaped = True
                reap_orphan_stages()
                self._reap()
        for name in STALE_OUTPUTS:
            (job_dir / name).unlink(missing_ok=True)
        with ExitStack() as stack:
            job, cores = self._allocate(job, stack)
            job.spec.write(job_dir)  # the job.json the job reads is exactly the spec it was given
            with self._lock:
                self._active += 1
                self._peak_active = max(self._peak_active, self._active)
            try:
                return self._run_allocated(job, cores, job_dir, data_dir, on_event, cancel)
            finally:
                with self._lock:
                    self._active -= 1

    def _allocate(self, job: Job, stack: ExitStack) -> tuple[Job, list[int] | None]:
        """This run's GPUs and cores (released when `stack` closes); threads follow the cores."""
        if not job.gpus and job.num_gpus and self.gpus is not None:
            job = replace(job, gpus=stack.enter_context(self.gpus.acquire_sync(job.num_gpus)))
        if self.cpus is not None:
            cores = self.cpus.acquire(job.cpus, concurrent=self._batch)
            stack.callback(self.cpus.release, cores)
            spec = job.spec if job.spec.threads else replace(job.spec, threads=len(cores))
            return replace(job, spec=spec, cpus=len(cores)), cores
        return job, None

    def _run_allocated(
        self,
        job: Job,
        cores: list[int] | None,
        job_dir: Path,
        data_dir: Path,
        on_event: EventCallback | None,
        cancel: threading.Event,
    ) -> RunResult:
        t_enter = time.monotonic()
        key = self._warm_key(job, job_dir, data_dir)
        slot = self._take_warm(key) if self.prewarm else None
        handle: H | None = None
        stage: Stage | None = None
        warm = False
        notes: list[str] = []
        reclaim_error: str | None = None
        obs: Observed | None = None
        cancelled = False
        try:
            if slot is not None:
                slot.stage.put_inputs(job_dir)
                self._prepare_stage(slot.stage)
                if self._go(slot.handle, job, slot.stage, cores):
                    handle, stage, warm = slot.handle, slot.stage, True
                else:
                    self._discard(slot)
            if handle is None:
                stage = Stage.create(job_dir.parent, disk_mb=job.limits.disk_mb, mount=self.disk_quota)
                stage.put_inputs(job_dir)
                self._prepare_stage(stage)
                handle = self._start(job, stage, data_dir, warm=False, cores=cores)
            assert stage is not None
            obs, cancelled = self._supervise(job, handle, stage, on_event, cancel)
            obs.timings["sandbox_start_s"] = round(time.monotonic() - t_enter - obs.timings.get("total_s", 0.0), 3)
            obs.isolation += stage.isolation + (["prewarmed"] if warm else [])
            if cores:
                obs.isolation.append("cpus:" + ",".join(map(str, cores)))
        finally:
            if handle is not None:
                self._dispose(handle)
            if stage is not None:
                notes = stage.collect(job_dir, job.limits.file_size_mb * 2**20)
                try:
                    stage.remove()
                except (ReclaimError, OSError) as e:
                    log.error("job stage %s could not be removed: %s", stage.path, e)
                    reclaim_error = str(e)
        assert obs is not None
        obs.notes += notes
        write_tail(job_dir / STDOUT_FILE, obs.stdout_tail)
        write_tail(job_dir / STDERR_FILE, obs.stderr_tail)
        result = interpret(job_dir, job.entry, obs, timeout_s=job.limits.timeout_s, backend=self.name, spec=job.spec)
        if reclaim_error is not None:
            result.status, result.category = RunStatus.FAILED, Category.CRASHED.value
            result.message = f"the job's directory could not be reclaimed ({reclaim_error}); its result is not trusted"
        if cancelled:
            result.status, result.category = RunStatus.CANCELLED, None
            result.message = "the run was cancelled by the caller; the job was killed and its resources reclaimed"
        if self.prewarm and not cancelled and not self._closed:
            self._spawn_warm(key, job, job_dir, data_dir)
        return result

    def _supervise(
        self, job: Job, handle: H, stage: Stage, on_event: EventCallback | None, cancel: threading.Event
    ) -> tuple[Observed, bool]:
        progress = ProgressTail(stage.path / PROGRESS_FILE)
        t0_wall, t0 = time.time(), time.monotonic()
        deadline = t0 + job.limits.timeout_s
        start = self._usage(handle)
        used: Usage | None = None
        timed_out = cancelled = False
        while not self._exited(handle):
            drain(progress, on_event)
            if cancel.is_set():
                cancelled = True
                self._kill(handle)
                break
            if time.monotonic() >= deadline:
                timed_out = True
                now = self._usage(handle)  # before the kill: what the job got of the machine decides the verdict
                used = now.since(start) if now is not None and start is not None else None
                self._kill(handle)
                break
            cancel.wait(self.poll_interval_s)
        elapsed = time.monotonic() - t0
        obs = self._observe(handle, job, timed_out=timed_out)
        obs.usage, obs.cores = used, max(1, job.cpus or job.spec.threads or os.cpu_count() or 1)
        drain(progress, on_event)
        obs.timings["total_s"] = round(elapsed, 3)
        for event, name in (("start", "start_to_runner_start_s"), ("first_batch", "start_to_first_batch_s")):
            t = progress.first_time(event)
            if t is not None:
                obs.timings[name] = round(t - t0_wall, 3)
        return obs, cancelled

    # -- warm pool ---------------------------------------------------------------------------------
    @staticmethod
    def _warm_key(job: Job, job_dir: Path, data_dir: Path) -> tuple[Any, ...]:
        """What a pre-started process fixed at its start (the wall-clock timeout starts at "go")."""
        lim = job.limits
        fixed = (lim.memory_mb, lim.max_pids, lim.file_size_mb, lim.output_tail_bytes, lim.disk_mb, lim.tmp_mb,
                 int(cpu_limit_s(lim)))
        return (str(data_dir), job.entry, tuple(job.gpus), fixed)

    def _take_warm(self, key: Any) -> WarmSlot[H] | None:
        with self._lock:
            slots = self._warm.get(key) or []
            slot = slots.pop(0) if slots else None  # the oldest: the most likely to have finished importing
        if slot is not None and self._exited(slot.handle):  # died while waiting (killed, failed import)
            self._discard(slot)
            return None
        return slot

    def _spawn_warm(self, key: Any, job: Job, job_dir: Path, data_dir: Path) -> None:
        """Pre-start the process of a next job with the same settings, in a fresh stage of its own."""
        # at least two, so that back-to-back jobs get a slot started a whole job earlier (importing torch takes
        # seconds under load); more when jobs run at once
        limit = self.max_warm or min(4, max(2, self._peak_active))
        with self._lock:
            others = [s for k, ss in self._warm.items() if k != key for s in ss]
            for k in [k for k in self._warm if k != key]:
                del self._warm[k]  # in place: the finalizer holds this very dict
            missing = limit - len(self._warm.get(key, []))
        for s in others:  # only the latest settings are kept warm
            self._discard(s)
        for _ in range(max(0, missing)):
            if not self._spawn_one(key, job, job_dir, data_dir):
                return

    def _spawn_one(self, key: Any, job: Job, job_dir: Path, data_dir: Path) -> bool:
        stage = None
        try:
            stage = Stage.create(job_dir.parent, disk_mb=job.limits.disk_mb, mount=self.disk_quota)
            self._prepare_stage(stage)
            # Started from one long-lived thread: bwrap --die-with-parent (PR_SET_PDEATHSIG) fires when the
            # *thread* that started it exits, and run_many's worker threads end before the warm process is used.
            handle = self._spawner().submit(self._start, job, stage, data_dir, warm=True, cores=None).result()
        except (OSError, ConfigError) as e:
            log.warning("could not pre-start a warm %s sandbox: %s", self.name, e)
            if stage is not None:
                remove_stage(stage)
            return False
        with self._lock:
            self._warm.setdefault(key, []).append(WarmSlot(stage, handle))
        return True

    def _discard(self, slot: WarmSlot[H]) -> None:
        self._dispose(slot.handle)
        remove_stage(slot.stage)

    def warm_count(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._warm.values())

    # -- concurrency -------------------------------------------------------------------------------
    def _spawner(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._spawn_thread is None:
                self._spawn_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sandbox-{self.name}-warm")
            return self._spawn_thread

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=64, thread_name_prefix=f"sandbox-{self.name}")
            return self._executor

    async def arun(self, job: Job, on_event: EventCallback | None = None) -> RunResult:
        """`run` without blocking the loop. Cancelling the awaiting task kills the job, waits until its
        processes, container, cgroup and stage are gone (bounded), then re-raises CancelledError."""
        if not job.gpus and job.num_gpus and self.gpus is not None:
            # wait for GPUs here, not in a worker thread, so that cancelling the wait is immediate
            async with self.gpus.acquire(job.num_gpus) as ids:
                return await self.arun(replace(job, gpus=ids), on_event)
        loop = asyncio.get_running_loop()
        cancel = threading.Event()
        fut = loop.run_in_executor(self._pool(), self._run, job, threadsafe(loop, on_event), cancel)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            cancel.set()
            done, _ = await asyncio.wait({fut}, timeout=CANCEL_GRACE_S)
            if not done:
                log.error("a cancelled %s job did not finish reclaiming within %s s", self.name, CANCEL_GRACE_S)
            elif not fut.cancelled() and fut.exception() is not None:
                log.warning("a cancelled %s job ended with an error: %s", self.name, fut.exception())
            raise

    def run_many(self, jobs: list[Job], on_event: EventCallback | None = None) -> list[RunResult]:
        """Run every job at once (each with its CPU share); results in order; events carry "job": index."""
        if not jobs:
            return []
        self._batch = len(jobs)
        try:
            with ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix=f"sandbox-{self.name}") as ex:
                futs = [ex.submit(self._run, job, tagged(on_event, i), threading.Event())
                        for i, job in enumerate(jobs)]
                return [f.result() for f in futs]
        finally:
            self._batch = 1

    async def arun_many(self, jobs: list[Job], on_event: EventCallback | None = None) -> list[RunResult]:
        """`run_many` for asyncio; cancelling it cancels (kills and reclaims) every job."""
        self._batch = max(1, len(jobs))
        try:
            return list(await asyncio.gather(*(self.arun(j, tagged(on_event, i)) for i, j in enumerate(jobs))))
        finally:
            self._batch = 1

    # -- lifetime ----------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the warm processes and remove their stages; the sandbox runs nothing afterwards."""
        self._closed = True
        close_pool(self._warm, self._dispose, self._lock)
        for ex in (self._executor, self._spawn_thread):
            if ex is not None:
                ex.shutdown(wait=False)


__all__ = ["BaseSandbox", "CANDIDATE_FILE", "JOB_FILE", "STDERR_FILE", "STDOUT_FILE", "cpu_limit_s"]
