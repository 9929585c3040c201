"""GPU allocation for concurrent jobs: each job gets its own device ids, never shared beyond `jobs_per_gpu`.

    alloc = GpuAllocator(parse_gpus("0,1,2,3"), jobs_per_gpu=1)
    async with alloc.acquire(1) as ids:      # waits until a device has a free slot
        job.gpus = ids                       # docker: device_requests; local: CUDA_VISIBLE_DEVICES
    with alloc.acquire_sync(1) as ids: ...   # the same from a thread

Thread-safe and usable from several event loops: the state is guarded by a
threading lock; async waiters are woken with call_soon_threadsafe.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

from nncaption.netapi.errors import ConfigError

log = logging.getLogger(__name__)


def parse_gpus(text: str | None) -> list[int]:
    """`"0,1,2,3"` -> [0, 1, 2, 3]; "" / None -> []. Duplicates and non-integers are a ConfigError."""
    if not text or not text.strip():
        return []
    ids: list[int] = []
    for tok in text.split(","):
        tok = tok.strip()
        if not tok.isdigit():
            raise ConfigError(f"--gpus: {tok!r} is not a GPU index", "pass device indices like --gpus 0,1,2,3.")
        if int(tok) in ids:
            raise ConfigError(f"--gpus: device {tok} is listed twice", "list each device once: --gpus 0,1.")
        ids.append(int(tok))
    return ids


class GpuAllocator:
    """Hands out device ids so that no device runs more than `jobs_per_gpu` jobs at once."""

    def __init__(self, gpus: list[int], jobs_per_gpu: int = 1) -> None:
        if jobs_per_gpu < 1:
            raise ConfigError(f"jobs per GPU must be at least 1, not {jobs_per_gpu}", "pass --jobs-per-gpu 1 or more.")
        if len(set(gpus)) != len(gpus):
            raise ConfigError(f"GPU list {gpus} has duplicates", "list each device once.")
        self.gpus = list(gpus)
        self.jobs_per_gpu = jobs_per_gpu
        self._used: dict[int, int] = {g: 0 for g in self.gpus}
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    @property
    def capacity(self) -> int:
        """How many one-GPU jobs can run at once."""
        return len(self.gpus) * self.jobs_per_gpu

    def usage(self) -> dict[int, int]:
        with self._lock:
            return dict(self._used)

    def _check(self, n: int) -> None:
        if n < 1 or n > len(self.gpus):
            raise ConfigError(f"a job asked for {n} GPUs; this allocator has {len(self.gpus)} ({self.gpus})",
                              "ask for between 1 and the number of listed GPUs.")

    def try_acquire(self, n: int = 1) -> list[int] | None:
        """`n` distinct devices with a free slot (least loaded first), or None when not available now."""
        self._check(n)
        with self._lock:
            return self._take(n)

    def _take(self, n: int) -> list[int] | None:
        free = sorted((used, i, g) for i, (g, used) in enumerate(self._used.items()) if used < self.jobs_per_gpu)
        if len(free) < n:
            return None
        ids = sorted(g for _, _, g in free[:n])
        for g in ids:
            self._used[g] += 1
        return ids

    def release(self, ids: list[int]) -> None:
        with self._lock:
            for g in ids:
                if self._used.get(g, 0) <= 0:
                    log.error("GPU %s released more often than acquired; ignored", g)
                    continue
                self._used[g] -= 1
            self._cond.notify_all()
            waiters, self._waiters = self._waiters, []
        for loop, fut in waiters:
            try:
                loop.call_soon_threadsafe(_wake, fut)
            except RuntimeError:  # that loop is closed: its waiter is gone
                log.debug("GPU waiter's event loop is closed")

    @contextmanager
    def acquire_sync(self, n: int = 1, timeout_s: float | None = None) -> Iterator[list[int]]:
        """Block until `n` devices are free; release them on exit."""
        self._check(n)
        with self._cond:
            ids = self._take(n)
            while ids is None:
                if not self._cond.wait(timeout_s):
                    raise TimeoutError(f"no {n} GPU(s) free within {timeout_s} s")
                ids = self._take(n)
        try:
            yield ids
        finally:
            self.release(ids)

    @asynccontextmanager
    async def acquire(self, n: int = 1) -> AsyncIterator[list[int]]:
        """Wait (without blocking the loop) until `n` devices are free; release them on exit or cancellation."""
        self._check(n)
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                ids = self._take(n)
                if ids is None:
                    fut: asyncio.Future[None] = loop.create_future()
                    self._waiters.append((loop, fut))
            if ids is not None:
                break
            try:
                await fut
            finally:
                with self._lock:
                    self._waiters = [w for w in self._waiters if w[1] is not fut]
        try:
            yield ids
        finally:
            self.release(ids)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
