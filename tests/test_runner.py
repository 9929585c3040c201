"""The runner (`python -m nncaption.netapi.run JOB_DIR`) on the real tiny prepared dataset.

Most cases call `run_job` in this process (no torch import per test); the exit
codes, the reference models and the "never reads validation references" check
run the real entry point in a subprocess. Candidates are real tiny captioners
(`tiny_candidate`) that differ from each other in exactly one behaviour.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_candidates import tiny_candidate

from nncaption.netapi import reference
from nncaption.netapi.categories import Category
from nncaption.netapi.data.loader import PUBLIC_FILES
from nncaption.netapi.data.prepare import load_references
from nncaption.netapi.data.vocab import Vocab
from nncaption.netapi.evaluate import make_job_dir, score
from nncaption.netapi.job import (
    PROGRESS_FILE,
    EpochPredictions,
    JobSpec,
    RunnerResult,
    RunnerStatus,
    Stage,
    read_predictions,
    read_result,
)
from nncaption.netapi.lifecycle import smoke_here
from nncaption.netapi.train import run_job

# --------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Two cores are shared by many jobs: train with one thread, restore afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_job(tmp_path: Path, source: str, data: Any, **spec: Any) -> Path:
    defaults: dict[str, Any] = {"epochs": 1, "max_train_batches": 2, "threads": 1, "decode_batch_size": 16}
    return make_job_dir(tmp_path / "job", source, JobSpec(data_dir=str(data.public_dir), **{**defaults, **spec}))


def run_here(tmp_path: Path, source: str, data: Any, **spec: Any) -> tuple[int, RunnerResult, list[EpochPredictions]]:
    job = make_job(tmp_path, source, data, **spec)
    code = run_job(job)
    result = read_result(job)
    assert result is not None
    return code, result, read_predictions(job)


def events(job: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (job / PROGRESS_FILE).read_text().splitlines()]


def run_subprocess(job: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nncaption.netapi.run", str(job)], capture_output=True, text=True,
                          timeout=timeout)


def assert_failed(code: int, result: RunnerResult, category: Category) -> None:
    assert code == 1
    assert result.status == "failed"
    assert result.category == category.value, result.message
    assert category.hint in result.message  # every failure message says what to do next


# --------------------------------------------------------------------------- reference models


@pytest.mark.slow  # each trains a reference model
@pytest.mark.parametrize("name", reference.NAMES)
def test_reference_models_train_and_decode(name: str, tiny_dataset: Any, tmp_path: Path) -> None:
    job = make_job(tmp_path, reference.source(name), tiny_dataset)
    proc = run_subprocess(job)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = read_result(job)
    assert result is not None and result.status == "ok" and result.epochs_done == 1
    assert result.params and result.params > 100_000
    preds = read_predictions(job)
    val_ids = json.loads((tiny_dataset.public_dir / "val_ids.json").read_text())
    assert len(preds) == 1 and sorted(preds[0].ids) == sorted(str(i) for i in val_ids)
    assert all(len(ids) >= 1 for ids in preds[0].ids.values())
    kinds = [e["event"] for e in events(job)]
    for k in ("start", "model", "epoch_start", "first_batch", "batch", "epoch_end", "decoded", "done"):
        assert k in kinds
    batches = [e for e in events(job) if e["event"] == "batch"]
    assert [b["batch"] for b in batches] == [1, 2] and all(b["loss"] > 0 for b in batches)


# --------------------------------------------------------------------------- LEMUR output styles


def test_lemur_output_styles_are_all_scored_identically(tiny_dataset: Any, tmp_path: Path) -> None:
    """ids [B,L], logits [B,L,V] and (ids, hidden) from the same model and seed give the same decodes."""
    refs = load_references(tiny_dataset.private_dir)
    vocab = Vocab.load(tiny_dataset.public_dir / "vocab.json")
    decodes, scores = {}, {}
    for output in ("ids", "logits", "tuple"):
        code, result, preds = run_here(tmp_path / output, tiny_candidate(output=output), tiny_dataset, epochs=2)
        assert code == 0 and result.status == "ok", result.message
        assert [p.epoch for p in preds] == [1, 2]
        decodes[output] = preds[-1].ids
        scores[output] = score(preds, refs, vocab)
    assert decodes["ids"] == decodes["logits"] == decodes["tuple"]
    assert scores["ids"].bleu4 == scores["logits"].bleu4 == scores["tuple"].bleu4
    assert scores["ids"].epochs[-1].bleu1 > 0  # decodes were really scored, not empty


def test_model_using_only_first_caption_trains(tiny_dataset: Any, tmp_path: Path) -> None:
    code, result, preds = run_here(tmp_path, tiny_candidate(caption_use="first", output="tuple"), tiny_dataset)
    assert code == 0 and result.status == "ok" and len(preds) == 1


def test_model_that_needs_captions_to_decode_is_eval_contract(tiny_dataset: Any, tmp_path: Path) -> None:
    code, result, preds = run_here(tmp_path, tiny_candidate(needs_captions=True), tiny_dataset)
    assert_failed(code, result, Category.EVAL_CONTRACT)
    assert "free-running forward(images)" in result.message
    assert "candidate line" in result.traceback  # the fixer sees where in its own file it broke
    assert preds == []


def test_forward_returning_none_is_eval_contract(tiny_dataset: Any, tmp_path: Path) -> None:
    code, result, _ = run_here(tmp_path, tiny_candidate(output="none"), tiny_dataset)
    assert_failed(code, result, Category.EVAL_CONTRACT)
    assert "returned None" in result.message


def test_logits_of_the_wrong_vocabulary_size_are_shape_error(tiny_dataset: Any, tmp_path: Path) -> None:
    code, result, _ = run_here(tmp_path, tiny_candidate(output="badvocab"), tiny_dataset)
    assert_failed(code, result, Category.SHAPE_ERROR)
    assert "expected [" in result.message


def test_nan_logits_at_decode_time_are_nan(tiny_dataset: Any, tmp_path: Path) -> None:
    code, result, _ = run_here(tmp_path, tiny_candidate(output="nanlogits"), tiny_dataset)
    assert_failed(code, result, Category.NAN)


# --------------------------------------------------------------------------- failure categories


@pytest.mark.parametrize(
    ("fail_in", "category", "words"),
    [
        ("init", Category.INIT_ERROR, "Net("),
        ("setup", Category.SETUP_ERROR, "train_setup"),
        ("learn", Category.LEARN_ERROR, "ZeroDivisionError"),
        ("forward", Category.EVAL_CONTRACT, "forward is broken"),
    ],
)
def test_exceptions_become_categories(fail_in: str, category: Category, words: str, tiny_dataset: Any,
                                      tmp_path: Path) -> None:
    code, result, _ = run_here(tmp_path, tiny_candidate(fail_in=fail_in), tiny_dataset)
    assert_failed(code, result, category)
    assert words in result.message
    assert result.traceback.startswith("Traceback (candidate frames only):")
    assert len(result.traceback.splitlines()) <= 20


def test_syntax_error_and_missing_net(tiny_dataset: Any, tmp_path: Path) -> None:
    code, result, _ = run_here(tmp_path / "a", "def supported_hyperparameters(:\n    pass\n", tiny_dataset)
    assert_failed(code, result, Category.SYNTAX)
    code, result, _ = run_here(tmp_path / "b", "def supported_hyperparameters():\n    return {'lr'}\n", tiny_dataset)
    assert_failed(code, result, Category.MISSING_SYMBOL)


def test_too_large(tiny_dataset: Any, tmp_path: Path) -> None:
    code, result, _ = run_here(tmp_path, tiny_candidate(), tiny_dataset, max_params=1000)
    assert_failed(code, result, Category.TOO_LARGE)
    assert result.params and result.params > 1000 and "1,000" in result.message


def test_nan_aborts_early(tiny_dataset: Any, tmp_path: Path) -> None:
    job = make_job(tmp_path, tiny_candidate(nan_at_batch=1), tiny_dataset, max_train_batches=None, epochs=2)
    code = run_job(job)
    result = read_result(job)
    assert result is not None
    assert_failed(code, result, Category.NAN)
    batches = [e for e in events(job) if e["event"] == "batch"]
    assert len(batches) == 1  # stopped when the candidate asked for batch 2, not at the end of the epoch
    assert "epoch_end" not in [e["event"] for e in events(job)]


def test_nan_caught_even_when_the_candidate_swallows_the_abort(tiny_dataset: Any, tmp_path: Path) -> None:
    code, result, _ = run_here(tmp_path, tiny_candidate(nan_at_batch=1, swallow=True), tiny_dataset)
    assert_failed(code, result, Category.NAN)


@pytest.mark.slow  # over a second of real work or waiting (training, timeouts, servers, subprocesses)
def test_epoch_time_limit_stops_a_slow_learn(tiny_dataset: Any, tmp_path: Path) -> None:
    """A learn that sleeps uses no CPU: the wall-clock backstop (3 x the limit) stops it, as the candidate's timeout."""
    t = time.monotonic()
    code, result, _ = run_here(tmp_path, tiny_candidate(sleep_in_learn=30.0), tiny_dataset, epoch_time_limit_s=1.0)
    assert time.monotonic() - t < 20  # the backstop interrupted the sleep; it did not run 30 s per batch
    assert_failed(code, result, Category.TIMEOUT)
    assert "time limit of 1 s" in result.message and "backstop of 3 s" in result.message
    assert "CPU-seconds" in result.message and "waiting, not computing" in result.message


