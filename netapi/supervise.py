"""Supervising the candidate's process: fork it, kill it and everything it started, say how it ended.

Used by the runner (`netapi.train`). The runner forks the candidate's process
after importing torch and before any candidate code exists. As the job's own
process (`own_process=True`, the `nncaption.netapi.run` entry) it becomes a child
subreaper (orphans of the candidate come back to it, to be killed) and
non-dumpable (the candidate, same uid, may not ptrace it or write its memory
through /proc). `kill()` ends the candidate's process group and, in its own
process, every remaining child, so nothing of the candidate is alive when the
runner writes its final files.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nncaption.netapi.categories import Category
from nncaption.netapi.job import Step
from nncaption.netapi.safetext import strict_dumps

log = logging.getLogger(__name__)

PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER = 4, 36
REAP_WAIT_S = 3.0
KILL_ROUNDS = 100


RESERVE_FILE = ".runner-reserve"
RESERVE_BYTES = 8 << 20  # room for result.json and predictions.json when the candidate filled the job's quota


def reserve_space(path: Path) -> Path | None:
    """Hold RESERVE_BYTES of the job directory's quota for the runner's own last writes (None when it cannot)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, b"\0" * RESERVE_BYTES)  # real pages: a sparse file would reserve nothing on tmpfs
        finally:
            os.close(fd)
        return path
    except OSError:
        log.warning("could not reserve space for the runner's result files", exc_info=True)
        return None


def release_space(reserve: Path | None) -> None:
    """Give the reserve back (the candidate may have removed it already: then there is nothing to give)."""
    if reserve is None:
        return
    try:
        os.unlink(reserve)
    except FileNotFoundError:
        log.info("the runner's space reserve is gone (removed by the candidate)")
    except OSError:
        log.warning("could not release the runner's space reserve", exc_info=True)



class EventLog:
    """Appends progress events to progress.jsonl (strict JSON, one object a line, flushed as written)."""

    def __init__(self, path: Path) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
        self._f = os.fdopen(fd, "a", encoding="utf-8", buffering=1)

    def emit(self, event: str, **fields: Any) -> None:
        try:
            self._f.write(strict_dumps({"event": event, "t": time.time(), **fields}) + "\n")
            self._f.flush()
        except OSError:
            log.warning("could not write a progress event", exc_info=True)

    def close(self) -> None:
        self._f.close()


# --------------------------------------------------------------------------- failures


class CandidateFailure(Exception):
    """The candidate failed: category, fixer-ready message, step, line, traceback (and a signal if one killed it)."""

    def __init__(self, category: Category, message: str, *, step: Step | None = None, line: int | None = None,
                 tb: str = "", sig: int | None = None) -> None:
        super().__init__(message)
        self.category = category
        self.message = message
        self.step = step
        self.line = line
        self.tb = tb
        self.sig = sig


class RunnerSetupError(Exception):
    """The job itself is unusable (no job.json, no data, no device): not the candidate's fault."""


class MachineOverloaded(Exception):
    """A step was stopped by its wall-clock backstop while the machine starved it of CPU (netapi.compute)."""


def _prctl(option: int, value: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(option, value, 0, 0, 0) != 0:
            log.debug("prctl(%d, %d) failed: errno %d", option, value, ctypes.get_errno())
    except (OSError, AttributeError):
        log.debug("prctl unavailable", exc_info=True)


def _children_of(pid: int) -> list[int]:
    """Processes whose parent is `pid` (from /proc)."""
    out: list[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return out
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read(4096)
            ppid = int(stat.rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            out.append(int(name))
    return out


def _reap_all() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"



class ChildProcess:
    """The candidate's process: forked from the runner, killed with everything it started."""

    def __init__(self, *, own_process: bool) -> None:
        self.own_process = own_process
        self.pid: int | None = None
        self.reaped: int | None = None  # the wait status once collected

    def fork(self, target: Callable[[], int]) -> None:
        """Fork; the child runs `target()` and exits with its return value (never returns into the runner)."""
        if self.own_process:
            _prctl(PR_SET_CHILD_SUBREAPER, 1)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 3
            try:
                code = target()
            except BaseException:  # noqa: BLE001 - the child must end here whatever happened
                traceback.print_exc()
            finally:
                for stream in (sys.stdout, sys.stderr):
                    try:
                        stream.flush()
                    except Exception:  # noqa: BLE001 - a candidate may have replaced or closed the streams
                        log.debug("flushing the candidate's output failed", exc_info=True)
                os._exit(code)
        if self.own_process:
            _prctl(PR_SET_DUMPABLE, 0)
        self.pid = pid

    def kill(self) -> int | None:
        """Kill the process, its group and (in its own process) every remaining child; return its wait status."""
        if self.pid is None:
            return self.reaped
        pid = self.pid
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                log.debug("kill of %d: already gone", pid)
        status = self.reaped
        if status is None:
            try:
                _, status = os.waitpid(pid, 0)
            except ChildProcessError:
                status = None
        if self.own_process:
            for _ in range(KILL_ROUNDS):
                kids = _children_of(os.getpid())
                if not kids:
                    break
                for k in kids:
                    try:
                        os.kill(k, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        log.debug("kill of %d: already gone", k)
                time.sleep(0.01)
                _reap_all()
        self.pid, self.reaped = None, status
        return status

    def wait_exit(self, timeout_s: float = REAP_WAIT_S) -> int | None:
        """The wait status once the process has ended by itself (None if it is still running after `timeout_s`)."""
        if self.pid is None or self.reaped is not None:
            return self.reaped
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return None
            if pid:
                self.reaped = status
                return status
            time.sleep(0.02)
        return None


def death_failure(status: int | None, what: str, elapsed: float, step: Step) -> CandidateFailure:
    """The failure of a candidate process that went away without saying why (`status`: its wait status)."""
    if status is not None and os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU:
            return CandidateFailure(
                Category.TIMEOUT, f"the candidate's process used up its CPU-time limit (SIGXCPU) after {elapsed:.1f} "
                f"s in {what}.\nWhat to change: {Category.TIMEOUT.hint}", step=step, sig=sig)
        if sig == signal.SIGKILL:
            return CandidateFailure(
                Category.OUT_OF_MEMORY, f"the candidate's process was killed by SIGKILL after {elapsed:.1f} s in "
                f"{what} — usually the out-of-memory killer.\nWhat to change: {Category.OUT_OF_MEMORY.hint}",
                step=step)
        return CandidateFailure(
            Category.CRASHED, f"the candidate's process died of {_signal_name(sig)} after {elapsed:.1f} s in "
            f"{what} (no Python error: a native crash, os.abort or a signal).\n"
            f"What to change: {Category.CRASHED.hint}", step=step, sig=sig)
    if status is not None and os.WIFEXITED(status):
        return CandidateFailure(
            Category.CRASHED, f"the candidate's process exited with status {os.WEXITSTATUS(status)} in {what} "
            "before finishing (an exit call such as os._exit or sys.exit in candidate code?).\n"
            f"What to change: {Category.CRASHED.hint}", step=step)
    return CandidateFailure(
        Category.CRASHED, f"the candidate's process closed its channel to the runner in {what} and was "
        f"killed.\nWhat to change: {Category.CRASHED.hint}", step=step)
