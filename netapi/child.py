"""The candidate's side of a job: a child process forked by the runner, driven over a channel.

The runner (`nncaption.netapi.train`) imports torch and opens the data, then forks
this child *before* any candidate code exists in memory. The child alone imports
the candidate and calls it; the runner keeps the clock, the data order, the
validation image ids and the files. Whatever the candidate patches (nncaption
modules included) exists only in this child process; the runner enforces its
deadlines by killing the child and validates every byte that comes back.

Commands (runner -> child) and replies (child -> runner), one JSON header each:

    load                      -> step {...} while going, then loaded {params}
    learn {epoch, batches}    -> batch {index, loss, finite} requests, each answered with a
                                 batch (uint8 images + int64 captions payloads); then
                                 learned {loss, finite, changed}
    decode {shape} + images   -> ids {shape} + int64 payload
    exit
    any failure               -> fail {category, message, line, traceback, step}

The checks here are the lifecycle's rules for both smoke and train jobs: missing
symbols, the hyperparameter set, the parameter budget, a learn that changes no
parameter (first epoch), finite parameters, and the shape of a free-running decode.
The messages are written for the fixer agent: what broke, where, what to change.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nncaption.netapi.categories import Category
from nncaption.netapi.childtorch import cuda_problem, json_float, number, params_finite, read_loss, seed_process
from nncaption.netapi.contract import NET_METHODS, OutputContractError, output_to_ids
from nncaption.netapi.job import MAX_PREDICTION_LEN, Step
from nncaption.netapi.loading import (
    candidate_line,
    classify_exception,
    exception_summary,
    format_traceback_for_fixer,
    load_candidate,
)
from nncaption.netapi.wire import Channel

log = logging.getLogger(__name__)

TRACEBACK_LINES = 12
PARAM_CHECK_EVERY_LARGE = 10  # batches between NaN checks of the parameters for models over 5M params

STEP_WHAT: dict[Step, str] = {
    Step.IMPORT: "importing the candidate file",
    Step.HPARAMS: "supported_hyperparameters()",
    Step.INIT: "Net(in_shape, out_shape, prm, device)",
    Step.PARAMS: "counting the parameters",
    Step.SETUP: "Net.train_setup(prm)",
    Step.LEARN: "Net.learn(train_data)",
    Step.DECODE: "free-running forward(images) with captions=None",
}
STEP_PHASE: dict[Step, str] = {Step.IMPORT: "import", Step.HPARAMS: "init", Step.INIT: "init", Step.PARAMS: "init",
                               Step.SETUP: "setup", Step.LEARN: "learn", Step.DECODE: "eval"}


@dataclass
class ChildSetup:
    """What the runner prepared before forking: the child inherits it with its memory."""

    candidate: Path
    in_shape: tuple[int, int, int, int]
    vocab_size: int
    prm: dict[str, Any]
    device: str
    max_params: int
    seed: int
    threads: int | None
    batch_size: int
    normalise: Callable[[Any], Any]  # uint8 [B, H, W, 3] -> float32 [B, 3, H, W]


class Rejected(Exception):
    """The candidate broke a rule: carries what the runner needs to report it."""

    def __init__(self, category: Category, message: str, line: int | None = None, traceback: str = "") -> None:
        super().__init__(message)
        self.category = category
        self.message = message
        self.line = line
        self.traceback = traceback


def reject(category: Category, message: str, line: int | None = None, *, hint: bool = True,
           traceback: str = "") -> Rejected:
    """A rejection; the category's generic hint is appended unless the message already says what to do."""
    text = f"{message}\nWhat to change: {category.hint}" if hint else message
    return Rejected(category, text, line, traceback)


