"""The local backend: one isolated subprocess per job, no extra services.

Layers, each applied when this host allows it (the result lists what applied):
- own session/process group, wall-clock timeout that kills the group, the
  cgroup and (with a pid namespace) everything the candidate spawned;
- cgroup memory and pids limits (v2 or v1), else RLIMIT_AS; RLIMIT_CPU,
  RLIMIT_FSIZE, no core dumps;
- bubblewrap: a minimal read-only file-system view, private /tmp, data
  read-only, new network/pid/ipc/uts namespaces; else `unshare` for the
  namespaces alone;
- as root: dropped to uid/gid 65534 with no capabilities and no_new_privs;
- an environment built from an allow-list (no API keys, no NNCAPTION_*);
- stdout/stderr drained into bounded tails (a flood fills neither memory nor disk).

`prewarm=True` (opt-in): after each job, the next job's process is started in
a fresh sandbox of its own with the same settings and imports torch while the
caller handles the results; the next job's files are moved into its stage
directory and it is told "go" (see sandbox/warm.py). Each pre-started process
serves one job only. One instance runs one job at a time.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nncaption.netapi.errors import ConfigError
from nncaption.netapi.job import JOB_FILE, PREDICTIONS_FILE, PROGRESS_FILE, RESULT_FILE

from . import cgroups, hostenv, ownership
from .base import VERDICT_FILE, EventCallback, Job, Limits, RunResult
from .bwrap import Bind, bwrap_argv, setpriv_argv, unshare_argv
from .outcome import Observed, interpret
from .streams import PipeDrainer, ProgressTail, start_drainers

ISOLATION_MODES = ("auto", "bwrap", "unshare", "none")
STALE_OUTPUTS = (RESULT_FILE, PREDICTIONS_FILE, PROGRESS_FILE, VERDICT_FILE)
STDOUT_FILE = "sandbox-stdout.txt"
STDERR_FILE = "sandbox-stderr.txt"
CGROUP_JOIN_FAILED = 125
MIN_ADDRESS_SPACE_MB = 4096  # RLIMIT_AS floor (fallback without cgroups)


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


@dataclass
class Launched:
    """A started job process and the drainers of its output."""

    plan: LaunchPlan
    proc: subprocess.Popen  # type: ignore[type-arg]
    out: PipeDrainer
    err: PipeDrainer


@dataclass
class WarmSlot:
    """A pre-started sandboxed process waiting for "go" (prewarm); `stage` is the job dir it was started for."""

    stage: Path
    launched: Launched


def _send_go(proc: subprocess.Popen) -> bool:  # type: ignore[type-arg]
    if proc.poll() is not None or proc.stdin is None:
        return False
    try:
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        proc.stdin.close()
        return True
    except OSError:
        return False


def _discard(launched: Launched, stage: Path) -> None:
    LocalSandbox._kill(launched.proc.pid, launched.plan.cgroup)
    try:
        launched.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    launched.out.close()
    launched.err.close()
    if launched.plan.cgroup is not None:
        launched.plan.cgroup.remove()
    shutil.rmtree(stage, ignore_errors=True)


def _close_slots(slots: dict[Any, WarmSlot]) -> None:
    while slots:
        _, slot = slots.popitem()
        _discard(slot.launched, slot.stage)


def cpu_limit_s(limits: Limits) -> float:
    """RLIMIT_CPU of a job: explicit, else the wall-clock limit times the cores (at least a minute)."""
    return limits.cpu_time_s or max(60.0, limits.timeout_s * max(1, os.cpu_count() or 1))


def _probe(argv: list[str]) -> bool:
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


class LocalSandbox:
    """Runs `python -m <job.entry> JOB_DIR` in an isolated subprocess on this machine."""

    name = "local"

    def __init__(
        self,
        *,
        isolation: str = "auto",
        drop_privileges: bool = True,
        use_cgroups: bool = True,
        extra_env: dict[str, str] | None = None,
        poll_interval_s: float = 0.05,
        python: str | None = None,
        prewarm: bool = False,
    ) -> None:
        if isolation not in ISOLATION_MODES:
            raise ConfigError(
                f"unknown local isolation {isolation!r}", f"use one of {', '.join(ISOLATION_MODES)}."
            )
        self.isolation = isolation
        self.drop_privileges = drop_privileges
        self.use_cgroups = use_cgroups
        self.extra_env = dict(extra_env or {})
        self.poll_interval_s = poll_interval_s
        self.python = python or hostenv.python_executable()
        self._mode: str | None = None
        self.owner_pid = os.getpid()
        # prewarm: after each job, start the next job's sandboxed process (torch imported) ahead of time
        self.prewarm = prewarm
        self._warm: dict[Any, WarmSlot] = {}
        weakref.finalize(self, _close_slots, self._warm)

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
            return "none"
        raise ConfigError(
            f"the local isolation {self.isolation!r} does not work on this host",
            "install bubblewrap (apt-get install bubblewrap) or use --sandbox docker; "
            "isolation='auto' falls back to what is available.",
        )

    # -- one job -------------------------------------------------------------------------------
    def plan(self, job: Job, job_dir: Path, data_dir: Path, cgroup_name: str, *, warm: bool = False) -> LaunchPlan:
        """Decide every measure and build the command line (creates the job's cgroup).

        `warm`: the command waits for "go" on stdin before running the entry (prewarm).
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
            # without a private file-system view the interpreter must be reachable by "nobody"
            if not all(hostenv.readable_by_others(p) for p in [Path(python), *hostenv.python_paths()]):
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
        if mode == "bwrap":
            binds = [Bind(p) for p in hostenv.python_paths()]
            binds += [Bind(job_dir, writable=True), Bind(data_dir)]
            argv = bwrap_argv(binds, chdir=job_dir, as_root=self.is_root, gpus=bool(job.gpus)) + inner
            wrapped = True
            isolation += ["netns:bwrap", "pidns", "ipcns", "fs-view:minimal", "private-tmp", "data-ro:bind"]
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
            cg = cgroups.JobCgroup.create(cgroup_name, memory_mb=limits.memory_mb, max_pids=limits.max_pids)
        cpu = cpu_limit_s(limits)
        prl = [
            "prlimit",
            f"--cpu={int(cpu)}:{int(cpu) + 5}",
            f"--fsize={limits.file_size_mb * 2**20}",
            "--core=0",
        ]
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
        argv = prl + ["--"] + argv
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
        return LaunchPlan(argv=argv, env=env, cwd=job_dir, wrapped=wrapped, isolation=isolation, cgroup=cg,
                          output_tail_bytes=limits.output_tail_bytes)

    def run(self, job: Job, on_event: EventCallback | None = None) -> RunResult:
        job_dir = Path(job.job_dir).resolve()
        data_dir = Path(job.data_dir).resolve()
        if not (job_dir / JOB_FILE).is_file():
            raise ConfigError(
                f"{job_dir} has no {JOB_FILE}", "create the job directory with nncaption.netapi.evaluate.make_job_dir."
            )
        if not data_dir.is_dir():
            raise ConfigError(f"data directory {data_dir} does not exist", "prepare the dataset first (nncaption data prepare).")
        for name in STALE_OUTPUTS:
            (job_dir / name).unlink(missing_ok=True)
        cgroups.reap_orphans()
        slot = self._take_warm(job, data_dir) if self.prewarm else None
        work_dir = job_dir
        launched: Launched | None = None
        if slot is not None:
            ownership.move_entries(job_dir, slot.stage)
            if self.is_root and self.drop_privileges and f"uid:{ownership.NOBODY}" in slot.launched.plan.isolation:
                ownership.give_to(slot.stage)
            if _send_go(slot.launched.proc):
                launched, work_dir = slot.launched, slot.stage
                launched.plan.isolation.append("prewarmed")
            else:  # the warm process died before its job: give the files back, start cold
                ownership.move_entries(slot.stage, job_dir)
                _discard(slot.launched, slot.stage)
                slot = None
        if launched is None:
            plan = self.plan(job, job_dir, data_dir, self._cgroup_name())
            launched = self._launch(plan, warm=False)
        try:
            obs = self._supervise(job, launched, work_dir, on_event)
        finally:
            if launched.plan.cgroup is not None:
                launched.plan.cgroup.remove()
            if slot is not None:
                ownership.move_entries(slot.stage, job_dir)
                shutil.rmtree(slot.stage, ignore_errors=True)
        if ownership.reclaim(job_dir):
            obs.notes.append("Links or special files the job left in its directory were removed.")
        self._write_tail(job_dir / STDOUT_FILE, obs.stdout_tail)
        self._write_tail(job_dir / STDERR_FILE, obs.stderr_tail)
        if self.prewarm:
            self._spawn_warm(job, job_dir, data_dir)
        return interpret(job_dir, job.entry, obs, timeout_s=job.limits.timeout_s, backend=self.name)

    # -- processes ------------------------------------------------------------------------------
    def _cgroup_name(self) -> str:
        return f"{cgroups.PREFIX}{self.owner_pid}-{uuid.uuid4().hex[:12]}"

    def _launch(self, plan: LaunchPlan, *, warm: bool) -> Launched:
        proc = subprocess.Popen(
            plan.argv,
            cwd=plan.cwd,
            env=plan.env,
            stdin=subprocess.PIPE if warm else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
        )
        out, err = start_drainers(proc.stdout, proc.stderr, plan.output_tail_bytes)  # type: ignore[arg-type]
        return Launched(plan, proc, out, err)

    def _supervise(self, job: Job, launched: Launched, work_dir: Path, on_event: EventCallback | None) -> Observed:
        """Wait for the job (or its timeout), kill what is left, collect what was observed."""
        limits, plan, proc = job.limits, launched.plan, launched.proc
        out, err = launched.out, launched.err
        progress = ProgressTail(work_dir / PROGRESS_FILE)
        t0_wall, t0 = time.time(), time.monotonic()
        deadline = t0 + limits.timeout_s
        timed_out = False
        status, rusage = 0, None
        while True:
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            progress.drain(on_event)
            if time.monotonic() >= deadline:
                timed_out = True
                self._kill(proc.pid, plan.cgroup)
                _, status, rusage = os.wait4(proc.pid, 0)
                break
            time.sleep(self.poll_interval_s)
        proc.returncode = os.waitstatus_to_exitcode(status)
        elapsed = time.monotonic() - t0
        # Whatever the candidate left behind (daemons, children) goes now.
        self._kill(proc.pid, plan.cgroup)
        notes: list[str] = []
        if not (out.join(5.0) and err.join(5.0)):
            notes.append("A process spawned by the job kept its output pipes open after it ended.")
        out.close()
        err.close()
        if proc.stdin is not None:
            try:
                proc.stdin.close()
            except OSError:
                pass
        progress.drain(on_event)

        rc = proc.returncode
        sig: int | None = None
        exit_code: int | None = rc
        if rc < 0:
            sig, exit_code = -rc, None
        elif plan.wrapped and 128 < rc < 128 + 65:
            sig, exit_code = rc - 128, None
        if rc == CGROUP_JOIN_FAILED and plan.cgroup is not None and not progress.count:
            notes.append("The job could not join its cgroup.")

        peak = plan.cgroup.peak_memory_bytes() if plan.cgroup else None
        if peak is None and rusage is not None:
            peak = int(rusage.ru_maxrss) * 1024
        oom = bool(plan.cgroup and plan.cgroup.oom_kills() > 0)
        timings = {"total_s": round(elapsed, 3)}
        for event, key in (("start", "start_to_runner_start_s"), ("first_batch", "start_to_first_batch_s")):
            t = progress.first_time(event)
            if t is not None:
                timings[key] = round(t - t0_wall, 3)
        return Observed(
            exit_code=exit_code,
            signal=sig,
            timed_out=timed_out,
            oom_killed=oom,
            peak_memory_bytes=peak,
            memory_limit_bytes=limits.memory_mb * 2**20,
            stdout_tail=out.tail.text(),
            stderr_tail=err.tail.text(),
            timings=timings,
            isolation=list(plan.isolation),
            notes=notes,
        )

    # -- prewarm ------------------------------------------------------------------------------------
    @staticmethod
    def _warm_key(job: Job, data_dir: Path) -> tuple[Any, ...]:
        """What a pre-started process fixed at its start (the wall-clock timeout is applied from "go")."""
        lim = job.limits
        fixed = (lim.memory_mb, lim.max_pids, lim.file_size_mb, lim.output_tail_bytes, int(cpu_limit_s(lim)))
        return (str(data_dir), job.entry, tuple(job.gpus), job.spec.threads, fixed)

    def _take_warm(self, job: Job, data_dir: Path) -> WarmSlot | None:
        slot = self._warm.pop(self._warm_key(job, data_dir), None)
        if slot is None:
            return None
        if slot.launched.proc.poll() is not None:  # died while waiting (killed, failed import)
            _discard(slot.launched, slot.stage)
            return None
        return slot

    def _spawn_warm(self, job: Job, job_dir: Path, data_dir: Path) -> None:
        """Start the process of the next job with the same settings, in a fresh sandbox of its own."""
        key = self._warm_key(job, data_dir)
        if key in self._warm:
            return
        _close_slots(self._warm)  # one slot at most: the settings of the latest job
        stage = job_dir.parent / f".nncaption-warm-{self.owner_pid}-{uuid.uuid4().hex[:12]}"
        try:
            stage.mkdir(mode=0o700)
            plan = self.plan(job, stage, data_dir, self._cgroup_name(), warm=True)
            self._warm[key] = WarmSlot(stage, self._launch(plan, warm=True))
        except OSError:
            shutil.rmtree(stage, ignore_errors=True)

    def warm_pids(self) -> set[int]:
        """Host pids of the pre-started processes (their process and everything in their cgroup)."""
        pids: set[int] = set()
        for slot in self._warm.values():
            pids.add(slot.launched.proc.pid)
            if slot.launched.plan.cgroup is not None:
                pids.update(slot.launched.plan.cgroup.pids())
        return pids

    def close(self) -> None:
        """Stop pre-started processes (prewarm) and remove their stage directories."""
        _close_slots(self._warm)

    def __enter__(self) -> "LocalSandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _kill(pid: int, cg: cgroups.JobCgroup | None) -> None:
        """SIGKILL the job's process group (bwrap dies, its pid namespace with it) and its cgroup."""
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if cg is not None:
            cg.kill_all()

    @staticmethod
    def _write_tail(path: Path, text: str) -> None:
        """Write a bounded tail into the (candidate-writable) job dir without following links."""
        try:
            if path.is_symlink() or path.exists():
                path.unlink()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        except OSError:
            return
        with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as f:
            f.write(text)
