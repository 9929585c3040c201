"""The smoke check: import a candidate and run it once on a tiny real batch.

`smoke_check` runs in the CURRENT process. Callers that do not trust the
candidate isolate it by running `python -m nncaption.netapi.smoke JOB_DIR` in a
sandbox or through `nncaption.netapi.smoke.smoke_in_subprocess`, which adds a
hard wall-clock timeout (the process group is killed).

Stages, each mapped to a category when it fails:

    import       execute the candidate module                   -> init-error
    hparams      supported_hyperparameters() returns a set      -> bad-signature
    init         Net(in_shape, (vocab,), prm, device)           -> init-error
    params       parameter count within the budget              -> too-large
    setup        net.train_setup(prm)                           -> setup-error
    learn        net.learn([two tiny batches])                  -> learn-error / shape-error
                 the loss learn returns and the parameters stay finite -> nan
                 at least one parameter changed                 -> learn-error
    eval         net.eval(); with no_grad: net(images)          -> eval-contract
                 output ids [B, L] / logits [B, L, V] in range  -> shape-error (nan for NaN/Inf logits)

Any stage may also end as out-of-memory (MemoryError, torch OOM), shape-error
(shape mismatch text), crashed (an exit call) or timeout.

Time: one budget (`time_limit_s`) covers all stages. It is checked between
stages, and a watchdog thread raises `SmokeTimeout` inside the running stage
when the budget is spent (via `PyThreadState_SetAsyncExc`, re-sent every half
second). That interrupts Python-level loops, but not a single long call into C
(a huge matmul, `time.sleep`), nor code that swallows every exception: the hard
timeout comes from the subprocess/sandbox that runs the smoke check.
"""

from __future__ import annotations

import ctypes
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from nncaption.netapi.categories import Category, Verdict
from nncaption.netapi.contract import NET_METHODS, OutputContractError, output_to_ids
from nncaption.netapi.errors import ConfigError
from nncaption.netapi.job import DEFAULT_PRM
from nncaption.netapi.loading import (
    candidate_line,
    classify_exception,
    exception_summary,
    format_traceback_for_fixer,
    load_candidate,
    unload_candidate,
)
from nncaption.netapi.validate import static_check

STAGE = "smoke"
_NOT_RUN = object()
SMOKE_TRAIN_BATCHES = 2
TRACEBACK_LINES = 12
StageCallback = Callable[[str], None]

STAGE_WHAT: dict[str, str] = {
    "import": "importing the candidate file",
    "hparams": "supported_hyperparameters()",
    "init": "Net(in_shape, out_shape, prm, device)",
    "setup": "Net.train_setup(prm)",
    "learn": "Net.learn(train_data)",
    "eval": "free-running forward(images) with captions=None",
}
STAGE_PHASE: dict[str, str] = {"import": "import", "hparams": "init", "init": "init", "setup": "setup",
                               "learn": "learn", "eval": "eval"}


class SmokeTimeout(BaseException):
    """Raised inside the running stage when the smoke budget is spent.

    A BaseException so that a candidate's `except Exception:` does not swallow it.
    """


