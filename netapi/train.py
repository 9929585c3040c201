"""The runner: one lifecycle for smoke checks and training, `run_job(job_dir)`.

Reads top to bottom like a training script, except that the candidate runs in a
child process the runner forks after importing torch (and before any candidate
code exists), and drives over a channel (`netapi.child`, `netapi.wire`):

    spec  <- job.json                       (mode "smoke": a tiny job with one overall budget)
    data  <- spec.data_dir                  (public part only: no validation captions here)
    fork the child; it imports candidate.py, checks the symbols, builds Net, counts params, train_setup
    for each epoch:
        learn: the child asks for each batch, the runner serves it in the runner's order and
               checks the reported loss (NaN guard); the epoch's deadline is the runner's
        decode: the runner sends each batch of validation images, the child returns ids [B, L];
               the runner validates them and assigns the recorded image ids
        predictions.json rewritten
    the child and everything it started are killed; predictions.json and result.json written last

Deadlines are enforced by killing the child (one mechanism for smoke and train), so
nothing the candidate patches in its own interpreter can switch them off. Every
failure becomes a RunnerResult with a Category, the step it happened in, the
candidate line and a fixer-ready message. The runner never scores.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

# Imported here, before any job: the runner forks the candidate's process after these, so it inherits them, and a
# prewarmed sandbox pays for them before its job arrives. torch._dynamo is what the first optimiser step imports
# lazily (about 3 s); importing it starts no thread and no OpenMP pool, so the fork stays safe.
import torch
import torch._dynamo  # noqa: F401

from nncaption.netapi.categories import Category
from nncaption.netapi.child import ChildSetup, serve
from nncaption.netapi.childlink import ChildLink
from nncaption.netapi.compute import (
    StepDeadline,
    allotted_cores,
)
from nncaption.netapi.job import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_RUNNER_ERROR,
    MAX_PREDICTION_LEN,
    PREDICTIONS_FILE,
    PROGRESS_FILE,
    RESULT_FILE,
    EpochPredictions,
    JobSpec,
    Mode,
    RunnerResult,
    RunnerStatus,
    Stage,
    Step,
    write_json_atomic,
)
from nncaption.netapi.loading import exception_summary
from nncaption.netapi.rules import (
    batch_request_failure,
    cut_at_eos,
    decoded_rows,
    learned_failure,
    reported_float,
)
from nncaption.netapi.safetext import safe_text
from nncaption.netapi.supervise import (
    RESERVE_FILE,
    CandidateFailure,
    EventLog,
    MachineOverloaded,
    RunnerSetupError,
    release_space,
    reserve_space,
)
from nncaption.netapi.wire import channel_pair

log = logging.getLogger(__name__)

BATCH_EVENT_INTERVAL_S = 1.0  # "batch" progress events: at most about one a second, plus each epoch's last batch

# --------------------------------------------------------------------------- the runner


class Runner(ChildLink):
    """Drives one job: the child, the deadlines, the data, the predictions."""

    def __init__(self, job_dir: Path, spec: JobSpec, events: EventLog, result: RunnerResult, t0: float, *,
                 own_process: bool) -> None:
        super().__init__(spec, result, own_process=own_process, smoke=spec.mode is Mode.SMOKE)
        self.job_dir = job_dir
        self.events = events
        self.t0 = t0
        self.own_process = own_process
        self.epochs: list[EpochPredictions] = []
        self.first_batch_t: float | None = None

    # ------------------------------------------------------------------ set-up (no candidate code)

    def prepare(self) -> None:
        import numpy as np

        from nncaption.netapi.data.loader import PreparedData
        from nncaption.netapi.errors import DatasetError

        spec = self.spec
        try:
            self.data = PreparedData.open(Path(spec.data_dir))
        except DatasetError as e:
            raise RunnerSetupError(f"{e.message} ({e.hint})") from e
        self.np = np
        self.vocab_size = int(self.data.meta.vocab_size)
        self.in_shape = tuple(int(x) for x in self.data.in_shape(spec.batch_size))
        self.n_batches = self.data.n_train_batches(spec.batch_size, limit=spec.max_train_batches)
        n_val = self.data.meta.n_val if spec.max_val_images is None else min(self.data.meta.n_val,
                                                                              spec.max_val_images)
        if n_val < 1:
            raise RunnerSetupError("the job decodes no validation images (max_val_images < 1 or an empty split)")
        self.val_ids = list(self.data.val_ids[:n_val])
        self.prm = {**spec.prm, "batch": spec.batch_size, "epoch": spec.epochs}
        self.result.seed, self.result.device = spec.seed, spec.device
        _warm_up_torch(spec.device)

    def start_child(self) -> None:
        """Fork the candidate's process; the runner keeps one end of the channel."""
        spec = self.spec
        setup = ChildSetup(candidate=self.job_dir / spec.candidate, in_shape=self.in_shape,  # type: ignore[arg-type]
                           vocab_size=self.vocab_size, prm=dict(self.prm), device=spec.device,
                           max_params=spec.max_params, seed=spec.seed,
                           # OpenMP thread pools do not survive a fork: a shared process may have started one
                           threads=spec.threads if self.own_process else 1,
                           batch_size=spec.batch_size, normalise=self.data.normalise)
        if not setup.candidate.is_file():
            raise RunnerSetupError(f"candidate file {setup.candidate} is missing")
        mine, theirs = channel_pair()

        def child() -> int:  # runs in the forked process only
            mine.close()
            return serve(theirs, setup)

        self.proc.fork(child)
        theirs.close()
        self.chan = mine
        self.cores = allotted_cores(setup.threads)
        self.events.emit("start", seed=spec.seed, device=spec.device, epochs=spec.epochs, mode=spec.mode.value,
                         pid=os.getpid())
        self.smoke_deadline = StepDeadline(self.clock(), spec.smoke_time_limit_s)

    # ------------------------------------------------------------------ deadlines

    def smoke_detail(self) -> str:
        b, _, h, w = self.in_shape
        return (f" It only trains on {self.n_batches} batches of {b} images of {h}x{w} px, so look for a loop "
                "that never ends (a decode loop without a length cap, a `while` waiting for something) or a far "
                "too large model.")

    # ------------------------------------------------------------------ the lifecycle

    def run(self) -> None:
        self.prepare()
        self.start_child()
        self.load()
        for epoch in range(1, self.spec.epochs + 1):
            self.learn(epoch)
            self.decode(epoch)
            write_json_atomic(self.job_dir / PREDICTIONS_FILE, self.predictions_json())
            self.result.epochs_done = epoch
        self.kill_child()
        self.step = Step.DONE
        self.result.status, self.result.category = RunnerStatus.OK, None
        self.result.message = self.accept_message() if self.smoke else f"trained {self.spec.epochs} epoch(s)"

    def load(self) -> None:
        assert self.chan is not None
        t = time.monotonic()
        deadline, limit = self._deadline(self.spec.setup_time_limit_s)
        self.send({"cmd": "device"}, deadline=deadline, limit_s=limit)  # answered before the candidate is imported
        header, _ = self.expect(("device-ok", "unusable"), deadline, limit)
        if header["type"] == "unusable":
            raise RunnerSetupError(safe_text(header.get("message", ""), 2000))
        self.send({"cmd": "load"}, deadline=deadline, limit_s=limit)
        header, _ = self.expect(("loaded",), deadline, limit)
        params = header.get("params")
        if isinstance(params, bool) or not isinstance(params, int) or params < 1:
            raise CandidateFailure(Category.CRASHED, "the candidate's process reported no parameter count.",
                                   step=Step.PARAMS)
        self.result.params = params
        lr = reported_float(header.get("optimizer_lr"))
        self.result.optimizer_lr = lr if lr is not None and math.isfinite(lr) else None
        self.result.timings["init_s"] = round(time.monotonic() - t, 3)
        self.events.emit("model", params=params, in_shape=list(self.in_shape), vocab_size=self.vocab_size)

    def _train_batch(self, epoch: int, index: int) -> tuple[Any, Any]:
        """Batch `index` of `epoch` in the runner's order: uint8 images [B, H, W, 3], int64 captions [B, Ncap, T]."""
        np = self.np
        order = self._order if self._order_epoch == epoch else None
        if order is None:
            order = np.random.default_rng([self.spec.seed, epoch]).permutation(self.data.meta.n_train)
            self._order, self._order_epoch = order, epoch
        b = self.spec.batch_size
        idx = np.sort(order[index * b:(index + 1) * b])
        images = np.ascontiguousarray(self.data.train_images[idx])
        captions = np.ascontiguousarray(self.data.train_captions[idx].astype(np.int64))
        return images, captions

    _order: Any = None
    _order_epoch = 0

    _last_batch_event = 0.0

    def _batch_event(self, epoch: int, index: int, loss: float | None, *, last: bool = False) -> None:
        """A "batch" progress event, throttled to about one a second (the last batch of an epoch always)."""
        now = time.monotonic()
        if not last and now - self._last_batch_event < BATCH_EVENT_INTERVAL_S:
            return
        self._last_batch_event = now
        self.events.emit("batch", epoch=epoch, epochs=self.spec.epochs, batch=index + 1, batches=self.n_batches,
                         loss=loss)

    def learn(self, epoch: int) -> None:
        assert self.chan is not None
        n = self.n_batches
        self.events.emit("epoch_start", epoch=epoch, epochs=self.spec.epochs, batches=n)
        t = time.monotonic()
        self.step = Step.LEARN
        deadline, limit = self._deadline(self.spec.epoch_time_limit_s)
        self.send({"cmd": "learn", "epoch": epoch, "batches": n, "check_changed": epoch == 1}, deadline=deadline,
                  limit_s=limit, epoch=epoch)
        served = 0
        while True:
            header, _ = self.expect(("batch", "learned"), deadline, limit, epoch)
            if header["type"] == "learned":
                break
            index = header.get("index")
            if isinstance(index, int) and 0 < index <= n:
                self._batch_event(epoch, index - 1, reported_float(header.get("loss")))
            failure = batch_request_failure(header, n, epoch)
            if failure is not None:
                self.kill_child()
                raise failure
            assert isinstance(index, int)
            if self.first_batch_t is None:
                self.first_batch_t = time.time()
                self.result.timings["start_to_first_batch_s"] = round(self.first_batch_t - self.t0, 3)
                self.events.emit("first_batch", epoch=epoch)
            images, captions = self._train_batch(epoch, index)
            self.send({"type": "batch", "images": list(images.shape), "captions": list(captions.shape)},
                      memoryview(images).cast("B"), memoryview(captions).cast("B"), deadline=deadline, limit_s=limit,
                      epoch=epoch)
            served += 1
        seconds = time.monotonic() - t
        loss = reported_float(header.get("loss"))
        if served:
            self._batch_event(epoch, n - 1, reported_float(header.get("last_loss", header.get("loss"))), last=True)
        where = f" on {served} batches of {self.spec.batch_size}" if self.smoke else f" in epoch {epoch}"
        failure = learned_failure(header, epoch=epoch, served=served, where=where)
        if failure is not None:
            self.kill_child()
            raise failure
        self.train_loss = loss
        self.epoch_seconds = seconds
        cpu_s = deadline.measure().cpu_s
        self.events.emit("epoch_end", epoch=epoch, epochs=self.spec.epochs, seconds=round(seconds, 3),
                         cpu_s=round(cpu_s, 3), loss=loss)
        self.result.timings["train_cpu_s"] = round(self.result.timings.get("train_cpu_s", 0.0) + cpu_s, 3)
        self.result.timings["train_s"] = round(self.result.timings.get("train_s", 0.0) + seconds, 3)

    def decode(self, epoch: int) -> None:
        assert self.chan is not None
        np = self.np
        t = time.monotonic()
        self.step = Step.DECODE
        deadline, limit = self._deadline(self.spec.decode_limit_s)
        b = self.spec.decode_batch_size
        out: dict[str, list[int]] = {}
        self.last_shape: list[int] = []
        for start in range(0, len(self.val_ids), b):
            ids = self.val_ids[start:start + b]
            images = np.ascontiguousarray(self.data.val_images[start:start + len(ids)])
            self.send({"cmd": "decode", "shape": list(images.shape)}, memoryview(images).cast("B"),
                      deadline=deadline, limit_s=limit, epoch=epoch)
            header, payloads = self.expect(("ids",), deadline, limit, epoch,
                                           max_payload=len(ids) * MAX_PREDICTION_LEN * 8)
            try:
                rows = decoded_rows(header, payloads, len(ids), self.vocab_size)
            except CandidateFailure:
                self.kill_child()
                raise
            self.last_shape = [len(ids), int(rows.shape[1])]
            for image_id, row in zip(ids, rows.tolist(), strict=True):
                out[image_id] = cut_at_eos(row)
        seconds = time.monotonic() - t
        self.events.emit("decoded", epoch=epoch, seconds=round(seconds, 3), images=len(out))
        self.epochs.append(EpochPredictions(epoch=epoch, seconds=round(self.epoch_seconds, 3),
                                            decode_seconds=round(seconds, 3), train_loss=self.train_loss, ids=out))
        self.result.timings["decode_s"] = round(self.result.timings.get("decode_s", 0.0) + seconds, 3)

    def accept_message(self) -> str:
        t = self.result.timings
        secs = ", ".join(f"{k[:-2]} {t[k]:.2f} s" for k in ("init_s", "train_s", "decode_s") if k in t)
        return (f"smoke check passed: {self.result.params:,} parameters; learned on {self.n_batches} batches of "
                f"{self.spec.batch_size}; forward(images) decoded ids of shape {self.last_shape} "
                f"(vocabulary {self.vocab_size}); {secs}")

    def predictions_json(self) -> dict[str, Any]:
        return {"epochs": [e.__dict__ for e in self.epochs]}


