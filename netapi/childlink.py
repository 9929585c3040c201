"""The runner's end of the candidate's process: send, expect, deadlines, and what a death or silence means.

`Runner` (netapi/train.py) builds on it. Everything the child sends is untrusted: replies of an unexpected
type, a broken frame or silence past the step's deadline kill the child and become a CandidateFailure; a
child's own failure report keeps only a category the candidate can be blamed for, a bounded, escaped
message and a plausible line number.
"""

from __future__ import annotations

import time
from typing import Any

from nncaption.netapi.categories import Category
from nncaption.netapi.child import STEP_WHAT
from nncaption.netapi.compute import (
    OVERLOADED_PREFIX,
    STARVED_BACKSTOP_FACTOR,
    WALL_BACKSTOP_FACTOR,
    ComputeClock,
    StepDeadline,
    backstop_verdict,
)
from nncaption.netapi.job import JobSpec, RunnerResult, Step
from nncaption.netapi.safetext import safe_text
from nncaption.netapi.supervise import CandidateFailure, ChildProcess, MachineOverloaded, death_failure
from nncaption.netapi.wire import Channel, ChannelClosed, ChannelError, ChannelTimeout

MAX_CHILD_TEXT = 8000
# categories a child's report may not claim: they say the machine or the designer failed, not the candidate
NOT_CHILD_CATEGORIES = frozenset({Category.JOB_ERROR, Category.BAD_HYPERPARAMETERS})


