"""Per-job control groups: memory and process-count limits, peak memory, OOM count, kill-all.

Works with cgroup v2 (a leaf under the current cgroup, when `memory` and `pids`
are delegated to it) and with cgroup v1 (one leaf in the `memory` hierarchy and
one in the `pids` hierarchy, as on hybrid hosts). When neither is writable,
`JobCgroup.create` returns None and the caller falls back to rlimits.

Leaves are named `nncaption-<owner pid>-<job id>` so that the leftovers of a
crashed parent can be found and removed on the next start (`reap_orphans`).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from nncaption.netapi.procs import pid_alive

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
PREFIX = "nncaption-"
_NAME_RE = re.compile(rf"^{PREFIX}(\d+)-")


def _own_paths(proc_cgroup: str) -> dict[str, str]:
    """Map controller name ("" for the v2 unified hierarchy) -> this process's cgroup path."""
    out: dict[str, str] = {}
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            out[""] = path
        for c in controllers.split(","):
            if c:
                out[c] = path
    return out


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _read_int(path: Path) -> int | None:
    text = _read(path)
    try:
        return int(text.strip()) if text is not None else None
    except ValueError:
        return None


def _keyed(text: str | None, key: str) -> int | None:
    """Value of `key N` in a flat-keyed file such as memory.events or memory.oom_control."""
    for line in (text or "").splitlines():
        k, _, v = line.partition(" ")
        if k == key:
            try:
                return int(v)
            except ValueError:
                return None
    return None


def _unified_root() -> Path | None:
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return CGROUP_ROOT
    if (CGROUP_ROOT / "unified" / "cgroup.controllers").exists():
        return CGROUP_ROOT / "unified"
    return None


