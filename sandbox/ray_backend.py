"""The ray backend: sandbox jobs as Ray tasks, each applying the local or docker backend on its worker.

This is how jobs scale past one machine: Ray schedules (`num_cpus`, `num_gpus`
= the job's GPU count; the GPU ids Ray assigns replace the job's), retries a
task whose worker died (`max_retries`), and the isolation itself is done by a
real sandbox on the worker. A worker or node that dies for good maps to
status `killed`; Ray's own memory monitor killing it maps to `out-of-memory`.

Job directories must be visible to the workers at the same path (a shared
file system on a real cluster; trivially true on local Ray). Predictions
come back inside the RunResult.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from nncaption.netapi.categories import Category
from nncaption.netapi.errors import ConfigError, NNCaptionError
from nncaption.netapi.job import PROGRESS_FILE

from .base import FAILED, KILLED, OUT_OF_MEMORY, EventCallback, Job, RunResult
from .streams import ProgressTail


def _run_on_worker(job: Job, backend: str, options: dict[str, Any]) -> RunResult:
    """Body of the Ray task: run `job` with a local or docker sandbox on this worker."""
    import ray

    from . import get_sandbox

    if job.gpus:
        job = replace(job, gpus=[int(g) for g in ray.get_gpu_ids()])  # the GPUs Ray reserved for this task
    result = get_sandbox(backend, **options).run(job)
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
    if isinstance(exc, (rex.WorkerCrashedError, rex.NodeDiedError, rex.TaskCancelledError, rex.ActorDiedError)):
        return RunResult(status=KILLED, category=Category.CRASHED.value, backend="ray",
                         message=f"the Ray worker running the job died and retries were exhausted ({name}: {exc})")
    if isinstance(exc, rex.RayTaskError):
        return RunResult(status=FAILED, category=Category.CRASHED.value, backend="ray",
                         message=f"the sandbox failed on its Ray worker: {str(exc).strip()[-1500:]}")
    return RunResult(status=FAILED, category=Category.CRASHED.value, backend="ray",
                     message=f"Ray could not run the job ({name}: {exc})")


class RaySandbox:
    """Runs jobs as Ray tasks; `run_many` runs a batch concurrently."""

    name = "ray"

    def __init__(
        self,
        *,
        address: str | None = None,
        backend: str = "local",
        backend_options: dict[str, Any] | None = None,
        max_retries: int = 1,
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

    def _ensure_ray(self) -> Any:
        try:
            import ray
        except ImportError as e:
            raise ConfigError("Ray is not installed", "pip install 'nn-caption[ray]'.") from e
        if not ray.is_initialized():
            opts: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": False, **self.init_options}
            try:
                if self.address:
                    ray.init(address=self.address, **opts)
                else:
                    opts.setdefault("include_dashboard", False)
                    if "_temp_dir" not in opts:
                        self._owned_temp = tempfile.mkdtemp(prefix="nncaption-ray-")
                        opts["_temp_dir"] = self._owned_temp
                    ray.init(num_cpus=self.local_num_cpus, **opts)
            except (ConnectionError, RuntimeError, ValueError) as e:
                where = self.address or "a local instance"
                raise ConfigError(f"cannot start or reach Ray at {where}: {e}",
                                  "check --ray-address (e.g. ray://head:10001 or auto), or omit it for local Ray.") from e
        return ray

    def run(self, job: Job, on_event: EventCallback | None = None) -> RunResult:
        return self.run_many([job], on_event=on_event)[0]

    def run_many(self, jobs: list[Job], on_event: EventCallback | None = None) -> list[RunResult]:
        """Run every job as a Ray task; results in the order of `jobs`.

        `on_event` gets each job's progress events (with "job" = its index) when
        the job directories are visible from here.
        """
        ray = self._ensure_ray()
        remote = ray.remote(_run_on_worker)
        refs = []
        for job in jobs:
            task = remote.options(
                num_cpus=self.num_cpus,
                num_gpus=len(job.gpus),
                max_retries=self.max_retries,
                retry_exceptions=False,
            )
            refs.append(task.remote(job, self.backend, self.backend_options))
        tails = {i: ProgressTail(Path(job.job_dir) / PROGRESS_FILE) for i, job in enumerate(jobs)}
        index = {ref: i for i, ref in enumerate(refs)}
        pending = list(refs)
        results: dict[int, RunResult] = {}
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=self.poll_interval_s)
            if on_event is not None:
                for i, tail in tails.items():
                    if i not in results:
                        tail.drain(lambda e, i=i: on_event({**e, "job": i}))
            for ref in done:
                i = index[ref]
                try:
                    results[i] = ray.get(ref)
                except ray.exceptions.RayTaskError as e:
                    cause = getattr(e, "cause", None)
                    if isinstance(cause, NNCaptionError):
                        raise cause from None  # a set-up problem (e.g. docker missing), not the candidate's fault
                    results[i] = result_for_ray_error(e)
                except ray.exceptions.RayError as e:
                    results[i] = result_for_ray_error(e)
        return [results[i] for i in range(len(jobs))]

    def shutdown(self) -> None:
        """Stop the Ray instance this process started or joined (and remove a local one's session files)."""
        import ray

        if ray.is_initialized():
            ray.shutdown()
        if self._owned_temp:
            shutil.rmtree(self._owned_temp, ignore_errors=True)
            self._owned_temp = None

