"""Time limits count the candidate's own compute (issue 14): a busy machine does not turn a model that fits its limit
into a `timeout`, a candidate that computes past its limit still is one, a job the machine starved is a job-error
("machine overloaded"), and an identical failed job is not run twice.

The load is real: busy-loop processes, each in a session of its own (the kernel's autogroup shares CPU per session,
and each sandbox job runs in a session of its own), hogging the machine's cores.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from nncaption.netapi.categories import Category
from nncaption.netapi.compute import OVERLOADED_PREFIX, Usage, backstop_verdict
from nncaption.sandbox import get_sandbox
from nncaption.sandbox.base import RUNNER_ENTRY as ENTRY
from nncaption.sandbox.base import RunResult, RunStatus
from nncaption.sandbox.outcome import Observed, interpret
from nncaption.sandbox.report import ReportStatus
from nncaption.sandbox.service import CandidateService, EvalSettings

CANDIDATES = Path(__file__).parent / "candidates"
WORK = """

def _work():  # a fixed amount of work per batch, on the job's torch threads (intra-op parallel matmuls)
    a = torch.ones(256, 256) / 256
    for _ in range(__STEPS__):
        a = torch.tanh(a @ a)
    return a
"""


def working_candidate(steps: int) -> str:
    """tests/candidates/good_tiny.py doing `steps` 256x256 matmuls before each training batch."""
    code = (CANDIDATES / "good_tiny.py").read_text() + WORK.replace("__STEPS__", str(steps))
    loop = "        for images, captions in train_data:\n"
    assert loop in code
    return code.replace(loop, loop + "            _work()\n")


@contextmanager
def hogs(n: int = 4) -> Iterator[list[subprocess.Popen[bytes]]]:
    """`n` busy loops, each in its own session, killed (by pid) whatever happens."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(n):
            procs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True,
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL))
        time.sleep(0.5)
        yield procs
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=10)


@contextmanager
def service(data: Any, tmp_path: Path, **settings: Any) -> Iterator[CandidateService]:
    base: dict[str, Any] = {"epochs": 1, "batch_size": 8, "max_train_batches": 2, "max_val_images": 8,
                            "threads": 2, "reuse": False, "baseline": False}
    with get_sandbox("local", prewarm=False) as sandbox:
        yield CandidateService(data, sandbox, jobs_root=tmp_path / "jobs",
                               settings=EvalSettings(**{**base, **settings}))


def epoch_cpu_s(events: list[dict[str, Any]]) -> float:
    ends = [e for e in events if e.get("event") == "epoch_end" and isinstance(e.get("cpu_s"), float)]
    assert ends, events
    return float(ends[-1]["cpu_s"])


# ---------------------------------------------------------------------------------------------- classification


def test_the_backstop_tells_a_starved_job_from_a_waiting_one() -> None:
    cores = 2
    starved = Usage(cpu_s=8.0, run_delay_s=20.0, wall=30.0)  # 2 threads got ~0.27 core for 30 s, waited 20 s
    assert backstop_verdict(starved, cores)[0]
    sleeping = Usage(cpu_s=0.2, run_delay_s=0.01, wall=30.0)  # a sleep, a blocked read: the candidate's timeout
    assert not backstop_verdict(sleeping, cores)[0]
    served = Usage(cpu_s=25.0, run_delay_s=10.0, wall=30.0)  # a single busy thread that got most of a core
    assert not backstop_verdict(served, cores)[0]
    # a candidate that crowds itself (threads pinned to one core) starves only itself: the machine was not busy
    crowded = Usage(cpu_s=29.0, run_delay_s=400.0, wall=30.0, machine_busy_s=30.0)
    assert not backstop_verdict(crowded, cores)[0]
    assert backstop_verdict(Usage(8.0, 20.0, 30.0, machine_busy_s=58.0), cores)[0]  # others used 50 CPU-seconds
    words = backstop_verdict(starved, cores)[1]
    assert "8.0 CPU-seconds" in words and "30.0 s of wall time" in words and "20.0 s of it waiting" in words


def test_a_job_killed_by_the_sandbox_backstop_while_starved_is_a_job_error(tmp_path: Path) -> None:
    starved = Observed(exit_code=None, signal=9, timed_out=True, usage=Usage(6.0, 30.0, 40.0), cores=2)
    r = interpret(tmp_path, ENTRY, starved, timeout_s=40, backend="test")
    assert r.status == ReportStatus.FAILED and r.category == Category.JOB_ERROR.value and r.overloaded
    assert r.message.startswith(OVERLOADED_PREFIX) and "6.0 CPU-seconds" in r.message
    waiting = Observed(exit_code=None, signal=9, timed_out=True, usage=Usage(0.5, 0.1, 40.0), cores=2)
    r = interpret(tmp_path, ENTRY, waiting, timeout_s=40, backend="test")
    assert r.status == ReportStatus.TIMEOUT and r.category == "timeout" and not r.overloaded
    assert "0.5 CPU-seconds" in r.message and "40.0 s of wall time" in r.message


# ---------------------------------------------------------------------------------------------- under load


