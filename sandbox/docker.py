"""The docker backend: one locked-down container per job (docker SDK 7).

Per job: no network, memory (no swap) and CPU limits, a pids limit, a
read-only root with a private tmpfs /tmp, every capability dropped,
no-new-privileges, uid/gid 65534, an init process (so the candidate is not
pid 1 and daemons are reaped), bounded json-file logs, optional gVisor
(`runtime="runsc"`), GPUs through `device_requests`. The job directory is
bind-mounted read-write, the data read-only, and the host's Python
environment read-only at the same paths, so the same interpreter runs inside
the minimal offline image. Containers carry labels so that those of a crashed
parent are found and removed on the next start (`reap_orphans`).
"""

from __future__ import annotations

import os
import signal
import shutil
import socket
import threading
import time
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nncaption.netapi.errors import ConfigError, NNCaptionError
from nncaption.netapi.job import JOB_FILE, PROGRESS_FILE
from nncaption.netapi.procs import pid_alive

from . import hostenv, ownership
from .base import EventCallback, Job, RunResult
from .image_build import OFFLINE_IMAGE
from .local import STALE_OUTPUTS, STDERR_FILE, STDOUT_FILE, LocalSandbox, cpu_limit_s
from .outcome import Observed, interpret
from .streams import ProgressTail, TailBuffer

LABEL_JOB = "nncaption.job"
LABEL_OWNER = "nncaption.owner"  # "<hostname>:<pid>" of the parent that started the container
LABEL_HOST = "nncaption.host"
CONTAINER_UID = f"{ownership.NOBODY}:{ownership.NOBODY}"


class DockerUnavailable(NNCaptionError):
    category = "sandbox-docker"


