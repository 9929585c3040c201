"""The docker backend: the create arguments (GPU path, gVisor, lock-down) without an engine, and with the
real engine: probe-measured isolation, the engine accepting GPU requests, orphan reaping, the image CLI."""

from __future__ import annotations

import json
import os
import socket
import uuid
from pathlib import Path
from typing import Any

import pytest
from sandbox_support import OFFLINE_IMAGE, docker_engine_or_skip, ensure_offline_image

from nncaption.netapi.job import JobSpec
from nncaption.sandbox import OK, Job, Limits, get_sandbox
from nncaption.sandbox.docker import LABEL_JOB, LABEL_OWNER, DockerSandbox, owner_label
from nncaption.sandbox.hostenv import python_paths
from nncaption.sandbox.image_build import apt_mirror
from nncaption.sandbox.probe import read_facts


def _job(tmp_path: Path, gpus: list[int] | None = None, entry: str = "nncaption.sandbox.probe") -> Job:
    job_dir, data_dir = tmp_path / "job", tmp_path / "data"
    job_dir.mkdir(exist_ok=True)
    data_dir.mkdir(exist_ok=True)
    spec = JobSpec(data_dir=str(data_dir), threads=2)
    spec.write(job_dir)
    return Job(job_dir, spec, Limits(timeout_s=30, memory_mb=3000, max_pids=77), gpus=gpus or [], entry=entry)


# ---------------------------------------------------------------------------- arguments (no engine needed)


def test_create_kwargs_lock_the_container_down(tmp_path: Path) -> None:
    job = _job(tmp_path)
    kw = DockerSandbox().container_kwargs(job, job.job_dir, job.data_dir, "abc123")
    assert kw["network_mode"] == "none" and kw["read_only"] is True and kw["cap_drop"] == ["ALL"]
    assert kw["security_opt"] == ["no-new-privileges"] and kw["user"] == "65534:65534" and kw["init"] is True
    assert kw["mem_limit"] == kw["memswap_limit"] == "3000m" and kw["pids_limit"] == 77
    assert "/tmp" in kw["tmpfs"] and kw["shm_size"]
    assert kw["labels"][LABEL_JOB] == "abc123" and kw["labels"][LABEL_OWNER].endswith(f":{os.getpid()}")
    vols = kw["volumes"]
    assert vols[str(job.job_dir)]["mode"] == "rw" and vols[str(job.data_dir)]["mode"] == "ro"
    for p in python_paths():
        assert vols[str(p)] == {"bind": str(p), "mode": "ro"}
    assert kw["command"][-3:] == ["-m", "nncaption.sandbox.probe", str(job.job_dir)]
    assert kw["environment"]["CUDA_VISIBLE_DEVICES"] == "" and kw["environment"]["OMP_NUM_THREADS"] == "2"
    assert "device_requests" not in kw and "runtime" not in kw
    assert {u["Name"] for u in kw["ulimits"]} == {"cpu", "fsize", "core"}


def test_create_kwargs_gpu_path_and_runsc(tmp_path: Path) -> None:
    job = _job(tmp_path, gpus=[0, 2])
    kw = DockerSandbox(runtime="runsc", cpus=1.5).container_kwargs(job, job.job_dir, job.data_dir, "g")
    (req,) = kw["device_requests"]
    assert req["DeviceIDs"] == ["0", "2"] and req["Capabilities"] == [["gpu"]]
    assert kw["runtime"] == "runsc" and kw["nano_cpus"] == 1_500_000_000
    assert "CUDA_VISIBLE_DEVICES" not in kw["environment"]  # the container sees only its own GPUs


def test_image_with_its_own_python_mounts_nothing_from_the_host(tmp_path: Path) -> None:
    job = _job(tmp_path)
    kw = DockerSandbox(image="nncaption-sandbox:latest").container_kwargs(job, job.job_dir, job.data_dir, "x")
    assert kw["command"][0] == "python"
    assert set(kw["volumes"]) == {str(job.job_dir), str(job.data_dir)}


def test_apt_mirror_is_read_from_sources(tmp_path: Path) -> None:
    deb822 = tmp_path / "debian.sources"
    deb822.write_text("Types: deb\nURIs: http://mirror.example/debian-security\n\nTypes: deb\n"
                      "URIs: http://mirror.example/debian/\nSuites: bookworm\n")
    assert apt_mirror([deb822]) == "http://mirror.example/debian"
    legacy = tmp_path / "sources.list"
    legacy.write_text("# c\ndeb [arch=amd64] http://old.example/debian bookworm main\n")
    assert apt_mirror([legacy]) == "http://old.example/debian"


# ---------------------------------------------------------------------------- the real engine


@pytest.fixture(scope="module")
def engine() -> Any:
    client = docker_engine_or_skip()
    ensure_offline_image(client)
    return client


