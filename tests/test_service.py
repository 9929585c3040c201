"""The candidate service (nncaption.sandbox.service): typed results, content-addressed jobs, smoke first.

Real parts throughout: the local sandbox, the runner, the tiny prepared dataset.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest
from tiny_candidates import tiny_candidate

from nncaption.netapi.categories import Category
from nncaption.netapi.job import JobSpec
from nncaption.sandbox import get_sandbox
from nncaption.sandbox.jobstore import REPORT_FILE, JobStore, job_key, remove_tree
from nncaption.sandbox.report import CheckResult, EvalReport, ReportStatus, Stage
from nncaption.sandbox.service import CandidateService, EvalSettings, validate_prm

CANDIDATES = Path(__file__).parent / "candidates"
FAST = {"epochs": 1, "max_train_batches": 1, "max_val_images": 8, "threads": 1}


def service(tiny_dataset: Any, tmp_path: Path, **settings: Any) -> CandidateService:
    return CandidateService(tiny_dataset, get_sandbox("local"), jobs_root=tmp_path / "jobs",
                            settings=EvalSettings(**{**FAST, **settings}))


def empty_decode_candidate() -> str:
    """Trains properly, but its free-running decode returns zero tokens per image."""
    source = tiny_candidate(output="ids")
    assert "        if OUTPUT == \"ids\":\n            return ids\n" in source
    return source.replace("        if OUTPUT == \"ids\":\n            return ids\n",
                          "        if OUTPUT == \"ids\":\n            return ids[:, :0]\n")


# --------------------------------------------------------------------------- hyperparameters


@pytest.mark.parametrize(
    ("prm", "words"),
    [
        ({"lr": 0.0}, "'lr'"),
        ({"lr": 1.5}, "'lr'"),
        ({"momentum": 1.0}, "'momentum'"),
        ({"dropout": -0.1}, "'dropout'"),
        ({"batch": 0}, "'batch'"),
        ({"batch": 3.5}, "'batch'"),
        ({"lr": float("nan")}, "'lr'"),
        ({"lr": True}, "'lr'"),
        ({"not a name": 1}, "identifier"),
    ],
)
def test_bad_hyperparameters_are_a_value_and_run_nothing(prm: dict[str, Any], words: str, tiny_dataset: Any,
                                                         tmp_path: Path) -> None:
    svc = service(tiny_dataset, tmp_path)
    check = asyncio.run(svc.check(tiny_candidate(), prm))
    report = asyncio.run(svc.evaluate(tiny_candidate(), prm))
    for result in (check, report):
        assert result.category == Category.BAD_HYPERPARAMETERS and result.stage == Stage.HYPERPARAMETERS
        assert words in result.message
    assert report.status == ReportStatus.FAILED and report.bleu4 is None and report.job_id is None
    assert not (tmp_path / "jobs").exists() or not any((tmp_path / "jobs").iterdir())


def test_prm_is_checked_and_merged_over_the_defaults(tiny_dataset: Any, tmp_path: Path) -> None:
    assert validate_prm({"lr": 1, "batch": 16.0, "hidden": 64}) == ({"lr": 1.0, "batch": 16, "hidden": 64}, None)
    svc = service(tiny_dataset, tmp_path, epochs=2, batch_size=32)
    prm, batch = svc.effective_prm({"lr": 0.05, "batch": 8})
    assert batch == 8 and prm["lr"] == 0.05 and prm["momentum"] == 0.9 and prm["epoch"] == 2 and prm["batch"] == 8
    spec = svc.train_spec(prm, batch)
    assert spec.batch_size == 8 and spec.prm["lr"] == 0.05 and spec.epochs == 2


# --------------------------------------------------------------------------- content addresses


def test_job_key_is_a_content_address() -> None:
    spec = JobSpec(data_dir="/a", epochs=2, prm={"lr": 0.001})
    key = job_key("code", spec, "data1")
    assert len(key) == 32 and key == job_key("code", JobSpec(data_dir="/elsewhere", epochs=2, prm={"lr": 0.001},
                                                              threads=4), "data1")
    assert key != job_key("code ", spec, "data1")
    assert key != job_key("code", spec, "data2")
    assert key != job_key("code", JobSpec(data_dir="/a", epochs=3, prm={"lr": 0.001}), "data1")
    assert key != job_key("code", JobSpec(data_dir="/a", epochs=2, prm={"lr": 0.002}), "data1")


def test_records_are_read_back_only_from_regular_files(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    job_id = "0" * 32
    store.job_dir(job_id).mkdir(parents=True)
    store.write_record(job_id, REPORT_FILE, {"a": float("nan"), "b": [1, 2]})
    assert json.loads((store.job_dir(job_id) / REPORT_FILE).read_text()) == {"a": None, "b": [1, 2]}
    assert store.read_record(job_id, REPORT_FILE) == {"a": None, "b": [1, 2]}
    (tmp_path / "elsewhere.json").write_text('{"forged": true}')
    (store.job_dir(job_id) / REPORT_FILE).unlink()
    os.symlink(tmp_path / "elsewhere.json", store.job_dir(job_id) / REPORT_FILE)
    assert store.read_record(job_id, REPORT_FILE) is None
    with pytest.raises(ValueError):
        store.job_dir("../../etc")


@pytest.mark.slow  # over a second of real work or waiting (training, timeouts, servers, subprocesses)
def test_a_deep_folder_chain_is_removed_without_recursion(tmp_path: Path) -> None:
    top = tmp_path / "deep"
    top.mkdir()
    fd = os.open(top, os.O_RDONLY)
    try:  # 1,500 levels, built relative to an fd (the path itself would be too long)
        for _ in range(1500):
            os.mkdir("d", dir_fd=fd)
            new = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = new
    finally:
        os.close(fd)
    assert remove_tree(top) and not top.exists()


def test_reports_round_trip_as_strict_json() -> None:
    report = EvalReport(status=ReportStatus.FAILED, category=Category.NAN, message="loss \x1b[31mNaN",
                        stage=Stage.TRAIN, timings={"train_s": float("inf"), "x": 1.5}, prm={"lr": 0.1})
    text = json.dumps(report.to_dict(), allow_nan=False)
    back = EvalReport.from_dict(json.loads(text))
    assert back.category == Category.NAN and back.status == ReportStatus.FAILED and back.timings == {"x": 1.5}
    assert "\x1b" not in back.message and back.hint == Category.NAN.hint
    with pytest.raises(ValueError):
        EvalReport.from_dict({**json.loads(text), "format": 99})
    check = CheckResult(False, Stage.SMOKE, Category.LEARN_ERROR, "m", 3, "f" * 32, {"smoke_s": 1.0})
    assert CheckResult.from_dict(check.to_dict()) == check


# --------------------------------------------------------------------------- the pipeline, in the local sandbox


@pytest.mark.sandbox
def test_running_the_identical_job_twice_trains_once(tiny_dataset: Any, tmp_path: Path) -> None:
    svc = service(tiny_dataset, tmp_path)
    prm = {"lr": 0.0123, "batch": 8}
    events: list[dict[str, Any]] = []
    first = asyncio.run(svc.evaluate(tiny_candidate(), prm, on_event=events.append))
    assert first.status == ReportStatus.OK, first.message
    assert not first.reused and first.bleu4 is not None and first.epochs and first.job_id
    assert any(e.get("event") == "start" for e in events)  # the runner ran
    job_dir = Path(first.job_dir or "")
    assert job_dir == tmp_path / "jobs" / first.job_id
    assert EvalReport.from_dict(json.loads((job_dir / REPORT_FILE).read_text())).bleu4 == first.bleu4
    # the prm the job spec gave training: the candidate's lr and batch
    ran = json.loads((job_dir / "job" / "job.json").read_text())
    assert ran["prm"]["lr"] == 0.0123 and ran["batch_size"] == 8 and first.prm["lr"] == 0.0123
    assert first.optimizer_lr == pytest.approx(0.0123)  # what the candidate's optimiser held, as the runner saw it
    result_mtime = (job_dir / "job" / "result.json").stat().st_mtime_ns

    events.clear()
    again = asyncio.run(svc.evaluate(tiny_candidate(), prm, on_event=events.append))
    assert again.reused and again.job_id == first.job_id and again.bleu4 == first.bleu4
    assert not any(e.get("event") == "start" for e in events)  # nothing ran
    assert (job_dir / "job" / "result.json").stat().st_mtime_ns == result_mtime

    other = asyncio.run(svc.evaluate(tiny_candidate(), {"lr": 0.0124, "batch": 8}))
    assert other.job_id != first.job_id


@pytest.mark.sandbox
def test_identical_jobs_at_once_train_once(tiny_dataset: Any, tmp_path: Path) -> None:
    svc = service(tiny_dataset, tmp_path)

    async def both() -> list[EvalReport]:
        return list(await asyncio.gather(svc.evaluate(tiny_candidate()), svc.evaluate(tiny_candidate())))

    a, b = asyncio.run(both())
    assert a.status == b.status == ReportStatus.OK and a.job_id == b.job_id
    assert sorted([a.reused, b.reused]) == [False, True]


@pytest.mark.sandbox
@pytest.mark.parametrize("source", ["bad_no_update", "empty_decode"])
def test_evaluate_fails_fast_with_the_category_check_gives(source: str, tiny_dataset: Any, tmp_path: Path) -> None:
    code = (CANDIDATES / "bad_no_update.py").read_text() if source == "bad_no_update" else empty_decode_candidate()
    svc = service(tiny_dataset, tmp_path, epochs=2)
    check = asyncio.run(svc.check(code))
    assert not check.ok and check.stage == Stage.SMOKE and check.category is not None
    assert check.job_id and check.job_dir == str(tmp_path / "jobs" / check.job_id)
    assert (Path(check.job_dir) / "job" / "result.json").is_file()  # the smoke job's files, for traces
    report = asyncio.run(svc.evaluate(code))
    assert report.smoke_job_id == check.job_id
    assert report.status == ReportStatus.FAILED and report.category == check.category
    assert report.stage == Stage.SMOKE and report.bleu4 is None and report.epochs == []
    assert report.job_id and not (tmp_path / "jobs" / report.job_id / "job").exists()  # no training job ran


def test_static_rejection_runs_nothing(tiny_dataset: Any, tmp_path: Path) -> None:
    code = tiny_candidate().replace("import time\n", "import time\nimport subprocess\n", 1)
    report = asyncio.run(service(tiny_dataset, tmp_path).evaluate(code))
    assert report.status == ReportStatus.FAILED and report.stage == Stage.STATIC
    assert report.category == Category.FORBIDDEN_CALL and report.job_id is None and report.line
    assert not (tmp_path / "jobs").exists() or not any((tmp_path / "jobs").iterdir())  # no job dir either


def test_only_outcomes_that_speak_for_the_candidate_are_reused() -> None:
    from nncaption.sandbox.report import reusable

    assert reusable(ReportStatus.OK, None) and reusable(ReportStatus.FAILED, Category.LEARN_ERROR)
    # time limits count the candidate's own compute: its timeouts, OOM kills and crashes are its own (issue 14)
    for status, category in [(ReportStatus.TIMEOUT, Category.TIMEOUT), (ReportStatus.FAILED, Category.CRASHED),
                             (ReportStatus.OUT_OF_MEMORY, Category.OUT_OF_MEMORY), (ReportStatus.CRASHED,
                                                                                     Category.CRASHED)]:
        assert reusable(status, category)
    # the machine's failures ("machine overloaded" is a job-error), interruptions, cancellations, outside kills
    machine: list[tuple[ReportStatus, Category | None]] = [
        (ReportStatus.FAILED, Category.JOB_ERROR), (ReportStatus.FAILED, Category.INTERRUPTED),
        (ReportStatus.CANCELLED, None), (ReportStatus.KILLED, Category.CRASHED)]
    for status, cat in machine:
        assert not reusable(status, cat)


def test_a_smoke_job_without_a_verdict_is_a_candidate_failure() -> None:
    from nncaption.sandbox.base import RunResult, RunStatus

    result = RunResult(status=RunStatus.FAILED, category="crashed", message="exited early \x1b[2J",
                       stderr_tail="Traceback ...\nSystemExit: 3", verdict=None)
    check = CandidateService._check_from_result(result, "a" * 32, {})
    assert not check.ok and check.stage == Stage.SMOKE and check.category == Category.CRASHED
    assert "\x1b" not in check.message and "SystemExit" in check.message
    forged = RunResult(status=RunStatus.FAILED, category="shape-error", verdict={"ok": True, "stage": "smoke"})
    assert not CandidateService._check_from_result(forged, "a" * 32, {}).ok  # a verdict contradicting the job
