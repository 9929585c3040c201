"""The ray backend: sandbox jobs as Ray tasks, each applying the local or docker backend on its worker.

This is how jobs scale past one machine: Ray schedules (`num_cpus`, `num_gpus`
= the job's GPU count; the GPU ids Ray assigns replace the job's), retries a
task whose worker died (`max_retries`), and the isolation itself is done by a
real sandbox on the worker. A worker or node that dies for good maps to
status `killed`; Ray's own memory monitor killing it maps to `out-of-memory`.
Cancelling `arun` cancels the task with force (the worker process dies, and
with it the sandbox's job: the local sandbox's bwrap dies with its parent, the
cgroup and container are reaped by the next sandbox on that node).

An unreachable `address` fails within seconds with one RayUnreachable error
(a TCP check before `ray.init`, which would otherwise retry for minutes and
print Ray's own log lines). Job directories must be visible to the workers at
the same path (a shared file system on a real cluster; trivially true on local Ray).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import tempfile
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from nncaption.netapi.categories import Category
from nncaption.netapi.errors import ConfigError, NNCaptionError
from nncaption.netapi.job import PROGRESS_FILE

from .base import CANCELLED, FAILED, KILLED, OUT_OF_MEMORY, ClosingContext, EventCallback, Job, RunResult
from .quota import reap_orphan_stages
from .streams import ProgressTail

log = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 3.0
ADDRESS_HINT = "fix --ray-address: ray://HOST:10001 (Ray client) or HOST:6379, or omit it for a local Ray."
DEFAULT_RAY_PORT = 6379
DEFAULT_CLIENT_PORT = 10001


class RayUnreachable(ConfigError):
    """`--ray-address` names a cluster that cannot be reached."""


def _run_on_worker(job: Job, backend: str, options: dict[str, Any]) -> RunResult:
    """Body of the Ray task: run `job` with a local or docker sandbox on this worker."""
    import ray

    from . import get_sandbox

    if job.gpus:
        job = replace(job, gpus=[int(g) for g in ray.get_gpu_ids()])  # the GPUs Ray reserved for this task
    sandbox = get_sandbox(backend, **{"prewarm": False, **options})
    try:
        result = sandbox.run(job)
    finally:
        sandbox.close()
    result.backend = f"ray/{result.backend}"
    result.isolation = [*result.isolation, f"ray-node:{ray.get_runtime_context().get_node_id()[:12]}"]
    return result


def result_for_ray_error(exc: BaseException) -> RunResult:
    """Map a Ray-level failure (the task never returned) to a RunResult."""
    import ray.exceptions as rex

    name = type(exc).__name__
    if isinstance(exc, rex.OutOfMemoryError):
        return RunResult(status=OUT_OF_MEMORY, category=Category.OUT_OF_MEMORY.value, backend="ray",
                         message=f"Ray's memory monitor killed the worker running the job ({name})")
    if isinstance(exc, rex.TaskCancelledError):
        return RunResult(status=CANCELLED, backend="ray", message="the Ray task was cancelled")
    if isinstance(exc, (rex.WorkerCrashedError, rex.NodeDiedError, rex.ActorDiedError)):
        return RunResult(status=KILLED, category=Category.CRASHED.value, backend="ray",
                         message=f"the Ray worker running the job died and retries were exhausted ({name}: {exc})")
    if isinstance(exc, rex.RayTaskError):
        return RunResult(status=FAILED, category=Category.CRASHED.value, backend="ray",
                         message=f"the sandbox failed on its Ray worker: {str(exc).strip()[-1500:]}")
    return RunResult(status=FAILED, category=Category.CRASHED.value, backend="ray",
                     message=f"Ray could not run the job ({name}: {exc})")


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Raise RayUnreachable unless a TCP connection to the address's host:port opens within `timeout_s`.

    "auto" / "local" are left to Ray (they look for a running instance on this machine and fail fast)."""
    if address in ("auto", "local"):
        return
    url = urlsplit(address if "://" in address else f"ray-gcs://{address}")
    default = DEFAULT_CLIENT_PORT if url.scheme == "ray" else DEFAULT_RAY_PORT
    try:
        host, port = url.hostname, url.port or default
    except ValueError as e:
        raise RayUnreachable(f"--ray-address {address!r} is not an address: {e}",
                             ADDRESS_HINT) from e
    if not host:
        raise RayUnreachable(f"--ray-address {address!r} names no host",
                             ADDRESS_HINT)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return
    except OSError as e:
        raise RayUnreachable(
            f"cannot reach the Ray cluster at {address} ({host}:{port}): {e.strerror or e}",
            "start the cluster (ray start --head) or fix --ray-address; omit it to run a local Ray.",
        ) from e


