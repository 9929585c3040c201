"""CPU shares for concurrent jobs: each job gets its own cores (affinity) and as many torch threads.

Measured on a 2-core host: two jobs with the default thread count each (4 threads on 2 cores)
ran an epoch 4x slower than one thread each. So by default a job gets `free cores // running jobs`
(at least 1), pinned with sched_setaffinity (a cpuset without needing a cgroup), its thread count
set to match (JobSpec.threads, OMP_NUM_THREADS), and a cgroup CPU quota where the host allows
one (cgroups.JobCgroup, `cpu-quota` in the isolation list).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

log = logging.getLogger(__name__)


def host_cores() -> list[int]:
    """The cores this process may run on."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


class CpuAllocator:
    """Gives each running job a disjoint set of cores while there are enough; least-loaded cores otherwise."""

    def __init__(self, cores: list[int] | None = None) -> None:
        self.cores = list(cores) if cores is not None else host_cores()
        if not self.cores:
            self.cores = [0]
        self._load: dict[int, int] = {c: 0 for c in self.cores}
        self._running = 0
        self._lock = threading.Lock()

    def acquire(self, wanted: int | None = None, *, concurrent: int = 1) -> list[int]:
        """Cores for one more job: `wanted`, else the cores divided by the jobs running at once (this one
        included, and at least `concurrent`, e.g. a batch's size), taken from the free ones first."""
        with self._lock:
            self._running += 1
            free = [c for c in self.cores if self._load[c] == 0]
            if wanted is None:
                share = max(1, len(self.cores) // max(1, concurrent, self._running))
                n = min(share, len(free)) if free else 1
            else:
                n = max(1, min(int(wanted), len(self.cores)))
            picked = sorted(sorted(self.cores, key=lambda c: (self._load[c], c))[:n])
            for c in picked:
                self._load[c] += 1
            return picked

    def release(self, cores: list[int]) -> None:
        with self._lock:
            self._running = max(0, self._running - 1)
            for c in cores:
                if self._load.get(c, 0) > 0:
                    self._load[c] -= 1

    def running(self) -> int:
        with self._lock:
            return self._running


def pin(pids: list[int], cores: list[int]) -> int:
    """Set the affinity of every thread of `pids` to `cores` (warm processes started before their share was
    known). Returns how many threads were pinned; a thread that exits meanwhile is skipped."""
    n = 0
    for pid in pids:
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for tid in tids:
            try:
                os.sched_setaffinity(tid, cores)
                n += 1
            except OSError as e:
                log.debug("could not pin thread %s to %s: %s", tid, cores, e)
    return n


def taskset_argv(cores: list[int]) -> list[str]:
    """A command prefix pinning what follows to `cores` (util-linux taskset), or [] when taskset is missing."""
    for d in ("/usr/bin", "/bin"):
        if Path(d, "taskset").exists():
            return [str(Path(d, "taskset")), "-c", ",".join(map(str, cores))]
    return []
