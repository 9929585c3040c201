"""The training loop of one candidate, run inside a sandbox: `run_job(job_dir)`.

Reads top to bottom like a training script:

    spec  <- job.json                     (seeds set and recorded, threads set)
    data  <- spec.data_dir                (public part only: no validation captions here)
    model <- candidate.py                 (import, Net(in_shape, (vocab,), prm, device))
    params counted against the budget; model.train_setup(prm)
    for each epoch:
        model.train(); model.learn(guarded train batches)   (time limit, NaN abort)
        model.eval(); model(val images) under no_grad       (free-running decode)
        predictions.json rewritten atomically               (a killed run keeps earlier epochs)
    result.json written last

Every failure of the candidate becomes a `RunnerResult` with a `Category`, a
message written for the fixer agent and a bounded traceback of the candidate's
own frames. Progress events go to progress.jsonl, one JSON object a line.
The runner never scores: the parent does, with references the runner never sees.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from nncaption.netapi.categories import Category
from nncaption.netapi.contract import EOS, OutputContractError, output_to_ids
from nncaption.netapi.job import (
    PREDICTIONS_FILE,
    PROGRESS_FILE,
    RESULT_FILE,
    EpochPredictions,
    JobSpec,
    RunnerResult,
    write_json_atomic,
)
from nncaption.netapi.loading import (
    candidate_line,
    classify_exception,
    exception_summary,
    format_traceback_for_fixer,
    load_candidate,
)

MAX_PREDICTION_LEN = 100  # ids kept per image (cut after the first EOS anyway)
EXIT_OK, EXIT_FAILED, EXIT_RUNNER_ERROR = 0, 1, 2
PARAM_CHECK_EVERY_LARGE = 10  # batches between NaN checks of the parameters for models over 5M params


# --------------------------------------------------------------------------- events


class EventLog:
    """Appends progress events to progress.jsonl; each line is flushed as written."""

    def __init__(self, path: Path) -> None:
        self._f = open(path, "a", encoding="utf-8", buffering=1)

    def emit(self, event: str, **fields: Any) -> None:
        self._f.write(json.dumps({"event": event, "t": time.time(), **fields}, default=str) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


# --------------------------------------------------------------------------- failures


class CandidateFailure(Exception):
    """The candidate failed: carries the category, a fixer-ready message and its traceback."""

    def __init__(self, category: Category, message: str, tb: str = "") -> None:
        super().__init__(message)
        self.category = category
        self.message = message
        self.tb = tb


class RunnerSetupError(Exception):
    """The job itself is unusable (no job.json, no data): not the candidate's fault."""


class _Abort(BaseException):
    """Raised inside candidate code to stop it (time limit, NaN).

    A BaseException, so that a candidate's `except Exception` cannot swallow it.
    """

    def __init__(self, category: Category, message: str) -> None:
        super().__init__(message)
        self.category = category
        self.message = message


def failure_from_exception(exc: BaseException, phase: str, what: str, candidate: Path) -> CandidateFailure:
    """Classify an exception raised by candidate code and phrase it for the fixer."""
    category = classify_exception(exc, phase)
    line = candidate_line(exc, candidate)
    where = f" (candidate line {line})" if line else ""
    message = f"{what} raised {exception_summary(exc)}{where}. {category.hint}"
    return CandidateFailure(category, message, format_traceback_for_fixer(exc, candidate))


# --------------------------------------------------------------------------- guards


class Guard:
    """Watches one phase of candidate code: wall-time limit and NaN parameters/loss.

    The time limit is enforced twice: by the batch iterator (checked every time
    the candidate asks for a batch) and, in the main thread, by SIGALRM, which
    also interrupts a candidate that sleeps or loops without asking for batches.
    The sandbox's hard timeout is the backstop for everything else.
    """

    def __init__(self, model: Any, phase: str, limit_s: float, n_params: int) -> None:
        self.model = model
        self.phase = phase
        self.limit_s = limit_s
        self.start = time.monotonic()
        self.tripped: _Abort | None = None
        self.check_every = 1 if n_params <= 5_000_000 else PARAM_CHECK_EVERY_LARGE

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def trip(self, category: Category, message: str) -> None:
        self.tripped = _Abort(category, message)
        raise self.tripped

    def check_time(self) -> None:
        if self.elapsed() > self.limit_s:
            self.trip(Category.TIMEOUT, f"{self.phase} ran past the per-epoch time limit of {self.limit_s:.0f} s "
                      f"(stopped after {self.elapsed():.0f} s). {Category.TIMEOUT.hint}")

    def check_nan(self, batch_index: int, loss: float | None) -> None:
        if loss is not None and not math.isfinite(loss):
            self.trip(Category.NAN, f"the training loss became {loss} at batch {batch_index + 1} "
                      f"(model.last_loss). {Category.NAN.hint}")
        if batch_index % self.check_every == 0 and not params_finite(self.model):
            self.trip(Category.NAN, f"the parameters became NaN/Inf by batch {batch_index + 1}. {Category.NAN.hint}")

    @contextmanager
    def alarm(self) -> Iterator[None]:
        """SIGALRM at the time limit (main thread only; elsewhere the iterator check alone applies)."""
        use = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
        if not use:
            yield
            return

        def on_alarm(signum: int, frame: Any) -> None:
            self.trip(Category.TIMEOUT, f"{self.phase} ran past the per-epoch time limit of {self.limit_s:.0f} s. "
                      f"{Category.TIMEOUT.hint}")

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, max(self.limit_s - self.elapsed(), 0.001))
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


