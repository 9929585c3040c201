"""The one small sandbox interface: `Sandbox.run(job) -> RunResult`.

A sandbox runs `python -m nncaption.netapi.run JOB_DIR` in isolation and reports
what happened in a typed result. It never scores: validation references are not
part of a job and never enter the sandbox.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

from nncaption.netapi.job import EpochPredictions, JobSpec, RunnerResult

# RunResult.status values
OK = "ok"
FAILED = "failed"
TIMEOUT = "timeout"
OUT_OF_MEMORY = "out-of-memory"
KILLED = "killed"
CRASHED = "crashed"
STATUSES: tuple[str, ...] = (OK, FAILED, TIMEOUT, OUT_OF_MEMORY, KILLED, CRASHED)

RUNNER_ENTRY = "nncaption.netapi.run"
SMOKE_ENTRY = "nncaption.netapi.smoke"
VERDICT_FILE = "verdict.json"  # written by the smoke entry (a netapi Verdict as a dict)

EventCallback = Callable[[dict[str, Any]], None]


@dataclass
class Limits:
    """Resource limits for one job."""

    timeout_s: float = 900.0  # whole job, wall clock
    memory_mb: int = 6144  # the CUDA torch build needs >= 4 GiB of address space to import
    cpu_time_s: float | None = None  # None = derived from timeout_s
    file_size_mb: int = 512
    max_pids: int = 256
    output_tail_bytes: int = 16_384  # kept of stdout/stderr each


@dataclass
class Job:
    """One candidate run. `job_dir` holds job.json and candidate.py (see netapi.job)."""

    job_dir: Path
    spec: JobSpec
    limits: Limits = field(default_factory=Limits)
    gpus: list[int] = field(default_factory=list)  # GPU ids for this job; empty = CPU
    # Module run as `python -m ENTRY JOB_DIR`: the runner, or e.g. "nncaption.netapi.smoke" for a smoke check.
    entry: str = RUNNER_ENTRY

    @property
    def data_dir(self) -> Path:
        return Path(self.spec.data_dir)


@dataclass
class RunResult:
    """What happened to one job, whatever the backend."""

    status: str  # one of STATUSES
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
    verdict: dict[str, Any] | None = None  # the smoke entry's verdict.json, when the job ran one

    @property
    def ok(self) -> bool:
        return self.status == OK

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@runtime_checkable
class Sandbox(Protocol):
    """Runs one job in isolation. Implementations: local, docker, ray."""

    name: str

    def run(self, job: Job, on_event: EventCallback | None = None) -> RunResult:
        """Run the job to the end (or its limits) and return a typed result.

        `on_event` receives the runner's progress events (progress.jsonl lines)
        as they appear, for progress display.
        """
        ...