def owner_label() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class DockerSandbox:
    """Runs `python -m <job.entry> JOB_DIR` in a fresh container per job."""

    name = "docker"

    def __init__(
        self,
        *,
        image: str = OFFLINE_IMAGE,
        runtime: str | None = None,
        base_url: str | None = None,
        shm_size: str = "1g",
        cpus: float | None = None,
        tmpfs_size: str = "512m",
        poll_interval_s: float = 0.1,
        extra_env: dict[str, str] | None = None,
        host_python: bool | None = None,
        image_python: str = "python",
        prewarm: bool = False,
        client: Any = None,
    ) -> None:
        self.image = image
        # The offline image has no Python of its own: the host's environment is mounted read-only.
        self.host_python = image.endswith(":offline") if host_python is None else host_python
        self.image_python = image_python
        self.runtime = runtime
        self.base_url = base_url
        self.shm_size = shm_size
        self.cpus = cpus
        self.tmpfs_size = tmpfs_size
        self.poll_interval_s = poll_interval_s
        self.extra_env = dict(extra_env or {})
        self._client = client
        self._reaped = False
        # prewarm: after each job, start the next job's container (torch imported) ahead of time
        self.prewarm = prewarm
        self._warm: dict[Any, _WarmContainer] = {}
        weakref.finalize(self, _close_slots, self._warm)

    # -- engine ------------------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        if self._client is None:
            try:
                import docker

                self._client = docker.DockerClient(base_url=self.base_url) if self.base_url else docker.from_env()
                self._client.ping()
            except Exception as e:  # noqa: BLE001 - any failure to reach the engine
                self._client = None
                raise DockerUnavailable(
                    f"cannot reach the docker engine: {e}",
                    "start dockerd (bash .ci/services.sh), or use --sandbox local.",
                ) from e
        return self._client

    def reap_orphans(self) -> list[str]:
        """Remove nn-caption containers whose parent process (on this host) is gone.

        One listing call (no per-container inspect, which can hang on a wedged
        container); each removal is bounded by the client's timeout.
        """
        host = socket.gethostname()
        removed: list[str] = []
        import docker

        try:
            short = docker.DockerClient(base_url=self.base_url, timeout=10) if self.base_url else docker.from_env(timeout=10)
            api = short.api
            rows = api.containers(all=True, filters={"label": LABEL_OWNER})
        except Exception:  # noqa: BLE001 - the engine is slow or gone: nothing to reap now
            return removed
        for row in rows:
            owner = (row.get("Labels") or {}).get(LABEL_OWNER, "")
            owner_host, _, pid = owner.rpartition(":")
            if owner_host != host or not pid.isdigit() or pid_alive(int(pid)):
                continue
            try:
                api.remove_container(row["Id"], force=True)
                removed.append(row["Id"][:12])
            except Exception:  # noqa: BLE001 - already gone, or wedged: tried again next start
                pass
        return removed

    # -- one job -------------------------------------------------------------------------------------
    def container_kwargs(self, job: Job, job_dir: Path, data_dir: Path, job_id: str) -> dict[str, Any]:
        """Every argument of `containers.create` for this job (pure: unit-tested without an engine)."""
        from docker.types import DeviceRequest, LogConfig, Ulimit

        limits = job.limits
        volumes: dict[str, dict[str, str]] = {}
        if self.host_python:
            volumes = {str(p): {"bind": str(p), "mode": "ro"} for p in hostenv.python_paths()}
        python = hostenv.python_executable() if self.host_python else self.image_python
        volumes[str(data_dir)] = {"bind": str(data_dir), "mode": "ro"}
        volumes[str(job_dir)] = {"bind": str(job_dir), "mode": "rw"}
        env = hostenv.job_environment(
            home=str(job_dir / "home"), tmpdir="/tmp", gpus=[], threads=job.spec.threads, extra=self.extra_env
        )
        if job.gpus:
            env.pop("CUDA_VISIBLE_DEVICES")  # the container sees only its GPUs, renumbered from 0
        cpu = cpu_limit_s(limits)
        kwargs: dict[str, Any] = {
            "image": self.image,
            "command": [python, "-I", "-u", "-B", "-m", job.entry, str(job_dir)],
            "name": f"nncaption-{job_id}",
            "detach": True,
            "user": CONTAINER_UID,
            "working_dir": str(job_dir),
            "environment": env,
            "network_mode": "none",
            "mem_limit": f"{limits.memory_mb}m",
            "memswap_limit": f"{limits.memory_mb}m",
            "pids_limit": limits.max_pids,
            "read_only": True,
            "tmpfs": {"/tmp": f"rw,nosuid,nodev,size={self.tmpfs_size}"},
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "shm_size": self.shm_size,
            "init": True,
            "ipc_mode": "private",
            "volumes": volumes,
            "labels": {LABEL_JOB: job_id, LABEL_OWNER: owner_label(), LABEL_HOST: socket.gethostname()},
            "ulimits": [
                Ulimit(name="cpu", soft=int(cpu), hard=int(cpu) + 5),
                Ulimit(name="fsize", soft=limits.file_size_mb * 2**20, hard=limits.file_size_mb * 2**20),
                Ulimit(name="core", soft=0, hard=0),
            ],
            # Output is read live through attach into bounded tails; the engine's own log is capped at 1 MB
            # (the "none" driver is missing from some engine builds, e.g. Debian's docker.io 20.10).
            "log_config": LogConfig(type="local", config={"max-size": "1m", "max-file": "1", "compress": "false"}),
        }
        if self.cpus:
            kwargs["nano_cpus"] = int(self.cpus * 1e9)
        if job.gpus:
            kwargs["device_requests"] = [
                DeviceRequest(device_ids=[str(g) for g in job.gpus], capabilities=[["gpu"]])
            ]
        if self.runtime:
            kwargs["runtime"] = self.runtime
        return kwargs

    def isolation(self, job: Job) -> list[str]:
        out = [
            "container",
            "netns:none",
            "pidns",
            f"uid:{ownership.NOBODY}",
            "caps-dropped",
            "no-new-privs",
            "read-only-root",
            "private-tmp",
            "data-ro:bind",
            "cgroup-memory",
            "cgroup-pids",
            "rlimit-cpu",
            "rlimit-fsize",
            "env-allowlist",
            "wall-timeout",
            "bounded-logs",
        ]
        if self.runtime:
            out.append(f"runtime:{self.runtime}")
        if self.host_python:
            out.append("host-python-ro")
        if job.gpus:
            out.append("gpus:" + ",".join(map(str, job.gpus)))
        return out

    def run(self, job: Job, on_event: EventCallback | None = None) -> RunResult:
        job_dir = Path(job.job_dir).resolve()
        data_dir = Path(job.data_dir).resolve()
        if not (job_dir / JOB_FILE).is_file():
            raise ConfigError(f"{job_dir} has no {JOB_FILE}", "create it with nncaption.netapi.evaluate.make_job_dir.")
        if not data_dir.is_dir():
            raise ConfigError(f"data directory {data_dir} does not exist", "prepare the dataset first.")
        self.client  # noqa: B018 - fail early, with a hint, when the engine is unreachable
        if not self._reaped:  # once per sandbox: containers left by a crashed earlier parent
            self._reaped = True
            self.reap_orphans()
        for name in STALE_OUTPUTS:
            (job_dir / name).unlink(missing_ok=True)
        slot = self._warm.pop(self._warm_key(job, data_dir), None) if self.prewarm else None
        started: _Started | None = None
        work_dir = job_dir
        if slot is not None:
            ownership.move_entries(job_dir, slot.stage)
            ownership.give_to(slot.stage)
            if slot.started.reader.send_go():
                started, work_dir = slot.started, slot.stage
                started.isolation.append("prewarmed")
            else:
                ownership.move_entries(slot.stage, job_dir)
                _remove(slot.started.container)
                shutil.rmtree(slot.stage, ignore_errors=True)
                slot = None
        if started is None:
            started = self._start(job, job_dir, data_dir, warm=False)
        try:
            obs = self._supervise(job, started, work_dir, on_event)
        finally:
            _remove(started.container)
            if slot is not None:
                ownership.move_entries(slot.stage, job_dir)
                shutil.rmtree(slot.stage, ignore_errors=True)
        if ownership.reclaim(job_dir):
            obs.notes.append("Links or special files the job left in its directory were removed.")
        LocalSandbox._write_tail(job_dir / STDOUT_FILE, obs.stdout_tail)
        LocalSandbox._write_tail(job_dir / STDERR_FILE, obs.stderr_tail)
        if self.prewarm:
            self._spawn_warm(job, job_dir, data_dir)
        return interpret(job_dir, job.entry, obs, timeout_s=job.limits.timeout_s, backend=self.name)

    def _start(self, job: Job, work_dir: Path, data_dir: Path, *, warm: bool) -> "_Started":
        """Create, attach and start the job's container (warm: its entry waits for "go" on stdin)."""
        import docker

        (work_dir / "home").mkdir(exist_ok=True)
        ownership.give_to(work_dir)
        isolation = self.isolation(job)
        if ownership.make_world_readable(data_dir):
            isolation.append("data-made-world-readable")
        kwargs = self.container_kwargs(job, work_dir, data_dir, uuid.uuid4().hex[:12])
        if warm:
            kwargs["command"][5:6] = ["nncaption.sandbox.warm", job.entry]
            kwargs["stdin_open"] = True
        try:
            container = self.client.containers.create(**kwargs)
        except docker.errors.ImageNotFound as e:
            raise DockerUnavailable(
                f"sandbox image {self.image} not found",
                "build it: nncaption sandbox build-image --offline (or docker build sandbox/image).",
            ) from e
        except docker.errors.APIError as e:
            raise DockerUnavailable(f"docker could not create the job container: {e}", _runtime_hint(self.runtime)) from e
        out, err = TailBuffer(job.limits.output_tail_bytes), TailBuffer(job.limits.output_tail_bytes)
        try:
            reader = _AttachReader(container, out, err, stdin=warm)
            container.start()
        except docker.errors.APIError as e:
            _remove(container)
            raise DockerUnavailable(f"docker could not start the job container: {e}", _runtime_hint(self.runtime)) from e
        return _Started(container, reader, out, err, isolation)

    def _supervise(self, job: Job, started: "_Started", work_dir: Path, on_event: EventCallback | None) -> Observed:
        container = started.container
        progress = ProgressTail(work_dir / PROGRESS_FILE)
        t0_wall, t0 = time.time(), time.monotonic()
        deadline = t0 + job.limits.timeout_s
        timed_out = False
        peak: int | None = None
        container.reload()
        pid = int(container.attrs["State"].get("Pid") or 0)
        while True:
            container.reload()
            peak = _max(peak, _cgroup_peak(pid))
            if container.status in ("exited", "dead"):
                break
            progress.drain(on_event)
            if time.monotonic() >= deadline:
                timed_out = True
                try:
                    container.kill()
                    container.wait(timeout=60)
                except Exception:  # noqa: BLE001 - removal forces it
                    pass
                break
            time.sleep(self.poll_interval_s)
        elapsed = time.monotonic() - t0
        try:
            container.reload()
            state = container.attrs["State"]
        except Exception:  # noqa: BLE001 - the engine lost it: treat as killed
            state = {"ExitCode": 128 + signal.SIGKILL}
        progress.drain(on_event)
        started.reader.join(10.0)
        rc = int(state.get("ExitCode", -1))
        sig = rc - 128 if 128 < rc < 128 + 65 else None
        if state.get("OOMKilled") and sig is None:
            sig = signal.SIGKILL
        timings = {"total_s": round(elapsed, 3)}
        for event, key in (("start", "start_to_runner_start_s"), ("first_batch", "start_to_first_batch_s")):
            t = progress.first_time(event)
            if t is not None:
                timings[key] = round(t - t0_wall, 3)
        return Observed(
            exit_code=None if sig is not None else rc,
            signal=sig,
            timed_out=timed_out,
            oom_killed=bool(state.get("OOMKilled")),
            peak_memory_bytes=peak,
            memory_limit_bytes=job.limits.memory_mb * 2**20,
            stdout_tail=started.out.text(),
            stderr_tail=started.err.text(),
            timings=timings,
            isolation=started.isolation,
        )

    # -- prewarm ------------------------------------------------------------------------------------
    @staticmethod
    def _warm_key(job: Job, data_dir: Path) -> tuple[Any, ...]:
        lim = job.limits
        fixed = (lim.memory_mb, lim.max_pids, lim.file_size_mb, lim.output_tail_bytes, int(cpu_limit_s(lim)))
        return (str(data_dir), job.entry, tuple(job.gpus), job.spec.threads, fixed)

    def _spawn_warm(self, job: Job, job_dir: Path, data_dir: Path) -> None:
        """Start the container of the next job with the same settings; it waits for "go"."""
        key = self._warm_key(job, data_dir)
        if key in self._warm:
            return
        _close_slots(self._warm)
        stage = job_dir.parent / f".nncaption-warm-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        try:
            stage.mkdir(mode=0o700)
            self._warm[key] = _WarmContainer(stage, self._start(job, stage, data_dir, warm=True))
        except (OSError, DockerUnavailable):
            shutil.rmtree(stage, ignore_errors=True)

    def warm_pids(self) -> set[int]:
        """Host pids of the pre-started containers' processes."""
        pids: set[int] = set()
        for slot in self._warm.values():
            try:
                slot.started.container.reload()
                pids.update(_container_pids(int(slot.started.container.attrs["State"].get("Pid") or 0)))
            except Exception:  # noqa: BLE001 - gone
                continue
        return pids

    def close(self) -> None:
        """Remove pre-started containers (prewarm) and their stage directories."""
        _close_slots(self._warm)

    def __enter__(self) -> "DockerSandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class _Started:
    container: Any
    reader: "_AttachReader"
    out: TailBuffer
    err: TailBuffer
    isolation: list[str]


