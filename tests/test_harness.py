"""The smoke stage is the runner on a tiny job: real candidates on the real tiny prepared dataset.

`smoke_here` runs the one lifecycle in this process (the runner) with the candidate in the
child it forks, exactly as a sandboxed job does; `check_here` puts the static check first.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from nncaption.netapi import reference
from nncaption.netapi.categories import _CODE_VALUES, Category
from nncaption.netapi.errors import ConfigError, DatasetError
from nncaption.netapi.job import PROGRESS_FILE, RESULT_FILE, Stage, Step
from nncaption.netapi.jobfiles import load_result
from nncaption.netapi.lifecycle import check_here, smoke_here, verdict_of
from nncaption.netapi.validate import static_check

if TYPE_CHECKING:
    from nncaption.netapi.data.prepare import PreparedPaths

CANDIDATES = Path(__file__).parent / "candidates"


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Two cores are shared by many jobs: train with one thread, restore afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data_dir(tiny_dataset: PreparedPaths) -> Path:
    return tiny_dataset.public_dir


def line_of(path: Path, needle: str) -> int:
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if needle in line:
            return i
    raise AssertionError(needle)


# --------------------------------------------------------------------------- accepted


@pytest.mark.parametrize("name", reference.NAMES)
def test_reference_models_pass(name: str, data_dir: Path) -> None:
    v = check_here(reference.path(name), data_dir)
    assert v.ok and v.stage == "smoke", v.message
    assert "parameters" in v.message and "decoded ids of shape [4," in v.message


@pytest.mark.parametrize(
    "name", ["good_tiny.py", "good_ids.py", "good_logits.py"],
    ids=["lemur-tuple-(ids,hidden)", "ids-[B,L]", "logits-[B,L,V]"],
)
def test_lemur_output_styles_are_accepted(name: str, data_dir: Path) -> None:
    # good_tiny returns (ids, hidden) like LEMUR models and trains on captions[:, 0, :] only
    v = smoke_here(CANDIDATES / name, data_dir)
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
    ("bad_empty_decode.py", Category.EVAL_CONTRACT, ["returned no tokens", "decode at least until EOS"]),
    ("bad_forward_signature.py", Category.EVAL_CONTRACT, ["missing 1 required positional argument: 'captions'"]),
    ("bad_output_vocab.py", Category.SHAPE_ERROR, ["logits of shape (4, 12,", "[4, L,", "vocabulary"]),
    ("bad_nan.py", Category.NAN, ["non-finite loss", "lower the learning rate"]),
    ("bad_abort.py", Category.CRASHED, ["SIGABRT", "Net.learn"]),  # forward is first called inside learn
    ("bad_hard_exit.py", Category.CRASHED, ["exited with status 0 in Net.learn", "os._exit"]),
    ("bad_no_update.py", Category.LEARN_ERROR, ["changed no parameter", "self.optimizer.step()"]),
    ("bad_oom.py", Category.OUT_OF_MEMORY, ["can't allocate memory", "@torch.empty(1 << 40)", "reduce"]),
    ("bad_sys_exit.py", Category.CRASHED, ["SystemExit", "@sys.exit(1)", "remove sys.exit"]),
]


@pytest.mark.parametrize("name, category, mentions", SMOKE_CASES, ids=[c[0] for c in SMOKE_CASES])
def test_smoke_rejections(name: str, category: Category, mentions: list[str], data_dir: Path) -> None:
    path = CANDIDATES / name
    v = smoke_here(path, data_dir)
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
    v = smoke_here(CANDIDATES / "good_tiny.py", data_dir, max_params=5_000)
    assert v.category is Category.TOO_LARGE
    assert " parameters, over the budget of 5,000" in v.message and "Shrink" in v.message


@pytest.mark.slow  # over a second of real work or waiting (training, timeouts, servers, subprocesses)
@pytest.mark.parametrize("name", ["bad_infinite_loop.py", "bad_sleep.py"], ids=["python-loop", "sleep-in-C"])
def test_the_runner_kills_a_candidate_past_its_budget(name: str, data_dir: Path) -> None:
    # a Python loop and a sleep inside C end the same way: the runner kills the child at the deadline
    started = time.monotonic()
    v = smoke_here(CANDIDATES / name, data_dir, time_limit_s=1.0)
    assert v.category is Category.TIMEOUT, v.message
    assert "Net.learn" in v.message and "1 s budget" in v.message and "killed" in v.message
    assert time.monotonic() - started < 30  # killed at its 1 s budget, not left running


def test_static_stage_runs_first(data_dir: Path) -> None:
    v = check_here(CANDIDATES / "bad_syntax.py", data_dir)
    assert v.stage == "static" and v.category is Category.SYNTAX
    v = check_here(CANDIDATES / "bad_abort.py", data_dir)  # never executed: rejected statically
    assert v.stage == "static" and v.category is Category.FORBIDDEN_CALL and "os.abort" in v.message


def test_caller_errors_are_not_verdicts(tmp_path: Path, data_dir: Path) -> None:
    with pytest.raises(DatasetError):
        smoke_here(CANDIDATES / "good_tiny.py", tmp_path)
    with pytest.raises(ConfigError):
        check_here(tmp_path / "nope.py", data_dir)


# --------------------------------------------------------------------------- the smoke job's files


def test_smoke_job_result_carries_stage_step_and_line(tmp_path: Path, data_dir: Path) -> None:
    job = tmp_path / "job"
    path = CANDIDATES / "bad_learn.py"
    v = smoke_here(path, data_dir, job_dir=job)
    result = load_result(job)
    assert result.stage is Stage.SMOKE and result.step is Step.LEARN
    assert result.line == line_of(path, "self.optimiser") == v.line
    assert verdict_of(result) == v
    raw = json.loads((job / RESULT_FILE).read_text())
    assert raw["status"] == "failed" and raw["category"] == "learn-error" and raw["stage"] == "smoke"
    events = [json.loads(line)["event"] for line in (job / PROGRESS_FILE).read_text().splitlines()]
    assert events[:3] == ["start", "model", "epoch_start"] and events[-1] == "error"


def test_accepted_smoke_job_names_its_stage(tmp_path: Path, data_dir: Path) -> None:
    job = tmp_path / "job"
    v = smoke_here(CANDIDATES / "good_tiny.py", data_dir, job_dir=job)
    assert v.ok and v.stage == Stage.SMOKE.value == "smoke"
    assert load_result(job).step is Step.DONE and (job / "predictions.json").is_file()


def test_unavailable_device_is_a_config_error(data_dir: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        smoke_here(CANDIDATES / "good_tiny.py", data_dir, device="cuda")


def test_check_reads_the_file_or_says_why(tmp_path: Path, data_dir: Path) -> None:
    bad = tmp_path / "latin1.py"
    bad.write_bytes(b"# \xe9\n")
    v = check_here(bad, data_dir)
    assert v.stage == "static" and v.category is Category.SYNTAX and "UTF-8" in v.message


def test_every_category_has_a_case() -> None:
    """The fixtures cover the whole enum: static ones here, smoke ones in SMOKE_CASES and the tests above."""
    static = {
        static_check((CANDIDATES / name).read_text(), name).category
        for name in ("bad_syntax.py", "bad_missing_learn.py", "bad_forward_signature.py",
                     "bad_forbidden_subprocess.py", "bad_pretrained.py")
    }
    smoke = {c for _, c, _ in SMOKE_CASES} | {Category.TOO_LARGE, Category.TIMEOUT}
    # hyperparameter values are judged before any job (the designer's `prm`), not by the validator or the runner;
    # "multiple-candidates-none-valid" is the extractor's (agents); the categories of the endpoint, the search and
    # the CLI are not about candidate code at all
    code = {c for c in Category if c.value in _CODE_VALUES}
    elsewhere = {c for c in Category if c.value in ("bad-hyperparameters", "multiple-candidates-none-valid")}
    assert static | smoke == code - elsewhere
