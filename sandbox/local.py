"""The local backend: one isolated subprocess per job, no extra services (the run skeleton is BaseSandbox).

Layers, each applied when this host allows it (the result lists what applied):
- own session/process group, wall-clock timeout that kills the group, the
  cgroup and (with a pid namespace) everything the candidate spawned;
- cgroup memory and pids limits (v2 or v1), else RLIMIT_AS; RLIMIT_CPU,
  RLIMIT_FSIZE, no core dumps; the job's CPU share pinned with taskset;
- bubblewrap: a minimal read-only file-system view, a sized private /tmp, data
  read-only, new network/pid/ipc/uts namespaces, a seccomp filter (keyring,
  user namespaces, mount, ptrace, bpf, ... refused: sandbox/seccomp.py); else
  `unshare` for the namespaces alone;
- as root: dropped to uid/gid 65534 with no capabilities and no_new_privs;
- the job directory is a per-job sized tmpfs stage (sandbox/quota.py);
- an environment built from an allow-list (no API keys, no NNCAPTION_*);
- stdout/stderr drained into bounded tails (a flood fills neither memory nor disk).

Warm processes (the default) import torch ahead of time inside the same sandbox
and wait for "go" (sandbox/warm.py); each serves exactly one job.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nncaption.netapi import compute
from nncaption.netapi.compute import Usage
from nncaption.netapi.errors import ConfigError

from . import cgroups, cpus, hostenv, ownership, seccomp
from .base import Job
from .bwrap import Bind, bwrap_argv, setpriv_argv, unshare_argv
from .outcome import Observed
from .quota import Stage
from .skeleton import STDERR_FILE, STDOUT_FILE, BaseSandbox, cpu_limit_s
from .streams import PipeDrainer, start_drainers

log = logging.getLogger(__name__)

ISOLATION_MODES = ("auto", "bwrap", "unshare", "none")
CGROUP_JOIN_FAILED = 125
MIN_ADDRESS_SPACE_MB = 4096  # RLIMIT_AS floor (fallback without cgroups)
__all__ = ["LocalSandbox", "STDERR_FILE", "STDOUT_FILE", "cpu_limit_s", "ISOLATION_MODES"]


@dataclass
class LaunchPlan:
    """The full command of one job and the measures it applies."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    wrapped: bool  # a wrapper (bwrap / unshare shell) reports a child's signal death as 128+N
    isolation: list[str] = field(default_factory=list)
    cgroup: cgroups.JobCgroup | None = None
    output_tail_bytes: int = 16_384
    seccomp_fd: int | None = None  # passed to bwrap (--seccomp FD), closed once started


@dataclass
class Launched:
    """A started job process and the drainers of its output."""

    plan: LaunchPlan
    proc: subprocess.Popen[bytes]
    out: PipeDrainer
    err: PipeDrainer
    status: int | None = None  # wait status once reaped
    rusage: Any = None
    disposed: bool = False


def _probe(argv: list[str]) -> bool:
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.debug("isolation probe %s failed: %s", argv[0], e)
        return False
    return r.returncode == 0