class _Rejected(Exception):
    """Internal: a stage decided to reject; carries the verdict."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.message)
        self.verdict = verdict


@dataclass
class SmokeInputs:
    """What the smoke check feeds the candidate (built from the real data loader)."""

    in_shape: tuple[int, int, int, int]
    vocab_size: int
    train_batches: list[tuple[Any, Any]]
    val_images: Any
    prm: dict[str, Any]


# --------------------------------------------------------------------------- watchdog


def _async_raise(thread_id: int, exc_type: type[BaseException] | None) -> None:
    """Schedule `exc_type` in thread `thread_id` (None clears a pending one)."""
    obj = ctypes.py_object(exc_type) if exc_type is not None else None
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), obj)


class _Watchdog:
    """Raises SmokeTimeout in the thread that entered it once `deadline` (monotonic) passes."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.fired = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._armed = False
        self._tid = 0
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "_Watchdog":
        self._tid = threading.get_ident()
        self._armed = True
        self._thread = threading.Thread(target=self._run, name="smoke-watchdog", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        if self._stop.wait(max(0.0, self.deadline - time.monotonic())):
            return
        while True:
            with self._lock:
                if not self._armed:
                    return
                self.fired = True
                _async_raise(self._tid, SmokeTimeout)
            if self._stop.wait(0.5):  # re-send: the candidate may have swallowed it
                return

    def disarm(self) -> None:
        """Stop the watchdog and clear an exception it scheduled but that was not delivered yet."""
        for _ in range(5):
            try:
                with self._lock:
                    self._armed = False
                    self._stop.set()
                if self.fired:
                    _async_raise(self._tid, None)
                return
            except SmokeTimeout:  # delivered while disarming: it is gone now, try again
                continue

    def __exit__(self, *exc: object) -> None:
        self.disarm()


# --------------------------------------------------------------------------- inputs


def make_inputs(data_dir: Path, *, batch_size: int, device: str, seed: int,
                prm: dict[str, Any] | None = None) -> SmokeInputs:
    """Two tiny training batches and one batch of validation images from the real prepared data.

    Raises DatasetError (not a candidate failure) when the data directory is not a prepared dataset,
    ConfigError when the device is invalid or unavailable.
    """
    import torch

    from nncaption.netapi.data.loader import PreparedData

    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"invalid device {device!r}: {e}", "use cpu, cuda or cuda:N") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available here", "use --device cpu")
    data = PreparedData.open(Path(data_dir))
    train = [
        (images.to(dev), captions.to(dev))
        for images, captions in data.train_batches(batch_size, seed=seed, epoch=0, limit=SMOKE_TRAIN_BATCHES)
    ]
    _, val_images = next(iter(data.val_batches(batch_size, limit=batch_size)))
    params: dict[str, Any] = {**DEFAULT_PRM, **(prm or {}), "batch": batch_size, "epoch": 1}
    return SmokeInputs(
        in_shape=data.in_shape(batch_size),
        vocab_size=int(data.meta.vocab_size),
        train_batches=train,
        val_images=val_images.to(dev),
        prm=params,
    )


def warm_up_torch() -> None:
    """Pay torch's one-off lazy imports (the first optimiser pulls in torch._dynamo: ~1-2 s) before the clock starts."""
    import torch

    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    (p * 2).sum().backward()
    opt.step()


# --------------------------------------------------------------------------- smoke check


def smoke_check(
    candidate: Path,
    data_dir: Path,
    *,
    batch_size: int = 4,
    max_params: int = 50_000_000,
    time_limit_s: float = 120.0,
    device: str = "cpu",
    seed: int = 0,
    prm: dict[str, Any] | None = None,
    on_stage: StageCallback | None = None,
) -> Verdict:
    """Run the candidate once on tiny real batches in this process; stage "smoke".

    `on_stage(name)` is called as each stage starts (import, hparams, init,
    params, setup, learn, eval), so a parent that has to kill the process can
    say where it was. Torch's one-off lazy imports are paid before the clock
    starts (`warm_up_torch`), so `time_limit_s` measures the candidate.
    Raises DatasetError when `data_dir` is not a prepared dataset and
    ConfigError for an unusable device (caller problems, not the candidate's).
    """
    import torch

    candidate = Path(candidate)
    inputs = make_inputs(data_dir, batch_size=batch_size, device=device, seed=seed, prm=prm)
    warm_up_torch()
    t0 = time.monotonic()
    deadline = t0 + time_limit_s
    run = _SmokeRun(candidate, inputs, torch.device(device), max_params, time_limit_s, t0, on_stage)
    watchdog = _Watchdog(deadline)

    def guarded() -> Verdict | None:
        try:
            with watchdog:
                torch.manual_seed(seed)
                return run.execute()
        except SmokeTimeout:
            return None

    # A SmokeTimeout can land at any bytecode until the watchdog is disarmed and its pending
    # exception cleared; loop until that has happened, so none escapes to the caller.
    pending: object = _NOT_RUN
    while True:
        try:
            if pending is _NOT_RUN:
                pending = guarded()
            watchdog.disarm()
            break
        except SmokeTimeout:
            if pending is _NOT_RUN:
                pending = None
    run.cleanup()
    return pending if isinstance(pending, Verdict) else run.timeout_verdict()


