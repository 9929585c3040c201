"""The job directory: what the runner reads and writes, and the typed shapes of those files.

A job directory is the only thing shared between the parent and a candidate
run (in a plain subprocess, a local sandbox, a container or a Ray worker):

    JOB_DIR/job.json          JobSpec, written by the parent (mode "smoke" or "train")
    JOB_DIR/candidate.py      the candidate source
    JOB_DIR/progress.jsonl    runner events, one JSON object a line (appended)
    JOB_DIR/predictions.json  decoded token ids per epoch (rewritten by the runner after each epoch)
    JOB_DIR/result.json       RunnerResult, written last

The prepared data directory (`JobSpec.data_dir`) holds only the public part of
a prepared dataset: training images and captions, validation *images*, the
vocabulary. Validation references stay with the parent. Everything in a job
directory may have been written by candidate code: the parent reads it only
through `nncaption.netapi.jobfiles` (bounded, schema-checked).
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

from nncaption.netapi.categories import Category

JOB_FILE = "job.json"
CANDIDATE_FILE = "candidate.py"
PROGRESS_FILE = "progress.jsonl"
PREDICTIONS_FILE = "predictions.json"
RESULT_FILE = "result.json"

DEFAULT_PRM: dict[str, float | int] = {"lr": 1e-3, "momentum": 0.9, "dropout": 0.1, "batch": 32, "epoch": 1}
MAX_PREDICTION_LEN = 100  # token ids kept per image (cut after the first EOS anyway)
SMOKE_BATCH = 4
SMOKE_TRAIN_BATCHES = 2


class Mode(str, Enum):
    """What a job is for: a smoke check (a tiny job) or real training."""

    SMOKE = "smoke"
    TRAIN = "train"


class Stage(str, Enum):
    """The stage of the candidate lifecycle a verdict or a runner result speaks for."""

    STATIC = "static"  # the static validator, in the parent, before any job
    SMOKE = "smoke"  # the runner in smoke mode
    TRAIN = "train"  # the runner in train mode


class Step(str, Enum):
    """Where in the runner a job was when it ended (RunnerResult.step)."""

    START = "start"  # the runner itself, before the candidate
    IMPORT = "import"  # executing the candidate module
    HPARAMS = "hparams"  # supported_hyperparameters() and the symbols the contract requires
    INIT = "init"  # Net(in_shape, out_shape, prm, device)
    PARAMS = "params"  # the parameter budget
    SETUP = "setup"  # net.train_setup(prm)
    LEARN = "learn"  # net.learn(train_data)
    DECODE = "decode"  # net.eval(); net(images)
    DONE = "done"


# the runner's exit statuses: trained, the candidate failed (result.json says why), the job itself is unusable
EXIT_OK, EXIT_FAILED, EXIT_RUNNER_ERROR = 0, 1, 2


class RunnerStatus(str, Enum):
    """How the runner ended: the candidate trained (ok), failed, or the job itself was unusable (error)."""

    OK = "ok"
    FAILED = "failed"
    ERROR = "error"  # runner setup error (no data, bad job.json): not the candidate's fault


@dataclass
class JobSpec:
    """Everything the runner needs to train and decode one candidate."""

    data_dir: str
    epochs: int = 1
    batch_size: int = 32
    prm: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_PRM))
    seed: int = 0
    device: str = "cpu"
    epoch_time_limit_s: float = 600.0  # each epoch's learn, in train mode
    decode_time_limit_s: float | None = None  # each epoch's decode; None = epoch_time_limit_s
    setup_time_limit_s: float = 120.0  # import + Net(...) + train_setup, in train mode
    smoke_time_limit_s: float = 120.0  # the whole smoke job (every step), in smoke mode
    max_params: int = 50_000_000
    max_train_batches: int | None = None  # per epoch; None = the whole training split
    max_val_images: int | None = None  # None = the whole recorded validation subset
    decode_batch_size: int = 64
    candidate: str = CANDIDATE_FILE
    threads: int | None = None  # torch.set_num_threads in the candidate's process; None = leave as is
    mode: Mode = Mode.TRAIN

    def __post_init__(self) -> None:
        self.mode = Mode(self.mode)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JobSpec:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mode"] = self.mode.value
        return d

    def write(self, job_dir: Path) -> Path:
        path = Path(job_dir) / JOB_FILE
        write_json_atomic(path, self.to_dict())
        return path

    @classmethod
    def read(cls, job_dir: Path) -> JobSpec:
        return cls.from_dict(json.loads((Path(job_dir) / JOB_FILE).read_text(encoding="utf-8")))

    def smoke(self, *, time_limit_s: float | None = None) -> JobSpec:
        """The tiny smoke job of this spec: same candidate settings, 2 batches of 4, one decode batch."""
        return replace(self, mode=Mode.SMOKE, epochs=1, batch_size=SMOKE_BATCH, max_train_batches=SMOKE_TRAIN_BATCHES,
                       max_val_images=SMOKE_BATCH, decode_batch_size=SMOKE_BATCH,
                       smoke_time_limit_s=self.smoke_time_limit_s if time_limit_s is None else time_limit_s,
                       prm=dict(self.prm))

    @property
    def decode_limit_s(self) -> float:
        return self.epoch_time_limit_s if self.decode_time_limit_s is None else self.decode_time_limit_s

    def time_budget_s(self) -> float:
        """The compute the runner's own limits allow (without interpreter start-up; see netapi.compute)."""
        if self.mode is Mode.SMOKE:
            return self.smoke_time_limit_s
        return self.setup_time_limit_s + self.epochs * (self.epoch_time_limit_s + self.decode_limit_s)

    def wall_clock_limit_s(self, startup_s: float = 60.0) -> float:
        """The sandbox's wall-clock backstop: the runner's own step backstops (up to STARVED_BACKSTOP_FACTOR x each
        limit, which count compute) plus start-up (importing torch, opening data), so the runner speaks first."""
        from nncaption.netapi.compute import STARVED_BACKSTOP_FACTOR

        factor = 1.0 if self.device.startswith("cuda") else STARVED_BACKSTOP_FACTOR
        return factor * self.time_budget_s() + startup_s

    def compute_limit_s(self, startup_s: float = 60.0) -> float:
        """The job's compute budget per allotted core (RLIMIT_CPU = this x cores): its limits plus start-up."""
        return self.time_budget_s() + startup_s


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
    """What the runner says about itself when it finishes (or fails cleanly).

    `stage` is the lifecycle stage (smoke or train), `step` where the job ended,
    `line` the candidate line of a failure when known.
    """

    status: RunnerStatus
    category: Category | None = None
    stage: Stage = Stage.TRAIN
    step: Step = Step.START
    message: str = ""
    line: int | None = None
    traceback: str = ""
    params: int | None = None
    signal: int | None = None  # the signal that ended the candidate's process, when one did
    optimizer_lr: float | None = None  # the learning rate of the candidate's optimiser after train_setup, if found
    epochs_done: int = 0
    seed: int = 0
    device: str = "cpu"
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = self.status.value
        d["category"] = self.category.value if self.category else None
        d["stage"] = self.stage.value
        d["step"] = self.step.value
        return d

    @property
    def ok(self) -> bool:
        return self.status is RunnerStatus.OK


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write strict JSON via a fresh temp file and a rename, so readers never see half a file.

    The temp file gets a random name and is created exclusively without following links;
    whatever sits at `path` (a link, a directory the candidate made) is moved aside first.
    """
    from nncaption.netapi.safetext import strict_dumps

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(strict_dumps(obj))
        f.flush()
        os.fsync(f.fileno())
    if path.is_dir() and not path.is_symlink():
        os.replace(path, path.with_name(f".{path.name}.{uuid.uuid4().hex}.aside"))
    os.replace(tmp, path)


def read_predictions(job_dir: Path) -> list[EpochPredictions]:
    """Epoch predictions written so far, read bounded and schema-checked (empty when missing or malformed)."""
    from nncaption.netapi.jobfiles import JobFileError, load_predictions

    try:
        return load_predictions(Path(job_dir))
    except JobFileError:
        return []


def read_result(job_dir: Path) -> RunnerResult | None:
    """The runner's result, read bounded and schema-checked (None when missing or malformed)."""
    from nncaption.netapi.jobfiles import JobFileError, load_result

    try:
        return load_result(Path(job_dir))
    except JobFileError:
        return None