def params_finite(model: Any) -> bool:
    """True when every parameter of the model is finite (one reduction, one sync)."""
    import torch

    params = [p.detach() for p in model.parameters()]
    if not params:
        return True
    norms = torch._foreach_norm(params) if hasattr(torch, "_foreach_norm") else [p.norm() for p in params]
    return bool(torch.isfinite(torch.stack([n.float().cpu() for n in norms])).all())


def read_loss(model: Any) -> float | None:
    """The model's `last_loss` attribute as a float, when it exposes one (optional, for progress)."""
    value = getattr(model, "last_loss", None)
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        return None


class GuardedBatches:
    """The `train_data` handed to `learn`: re-iterable, sized, watched.

    Each time the candidate asks for a batch, the previous batch's loss is
    reported and checked for NaN and the time limit is checked. Like a
    DataLoader it supports `len()` and iterating again.
    """

    def __init__(
        self,
        make: Callable[[], Iterable[Any]],
        n_batches: int,
        guard: Guard,
        on_batch: Callable[[int, float | None], None],
        device: Any,
    ) -> None:
        self._make = make
        self._n = n_batches
        self._guard = guard
        self._on_batch = on_batch
        self._device = device

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[Any]:
        index = -1
        for index, (images, captions) in enumerate(self._make()):
            if index > 0:
                self._after_batch(index - 1)
            self._guard.check_time()
            yield images.to(self._device), captions.to(self._device)
        if index >= 0:
            self._after_batch(index)

    def _after_batch(self, index: int) -> None:
        loss = read_loss(self._guard.model)
        self._on_batch(index, loss)
        self._guard.check_nan(index, loss)


# --------------------------------------------------------------------------- the job


def run_job(job_dir: Path) -> int:
    """Run the job in `job_dir` to its end; write result.json; return the exit code.

    0 when the candidate trained and decoded every epoch, 1 when it failed
    cleanly (result.json says why), 2 when the job itself is unusable.
    """
    job_dir = Path(job_dir)
    t0 = time.time()
    events = EventLog(job_dir / PROGRESS_FILE)
    result = RunnerResult(status="failed")
    try:
        result = _train(job_dir, events, result, t0)
        code = EXIT_OK
    except CandidateFailure as f:
        result.status, result.category, result.message, result.traceback = "failed", f.category.value, f.message, f.tb
        code = EXIT_FAILED
    except RunnerSetupError as e:
        result.status, result.category, result.message = "failed", None, f"runner setup error: {e}"
        code = EXIT_RUNNER_ERROR
    except BaseException as e:  # noqa: BLE001 - a bug of the runner itself; still report it
        traceback.print_exc()
        result.status, result.category = "failed", Category.CRASHED.value
        result.message = f"runner error outside candidate code: {exception_summary(e)}"
        result.traceback = "".join(traceback.format_exception(e))[-4000:]
        code = EXIT_RUNNER_ERROR
    result.timings["total_s"] = round(time.time() - t0, 3)
    if result.status == "ok":
        events.emit("done", epochs=result.epochs_done, seconds=result.timings["total_s"])
    else:
        if result.traceback:
            print(result.traceback, file=sys.stderr)
        events.emit("error", category=result.category, message=result.message)
    write_json_atomic(job_dir / RESULT_FILE, result.to_dict())
    events.close()
    return code


