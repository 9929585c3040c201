"""Import a candidate file and turn its exceptions into categories and fixer-ready text.

Used by the candidate's process of every job (`netapi/child.py`), smoke and
train alike, so that a failure in `learn` reads the same whether the smoke
check or a full training run found it.

Phases (the `phase` argument of `classify_exception`):
    "import"  executing the candidate module itself      -> init-error
    "init"    Net(in_shape, out_shape, prm, device)      -> init-error
    "setup"   net.train_setup(prm)                       -> setup-error
    "learn"   net.learn(train_data)                      -> learn-error
    "eval"    net.eval(); net(images) (free-running)     -> eval-contract
Aliases accepted: "load" = "import", "train" = "learn", "decode"/"forward" = "eval".
Whatever the phase, out-of-memory, network access (a download attempt: there is
no network in a sandbox) and obvious shape mismatches get their own categories,
and a `SyntaxError` is `syntax`.
"""

from __future__ import annotations

import importlib.util
import linecache
import re
import sys
import traceback
import uuid
from pathlib import Path
from types import ModuleType, TracebackType

from nncaption.netapi.categories import Category

PHASE_CATEGORY: dict[str, Category] = {
    "import": Category.INIT_ERROR,
    "init": Category.INIT_ERROR,
    "setup": Category.SETUP_ERROR,
    "learn": Category.LEARN_ERROR,
    "eval": Category.EVAL_CONTRACT,
}
PHASE_ALIASES: dict[str, str] = {"load": "import", "train": "learn", "decode": "eval", "forward": "eval"}

# Phrases torch (and numpy) use when tensor shapes do not fit together.
_SHAPE_PATTERNS: tuple[str, ...] = (
    r"size mismatch",
    r"shapes? cannot be multiplied",
    r"must match the size of tensor",
    r"sizes of tensors must match",
    r"expected input\[.*\] to have \d+ channels",
    r"expected input batch_size \(\d+\) to match target batch_size",
    r"shape '\[.*\]' is invalid for input of size",
    r"dimension out of range",
    r"the expanded size of the tensor",
    r"input\.size\(-1\) must be equal to input_size",
    r"expected hidden\[?\d*\]? size",
    r"expected \d+d? ?(?:\(unbatched\) or \d+d? \(batched\) )?input",
    r"input type .* and weight type .* should be the same",
    r"mat1 and mat2 must have the same dtype",
    r"was expected to have shape",
    r"not enough values to unpack",
    r"too many values to unpack",
    r"target \d+ is out of bounds",
    r"index out of range in self",
    r"output with shape \[.*\] doesn't match the broadcast shape",
    r"calculated padded input size per channel",
    r"kernel size can't be greater than actual input size",
    r"output size is too small",
    r"non-empty \d+d? tensor",
    r"is_same_size",
)
_SHAPE_RE = re.compile("|".join(_SHAPE_PATTERNS), re.IGNORECASE)
_NET_RE = re.compile(r"name or service not known|temporary failure in name resolution|network is unreachable|"
                     r"connection refused|no route to host", re.I)
_OOM_RE = re.compile(r"out of memory|can't allocate memory|cannot allocate memory|CUDA error: out of memory", re.I)


def load_candidate(path: Path) -> ModuleType:
    """Import the candidate file at `path` as a fresh module and return it.

    Each call gets a unique module name (`nncaption_candidate_<stem>_<hex>`), so two
    candidates both called `candidate.py` never share state. The module is placed in
    `sys.modules` before executing it (dataclasses and pickling need that) and
    removed again if executing it raises. Exceptions from the candidate's own
    module-level code propagate unchanged: classify them with phase "import".
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"candidate file not found: {path}")
    stem = re.sub(r"\W", "_", path.stem) or "candidate"
    name = f"nncaption_candidate_{stem}_{uuid.uuid4().hex[:12]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:  # pragma: no cover - only for non-.py paths
        raise ImportError(f"cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def unload_candidate(module: ModuleType) -> None:
    """Forget a module returned by `load_candidate` (long-lived processes only)."""
    sys.modules.pop(module.__name__, None)


def normalise_phase(phase: str) -> str:
    """Map phase aliases to the canonical names in `PHASE_CATEGORY`."""
    phase = phase.lower()
    return PHASE_ALIASES.get(phase, phase)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CPU and GPU allocation failures, whatever exception type torch used."""
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    return isinstance(exc, RuntimeError) and bool(_OOM_RE.search(str(exc)))


def is_shape_error(exc: BaseException) -> bool:
    """True when the exception text says that tensor shapes did not fit."""
    return isinstance(exc, (RuntimeError, ValueError, IndexError)) and bool(_SHAPE_RE.search(str(exc)))


