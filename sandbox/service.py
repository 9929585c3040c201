"""The candidate service: check a candidate, train and score it, below the CLI and the graph.

    service = CandidateService(resolve_dataset("synthetic"), get_sandbox("local"),
                               jobs_root=home / "jobs", settings=EvalSettings(epochs=3))
    service.preflight()                       # settings, device, sandbox (docker image), dataset: errors up front
    check = await service.check(code, prm)    # static, then smoke in the sandbox -> CheckResult
    report = await service.evaluate(code, prm, on_event=print)   # smoke first (fail fast), train, score

A candidate's failure is a value (CheckResult / EvalReport with a category,
message and traceback tail), never an exception: the graph checkpoints it as
JSON. Only the caller's own mistakes raise (`NNCaptionError`: bad settings,
missing dataset, CUDA requested without CUDA), and `preflight()` finds those
before any job starts.

`EvalSettings` and `validate_prm` live in sandbox.settings (re-exported here).
Jobs are content-addressed (sandbox.jobstore): an identical job (same code,
normalised spec and dataset version) returns its recorded result with
`reused=True` instead of running again, a failure of the candidate's own
(timeout, out-of-memory, crash, learn error, ...) as well as a success;
job-errors are never reused (sandbox.report.reusable).

Time limits count the candidate's own compute (CPU time per allotted core on
CPU, wall time on a GPU; netapi.compute), with a wall-clock backstop of 3x. A
job stopped by the backstop while the machine starved it of CPU is a job-error
("machine overloaded", `RunResult.overloaded`): it runs once more after a
pause (`EvalSettings.overload_retries`, `overload_retry_pause_s`).

Progress events reach `on_event` as the runner writes them (bounded and
validated, sandbox.streams.ProgressTail), each a flat dict with "event" and
"t" (the job's clock, seconds since the epoch), plus "job_id"/"stage" for the
service's own events:

    {"event": "stage", "stage": "smoke"|"train"|"score", "job_id": ...}     the service
    {"event": "reused", "stage": ..., "job_id": ...}                        the service: a recorded result
    {"event": "retry", "reason": "machine overloaded", "pause_s": ..., "job_id": ...}
    {"event": "start", "epochs": E, "mode": "smoke"|"train", "device": ..., "seed": ...}
    {"event": "model", "params": N, "in_shape": [...], "vocab_size": V}
    {"event": "epoch_start", "epoch": e, "epochs": E, "batches": B}
    {"event": "batch", "epoch": e, "epochs": E, "batch": b, "batches": B, "loss": x|None}
        throttled: at most about one a second, plus the last batch of each epoch
    {"event": "epoch_end", "epoch": e, "epochs": E, "seconds": wall s, "cpu_s": CPU s, "loss": x|None}
    {"event": "decoded", "epoch": e, "seconds": s, "images": n}
    {"event": "done", "epochs": E, "seconds": s}   or   {"event": "error", "category": ..., "message": ...}

Every value may have been forged by the candidate (the file is in its job
directory): use them for display only.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nncaption.netapi.categories import Category, Verdict
from nncaption.netapi.errors import ConfigError, EnvironmentProblem
from nncaption.netapi.job import DEFAULT_PRM, JobSpec
from nncaption.netapi.safetext import safe_text

from .base import RUNNER_ENTRY, Job, Limits, RunResult, Sandbox
from .jobstore import CHECK_FILE, REFERENCE_DIR, REPORT_FILE, JobStore, job_key, safe_name
from .report import (
    CheckResult,
    EvalReport,
    Example,
    ReportStatus,
    Stage,
    failed_report,
    reusable,
)
from .scoring import DatasetFacts, PredictionError, score_predictions, suspicion
from .settings import EvalSettings, Prm, validate_prm

if TYPE_CHECKING:
    from nncaption.netapi.data.prepare import PreparedPaths

__all__ = ["CandidateService", "EvalSettings", "EventCallback", "Prm", "validate_prm"]

log = logging.getLogger(__name__)

EventCallback = Callable[[dict[str, Any]], None]

def _spec(**values: Any) -> JobSpec:
    """A JobSpec from `values`, leaving out fields this version of JobSpec does not have."""
    known = {f.name for f in fields(JobSpec)}
    return JobSpec(**{k: v for k, v in values.items() if k in known})


class CandidateService:
    """Check, train and score candidates on one prepared dataset, in one sandbox backend."""

    def __init__(self, data: PreparedPaths, sandbox: Sandbox, *, jobs_root: Path,
                 settings: EvalSettings | None = None) -> None:
        self.data = data
        self.sandbox = sandbox
        self.settings = settings or EvalSettings()
        self.store = JobStore(jobs_root)
        self._facts: DatasetFacts | None = None

    # ------------------------------------------------------------ set-up

    def preflight(self) -> DatasetFacts:
        """The caller's problems, before any job starts: settings, device, the sandbox (the docker image exists),
        dataset (NNCaptionError when wrong: ConfigError, exit 2, for what the user must set up)."""
        self.settings.validate()
        sandbox_preflight = getattr(self.sandbox, "preflight", None)
        if callable(sandbox_preflight):
            sandbox_preflight()
        if self.settings.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise ConfigError("device cuda was requested but no CUDA device is visible",
                                  "use --device cpu, or run on a machine with a GPU")
        try:
            self.store.root.mkdir(parents=True, exist_ok=True)
            probe = self.store.root / f".probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise EnvironmentProblem(f"the jobs folder {self.store.root} is not writable ({e.strerror or e})",
                                     "point NNCAPTION_HOME (or jobs_root) at a folder you can write") from None
        if self._facts is None:
            self._facts = DatasetFacts.load(self.data, self.settings.max_val_images)
        return self._facts

    def effective_prm(self, prm: Mapping[str, Any] | None) -> tuple[Prm, int]:
        """(the prm training gets, batch size): defaults, then the candidate's, then batch and epoch from the job."""
        checked, problem = validate_prm(prm)
        if problem:
            raise ValueError(problem)
        batch = int(checked.get("batch", self.settings.batch_size))
        out: Prm = {k: v for k, v in DEFAULT_PRM.items() if k not in ("batch", "epoch")}
        out.update(checked)
        out["batch"], out["epoch"] = batch, self.settings.epochs
        return out, batch

    def train_spec(self, prm: Prm, batch: int) -> JobSpec:
        s = self.settings
        return _spec(data_dir=str(self.data.public_dir), epochs=s.epochs, batch_size=batch, prm=dict(prm), seed=s.seed,
                     device=s.device, epoch_time_limit_s=float(s.epoch_time_limit_s),
                     decode_time_limit_s=s.decode_time_limit_s, setup_time_limit_s=float(s.setup_time_limit_s),
                     max_params=s.max_params, max_train_batches=s.max_train_batches, max_val_images=s.max_val_images,
                     threads=s.threads, mode="train")

    def smoke_spec(self, prm: Prm, batch: int) -> JobSpec:
        """The tiny smoke job of the training spec (the runner's own definition: netapi.job.JobSpec.smoke)."""
        return self.train_spec(prm, batch).smoke(time_limit_s=float(self.settings.smoke_time_limit_s))

    # ------------------------------------------------------------ check

    async def check(self, code: str, prm: Mapping[str, Any] | None = None, *,
                    on_event: EventCallback | None = None) -> CheckResult:
        """Static check, then the smoke job in the sandbox (content-addressed: an identical check is reused)."""
        emit = on_event or (lambda event: None)
        t0 = time.monotonic()
        try:
            eff, batch = self.effective_prm(prm)
        except ValueError as e:
            return CheckResult(False, Stage.HYPERPARAMETERS, Category.BAD_HYPERPARAMETERS, str(e))
        from nncaption.netapi.validate import static_check

        verdict = await asyncio.to_thread(static_check, code)
        timings = {"static_s": round(time.monotonic() - t0, 3)}
        if not verdict.ok:
            return CheckResult(False, Stage.STATIC, verdict.category, safe_text(verdict.message, 4000, keep="head"),
                               verdict.line, timings=timings)
        self.preflight()
        spec = self.smoke_spec(eff, batch)
        job_id = job_key(code, spec, self.data.key)
        emit({"event": "stage", "stage": Stage.SMOKE.value, "job_id": job_id})
        async with self.store.lock(job_id):
            if self.settings.reuse and (old := self._recorded_check(job_id)) is not None:
                emit({"event": "reused", "stage": Stage.SMOKE.value, "job_id": job_id})
                return old
            t1 = time.monotonic()
            result = await self._run_fresh(job_id, code, spec, emit)
            timings["smoke_s"] = round(time.monotonic() - t1, 3)
            check = self._check_from_result(result, job_id, timings)
            check.job_dir = str(self.store.job_dir(job_id))
            if reusable(ReportStatus.OK if check.ok else ReportStatus(_status(result)), check.category):
                self.store.write_record(job_id, CHECK_FILE, check.to_dict())
            return check

    def _recorded_check(self, job_id: str) -> CheckResult | None:
        raw = self.store.read_record(job_id, CHECK_FILE)
        if raw is None:
            return None
        try:
            old = CheckResult.from_dict(raw)
        except (ValueError, TypeError, KeyError) as e:
            log.warning("job %s: check.json is not a CheckResult (%s); checking again", job_id, e)
            return None
        old.reused = True
        return old

    def _job(self, run_dir: Path, code: str, spec: JobSpec) -> Job:
        """Lay out the sandbox's job directory (candidate.py, job.json) and the Job with its tight backstop."""
        from nncaption.netapi.evaluate import make_job_dir

        make_job_dir(run_dir, code, spec)
        gpus, num_gpus = self._gpus(spec)
        limits = self._limits(spec.wall_clock_limit_s(self.settings.startup_slack_s))
        limits.compute_s = spec.compute_limit_s(self.settings.startup_slack_s)
        return Job(job_dir=run_dir, spec=spec, limits=limits, gpus=gpus, num_gpus=num_gpus, entry=RUNNER_ENTRY)

    @staticmethod
    def _check_from_result(result: RunResult, job_id: str, timings: dict[str, float]) -> CheckResult:
        timings = {**timings, **{f"sandbox_{k}": v for k, v in result.timings.items()}}
        raw = result.verdict
        verdict: Verdict | None = None
        try:
            if isinstance(raw, Verdict):
                verdict = raw
            elif isinstance(raw, dict):
                verdict = Verdict.from_dict(raw)
        except (KeyError, ValueError, TypeError) as e:
            log.warning("job %s: malformed smoke verdict (%s)", job_id, e)
        if verdict is not None and (_status(result) == ReportStatus.OK.value) == verdict.ok:
            return CheckResult(verdict.ok, Stage.SMOKE, verdict.category,
                               safe_text(verdict.message, 4000, keep="head"), verdict.line, job_id, timings)
        # no (or contradictory) verdict: a candidate failure, never the caller's; no job text becomes a hint
        category = _category(result.category) if not result.ok else Category.CRASHED
        tail = safe_text((result.traceback_tail or result.stderr_tail or "").strip(), 1500)
        message = f"the smoke check ended without a verdict ({_status(result)}): {safe_text(result.message, 800)}"
        if tail:
            message += f"\nstderr tail:\n{tail}"
        return CheckResult(False, Stage.SMOKE, category, message, None, job_id, timings)

    # ------------------------------------------------------------ evaluate

    async def evaluate(self, code: str, prm: Mapping[str, Any] | None = None, *,
                       on_event: EventCallback | None = None) -> EvalReport:
        """Smoke first (fail fast with its verdict), then train in the sandbox and score here; report.json kept."""
        emit = on_event or (lambda event: None)
        t0 = time.monotonic()
        try:
            eff, batch = self.effective_prm(prm)
        except ValueError as e:
            return failed_report(Stage.HYPERPARAMETERS, Category.BAD_HYPERPARAMETERS, str(e))
        from nncaption.netapi.validate import static_check

        static = await asyncio.to_thread(static_check, code)
        if not static.ok:  # never run code the static check rejects; no job, no job dir
            return failed_report(Stage.STATIC, static.category, static.message, line=static.line)
        facts = self.preflight()
        spec = self.train_spec(eff, batch)
        job_id = job_key(code, spec, self.data.key)
        common: dict[str, Any] = {"job_id": job_id, "job_dir": str(self.store.job_dir(job_id)), "prm": dict(eff),
                                  "dataset_key": facts.key, "dataset_name": facts.name,
                                  "sandbox": getattr(self.sandbox, "name", "")}
        async with self.store.lock(job_id):
            if self.settings.reuse and (old := self._recorded_report(job_id)) is not None:
                emit({"event": "reused", "stage": Stage.TRAIN.value, "job_id": job_id})
                return old
            check = await self.check(code, eff, on_event=on_event)
            common["smoke_job_id"] = check.job_id
            if not check.ok:  # the same verdict `check` gives, before any epoch is trained
                report = failed_report(check.stage, check.category, check.message, line=check.line,
                                       timings=dict(check.timings), **common)
                self._record(job_id, report)
                return report
            emit({"event": "stage", "stage": Stage.TRAIN.value, "job_id": job_id})
            t1 = time.monotonic()
            result = await self._run_fresh(job_id, code, spec, emit)
            timings = {**check.timings, "train_s": round(time.monotonic() - t1, 3),
                       **{f"sandbox_{k}": v for k, v in result.timings.items()}}
            emit({"event": "stage", "stage": Stage.SCORE.value, "job_id": job_id})
            report = await asyncio.to_thread(self._report, result, facts, timings, common)
            report.timings["total_s"] = round(time.monotonic() - t0, 3)
            self._record(job_id, report)
            self._note_reference(code, report)
            return report

    def _recorded_report(self, job_id: str) -> EvalReport | None:
        raw = self.store.read_record(job_id, REPORT_FILE)
        if raw is None:
            return None
        try:
            old = EvalReport.from_dict(raw)
        except (ValueError, TypeError, KeyError) as e:
            log.warning("job %s: report.json is not an EvalReport (%s); training again", job_id, e)
            return None
        if old.job_id != job_id or not reusable(old.status, old.category):
            return None
        old.reused = True
        return old

    def _record(self, job_id: str, report: EvalReport) -> None:
        self.store.write_record(job_id, REPORT_FILE, report.to_dict())

    def _report(self, result: RunResult, facts: DatasetFacts, timings: dict[str, float],
                common: dict[str, Any]) -> EvalReport:
        runner = result.runner
        params = runner.params if runner is not None and isinstance(runner.params, int) else None
        optimizer_lr = getattr(runner, "optimizer_lr", None)
        extra = {**common, "params": params, "timings": timings, "isolation": list(result.isolation),
                 "optimizer_lr": optimizer_lr if isinstance(optimizer_lr, float) and math.isfinite(optimizer_lr)
                 else None}
        if not result.ok:
            return failed_report(Stage.TRAIN, _category(result.category), result.message,
                                 status=ReportStatus(_status(result)), traceback_tail=result.traceback_tail,
                                 **extra)
        try:
            scored = score_predictions(result.predictions, facts, epochs=self.settings.epochs, params=params)
        except PredictionError as e:
            return failed_report(Stage.SCORE, Category.EVAL_CONTRACT, f"{e}", **extra)
        report = EvalReport(status=ReportStatus.OK, stage=Stage.SCORE, message=safe_text(result.message, 800),
                            epochs=scored.epochs, bleu4=scored.bleu4, lemur_bleu4=scored.lemur_bleu4,
                            cider_d=scored.cider_d,
                            examples=[Example(str(e["image_id"]), safe_text(e["caption"], 300),
                                              safe_text(e["reference"], 300)) for e in scored.examples], **extra)
        if self.settings.baseline:
            report.baseline_bleu4, report.baseline_caption = facts.baseline()
        if report.bleu4 is not None:
            report.suspect, report.suspect_reason = suspicion(report.bleu4, facts, self.settings.suspect_bleu4,
                                                              self._reference_best())
        return report

    # ------------------------------------------------------------ what the reference models reach here

    def _reference_best(self) -> float | None:
        raw = self.store.read_record_at(self._reference_file())
        best = raw.get("best_bleu4") if raw else None
        return float(best) if isinstance(best, (int, float)) and math.isfinite(best) and 0 <= best <= 1 else None

    def _reference_file(self) -> Path:
        return self.store.root / REFERENCE_DIR / f"{safe_name(self.data.key)}.json"

    def _note_reference(self, code: str, report: EvalReport) -> None:
        """When `code` is a reference model that ended ok, keep the best BLEU-4 a reference reached on this dataset."""
        from nncaption.netapi import reference

        names = [n for n in reference.NAMES if reference.source(n) == code]
        if not names or not report.ok or report.bleu4 is None or report.suspect:
            return
        best = self._reference_best()
        if best is None or report.bleu4 > best:
            self.store.write_record_at(self._reference_file(), {"best_bleu4": report.bleu4, "model": names[0],
                                                                "job_id": report.job_id, "epochs": len(report.epochs)})

    # ------------------------------------------------------------ running

    def _gpus(self, spec: JobSpec) -> tuple[list[int], int]:
        """(Job.gpus, Job.num_gpus): one GPU for a CUDA job, from the sandbox's GpuAllocator when it has one."""
        if not spec.device.startswith("cuda"):
            return [], 0
        if getattr(self.sandbox, "gpus", None) is not None:  # BaseSandbox(gpu_allocator=...): it hands out devices
            return [], 1
        return [0], 1

    def _limits(self, timeout_s: float) -> Limits:
        limits = Limits(timeout_s=timeout_s)
        if self.settings.memory_mb is not None:
            limits.memory_mb = self.settings.memory_mb
        return limits

    async def _run_fresh(self, job_id: str, code: str, spec: JobSpec, emit: EventCallback) -> RunResult:
        """Run the job in a fresh run dir; a job the machine starved of CPU ("machine overloaded", a job-error that is
        not the candidate's) runs once more after `overload_retry_pause_s`, and its second result stands."""
        retries = self.settings.overload_retries
        while True:
            result = await self._run(self._job(self.store.fresh_run_dir(job_id), code, spec), emit)
            if not result.overloaded or retries <= 0:
                return result
            retries -= 1
            pause = self.settings.overload_retry_pause_s
            log.warning("job %s: %s; running it again in %g s", job_id, safe_text(result.message, 300), pause)
            emit({"event": "retry", "job_id": job_id, "reason": "machine overloaded", "pause_s": pause})
            await asyncio.sleep(pause)

    async def _run(self, job: Job, emit: EventCallback) -> RunResult:
        arun = getattr(self.sandbox, "arun", None)
        if arun is not None:
            result: RunResult = await arun(job, on_event=emit)
        else:  # a backend without async support: run it in a worker thread
            result = await asyncio.to_thread(self.sandbox.run, job, emit)
        return result

    # ------------------------------------------------------------ sync wrappers (the CLI)

    def check_sync(self, code: str, prm: Mapping[str, Any] | None = None, *,
                   on_event: EventCallback | None = None) -> CheckResult:
        return asyncio.run(self.check(code, prm, on_event=on_event))

    def evaluate_sync(self, code: str, prm: Mapping[str, Any] | None = None, *,
                      on_event: EventCallback | None = None) -> EvalReport:
        return asyncio.run(self.evaluate(code, prm, on_event=on_event))


def _status(result: RunResult) -> str:
    """The RunResult status as its string value (an enum member or, from older backends, a plain string)."""
    status: Any = result.status
    return str(getattr(status, "value", status))


def _category(value: Any) -> Category:
    """A Category from a job's category string; anything unknown is `crashed`."""
    try:
        return Category(value)
    except ValueError:
        return Category.CRASHED
