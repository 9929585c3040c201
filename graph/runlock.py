"""One process per run directory, and whether a run marked "running" still has one.

`SearchRun.run` holds an exclusive `flock` on `RUN_DIR/run.lock` for as long as it runs; the kernel drops the
lock when the process ends, however it ends (SIGKILL, a second Ctrl-C, a crash). So a second `nncaption run`
or `--resume` on the same directory is refused with a clear error instead of writing beside the first, and
`nncaption runs` can tell a live run from one whose process is gone (its row still says "running").
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from types import TracebackType

from nncaption.netapi.errors import ConfigError

LOCK_FILE = "run.lock"


class RunLock:
    """Exclusive hold of one run directory (a context manager); ConfigError when another process has it."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise ConfigError(f"cannot lock the run directory {self.path.parent}: {e}",
                                  "check that the directory is writable") from e
            raise ConfigError(f"the run {self.path.parent} is being run by another process",
                              "wait for it to finish or stop it (Ctrl-C), then use --resume; or pick another "
                              "--run-dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor releases the lock
            self._fd = None


def is_live(run_dir: Path) -> bool | None:
    """True while a process holds the run's lock, False when none does, None when the run has no lock file
    (made before locks existed) or it cannot be read."""
    try:
        fd = os.open(Path(run_dir) / LOCK_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        return True if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN) else None
    finally:
        os.close(fd)
    return False
