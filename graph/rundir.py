"""The one reader (and writer) of run directories: ids validated, files opened without links, SQLite read-only.

A run directory is something users share (forks, bug reports), so everything in it
is hostile input. Every inspection tool (trace, report, html, export) and fork and
resume go through here:

- ids from a run's databases or JSON (candidate `c0001`, blob refs of 64 hex digits,
  job ids, step and epoch integers) are checked against their format before they
  become part of a path (`cid`, `ref`, `job_id`, `integer`);
- files are opened one component at a time relative to the run directory, never
  following a link, never blocking (a FIFO), regular files only, size-capped
  (`read_bytes`, `read_text`, `read_json`, `blob_text`);
- writes go to a new file beside the target and are renamed over it, so a planted
  link is replaced, never written through; folders are created the same way
  (`write_file`, `make_dirs`);
- SQLite is opened read-only (`mode=ro`, `query_only`, untrusted schema off) with a
  progress handler that ends any statement after a time bound, and a database with
  views or triggers is refused (`connect_ro`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import secrets
import sqlite3
import stat
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from nncaption.netapi.errors import NNCaptionError
from nncaption.netapi.jobfiles import read_at_most
from nncaption.netapi.safetext import safe_text

log = logging.getLogger(__name__)

CID_RE = re.compile(r"c[0-9]{4,9}")
REF_RE = re.compile(r"[0-9a-f]{64}")
JOB_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")
MAX_INT = 1 << 53
QUERY_SECONDS = 10.0  # one SQL statement of an inspection tool; a run's queries take milliseconds
DEFAULT_MAX_BYTES = 64 << 20
JSON_MAX_BYTES = 8 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class RunDirError(NNCaptionError):
    """Something in a run directory is not what a run writes (a path for an id, a link, a view): refused."""

    category = "run-dir"
    exit_code = 2


def _show(value: object) -> str:
    return safe_text(repr(value), 120, keep="head")


# ---------------------------------------------------------------------------------------------- ids
def cid(value: object) -> str | None:
    """`value` if it is a candidate id (`c0001`), else None."""
    return value if isinstance(value, str) and CID_RE.fullmatch(value) else None


def ref(value: object) -> str | None:
    """`value` if it is a blob reference (64 lowercase hex digits), else None."""
    return value if isinstance(value, str) and REF_RE.fullmatch(value) else None


def job_id(value: object) -> str | None:
    """`value` if it is a sandbox job id (letters, digits, `_`, `-`), else None."""
    return value if isinstance(value, str) and JOB_RE.fullmatch(value) else None


def integer(value: object, lo: int = 0, hi: int = MAX_INT) -> int | None:
    """`value` if it is an int (not a bool) in [lo, hi], else None: steps, attempts, epochs."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if lo <= value <= hi else None


def require(kind: str, value: object, where: str = "") -> Any:
    """The validated id, or RunDirError naming what was found (kind: cid, ref, job, int)."""
    checks: dict[str, Callable[[object], Any]] = {"cid": cid, "ref": ref, "job": job_id, "int": integer}
    out = checks[kind](value)
    if out is None:
        raise RunDirError(f"{where or 'the run directory'} holds {_show(value)} where a {kind} belongs",
                          "this run directory was edited or is damaged; inspect only runs you trust")
    return out


# ---------------------------------------------------------------------------------------------- reading
def _parts(rel: str | Sequence[str]) -> list[str]:
    parts = rel.split("/") if isinstance(rel, str) else list(rel)
    for p in parts:
        if not p or p in (".", "..") or "/" in p or "\0" in p:
            raise RunDirError(f"refused path component {_show(p)}", "paths in a run directory are plain names")
    return parts


