"""Torch-side helpers of the candidate's process (`netapi.child`): reading a candidate's numbers, finiteness
checks, the process's seeds and threads, and whether its CUDA device can be used at all.

Everything a candidate hands back is read defensively here: a property may raise, a "loss" may be any object.
"""

from __future__ import annotations

import logging
import math
from typing import Any

log = logging.getLogger(__name__)


def params_finite(model: Any) -> bool:
    """True when every parameter of the model is finite (one reduction, one sync)."""
    import torch

    params = [p.detach() for p in model.parameters()]
    if not params:
        return True
    norms = torch._foreach_norm(params) if hasattr(torch, "_foreach_norm") else [p.norm() for p in params]
    return bool(torch.isfinite(torch.stack([n.float().cpu() for n in norms])).all())


def number(value: Any) -> float | None:
    """A loss value as a float: a Python number or a one-element tensor; None otherwise."""
    import torch

    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        try:
            return float(value.detach().float().cpu())
        except (RuntimeError, ValueError):
            return None
    return None


def read_loss(model: Any) -> float | None:
    """The model's optional `last_loss` attribute as a float."""
    try:
        return number(getattr(model, "last_loss", None))
    except Exception:  # noqa: BLE001 - a candidate property may raise anything
        log.debug("reading last_loss failed", exc_info=True)
        return None


def json_float(x: float | None) -> float | str | None:
    """A float for a JSON header; non-finite values travel as strings ("nan", "inf")."""
    if x is None or math.isfinite(x):
        return x
    return str(x)


def seed_process(seed: int, threads: int | None) -> None:
    """Seeds and threads of the candidate's process, before any candidate code runs."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    # After a fork, OpenMP must not reuse a thread pool the parent may have started: the runner never
    # computes before forking; in a shared process (run_job in tests) the runner passes threads=1.
    if threads:
        torch.set_num_threads(int(threads))


def cuda_problem(device: str) -> str | None:
    """Why `device` cannot be used in this process, or None. Creates the CUDA context (as the candidate's first
    `.to(device)` would), so a broken driver set-up is reported as the job's, not as the candidate's Net error."""
    import torch

    if not torch.cuda.is_available():
        return f"device {device!r} requested but CUDA is not available in the job"
    try:
        torch.zeros(1, device=device)
    except (RuntimeError, AssertionError) as e:  # torch.AcceleratorError is a RuntimeError
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"CUDA cannot be initialised in the job for device {device!r}: {first}"
    return None
