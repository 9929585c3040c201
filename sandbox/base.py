"""The one small sandbox interface: `Sandbox.run(job) -> RunResult` (and `arun`, `run_many`, `arun_many`, `close`).

A sandbox runs `python -m nncaption.netapi.run JOB_DIR` in isolation and reports
what happened in a typed result. It never scores: validation references are not
part of a job and never enter the sandbox. The shared run skeleton of the local
and docker backends is `sandbox.skeleton.BaseSandbox`.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Protocol, Self, runtime_checkable

from nncaption.netapi.job import EpochPredictions, JobSpec, RunnerResult


class RunStatus(str, Enum):
    """How a job ended, whatever the backend."""

    OK = "ok"
    FAILED = "failed"
    TIMEOUT = "timeout"
    OUT_OF_MEMORY = "out-of-memory"
    KILLED = "killed"
    CRASHED = "crashed"
    CANCELLED = "cancelled"  # the caller cancelled the run (async task cancelled, or cancel event set)

    def __str__(self) -> str:
        return self.value


# The old module constants, kept as aliases of the enum members.
OK = RunStatus.OK
FAILED = RunStatus.FAILED
TIMEOUT = RunStatus.TIMEOUT
OUT_OF_MEMORY = RunStatus.OUT_OF_MEMORY
KILLED = RunStatus.KILLED
CRASHED = RunStatus.CRASHED
CANCELLED = RunStatus.CANCELLED
STATUSES: tuple[str, ...] = tuple(s.value for s in RunStatus)

RUNNER_ENTRY = "nncaption.netapi.run"  # the one entry, for smoke (JobSpec.smoke()) and training jobs

EventCallback = Callable[[dict[str, Any]], None]


@dataclass
class Limits:
    """Resource limits for one job."""

    timeout_s: float = 900.0  # whole job, wall clock: the backstop (the runner's limits count compute)
    memory_mb: int = 6144  # the CUDA torch build needs >= 4 GiB of address space to import
    cpu_time_s: float | None = None  # RLIMIT_CPU; None = derived from compute_s (else timeout_s) x cores
    compute_s: float | None = None  # the job's compute budget per allotted core (netapi.compute)
    file_size_mb: int = 512
    max_pids: int = 256
    output_tail_bytes: int = 16_384  # kept of stdout/stderr each
    disk_mb: int = 1024  # the job directory's quota (a sized tmpfs where the host allows mounting)
    tmp_mb: int = 256  # the job's private /tmp (a sized tmpfs)


@dataclass
class Job:
    """One candidate run. `job_dir` holds candidate.py; the sandbox writes job.json from `spec` (one truth)."""

    job_dir: Path
    spec: JobSpec
    limits: Limits = field(default_factory=Limits)
    gpus: list[int] = field(default_factory=list)  # GPU ids for this job; empty = CPU (or allocated: num_gpus)
    # Module run as `python -m ENTRY JOB_DIR`: the runner (smoke and train jobs alike), or the sandbox's probe.
    entry: str = RUNNER_ENTRY
    num_gpus: int = 0  # with a sandbox's GpuAllocator and no explicit `gpus`: how many devices to allocate
    cpus: int | None = None  # cores for this job; None = the sandbox's CpuAllocator decides (free / running)

    @property
    def data_dir(self) -> Path:
        return Path(self.spec.data_dir)


@dataclass
class RunResult:
    """What happened to one job, whatever the backend."""

    status: RunStatus
    category: str | None = None  # a netapi.categories.Category value when not ok
    message: str = ""
    stdout_tail: str = ""
    stderr_tail: str = ""
    traceback_tail: str = ""
    predictions: list[EpochPredictions] = field(default_factory=list)
    runner: RunnerResult | None = None
    exit_code: int | None = None
    timings: dict[str, float] = field(default_factory=dict)  # e.g. start_to_first_batch_s, total_s
    peak_memory_mb: float | None = None
    isolation: list[str] = field(default_factory=list)  # measures actually applied
    backend: str = ""
    verdict: dict[str, Any] | None = None  # a netapi Verdict dict, derived from result.json (sandbox.outcome)
    overloaded: bool = False  # a job-error because the machine starved the job of CPU (worth one retry later)

    def __post_init__(self) -> None:
        self.status = RunStatus(self.status)

    @property
    def ok(self) -> bool:
        return self.status == RunStatus.OK

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = self.status.value
        return d


class ClosingContext(ABC):
    """`with` / `async with` for a sandbox: both close it on exit (`async with` closes in a thread, off the loop).

    Shared by `skeleton.BaseSandbox` (local, docker) and `ray_backend.RaySandbox`, which define `close`.
    """

    @abstractmethod
    def close(self) -> None:
        """Release what the sandbox holds (warm processes, pools, connections)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.close)


@runtime_checkable
class Sandbox(Protocol):
    """Runs jobs in isolation. Implementations: local, docker (both `BaseSandbox`), ray."""

    name: str

    def run(self, job: Job, on_event: EventCallback | None = None) -> RunResult:
        """Run the job to the end (or its limits) and return a typed result.

        `on_event` receives the runner's progress events (progress.jsonl lines) as they appear.
        """
        ...

    async def arun(self, job: Job, on_event: EventCallback | None = None) -> RunResult:
        """`run` for asyncio; cancelling the awaiting task kills the job, reclaims it, re-raises CancelledError."""
        ...

    def run_many(self, jobs: list[Job], on_event: EventCallback | None = None) -> list[RunResult]:
        """Run jobs concurrently; results in the order of `jobs`; events carry "job": index."""
        ...

    async def arun_many(self, jobs: list[Job], on_event: EventCallback | None = None) -> list[RunResult]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc: object) -> None: ...
