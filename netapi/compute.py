"""The candidate's own compute: what per-step and per-job time limits count, and what a wall-clock backstop means.

Time limits (per epoch, per decode pass, set-up, the smoke budget) count the compute the candidate used, not the
wall clock, so that a busy machine does not turn a model that fits its limit into a `timeout`:

- on CPU: the CPU time (user + system) of the candidate's processes, all threads and all descendants
  (`/proc/<pid>/stat` utime+stime+cutime+cstime of every process of the tree), divided by the cores the job was
  allotted (its torch threads). An epoch that takes 40 s of wall time with 2 threads on an idle machine uses about
  80 CPU-seconds, i.e. 40 "compute seconds"; on a loaded machine its wall time grows, its CPU time does not.
- on GPU: measuring the job's real GPU time would need NVML accounting mode (root, per device); instead the job's
  wall time counts while it holds its GPU (the sandbox's GpuAllocator hands each job its own device or share).

Each step also has a wall-clock backstop, `WALL_BACKSTOP_FACTOR` x its limit: a step that used little compute for
that long is either waiting (a sleep, a blocked read, a deadlock: the candidate's `timeout`, stopped there) or
starved by the machine (it goes on, up to `STARVED_BACKSTOP_FACTOR` x its limit, then it is stopped as a
job-error). `backstop_verdict` tells them apart with the scheduler's own numbers: the run-queue delay of the job's
threads (`/proc/<pid>/task/<tid>/schedstat`, time spent runnable but waiting for a CPU). A job that used under
half of its allotted cores, was runnable (running or waiting for a CPU) for at least three quarters of the wall time
and waited at least as long as it ran was starved: `overloaded`
(job-error, "machine overloaded", retried once by the service), never the candidate's fault.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

WALL_BACKSTOP_FACTOR = 3.0  # at this many times its compute limit in wall time, a step that is not starved is stopped
STARVED_BACKSTOP_FACTOR = 8.0  # a starved step (backstop_verdict) goes on until this many times its limit
OVERLOAD_CPU_SHARE = 0.5  # under this share of wall x cores used ...
OVERLOAD_OTHERS_SHARE = 0.5  # ... while the rest of the machine used at least this share of the job's cores
OVERLOAD_RUNNABLE_SHARE = 0.75  # ... while running or waiting for a CPU this share of the wall time (and waiting
# at least as long as running): the machine's fault
CHECK_INTERVAL_S = 0.5  # how often a waiting runner looks at the compute used
OVERLOADED_PREFIX = "machine overloaded"
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class Usage:
    """Compute of a process tree at one moment: CPU seconds (all threads), run-queue delay seconds, wall time."""

    cpu_s: float
    run_delay_s: float
    wall: float  # time.monotonic() when sampled
    machine_busy_s: float | None = None  # CPU seconds every process of the machine used (/proc/stat), when readable

    def since(self, start: Usage) -> Usage:
        busy = (max(0.0, self.machine_busy_s - start.machine_busy_s)
                if self.machine_busy_s is not None and start.machine_busy_s is not None else None)
        return Usage(max(0.0, self.cpu_s - start.cpu_s), max(0.0, self.run_delay_s - start.run_delay_s),
                     self.wall - start.wall, busy)

    @property
    def others_s(self) -> float | None:
        """CPU seconds the rest of the machine used meanwhile (None when unknown)."""
        return None if self.machine_busy_s is None else max(0.0, self.machine_busy_s - self.cpu_s)


def machine_busy_s() -> float | None:
    """CPU seconds the whole machine has spent busy (user, nice, system, irq, softirq, steal) since boot."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()
        if fields[0] != b"cpu":
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    except (OSError, ValueError, IndexError):
        return None
    return (user + nice + system + irq + softirq + steal) / _TICK


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of the process and its reaped children) from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read(4096)
        fields = raw.rsplit(b")", 1)[1].split()
        ppid = int(fields[1])
        ticks = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    except (OSError, ValueError, IndexError):
        return None
    return ppid, ticks / _TICK