@contextlib.contextmanager
def _walk(root: Path, parts: Sequence[str], *, create: bool = False) -> Iterator[int]:
    """A descriptor of the folder root/parts[0]/..., each component opened without following links."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for p in parts:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(p, 0o755, dir_fd=fd)
            nfd = os.open(p, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nfd
        yield fd
    finally:
        os.close(fd)


def read_bytes(root: Path, rel: str | Sequence[str], max_bytes: int = DEFAULT_MAX_BYTES, *,
               offset: int = 0) -> bytes | None:
    """Up to `max_bytes` of root/rel from `offset` (negative: from the end); None when missing, a link, not a
    regular file (FIFO, device, folder) or unreadable. Never follows a link, never blocks."""
    parts = _parts(rel)
    try:
        with _walk(Path(root), parts[:-1]) as dfd:
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ENOTDIR):
            log.warning("not reading %s/%s: %s", safe_text(str(root), 300), safe_text("/".join(parts), 300),
                        e.strerror)
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            log.warning("not reading %s: not a regular file", safe_text("/".join(parts), 300))
            return None
        if offset < 0:
            offset = max(0, st.st_size + offset)
        os.lseek(fd, offset, os.SEEK_SET)
        return read_at_most(fd, max_bytes)
    except OSError:
        return None
    finally:
        os.close(fd)


def read_text(root: Path, rel: str | Sequence[str], limit: int = 200_000) -> str | None:
    """At most `limit` characters of a UTF-8 text file (invalid bytes replaced); see read_bytes."""
    data = read_bytes(root, rel, limit * 4 + 4)
    return None if data is None else data.decode("utf-8", errors="replace")[:limit]


def read_json(root: Path, rel: str | Sequence[str], max_bytes: int = JSON_MAX_BYTES) -> Any:
    """The JSON value of a file (None when missing, too large, malformed or too deeply nested)."""
    data = read_bytes(root, rel, max_bytes + 1)
    if data is None or len(data) > max_bytes:
        return None
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        log.warning("%s is not valid JSON", safe_text("/".join(_parts(rel)), 300))
        return None


def blob_path(value: object) -> list[str] | None:
    """The path parts of a blob (`blobs/ab/abcd...`) when `value` is a valid ref, else None."""
    r = ref(value)
    return ["blobs", r[:2], r] if r else None


def blob_text(root: Path, value: object, limit: int = 200_000) -> str | None:
    """The text of blob `value` (at most `limit` characters); None for a bad ref or a missing/odd file."""
    parts = blob_path(value)
    if parts is None:
        if value:
            log.warning("ignoring blob reference %s: not 64 hex digits", _show(value))
        return None
    return read_text(root, parts, limit)


# ---------------------------------------------------------------------------------------------- writing
def make_dirs(root: Path, rel: str | Sequence[str]) -> Path:
    """Create root/rel one component at a time, refusing links on the way; returns the folder's path."""
    parts = _parts(rel) if rel else []
    try:
        with _walk(Path(root), parts, create=True):
            pass
    except OSError as e:
        why = "a link or a file is in the way" if e.errno in (errno.ELOOP, errno.ENOTDIR) else e.strerror
        raise RunDirError(f"cannot create {safe_text(str(Path(root, *parts)), 300)}: {why}",
                          "remove the link or file, or choose another output folder") from None
    return Path(root, *parts)