@dataclass
class _WarmContainer:
    stage: Path
    started: _Started


def _remove(container: Any) -> None:
    try:
        container.remove(force=True)
    except Exception:  # noqa: BLE001 - already gone; a wedged one is reaped later
        pass


def _close_slots(slots: dict[Any, _WarmContainer]) -> None:
    while slots:
        _, slot = slots.popitem()
        _remove(slot.started.container)
        slot.started.reader.join(1.0)
        shutil.rmtree(slot.stage, ignore_errors=True)


class _AttachReader:
    """Drains a container's stdout/stderr into bounded tails, in a thread.

    Attached before start through the raw multiplexed socket (8-byte frame
    headers: stream, 0, 0, 0, big-endian size). After the container has exited
    the reader stops at EOF or after the stream has been idle for a moment:
    the engine does not always close an attach stream promptly.
    """

    def __init__(self, container: Any, out: TailBuffer, err: TailBuffer, *, stdin: bool = False) -> None:
        params = {"stdout": 1, "stderr": 1, "stream": 1, "logs": 1, "stdin": int(stdin)}
        sock = container.client.api.attach_socket(container.id, params=params)
        self._sock = getattr(sock, "_sock", sock)
        self._sock.settimeout(0.1)
        self._keep = sock
        self._targets = {1: out, 2: err}
        self._finishing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sandbox-attach", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        buf = bytearray()
        idle = 0
        while True:
            try:
                data = self._sock.recv(1 << 16)
            except socket.timeout:
                idle += 1
                if self._finishing.is_set() and idle >= 3:
                    break
                continue
            except OSError:
                break
            if not data:
                break
            idle = 0
            buf += data
            while len(buf) >= 8:
                size = int.from_bytes(buf[4:8], "big")
                if len(buf) < 8 + size:
                    break
                target = self._targets.get(buf[0])
                if target is not None:
                    target.write(bytes(buf[8 : 8 + size]))
                del buf[: 8 + size]

    def send_go(self) -> bool:
        """Tell a warm container's entry to start (prewarm)."""
        try:
            self._sock.sendall(b"go\n")
            return True
        except OSError:
            return False

    def join(self, timeout: float) -> None:
        self._finishing.set()
        self._thread.join(timeout)
        try:
            self._keep.close()
        except Exception:  # noqa: BLE001
            pass


