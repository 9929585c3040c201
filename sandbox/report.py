"""Typed results of the candidate service: `CheckResult`, `EvalReport` and their enums.

These cross the boundary between the service and its callers (the CLI, the
LangGraph search). A failure is a value here, never an exception: category,
message, traceback tail and the job it came from, so that a caller can
checkpoint it as JSON and read it back. `to_dict()` is strict RFC 8259 JSON
(no NaN or Infinity); `from_dict()` accepts what `to_dict()` wrote and refuses
anything else with `ValueError` (a report.json is read back on reuse and must
not be trusted blindly).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from typing import Any

from nncaption.netapi.categories import Category
from nncaption.netapi.evaluate import EpochScore
from nncaption.netapi.safetext import safe_text, strict_json_value

from .base import RunStatus

REPORT_FORMAT = 1
MESSAGE_LIMIT = 4000
TRACEBACK_LIMIT = 4000


class Stage(str, Enum):
    """The pipeline stage a check or evaluation ended in (the last one it reached)."""

    HYPERPARAMETERS = "hyperparameters"  # the prm failed validation; no code ran
    STATIC = "static"  # the static validator (no code ran)
    SMOKE = "smoke"  # the tiny runner job in a sandbox
    TRAIN = "train"  # the training job in a sandbox
    SCORE = "score"  # scoring the predictions in the parent

    def __str__(self) -> str:
        return self.value


# How an evaluation ended: ok, failed (the candidate's fault), or how the sandbox ended the job. It is the
# sandbox's own RunStatus (one enum, the same values on both sides of the boundary), named for the service's callers.
ReportStatus = RunStatus


# Outcomes that say something about the candidate itself, so an identical job (same code, spec, dataset) returns
# them instead of running again: successes and the candidate's failures. Time limits count the candidate's own
# compute (netapi.compute), so a `timeout` is its own; so is an OOM kill at its memory limit and a crash of its
# process. Never reused: job-errors (the machine could not run it, "machine overloaded" included), interruptions,
# cancellations and kills by someone else.
REUSABLE_STATUSES: frozenset[ReportStatus] = frozenset({ReportStatus.OK, ReportStatus.FAILED, ReportStatus.TIMEOUT,
                                                        ReportStatus.OUT_OF_MEMORY, ReportStatus.CRASHED})
UNREUSABLE_CATEGORIES: frozenset[Category] = frozenset({Category.JOB_ERROR, Category.INTERRUPTED})


def reusable(status: ReportStatus, category: Category | None) -> bool:
    """Whether a recorded outcome may stand for an identical job (see REUSABLE_STATUSES)."""
    return status in REUSABLE_STATUSES and category not in UNREUSABLE_CATEGORIES


def _category(value: Any) -> Category | None:
    if value is None:
        return None
    return Category(value)


def _opt_int(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {type(value).__name__}")
    return value


def _opt_float(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError("expected a finite number")
    return float(value)


def _timings(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        return {}
    return {str(k): float(v) for k, v in value.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def _prm(value: Any) -> dict[str, float | int]:
    if not isinstance(value, dict):
        return {}
    return {str(k): v for k, v in value.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


@dataclass
class CheckResult:
    """Static check, then smoke in a sandbox: accepted (ok) or why not."""

    ok: bool
    stage: Stage
    category: Category | None = None
    message: str = ""
    line: int | None = None
    job_id: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    reused: bool = False
    job_dir: str | None = None  # jobs_root/<job_id>: check.json, and job/ with the sandbox's logs and files

    @property
    def hint(self) -> str:
        return self.category.hint if self.category else ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stage"] = self.stage.value
        d["category"] = self.category.value if self.category else None
        d["hint"] = self.hint
        return strict_json_value(d)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CheckResult:
        if not isinstance(d, dict) or not isinstance(d.get("ok"), bool):
            raise ValueError("not a CheckResult")
        return cls(ok=d["ok"], stage=Stage(d["stage"]), category=_category(d.get("category")),
                   message=safe_text(d.get("message", ""), MESSAGE_LIMIT, keep="head"), line=_opt_int(d.get("line")),
                   job_id=d.get("job_id") if isinstance(d.get("job_id"), str) else None,
                   timings=_timings(d.get("timings")), reused=bool(d.get("reused", False)),
                   job_dir=d.get("job_dir") if isinstance(d.get("job_dir"), str) else None)


@dataclass
class Example:
    """One decoded caption of the last epoch, beside a reference."""

    image_id: str
    caption: str
    reference: str


@dataclass
class EvalReport:
    """Train and score one candidate: the scores when it ended ok, else why not (never a score for a failure)."""

    status: ReportStatus
    category: Category | None = None
    message: str = ""
    stage: Stage = Stage.TRAIN
    line: int | None = None
    traceback_tail: str = ""
    epochs: list[EpochScore] = field(default_factory=list)
    bleu4: float | None = None  # COCO-protocol corpus BLEU-4 of the last epoch; None unless status is ok
    lemur_bleu4: float | None = None  # LEMUR-compatible (mean sentence BLEU-4 on ids), last epoch
    cider_d: float | None = None  # CIDEr-D (COCO protocol, x10) of the last epoch
    baseline_bleu4: float | None = None  # best constant caption chosen on training captions
    baseline_caption: str | None = None
    suspect: bool = False  # BLEU-4 far above what honest models reach on this dataset
    suspect_reason: str = ""
    params: int | None = None
    prm: dict[str, float | int] = field(default_factory=dict)  # the hyperparameters the job spec gave training
    optimizer_lr: float | None = None  # the lr the candidate's optimiser held, as the runner recorded it
    timings: dict[str, float] = field(default_factory=dict)
    job_id: str | None = None
    job_dir: str | None = None  # jobs_root/<job_id>: report.json, and job/ with the training job's files and logs
    smoke_job_id: str | None = None  # the smoke check's job (its CheckResult and logs), when one ran
    reused: bool = False
    dataset_key: str = ""
    dataset_name: str = ""
    sandbox: str = ""
    isolation: list[str] = field(default_factory=list)
    examples: list[Example] = field(default_factory=list)
    format: int = REPORT_FORMAT

    @property
    def ok(self) -> bool:
        return self.status == ReportStatus.OK

    @property
    def hint(self) -> str:
        return self.category.hint if self.category else ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = self.status.value
        d["stage"] = self.stage.value
        d["category"] = self.category.value if self.category else None
        d["hint"] = self.hint
        return strict_json_value(d)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalReport:
        """Read a report written by `to_dict` (e.g. report.json); ValueError/TypeError when it is not one."""
        if not isinstance(d, dict) or d.get("format") != REPORT_FORMAT:
            raise ValueError("not an EvalReport of this format")
        epoch_fields = {f.name for f in fields(EpochScore)}
        epochs = [EpochScore(**{k: v for k, v in e.items() if k in epoch_fields}) for e in d.get("epochs") or []]
        examples = [Example(str(e["image_id"]), str(e["caption"]), str(e["reference"]))
                    for e in d.get("examples") or []]
        return cls(
            status=ReportStatus(d["status"]), category=_category(d.get("category")),
            message=safe_text(d.get("message", ""), MESSAGE_LIMIT, keep="head"), stage=Stage(d["stage"]),
            line=_opt_int(d.get("line")), traceback_tail=safe_text(d.get("traceback_tail", ""), TRACEBACK_LIMIT),
            epochs=epochs, bleu4=_opt_float(d.get("bleu4")), lemur_bleu4=_opt_float(d.get("lemur_bleu4")),
            cider_d=_opt_float(d.get("cider_d")), baseline_bleu4=_opt_float(d.get("baseline_bleu4")),
            baseline_caption=str(d["baseline_caption"]) if d.get("baseline_caption") is not None else None,
            suspect=bool(d.get("suspect", False)), suspect_reason=str(d.get("suspect_reason", "")),
            params=_opt_int(d.get("params")), prm=_prm(d.get("prm")), optimizer_lr=_opt_float(d.get("optimizer_lr")),
            timings=_timings(d.get("timings")), job_id=d.get("job_id"), job_dir=d.get("job_dir"),
            smoke_job_id=d.get("smoke_job_id") if isinstance(d.get("smoke_job_id"), str) else None,
            reused=bool(d.get("reused", False)), dataset_key=str(d.get("dataset_key", "")),
            dataset_name=str(d.get("dataset_name", "")), sandbox=str(d.get("sandbox", "")),
            isolation=[str(x) for x in d.get("isolation") or []], examples=examples,
        )


def failed_report(stage: Stage, category: Category | None, message: str, *, status: ReportStatus = ReportStatus.FAILED,
                  line: int | None = None, traceback_tail: str = "", **extra: Any) -> EvalReport:
    """A report of a candidate that did not end ok (no score, by construction)."""
    return EvalReport(status=status, category=category, message=safe_text(message, MESSAGE_LIMIT, keep="head"),
                      stage=stage, line=line, traceback_tail=safe_text(traceback_tail, TRACEBACK_LIMIT), **extra)