@pytest.mark.slow  # over a second of real work or waiting (training, timeouts, servers, subprocesses)
def test_epoch_time_limit_holds_when_learn_swallows_exceptions(tiny_dataset: Any, tmp_path: Path) -> None:
    code, result, _ = run_here(tmp_path, tiny_candidate(spin_in_learn=0.6, swallow=True), tiny_dataset,
                               epoch_time_limit_s=1.0, max_train_batches=None)
    assert_failed(code, result, Category.TIMEOUT)
    assert "per-epoch time limit of 1 s (CPU time per allotted core)" in result.message
    assert "CPU-seconds" in result.message and "wall time" in result.message


def test_predictions_of_finished_epochs_survive_a_later_failure(tiny_dataset: Any, tmp_path: Path) -> None:
    job = make_job(tmp_path, tiny_candidate(fail_in="learn2"), tiny_dataset, epochs=3)
    code = run_job(job)
    result = read_result(job)
    assert result is not None
    assert_failed(code, result, Category.LEARN_ERROR)
    assert result.epochs_done == 1 and "learn broke in epoch 2" in result.message
    assert [p.epoch for p in read_predictions(job)] == [1]


@pytest.mark.slow  # over a second of real work or waiting (training, timeouts, servers, subprocesses)
def test_seed_is_recorded_and_runs_are_reproducible(tiny_dataset: Any, tmp_path: Path) -> None:
    runs = [run_here(tmp_path / f"r{i}", tiny_candidate(), tiny_dataset, seed=7) for i in range(2)]
    other = run_here(tmp_path / "other", tiny_candidate(), tiny_dataset, seed=8)
    assert all(r[1].seed == 7 for r in runs)
    assert runs[0][2][0].ids == runs[1][2][0].ids
    assert runs[0][2][0].train_loss == runs[1][2][0].train_loss
    assert other[2][0].train_loss != runs[0][2][0].train_loss