def _runtime_hint(runtime: str | None) -> str:
    if runtime:
        return f"check that the {runtime!r} runtime is registered with dockerd (docker info | grep -i runtimes)."
    return "check `docker info` and the daemon log."


def _max(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    return a if b is None else max(a, b)


def _cgroup_peak(pid: int) -> int | None:
    """Peak memory of the container's cgroup, read from the host while it runs (v1 or v2)."""
    if not pid:
        return None
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            f = Path("/sys/fs/cgroup/memory") / path.lstrip("/") / "memory.max_usage_in_bytes"
        elif controllers == "":
            f = Path("/sys/fs/cgroup") / path.lstrip("/") / "memory.peak"
        else:
            continue
        try:
            return int(f.read_text().strip())
        except (OSError, ValueError):
            continue
    return None


def _container_pids(pid: int) -> set[int]:
    """Every process in the cgroup of host pid `pid` (a container's init), read from the host."""
    if not pid:
        return set()
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return set()
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "pids" in controllers.split(","):
            procs = Path("/sys/fs/cgroup/pids") / path.lstrip("/") / "cgroup.procs"
        elif controllers == "":
            procs = Path("/sys/fs/cgroup") / path.lstrip("/") / "cgroup.procs"
        else:
            continue
        try:
            return {int(t) for t in procs.read_text().split()} | {pid}
        except (OSError, ValueError):
            continue
    return {pid}

