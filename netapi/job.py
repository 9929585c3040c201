"""The job directory: what the runner reads and writes.

A job directory is the only thing shared between the parent and a candidate
run (in a plain subprocess, a local sandbox, a container or a Ray worker):

    JOB_DIR/job.json          JobSpec, written by the parent
    JOB_DIR/candidate.py      the candidate source
    JOB_DIR/progress.jsonl    runner events, one JSON object a line (appended)
    JOB_DIR/predictions.json  decoded token ids per epoch (rewritten atomically after each epoch)
    JOB_DIR/result.json       RunnerResult, written last

The prepared data directory (`JobSpec.data_dir`) holds only the public part of
a prepared dataset: training images and captions, validation *images*, the
vocabulary. Validation references stay with the parent.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

JOB_FILE = "job.json"
CANDIDATE_FILE = "candidate.py"
PROGRESS_FILE = "progress.jsonl"
PREDICTIONS_FILE = "predictions.json"
RESULT_FILE = "result.json"

DEFAULT_PRM: dict[str, float | int] = {"lr": 1e-3, "momentum": 0.9, "dropout": 0.1, "batch": 32, "epoch": 1}


@dataclass
class JobSpec:
    """Everything the runner needs to train and decode one candidate."""

    data_dir: str
    epochs: int = 1
    batch_size: int = 32
    prm: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_PRM))
    seed: int = 0
    device: str = "cpu"
    epoch_time_limit_s: float = 600.0
    max_params: int = 50_000_000
    max_train_batches: int | None = None  # per epoch; None = the whole training split
    max_val_images: int | None = None  # None = the whole recorded validation subset
    decode_batch_size: int = 64
    candidate: str = CANDIDATE_FILE
    threads: int | None = None  # torch.set_num_threads in the runner; None = leave as is

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "JobSpec":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})

    def write(self, job_dir: Path) -> Path:
        path = Path(job_dir) / JOB_FILE
        write_json_atomic(path, asdict(self))
        return path

    @classmethod
    def read(cls, job_dir: Path) -> "JobSpec":
        return cls.from_dict(json.loads((Path(job_dir) / JOB_FILE).read_text()))


@dataclass
class EpochPredictions:
    """Free-running decodes of the validation images after one epoch."""

    epoch: int
    seconds: float  # training time of the epoch
    decode_seconds: float
    train_loss: float | None
    ids: dict[str, list[int]]  # image id (as string) -> token ids (raw, specials kept)


@dataclass
class RunnerResult:
    """What the runner says about itself when it finishes (or fails cleanly)."""

    status: str  # "ok" | "failed"
    category: str | None = None  # a netapi.categories.Category value
    message: str = ""
    traceback: str = ""
    params: int | None = None
    epochs_done: int = 0
    seed: int = 0
    device: str = "cpu"
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunnerResult":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON via a temp file and rename, so readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_predictions(job_dir: Path) -> list[EpochPredictions]:
    """Epoch predictions written so far (empty when none)."""
    path = Path(job_dir) / PREDICTIONS_FILE
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return []
    return [EpochPredictions(**e) for e in data.get("epochs", [])]


def read_result(job_dir: Path) -> RunnerResult | None:
    path = Path(job_dir) / RESULT_FILE
    if not path.exists():
        return None
    try:
        return RunnerResult.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError, TypeError):
        return None