def _train(job_dir: Path, events: EventLog, result: RunnerResult, t0: float) -> RunnerResult:
    # ---- the job spec, seeds, threads
    try:
        spec = JobSpec.read(job_dir)
    except (OSError, ValueError, TypeError) as e:
        raise RunnerSetupError(f"cannot read {job_dir}/job.json: {e}") from e
    import numpy as np
    import torch

    random.seed(spec.seed)
    np.random.seed(spec.seed % 2**32)
    torch.manual_seed(spec.seed)
    if spec.threads:
        torch.set_num_threads(int(spec.threads))
    if spec.device.startswith("cuda") and not torch.cuda.is_available():
        raise RunnerSetupError(f"device {spec.device!r} requested but CUDA is not available in the sandbox")
    device = torch.device(spec.device)
    result.seed, result.device = spec.seed, str(device)
    events.emit("start", seed=spec.seed, device=str(device), epochs=spec.epochs, pid=os.getpid(),
                threads=torch.get_num_threads())

    # ---- the data (public part only)
    from nncaption.netapi.data.loader import PreparedData
    from nncaption.netapi.errors import DatasetError

    try:
        data = PreparedData.open(Path(spec.data_dir))
    except DatasetError as e:
        raise RunnerSetupError(f"{e.message} ({e.hint})") from e
    vocab_size = int(data.meta.vocab_size)
    in_shape = tuple(int(x) for x in data.in_shape(spec.batch_size))
    n_train_batches = data.n_train_batches(spec.batch_size, limit=spec.max_train_batches)

    # ---- the candidate
    candidate = job_dir / spec.candidate
    if not candidate.is_file():
        raise RunnerSetupError(f"candidate file {candidate} is missing")
    t = time.time()
    try:
        module = load_candidate(candidate)
    except BaseException as e:  # noqa: BLE001 - candidate module code
        raise failure_from_exception(e, "import", "importing the candidate", candidate) from None
    net_cls = getattr(module, "Net", None)
    if net_cls is None:
        raise CandidateFailure(Category.MISSING_SYMBOL, f"the candidate defines no `Net` class. "
                               f"{Category.MISSING_SYMBOL.hint}")
    prm = {**spec.prm, "batch": spec.batch_size, "epoch": spec.epochs}
    try:
        model = net_cls(in_shape, (vocab_size,), dict(prm), device)
    except BaseException as e:  # noqa: BLE001
        raise failure_from_exception(e, "init", f"Net({in_shape}, ({vocab_size},), prm, device)", candidate) from None
    result.timings["init_s"] = round(time.time() - t, 3)

    try:
        n_params = sum(int(p.numel()) for p in model.parameters())
    except BaseException as e:  # noqa: BLE001
        raise failure_from_exception(e, "init", "model.parameters()", candidate) from None
    result.params = n_params
    if n_params > spec.max_params:
        raise CandidateFailure(Category.TOO_LARGE, f"the model has {n_params:,} parameters; the budget is "
                               f"{spec.max_params:,}. {Category.TOO_LARGE.hint}")
    events.emit("model", params=n_params, in_shape=list(in_shape), vocab_size=vocab_size)

    try:
        model.train_setup(dict(prm))
    except BaseException as e:  # noqa: BLE001
        raise failure_from_exception(e, "setup", "model.train_setup(prm)", candidate) from None

    # ---- the epochs
    epochs: list[EpochPredictions] = []
    for epoch in range(1, spec.epochs + 1):
        events.emit("epoch_start", epoch=epoch, batches=n_train_batches)
        t_epoch = time.time()
        guard = Guard(model, f"epoch {epoch} training (learn)", spec.epoch_time_limit_s, n_params)

        def on_batch(index: int, loss: float | None, epoch: int = epoch) -> None:
            if epoch == 1 and index == 0:
                result.timings["start_to_first_batch_s"] = round(first_batch_t[0] - t0, 3)
            events.emit("batch", epoch=epoch, batch=index + 1, batches=n_train_batches, loss=loss)

        first_batch_t: list[float] = []

        def make_batches(epoch: int = epoch) -> Iterator[Any]:
            for i, batch in enumerate(data.train_batches(spec.batch_size, seed=spec.seed, epoch=epoch,
                                                         limit=spec.max_train_batches)):
                if i == 0 and not first_batch_t:
                    first_batch_t.append(time.time())
                    if epoch == 1:
                        events.emit("first_batch", epoch=epoch)
                yield batch

        batches = GuardedBatches(make_batches, n_train_batches, guard, on_batch, device)
        train_loss = _learn(model, batches, guard, candidate)
        if train_loss is not None and not math.isfinite(train_loss):
            raise CandidateFailure(Category.NAN, f"learn() returned a non-finite loss ({train_loss}) in epoch "
                                   f"{epoch}. {Category.NAN.hint}")
        if not params_finite(model):
            raise CandidateFailure(Category.NAN, f"the parameters are NaN/Inf after epoch {epoch}. "
                                   f"{Category.NAN.hint}")
        if not first_batch_t:
            raise CandidateFailure(Category.LEARN_ERROR, f"learn() returned without reading a single training "
                                   f"batch in epoch {epoch}: iterate over train_data and step the optimiser. "
                                   f"{Category.LEARN_ERROR.hint}")
        seconds = time.time() - t_epoch
        events.emit("epoch_end", epoch=epoch, seconds=round(seconds, 3), loss=train_loss)

        t_dec = time.time()
        ids = _decode(model, data, spec, vocab_size, device, candidate, epoch, n_params)
        decode_seconds = time.time() - t_dec
        events.emit("decoded", epoch=epoch, seconds=round(decode_seconds, 3), images=len(ids))

        epochs.append(EpochPredictions(epoch=epoch, seconds=round(seconds, 3), decode_seconds=round(decode_seconds, 3),
                                       train_loss=train_loss, ids=ids))
        write_json_atomic(job_dir / PREDICTIONS_FILE, {"epochs": [asdict(e) for e in epochs]})
        result.epochs_done = epoch
        result.timings["train_s"] = round(result.timings.get("train_s", 0.0) + seconds, 3)
        result.timings["decode_s"] = round(result.timings.get("decode_s", 0.0) + decode_seconds, 3)

    result.status, result.category, result.message = "ok", None, f"trained {spec.epochs} epoch(s)"
    return result


