"""Reading what a job left in its directory: bounded, link-refusing, schema-checked.

Everything in a job directory may have been written by candidate code. The
parent reads it only through these functions: regular files only (no links, no
FIFOs), a size cap checked before parsing, JSON parsed with every exception
caught (deep nesting included), and strict schemas. A file that breaks any rule
raises `JobFileError`, which callers turn into a candidate failure, never into
an exception of their own.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

from nncaption.netapi.categories import Category
from nncaption.netapi.job import (
    MAX_PREDICTION_LEN,
    PREDICTIONS_FILE,
    RESULT_FILE,
    EpochPredictions,
    RunnerResult,
    RunnerStatus,
    Stage,
    Step,
)

MAX_RESULT_BYTES = 1 << 20
MAX_PREDICTIONS_BYTES = 64 * 1024 * 1024
MAX_EPOCHS = 10_000
MAX_TEXT = 64_000
MAX_ID_LEN = 64


class JobFileError(Exception):
    """A job file is missing, not a regular file, too large or malformed."""


def read_regular(path: Path, offset: int, max_bytes: int) -> bytes | None:
    """Read from a regular file only, never blocking: the candidate may have put a FIFO or a link there."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        os.lseek(fd, offset, os.SEEK_SET)
        return read_at_most(fd, max_bytes)
    except OSError:
        return None
    finally:
        os.close(fd)


def read_at_most(fd: int, max_bytes: int) -> bytes:
    """At most `max_bytes` from an open file, from where it stands (in 1 MiB reads; OSError passes through)."""
    chunks: list[bytes] = []
    left = max_bytes
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def load_json(path: Path, max_bytes: int) -> Any:
    """Parse a JSON file of the job dir; JobFileError when missing, not regular, over `max_bytes` or malformed."""
    data = read_regular(path, 0, max_bytes + 1)
    if data is None:
        raise JobFileError(f"{path.name} is missing or not a regular file")
    if len(data) > max_bytes:
        raise JobFileError(f"{path.name} is larger than {max_bytes} bytes")
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise JobFileError(f"{path.name} is not valid JSON ({type(e).__name__})") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


# --------------------------------------------------------------------------- field checks


def _int(d: dict[str, Any], key: str, *, default: Any = ..., optional: bool = False) -> Any:
    v = d.get(key, default)
    if v is ...:
        raise JobFileError(f"field {key!r} is missing")
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or abs(v) > 1 << 62:
        raise JobFileError(f"field {key!r} is not an integer")
    return v


def _float(d: dict[str, Any], key: str, *, default: Any = ..., optional: bool = False) -> Any:
    v = d.get(key, default)
    if v is ...:
        raise JobFileError(f"field {key!r} is missing")
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise JobFileError(f"field {key!r} is not a finite number")
    return float(v)


def _str(d: dict[str, Any], key: str, default: str = "") -> str:
    v = d.get(key, default)
    if not isinstance(v, str):
        raise JobFileError(f"field {key!r} is not a string")
    return v[:MAX_TEXT]


def _enum(d: dict[str, Any], key: str, enum: Any, default: Any = ...) -> Any:
    v = d.get(key, default)
    if v is ...:
        raise JobFileError(f"field {key!r} is missing")
    if v is None or v is default:
        return v
    try:
        return enum(v)
    except ValueError:
        raise JobFileError(f"field {key!r} has an unknown value") from None


# --------------------------------------------------------------------------- result.json


def parse_result(data: Any) -> RunnerResult:
    """A RunnerResult from parsed JSON, strictly; JobFileError when anything does not fit."""
    if not isinstance(data, dict):
        raise JobFileError("result.json is not a JSON object")
    timings_raw = data.get("timings", {})
    if not isinstance(timings_raw, dict) or len(timings_raw) > 100:
        raise JobFileError("field 'timings' is not a small object")
    timings = {str(k)[:64]: _float(timings_raw, k) for k in timings_raw}
    return RunnerResult(
        status=_enum(data, "status", RunnerStatus),
        category=_enum(data, "category", Category, None),
        stage=_enum(data, "stage", Stage, Stage.TRAIN),
        step=_enum(data, "step", Step, Step.START),
        message=_str(data, "message"),
        line=_int(data, "line", default=None, optional=True),
        traceback=_str(data, "traceback"),
        params=_int(data, "params", default=None, optional=True),
        signal=_int(data, "signal", default=None, optional=True),
        optimizer_lr=_float(data, "optimizer_lr", default=None, optional=True),
        epochs_done=_int(data, "epochs_done", default=0),
        seed=_int(data, "seed", default=0),
        device=_str(data, "device", "cpu")[:64],
        timings=timings,
    )


