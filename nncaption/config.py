"""Where nn-caption keeps its files, and the embedded defaults of the main job."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_IMAGE_SIZE = 64
DEFAULT_SEED = 0
DEFAULT_SYNTH_TRAIN = 2000
DEFAULT_SYNTH_VAL = 250


def home() -> Path:
    """Root for data, caches and runs: $NNCAPTION_HOME, else ~/.cache/nncaption."""
    env = os.environ.get("NNCAPTION_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "nncaption"


def data_root() -> Path:
    return home() / "data"


def cache_root() -> Path:
    return home() / "prepared"


def runs_root() -> Path:
    return home() / "runs"


def default_synthetic_dir(seed: int = DEFAULT_SEED) -> Path:
    return data_root() / f"synthetic-s{seed}"