def _run_delay(pid: int) -> float:
    """Seconds the threads of `pid` spent runnable but waiting for a CPU (0 where schedstat is unavailable)."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                total += int(f.read(256).split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


def tree_pids(roots: list[int], *, include_roots: bool = True) -> list[int]:
    """The processes below `roots` (and the roots), from the parent links in /proc/*/stat."""
    parents: dict[int, list[int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return list(roots) if include_roots else []
    for name in names:
        if not name.isdigit():
            continue
        st = _stat(int(name))
        if st is not None:
            parents.setdefault(st[0], []).append(int(name))
    out: list[int] = list(roots) if include_roots else []
    stack = list(roots)
    seen = set(roots)
    while stack:
        for child in parents.get(stack.pop(), []):
            if child not in seen:
                seen.add(child)
                out.append(child)
                stack.append(child)
    return out


def tree_usage(pids: list[int]) -> Usage:
    """CPU time and run-queue delay of the given processes (the gone ones count nothing)."""
    cpu = delay = 0.0
    for pid in pids:
        st = _stat(pid)
        if st is None:
            continue
        cpu += st[1]
        delay += _run_delay(pid)
    return Usage(cpu, delay, time.monotonic(), machine_busy_s())


def backstop_verdict(used: Usage, cores: float) -> tuple[bool, str]:
    """(overloaded, the numbers in words) for a job or step stopped by its wall-clock backstop.

    Overloaded: the job used under OVERLOAD_CPU_SHARE of wall x cores, wanted a CPU (ran or waited for one) for at
    least OVERLOAD_RUNNABLE_SHARE of the wall time, and waited at least as long as it ran (it got at most half of
    the CPU it asked for). A job that mostly neither ran nor waited was sleeping or blocked (the waits of its
    start-up on a busy machine do not make it starved), and one that got most of what it asked for was slow by
    itself: the candidate's timeout. And the rest of the machine must have used at least OVERLOAD_OTHERS_SHARE of
    the job's allotted cores meanwhile (/proc/stat): a candidate that crowds itself (a hundred threads pinned to one
    core) starves only itself.
    """
    cores = max(1.0, float(cores))
    wall = max(used.wall, 1e-9)
    others = used.others_s
    overloaded = (used.cpu_s < OVERLOAD_CPU_SHARE * wall * cores
                  and used.cpu_s + used.run_delay_s >= OVERLOAD_RUNNABLE_SHARE * wall
                  and used.run_delay_s >= used.cpu_s
                  and (others is None or others >= OVERLOAD_OTHERS_SHARE * wall * cores))
    words = (f"{used.cpu_s:.1f} CPU-seconds ({used.cpu_s / cores:.1f} s per allotted core, {cores:g} core(s)) in "
             f"{used.wall:.1f} s of wall time, {used.run_delay_s:.1f} s of it waiting for a CPU")
    if others is not None:
        words += f" (other work on the machine used {others:.1f} CPU-seconds meanwhile)"
    return overloaded, words


class ComputeClock:
    """The compute a candidate's process tree used since a step began, per allotted core (CPU) or wall (GPU).

    `roots`: the candidate's process; with `subreaper`, every other child of this process counts too (orphans of
    the candidate are re-parented to the runner).
    """

    def __init__(self, root: int, cores: int, *, gpu: bool = False, subreaper: bool = False) -> None:
        self.root = root
        self.cores = max(1, int(cores))
        self.gpu = gpu
        self.subreaper = subreaper

    def pids(self) -> list[int]:
        if self.subreaper:
            return tree_pids([os.getpid()], include_roots=False)
        return tree_pids([self.root])

    def sample(self) -> Usage:
        return tree_usage(self.pids())

    def compute_s(self, used: Usage) -> float:
        """What the limits count: wall time on GPU, CPU seconds per allotted core on CPU."""
        return used.wall if self.gpu else used.cpu_s / self.cores


def allotted_cores(threads: int | None) -> int:
    """The cores a job's compute is divided by: its torch threads, else the CPUs it may run on."""
    if threads:
        return int(threads)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class StepDeadline:
    """A step's limit in compute seconds, with its wall-clock backstop; the channel asks it how long it may wait.

    `remaining()` samples the process tree at most every CHECK_INTERVAL_S and returns how long to wait before
    asking again, or 0 once the step is over its limit (`expired` = "compute") or past its backstop
    (`expired` = "backstop"). A plain float deadline (time.monotonic) still works with the channel.
    """

    def __init__(self, clock: ComputeClock, limit_s: float, *, backstop_factor: float = WALL_BACKSTOP_FACTOR,
                 starved_factor: float = STARVED_BACKSTOP_FACTOR) -> None:
        self.clock = clock
        self.limit_s = float(limit_s)
        self.start = clock.sample()
        self.backstop_s = self.limit_s * (1.0 if clock.gpu else max(1.0, backstop_factor))
        self.backstop = self.start.wall + self.backstop_s
        self.hard_backstop_s = max(self.backstop_s, self.limit_s * (1.0 if clock.gpu else starved_factor))
        self.hard_backstop = self.start.wall + self.hard_backstop_s
        self.expired: str | None = None
        self.used = Usage(0.0, 0.0, 0.0)
        self._next_check = self.start.wall + min(CHECK_INTERVAL_S, self.limit_s)

    def measure(self) -> Usage:
        """The compute used since the step began (and remember it)."""
        self.used = self.clock.sample().since(self.start)
        return self.used

    def remaining(self) -> float:
        if self.expired:
            return 0.0
        now = time.monotonic()
        if now >= self._next_check or now >= self.backstop:
            used = self.measure()
            if self.clock.compute_s(used) >= self.limit_s:
                self.expired = "compute"
                return 0.0
            if now >= self.backstop:
                # past the backstop: a step that is waiting (sleep, lock) is stopped now; one the machine starves
                # of CPU goes on, up to the hard backstop
                if now >= self.hard_backstop or not backstop_verdict(used, self.clock.cores)[0]:
                    self.expired = "backstop"
                    return 0.0
            self._next_check = now + CHECK_INTERVAL_S
        wake = self.backstop if now < self.backstop else self.hard_backstop
        return max(1e-3, min(self._next_check, wake) - now)

    def compute_s(self) -> float:
        return self.clock.compute_s(self.used)