@dataclass
class JobCgroup:
    """The cgroup leaf (v2) or leaves (v1: memory, pids) of one job."""

    version: int
    dirs: list[Path]  # every leaf; processes must join each of them
    memory_dir: Path
    pids_dir: Path
    memory_limit_bytes: int
    applied: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, name: str, *, memory_mb: int, max_pids: int, cpus: int | None = None) -> JobCgroup | None:
        """Create and configure the job's leaves; None when this host does not allow it."""
        own = _own_paths(_read(Path("/proc/self/cgroup")) or "")
        limit = int(memory_mb) * 1024 * 1024
        for make in (cls._create_v2, cls._create_v1):
            try:
                cg = make(own, name, limit, max_pids)
            except OSError:
                cg = None
            if cg is not None:
                if cpus:
                    cg.limit_cpu(cpus)
                return cg
        return None

    def limit_cpu(self, cpus: int, period_us: int = 100_000) -> bool:
        """A CPU quota of `cpus` cores (cgroup v2 cpu.max) where the cpu controller is delegated; True if applied."""
        if self.version != 2:
            return False  # v1: the cpu hierarchy is a separate tree, rarely writable in containers; affinity pins
        leaf = self.memory_dir
        try:
            parent_control = leaf.parent / "cgroup.subtree_control"
            if "cpu" not in (_read(parent_control) or "").split():
                parent_control.write_text("+cpu")
            (leaf / "cpu.max").write_text(f"{int(cpus) * period_us} {period_us}")
        except OSError as e:
            log.info("no cgroup CPU quota for %s (%s): the job is pinned to its cores only", leaf.name, e)
            return False
        self.applied.append(f"cgroup-v2-cpu-max:{cpus}")
        return True

    @classmethod
    def _create_v2(cls, own: dict[str, str], name: str, limit: int, max_pids: int) -> JobCgroup | None:
        root = _unified_root()
        if root is None or "" not in own:
            return None
        parent = root / own[""].lstrip("/")
        enabled = (_read(parent / "cgroup.subtree_control") or "").split()
        if not {"memory", "pids"} <= set(enabled):
            available = (_read(parent / "cgroup.controllers") or "").split()
            if not {"memory", "pids"} <= set(available):
                return None
            # Fails when the parent holds processes itself (no-internal-process rule): then give up.
            (parent / "cgroup.subtree_control").write_text("+memory +pids")
        leaf = parent / name
        leaf.mkdir()
        try:
            (leaf / "memory.max").write_text(str(limit))
            if (leaf / "memory.swap.max").exists():
                (leaf / "memory.swap.max").write_text("0")
            (leaf / "pids.max").write_text(str(max_pids))
        except OSError:
            _rmdir(leaf)
            raise
        return cls(2, [leaf], leaf, leaf, limit, ["cgroup-v2-memory", "cgroup-v2-pids"])

    @classmethod
    def _create_v1(cls, own: dict[str, str], name: str, limit: int, max_pids: int) -> JobCgroup | None:
        mem_root, pids_root = CGROUP_ROOT / "memory", CGROUP_ROOT / "pids"
        if not (mem_root / "memory.limit_in_bytes").exists() or not (pids_root / "cgroup.procs").exists():
            return None
        mem = mem_root / own.get("memory", "/").lstrip("/") / name
        pids = pids_root / own.get("pids", "/").lstrip("/") / name
        mem.mkdir()
        try:
            pids.mkdir()
        except OSError:
            _rmdir(mem)
            raise
        try:
            (mem / "memory.limit_in_bytes").write_text(str(limit))
            if (mem / "memory.memsw.limit_in_bytes").exists():  # no swapping past the limit
                try:
                    (mem / "memory.memsw.limit_in_bytes").write_text(str(limit))
                except OSError as e:
                    log.info("no swap limit for the job cgroup (%s): swap accounting is off", e)
            (pids / "pids.max").write_text(str(max_pids))
        except OSError:
            _rmdir(mem)
            _rmdir(pids)
            raise
        return cls(1, [mem, pids], mem, pids, limit, ["cgroup-v1-memory", "cgroup-v1-pids"])

    # -- use -------------------------------------------------------------------------------------
    @property
    def procs_files(self) -> list[Path]:
        return [d / "cgroup.procs" for d in self.dirs]

    def pids(self) -> list[int]:
        out: set[int] = set()
        for f in self.procs_files:
            for tok in (_read(f) or "").split():
                if tok.isdigit():
                    out.add(int(tok))
        return sorted(out)

    def peak_memory_bytes(self) -> int | None:
        if self.version == 2:
            return _read_int(self.memory_dir / "memory.peak")
        return _read_int(self.memory_dir / "memory.max_usage_in_bytes")

    def oom_kills(self) -> int:
        if self.version == 2:
            return _keyed(_read(self.memory_dir / "memory.events"), "oom_kill") or 0
        n = _keyed(_read(self.memory_dir / "memory.oom_control"), "oom_kill")
        return n or 0

    def kill_all(self, timeout_s: float = 5.0) -> bool:
        """SIGKILL every process in the job's cgroups until they are empty; True when empty."""
        kill_file = self.memory_dir / "cgroup.kill"
        if self.version == 2 and kill_file.exists():
            try:
                kill_file.write_text("1")
            except OSError as e:
                log.debug("cgroup.kill failed (%s); killing pid by pid", e)
        deadline = time.monotonic() + timeout_s
        while True:
            pids = self.pids()
            if not pids:
                return True
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue  # exited meanwhile
                except PermissionError as e:
                    log.warning("cannot kill pid %s of a job cgroup: %s", pid, e)
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)

    def remove(self) -> None:
        """Kill what is left and remove the leaves (best effort: a stuck leaf is reaped later)."""
        self.kill_all(timeout_s=2.0)
        for d in self.dirs:
            for _ in range(50):
                if _rmdir(d):
                    break
                time.sleep(0.02)


def _rmdir(path: Path) -> bool:
    try:
        path.rmdir()
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return False



def reap_orphans() -> list[Path]:
    """Remove job cgroups whose owner process is gone, killing whatever still runs in them."""
    own = _own_paths(_read(Path("/proc/self/cgroup")) or "")
    parents: list[Path] = []
    root = _unified_root()
    if root is not None and "" in own:
        parents.append(root / own[""].lstrip("/"))
    for ctl in ("memory", "pids"):
        parents.append(CGROUP_ROOT / ctl / own.get(ctl, "/").lstrip("/"))
    reaped: list[Path] = []
    for parent in parents:
        try:
            children = list(parent.iterdir())
        except OSError:
            continue
        for d in children:
            m = _NAME_RE.match(d.name)
            if not m or not d.is_dir() or pid_alive(int(m.group(1))):
                continue
            for tok in (_read(d / "cgroup.procs") or "").split():
                try:
                    os.kill(int(tok), signal.SIGKILL)
                except (ValueError, OSError) as e:
                    log.debug("orphan cgroup %s: kill %s: %s", d, tok, e)
            for _ in range(50):
                if _rmdir(d):
                    reaped.append(d)
                    break
                time.sleep(0.02)
    return reaped
