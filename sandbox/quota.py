"""The job's working directory ("stage"): a sized tmpfs per job, inputs copied in, whitelisted outputs copied out.

A job never writes into the host job directory. Its files live in a stage directory next to it,
mounted as a tmpfs of `Limits.disk_mb` when this process may mount (root), so a job cannot leave
more than its quota anywhere and everything it wrote disappears with one unmount. After the job only
the outputs in `OUTPUT_FILES` (regular files, no links followed, size-capped) are copied back.
Without mount rights the stage is a plain directory (no quota: the isolation list says so) and is
removed with an iterative walk that caps entries and flattens over-deep directory chains.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from nncaption.netapi.job import CANDIDATE_FILE, JOB_FILE, PREDICTIONS_FILE, PROGRESS_FILE, RESULT_FILE
from nncaption.netapi.procs import pid_alive

from .probe import FACTS_FILE

log = logging.getLogger(__name__)

STAGE_PREFIX = ".nncaption-stage-"
_STAGE_RE = re.compile(rf"^{re.escape(STAGE_PREFIX)}(\d+)-[0-9a-f]+$")
INPUT_FILES: tuple[str, ...] = (JOB_FILE, CANDIDATE_FILE, "probe.json")  # the parent's, copied in
OUTPUT_FILES: tuple[str, ...] = (RESULT_FILE, PREDICTIONS_FILE, PROGRESS_FILE, FACTS_FILE)  # the job's, copied out
MAX_INPUT_BYTES = 64 * 2**20
MAX_ENTRIES = 200_000  # removal gives up (a candidate failure) past this many entries
MAX_OPEN_DEPTH = 64  # deeper directories are moved up to the top before their contents are removed
COPY_CHUNK = 1 << 20


class ReclaimError(OSError):
    """The job's directory could not be removed within the caps (reported as a candidate failure)."""


@dataclass
class Stage:
    """One job's working directory."""

    path: Path
    quota_mb: int | None  # None: a plain directory, no quota
    notes: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, parent: Path, *, disk_mb: int, owner_pid: int | None = None, mount: bool = True) -> Stage:
        """A fresh stage under `parent`, a sized tmpfs when mounting is allowed."""
        path = Path(parent) / f"{STAGE_PREFIX}{owner_pid or os.getpid()}-{uuid.uuid4().hex[:12]}"
        path.mkdir(mode=0o700)
        if mount and os.geteuid() == 0:
            opts = f"size={int(disk_mb)}m,mode=0700,nosuid,nodev"
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "nncaption-job", str(path)],
                               capture_output=True, text=True, timeout=20)
            if r.returncode == 0:
                return cls(path, int(disk_mb))
            log.warning("cannot mount a %s MiB tmpfs for the job (%s): no disk quota", disk_mb, r.stderr.strip())
        return cls(path, None)

    @property
    def isolation(self) -> list[str]:
        return [f"disk-quota:{self.quota_mb}m", "outputs-whitelist"] if self.quota_mb else ["outputs-whitelist"]

    def put_inputs(self, job_dir: Path) -> None:
        """Copy the parent's input files (regular files only) from the host job dir into the stage."""
        for name in INPUT_FILES:
            src = Path(job_dir) / name
            if src.is_file() and not src.is_symlink():
                copy_bounded(src, self.path / name, MAX_INPUT_BYTES)

    def collect(self, job_dir: Path, max_bytes: int) -> list[str]:
        """Copy the whitelisted outputs back into the host job dir; returns notes about what was refused."""
        notes: list[str] = []
        for name in OUTPUT_FILES:
            src, dst = self.path / name, Path(job_dir) / name
            try:
                st = os.lstat(src)
            except FileNotFoundError:
                continue
            except OSError as e:
                notes.append(f"{name} could not be read back ({e.strerror}).")
                continue
            if not stat.S_ISREG(st.st_mode):
                notes.append(f"{name} is not a regular file and was not read.")
                continue
            try:
                if not copy_bounded(src, dst, max_bytes):
                    notes.append(f"{name} is larger than {max_bytes // 2**20} MiB and was not read.")
            except OSError as e:
                notes.append(f"{name} could not be copied back ({e.strerror}).")
        return notes

    def remove(self) -> None:
        """Unmount (everything the job wrote goes with it) or remove the tree; ReclaimError when impossible."""
        if self.quota_mb:
            r = subprocess.run(["umount", str(self.path)], capture_output=True, text=True, timeout=30)
            if r.returncode != 0:
                log.warning("umount %s failed (%s); detaching it lazily", self.path, r.stderr.strip())
                subprocess.run(["umount", "-l", str(self.path)], capture_output=True, timeout=30)
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:  # removed meanwhile (a cancelled job's own clean-up)
                return
            except OSError as e:
                log.warning("stage %s not empty after unmount (%s); removing its contents", self.path, e)
        remove_tree(self.path)