def _kill(pid: int, cg: cgroups.JobCgroup | None) -> None:
    """SIGKILL the job's process group (bwrap dies, its pid namespace with it) and its cgroup."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # already gone
    except PermissionError as e:
        log.warning("cannot kill process group %s: %s", pid, e)
    if cg is not None and not cg.kill_all():
        log.error("processes of cgroup %s survived SIGKILL", cg.memory_dir)


def _dispose(launched: Launched) -> None:
    if launched.disposed:
        return
    launched.disposed = True
    _kill(launched.proc.pid, launched.plan.cgroup)
    if launched.status is None:
        try:
            _, launched.status, launched.rusage = os.wait4(launched.proc.pid, 0)
        except ChildProcessError:
            log.debug("job process %s already reaped", launched.proc.pid)
    launched.proc.returncode = -9 if launched.status is None else os.waitstatus_to_exitcode(launched.status)
    launched.out.close()
    launched.err.close()
    if launched.proc.stdin is not None:
        try:
            launched.proc.stdin.close()
        except OSError as e:
            log.debug("closing a job's stdin: %s", e)
    if launched.plan.cgroup is not None:
        launched.plan.cgroup.remove()


class LocalSandbox(BaseSandbox[Launched]):
    """Runs `python -m <job.entry> JOB_DIR` in an isolated subprocess on this machine."""

    name = "local"

    def __init__(
        self,
        *,
        isolation: str = "auto",
        drop_privileges: bool = True,
        use_cgroups: bool = True,
        use_seccomp: bool = True,
        extra_env: dict[str, str] | None = None,
        python: str | None = None,
        **base: Any,
    ) -> None:
        if isolation not in ISOLATION_MODES:
            raise ConfigError(f"unknown local isolation {isolation!r}", f"use one of {', '.join(ISOLATION_MODES)}.")
        super().__init__(**base)
        self.isolation = isolation
        self.drop_privileges = drop_privileges
        self.use_cgroups = use_cgroups
        self.use_seccomp = use_seccomp and seccomp.supported()
        self.extra_env = dict(extra_env or {})
        self.python = python or hostenv.python_executable()
        self._mode: str | None = None
        self.owner_pid = os.getpid()

    # -- host capabilities ----------------------------------------------------------------------
    @property
    def is_root(self) -> bool:
        return os.geteuid() == 0

    def mode(self) -> str:
        """The namespace tool this host supports: "bwrap", "unshare" or "none" (probed once)."""
        if self._mode is None:
            self._mode = self._detect_mode()
        return self._mode

    def _detect_mode(self) -> str:
        wanted = ["bwrap", "unshare"] if self.isolation == "auto" else [self.isolation]
        for mode in wanted:
            if mode == "none":
                return "none"
            if mode == "bwrap" and shutil.which("bwrap"):
                argv = ["bwrap", "--ro-bind", "/", "/", "--unshare-net", "--unshare-pid", "--dev", "/dev"]
                if not self.is_root:
                    argv.append("--unshare-user")
                if _probe(argv + ["--", "true"]):
                    return "bwrap"
            if mode == "unshare" and shutil.which("unshare"):
                if _probe(unshare_argv(as_root=self.is_root) + ["true"]):
                    return "unshare"
        if self.isolation == "auto":
            log.warning("no namespace tool works on this host: the local sandbox runs without namespaces")
            return "none"
        raise ConfigError(
            f"the local isolation {self.isolation!r} does not work on this host",
            "install bubblewrap (apt-get install bubblewrap) or use --sandbox docker; "
            "isolation='auto' falls back to what is available.",
        )

    # -- one job -------------------------------------------------------------------------------
    def plan(self, job: Job, job_dir: Path, data_dir: Path, cgroup_name: str, *, warm: bool = False,
             cores: list[int] | None = None) -> LaunchPlan:
        """Decide every measure and build the command line (creates the job's cgroup).

        `warm`: the command waits for "go" on stdin before running the entry.
        """
        mode = self.mode()
        limits = job.limits
        isolation: list[str] = ["session", "wall-timeout", "env-allowlist", "rlimit-core"]
        python = self.python
        if warm:
            inner = [python, "-I", "-u", "-B", "-m", "nncaption.sandbox.warm", job.entry, str(job_dir)]
        else:
            inner = [python, "-I", "-u", "-B", "-m", job.entry, str(job_dir)]

        drop = self.is_root and self.drop_privileges
        if drop and mode != "bwrap":
            # without a private file-system view the interpreter and the job's stage must be reachable by "nobody"
            if not all(hostenv.readable_by_others(p) for p in [Path(python), *hostenv.python_paths()]) \
                    or not hostenv.traversable_by_others(job_dir):
                drop = False
        home = job_dir / "home"
        home.mkdir(exist_ok=True)
        if mode != "bwrap":
            (job_dir / "tmp").mkdir(exist_ok=True)
        if drop:
            ownership.give_to(job_dir)
            if ownership.make_world_readable(data_dir):
                isolation.append("data-made-world-readable")
            inner = setpriv_argv(ownership.NOBODY, ownership.NOBODY) + inner
            isolation += [f"uid:{ownership.NOBODY}", "caps-dropped", "no-new-privs"]
        elif self.is_root:
            isolation.append("uid:root")

        wrapped = False
        seccomp_fd: int | None = None
        if mode == "bwrap":
            binds = [Bind(p) for p in hostenv.python_paths()]
            binds += [Bind(job_dir, writable=True), Bind(data_dir)]
            if self.use_seccomp:
                seccomp_fd = seccomp.filter_fd()
            argv = bwrap_argv(binds, chdir=job_dir, as_root=self.is_root, gpus=bool(job.gpus),
                              tmp_mb=limits.tmp_mb, seccomp_fd=seccomp_fd) + inner
            wrapped = True
            isolation += ["netns:bwrap", "pidns", "ipcns", "fs-view:minimal", f"private-tmp:{limits.tmp_mb}m",
                          "data-ro:bind"]
            if seccomp_fd is not None:
                isolation.append("seccomp")
        elif mode == "unshare":
            argv = unshare_argv(as_root=self.is_root) + inner
            wrapped = True
            isolation += ["netns:unshare", "pidns"]
            if drop:
                isolation.append("data-ro:permissions")
        else:
            argv = inner
            if drop:
                isolation.append("data-ro:permissions")

        cg = None
        if self.use_cgroups:
            cg = cgroups.JobCgroup.create(cgroup_name, memory_mb=limits.memory_mb, max_pids=limits.max_pids,
                                          cpus=len(cores) if cores else None)
        cpu = cpu_limit_s(limits, len(cores) if cores else None)
        prl = ["prlimit", f"--cpu={int(cpu)}:{int(cpu) + 5}", f"--fsize={limits.file_size_mb * 2**20}", "--core=0"]
        isolation += ["rlimit-cpu", "rlimit-fsize"]
        if cg is None:
            if job.gpus:  # CUDA reserves far more address space than memory: RLIMIT_AS would break it
                isolation.append("no-memory-limit")
            else:  # importing the CUDA build of torch alone needs about 4 GiB of address space
                prl.append(f"--as={max(limits.memory_mb, MIN_ADDRESS_SPACE_MB) * 2**20}")
                isolation.append("rlimit-as")
            if drop:
                prl.append(f"--nproc={limits.max_pids}")
                isolation.append("rlimit-nproc")
        else:
            isolation += cg.applied
        pin = cpus.taskset_argv(cores) if cores else []
        argv = pin + prl + ["--"] + argv
        if cg is not None:
            join = 'p=$$; while [ "$1" != -- ]; do echo "$p" > "$1" || exit %d; shift; done; shift; exec "$@"'
            argv = ["/bin/sh", "-c", join % CGROUP_JOIN_FAILED, "sh", *map(str, cg.procs_files), "--", *argv]

        env = hostenv.job_environment(
            home=str(home),
            tmpdir="/tmp" if mode == "bwrap" else str(job_dir / "tmp"),
            gpus=list(job.gpus),
            threads=job.spec.threads,
            extra=self.extra_env,
        )
        isolation.append("private-home")
        if job.gpus:
            isolation.append("gpus:" + ",".join(map(str, job.gpus)))
        return LaunchPlan(argv=argv, env=env, cwd=job_dir, wrapped=wrapped, isolation=isolation, cgroup=cg,
                          output_tail_bytes=limits.output_tail_bytes, seccomp_fd=seccomp_fd)

    def _prepare_stage(self, stage: Stage) -> None:
        if self.is_root and self.drop_privileges:
            ownership.give_to(stage.path)

    def _start(self, job: Job, stage: Stage, data_dir: Path, *, warm: bool, cores: list[int] | None) -> Launched:
        name = f"{cgroups.PREFIX}{self.owner_pid}-{uuid.uuid4().hex[:12]}"
        plan = self.plan(job, stage.path, data_dir, name, warm=warm, cores=cores)
        try:
            proc = subprocess.Popen(
                plan.argv,
                cwd=plan.cwd,
                env=plan.env,
                stdin=subprocess.PIPE if warm else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                close_fds=True,
                pass_fds=(plan.seccomp_fd,) if plan.seccomp_fd is not None else (),
            )
        except OSError:
            if plan.cgroup is not None:
                plan.cgroup.remove()
            raise
        finally:
            if plan.seccomp_fd is not None:
                os.close(plan.seccomp_fd)
        out, err = start_drainers(proc.stdout, proc.stderr, plan.output_tail_bytes)  # type: ignore[arg-type]
        return Launched(plan, proc, out, err)

    def _go(self, handle: Launched, job: Job, stage: Stage, cores: list[int] | None) -> bool:
        proc = handle.proc
        if self._exited(handle) or proc.stdin is None:
            return False
        if cores:
            pids = handle.plan.cgroup.pids() if handle.plan.cgroup is not None else [proc.pid]
            cpus.pin(pids, cores)
            handle.plan.isolation.append("taskset")
        try:
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
            proc.stdin.close()
            return True
        except OSError as e:
            log.info("a warm job process could not be told to go (%s); starting cold", e)
            return False

    def _exited(self, handle: Launched) -> bool:
        if handle.status is not None:
            return True
        try:
            pid, status, rusage = os.wait4(handle.proc.pid, os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere (e.g. Popen.poll): trust the code it recorded
            log.warning("job process %s was reaped outside the sandbox", handle.proc.pid)
            rc = handle.proc.returncode if handle.proc.returncode is not None else -9
            handle.status = (-rc & 0x7F) if rc < 0 else (rc & 0xFF) << 8
            return True
        if pid == handle.proc.pid:
            handle.status, handle.rusage = status, rusage
            return True
        return False

    def _kill(self, handle: Launched) -> None:
        _kill(handle.proc.pid, handle.plan.cgroup)

    def _usage(self, handle: Launched) -> Usage | None:
        """CPU time and run-queue delay of the job's process tree (and whatever joined its cgroup)."""
        if handle.status is not None:
            return None
        pids = set(compute.tree_pids([handle.proc.pid]))
        if handle.plan.cgroup is not None:
            pids.update(handle.plan.cgroup.pids())
        return compute.tree_usage(sorted(pids))

    @staticmethod
    def _dispose_static(handle: Any) -> None:
        _dispose(handle)

    def _dispose(self, handle: Launched) -> None:
        _dispose(handle)

    def _observe(self, handle: Launched, job: Job, *, timed_out: bool) -> Observed:
        plan, proc = handle.plan, handle.proc
        if handle.status is None:
            _, handle.status, handle.rusage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(handle.status)
        _kill(proc.pid, plan.cgroup)  # whatever the candidate left behind (daemons, children) goes now
        notes: list[str] = []
        if not (handle.out.join(5.0) and handle.err.join(5.0)):
            notes.append("A process spawned by the job kept its output pipes open after it ended.")
        rc = proc.returncode
        sig: int | None = None
        exit_code: int | None = rc
        if rc < 0:
            sig, exit_code = -rc, None
        elif plan.wrapped and 128 < rc < 128 + 65:
            sig, exit_code = rc - 128, None
        if rc == CGROUP_JOIN_FAILED and plan.cgroup is not None:
            notes.append("The job may not have joined its cgroup.")
        peak = plan.cgroup.peak_memory_bytes() if plan.cgroup else None
        if peak is None and handle.rusage is not None:
            peak = int(handle.rusage.ru_maxrss) * 1024
        oom = bool(plan.cgroup and plan.cgroup.oom_kills() > 0)
        return Observed(
            exit_code=exit_code,
            signal=sig,
            timed_out=timed_out,
            oom_killed=oom,
            peak_memory_bytes=peak,
            # with a cgroup its OOM counter is authoritative: no "killed near the limit" guess (cgroup v1 peaks count
            # page cache, e.g. of the torch libraries, and sit near the limit without any shortage of memory)
            memory_limit_bytes=None if plan.cgroup is not None else job.limits.memory_mb * 2**20,
            stdout_tail=handle.out.tail.text(),
            stderr_tail=handle.err.tail.text(),
            isolation=list(plan.isolation),
            notes=notes,
        )

    def warm_pids(self) -> set[int]:
        """Host pids of the pre-started processes (their process, its descendants, everything in their cgroup)."""
        pids: set[int] = set()
        with self._lock:
            slots = [s for ss in self._warm.values() for s in ss]
        pids.update(hostenv.process_tree(*(slot.handle.proc.pid for slot in slots)))
        for slot in slots:
            if slot.handle.plan.cgroup is not None:
                pids.update(slot.handle.plan.cgroup.pids())
        return pids
