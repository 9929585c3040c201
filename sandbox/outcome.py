"""From what a backend observed to a RunResult status and category (shared by every backend).

Rules, in order:
1. our wall-clock timeout fired                          -> timeout
2. the runner wrote result.json:
   ok + predictions (and a clean exit)                   -> ok
   ok without predictions                                -> failed / eval-contract
   failed: its category (timeout / out-of-memory map to those statuses)
3. a smoke entry wrote verdict.json: ok -> ok, else failed with its category
4. the kernel OOM killer hit the job                     -> out-of-memory
5. death by signal: SIGSEGV/SIGBUS/SIGILL/SIGFPE/SIGABRT -> crashed; SIGXCPU -> timeout;
   SIGKILL while near the memory limit                   -> out-of-memory; other SIGKILL -> killed
6. exit without result (0 or not)                        -> failed / crashed ("exited early")
"""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nncaption.netapi.categories import Category
from nncaption.netapi.job import PREDICTIONS_FILE, RESULT_FILE, EpochPredictions, RunnerResult

from .streams import last_traceback, read_regular
from .base import CRASHED, FAILED, KILLED, OK, OUT_OF_MEMORY, RUNNER_ENTRY, TIMEOUT, VERDICT_FILE, RunResult

CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT, signal.SIGSYS}
MAX_JSON_BYTES = 64 * 1024 * 1024  # a result/verdict larger than this is not trusted


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


def _load_json(path: Path) -> Any:
    """Parse a JSON file of the (candidate-writable) job dir: regular files only, links refused, size capped."""
    data = read_regular(path, 0, MAX_JSON_BYTES + 1)
    if data is None or len(data) > MAX_JSON_BYTES:
        return None
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None


def read_verdict(job_dir: Path) -> dict[str, Any] | None:
    data = _load_json(Path(job_dir) / VERDICT_FILE)
    return data if isinstance(data, dict) and "ok" in data else None


def _safe_result(job_dir: Path) -> RunnerResult | None:
    data = _load_json(Path(job_dir) / RESULT_FILE)
    if not isinstance(data, dict) or "status" not in data:
        return None
    try:
        return RunnerResult.from_dict(data)
    except (TypeError, ValueError):
        return None


def _safe_predictions(job_dir: Path) -> list[EpochPredictions]:
    data = _load_json(Path(job_dir) / PREDICTIONS_FILE)
    if not isinstance(data, dict) or not isinstance(data.get("epochs"), list):
        return []
    try:
        return [EpochPredictions(**e) for e in data["epochs"]]
    except (TypeError, ValueError):
        return []


def _status_for_category(category: str | None) -> str:
    if category == Category.TIMEOUT.value:
        return TIMEOUT
    if category == Category.OUT_OF_MEMORY.value:
        return OUT_OF_MEMORY
    return FAILED


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def interpret(job_dir: Path, entry: str, obs: Observed, *, timeout_s: float, backend: str) -> RunResult:
    """Read the job directory and decide the RunResult."""
    runner = _safe_result(job_dir) if entry == RUNNER_ENTRY else None
    predictions = _safe_predictions(job_dir) if entry == RUNNER_ENTRY else []
    verdict = read_verdict(job_dir) if entry != RUNNER_ENTRY else None
    res = RunResult(
        status=FAILED,
        stdout_tail=obs.stdout_tail,
        stderr_tail=obs.stderr_tail,
        predictions=predictions,
        runner=runner,
        exit_code=obs.exit_code,
        timings=dict(obs.timings),
        peak_memory_mb=round(obs.peak_memory_bytes / 2**20, 1) if obs.peak_memory_bytes else None,
        isolation=list(obs.isolation),
        backend=backend,
        verdict=verdict,
    )
    if runner is not None:
        res.traceback_tail = (runner.traceback or "")[-8000:]
    status, category, message = _decide(entry, obs, runner, predictions, verdict, timeout_s)
    res.status, res.category, res.message = status, category, message
    if status != OK and not res.traceback_tail:
        res.traceback_tail = last_traceback(obs.stderr_tail)
    if obs.notes:
        res.message = (res.message + " " + " ".join(obs.notes)).strip()
    return res


def _decide(
    entry: str,
    obs: Observed,
    runner: RunnerResult | None,
    predictions: list[EpochPredictions],
    verdict: dict[str, Any] | None,
    timeout_s: float,
) -> tuple[str, str | None, str]:
    if obs.timed_out:
        return TIMEOUT, Category.TIMEOUT.value, f"the job ran past its wall-clock limit of {timeout_s:g} s and was killed"
    clean_exit = obs.exit_code == 0 and obs.signal is None
    if runner is not None:
        if runner.status == "ok":
            if not predictions:
                return FAILED, Category.EVAL_CONTRACT.value, "the runner reported success but wrote no predictions"
            if clean_exit:
                return OK, None, runner.message or "ok"
            # ok result but the process then died: believe the death (e.g. a daemon's OOM, a late signal)
        else:
            cat = runner.category or Category.CRASHED.value
            return _status_for_category(cat), cat, runner.message or f"the runner failed ({cat})"
    if verdict is not None and entry != RUNNER_ENTRY:
        if verdict.get("ok"):
            return OK, None, str(verdict.get("message") or "accepted")
        cat = verdict.get("category") or Category.CRASHED.value
        return _status_for_category(cat), str(cat), str(verdict.get("message") or f"rejected ({cat})")
    if obs.oom_killed:
        return OUT_OF_MEMORY, Category.OUT_OF_MEMORY.value, "the kernel killed the job for exceeding its memory limit"
    if obs.signal is not None:
        sig = obs.signal
        name = _signal_name(sig)
        if sig in CRASH_SIGNALS:
            return CRASHED, Category.CRASHED.value, f"the process died of {name} (a native crash)"
        if sig == signal.SIGXCPU:
            return TIMEOUT, Category.TIMEOUT.value, "the job used up its CPU-time limit (SIGXCPU)"
        if sig == signal.SIGXFSZ:
            return CRASHED, Category.CRASHED.value, "the job wrote a file past its file-size limit (SIGXFSZ)"
        if sig == signal.SIGKILL and obs.peak_memory_bytes and obs.memory_limit_bytes:
            if obs.peak_memory_bytes >= 0.9 * obs.memory_limit_bytes:
                return OUT_OF_MEMORY, Category.OUT_OF_MEMORY.value, "the job was killed at its memory limit"
        return KILLED, Category.CRASHED.value, f"the process was killed by {name}, not by the sandbox"
    what = "the runner" if entry == RUNNER_ENTRY else f"`{entry}`"
    produced = "result.json" if entry == RUNNER_ENTRY else VERDICT_FILE
    if obs.exit_code == 0:
        return FAILED, Category.CRASHED.value, (
            f"the candidate exited early: {what} ended with status 0 before writing {produced} "
            "(an exit call in the candidate?)"
        )
    return FAILED, Category.CRASHED.value, (
        f"{what} exited with status {obs.exit_code} without writing {produced}"
    )
