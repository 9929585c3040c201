"""Content-addressed job directories: the same candidate, spec and dataset always land in the same place.

    jobs_root/<id>/           parent-owned: never mounted into a sandbox
        lock                  held (fcntl) while the job runs, so identical jobs run once
        report.json           the EvalReport (training jobs), strict JSON, written last
        check.json            the CheckResult (smoke jobs)
        job/                  the sandbox's job directory (candidate.py, job.json, what the job wrote)

`<id>` is `job_key(code, spec, dataset_key)`: a hash of the candidate source,
the normalised job spec and the prepared dataset's key. The records sit beside
the sandbox's directory, not in it, so a candidate cannot plant a report that a
later identical job would reuse. Records are read back with bounded, no-follow
reads and strict schemas.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import stat
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict
from enum import Enum
from pathlib import Path
from typing import Any

from nncaption.netapi.job import JobSpec
from nncaption.netapi.safetext import strict_dumps

log = logging.getLogger(__name__)

KEY_FORMAT = 2  # 2: time limits count compute (netapi.compute); records of wall-clock limits are not reused
RUN_SUBDIR = "job"
REPORT_FILE = "report.json"
CHECK_FILE = "check.json"
LOCK_FILE = "lock"
TRASH_DIR = ".trash"
REFERENCE_DIR = "references"  # best BLEU-4 the reference models reached, per dataset key
MAX_RECORD_BYTES = 4 << 20
# Spec fields that do not change what a job computes (where its files are, how many threads it may use).
UNKEYED_SPEC_FIELDS: frozenset[str] = frozenset({"data_dir", "candidate", "threads"})
REMOVE_MAX_ENTRIES = 200_000


def normalised_spec(spec: JobSpec | dict[str, Any]) -> dict[str, Any]:
    """The fields of `spec` that define the job, JSON-normalised (ints that are whole floats stay as given)."""
    d = asdict(spec) if isinstance(spec, JobSpec) else dict(spec)
    return {k: (v.value if isinstance(v, Enum) else v) for k, v in sorted(d.items()) if k not in UNKEYED_SPEC_FIELDS}


def job_key(code: str, spec: JobSpec | dict[str, Any], dataset_key: str) -> str:
    """Content address of a job: sha256 of the code, the normalised spec and the dataset version (32 hex chars)."""
    payload = json.dumps({"format": KEY_FORMAT, "code": code, "spec": normalised_spec(spec), "dataset": dataset_key},
                         sort_keys=True, separators=(",", ":"), allow_nan=False, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


class JobStore:
    """The folder of content-addressed jobs."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._locks: dict[str, asyncio.Lock] = {}

    def job_dir(self, job_id: str) -> Path:
        if not (len(job_id) == 32 and all(c in "0123456789abcdef" for c in job_id)):
            raise ValueError(f"not a job id: {job_id!r}")
        return self.root / job_id

    def run_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / RUN_SUBDIR

    @contextlib.asynccontextmanager
    async def lock(self, job_id: str) -> AsyncIterator[None]:
        """Hold the job's lock: one task in this process (asyncio) and one process on this host (fcntl)."""
        local = self._locks.setdefault(job_id, asyncio.Lock())
        async with local:
            folder = self.job_dir(job_id)
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                while True:  # non-blocking attempts: cancelling the waiting task leaves no thread holding the fd
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except OSError as e:
                        if e.errno not in (errno.EAGAIN, errno.EACCES):
                            raise
                        await asyncio.sleep(0.2)
                yield
            finally:
                os.close(fd)

    def read_record(self, job_id: str, name: str) -> dict[str, Any] | None:
        """A record (report.json / check.json) of the job: a regular file, no symlink, bounded; None if absent/bad."""
        return self.read_record_at(self.job_dir(job_id) / name)

    def write_record(self, job_id: str, name: str, obj: dict[str, Any]) -> Path:
        """Write a record of the job as strict JSON, atomically."""
        return self.write_record_at(self.job_dir(job_id) / name, obj)

    @staticmethod
    def read_record_at(path: Path) -> dict[str, Any] | None:
        """A JSON object from a regular file (no symlink), at most MAX_RECORD_BYTES; None when absent or bad."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as e:
            log.warning("cannot open %s (%s): the job runs again", path, e)
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                log.warning("%s is not a regular file: the job runs again", path)
                return None
            with os.fdopen(os.dup(fd), "rb") as f:
                data = f.read(MAX_RECORD_BYTES + 1)
        finally:
            os.close(fd)
        if len(data) > MAX_RECORD_BYTES:
            log.warning("%s is larger than %d bytes: the job runs again", path, MAX_RECORD_BYTES)
            return None
        try:
            obj = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            log.warning("%s is not JSON (%s): the job runs again", path, e)
            return None
        return obj if isinstance(obj, dict) else None

    @staticmethod
    def write_record_at(path: Path, obj: dict[str, Any]) -> Path:
        """Write a JSON object as strict JSON, atomically (temp file, fsync, rename)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(strict_dumps(obj, indent=1, sort_keys=True))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path

    def fresh_run_dir(self, job_id: str) -> Path:
        """The job's sandbox directory, emptied: what an earlier attempt left is moved aside and removed."""
        run = self.run_dir(job_id)
        if run.exists() or run.is_symlink():
            trash = self.root / TRASH_DIR
            trash.mkdir(parents=True, exist_ok=True)
            aside = trash / f"{job_id}-{uuid.uuid4().hex[:8]}"
            os.rename(run, aside)
            remove_tree(aside)
        run.mkdir(parents=True)
        return run


def safe_name(text: str) -> str:
    """`text` reduced to a file-name-safe slug (letters, digits, '-', '_', '.'), at most 80 characters."""
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in text)[:80].strip(".")
    return slug or "unnamed"


def remove_tree(path: Path, *, max_entries: int = REMOVE_MAX_ENTRIES) -> bool:
    """Remove `path` without recursion (a job may leave a chain of thousands of folders) and without following links.

    Returns False (and logs) when it could not remove everything, e.g. past `max_entries`.
    """
    path = Path(path)
    try:
        if path.is_symlink() or not path.is_dir():
            path.unlink(missing_ok=True)
            return True
    except OSError as e:
        log.warning("cannot remove %s: %s", path, e)
        return False
    stack: list[tuple[Path, bool]] = [(path, False)]
    seen = 0
    ok = True
    while stack:
        folder, expanded = stack.pop()
        if expanded:
            try:
                folder.rmdir()
            except OSError as e:
                log.warning("cannot remove %s: %s", folder, e)
                ok = False
            continue
        stack.append((folder, True))
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    seen += 1
                    if seen > max_entries:
                        log.warning("%s holds more than %d entries: left in place", path, max_entries)
                        return False
                    if entry.is_dir(follow_symlinks=False):
                        with contextlib.suppress(OSError):
                            os.chmod(entry.path, 0o700, follow_symlinks=False)
                        stack.append((Path(entry.path), False))
                    else:
                        try:
                            os.unlink(entry.path)
                        except OSError as e:
                            log.warning("cannot remove %s: %s", entry.path, e)
                            ok = False
        except OSError as e:
            log.warning("cannot list %s: %s", folder, e)
            ok = False
    return ok