def copy_bounded(src: Path, dst: Path, max_bytes: int) -> bool:
    """Copy a regular file without following links at either end; False (and no dst) when larger than max_bytes."""
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        if os.path.lexists(dst):
            os.unlink(dst)
        out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        total = 0
        try:
            while chunk := os.read(fd, COPY_CHUNK):
                total += len(chunk)
                if total > max_bytes:
                    break
                os.write(out, chunk)
        finally:
            os.close(out)
        if total > max_bytes:
            os.unlink(dst)
            return False
        return True
    finally:
        os.close(fd)


def remove_tree(path: Path, *, max_entries: int = MAX_ENTRIES, max_depth: int = MAX_OPEN_DEPTH) -> None:
    """Remove a directory tree written by a job: iterative (no recursion), links never followed, at most
    `max_depth` directories open at once (deeper ones are moved up to the top level first) and at most
    `max_entries` entries in all. Raises ReclaimError past the caps or on an error."""
    path = Path(path)
    if not os.path.lexists(path):
        return
    if not path.is_dir() or path.is_symlink():
        os.unlink(path)
        return
    seen = 0
    top = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    stack: list[tuple[int, str]] = [(top, "")]
    try:
        while stack:
            fd, _ = stack[-1]
            child: tuple[int, str] | None = None
            with os.scandir(fd) as it:
                for entry in it:
                    seen += 1
                    if seen > max_entries:
                        raise ReclaimError(f"more than {max_entries} entries under {path}")
                    if entry.is_dir(follow_symlinks=False):
                        if len(stack) >= max_depth:  # flatten: move this subtree up to the top level
                            moved = f".flat-{uuid.uuid4().hex[:16]}"
                            os.rename(entry.name, moved, src_dir_fd=fd, dst_dir_fd=top)
                            continue
                        cfd = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                        child = (cfd, entry.name)
                        break
                    os.unlink(entry.name, dir_fd=fd)
            if child is not None:
                stack.append(child)
                continue
            fd, name = stack.pop()
            os.close(fd)
            if stack:
                os.rmdir(name, dir_fd=stack[-1][0])
    except OSError as e:
        for fd, _ in stack:
            os.close(fd)
        if isinstance(e, ReclaimError):
            raise
        raise ReclaimError(f"cannot remove {path}: {e}") from e
    os.rmdir(path)


def reap_orphan_stages(owners: frozenset[int] = frozenset()) -> list[str]:
    """Unmount and remove stage tmpfs mounts whose owner process is gone (a crashed parent's), or is in `owners`
    (a process stopping at once, after killing its jobs: `nncaption run`'s second Ctrl-C)."""
    removed: list[str] = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return removed
    for line in lines:
        parts = line.split()
        if len(parts) < 5:
            continue
        mnt = parts[4].replace("\\040", " ")
        m = _STAGE_RE.match(os.path.basename(mnt))
        if not m or (int(m.group(1)) not in owners and pid_alive(int(m.group(1)))):
            continue
        try:
            Stage(Path(mnt), 1).remove()
            removed.append(mnt)
        except (OSError, subprocess.SubprocessError) as e:
            log.warning("could not remove the orphan job stage %s: %s", mnt, e)
    return removed
