"""Smoke check in-process: real candidates on the real tiny prepared dataset."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator

import pytest
import torch

from nncaption.netapi import reference
from nncaption.netapi.categories import Category, Verdict
from nncaption.netapi.errors import ConfigError, DatasetError
from nncaption.netapi.harness import check, smoke_check
from nncaption.netapi.smoke import ERROR_FILE, EXIT_CALLER_ERROR, VERDICT_FILE, main as smoke_main, write_smoke_job
from nncaption.netapi.validate import static_check

CANDIDATES = Path(__file__).parent / "candidates"


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Two cores are shared by many jobs: train with one thread, restore afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data_dir(tiny_dataset: "PreparedPaths") -> Path:  # noqa: F821
    return tiny_dataset.public_dir


def line_of(path: Path, needle: str) -> int:
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if needle in line:
            return i
    raise AssertionError(needle)


# --------------------------------------------------------------------------- accepted


@pytest.mark.parametrize("name", reference.NAMES)
def test_reference_models_pass(name: str, data_dir: Path) -> None:
    v = check(reference.path(name), data_dir)
    assert v.ok and v.stage == "smoke", v.message
    assert "parameters" in v.message and "decoded ids of shape [4," in v.message


@pytest.mark.parametrize(
    "name", ["good_tiny.py", "good_ids.py", "good_logits.py"],
    ids=["lemur-tuple-(ids,hidden)", "ids-[B,L]", "logits-[B,L,V]"],
)
def test_lemur_output_styles_are_accepted(name: str, data_dir: Path) -> None:
    # good_tiny returns (ids, hidden) like LEMUR models and trains on captions[:, 0, :] only
    v = smoke_check(CANDIDATES / name, data_dir)
    assert v.ok and v.category is None, v.message
    assert "[4, 12]" in v.message


# --------------------------------------------------------------------------- rejected

SMOKE_CASES = [
    # (file, category, things the message must mention: what broke, where, what to do)
    ("bad_missing_learn.py", Category.MISSING_SYMBOL, ["learn", "def learn(self, train_data)"]),
    ("bad_init.py", Category.INIT_ERROR, ["Net(in_shape, out_shape, prm, device)", "KeyError", "'hidden_dropout'",
                                          "@prm['hidden_dropout']"]),
    ("bad_setup.py", Category.SETUP_ERROR, ["train_setup", "no attribute 'params'", "@self.params()",
                                            "self.parameters()"]),
    ("bad_learn.py", Category.LEARN_ERROR, ["Net.learn", "no attribute 'optimiser'", "@self.optimiser"]),
    ("bad_shape.py", Category.SHAPE_ERROR, ["mat1 and mat2", "@self.encoder(images)", "nn.AdaptiveAvgPool2d",
                                            "[4, 3, 32, 32]"]),
    ("bad_needs_captions.py", Category.EVAL_CONTRACT, ["captions=None", "@captions.dim()", "greedily from SOS"]),
    ("bad_eval_none.py", Category.EVAL_CONTRACT, ["returned None", "free-running"]),
    ("bad_forward_signature.py", Category.EVAL_CONTRACT, ["missing 1 required positional argument: 'captions'"]),
    ("bad_output_vocab.py", Category.SHAPE_ERROR, ["logits of shape (4, 12,", "[4, L,", "vocabulary"]),
    ("bad_nan.py", Category.NAN, ["non-finite loss", "lower the learning rate"]),
    ("bad_no_update.py", Category.LEARN_ERROR, ["changed no parameter", "self.optimizer.step()"]),
    ("bad_oom.py", Category.OUT_OF_MEMORY, ["can't allocate memory", "@torch.empty(1 << 40)", "reduce"]),
    ("bad_sys_exit.py", Category.CRASHED, ["SystemExit", "@sys.exit(1)", "remove sys.exit"]),
]


@pytest.mark.parametrize("name, category, mentions", SMOKE_CASES, ids=[c[0] for c in SMOKE_CASES])
def test_smoke_rejections(name: str, category: Category, mentions: list[str], data_dir: Path) -> None:
    path = CANDIDATES / name
    v = smoke_check(path, data_dir)
    assert not v.ok and v.stage == "smoke"
    assert v.category is category, v.message
    for m in mentions:
        if m.startswith("@"):  # the candidate line holding this code is named
            line = line_of(path, m[1:])
            assert v.line == line, (v.line, line, v.message)
            assert f"line {line}" in v.message, v.message
        else:
            assert m in v.message, (m, v.message)


def test_too_large_names_the_count_and_budget(data_dir: Path) -> None:
    v = smoke_check(CANDIDATES / "good_tiny.py", data_dir, max_params=5_000)
    assert v.category is Category.TOO_LARGE
    assert "9,510 parameters" in v.message and "5,000" in v.message and "Shrink" in v.message


def test_timeout_interrupts_a_python_loop_and_leaves_no_stray_exception(data_dir: Path) -> None:
    started = time.monotonic()
    v = smoke_check(CANDIDATES / "bad_infinite_loop.py", data_dir, time_limit_s=1.0)
    assert v.category is Category.TIMEOUT, v.message
    assert "Net.learn" in v.message and "1 s budget" in v.message
    assert time.monotonic() - started < 10
    # The watchdog is disarmed: nothing is raised into this thread afterwards.
    end = time.monotonic() + 1.5
    n = 0
    while time.monotonic() < end:
        n += 1
    assert n > 0


def test_static_stage_runs_first(data_dir: Path) -> None:
    v = check(CANDIDATES / "bad_syntax.py", data_dir)
    assert v.stage == "static" and v.category is Category.SYNTAX
    v = check(CANDIDATES / "bad_abort.py", data_dir)  # never executed: rejected statically
    assert v.stage == "static" and v.category is Category.FORBIDDEN_CALL and "os.abort" in v.message


def test_caller_errors_are_not_verdicts(tmp_path: Path, data_dir: Path) -> None:
    with pytest.raises(DatasetError):
        smoke_check(CANDIDATES / "good_tiny.py", tmp_path)
    with pytest.raises(ConfigError):
        check(tmp_path / "nope.py", data_dir)


# --------------------------------------------------------------------------- the child entry point, in-process


def test_smoke_module_writes_verdict_json(tmp_path: Path, data_dir: Path) -> None:
    job = write_smoke_job(tmp_path / "job", (CANDIDATES / "bad_nan.py").read_text(), data_dir, time_limit_s=30)
    assert smoke_main([str(job)]) == 0
    d = json.loads((job / VERDICT_FILE).read_text())
    assert set(d) == {"ok", "stage", "category", "message", "line"}
    assert Verdict.from_dict(d).category is Category.NAN
    stages = [json.loads(line)["stage"] for line in (job / "smoke_progress.jsonl").read_text().splitlines()]
    assert stages == ["import", "hparams", "init", "params", "setup", "learn"]


def test_smoke_module_reports_caller_errors(tmp_path: Path) -> None:
    job = write_smoke_job(tmp_path / "job", (CANDIDATES / "good_tiny.py").read_text(), tmp_path / "no-data")
    assert smoke_main([str(job)]) == EXIT_CALLER_ERROR
    err = json.loads((job / ERROR_FILE).read_text())
    assert err["category"] == "dataset" and "missing" in err["message"] and err["hint"]
    assert not (job / VERDICT_FILE).exists()


def test_unavailable_device_is_a_config_error(data_dir: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        smoke_check(CANDIDATES / "good_tiny.py", data_dir, device="cuda")


def test_every_category_has_a_case() -> None:
    """The fixtures cover the whole enum: static ones here, smoke ones in SMOKE_CASES and the tests above."""
    static = {
        static_check((CANDIDATES / name).read_text(), name).category
        for name in ("bad_syntax.py", "bad_missing_learn.py", "bad_forward_signature.py",
                     "bad_forbidden_subprocess.py", "bad_pretrained.py")
    }
    smoke = {c for _, c, _ in SMOKE_CASES} | {Category.TOO_LARGE, Category.TIMEOUT}
    assert static | smoke == set(Category)