def write_file(root: Path, rel: str | Sequence[str], data: bytes | str, *, mode: int = 0o644) -> Path:
    """Write root/rel as a new file renamed over the target: a link already there is replaced, never followed."""
    parts = _parts(rel)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    make_dirs(root, parts[:-1])
    with _walk(Path(root), parts[:-1]) as dfd:
        tmp = f".{parts[-1]}.{secrets.token_hex(6)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dfd)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(raw)
            os.replace(tmp, parts[-1], src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise
    return Path(root, *parts)


def write_path(path: Path, data: bytes | str, *, mode: int = 0o644) -> Path:
    """write_file for a full path: its folder must exist (it is the caller's choice), the name is replaced."""
    path = Path(path)
    return write_file(path.parent, path.name, data, mode=mode)


# ---------------------------------------------------------------------------------------------- SQLite
class BoundedConnection(sqlite3.Connection):
    """A connection whose every statement ends after `time_limit` seconds (the progress handler)."""

    time_limit = QUERY_SECONDS
    deadline = float("inf")

    def execute(self, *args: Any, **kwargs: Any) -> sqlite3.Cursor:
        self.deadline = time.monotonic() + self.time_limit
        return super().execute(*args, **kwargs)


def _interrupt(conn: BoundedConnection) -> int:
    return 1 if time.monotonic() > conn.deadline else 0


def connect_ro(path: Path, *, time_limit: float = QUERY_SECONDS) -> sqlite3.Connection:
    """A read-only connection to a run's database: `mode=ro`, no links, no views or triggers, bounded time."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except OSError as e:
        raise RunDirError(f"cannot open {safe_text(str(path), 300)}: {e.strerror}",
                          "pass a run directory made by `nncaption run`") from None
    if not stat.S_ISREG(st.st_mode):
        raise RunDirError(f"{safe_text(str(path), 300)} is not a regular file (a link, a FIFO or a folder)",
                          "this run directory was edited; inspect only runs you trust")
    uri = "file:" + urllib.parse.quote(str(path.resolve())) + "?mode=ro"
    db = sqlite3.connect(uri, uri=True, timeout=time_limit, check_same_thread=False, factory=BoundedConnection)
    assert isinstance(db, BoundedConnection)
    db.time_limit = time_limit
    db.set_progress_handler(lambda: _interrupt(db), 10_000)
    try:
        db.execute("PRAGMA query_only=ON")
        db.execute("PRAGMA trusted_schema=OFF")
        bad = db.execute("SELECT type, name FROM sqlite_master WHERE type IN ('view', 'trigger') OR "
                         "(type = 'table' AND sql LIKE 'CREATE VIRTUAL%') LIMIT 3").fetchall()
    except sqlite3.Error as e:
        db.close()
        raise RunDirError(f"{safe_text(str(path), 300)} is not a readable SQLite database ({e})",
                          "this run directory is damaged or was edited") from None
    if bad:
        db.close()
        what = ", ".join(f"{t} {_show(n)}" for t, n in bad)
        raise RunDirError(f"{safe_text(str(path), 300)} holds {what}: a run's database has none, so it was edited",
                          "inspect only runs you trust; views and triggers can run arbitrary SQL")
    db.row_factory = sqlite3.Row
    return db


def query_error(path: Path, e: sqlite3.Error) -> RunDirError:
    """A RunDirError for a query that failed or was cut off by the time bound."""
    cut = isinstance(e, sqlite3.OperationalError) and "interrupt" in str(e).lower()
    return RunDirError(f"{safe_text(str(path), 300)}: " + ("a query took longer than the time bound and was "
                       "stopped" if cut else f"query failed ({safe_text(str(e), 200)})"),
                       "this database is damaged or was edited; inspect only runs you trust")


RUN_FILES = ("results.sqlite", "results.sqlite-wal", "results.sqlite-shm", "checkpoints.sqlite",
             "checkpoints.sqlite-wal", "checkpoints.sqlite-shm", "config.json", "run.lock")
RUN_DIRS = ("blobs", "candidates", "jobs")


def check_layout(run_dir: Path) -> None:
    """Before a run directory is written to (--resume): its databases, config and lock are regular files and its
    folders (and their direct children) are real folders, not links that would send writes elsewhere."""
    bad: list[str] = []
    for name in RUN_FILES:
        try:
            st = os.lstat(run_dir / name)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode):
            bad.append(name)
    for name in RUN_DIRS:
        try:
            st = os.lstat(run_dir / name)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            bad.append(name)
            continue
        with os.scandir(run_dir / name) as it:
            for i, entry in enumerate(it):
                if i >= 100_000:
                    break
                if entry.is_symlink() or not (entry.is_dir(follow_symlinks=False) or
                                              entry.is_file(follow_symlinks=False)):
                    bad.append(f"{name}/{entry.name}")
    if bad:
        shown = ", ".join(safe_text(b, 100) for b in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise RunDirError(f"{safe_text(str(run_dir), 300)} holds links or special files where a run keeps its "
                          f"data: {shown}", "this run directory was edited; continue only runs you trust, after "
                          "removing them")
