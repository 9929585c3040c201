"""Helpers shared by the sandbox tests (no tests here): job building from tests/hostile/, leftover checks,
docker fixtures."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from nncaption.netapi.evaluate import make_job_dir
from nncaption.netapi.job import JobSpec
from nncaption.sandbox import Job, Limits

HOSTILE_DIR = Path(__file__).parent / "hostile"
OFFLINE_IMAGE = "nncaption-sandbox:offline"


def candidate_source(name: str, **subs: str) -> str:
    """A full Net API file: tests/hostile/<name>.py (placeholders __KEY__ filled) followed by the small model."""
    text = "" if name == "good" else (HOSTILE_DIR / f"{name}.py").read_text()
    for key, value in subs.items():
        text = text.replace(f"__{key.upper()}__", value)
    return text + "\n\n" + (HOSTILE_DIR / "_net.py").read_text()


def tiny_spec(data_dir: Path) -> JobSpec:
    return JobSpec(
        data_dir=str(data_dir),
        epochs=1,
        batch_size=8,
        max_train_batches=1,
        max_val_images=8,
        decode_batch_size=8,
        threads=1,
        epoch_time_limit_s=600.0,  # the sandbox's own limits are under test, not the runner's
    )


def make_job(
    job_dir: Path, data_dir: Path, name: str, *, timeout_s: float = 60.0, memory_mb: int = 4096, **subs: str
) -> Job:
    spec = tiny_spec(data_dir)
    make_job_dir(job_dir, candidate_source(name, **subs), spec)
    # an explicit CPU-time limit keeps the limits of most jobs equal, so that prewarmed slots are reused
    limits = Limits(timeout_s=timeout_s, memory_mb=memory_mb, max_pids=64, output_tail_bytes=4096, cpu_time_s=300)
    return Job(job_dir=job_dir, spec=spec, limits=limits)


def leftover_processes(marker: str) -> list[str]:
    """Processes on this host whose command line mentions `marker` (e.g. a job dir), other than this one."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            out.append(f"{entry.name}: {cmd[:200]}")
    return out


def docker_engine_or_skip() -> object:
    """A docker client; skips locally but FAILS under CI=true when the engine is unreachable."""
    try:
        import docker

        client = docker.from_env(timeout=30)
        client.ping()
        return client
    except Exception as e:  # noqa: BLE001 - any failure to reach the engine
        msg = f"docker engine unreachable: {e}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg + " (CI=true: the docker tests must run; see .ci/services.sh)")
        pytest.skip(msg)


def ensure_offline_image(client: object) -> str:
    """Build the offline image once (debootstrap + docker import) when it is missing."""
    import docker

    try:
        client.images.get(OFFLINE_IMAGE)  # type: ignore[attr-defined]
        return OFFLINE_IMAGE
    except docker.errors.ImageNotFound:
        pass
    from nncaption.sandbox.image_build import build_offline_image

    build_offline_image(OFFLINE_IMAGE)
    return OFFLINE_IMAGE


def host_can_fork() -> bool:
    return subprocess.run(["true"], timeout=10).returncode == 0
