"""Where nn-caption keeps its files ($NNCAPTION_HOME), and the embedded defaults of the main job.

Below the CLI so that every layer (the data resolver included) can find them without importing upward.

`home()` only computes the path; `ensure_home()` (and `ensure_writable_dir()` for other output folders) checks
that it can really hold files before a command starts work, so a read-only or file-valued NNCAPTION_HOME is a
clear environment error (exit 2, a next step) instead of an internal error half-way through.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from nncaption.netapi.errors import EnvironmentProblem

DEFAULT_IMAGE_SIZE = 64
DEFAULT_SEED = 0
DEFAULT_SYNTH_TRAIN = 2000
DEFAULT_SYNTH_VAL = 250


class HomeError(EnvironmentProblem):
    """NNCAPTION_HOME (or another output folder) cannot hold nn-caption's files: the user's setup, not a bug."""


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


def _where(path: Path, what: str) -> str:
    return f"{what} {path}" if what == "NNCAPTION_HOME" else f"{what} ({path})"


def ensure_writable_dir(path: Path, what: str) -> Path:
    """Create `path` if needed and prove a file can be written there; HomeError (exit 2) when not.

    `what` names the setting in messages ("NNCAPTION_HOME", "--out", "--cache-dir").
    """
    path = Path(path).expanduser()
    fix = ("set NNCAPTION_HOME to a writable folder (or unset it to use ~/.cache/nncaption)"
           if what == "NNCAPTION_HOME" else f"give {what} a writable folder")
    if path.exists() and not path.is_dir():
        raise HomeError(f"{_where(path, what)} is a file, not a folder", fix)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HomeError(f"cannot create {_where(path, what)}: {e.strerror or e}", fix) from None
    try:
        fd, probe = tempfile.mkstemp(dir=path, prefix=".nncaption-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise HomeError(f"{_where(path, what)} is not writable: {e.strerror or e}", fix) from None
    return path


def ensure_home() -> Path:
    """NNCAPTION_HOME, created if needed and checked writable; HomeError (category environment, exit 2) if not.

    Every command that writes data, caches, jobs or runs calls this before any other work.
    """
    return ensure_writable_dir(home(), "NNCAPTION_HOME")