@pytest.mark.slow
@pytest.mark.sandbox
def test_an_epoch_that_fits_when_idle_fits_under_four_hogs(tiny_dataset: Any, tmp_path: Path) -> None:
    code = working_candidate(1500)
    idle_events: list[dict[str, Any]] = []
    with service(tiny_dataset, tmp_path / "idle", epoch_time_limit_s=600.0) as svc:
        report = svc.evaluate_sync(code, on_event=idle_events.append)
    assert report.ok, report.message
    limit = 2 * epoch_cpu_s(idle_events) / 2  # twice the idle CPU time per allotted core (threads=2)
    events: list[dict[str, Any]] = []
    with hogs(4), service(tiny_dataset, tmp_path / "loaded", epoch_time_limit_s=max(limit, 0.2)) as svc:
        t0 = time.monotonic()
        report = svc.evaluate_sync(code, on_event=events.append)
        wall = time.monotonic() - t0
    assert report.category != Category.TIMEOUT and report.status != ReportStatus.TIMEOUT, report.message
    assert report.ok, report.message
    walls = [e.get("seconds") for e in events if e.get("event") == "epoch_end"]
    print(f"limit {limit:.2f} s of compute; epoch CPU idle {epoch_cpu_s(idle_events):.2f} s, under the hogs "
          f"{epoch_cpu_s(events):.2f} s in {walls} s of wall time; job {wall:.1f} s")


@pytest.mark.slow
@pytest.mark.sandbox
def test_a_busy_loop_past_its_cpu_limit_is_a_timeout_and_is_not_run_twice(tiny_dataset: Any, tmp_path: Path) -> None:
    code = (CANDIDATES / "bad_infinite_loop.py").read_text()
    with hogs(4), service(tiny_dataset, tmp_path, threads=1, smoke_time_limit_s=2.0, reuse=True) as svc:
        first = svc.evaluate_sync(code)
    assert first.category == Category.TIMEOUT and not first.reused, first.message
    assert "2 s budget (CPU time per allotted core)" in first.message, first.message
    assert "CPU-seconds" in first.message and "s of wall time" in first.message, first.message
    # the identical job (same code, spec, dataset) failed for the candidate's own reason: its verdict is reused
    events: list[dict[str, Any]] = []
    with service(tiny_dataset, tmp_path, threads=1, smoke_time_limit_s=2.0, reuse=True) as svc:
        t0 = time.monotonic()
        again = svc.evaluate_sync(code, on_event=events.append)
    assert again.reused and again.category == Category.TIMEOUT and again.job_id == first.job_id
    assert again.message == first.message and time.monotonic() - t0 < 30
    assert [e["event"] for e in events] == ["reused"]  # no smoke, no training: nothing ran


# ---------------------------------------------------------------------------------------------- retry once


class StarvedSandbox:
    """A backend whose every job the machine starved (a real one cannot be starved on cue): counts its jobs."""

    name = "starved"

    def __init__(self) -> None:
        self.jobs = 0

    async def arun(self, job: Any, on_event: Any = None) -> RunResult:
        self.jobs += 1
        return RunResult(status=RunStatus.FAILED, category=Category.JOB_ERROR.value, overloaded=True,
                         message=f"{OVERLOADED_PREFIX}: the job was stopped by its wall-clock backstop after ...")


def test_an_overloaded_job_runs_once_more_after_a_pause_and_is_never_reused(tiny_dataset: Any,
                                                                            tmp_path: Path) -> None:
    sandbox = StarvedSandbox()
    svc = CandidateService(tiny_dataset, sandbox, jobs_root=tmp_path / "jobs",  # type: ignore[arg-type]
                           settings=EvalSettings(epochs=1, overload_retry_pause_s=0.3, baseline=False))
    events: list[dict[str, Any]] = []
    t0 = time.monotonic()
    report = svc.evaluate_sync((CANDIDATES / "good_tiny.py").read_text(), on_event=events.append)
    assert report.category == Category.JOB_ERROR and OVERLOADED_PREFIX in report.message
    assert sandbox.jobs == 2 and time.monotonic() - t0 >= 0.3  # one more run, after the pause; not a third
    assert [e["reason"] for e in events if e["event"] == "retry"] == ["machine overloaded"]
    again = svc.evaluate_sync((CANDIDATES / "good_tiny.py").read_text())
    assert not again.reused and sandbox.jobs == 4  # a job-error is the machine's: never reused


# ---------------------------------------------------------------------------------------------- the runner, starved


@pytest.mark.slow
def test_a_step_the_machine_starves_ends_as_machine_overloaded(tiny_dataset: Any, tmp_path: Path) -> None:
    """A busy learn pinned to one core with sixteen hogs: it gets ~1/17 of the core, so it reaches neither its compute
    limit nor a verdict of its own before the hard backstop (8x the limit): job-error, not the candidate's timeout."""
    from tiny_candidates import tiny_candidate

    from nncaption.netapi.evaluate import make_job_dir
    from nncaption.netapi.job import EXIT_RUNNER_ERROR, JobSpec, read_result
    from nncaption.netapi.train import run_job

    job = make_job_dir(tmp_path / "job", tiny_candidate(spin_in_learn=5.0),
                       JobSpec(data_dir=str(tiny_dataset.public_dir), epochs=1, max_train_batches=2, threads=1,
                               decode_batch_size=16, epoch_time_limit_s=0.3))
    before = os.sched_getaffinity(0)
    core = min(before)
    try:
        os.sched_setaffinity(0, {core})  # the forked candidate inherits it
        with hogs(0) as procs:
            for _ in range(16):
                procs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True,
                                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL))
                os.sched_setaffinity(procs[-1].pid, {core})
            time.sleep(0.5)
            code = run_job(job)
    finally:
        os.sched_setaffinity(0, before)
    result = read_result(job)
    assert result is not None and code == EXIT_RUNNER_ERROR and result.status == "error", result
    assert result.message.startswith(OVERLOADED_PREFIX) and "CPU-seconds" in result.message, result.message
    assert "waiting for a CPU" in result.message and result.step.value == "learn"
