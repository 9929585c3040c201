"""Advisory file locks that keep concurrent nn-caption processes from undoing each other's data work.

Generation and preparation build aside and rename into place; the locks make the check "is it already there?"
and the build one step, so two commands started together on a fresh NNCAPTION_HOME build once and never
delete what the other just finished. A raw dataset's lock is `<parent>/.<name>.lock`: writers (generation)
hold it exclusively, readers (preparation) shared, so a dataset is never replaced while it is being read.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from nncaption.netapi.errors import EnvironmentProblem

log = logging.getLogger(__name__)


def lock_path_for(folder: Path) -> Path:
    """The lock file that guards `folder` (beside it, so the folder itself can be renamed)."""
    folder = Path(folder)
    return folder.with_name(f".{folder.name}.lock")


@contextlib.contextmanager
def file_lock(path: Path, *, shared: bool = False) -> Iterator[None]:
    """Hold an advisory flock on `path` (created if missing, never through a symlink) for the block."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise EnvironmentProblem(f"cannot create the lock file {path}: {e.strerror or e}",
                                 "make NNCAPTION_HOME (or the output folder) a writable folder") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextlib.contextmanager
def optional_shared_lock(folder: Path) -> Iterator[None]:
    """A shared lock on `folder`'s lock file when one can be made (a read-only COCO tree cannot hold one)."""
    path = lock_path_for(folder)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        log.debug("no lock file beside %s (%s); reading it unlocked", folder, e)
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)