def is_network_error(exc: BaseException) -> bool:
    """True for failed downloads and connections (URLError, DNS failures, refused connections)."""
    import http.client
    import socket
    import urllib.error

    if isinstance(exc, (urllib.error.URLError, socket.gaierror, socket.timeout, http.client.HTTPException,
                        ConnectionError)):
        return True
    return isinstance(exc, OSError) and bool(_NET_RE.search(str(exc)))


def classify_exception(exc: BaseException, phase: str) -> Category:
    """The category of an exception raised by candidate code during `phase`.

    Order: out-of-memory, syntax, exit calls (crashed), network access
    (needs-internet), shape mismatch, then the phase's own category (init-error,
    setup-error, learn-error, eval-contract). An unknown phase falls back to `crashed`.
    """
    if is_out_of_memory(exc):
        return Category.OUT_OF_MEMORY
    if isinstance(exc, SyntaxError):
        return Category.SYNTAX
    if isinstance(exc, (SystemExit, KeyboardInterrupt)):
        return Category.CRASHED
    if is_network_error(exc):
        return Category.NEEDS_INTERNET
    if is_shape_error(exc):
        return Category.SHAPE_ERROR
    return PHASE_CATEGORY.get(normalise_phase(phase), Category.CRASHED)


def _frames(tb: TracebackType | None) -> list[traceback.FrameSummary]:
    return list(traceback.extract_tb(tb)) if tb is not None else []


def _same_file(a: str, b: Path) -> bool:
    try:
        return Path(a).resolve() == b
    except (OSError, ValueError):
        return False


def candidate_line(exc: BaseException, candidate_path: Path) -> int | None:
    """The innermost line of the candidate file in the exception's traceback, if any."""
    if isinstance(exc, SyntaxError) and exc.filename and _same_file(exc.filename, Path(candidate_path).resolve()):
        return exc.lineno
    target = Path(candidate_path).resolve()
    line = None
    for fr in _frames(exc.__traceback__):
        if _same_file(fr.filename, target):
            line = fr.lineno
    return line


def _clip(text: str, width: int) -> str:
    text = text.rstrip()
    return text if len(text) <= width else text[: width - 3] + "..."


def exception_summary(exc: BaseException, width: int = 400) -> str:
    """`TypeName: message` on one bounded line (first line of a long message plus a count)."""
    msg = str(exc).strip()
    lines = msg.splitlines()
    first = lines[0] if lines else ""
    if len(lines) > 1:
        first += f" (+{len(lines) - 1} more lines)"
    return _clip(f"{type(exc).__name__}: {first}" if first else type(exc).__name__, width)


def format_traceback_for_fixer(exc: BaseException, candidate_path: Path, max_lines: int = 20) -> str:
    """A short traceback for the fixer agent: the candidate's own frames only.

    Frames inside torch or the runner are collapsed into a count, except the
    innermost one (where the error was raised), which is kept as one line of
    context. Each frame shows `line N, in func: source`. The result never has
    more than `max_lines` lines (and every line at most 300 characters); the
    final line is always the exception itself.
    """
    max_lines = max(2, max_lines)
    target = Path(candidate_path).resolve()
    frames = _frames(exc.__traceback__)
    body: list[str] = []
    skipped = 0

    def flush_skipped() -> None:
        nonlocal skipped
        if skipped:
            body.append(f"  ... {skipped} frame(s) outside the candidate")
            skipped = 0

    for i, fr in enumerate(frames):
        innermost = i == len(frames) - 1
        if _same_file(fr.filename, target):
            flush_skipped()
            src = fr.line or linecache.getline(fr.filename, fr.lineno or 0).strip()
            body.append(_clip(f"  candidate line {fr.lineno}, in {fr.name}: {src}", 300))
        elif innermost:
            flush_skipped()
            body.append(_clip(f"  raised in {Path(fr.filename).name}:{fr.lineno}, in {fr.name}", 300))
        else:
            skipped += 1
    flush_skipped()
    if isinstance(exc, SyntaxError) and exc.lineno:
        body.append(_clip(f"  candidate line {exc.lineno}: {(exc.text or '').strip()}", 300))
    last = exception_summary(exc, 300)
    header = "Traceback (candidate frames only):"
    room = max_lines - 2  # header + exception line
    if len(body) > room:
        # Keep the innermost frames: they say where it broke.
        dropped = len(body) - room + 1
        body = [f"  ... {dropped} outer frame(s) omitted"] + body[-(room - 1):] if room > 1 else []
    return "\n".join([header, *body, last])
