"""Start-up checks of a run that depend on the machine: how many candidates can train at once here.

The sandbox and the dataset are checked by `CandidateService.preflight` (the docker
image exists, the dataset is complete; a ConfigError, exit 2, before any candidate).
This module answers the question the settings cannot: is `concurrency` sensible for
this machine? On CPU each training job gets `train.threads` cores (1 when unset);
on GPU each job gets one of `jobs_per_gpu` places on a device. A concurrency above
that only makes trainings share the machine (each slower, none sooner), so the run
uses the machine's number and says so (a warning and a `concurrency_adjusted` event).
Ray clusters schedule on their own resources: left alone.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from nncaption.graph.settings import RunSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConcurrencyCheck:
    requested: int
    using: int
    why: str  # what the number is based on

    @property
    def adjusted(self) -> bool:
        return self.using != self.requested

    def event(self) -> dict[str, object]:
        return {"event": "concurrency_adjusted", "requested": self.requested, "using": self.using, "why": self.why}


def _cuda_devices() -> int:
    try:
        import torch

        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:  # no torch or a broken driver: the service's preflight reports that
        log.debug("cannot count CUDA devices", exc_info=True)
        return 0


def check_concurrency(settings: RunSettings, *, cores: int | None = None, cuda_devices: int | None = None
                      ) -> ConcurrencyCheck:
    """The concurrency this machine can train at once (the requested one when it fits, or for Ray)."""
    requested = settings.concurrency
    if settings.sandbox.kind == "ray":
        return ConcurrencyCheck(requested, requested, "Ray schedules jobs on the cluster's resources")
    if settings.train.device == "cuda":
        gpus = len(settings.sandbox.gpus) or (cuda_devices if cuda_devices is not None else _cuda_devices())
        if gpus <= 0:
            return ConcurrencyCheck(requested, requested, "no GPU counted (the service's preflight checks CUDA)")
        fits = gpus * settings.sandbox.jobs_per_gpu
        why = f"{gpus} GPU(s) x {settings.sandbox.jobs_per_gpu} job(s) per GPU"
    else:
        n = cores if cores is not None else (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                             else os.cpu_count() or 1)
        threads = settings.train.threads or 1
        fits = max(1, n // threads)
        why = f"{n} CPU core(s) / {threads} thread(s) per training job"
    return ConcurrencyCheck(requested, min(requested, fits), why)
