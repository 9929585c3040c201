"""Handing the job directory to the unprivileged sandbox user, and making the public data readable.

When the parent runs as root the candidate is dropped to uid/gid 65534
("nobody"): the job directory becomes its own (so the runner can write
progress, predictions and results) and the public data directory must be
readable by others (it holds no secrets by design: validation references stay
in the private directory, which is never mounted or chowned).
Symbolic links are never followed.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

NOBODY = 65534
MAX_ENTRIES = 200_000
MAX_DEPTH = 256


def walk_capped(
    top: Path, *, max_entries: int = MAX_ENTRIES, max_depth: int = MAX_DEPTH
) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry under `top` (paths and lstat results), iteratively: no recursion, links never followed,
    directories deeper than `max_depth` not entered; OSError past `max_entries` entries."""
    stack: list[tuple[str, int]] = [(str(top), 0)]
    seen = 0
    while stack:
        d, depth = stack.pop()
        try:
            with os.scandir(d) as it:
                entries = list(it)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            seen += 1
            if seen > max_entries:
                raise OSError(f"more than {max_entries} entries under {top}")
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            yield entry.path, st
            if stat.S_ISDIR(st.st_mode):
                if depth + 1 >= max_depth:
                    raise OSError(f"directories nested deeper than {max_depth} under {top}")
                stack.append((entry.path, depth + 1))


def give_to(job_dir: Path, uid: int = NOBODY, gid: int = NOBODY) -> None:
    """lchown the job directory tree to uid:gid (no link is followed; the parent's own few input files)."""
    job_dir = Path(job_dir)
    os.lchown(job_dir, uid, gid)
    for path, _ in walk_capped(job_dir):
        try:
            os.lchown(path, uid, gid)
        except FileNotFoundError:
            continue


def reclaim(job_dir: Path, uid: int | None = None, gid: int | None = None) -> int:
    """After a job (all its processes gone): give the tree back to the parent's uid:gid and remove every
    symbolic link, FIFO, socket or device node the candidate left, so that the parent's later reads and
    writes in the job dir can never be redirected. Returns how many entries were removed. Iterative, with
    entry and depth caps (OSError past them: the caller reports a candidate failure)."""
    uid = os.getuid() if uid is None else uid
    gid = os.getgid() if gid is None else gid
    removed = 0
    job_dir = Path(job_dir)
    for p, st in walk_capped(job_dir):
        try:
            if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
                if (st.st_uid, st.st_gid) != (uid, gid):
                    os.lchown(p, uid, gid)
            else:
                os.unlink(p)
                removed += 1
        except FileNotFoundError:
            continue
        except PermissionError as e:  # not root: nothing to give back
            log.debug("reclaim %s: %s", p, e)
    try:
        os.lchown(job_dir, uid, gid)
    except PermissionError as e:
        log.debug("reclaim %s: %s", job_dir, e)
    return removed


def make_world_readable(data_dir: Path) -> int:
    """Add o+r (files) and o+rx (directories) under data_dir; returns how many modes changed."""
    changed = 0
    data_dir = Path(data_dir)
    for root, dirs, files in os.walk(data_dir, followlinks=False):
        for name in [None, *dirs, *files]:
            p = root if name is None else os.path.join(root, name)
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(st.st_mode):
                continue
            want = st.st_mode | stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(st.st_mode) else 0)
            if want != st.st_mode:
                os.chmod(p, stat.S_IMODE(want))
                changed += 1
    return changed


def move_entries(src: Path, dst: Path) -> None:
    """Move every entry of src into dst (replacing same-named ones); links are moved, never followed."""
    for entry in list(src.iterdir()):
        target = dst / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target, ignore_errors=True)
        elif target.exists() or target.is_symlink():
            target.unlink()
        try:
            os.rename(entry, target)
        except OSError:
            shutil.move(str(entry), str(target))
