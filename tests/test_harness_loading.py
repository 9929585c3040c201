"""Candidate import, exception categories and the fixer's traceback (shared with the runner)."""

from __future__ import annotations

import sys
import urllib.error
from pathlib import Path

import pytest
import torch

from nncaption.netapi.categories import Category
from nncaption.netapi.loading import (
    candidate_line,
    classify_exception,
    format_traceback_for_fixer,
    load_candidate,
    unload_candidate,
)

CANDIDATES = Path(__file__).parent / "candidates"


def test_each_load_is_a_fresh_module() -> None:
    a = load_candidate(CANDIDATES / "good_tiny.py")
    b = load_candidate(CANDIDATES / "good_tiny.py")
    try:
        assert a is not b and a.__name__ != b.__name__
        assert sys.modules[a.__name__] is a and a.Net is not b.Net
        assert a.supported_hyperparameters() == {"lr", "momentum", "dropout"}
    finally:
        unload_candidate(a)
        unload_candidate(b)
    assert a.__name__ not in sys.modules


def test_failed_import_leaves_nothing_behind(tmp_path: Path) -> None:
    bad = tmp_path / "cand.py"
    bad.write_text("import torch\nraise ValueError('boom at import')\n")
    before = set(sys.modules)
    with pytest.raises(ValueError) as info:
        load_candidate(bad)
    assert set(sys.modules) == before
    assert classify_exception(info.value, "import") is Category.INIT_ERROR
    assert candidate_line(info.value, bad) == 2
    with pytest.raises(FileNotFoundError):
        load_candidate(tmp_path / "missing.py")


@pytest.mark.parametrize(
    "exc, phase, category",
    [
        (MemoryError(), "learn", Category.OUT_OF_MEMORY),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "eval", Category.OUT_OF_MEMORY),
        (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"), "init",
         Category.OUT_OF_MEMORY),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x32 and 64x32)"), "learn", Category.SHAPE_ERROR),
        (RuntimeError("Given groups=1, weight of size [8, 3, 3, 3], expected input[4, 1, 32, 32] to have 3 channels, "
                      "but got 1 channels instead"), "init", Category.SHAPE_ERROR),
        (RuntimeError("The size of tensor a (5) must match the size of tensor b (7) at non-singleton dimension 1"),
         "eval", Category.SHAPE_ERROR),
        (ValueError("Expected input batch_size (80) to match target batch_size (76)."), "learn", Category.SHAPE_ERROR),
        (IndexError("index out of range in self"), "learn", Category.SHAPE_ERROR),
        (KeyError("hidden"), "init", Category.INIT_ERROR),
        (AttributeError("no optimizer"), "setup", Category.SETUP_ERROR),
        (TypeError("bad"), "learn", Category.LEARN_ERROR),
        (TypeError("'NoneType' object is not subscriptable"), "eval", Category.EVAL_CONTRACT),
        (TypeError("x"), "train", Category.LEARN_ERROR),
        (TypeError("x"), "decode", Category.EVAL_CONTRACT),
        (TypeError("x"), "load", Category.INIT_ERROR),
        (TypeError("x"), "somewhere-else", Category.CRASHED),
        (SyntaxError("invalid syntax"), "import", Category.SYNTAX),
        (SystemExit(1), "learn", Category.CRASHED),
        (urllib.error.URLError("Name or service not known"), "init", Category.NEEDS_INTERNET),
        (ConnectionRefusedError(111, "Connection refused"), "setup", Category.NEEDS_INTERNET),
    ],
)
def test_classify_exception(exc: BaseException, phase: str, category: Category) -> None:
    assert classify_exception(exc, phase) is category


def _raise_in(path: Path, source: str, call: str) -> BaseException:
    path.write_text(source)
    mod = load_candidate(path)
    try:
        getattr(mod, call)()
    except BaseException as e:  # noqa: BLE001
        return e
    finally:
        unload_candidate(mod)
    raise AssertionError("did not raise")


def test_traceback_keeps_candidate_frames_and_is_bounded(tmp_path: Path) -> None:
    cand = tmp_path / "candidate.py"
    src = (
        "import torch\n"
        "def deep(n):\n"
        "    if n == 0:\n"
        "        return torch.zeros(2, 3) @ torch.zeros(4, 5)\n"
        "    return deep(n - 1)\n"
        "def run():\n"
        "    return deep(40)\n"
    )
    exc = _raise_in(cand, src, "run")
    text = format_traceback_for_fixer(exc, cand, max_lines=8)
    lines = text.splitlines()
    assert len(lines) <= 8
    assert lines[-1].startswith("RuntimeError: mat1 and mat2 shapes cannot be multiplied")
    assert "candidate line 4, in deep: return torch.zeros(2, 3) @ torch.zeros(4, 5)" in text  # innermost kept
    assert "outer frame(s) omitted" in text
    assert candidate_line(exc, cand) == 4
    assert classify_exception(exc, "learn") is Category.SHAPE_ERROR


def test_traceback_collapses_library_frames(tmp_path: Path) -> None:
    cand = tmp_path / "candidate.py"
    exc = _raise_in(cand, "import torch\ndef run():\n    return torch.nn.Linear(3, 4)(torch.zeros(2, 5))\n", "run")
    text = format_traceback_for_fixer(exc, cand, max_lines=20)
    assert "candidate line 3, in run" in text
    assert "frame(s) outside the candidate" in text and "raised in" in text
    assert "site-packages" not in text  # library paths shortened to file names
    assert all(len(line) <= 300 for line in text.splitlines())