def load_result(job_dir: Path) -> RunnerResult:
    return parse_result(load_json(Path(job_dir) / RESULT_FILE, MAX_RESULT_BYTES))


# --------------------------------------------------------------------------- predictions.json


def _ids(value: Any, where: str) -> list[int]:
    if not isinstance(value, list) or len(value) > MAX_PREDICTION_LEN:
        raise JobFileError(f"{where}: not a list of at most {MAX_PREDICTION_LEN} token ids")
    for t in value:
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < 1 << 31:
            raise JobFileError(f"{where}: a token id that is not a non-negative integer")
    return value


def parse_predictions(data: Any, *, expected_ids: list[str] | None = None,
                      vocab_size: int | None = None) -> list[EpochPredictions]:
    """Epoch predictions from parsed JSON, strictly.

    Each epoch: `epoch` (1, 2, ... in order), finite `seconds`/`decode_seconds`, a finite or null
    `train_loss`, and `ids` mapping image ids (short strings) to lists of at most MAX_PREDICTION_LEN
    non-negative integer ids (below `vocab_size` when given). With `expected_ids`, every epoch must
    cover exactly those image ids.
    """
    if not isinstance(data, dict) or not isinstance(data.get("epochs"), list):
        raise JobFileError("predictions.json has no list of epochs")
    raw_epochs = data["epochs"]
    if len(raw_epochs) > MAX_EPOCHS:
        raise JobFileError("predictions.json has too many epochs")
    expected = set(expected_ids) if expected_ids is not None else None
    out: list[EpochPredictions] = []
    for n, e in enumerate(raw_epochs, start=1):
        if not isinstance(e, dict):
            raise JobFileError(f"epoch entry {n} is not an object")
        epoch = _int(e, "epoch")
        if epoch != n:
            raise JobFileError(f"epoch entry {n} says epoch {epoch}")
        raw_ids = e.get("ids")
        if not isinstance(raw_ids, dict):
            raise JobFileError(f"epoch {n}: 'ids' is not an object")
        ids: dict[str, list[int]] = {}
        for image_id, row in raw_ids.items():
            if len(image_id) > MAX_ID_LEN:
                raise JobFileError(f"epoch {n}: an image id longer than {MAX_ID_LEN} characters")
            tokens = _ids(row, f"epoch {n}")
            if vocab_size is not None and any(t >= vocab_size for t in tokens):
                raise JobFileError(f"epoch {n}: a token id outside the vocabulary of {vocab_size}")
            ids[image_id] = tokens
        if expected is not None and set(ids) != expected:
            extra, missing = len(set(ids) - expected), len(expected - set(ids))
            raise JobFileError(f"epoch {n}: predictions do not cover exactly the recorded validation images "
                               f"({extra} unknown image id(s), {missing} missing)")
        out.append(EpochPredictions(epoch=epoch, seconds=_float(e, "seconds"),
                                    decode_seconds=_float(e, "decode_seconds", default=0.0),
                                    train_loss=_float(e, "train_loss", default=None, optional=True), ids=ids))
    return out


def load_predictions(job_dir: Path, *, expected_ids: list[str] | None = None,
                     vocab_size: int | None = None) -> list[EpochPredictions]:
    """predictions.json of a job dir, bounded and strict; [] when the file does not exist."""
    path = Path(job_dir) / PREDICTIONS_FILE
    if not os.path.lexists(path):
        return []
    return parse_predictions(load_json(path, MAX_PREDICTIONS_BYTES), expected_ids=expected_ids,
                             vocab_size=vocab_size)


def expected_val_ids(data_dir: Path, max_val_images: int | None) -> list[str]:
    """The validation image ids a job decodes: the recorded order of the prepared public dir, capped.

    Read from the parent's own prepared dataset (not from the job dir). Raises JobFileError when unreadable.
    """
    data = load_json(Path(data_dir) / "val_ids.json", 64 * 1024 * 1024)
    if not isinstance(data, list):
        raise JobFileError("val_ids.json is not a list")
    ids = [str(i) for i in data]
    return ids if max_val_images is None else ids[:max_val_images]