@pytest.mark.sandbox
@pytest.mark.docker
def test_probe_inside_the_container(engine: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-" + uuid.uuid4().hex)
    job = _job(tmp_path)
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(4)
        port = srv.getsockname()[1]
        (job.job_dir / "probe.json").write_text(json.dumps({
            "connect": [["127.0.0.1", port]],
            "write": [str(job.data_dir / "x"), "/etc/x", "/tmp/x"],
        }))
        result = get_sandbox("docker").run(job)
    assert result.status == OK, (result.message, result.stderr_tail)
    f = read_facts(job.job_dir)
    assert f["uid"] == 65534 and f["status"]["CapEff"] == "0" * 16 and f["status"]["NoNewPrivs"] == "1"
    assert f["interfaces"] == ["lo"] and not f["connect"][f"127.0.0.1:{port}"].startswith("connected")
    assert f["write"][str(job.data_dir / "x")].startswith("refused") and f["write"]["/etc/x"].startswith("refused")
    assert f["write"]["/tmp/x"] == "written"  # the private tmpfs
    assert "OPENAI_API_KEY" not in f["env"]
    mine = engine.api.containers(all=True, filters={"label": f"{LABEL_OWNER}={owner_label()}"})
    assert mine == [], "the job's container was not removed"


@pytest.mark.docker
def test_engine_accepts_the_gpu_request(engine: Any, tmp_path: Path) -> None:
    """Create (not start: there is no GPU here) a container with our GPU arguments; the engine records them."""
    job = _job(tmp_path, gpus=[1])
    kw = DockerSandbox().container_kwargs(job, job.job_dir, job.data_dir, uuid.uuid4().hex[:12])
    container = engine.containers.create(**kw)
    try:
        (req,) = container.attrs["HostConfig"]["DeviceRequests"]
        assert req["DeviceIDs"] == ["1"] and req["Capabilities"] == [["gpu"]]
        assert container.attrs["HostConfig"]["NetworkMode"] == "none"
        assert container.attrs["HostConfig"]["ReadonlyRootfs"] is True
    finally:
        container.remove(force=True)


@pytest.mark.docker
def test_orphans_of_a_dead_parent_are_reaped(engine: Any) -> None:
    dead = f"{socket.gethostname()}:{2**22 + 4242}"
    c = engine.containers.run(OFFLINE_IMAGE, ["sleep", "300"], detach=True, network_mode="none",
                              labels={LABEL_OWNER: dead, LABEL_JOB: "orphan"})
    alive = engine.containers.run(OFFLINE_IMAGE, ["sleep", "300"], detach=True, network_mode="none",
                                  labels={LABEL_OWNER: f"{socket.gethostname()}:{os.getpid()}", LABEL_JOB: "mine"})
    try:
        removed = DockerSandbox().reap_orphans()
        assert c.id[:12] in removed and alive.id[:12] not in removed
        names = {x["Id"] for x in engine.api.containers(all=True)}
        assert c.id not in names and alive.id in names
    finally:
        alive.remove(force=True)
        try:
            c.remove(force=True)
        except Exception as e:  # noqa: BLE001 - already reaped
            print(f"orphan container already gone: {e}")


@pytest.mark.sandbox
@pytest.mark.docker
def test_runsc_runtime_when_installed(engine: Any, tmp_path: Path) -> None:
    if "runsc" not in (engine.info().get("Runtimes") or {}):
        msg = "gVisor (runsc) is not registered with this docker engine (bash .ci/services.sh registers it)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)
    job = _job(tmp_path)  # max_pids=77: gVisor's own threads need the RUNSC_MIN_PIDS floor to start at all
    with get_sandbox("docker", runtime="runsc", prewarm=False) as sb:
        result = sb.run(job)
    assert result.status == OK and "runtime:runsc" in result.isolation, (result.message, result.stderr_tail)
    f = read_facts(job.job_dir)
    assert f["uid"] == 65534 and f["interfaces"] == ["lo"]


@pytest.mark.docker
def test_build_image_cli_is_idempotent(engine: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from nncaption.cli import main

    assert main(["sandbox", "build-image", "--offline"]) == 0
    out = capsys.readouterr().out
    assert "already exists" in out and OFFLINE_IMAGE in out


@pytest.mark.sandbox
@pytest.mark.docker
def test_disk_quota_and_outputs_whitelist_in_the_container(engine: Any, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("not root: the job stage cannot be a sized tmpfs")
    job = _job(tmp_path)
    job.limits.disk_mb = 160
    (job.job_dir / "probe.json").write_text(json.dumps({"fill": [5, 100], "tmp": True}))
    with get_sandbox("docker", prewarm=False) as sb:
        result = sb.run(job)
    assert result.status == OK, (result.message, result.stderr_tail)
    f = read_facts(job.job_dir)
    assert f["fill"] == "stopped at file 1: ENOSPC" and f["tmp"]["tempfile"].startswith("written: /tmp/")
    assert "disk-quota:160m" in result.isolation
    assert not list(tmp_path.rglob("fill-*")) and not list(tmp_path.glob(".nncaption-stage-*"))
    assert str(tmp_path) not in Path("/proc/self/mountinfo").read_text()


# ---------------------------------------------------------------------------- start-up check (issue 14)


def test_a_missing_image_is_a_configuration_error_before_any_job(tmp_path: Path, tiny_dataset: Any) -> None:
    """`run --sandbox docker` without the image must stop at start-up (exit 2), not fail every candidate."""
    from nncaption.netapi.errors import ConfigError
    from nncaption.sandbox.service import CandidateService

    docker_engine_or_skip()
    with DockerSandbox(image=f"nncaption-missing-{uuid.uuid4().hex[:8]}:offline", prewarm=False) as sb:
        with pytest.raises(ConfigError) as err:
            sb.preflight()
        assert err.value.exit_code == 2 and "does not exist" in err.value.message
        assert "nncaption sandbox build-image --offline" in err.value.hint
        service = CandidateService(tiny_dataset, sb, jobs_root=tmp_path / "jobs")
        with pytest.raises(ConfigError):
            service.preflight()  # the engine's start-up calls this before any candidate
    assert not (tmp_path / "jobs").exists() or not any((tmp_path / "jobs").iterdir())
