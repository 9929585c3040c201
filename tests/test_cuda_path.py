"""The CUDA path as far as a machine without a GPU can check it.

Found on an H200 (evals/gpu_doctor.py): the runner's torch warm-up ran one backward pass before forking the
candidate; that starts autograd's device threads, which initialises the CUDA driver, and the forked candidate
then failed every `.to("cuda")` with "CUDA error: initialization error", reported as the candidate's
`init-error`. Here: no backward before the fork for a CUDA job, and a job whose CUDA is not usable ends as a
`job-error` (not the candidate's fault, never sent to the fixer) before any candidate code runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from nncaption.graph.journal import NOT_DEBUGGABLE
from nncaption.netapi import train
from nncaption.netapi.categories import Category
from nncaption.netapi.childlink import ChildLink
from nncaption.netapi.evaluate import make_job_dir
from nncaption.netapi.job import JobSpec, RunnerResult, RunnerStatus, read_result
from nncaption.sandbox import Job, Limits, get_sandbox

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the path of a machine without CUDA")


def test_runner_warm_up_runs_no_backward_pass_for_a_cuda_job(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = torch.autograd.backward

    def counting(*args: Any, **kwargs: Any) -> None:
        calls.append("backward")
        real(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "backward", counting)
    train._warm_up_torch("cuda:0")
    assert calls == []
    train._warm_up_torch("cpu")  # the CPU warm-up still pays torch's lazy imports before the fork
    assert calls == ["backward"]


@pytest.mark.sandbox
@no_cuda
def test_cuda_job_without_usable_cuda_is_a_job_error_before_candidate_code(tmp_path: Path, tiny_dataset: Any) -> None:
    code = "raise RuntimeError('the candidate was imported')\n"  # any candidate category would mean it ran
    spec = JobSpec(data_dir=str(tiny_dataset.public_dir), device="cuda")
    job_dir = make_job_dir(tmp_path / "job", code, spec)
    assert train.run_job(job_dir) == 2
    runner = read_result(job_dir)
    assert runner is not None and runner.status is RunnerStatus.ERROR and runner.category is None
    assert "CUDA is not available in the job" in runner.message

    job_dir = make_job_dir(tmp_path / "sandboxed", code, spec)
    with get_sandbox("local", prewarm=False) as sandbox:
        result = sandbox.run(Job(job_dir, spec, Limits(timeout_s=120), gpus=[0]))
    assert not result.ok and result.category == "job-error", (result.category, result.message)
    assert "CUDA is not available in the job" in result.message
    assert "job-error" in NOT_DEBUGGABLE  # the search does not ask the fixer to repair the machine


def test_a_candidates_own_failure_report_cannot_claim_the_machine_failed() -> None:
    link = ChildLink(JobSpec(data_dir="."), RunnerResult(status=RunnerStatus.FAILED), own_process=False, smoke=True)
    for claimed, kept in (("job-error", Category.CRASHED), ("bad-hyperparameters", Category.CRASHED),
                          ("nan", Category.NAN), ("no-such-category", Category.CRASHED)):
        failure = link._child_failure({"type": "fail", "category": claimed, "message": "m"})
        assert failure.category is kept, (claimed, failure.category)
