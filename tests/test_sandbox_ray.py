"""The ray backend on a local Ray instance: reference models and a failing job run as Ray tasks."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sandbox_support import make_job

from nncaption.netapi.evaluate import make_job_dir
from nncaption.netapi.reference import path as reference_path
from nncaption.sandbox import CRASHED, KILLED, OK, OUT_OF_MEMORY, Job, Limits, get_sandbox
from nncaption.sandbox.ray_backend import RaySandbox, result_for_ray_error

pytestmark = [pytest.mark.sandbox, pytest.mark.ray]


@pytest.fixture(scope="module")
def ray_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RaySandbox]:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    temp = tmp_path_factory.mktemp("ray")
    sb = get_sandbox("ray", local_num_cpus=2, init_options={"_temp_dir": str(temp)})
    assert isinstance(sb, RaySandbox)
    with sb:
        yield sb


def test_four_jobs_on_local_ray(ray_sandbox: RaySandbox, tmp_path: Path, tiny_dataset: Any) -> None:
    data_dir = Path(tiny_dataset.public_dir)
    jobs: list[Job] = []
    for name in ("lstm", "gru", "transformer"):
        job = make_job(tmp_path / name, data_dir, "good", timeout_s=120.0)
        make_job_dir(job.job_dir, reference_path(name).read_text(), job.spec)
        jobs.append(job)
    jobs.append(make_job(tmp_path / "segfault", data_dir, "segfault", timeout_s=120.0))
    events: list[dict[str, Any]] = []
    results = ray_sandbox.run_many(jobs, on_event=events.append)
    assert len(results) == 4
    for r in results[:3]:
        assert r.status == OK, (r.status, r.message, r.stderr_tail[-800:])
        assert r.backend == "ray/local" and r.predictions and any(m.startswith("ray-node:") for m in r.isolation)
    assert results[3].status == CRASHED and results[3].category == "crashed"
    assert {e["job"] for e in events} == {0, 1, 2, 3}
    assert any(e.get("event") == "first_batch" for e in events)


def test_worker_loss_maps_to_statuses() -> None:
    import ray.exceptions as rex

    assert result_for_ray_error(rex.WorkerCrashedError()).status == KILLED
    assert result_for_ray_error(rex.NodeDiedError("node-1")).status == KILLED
    oom = result_for_ray_error(rex.OutOfMemoryError("memory monitor"))
    assert (oom.status, oom.category) == (OUT_OF_MEMORY, "out-of-memory")


def test_ray_backend_refuses_unknown_inner_backend() -> None:
    from nncaption.netapi.errors import ConfigError

    with pytest.raises(ConfigError):
        RaySandbox(backend="ray")
    assert Limits().timeout_s > 0


@pytest.mark.parametrize("address", ["127.0.0.1:1", "ray://127.0.0.1:1", "ray://:10001"])
def test_unreachable_ray_address_fails_fast_with_one_clear_error(
    tmp_path: Path, address: str, capfd: pytest.CaptureFixture[str]
) -> None:
    import time

    from nncaption.netapi.errors import ConfigError
    from nncaption.netapi.job import JobSpec
    from nncaption.sandbox.ray_backend import RayUnreachable

    job = Job(tmp_path, JobSpec(data_dir=str(tmp_path)), Limits())
    t0 = time.monotonic()
    with get_sandbox("ray", address=address) as sb:
        with pytest.raises(RayUnreachable) as err:
            sb.run(job)
    assert time.monotonic() - t0 < 10
    assert isinstance(err.value, ConfigError) and err.value.category and "ray-address" in str(err.value.hint)
    out, errout = capfd.readouterr()
    assert "raylet" not in (out + errout).lower() and "gcs" not in (out + errout).lower()