# --------------------------------------------------------------------------- one lifecycle: smoke and training agree

CANDIDATES = Path(__file__).parent / "candidates"


@pytest.mark.parametrize("name, category", [
    ("bad_no_update.py", Category.LEARN_ERROR),
    ("bad_empty_decode.py", Category.EVAL_CONTRACT),
    ("bad_missing_learn.py", Category.MISSING_SYMBOL),
    ("bad_nan.py", Category.NAN),
])
def test_smoke_check_and_training_reject_the_same_way(name: str, category: Category, tiny_dataset: Any,
                                                      tmp_path: Path) -> None:
    verdict = smoke_here(CANDIDATES / name, tiny_dataset.public_dir, job_dir=tmp_path / "smoke")
    code, result, preds = run_here(tmp_path / "train", (CANDIDATES / name).read_text(), tiny_dataset, epochs=2)
    assert not verdict.ok and verdict.stage == "smoke" and verdict.category is category, verdict.message
    assert code == 1 and result.category is category and result.stage is Stage.TRAIN, result.message
    assert result.epochs_done == 0 and preds == []  # before any epoch counts


# --------------------------------------------------------------------------- the entry point


@pytest.mark.slow  # the real entry point in subprocesses, each importing torch
def test_exit_codes(tiny_dataset: Any, tmp_path: Path) -> None:
    ok = run_subprocess(make_job(tmp_path / "ok", tiny_candidate(), tiny_dataset))
    assert ok.returncode == 0, ok.stderr[-2000:]
    failed_job = make_job(tmp_path / "bad", tiny_candidate(fail_in="learn"), tiny_dataset)
    failed = run_subprocess(failed_job)
    assert failed.returncode == 1
    assert "ZeroDivisionError" in failed.stderr  # the traceback tail is on stderr for the sandbox
    missing = subprocess.run([sys.executable, "-m", "nncaption.netapi.run", str(tmp_path / "nowhere")],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "job.json" in missing.stderr


def test_unusable_data_dir_is_a_runner_error_not_the_candidates(tmp_path: Path) -> None:
    job = make_job_dir(tmp_path / "job", tiny_candidate(), JobSpec(data_dir=str(tmp_path / "no-data")))
    code = run_job(job)
    result = read_result(job)
    assert code == 2 and result is not None
    assert result.status is RunnerStatus.ERROR and result.category is None and "runner setup error" in result.message


@pytest.mark.slow  # the real entry point in a subprocess
def test_runner_never_reads_validation_references(tiny_dataset: Any, tmp_path: Path) -> None:
    # 1. the public dir holds no validation caption text
    public = tiny_dataset.public_dir
    assert sorted(p.name for p in public.iterdir()) == sorted(PUBLIC_FILES)
    raw_refs = json.loads((tiny_dataset.private_dir / "val_refs.json").read_text())
    blobs = [p.read_bytes() for p in public.iterdir()]
    captions = [c for caps in raw_refs.values() for c in caps]
    assert len(captions) >= 24
    assert not any(c.encode() in b for c in captions for b in blobs)
    # 2. the runner opens nothing of the dataset outside the public dir
    job = make_job(tmp_path, tiny_candidate(), tiny_dataset)
    log = tmp_path / "opened.json"
    script = (
        "import json, sys\n"
        "seen = []\n"
        "def hook(event, args):\n"
        "    if event in ('open', 'os.listdir', 'os.scandir') and args and isinstance(args[0], (str, bytes)):\n"
        "        seen.append(args[0] if isinstance(args[0], str) else args[0].decode())\n"
        "sys.addaudithook(hook)\n"
        "from nncaption.netapi.run import main\n"
        "code = main([sys.argv[1]])\n"
        "json.dump(seen, open(sys.argv[2], 'w'))\n"
        "sys.exit(code)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(job), str(log)], capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    opened = [Path(p).resolve() for p in json.loads(log.read_text())]
    root = tiny_dataset.root.resolve()
    in_dataset = [p for p in opened if p.is_relative_to(root)]
    assert any(p.name == "val_images.npy" for p in in_dataset)  # the hook saw the data being read
    assert all(p.is_relative_to(public.resolve()) for p in in_dataset), in_dataset
    assert not any("val_refs" in str(p) or "private" in p.parts for p in opened)


def test_batch_progress_is_throttled_and_ends_each_epoch(tiny_dataset: Any, tmp_path: Path) -> None:
    """"batch" events: about one a second at most, plus each epoch's last batch; each says where the job is."""
    job = make_job(tmp_path, tiny_candidate(), tiny_dataset, epochs=2, batch_size=8, max_train_batches=None)
    assert run_job(job) == 0
    evs = events(job)
    ends = {e["epoch"]: e for e in evs if e["event"] == "epoch_end"}
    assert set(ends) == {1, 2} and all(e["epochs"] == 2 and e["cpu_s"] >= 0 for e in ends.values())
    for epoch in (1, 2):
        batches = [e for e in evs if e["event"] == "batch" and e["epoch"] == epoch]
        assert batches and all(b["epochs"] == 2 and b["batches"] == 12 for b in batches)
        assert batches[-1]["batch"] == 12  # the epoch's last batch is always reported
        assert len(batches) <= ends[epoch]["seconds"] + 2  # throttled: not one event per batch (12)