class BatchFeed:
    """The `train_data` handed to `learn`: sized and re-iterable like a DataLoader; batches come from the runner."""

    def __init__(self, session: Session, epoch: int, n_batches: int) -> None:
        self._s = session
        self._epoch = epoch
        self._n = n_batches

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[Any]:
        import numpy as np
        import torch

        s = self._s
        for index in range(self._n):
            loss = read_loss(s.net) if index > 0 else None
            finite = params_finite(s.net) if index > 0 and index % s.check_every == 0 else True
            s.chan.send({"type": "batch", "epoch": self._epoch, "index": index, "loss": json_float(loss),
                         "finite": finite})
            header, payloads = s.chan.recv(None, max_payload=1 << 30)
            if header.get("type") != "batch" or len(payloads) != 2:
                return
            images = np.frombuffer(payloads[0], dtype=np.uint8).reshape(header["images"])
            captions = np.frombuffer(payloads[1], dtype=np.int64).reshape(header["captions"]).copy()
            yield s.setup.normalise(images).to(s.device), torch.from_numpy(captions).to(s.device)


class Session:
    """The candidate's model and the commands the runner sends it."""

    def __init__(self, chan: Channel, setup: ChildSetup) -> None:
        import torch

        self.chan = chan
        self.setup = setup
        self.device = torch.device(setup.device)
        self.step = Step.IMPORT
        self.net: Any = None
        self.params: int | None = None
        self.check_every = 1

    # ------------------------------------------------------------------ helpers

    def enter(self, step: Step) -> None:
        self.step = step
        self.chan.send({"type": "step", "step": step.value})

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run candidate code for the current step, turning its exceptions into a rejection."""
        try:
            return fn()
        except BaseException as exc:  # noqa: BLE001 - candidate code may raise anything, SystemExit included
            raise self.from_exception(exc) from None

    def from_exception(self, exc: BaseException) -> Rejected:
        """A rejection for an exception raised by candidate code in the current step."""
        cand = self.setup.candidate
        line = candidate_line(exc, cand)
        tb = format_traceback_for_fixer(exc, cand, TRACEBACK_LINES)
        what = STEP_WHAT[self.step]
        if isinstance(exc, SystemExit):
            return reject(Category.CRASHED, f"{what} called exit (SystemExit {exc.code!r}) at candidate line "
                          f"{line or '?'}; a model must never exit the process — remove sys.exit/exit/quit.",
                          line, traceback=tb)
        category = classify_exception(exc, STEP_PHASE[self.step])
        where = f" at candidate line {line}" if line else ""
        head = f"{what} raised {exception_summary(exc)}{where}."
        if self.step is Step.DECODE and category is Category.EVAL_CONTRACT:
            head += (" Scoring calls forward(images) alone (captions=None, hidden_state=None): the model must "
                     "decode greedily from SOS without captions.")
        hint = True
        if category is Category.SHAPE_ERROR:
            b, c, h, w = self.setup.in_shape
            head += (f" Tensor shapes do not fit: derive each layer's input size from what reaches it "
                     f"(images here are [{b}, {c}, {h}, {w}], captions [{b}, Ncap, T] with a vocabulary of "
                     f"{self.setup.vocab_size}), e.g. with nn.AdaptiveAvgPool2d before the first Linear, "
                     "instead of hard-coding it.")
            hint = self.step is Step.DECODE
        elif category is Category.NEEDS_INTERNET:
            head += " There is no network: do not download weights or data; build the layers from scratch."
        return reject(category, f"{head}\n{tb}", line, hint=hint, traceback=tb)

    # ------------------------------------------------------------------ commands

    def load(self) -> int:
        """Import, symbols, Net(...), parameter budget, train_setup; returns the parameter count."""
        import torch

        s = self.setup
        self.enter(Step.IMPORT)
        module = self.call(lambda: load_candidate(s.candidate))

        self.enter(Step.HPARAMS)
        hp_fn = getattr(module, "supported_hyperparameters", None)
        if not callable(hp_fn):
            raise reject(Category.MISSING_SYMBOL, "the module has no callable `supported_hyperparameters`; "
                         "define it at module level.")
        hps = self.call(hp_fn)
        if not isinstance(hps, (set, frozenset)) or not all(isinstance(h, str) for h in hps):
            raise reject(Category.BAD_SIGNATURE, f"supported_hyperparameters() returned {hps!r:.200} "
                         f"({type(hps).__name__}); it must return a set of names such as "
                         "{'lr', 'momentum', 'dropout'}.")
        net_cls = getattr(module, "Net", None)
        if not (isinstance(net_cls, type) and issubclass(net_cls, torch.nn.Module)):
            raise reject(Category.MISSING_SYMBOL, "the module has no `class Net(nn.Module)`; define it at "
                         "module level, deriving from torch.nn.Module.")
        missing = [m for m in NET_METHODS if not callable(getattr(net_cls, m, None))
                   or getattr(net_cls, m) is getattr(torch.nn.Module, m, object())]
        if missing:
            raise reject(Category.MISSING_SYMBOL, f"class Net lacks {', '.join(missing)}; define "
                         + "; ".join(f"`def {m}({', '.join(NET_METHODS[m])})`" for m in missing) + ".")

        self.enter(Step.INIT)
        net = self.call(lambda: net_cls(s.in_shape, (s.vocab_size,), dict(s.prm), self.device))
        if not isinstance(net, torch.nn.Module):  # __new__ tricks
            raise reject(Category.INIT_ERROR, "Net(...) did not return an nn.Module instance.")
        self.net = net

        self.enter(Step.PARAMS)
        n_params = int(self.call(lambda: sum(int(p.numel()) for p in net.parameters())))
        self.params = n_params
        if n_params > s.max_params:
            raise reject(
                Category.TOO_LARGE,
                f"Net has {n_params:,} parameters, over the budget of {s.max_params:,} "
                f"({n_params / s.max_params:.1f}x). Shrink the largest layers (often the embedding/output "
                f"layers of size vocab={s.vocab_size}, or wide fully connected layers after the CNN).",
            )
        if n_params == 0:
            raise reject(Category.INIT_ERROR, "Net has no parameters: create the layers (as attributes or "
                         "in nn.ModuleList/nn.Sequential) in __init__, after super().__init__().")
        self.check_every = 1 if n_params <= 5_000_000 else PARAM_CHECK_EVERY_LARGE

        self.enter(Step.SETUP)
        self.call(lambda: self.net.train_setup(dict(s.prm)))
        return n_params

    def optimizer_lr(self) -> float | None:
        """The learning rate of the candidate's optimiser (attribute optimizer / optimiser / opt), when it has one."""
        for name in ("optimizer", "optimiser", "opt"):
            try:
                groups = getattr(getattr(self.net, name, None), "param_groups", None)
                lr = number(groups[0]["lr"]) if groups else None
            except Exception:  # noqa: BLE001 - candidate objects may raise anything
                log.debug("reading the optimiser's lr failed", exc_info=True)
                continue
            if lr is not None and math.isfinite(lr):
                return lr
        return None

    def learn(self, epoch: int, n_batches: int, check_changed: bool) -> dict[str, Any]:
        """One epoch of net.learn over batches served by the runner."""
        import torch

        self.enter(Step.LEARN)
        net = self.net
        before = [p.detach().clone() for p in net.parameters()] if check_changed else None
        feed = BatchFeed(self, epoch, n_batches)

        def go() -> Any:
            net.train()
            return net.learn(feed)

        returned = self.call(go)
        loss = number(returned)
        if loss is None:
            loss = read_loss(net)
        finite = params_finite(net)
        changed: bool | None = None
        if before is not None:
            params = list(net.parameters())
            changed = not (len(before) == len(params) and all(
                b.shape == p.shape and torch.equal(b, p.detach()) for b, p in zip(before, params, strict=False)))
        return {"type": "learned", "loss": json_float(loss), "last_loss": json_float(read_loss(net)),
                "finite": finite, "changed": changed}

    def decode(self, images_u8: Any) -> Any:
        """net.eval(); net(images) under no_grad; the ids [B, L] (int64, at most MAX_PREDICTION_LEN long)."""
        import torch

        self.enter(Step.DECODE)
        net = self.net
        images = self.setup.normalise(images_u8).to(self.device)

        def go() -> Any:
            net.eval()
            with torch.no_grad():
                return net(images)

        out = self.call(go)
        ids = self.check_output(out, int(images.shape[0]))
        return ids[:, :MAX_PREDICTION_LEN].to(torch.int64).contiguous()

    def check_output(self, out: Any, batch: int) -> Any:
        """The free-running output as ids [B, L], or a rejection saying what is wrong with it."""
        import torch

        what = "forward(images) with captions=None"
        vocab = self.setup.vocab_size
        first = out
        if isinstance(out, (tuple, list)):
            if not out:
                raise reject(Category.EVAL_CONTRACT, f"{what} returned an empty {type(out).__name__}; "
                             "return ids [B, L] or logits [B, L, V] (optionally as (ids, hidden)).")
            first = out[0]
        if first is None:
            raise reject(Category.EVAL_CONTRACT, f"{what} returned None"
                         + (" as the first element" if first is not out else "")
                         + "; without captions it must decode free-running (greedy from SOS, stop at EOS) "
                         "and return token ids [B, L] or logits [B, L, V].")
        if not isinstance(first, torch.Tensor):
            raise reject(Category.EVAL_CONTRACT, f"{what} returned {type(first).__name__}; return a tensor "
                         "of token ids [B, L] or logits [B, L, V] (optionally as (ids, hidden)).")
        if first.is_floating_point() and not torch.isfinite(first).all():
            raise reject(Category.NAN, f"{what} returned NaN/Inf values (shape {list(first.shape)}).")
        try:
            ids = output_to_ids(first, batch, vocab)
        except OutputContractError as e:
            raise reject(Category.SHAPE_ERROR, f"{e} (batch {batch}, vocabulary {vocab}).") from None
        if ids.shape[1] == 0:
            raise reject(Category.EVAL_CONTRACT, f"{what} returned no tokens (shape {list(ids.shape)}); "
                         "decode at least until EOS (at most ~20 steps).")
        return ids