def _warm_up_torch(device: str = "cpu") -> None:
    """Pay torch's one-off lazy imports (the first optimiser step pulls in torch._dynamo) before forking.

    Two-element tensors only: no OpenMP thread pool is started, so the fork stays safe. Nothing for a CUDA job:
    the first backward pass starts autograd's device threads, which initialises the CUDA driver, and a child
    forked after that cannot use the GPU ("CUDA error: initialization error"; found on an H200 with
    evals/gpu_doctor.py: importing torch and this module is fork-safe, one backward is not).
    """
    if device.startswith("cuda"):
        return
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    (p * 2).sum().backward()
    opt.step()


# --------------------------------------------------------------------------- the job


def run_job(job_dir: Path, *, own_process: bool = False) -> int:
    """Run the job in `job_dir` to its end; write result.json; return the exit code.

    0 when the candidate trained and decoded every epoch, 1 when it failed
    cleanly (result.json says why), 2 when the job itself is unusable.
    `own_process=True` (the `nncaption.netapi.run` entry) lets the runner act as
    the subreaper of everything the candidate starts and kill all of it; in a
    shared process (tests) only the candidate's process group is killed, and the
    candidate trains with one thread whatever the spec says (this process may
    have started an OpenMP thread pool, which does not survive a fork).
    """
    job_dir = Path(job_dir)
    t0 = time.time()
    events = EventLog(job_dir / PROGRESS_FILE)
    reserve = reserve_space(job_dir / RESERVE_FILE)
    result = RunnerResult(status=RunnerStatus.FAILED)
    runner: Runner | None = None
    try:
        try:
            spec = JobSpec.read(job_dir)
        except (OSError, ValueError, TypeError) as e:
            raise RunnerSetupError(f"cannot read {job_dir}/job.json: {e}") from e
        result.stage = Stage.SMOKE if spec.mode is Mode.SMOKE else Stage.TRAIN
        runner = Runner(job_dir, spec, events, result, t0, own_process=own_process)
        runner.run()
        code = EXIT_OK
    except CandidateFailure as f:
        result.status, result.category, result.message = RunnerStatus.FAILED, f.category, f.message
        result.line, result.traceback, result.signal = f.line, f.tb, f.sig
        result.step = f.step or (runner.step if runner else Step.START)
        code = EXIT_FAILED
    except RunnerSetupError as e:
        result.status, result.category = RunnerStatus.ERROR, None
        result.message = f"runner setup error: {e}"
        code = EXIT_RUNNER_ERROR
    except MachineOverloaded as e:  # starved by the machine: not the candidate's doing (job-error, retried)
        result.status, result.category, result.message = RunnerStatus.ERROR, None, str(e)
        result.step = runner.step if runner else Step.START
        code = EXIT_RUNNER_ERROR
    except BaseException as e:  # noqa: BLE001 - a bug of the runner itself; still report it
        traceback.print_exc()
        result.status, result.category = RunnerStatus.ERROR, Category.CRASHED
        result.message = f"runner error outside candidate code: {exception_summary(e)}"
        result.traceback = "".join(traceback.format_exception(e))[-4000:]
        code = EXIT_RUNNER_ERROR
    finally:
        if runner is not None:
            runner.kill_child()  # nothing of the candidate is alive when the files below are written
    if runner is not None:
        if result.status is RunnerStatus.OK:
            result.step = Step.DONE
        elif result.step is Step.START:
            result.step = runner.step
    result.timings["total_s"] = round(time.time() - t0, 3)
    release_space(reserve)  # the candidate is dead: its disk quota may be full, the files below must still fit
    if runner is not None and runner.epochs:
        write_json_atomic(job_dir / PREDICTIONS_FILE, runner.predictions_json())
    if result.status is RunnerStatus.OK:
        events.emit("done", epochs=result.epochs_done, seconds=result.timings["total_s"])
    else:
        if result.traceback:
            print(result.traceback, file=sys.stderr)
        events.emit("error", category=result.category.value if result.category else None, message=result.message)
    write_json_atomic(job_dir / RESULT_FILE, result.to_dict())
    events.close()
    return code
