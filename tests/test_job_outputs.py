"""The parent reading what a job wrote: every byte hostile, never an exception, never a forged score.

Real files in a real job directory (links, FIFOs, directories where files belong, deep
nesting, NaN, unknown image ids, oversized files), read by the real readers
(`netapi.jobfiles`, `sandbox.outcome.interpret`, `sandbox.streams.ProgressTail`) and
scored by the real scorer. Fast: no torch, no sandbox.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from nncaption.netapi.categories import Category
from nncaption.netapi.data.vocab import Vocab
from nncaption.netapi.evaluate import score
from nncaption.netapi.job import (
    MAX_PREDICTION_LEN,
    PREDICTIONS_FILE,
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
from nncaption.netapi.jobfiles import JobFileError, load_predictions, load_result, parse_result
from nncaption.netapi.lifecycle import verdict_of
from nncaption.netapi.wire import Channel, ChannelClosed, ChannelError, ChannelTimeout, channel_pair
from nncaption.sandbox import CRASHED, FAILED, OK, RUNNER_ENTRY
from nncaption.sandbox.outcome import Observed, interpret
from nncaption.sandbox.streams import ProgressTail, TailBuffer

VAL_IDS = ["11", "12", "13"]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "public"
    d.mkdir()
    (d / "val_ids.json").write_text(json.dumps([int(i) for i in VAL_IDS]))
    return d


def ok_result(**kw: Any) -> dict[str, Any]:
    return {**RunnerResult(status=RunnerStatus.OK, step=Step.DONE, message="trained 1 epoch(s)").to_dict(), **kw}


def predictions(ids: dict[str, Any]) -> dict[str, Any]:
    return {"epochs": [{"epoch": 1, "seconds": 1.0, "decode_seconds": 0.5, "train_loss": 2.0, "ids": ids}]}


def job(tmp_path: Path, result: Any = None, preds: Any = None, *, raw_result: str | None = None,
        raw_preds: str | None = None) -> Path:
    d = tmp_path / "job"
    d.mkdir(exist_ok=True)
    if result is not None or raw_result is not None:
        (d / RESULT_FILE).write_text(raw_result if raw_result is not None else json.dumps(result))
    if preds is not None or raw_preds is not None:
        (d / PREDICTIONS_FILE).write_text(raw_preds if raw_preds is not None else json.dumps(preds))
    return d


def outcome(d: Path, data_dir: Path, *, exit_code: int = 0, mode: Mode = Mode.TRAIN) -> Any:
    spec = JobSpec(data_dir=str(data_dir), max_val_images=None, mode=mode)
    r = interpret(d, RUNNER_ENTRY, Observed(exit_code=exit_code), timeout_s=10, backend="test", spec=spec)
    json.dumps(r.to_dict(), allow_nan=False, default=str)  # always strict JSON
    return r


GOOD = {i: [5, 6, 2] for i in VAL_IDS}


# --------------------------------------------------------------------------- interpret


def test_honest_job_is_ok_with_a_verdict(tmp_path: Path, data_dir: Path) -> None:
    r = outcome(job(tmp_path, ok_result(), predictions(GOOD)), data_dir)
    assert r.status == OK and r.predictions[0].ids == GOOD
    assert r.verdict == {"ok": True, "stage": "train", "category": None, "message": "trained 1 epoch(s)",
                         "line": None}


@pytest.mark.parametrize("ids, why", [
    ({**GOOD, "999": [5, 2]}, "unknown image id(s)"),
    ({k: v for k, v in GOOD.items() if k != "12"}, "missing"),
    ({**GOOD, "11": [5] * (MAX_PREDICTION_LEN + 1)}, "at most"),
    ({**GOOD, "11": [5, -1]}, "non-negative"),
    ({**GOOD, "11": [5, 2.0]}, "non-negative"),
    ({**GOOD, "11": [True]}, "non-negative"),
    ({**GOOD, "11": "5 6 2"}, "at most"),
    ({**GOOD, "x" * 100: [5]}, "longer than"),
], ids=["unknown-id", "missing-id", "too-long", "negative", "float", "bool", "string", "long-id"])
def test_predictions_breaking_the_contract_are_eval_contract(ids: dict[str, Any], why: str, tmp_path: Path,
                                                             data_dir: Path) -> None:
    r = outcome(job(tmp_path, ok_result(), predictions(ids)), data_dir)
    assert r.status == FAILED and r.category == Category.EVAL_CONTRACT.value and why in r.message, r.message
    assert not r.predictions and r.verdict is not None and r.verdict["ok"] is False


@pytest.mark.parametrize("raw", [
    '{"epochs": [{"epoch": 1, "seconds": NaN, "decode_seconds": 0, "train_loss": 1, "ids": {}}]}',
    '{"epochs": ' + "[" * 50_000 + "]" * 50_000 + "}",
    '{"epochs": [{"epoch": 2, "seconds": 1, "decode_seconds": 0, "train_loss": 1, "ids": {}}]}',
    "not json at all",
    '"a string"',
], ids=["nan", "nested", "wrong-epoch", "garbage", "not-object"])
def test_malformed_predictions_never_raise(raw: str, tmp_path: Path, data_dir: Path) -> None:
    r = outcome(job(tmp_path, ok_result(), raw_preds=raw), data_dir)
    assert r.status == FAILED and r.category == "eval-contract" and not r.predictions


@pytest.mark.parametrize("raw", [
    "[" * 100_000,
    '{"status": "ok", "timings": {"x": NaN}}',
    '{"status": "perfect"}',
    '{"status": "ok", "category": "none-such"}',
    '{"status": "ok", "params": "many"}',
    '{"status": "ok", "message": ["nested"]}',
], ids=["nested", "nan", "bad-status", "bad-category", "bad-params", "bad-message"])
def test_malformed_result_is_crashed(raw: str, tmp_path: Path, data_dir: Path) -> None:
    r = outcome(job(tmp_path, raw_result=raw, preds=predictions(GOOD)), data_dir)
    assert r.status == FAILED and r.category == "crashed" and "unusable result.json" in r.message, r.message
    assert not r.predictions and r.verdict is not None and r.verdict["category"] == "crashed"


def test_links_fifos_and_directories_are_not_read(tmp_path: Path, data_dir: Path) -> None:
    d = tmp_path / "job"
    d.mkdir()
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps(ok_result()))
    (d / RESULT_FILE).symlink_to(secret)
    r = outcome(d, data_dir)
    assert r.status == FAILED and r.category == "crashed"
    (d / RESULT_FILE).unlink()
    os.mkfifo(d / RESULT_FILE)  # reading a FIFO would block the parent forever
    t0 = time.monotonic()
    assert outcome(d, data_dir).category == "crashed" and time.monotonic() - t0 < 5
    (d / RESULT_FILE).unlink()
    (d / RESULT_FILE).mkdir()
    assert outcome(d, data_dir).category == "crashed"


def test_a_huge_predictions_file_is_refused_without_reading_it(tmp_path: Path, data_dir: Path) -> None:
    d = job(tmp_path, ok_result())
    with open(d / PREDICTIONS_FILE, "wb") as f:
        f.truncate(200 * 2**20)  # sparse: 200 MiB of NULs
    r = outcome(d, data_dir)
    assert r.status == FAILED and r.category == "eval-contract" and "larger than" in r.message


def test_deep_directory_chain_in_the_job_dir_does_not_matter(tmp_path: Path, data_dir: Path) -> None:
    d = job(tmp_path, ok_result(), predictions(GOOD))
    here = os.getcwd()
    try:
        os.chdir(d)
        for _ in range(1200):
            os.mkdir("d")
            os.chdir("d")
    finally:
        os.chdir(here)
    assert outcome(d, data_dir).status == OK


def test_failed_runner_gives_its_category_line_and_stage(tmp_path: Path, data_dir: Path) -> None:
    failed = RunnerResult(status=RunnerStatus.FAILED, category=Category.LEARN_ERROR, stage=Stage.SMOKE,
                          step=Step.LEARN, message="Net.learn raised \x1b[31mKeyError\x07", line=12)
    r = outcome(job(tmp_path, failed.to_dict(), predictions(GOOD)), data_dir, exit_code=1, mode=Mode.SMOKE)
    assert r.status == FAILED and r.category == "learn-error" and not r.predictions
    assert "\x1b" not in r.message and "\\x1b[31mKeyError" in r.message
    assert r.verdict == {"ok": False, "stage": "smoke", "category": "learn-error", "message": r.message, "line": 12}


def test_a_candidate_killed_by_a_crash_signal_is_crashed(tmp_path: Path, data_dir: Path) -> None:
    died = RunnerResult(status=RunnerStatus.FAILED, category=Category.CRASHED, message="died of SIGSEGV",
                        signal=int(signal.SIGSEGV))
    assert outcome(job(tmp_path, died.to_dict()), data_dir, exit_code=1).status == CRASHED


def test_ok_result_with_a_dirty_exit_is_not_ok(tmp_path: Path, data_dir: Path) -> None:
    r = outcome(job(tmp_path, ok_result(), predictions(GOOD)), data_dir, exit_code=1)
    assert r.status != OK and not r.predictions


def test_no_result_at_all_is_crashed_never_a_usage_error(tmp_path: Path, data_dir: Path) -> None:
    r = outcome(job(tmp_path), data_dir, exit_code=3, mode=Mode.SMOKE)
    assert r.status == FAILED and r.category == "crashed"
    assert r.verdict is not None and r.verdict["stage"] == "smoke" and not r.verdict["ok"]
    assert verdict_of(None).category is Category.CRASHED


def test_runner_error_is_a_failure_of_the_job(tmp_path: Path, data_dir: Path) -> None:
    err = RunnerResult(status=RunnerStatus.ERROR, message="runner setup error: no data")
    r = outcome(job(tmp_path, err.to_dict()), data_dir, exit_code=2)
    assert r.status == FAILED and r.category == "job-error" and "no data" in r.message
    # the same result.json without the runner's own exit status (a candidate killed its runner and wrote it)
    for exit_code in (137, 1, 0):
        (tmp_path / str(exit_code)).mkdir()
        forged = outcome(job(tmp_path / str(exit_code), err.to_dict()), data_dir, exit_code=exit_code)
        assert forged.status == FAILED and forged.category == "crashed", (exit_code, forged.category)


# --------------------------------------------------------------------------- readers, writer


def test_result_round_trip_is_strict(tmp_path: Path) -> None:
    res = RunnerResult(status=RunnerStatus.FAILED, category=Category.NAN, stage=Stage.SMOKE, step=Step.LEARN,
                       message="m", line=3, params=10, optimizer_lr=0.01, timings={"total_s": 1.5})
    write_json_atomic(tmp_path / RESULT_FILE, res.to_dict())
    assert load_result(tmp_path) == res
    with pytest.raises(JobFileError):
        parse_result({**res.to_dict(), "line": True})


def test_atomic_write_replaces_a_directory_or_link_planted_at_the_target(tmp_path: Path) -> None:
    (tmp_path / RESULT_FILE).mkdir()
    (tmp_path / RESULT_FILE / "x").write_text("planted")
    write_json_atomic(tmp_path / RESULT_FILE, {"status": "ok"})
    assert json.loads((tmp_path / RESULT_FILE).read_text()) == {"status": "ok"}
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text("keep")
    (tmp_path / PREDICTIONS_FILE).symlink_to(elsewhere)
    write_json_atomic(tmp_path / PREDICTIONS_FILE, {"epochs": []})
    assert elsewhere.read_text() == "keep" and not (tmp_path / PREDICTIONS_FILE).is_symlink()
    write_json_atomic(tmp_path / "nan.json", {"x": float("nan")})
    assert json.loads((tmp_path / "nan.json").read_text()) == {"x": None}


def test_load_predictions_checks_the_vocabulary(tmp_path: Path) -> None:
    (tmp_path / PREDICTIONS_FILE).write_text(json.dumps(predictions({"1": [5, 70]})))
    with pytest.raises(JobFileError, match="vocabulary"):
        load_predictions(tmp_path, vocab_size=70)
    assert load_predictions(tmp_path, vocab_size=71)[0].ids == {"1": [5, 70]}


def test_progress_events_come_back_flat_finite_and_escaped(tmp_path: Path) -> None:
    path = tmp_path / "progress.jsonl"
    with open(path, "w") as f:
        f.write('{"event": "batch", "loss": NaN, "batch": Infinity, "epoch": 1}\n')
        f.write('{"event": "deep", "x": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
        f.write("[" * 200_000 + "\n")
        f.write(json.dumps({"event": "done\x1b]0;x\x07", "nested": {"a": 1}, "n": 2**70}) + "\n")
        f.write("[1, 2]\n")
    tail = ProgressTail(path)
    events = list(tail.poll(max_bytes=4 << 20))
    assert events[0] == {"event": "batch", "loss": None, "batch": None, "epoch": 1}
    assert events[-1] == {"event": "done\\x1b]0;x\\x07", "n": None}
    for e in events:
        json.dumps(e, allow_nan=False)


def test_output_tails_escape_control_characters() -> None:
    tail = TailBuffer(100)
    tail.write(b"ok\n\x1b[2J\x07fake \x9b" + "\u009b".encode())
    assert "\x1b" not in tail.text() and "\\x1b[2J" in tail.text() and "ok\n" in tail.text()


# --------------------------------------------------------------------------- scoring


def test_score_never_raises_and_gives_no_score_for_bad_predictions() -> None:
    vocab = Vocab(["<pad>", "<sos>", "<eos>", "<unk>", "a", "dog"])
    refs = {"1": [["a", "dog"]], "2": [["a", "dog"]]}
    good = [EpochPredictions(1, 1.0, 0.1, 1.0, {"1": [4, 5, 2], "2": [4, 5, 2]})]
    assert score(good, refs, vocab).bleu4 is not None
    for bad in (
        [EpochPredictions(1, 1.0, 0.1, 1.0, {"1": [4, 5, 2], "999": [4]})],  # unknown image id
        [EpochPredictions(1, 1.0, 0.1, 1.0, {})],  # nothing
        [EpochPredictions(1, 1.0, 0.1, 1.0, {"1": [4, 10**9, -5], "2": "x"})],  # type: ignore[dict-item]
        [],
    ):
        report = score(bad, refs, vocab)
        assert report.error and report.bleu4 is None and report.epochs == []
    missing = score([EpochPredictions(1, 1.0, 0.1, 1.0, {"1": [4, 5, 2]})], refs, vocab, expected_ids=["1", "2"])
    assert missing.error and missing.bleu4 is None


def test_every_epoch_is_scored_with_cider_d_beside_bleu() -> None:
    from nncaption.netapi.metrics import corpus_cider_d

    vocab = Vocab(["<pad>", "<sos>", "<eos>", "<unk>", "a", "dog", "red", "ball"])
    refs = {"1": [["a", "dog"], ["a", "red", "dog"]], "2": [["a", "red", "ball"]], "3": [["a", "ball"]]}
    hyps = {"1": [4, 5, 2], "2": [4, 6, 7, 2], "3": [5, 2]}
    report = score([EpochPredictions(1, 1.0, 0.1, 1.0, hyps), EpochPredictions(2, 1.0, 0.1, 1.0, hyps)], refs, vocab)
    want, _ = corpus_cider_d([vocab.decode(hyps[i]) for i in ("1", "2", "3")], [refs[i] for i in ("1", "2", "3")])
    assert [e.cider_d for e in report.epochs] == [round(want, 6)] * 2 and report.cider_d == round(want, 6)
    assert report.cider_d is not None and report.cider_d > 0


# --------------------------------------------------------------------------- the channel


def test_channel_round_trip_and_deadline() -> None:
    a, b = channel_pair()
    b.send({"type": "ids", "shape": [2, 3]}, b"\x00" * 48)
    header, payloads = a.recv(time.monotonic() + 5, max_payload=48)
    assert header["type"] == "ids" and payloads == [b"\x00" * 48]
    t0 = time.monotonic()
    with pytest.raises(ChannelTimeout):
        a.recv(time.monotonic() + 0.3)
    assert time.monotonic() - t0 < 10  # the 0.3 s deadline, not a hang


def test_channel_refuses_what_a_hostile_peer_sends() -> None:
    a, b = channel_pair()
    raw = b.sock
    raw.sendall((10_000_000).to_bytes(4, "big"))  # announces a huge header
    with pytest.raises(ChannelError):
        a.recv(time.monotonic() + 2)
    for body in (b"{not json", b"[" * 100_000, b'"str"', json.dumps({"payloads": [1] * 10}).encode()):
        a2, b2 = channel_pair()
        b2.sock.sendall(len(body).to_bytes(4, "big") + body)
        with pytest.raises(ChannelError):
            a2.recv(time.monotonic() + 2)
    a3, b3 = channel_pair()
    b3.send({"type": "ids"}, b"x" * 1000)
    with pytest.raises(ChannelError):
        a3.recv(time.monotonic() + 2, max_payload=100)


def test_channel_stalled_mid_message_times_out() -> None:
    left, right = socket.socketpair()
    chan = Channel(left)
    right.sendall((100).to_bytes(4, "big") + b'{"type":')  # half a header, then silence
    with pytest.raises(ChannelTimeout):
        chan.recv(time.monotonic() + 0.5)
    right.close()


def test_a_peer_that_stops_reading_cannot_hold_the_sender() -> None:
    a, b = channel_pair()  # b never reads
    t0 = time.monotonic()
    with pytest.raises(ChannelTimeout):
        a.send({"type": "batch"}, b"\0" * (16 << 20), deadline=time.monotonic() + 0.5)
    assert time.monotonic() - t0 < 10  # the 0.5 s deadline, not a hang
    b.close()
    a2, b2 = channel_pair()
    b2.close()
    with pytest.raises(ChannelClosed):
        a2.send({"type": "batch"}, b"\0" * (1 << 20), deadline=time.monotonic() + 2)