def serve(chan: Channel, setup: ChildSetup) -> int:
    """The child's main loop: answer the runner's commands until it says exit. Returns the exit status."""
    import numpy as np

    try:
        os.setpgid(0, 0)
    except OSError:
        log.debug("setpgid failed", exc_info=True)
    seed_process(setup.seed, setup.threads)
    session = Session(chan, setup)
    while True:
        header, payloads = chan.recv(None, max_payload=1 << 30)
        cmd = header.get("cmd")
        try:
            if cmd == "device":  # before any candidate code runs: only this reply may say "unusable"
                problem = cuda_problem(setup.device) if setup.device.startswith("cuda") else None
                chan.send({"type": "unusable", "message": problem} if problem else {"type": "device-ok"})
                if problem:
                    return 2
            elif cmd == "load":
                params = session.load()
                chan.send({"type": "loaded", "params": params, "optimizer_lr": session.optimizer_lr()})
            elif cmd == "learn":
                chan.send(session.learn(int(header["epoch"]), int(header["batches"]), bool(header["check_changed"])))
            elif cmd == "decode":
                images = np.frombuffer(payloads[0], dtype=np.uint8).reshape(header["shape"])
                ids = session.decode(images)
                chan.send({"type": "ids", "shape": list(ids.shape)}, ids.numpy().tobytes())
            else:
                return 0
        except Rejected as r:
            chan.send({"type": "fail", "category": r.category.value, "message": r.message, "line": r.line,
                       "traceback": r.traceback, "step": session.step.value, "params": session.params})
            return 1
