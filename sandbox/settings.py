"""Settings of the candidate service and the check of a candidate's hyperparameters (prm).

`EvalSettings` is fixed per service (every candidate of a search is trained the
same way); `validate_prm` checks what a designer asked for before any job runs:
numbers only, lr in (0, 1], momentum and dropout in [0, 1), batch an integer in
1..512 (the ranges agents.hparams uses too). A violation is a value the service
reports as `bad-hyperparameters`, never an exception.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nncaption.netapi.errors import ConfigError
from nncaption.netapi.safetext import safe_text

Prm = dict[str, float | int]

DEVICES: tuple[str, ...] = ("cpu", "cuda")
PRM_RANGES: dict[str, tuple[float, float, bool, bool]] = {  # key: (low, high, low inclusive, high inclusive)
    "lr": (0.0, 1.0, False, True),
    "momentum": (0.0, 1.0, True, False),
    "dropout": (0.0, 1.0, True, False),
}
BATCH_RANGE = (1, 512)
MAX_PRM_KEYS = 32


@dataclass
class EvalSettings:
    """How candidates are checked and trained (the same for every candidate of one service)."""

    epochs: int = 3
    batch_size: int = 32  # a prm "batch" overrides it per candidate
    seed: int = 0
    device: str = "cpu"
    # Time limits count the candidate's compute (CPU s per allotted core; wall s on a GPU), each with a wall-clock
    # backstop of 3x (netapi.compute)
    epoch_time_limit_s: float = 600.0  # per epoch of training
    decode_time_limit_s: float | None = None  # per decode pass; None = epoch_time_limit_s
    setup_time_limit_s: float = 120.0  # import, Net(...) and train_setup in a training job
    max_params: int = 50_000_000
    max_train_batches: int | None = None
    max_val_images: int | None = None
    threads: int | None = None  # torch threads in the sandbox
    smoke_time_limit_s: float = 120.0
    startup_slack_s: float = 120.0  # importing torch in a cold sandbox, writing files
    memory_mb: int | None = None  # None = the sandbox's default limit
    baseline: bool = True  # score the constant-caption baseline beside the candidate
    reuse: bool = True  # return the recorded result of an identical finished job
    suspect_bleu4: float | None = None  # None = derived from the dataset's references
    overload_retries: int = 1  # runs again of a job the machine starved of CPU ("machine overloaded")
    overload_retry_pause_s: float = 30.0  # the pause before such a run again

    def validate(self) -> None:
        """ConfigError naming the first setting that makes no sense."""
        for name in ("epochs", "batch_size", "max_params"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}", f"set {name} to 1 or more")
        for name in ("max_train_batches", "max_val_images", "threads", "memory_mb"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}", f"leave {name} unset or give 1 or more")
        for name in ("epoch_time_limit_s", "decode_time_limit_s", "setup_time_limit_s", "smoke_time_limit_s",
                     "startup_slack_s"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive number of seconds, got {value}", "e.g. 600")
        if self.overload_retries < 0 or not (math.isfinite(self.overload_retry_pause_s)
                                             and self.overload_retry_pause_s >= 0):
            raise ConfigError("overload_retries and overload_retry_pause_s must be >= 0", "e.g. 1 and 30")
        if not BATCH_RANGE[0] <= self.batch_size <= BATCH_RANGE[1]:
            raise ConfigError(f"batch_size must be in {BATCH_RANGE[0]}..{BATCH_RANGE[1]}, got {self.batch_size}",
                              "e.g. 32")
        if self.device not in DEVICES:
            raise ConfigError(f"unknown device {self.device!r}", f"use one of: {', '.join(DEVICES)}")
        if self.suspect_bleu4 is not None and not 0 < self.suspect_bleu4 <= 1:
            raise ConfigError("suspect_bleu4 must be in (0, 1]", "leave it unset to derive it from the dataset")


def validate_prm(prm: Mapping[str, Any] | None) -> tuple[Prm, str | None]:
    """(checked copy of `prm`, None), or ({}, what is wrong): numbers only, lr/momentum/dropout/batch in range."""
    if prm is None:
        return {}, None
    if not isinstance(prm, Mapping):
        return {}, f"the hyperparameters must be a mapping of names to numbers, got {type(prm).__name__}"
    if len(prm) > MAX_PRM_KEYS:
        return {}, f"too many hyperparameters ({len(prm)}; at most {MAX_PRM_KEYS})"
    out: Prm = {}
    for key, value in prm.items():
        if not isinstance(key, str) or not key.isidentifier() or len(key) > 64:
            return {}, f"hyperparameter name {safe_text(key, 40)!r} is not an identifier"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return {}, f"hyperparameter {key!r} must be a finite number, got {safe_text(repr(value), 40)}"
        if key in PRM_RANGES:
            low, high, low_in, high_in = PRM_RANGES[key]
            if not ((value >= low if low_in else value > low) and (value <= high if high_in else value < high)):
                interval = f"{'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"
                return {}, f"hyperparameter {key!r} = {value!r} is outside {interval}"
            out[key] = float(value)
        elif key == "batch":
            if isinstance(value, float) and not value.is_integer():
                return {}, f"hyperparameter 'batch' must be an integer, got {value!r}"
            if not BATCH_RANGE[0] <= int(value) <= BATCH_RANGE[1]:
                return {}, f"hyperparameter 'batch' = {value!r} is outside {BATCH_RANGE[0]}..{BATCH_RANGE[1]}"
            out[key] = int(value)
        else:
            out[key] = value
    return out, None