class ChildLink:
    """The channel to the candidate's process and the step it is in."""

    def __init__(self, spec: JobSpec, result: RunnerResult, *, own_process: bool, smoke: bool) -> None:
        self.spec = spec
        self.result = result
        self.smoke = smoke
        self.step = Step.START
        self.proc = ChildProcess(own_process=own_process)
        self.chan: Channel | None = None
        self.step_started = time.monotonic()
        self.smoke_deadline: StepDeadline | None = None
        self.cores = 1  # the threads the candidate's process computes with (its compute is divided by them)

    def timed_out(self, deadline: StepDeadline, epoch: int | None) -> Exception:
        """The failure of a step past its compute limit, or stopped by its wall-clock backstop (see netapi.compute).

        Stopped by the backstop while starved by the machine: MachineOverloaded (a job-error, not the candidate's).
        """
        used = deadline.measure()
        self.kill_child()
        what = self._what()
        hint = Category.TIMEOUT.hint
        limit_s = deadline.limit_s
        overloaded, numbers = backstop_verdict(used, self.cores)
        if self.smoke:
            step, limit = f"the smoke check (during {what})", f"its {limit_s:g} s budget"
        elif self.step is Step.LEARN:
            step, limit = f"epoch {epoch} training (learn)", f"the per-epoch time limit of {limit_s:g} s"
        elif self.step is Step.DECODE:
            step, limit = f"epoch {epoch} decoding (forward(images))", f"its time limit of {limit_s:g} s"
        else:
            step, limit = what, f"the set-up time limit of {limit_s:g} s"
        if deadline.expired == "backstop":
            if overloaded:
                raise MachineOverloaded(
                    f"{OVERLOADED_PREFIX}: {step} was stopped by its wall-clock backstop of "
                    f"{deadline.hard_backstop_s:g} s ({STARVED_BACKSTOP_FACTOR:g} x {limit}, which counts compute) "
                    f"after {numbers}; other work on this machine starved the job of CPU, which is not the "
                    "candidate's fault")
            return CandidateFailure(
                Category.TIMEOUT, f"{step} made too little progress: its process was killed at the wall-clock "
                f"backstop of {deadline.backstop_s:g} s ({WALL_BACKSTOP_FACTOR:g} x {limit}, which counts compute) "
                f"after {numbers}. It was mostly waiting, not computing: look for a sleep, a blocking read, a lock "
                f"or a loop that waits for something.\nWhat to change: {hint}", step=self.step)
        clock = "wall time on the GPU" if deadline.clock.gpu else "CPU time per allotted core"
        msg = f"{step} ran past {limit} ({clock}); its process was killed after {numbers}."
        if self.smoke:
            msg += self.smoke_detail()
        return CandidateFailure(Category.TIMEOUT, f"{msg}\nWhat to change: {hint}", step=self.step)

    def smoke_detail(self) -> str:
        """What a smoke job trains on, for its timeout message (the runner knows)."""
        return ""

    def kill_child(self) -> int | None:
        """Kill the candidate's process and everything it started; close the channel."""
        status = self.proc.kill()
        if self.chan is not None:
            self.chan.close()
            self.chan = None
        return status

    def _what(self) -> str:
        return STEP_WHAT.get(self.step, "starting the candidate's process")

    def died(self) -> CandidateFailure:
        """The child went away without saying why: a signal, an exit call, or a closed channel."""
        status = self.proc.wait_exit()
        self.kill_child()
        return death_failure(status, self._what(), time.monotonic() - self.step_started, self.step)

    def clock(self) -> ComputeClock:
        """The compute clock of the candidate's process tree (see netapi.compute)."""
        assert self.proc.pid is not None
        return ComputeClock(self.proc.pid, self.cores, gpu=self.spec.device.startswith("cuda"),
                            subreaper=self.proc.own_process)

    def _deadline(self, limit_s: float) -> tuple[StepDeadline, float]:
        """(deadline, the limit it stands for) of the step starting now; smoke jobs share one budget."""
        self.step_started = time.monotonic()
        if self.smoke:
            assert self.smoke_deadline is not None
            return self.smoke_deadline, self.spec.smoke_time_limit_s
        return StepDeadline(self.clock(), limit_s), limit_s

    def send(self, header: dict[str, Any], *payloads: bytes | memoryview, deadline: StepDeadline, limit_s: float,
             epoch: int | None = None) -> None:
        """Send to the child; a child that stops reading is stopped at the step's deadline like a silent one."""
        assert self.chan is not None
        try:
            self.chan.send(header, *payloads, deadline=deadline)
        except ChannelTimeout:
            raise self.timed_out(deadline, epoch) from None
        except ChannelClosed:
            raise self.died() from None

    def expect(self, kinds: tuple[str, ...], deadline: StepDeadline, limit_s: float, epoch: int | None = None, *,
               max_payload: int = 1 << 20) -> tuple[dict[str, Any], list[bytes]]:
        """The child's next reply of one of `kinds`; step reports are noted, failures and silence raised."""
        assert self.chan is not None
        while True:
            try:
                header, payloads = self.chan.recv(deadline, max_payload=max_payload)
            except ChannelTimeout:
                raise self.timed_out(deadline, epoch) from None
            except ChannelClosed:
                raise self.died() from None
            except ChannelError as e:
                self.kill_child()
                raise CandidateFailure(Category.CRASHED, f"the candidate's process broke the runner's protocol in "
                                       f"{self._what()} ({e}); it was killed.\nWhat to change: "
                                       f"{Category.CRASHED.hint}", step=self.step) from None
            kind = header.get("type")
            if kind == "step":
                try:
                    self.step = Step(header.get("step"))
                except ValueError:
                    pass
                continue
            if kind == "fail":
                params = header.get("params")
                if isinstance(params, int) and not isinstance(params, bool) and 0 < params < 1 << 50:
                    self.result.params = params
                self.kill_child()
                raise self._child_failure(header)
            if kind in kinds:
                return header, payloads
            self.kill_child()
            raise CandidateFailure(Category.CRASHED, f"the candidate's process sent an unexpected message in "
                                   f"{self._what()}; it was killed.\nWhat to change: {Category.CRASHED.hint}",
                                   step=self.step)

    def _child_failure(self, header: dict[str, Any]) -> CandidateFailure:
        try:
            category = Category(header.get("category"))
        except ValueError:
            category = Category.CRASHED
        if category in NOT_CHILD_CATEGORIES:
            category = Category.CRASHED
        line = header.get("line")
        line = line if isinstance(line, int) and not isinstance(line, bool) and 0 < line < 1 << 31 else None
        try:
            step = Step(header.get("step"))
        except ValueError:
            step = self.step
        return CandidateFailure(category, safe_text(header.get("message", ""), MAX_CHILD_TEXT, keep="head"),
                                step=step, line=line, tb=safe_text(header.get("traceback", ""), MAX_CHILD_TEXT))