class RaySandbox(ClosingContext):
    """Runs jobs as Ray tasks: `run`, `arun`, `run_many`, `arun_many`, `close`, `with` / `async with`."""

    name = "ray"

    def __init__(
        self,
        *,
        address: str | None = None,
        backend: str = "local",
        backend_options: dict[str, Any] | None = None,
        max_retries: int = 3,  # Ray's own default; a node lost while its failure is not yet known can take two
        num_cpus: float = 1,
        local_num_cpus: int | None = None,
        init_options: dict[str, Any] | None = None,
        poll_interval_s: float = 0.2,
    ) -> None:
        if backend not in ("local", "docker"):
            raise ConfigError(f"the ray backend runs jobs with 'local' or 'docker', not {backend!r}",
                              "pass backend='local' or backend='docker'.")
        self.address = address
        self.backend = backend
        self.backend_options = dict(backend_options or {})
        self.max_retries = max_retries
        self.num_cpus = num_cpus
        self.local_num_cpus = local_num_cpus or min(2, os.cpu_count() or 1)
        self.init_options = dict(init_options or {})
        self.poll_interval_s = poll_interval_s
        self._owned_temp: str | None = None  # the session dir of a local Ray this sandbox started
        self._init_lock = threading.Lock()

    def _ensure_ray(self) -> Any:
        if self.address:
            check_reachable(self.address)  # before importing Ray: fail in seconds, with one message
        try:
            import ray
        except ImportError as e:
            raise ConfigError("Ray is not installed", "pip install 'nn-caption[ray]'.") from e
        with self._init_lock:
            if not ray.is_initialized():
                self._init(ray)
        return ray

    def _init(self, ray: Any) -> None:
        opts: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": False, "logging_level": logging.ERROR,
                                **self.init_options}
        try:
            if self.address:
                ray.init(address=self.address, **opts)
            else:
                opts.setdefault("include_dashboard", False)
                if "_temp_dir" not in opts:
                    self._owned_temp = tempfile.mkdtemp(prefix="nncaption-ray-")
                    opts["_temp_dir"] = self._owned_temp
                ray.init(num_cpus=self.local_num_cpus, **opts)
        except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
            where = self.address or "a local instance"
            raise RayUnreachable(f"cannot start or reach Ray at {where}: {str(e).splitlines()[0][:300]}",
                                 "check --ray-address (e.g. ray://head:10001), or omit it for a local Ray.") from e

    def _submit(self, ray: Any, job: Job) -> Any:
        task = ray.remote(_run_on_worker).options(
            num_cpus=self.num_cpus, num_gpus=len(job.gpus), max_retries=self.max_retries, retry_exceptions=False
        )
        return task.remote(job, self.backend, self.backend_options)

    def _result(self, ray: Any, ref: Any) -> RunResult:
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, NNCaptionError):
                raise cause from None  # a set-up problem (e.g. docker missing), not the candidate's fault
            return result_for_ray_error(e)
        except ray.exceptions.RayError as e:
            return result_for_ray_error(e)

    def run(self, job: Job, on_event: EventCallback | None = None) -> RunResult:
        return self.run_many([job], on_event=on_event)[0]

    def run_many(self, jobs: list[Job], on_event: EventCallback | None = None) -> list[RunResult]:
        """Run every job as a Ray task; results in the order of `jobs`.

        `on_event` gets each job's progress events (with "job" = its index) when
        the job directories are visible from here.
        """
        ray = self._ensure_ray()
        refs = [self._submit(ray, job) for job in jobs]
        tails = {i: ProgressTail(Path(job.job_dir) / PROGRESS_FILE) for i, job in enumerate(jobs)}
        index = {ref: i for i, ref in enumerate(refs)}
        pending = list(refs)
        results: dict[int, RunResult] = {}
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=self.poll_interval_s)
            if on_event is not None:
                for i, tail in tails.items():
                    if i not in results:
                        _drain_tagged(tail, on_event, i)
            for ref in done:
                results[index[ref]] = self._result(ray, ref)
        return [results[i] for i in range(len(jobs))]

    async def arun(self, job: Job, on_event: EventCallback | None = None) -> RunResult:
        """Run one job as a Ray task; cancelling the awaiting task force-cancels the Ray task."""
        ray = await asyncio.to_thread(self._ensure_ray)
        ref = self._submit(ray, job)
        tail = ProgressTail(Path(job.job_dir) / PROGRESS_FILE)
        try:
            while True:
                done, _ = await asyncio.to_thread(ray.wait, [ref], num_returns=1, timeout=self.poll_interval_s)
                if on_event is not None:
                    tail.drain(on_event)
                if done:
                    return await asyncio.to_thread(self._result, ray, ref)
        except asyncio.CancelledError:
            try:
                ray.cancel(ref, force=True)
            except Exception as e:  # noqa: BLE001 - already finished or its worker is gone
                log.warning("cancelling a Ray task: %s", e)
            raise

    async def arun_many(self, jobs: list[Job], on_event: EventCallback | None = None) -> list[RunResult]:
        return list(await asyncio.gather(
            *(self.arun(j, None if on_event is None else _tag(on_event, i)) for i, j in enumerate(jobs))
        ))

    def close(self) -> None:
        """Stop the Ray instance this process started or joined (and remove a local one's session files).

        Also unmounts this machine's job stages whose worker died (a node lost mid-job leaves its stage
        mounted until some sandbox reaps it; on a one-machine cluster that is this one)."""
        try:
            import ray
        except ImportError:
            return
        if ray.is_initialized():
            ray.shutdown()
        if self._owned_temp:
            shutil.rmtree(self._owned_temp, ignore_errors=True)
            self._owned_temp = None
        for stage in reap_orphan_stages():
            log.info("unmounted the job stage %s of a worker that died", stage)

    shutdown = close  # the old name


def _tag(on_event: EventCallback, i: int) -> EventCallback:
    return lambda e: on_event({**e, "job": i})


def _drain_tagged(tail: ProgressTail, on_event: EventCallback, i: int) -> None:
    tail.drain(_tag(on_event, i))