def check(candidate: Path, data_dir: Path, **kwargs: Any) -> Verdict:
    """Static check, then (if it passes) the smoke check in this process.

    Keyword arguments go to `smoke_check`. Raises ConfigError when the file
    cannot be read.
    """
    candidate = Path(candidate)
    try:
        source = candidate.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        return Verdict.reject("static", Category.SYNTAX, f"{candidate.name} is not UTF-8 text ({e}); "
                              "send plain Python source.")
    except OSError as e:
        raise ConfigError(f"cannot read candidate file {candidate}: {e.strerror or e}",
                          "pass the path of a Python file, or ref-lstm / ref-gru / ref-transformer") from e
    verdict = static_check(source, filename=candidate.name)
    if not verdict.ok:
        return verdict
    return smoke_check(candidate, data_dir, **kwargs)


class _SmokeRun:
    """The stages of one smoke check, with the state they share."""

    def __init__(self, candidate: Path, inputs: SmokeInputs, device: Any, max_params: int,
                 time_limit_s: float, t0: float, on_stage: StageCallback | None) -> None:
        self.candidate = candidate
        self.inputs = inputs
        self.device = device
        self.max_params = max_params
        self.time_limit_s = time_limit_s
        self.t0 = t0
        self.on_stage = on_stage
        self.stage = "import"
        self.module: ModuleType | None = None
        self.timings: dict[str, float] = {}

    # ---- helpers

    def _enter(self, stage: str) -> None:
        elapsed = time.monotonic() - self.t0
        if elapsed > self.time_limit_s:
            raise SmokeTimeout()
        self.stage = stage
        if self.on_stage is not None:
            self.on_stage(stage)

    def _done(self, stage: str, started: float) -> None:
        self.timings[stage] = time.monotonic() - started

    def reject(self, category: Category, message: str, line: int | None = None, *, hint: bool = True) -> _Rejected:
        """A rejection; the category's generic hint is appended unless the message already says what to do."""
        text = f"{message}\nWhat to change: {category.hint}" if hint else message
        return _Rejected(Verdict.reject(STAGE, category, text, line))

    def from_exception(self, exc: BaseException) -> _Rejected:
        """A verdict for an exception raised by candidate code in the current stage."""
        if isinstance(exc, SystemExit):
            return self.reject(
                Category.CRASHED,
                f"{STAGE_WHAT[self.stage]} called exit (SystemExit {exc.code!r}) at candidate line "
                f"{candidate_line(exc, self.candidate) or '?'}; a model must never exit the process — "
                "remove sys.exit/exit/quit.",
                candidate_line(exc, self.candidate),
            )
        category = classify_exception(exc, STAGE_PHASE[self.stage])
        line = candidate_line(exc, self.candidate)
        where = f" at candidate line {line}" if line else ""
        head = f"{STAGE_WHAT[self.stage]} raised {exception_summary(exc)}{where}."
        if self.stage == "eval" and category is Category.EVAL_CONTRACT:
            head += (" Scoring calls forward(images) alone (captions=None, hidden_state=None): the model must "
                     "decode greedily from SOS without captions.")
        hint = True
        if category is Category.SHAPE_ERROR:
            b, c, h, w = self.inputs.in_shape
            head += (f" Tensor shapes do not fit: derive each layer's input size from what reaches it "
                     f"(images here are [{b}, {c}, {h}, {w}], captions [{b}, Ncap, T] with a vocabulary of "
                     f"{self.inputs.vocab_size}), e.g. with nn.AdaptiveAvgPool2d before the first Linear, "
                     "instead of hard-coding it.")
            hint = self.stage == "eval"
        elif category is Category.NEEDS_INTERNET:
            head += " There is no network: do not download weights or data; build the layers from scratch."
        tb = format_traceback_for_fixer(exc, self.candidate, TRACEBACK_LINES)
        return self.reject(category, f"{head}\n{tb}", line, hint=hint)

    def timeout_verdict(self) -> Verdict:
        elapsed = time.monotonic() - self.t0
        spent = ", ".join(f"{k} {v:.1f} s" for k, v in self.timings.items())
        message = (
            f"the smoke check ran past its {self.time_limit_s:g} s budget during {STAGE_WHAT[self.stage]} "
            f"(after {elapsed:.1f} s; finished stages: {spent or 'none'}). It only trains on "
            f"{SMOKE_TRAIN_BATCHES} batches of {self.inputs.in_shape[0]} images of "
            f"{self.inputs.in_shape[2]}x{self.inputs.in_shape[3]} px, so look for a loop that never ends "
            "(a decode loop without a length cap, a `while` waiting for something) or a far too large model."
            f"\nWhat to change: {Category.TIMEOUT.hint}"
        )
        return Verdict.reject(STAGE, Category.TIMEOUT, message, None)

    def cleanup(self) -> None:
        if self.module is not None:
            unload_candidate(self.module)

    # ---- stages

    def execute(self) -> Verdict:
        try:
            return self._stages()
        except _Rejected as r:
            return r.verdict

    def _call(self, fn: Callable[[], Any]) -> Any:
        """Run candidate code for the current stage, turning its exceptions into a rejection."""
        started = time.monotonic()
        try:
            return fn()
        except (SmokeTimeout, KeyboardInterrupt):
            raise
        except BaseException as exc:  # noqa: BLE001 - candidate code may raise anything, SystemExit included
            raise self.from_exception(exc) from None
        finally:
            self._done(self.stage, started)

    def _stages(self) -> Verdict:
        import torch

        inp = self.inputs
        self._enter("import")
        self.module = self._call(lambda: load_candidate(self.candidate))
        module = self.module

        self._enter("hparams")
        hp_fn = getattr(module, "supported_hyperparameters", None)
        if not callable(hp_fn):
            raise self.reject(Category.MISSING_SYMBOL, "the module has no callable `supported_hyperparameters`; "
                              "define it at module level.")
        hps = self._call(hp_fn)
        if not isinstance(hps, (set, frozenset)) or not all(isinstance(h, str) for h in hps):
            raise self.reject(Category.BAD_SIGNATURE, f"supported_hyperparameters() returned {hps!r} "
                              f"({type(hps).__name__}); it must return a set of names such as "
                              "{'lr', 'momentum', 'dropout'}.")

        net_cls = getattr(module, "Net", None)
        if not (isinstance(net_cls, type) and issubclass(net_cls, torch.nn.Module)):
            raise self.reject(Category.MISSING_SYMBOL, "the module has no `class Net(nn.Module)`; define it at "
                              "module level, deriving from torch.nn.Module.")
        missing = [m for m in NET_METHODS if not callable(getattr(net_cls, m, None))
                   or getattr(net_cls, m) is getattr(torch.nn.Module, m, object())]
        if missing:
            raise self.reject(Category.MISSING_SYMBOL, f"class Net lacks {', '.join(missing)}; define "
                              + "; ".join(f"`def {m}({', '.join(NET_METHODS[m])})`" for m in missing) + ".")

        self._enter("init")
        out_shape = (inp.vocab_size,)
        net = self._call(lambda: net_cls(inp.in_shape, out_shape, dict(inp.prm), self.device))
        if not isinstance(net, torch.nn.Module):  # __new__ tricks
            raise self.reject(Category.INIT_ERROR, "Net(...) did not return an nn.Module instance.")

        self._enter("params")
        n_params = sum(p.numel() for p in net.parameters())
        if n_params > self.max_params:
            raise self.reject(
                Category.TOO_LARGE,
                f"Net has {n_params:,} parameters, over the budget of {self.max_params:,} "
                f"({n_params / self.max_params:.1f}x). Shrink the largest layers (often the embedding/output "
                f"layers of size vocab={inp.vocab_size}, or wide fully connected layers after the CNN).",
            )
        if n_params == 0:
            raise self.reject(Category.INIT_ERROR, "Net has no parameters: create the layers (as attributes or "
                              "in nn.ModuleList/nn.Sequential) in __init__, after super().__init__().")

        self._enter("setup")
        self._call(lambda: net.train_setup(dict(inp.prm)))

        self._enter("learn")
        before = [p.detach().clone() for p in net.parameters()]
        net.train()
        loss = self._call(lambda: net.learn(list(inp.train_batches)))
        self._check_after_learn(net, loss, before)
        del before

        self._enter("eval")
        net.eval()

        def decode() -> Any:
            with torch.no_grad():
                return net(inp.val_images)

        out = self._call(decode)
        ids = self._check_output(out)
        secs = ", ".join(f"{k} {v:.2f} s" for k, v in self.timings.items() if v >= 0.005)
        return Verdict.accept(
            STAGE,
            f"smoke check passed: {n_params:,} parameters; learned on {SMOKE_TRAIN_BATCHES} batches of "
            f"{inp.in_shape[0]}; forward(images) decoded ids of shape {list(ids.shape)} "
            f"(vocabulary {inp.vocab_size}); {secs}",
        )

    def _check_after_learn(self, net: Any, loss: Any, before: list[Any]) -> None:
        import torch

        value: float | None = None
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            value = float(loss.detach().float().cpu())
        elif isinstance(loss, (int, float)) and not isinstance(loss, bool):
            value = float(loss)
        if value is not None and not math.isfinite(value):
            raise self.reject(Category.NAN, f"Net.learn returned a non-finite loss ({value}) after "
                              f"{SMOKE_TRAIN_BATCHES} tiny batches.")
        params = list(net.named_parameters())
        for name, p in params:
            if not torch.isfinite(p.detach()).all():
                raise self.reject(Category.NAN, f"parameter `{name}` holds NaN/Inf after Net.learn on "
                                  f"{SMOKE_TRAIN_BATCHES} tiny batches (the loss diverged).")
        if len(before) == len(params) and all(
            b.shape == p.shape and torch.equal(b, p.detach()) for b, (_, p) in zip(before, params)
        ):
            raise self.reject(
                Category.LEARN_ERROR,
                f"Net.learn ran over {SMOKE_TRAIN_BATCHES} batches but changed no parameter. In learn, for each "
                "(images, captions) batch: compute the loss, call loss.backward() and self.optimizer.step() "
                "(the optimiser created in train_setup from self.parameters()).",
                hint=False,
            )

    def _check_output(self, out: Any) -> Any:
        import torch

        what = "forward(images) with captions=None"
        first = out
        if isinstance(out, (tuple, list)):
            if not out:
                raise self.reject(Category.EVAL_CONTRACT, f"{what} returned an empty {type(out).__name__}; "
                                  "return ids [B, L] or logits [B, L, V] (optionally as (ids, hidden)).")
            first = out[0]
        if first is None:
            raise self.reject(Category.EVAL_CONTRACT, f"{what} returned None"
                              + (" as the first element" if first is not out else "")
                              + "; without captions it must decode free-running (greedy from SOS, stop at EOS) "
                              "and return token ids [B, L] or logits [B, L, V].")
        if not isinstance(first, torch.Tensor):
            raise self.reject(Category.EVAL_CONTRACT, f"{what} returned {type(first).__name__}; return a tensor "
                              "of token ids [B, L] or logits [B, L, V] (optionally as (ids, hidden)).")
        if first.is_floating_point() and not torch.isfinite(first).all():
            raise self.reject(Category.NAN, f"{what} returned NaN/Inf values (shape {list(first.shape)}).")
        batch = int(self.inputs.val_images.shape[0])
        try:
            ids = output_to_ids(first, batch, self.inputs.vocab_size)
        except OutputContractError as e:
            raise self.reject(Category.SHAPE_ERROR, f"{e} (batch {batch}, vocabulary {self.inputs.vocab_size}).")
        if ids.shape[1] == 0:
            raise self.reject(Category.EVAL_CONTRACT, f"{what} returned no tokens (shape {list(ids.shape)}); "
                              "decode at least until EOS (at most ~20 steps).")
        return ids
