"""The docker backend: one locked-down container per job (docker SDK 7).

Per job: no network, memory (no swap) and CPU limits, a pids limit, a
read-only root with a private tmpfs /tmp, every capability dropped,
no-new-privileges, uid/gid 65534, an init process (so the candidate is not
pid 1 and daemons are reaped), bounded json-file logs, optional gVisor
(`runtime="runsc"`), GPUs through `device_requests`, the job's CPU share as a
cpuset and a CPU quota. The job's stage (a sized tmpfs on the host, sandbox/quota.py: a docker
tmpfs mount is discarded when the container stops, before its outputs could be copied back) is
bind-mounted read-write, the data read-only, and the host's Python
environment read-only at the same paths, so the same interpreter runs inside
the minimal offline image. Containers carry labels so that those of a crashed
parent are found and removed on the next start (`reap_orphans`).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nncaption.netapi.compute import Usage
from nncaption.netapi.errors import ConfigError, NNCaptionError
from nncaption.netapi.procs import pid_alive

from . import hostenv, ownership
from .base import Job
from .docker_io import AttachReader, cgroup_peak, container_pids, container_usage, max_or_none
from .image_build import OFFLINE_IMAGE
from .outcome import Observed
from .quota import Stage
from .skeleton import BaseSandbox, cpu_limit_s
from .streams import TailBuffer

log = logging.getLogger(__name__)

LABEL_JOB = "nncaption.job"
LABEL_OWNER = "nncaption.owner"  # "<hostname>:<pid>" of the parent that started the container
LABEL_HOST = "nncaption.host"
CONTAINER_UID = f"{ownership.NOBODY}:{ownership.NOBODY}"
# gVisor runs its kernel (the Go "sentry", many host threads) and its gofer inside the container's pids cgroup:
# a low pids_limit starves them, and the start hangs or fails with "failed to find initial working directory:
# input/output error" (measured: 64 hangs, 256 starts). The job's own processes are sentry tasks there.
RUNSC_MIN_PIDS = 1024


class DockerUnavailable(NNCaptionError):
    category = "sandbox-docker"


def owner_label() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class DockerSandbox(BaseSandbox["_Started"]):
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
        extra_env: dict[str, str] | None = None,
        host_python: bool | None = None,
        image_python: str = "python",
        client: Any = None,
        **base: Any,
    ) -> None:
        base.setdefault("poll_interval_s", 0.1)
        super().__init__(**base)
        self.image = image
        # The offline image has no Python of its own: the host's environment is mounted read-only.
        self.host_python = image.endswith(":offline") if host_python is None else host_python
        self.image_python = image_python
        self.runtime = runtime
        self.base_url = base_url
        self.shm_size = shm_size
        self.fixed_cpus = cpus  # a fixed CPU quota per job; None = the job's allocated share
        self.extra_env = dict(extra_env or {})
        self._client = client
        self._client_lock = threading.Lock()

    # -- engine ------------------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        with self._client_lock:
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

    def _ready(self) -> None:
        self.client  # noqa: B018 - fail early, with a hint, when the engine is unreachable

    def preflight(self) -> None:
        """Start-up check (exit 2, before any candidate): the engine answers and the sandbox image exists."""
        from .image_build import image_exists

        try:
            found = image_exists(self.client, self.image)
        except DockerUnavailable as e:
            raise DockerUnavailable(e.message, e.hint, exit_code=2) from None
        if not found:
            raise ConfigError(f"the docker sandbox image {self.image} does not exist",
                              "build it: nncaption sandbox build-image --offline (about 3 minutes), "
                              "or use --sandbox local.", category="sandbox-image", exit_code=2)

    def _reap(self) -> None:
        removed = self.reap_orphans()
        if removed:
            log.info("removed %d containers left by dead parents: %s", len(removed), ", ".join(removed))

    def reap_orphans(self) -> list[str]:
        """Remove nn-caption containers whose parent process (on this host) is gone.

        One listing call (no per-container inspect, which can hang on a wedged
        container); each removal is bounded by the client's timeout.
        """
        host = socket.gethostname()
        removed: list[str] = []
        import docker

        try:
            if self.base_url:
                short = docker.DockerClient(base_url=self.base_url, timeout=10)
            else:
                short = docker.from_env(timeout=10)
            api = short.api
            rows = api.containers(all=True, filters={"label": LABEL_OWNER})
        except Exception as e:  # noqa: BLE001 - the engine is slow or gone: nothing to reap now
            log.warning("cannot list containers to reap orphans: %s", e)
            return removed
        for row in rows:
            owner = (row.get("Labels") or {}).get(LABEL_OWNER, "")
            owner_host, _, pid = owner.rpartition(":")
            if owner_host != host or not pid.isdigit() or pid_alive(int(pid)):
                continue
            try:
                api.remove_container(row["Id"], force=True)
                removed.append(row["Id"][:12])
            except Exception as e:  # noqa: BLE001 - already gone, or wedged: tried again next start
                log.warning("cannot remove orphan container %s: %s", row["Id"][:12], e)
        return removed

    # -- one job -------------------------------------------------------------------------------------
    def container_kwargs(
        self, job: Job, job_dir: Path, data_dir: Path, job_id: str, cores: list[int] | None = None
    ) -> dict[str, Any]:
        """Every argument of `containers.create` for this job (pure: unit-tested without an engine)."""
        from docker.types import LogConfig, Ulimit

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
        cpu = cpu_limit_s(limits, len(cores) if cores else None)
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
            "pids_limit": max(limits.max_pids, RUNSC_MIN_PIDS) if self.runtime == "runsc" else limits.max_pids,
            "read_only": True,
            "tmpfs": {"/tmp": f"rw,nosuid,nodev,size={limits.tmp_mb}m,mode=1777"},
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
        if self.fixed_cpus:
            kwargs["nano_cpus"] = int(self.fixed_cpus * 1e9)
        elif cores:
            kwargs["nano_cpus"] = int(len(cores) * 1e9)
            kwargs["cpuset_cpus"] = ",".join(map(str, cores))
        if job.gpus:
            kwargs["device_requests"] = gpu_device_requests(job.gpus)
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
            f"private-tmp:{job.limits.tmp_mb}m",
            "data-ro:bind",
            "cgroup-memory",
            "cgroup-pids",
            "rlimit-cpu",
            "rlimit-fsize",
            "env-allowlist",
            "wall-timeout",
            "bounded-logs",
            "seccomp:docker-default",
        ]
        if self.runtime:
            out.append(f"runtime:{self.runtime}")
        if self.host_python:
            out.append("host-python-ro")
        if job.gpus:
            out.append("gpus:" + ",".join(map(str, job.gpus)))
        return out

    def _prepare_stage(self, stage: Stage) -> None:
        (stage.path / "home").mkdir(exist_ok=True)
        ownership.give_to(stage.path)

    def _start(self, job: Job, stage: Stage, data_dir: Path, *, warm: bool, cores: list[int] | None) -> _Started:
        """Create, attach and start the job's container (warm: its entry waits for "go" on stdin)."""
        import docker

        work_dir = stage.path
        isolation = self.isolation(job)
        if ownership.make_world_readable(data_dir):
            isolation.append("data-made-world-readable")
        kwargs = self.container_kwargs(job, work_dir, data_dir, uuid.uuid4().hex[:12], cores)
        if warm:
            kwargs["command"][5:6] = ["nncaption.sandbox.warm", job.entry]
            kwargs["stdin_open"] = True
        elif cores:
            isolation.append("cpuset")
        try:
            container = self.client.containers.create(**kwargs)
        except docker.errors.ImageNotFound as e:
            raise DockerUnavailable(
                f"sandbox image {self.image} not found",
                "build it: nncaption sandbox build-image --offline (or docker build sandbox/image).",
            ) from e
        except docker.errors.APIError as e:
            hint = _runtime_hint(self.runtime)
            raise DockerUnavailable(f"docker could not create the job container: {e}", hint) from e
        out, err = TailBuffer(job.limits.output_tail_bytes), TailBuffer(job.limits.output_tail_bytes)
        try:
            reader = AttachReader(container, out, err, stdin=warm)
            container.start()
        except docker.errors.APIError as e:
            _remove(container)
            hint = _runtime_hint(self.runtime)
            raise DockerUnavailable(f"docker could not start the job container: {e}", hint) from e
        return _Started(container, reader, out, err, isolation)

    def _go(self, handle: _Started, job: Job, stage: Stage, cores: list[int] | None) -> bool:
        if self._exited(handle):
            return False
        if cores and not self.fixed_cpus:
            try:
                handle.container.update(cpuset_cpus=",".join(map(str, cores)),
                                        cpu_period=100_000, cpu_quota=100_000 * len(cores))
                handle.isolation.append("cpuset")
            except Exception as e:  # noqa: BLE001 - the engine refused: the job runs without its cpuset
                log.warning("could not give a warm container its CPU share %s: %s", cores, e)
        return handle.reader.send_go()

    def _state(self, handle: _Started) -> dict[str, Any]:
        try:
            handle.container.reload()
            handle.state = dict(handle.container.attrs["State"])
        except Exception as e:  # noqa: BLE001 - the engine lost it: treat as killed
            log.warning("cannot inspect container %s: %s", getattr(handle.container, "id", "?")[:12], e)
            handle.state = {"Status": "dead", "ExitCode": 128 + signal.SIGKILL}
        if handle.pid is None:
            handle.pid = int(handle.state.get("Pid") or 0)
        handle.peak = max_or_none(handle.peak, cgroup_peak(handle.pid))
        return handle.state

    def _usage(self, handle: _Started) -> Usage | None:
        return container_usage(handle.pid if handle.pid is not None else int(self._state(handle).get("Pid") or 0))

    def _exited(self, handle: _Started) -> bool:
        return self._state(handle).get("Status") in ("exited", "dead")

    def _kill(self, handle: _Started) -> None:
        try:
            handle.container.kill()
            handle.container.wait(timeout=60)
        except Exception as e:  # noqa: BLE001 - already stopped, or removal forces it
            log.debug("kill of container %s: %s", getattr(handle.container, "id", "?")[:12], e)

    @staticmethod
    def _dispose_static(handle: Any) -> None:
        _remove(handle.container)
        handle.reader.join(1.0)

    def _dispose(self, handle: _Started) -> None:
        self._dispose_static(handle)

    def _observe(self, handle: _Started, job: Job, *, timed_out: bool) -> Observed:
        state = self._state(handle)
        handle.reader.join(10.0)
        rc = int(state.get("ExitCode", -1))
        sig = rc - 128 if 128 < rc < 128 + 65 else None
        if state.get("OOMKilled") and sig is None:
            sig = signal.SIGKILL
        return Observed(
            exit_code=None if sig is not None else rc,
            signal=sig,
            timed_out=timed_out,
            oom_killed=bool(state.get("OOMKilled")),
            peak_memory_bytes=handle.peak,
            # the engine's OOMKilled is authoritative: no "killed near the limit" guess (cgroup v1 peaks count page
            # cache of the mounted torch libraries and sit near the limit without any shortage of memory)
            memory_limit_bytes=None,
            stdout_tail=handle.out.text(),
            stderr_tail=handle.err.text(),
            isolation=list(handle.isolation),
        )

    def warm_pids(self) -> set[int]:
        """Host pids of the pre-started containers' processes."""
        pids: set[int] = set()
        with self._lock:
            slots = [s for ss in self._warm.values() for s in ss]
        for slot in slots:
            pids.update(container_pids(int(self._state(slot.handle).get("Pid") or 0)))
        return pids


def gpu_device_requests(gpus: list[int]) -> list[Any]:
    """The docker device request for exactly these GPU ids (never `count=-1`, which would mean all)."""
    from docker.types import DeviceRequest

    return [DeviceRequest(device_ids=[str(g) for g in gpus], capabilities=[["gpu"]])]


@dataclass
class _Started:
    container: Any
    reader: AttachReader
    out: TailBuffer
    err: TailBuffer
    isolation: list[str]
    state: dict[str, Any] = field(default_factory=dict)
    pid: int | None = None
    peak: int | None = None


def _remove(container: Any) -> None:
    try:
        container.remove(force=True)
    except Exception as e:  # noqa: BLE001 - already gone; a wedged one is reaped later
        if "No such container" not in str(e) and "is already in progress" not in str(e):
            log.warning("cannot remove container %s: %s", getattr(container, "id", "?")[:12], e)


def _runtime_hint(runtime: str | None) -> str:
    if runtime:
        return f"check that the {runtime!r} runtime is registered with dockerd (docker info | grep -i runtimes)."
    return "check `docker info` and the daemon log."
