"""From what a backend observed to a RunResult status, category and verdict (shared by every backend).

Everything in the job dir is hostile input: result.json and predictions.json are
read bounded and schema-checked (`nncaption.netapi.jobfiles`); any failure to read
or validate them is a candidate failure with a category, never an exception here.

Rules, in order:
1. our wall-clock backstop fired: starved by the machine (netapi.compute.backstop_verdict: little CPU
   used, long waits for a CPU) -> failed / job-error "machine overloaded" (RunResult.overloaded);
   else                                                  -> timeout (the message gives CPU and wall seconds)
2. the runner wrote a valid result.json:
   ok + valid predictions (and a clean exit)             -> ok
   ok with missing or malformed predictions              -> failed / eval-contract
   failed: its category (timeout / out-of-memory map to those statuses, a crash signal to crashed)
   error (the runner could not run the job)              -> failed / crashed
3. result.json exists but is malformed                   -> failed / crashed
4. the kernel OOM killer hit the job                     -> out-of-memory
5. death by signal: SIGSEGV/SIGBUS/SIGILL/SIGFPE/SIGABRT -> crashed; SIGXCPU -> timeout;
   SIGKILL while near the memory limit                   -> out-of-memory; other SIGKILL -> killed
6. exit without result (0 or not)                        -> failed / crashed ("exited early")

Every job gets a verdict ({ok, stage, category, message, line}) derived from the
outcome; predictions are handed back only for a job that ended ok.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

from nncaption.netapi.categories import Category, Verdict
from nncaption.netapi.compute import OVERLOADED_PREFIX, Usage, backstop_verdict
from nncaption.netapi.job import (
    EXIT_RUNNER_ERROR,
    RESULT_FILE,
    EpochPredictions,
    JobSpec,
    Mode,
    RunnerResult,
    RunnerStatus,
    Stage,
)
from nncaption.netapi.jobfiles import JobFileError, expected_val_ids, load_predictions, load_result
from nncaption.netapi.safetext import safe_text

from .base import CRASHED, FAILED, KILLED, OK, OUT_OF_MEMORY, RUNNER_ENTRY, TIMEOUT, RunResult, RunStatus
from .streams import last_traceback

log = logging.getLogger(__name__)

CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT, signal.SIGSYS}
MESSAGE_LIMIT = 8000
TRACEBACK_LIMIT = 8000


@dataclass
class Observed:
    """What a backend saw of one job, before interpretation."""

    exit_code: int | None  # None when the process was never seen to exit
    signal: int | None = None  # the signal that ended the process, when known
    timed_out: bool = False
    oom_killed: bool = False
    peak_memory_bytes: int | None = None
    memory_limit_bytes: int | None = None
    stdout_tail: str = ""
    stderr_tail: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    isolation: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    usage: Usage | None = None  # the job's CPU time and run-queue delay until the backstop, where measured
    cores: int = 1  # the cores the job was allotted


@dataclass
class _Read:
    """What could be read of the job dir."""

    runner: RunnerResult | None = None
    result_problem: str = ""  # why result.json was unusable, when it exists
    predictions: list[EpochPredictions] = field(default_factory=list)
    predictions_problem: str = ""


def _read(job_dir: Path, spec: JobSpec | None) -> _Read:
    out = _Read()
    try:
        out.runner = load_result(job_dir)
    except JobFileError as e:
        if os.path.lexists(Path(job_dir) / RESULT_FILE):
            out.result_problem = str(e)
    if out.runner is None or out.runner.status is not RunnerStatus.OK:
        return out
    expected = None
    if spec is not None:
        try:
            expected = expected_val_ids(Path(spec.data_dir), spec.max_val_images)
        except JobFileError:
            log.warning("cannot read the validation ids of %s: predictions checked without them", spec.data_dir)
    try:
        out.predictions = load_predictions(job_dir, expected_ids=expected)
    except JobFileError as e:
        out.predictions_problem = str(e)
    return out


def _status_for(category: Category | None, sig: int | None = None) -> RunStatus:
    if category is Category.TIMEOUT:
        return TIMEOUT
    if category is Category.OUT_OF_MEMORY:
        return OUT_OF_MEMORY
    if category is Category.CRASHED and sig is not None and sig in CRASH_SIGNALS:
        return CRASHED
    return FAILED


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _stage(runner: RunnerResult | None, entry: str, spec: JobSpec | None) -> Stage:
    if spec is not None:
        return Stage.SMOKE if spec.mode is Mode.SMOKE else Stage.TRAIN
    if runner is not None:
        return runner.stage
    return Stage.TRAIN if entry == RUNNER_ENTRY else Stage.SMOKE


def interpret(job_dir: Path, entry: str, obs: Observed, *, timeout_s: float, backend: str,
              spec: JobSpec | None = None) -> RunResult:
    """Read the job directory and decide the RunResult (with its verdict). Never raises for anything a job wrote.

    With `spec` (the JobSpec the parent gave the sandbox), predictions must cover exactly the
    validation images that spec decodes, and the verdict's stage follows its mode.
    """
    try:
        read = _read(Path(job_dir), spec)
    except Exception as e:  # noqa: BLE001 - whatever a job wrote, reading it must not crash the parent
        log.warning("reading the outputs of %s failed", job_dir, exc_info=True)
        read = _Read(result_problem=f"its outputs could not be read ({type(e).__name__})")
    runner = read.runner
    res = RunResult(
        status=FAILED,
        stdout_tail=obs.stdout_tail,
        stderr_tail=obs.stderr_tail,
        runner=runner,
        exit_code=obs.exit_code,
        timings=dict(obs.timings),
        peak_memory_mb=round(obs.peak_memory_bytes / 2**20, 1) if obs.peak_memory_bytes else None,
        isolation=list(obs.isolation),
        backend=backend,
    )
    if runner is not None:
        res.traceback_tail = safe_text(runner.traceback or "", TRACEBACK_LIMIT)
    status, category, message = _decide(entry, obs, read, timeout_s)
    res.status, res.category = status, category.value if category else None
    res.overloaded = category is Category.JOB_ERROR and message.startswith(OVERLOADED_PREFIX)
    res.message = safe_text(message, MESSAGE_LIMIT, keep="head")
    if status == OK:
        res.predictions = read.predictions
    if status != OK and not res.traceback_tail:
        res.traceback_tail = safe_text(last_traceback(obs.stderr_tail), TRACEBACK_LIMIT)
    if obs.notes:
        res.message = (res.message + " " + " ".join(safe_text(n, 500) for n in obs.notes)).strip()
    stage = _stage(runner, entry, spec)
    if status == OK:
        verdict = Verdict.accept(stage.value, res.message)
    else:
        line = runner.line if runner is not None and runner.status is RunnerStatus.FAILED else None
        verdict = Verdict.reject(stage.value, category or Category.CRASHED, res.message, line)
    res.verdict = verdict.to_dict()
    return res


def _decide(entry: str, obs: Observed, read: _Read, timeout_s: float) -> tuple[RunStatus, Category | None, str]:
    runner = read.runner
    if obs.timed_out:
        if obs.usage is None:
            return TIMEOUT, Category.TIMEOUT, f"the job ran past its wall-clock limit of {timeout_s:g} s and was killed"
        overloaded, words = backstop_verdict(obs.usage, obs.cores)
        if overloaded:
            return FAILED, Category.JOB_ERROR, (
                f"{OVERLOADED_PREFIX}: the job was stopped by its wall-clock backstop of {timeout_s:g} s after "
                f"{words}; other work on this machine starved it of CPU (not the candidate's fault)")
        return TIMEOUT, Category.TIMEOUT, (
            f"the job ran past its wall-clock backstop of {timeout_s:g} s and was killed after {words}")
    clean_exit = obs.exit_code == 0 and obs.signal is None
    if runner is not None:
        if runner.status is RunnerStatus.OK:
            if read.predictions_problem:
                return FAILED, Category.EVAL_CONTRACT, (
                    f"the job's predictions break the output contract: {read.predictions_problem}")
            if not read.predictions:
                return FAILED, Category.EVAL_CONTRACT, "the runner reported success but wrote no predictions"
            if clean_exit:
                return OK, None, runner.message or "ok"
            # ok result but the process then died: believe the death (e.g. a daemon's OOM, a late signal)
        elif runner.status is RunnerStatus.ERROR:  # set-up (no device, no data): not the candidate's doing...
            # ...but only when the runner itself ended with its "unusable job" status: a candidate that killed
            # its runner and left a result.json of its own does not get to blame the machine
            by_runner = obs.exit_code == EXIT_RUNNER_ERROR and obs.signal is None
            cat = runner.category or (Category.JOB_ERROR if by_runner else Category.CRASHED)
            return FAILED, cat, runner.message or "the runner could not run the job"
        else:
            cat = runner.category or Category.CRASHED
            return _status_for(cat, runner.signal), cat, runner.message or f"the runner failed ({cat.value})"
    elif read.result_problem:
        return FAILED, Category.CRASHED, f"the job left an unusable {RESULT_FILE}: {read.result_problem}"
    if obs.oom_killed:
        return OUT_OF_MEMORY, Category.OUT_OF_MEMORY, "the kernel killed the job for exceeding its memory limit"
    if obs.signal is not None:
        sig = obs.signal
        name = _signal_name(sig)
        if sig in CRASH_SIGNALS:
            return CRASHED, Category.CRASHED, f"the process died of {name} (a native crash)"
        if sig == signal.SIGXCPU:
            return TIMEOUT, Category.TIMEOUT, "the job used up its CPU-time limit (SIGXCPU)"
        if sig == signal.SIGXFSZ:
            return CRASHED, Category.CRASHED, "the job wrote a file past its file-size limit (SIGXFSZ)"
        if sig == signal.SIGKILL and obs.peak_memory_bytes and obs.memory_limit_bytes:
            if obs.peak_memory_bytes >= 0.9 * obs.memory_limit_bytes:
                return OUT_OF_MEMORY, Category.OUT_OF_MEMORY, "the job was killed at its memory limit"
        return KILLED, Category.CRASHED, f"the process was killed by {name}, not by the sandbox"
    what = "the runner" if entry == RUNNER_ENTRY else f"`{entry}`"
    if obs.exit_code == 0:
        return FAILED, Category.CRASHED, (
            f"the candidate exited early: {what} ended with status 0 before writing {RESULT_FILE} "
            "(an exit call in the candidate?)"
        )
    return FAILED, Category.CRASHED, f"{what} exited with status {obs.exit_code} without writing {RESULT_FILE}"