def _learn(model: Any, batches: GuardedBatches, guard: Guard, candidate: Path) -> float | None:
    """model.train(); model.learn(batches) under the guard; the epoch loss if learn returns a number."""
    try:
        with guard.alarm():
            model.train()
            returned = model.learn(batches)
    except _Abort as a:
        raise CandidateFailure(a.category, a.message) from None
    except BaseException as e:  # noqa: BLE001 - candidate code
        if guard.tripped is not None:  # the candidate turned our abort into another exception
            raise CandidateFailure(guard.tripped.category, guard.tripped.message) from None
        raise failure_from_exception(e, "learn", "model.learn(train_data)", candidate) from None
    if guard.tripped is not None:  # the candidate swallowed our abort
        raise CandidateFailure(guard.tripped.category, guard.tripped.message)
    loss = read_loss(model)
    if isinstance(returned, (int, float)) and not isinstance(returned, bool):
        return float(returned)
    try:
        import torch

        if isinstance(returned, torch.Tensor) and returned.numel() == 1:
            return float(returned.detach())
    except (ImportError, RuntimeError):  # pragma: no cover
        pass
    return loss


def _decode(model: Any, data: Any, spec: JobSpec, vocab_size: int, device: Any, candidate: Path, epoch: int,
            n_params: int) -> dict[str, list[int]]:
    """Free-running decode of the validation images (images only); ids cut after the first EOS."""
    import torch

    guard = Guard(model, f"epoch {epoch} decoding (forward(images))", spec.epoch_time_limit_s, n_params)
    out_ids: dict[str, list[int]] = {}
    try:
        with guard.alarm():
            model.eval()
            with torch.no_grad():
                for image_ids, images in data.val_batches(spec.decode_batch_size, limit=spec.max_val_images):
                    guard.check_time()
                    images = images.to(device)
                    try:
                        out = model(images)
                    except _Abort:
                        raise
                    except BaseException as e:  # noqa: BLE001 - candidate code
                        raise failure_from_exception(
                            e, "eval", "free-running forward(images) (no captions)", candidate) from None
                    ids = _to_ids(out, images.shape[0], vocab_size)
                    for image_id, row in zip(image_ids, ids.tolist()):
                        out_ids[str(image_id)] = _cut(row)
    except _Abort as a:
        raise CandidateFailure(a.category, a.message) from None
    if not out_ids:
        raise RunnerSetupError("the prepared data has no validation images")
    return out_ids


def _to_ids(out: Any, batch: int, vocab_size: int) -> Any:
    """contract.output_to_ids with the failure sorted into eval-contract, nan or shape-error."""
    import torch

    first = out[0] if isinstance(out, (tuple, list)) and out else out
    try:
        return output_to_ids(out, batch, vocab_size)
    except OutputContractError as e:
        if not isinstance(first, torch.Tensor):
            category = Category.EVAL_CONTRACT
        elif first.is_floating_point() and not bool(torch.isfinite(first).all()):
            category = Category.NAN
        else:
            category = Category.SHAPE_ERROR
        raise CandidateFailure(category, f"{e} {category.hint}") from None


def _cut(row: list[int]) -> list[int]:
    """Raw ids up to and including the first EOS, at most MAX_PREDICTION_LEN."""
    row = [int(t) for t in row[:MAX_PREDICTION_LEN]]
    if EOS in row:
        row = row[: row.index(EOS) + 1]
    return row
