"""Hyperparameters travel with the candidate all the way into training.

A baseline design's sampled learning rate and batch size are the ones its training used: read back from the
job spec the sandbox ran (job.json in the job directory) and from the candidate's optimiser (the runner's
record). The baseline's fix after a NaN lowers the learning rate that trains next, not a comment line.
Real parts: the in-process baseline, the candidate service, the local sandbox, the runner, the tiny dataset.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from nncaption.agents.baseline import BaselineDesigner, BaselineFixer
from nncaption.agents.protocols import DesignRequest
from nncaption.sandbox import get_sandbox
from nncaption.sandbox.jobstore import RUN_SUBDIR
from nncaption.sandbox.report import ReportStatus
from nncaption.sandbox.service import CandidateService, EvalSettings

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(600)]


def trained_spec(job_dir: str | None) -> dict[str, Any]:
    """The job.json the sandbox ran for a report's job."""
    assert job_dir is not None
    spec = json.loads((Path(job_dir) / RUN_SUBDIR / "job.json").read_text(encoding="utf-8"))
    assert isinstance(spec, dict)
    return spec


def test_sampled_and_repaired_learning_rates_are_the_ones_training_used(tiny_dataset: Any, tmp_path: Path) -> None:
    svc = CandidateService(tiny_dataset, get_sandbox("local"), jobs_root=tmp_path / "jobs",
                           settings=EvalSettings(epochs=1, max_train_batches=1, max_val_images=8, threads=1))
    design = asyncio.run(BaselineDesigner(5).design(DesignRequest(seed=3, k=5, decoder="gru")))
    lr, batch = design.prm["lr"], design.prm["batch"]

    report = asyncio.run(svc.evaluate(design.code, design.prm))
    assert report.status == ReportStatus.OK, (report.category, report.message)
    spec = trained_spec(report.job_dir)
    assert spec["prm"]["lr"] == lr and spec["batch_size"] == batch == spec["prm"]["batch"]
    assert spec["prm"]["hidden"] == design.prm["hidden"] and spec["prm"]["embed"] == design.prm["embed"]
    assert report.optimizer_lr == pytest.approx(lr)  # what the candidate's optimiser held

    fixed = asyncio.run(BaselineFixer().fix(design.code, design.prm, "category nan: the loss became NaN"))
    assert fixed.prm["lr"] == pytest.approx(round(lr / 3, 6))
    again = asyncio.run(svc.evaluate(fixed.code, fixed.prm))
    assert again.status == ReportStatus.OK, (again.category, again.message)
    assert trained_spec(again.job_dir)["prm"]["lr"] == fixed.prm["lr"]
    assert again.optimizer_lr == pytest.approx(fixed.prm["lr"]) and again.job_id != report.job_id
