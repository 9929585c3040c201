"""`nncaption`'s usage layer and `run`'s start-up: no abbreviations, "did you mean", a closed pipe, --epoch-time-limit
and the documented [train] keys, the concurrency check, a bad dataset before any run directory, the summary's next
commands, and the live view (a ticking clock, training progress, what is really running, whole-run counts)."""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nncaption import cli, cmd_run, run_setup
from nncaption.cli import main
from nncaption.graph.settings import TrainSettings
from nncaption.parsing import subparsers
from nncaption.run_view import JsonLines, LiveView

ROOT = Path(__file__).resolve().parent.parent


def _usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_no_parser_accepts_abbreviations(capsys: pytest.CaptureFixture[str]) -> None:
    """`run --candidate 2` is an error (argparse took it for --candidates), with the suggestion and run's usage."""
    parser = cli.build_parser()
    assert all(not p.allow_abbrev for p in [parser, *subparsers(parser)])
    _, err = _usage_error(["run", "--candidate", "2"], capsys)
    assert "usage: nncaption run" in err and "error [usage]" in err
    assert "did you mean --candidates?" in err and "unrecognized arguments: --candidate 2" in err
    _, err = _usage_error(["eval-model", "m.py", "--epoch", "1"], capsys)
    assert "did you mean --epochs?" in err


def test_typos_get_a_suggestion_and_the_right_usage(capsys: pytest.CaptureFixture[str]) -> None:
    _, err = _usage_error(["trase", "RUN"], capsys)
    assert "did you mean trace?" in err and "usage: nncaption " in err
    _, err = _usage_error(["data", "synt"], capsys)
    assert "did you mean synth?" in err and "usage: nncaption data" in err
    _, err = _usage_error(["run", "--concurrensy", "3"], capsys)
    assert "did you mean --concurrency?" in err and "usage: nncaption run" in err
    _, err = _usage_error(["--log-levl", "debug", "runs"], capsys)  # 'debug' looked like the command
    assert "did you mean --log-level?" in err and "did you mean debug" not in err
    _, err = _usage_error(["run", "--dataset", "cocoo"], capsys)
    assert "did you mean coco?" in err
    _, err = _usage_error(["run", "--zzzz"], capsys)
    assert "did you mean" not in err and "see `nncaption run --help`" in err


def test_usage_error_under_json_is_one_object(capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = _usage_error(["runs", "--json", "--jsn"], capsys)
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1
    obj = json.loads(lines[0])
    assert obj["ok"] is False and obj["category"] == "usage" and "--json" in obj["hint"]


def _closed_reader(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run nncaption with its stdout a pipe whose reader has already gone (the deterministic `| head`)."""
    proc = subprocess.Popen([sys.executable, "-m", "nncaption.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, **env})
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    return proc.wait(timeout=120), err


def test_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    """No BrokenPipeError, no crash log, no traceback: exit 141 like other tools whose reader went away."""
    env = {"NNCAPTION_HOME": str(tmp_path / "home")}
    for args in (["config", "show"], ["run", "--help"], ["runs", str(tmp_path)]):
        code, err = _closed_reader(args, env)
        assert code in (0, cli.EXIT_BROKEN_PIPE) and err == "", (args, err)
    assert not (tmp_path / "home" / "logs").exists()
    shell = subprocess.run(f"{sys.executable} -m nncaption.cli run --help | head -2", shell=True, text=True,
                           capture_output=True, env={**os.environ, **env}, timeout=120, check=False)
    assert shell.returncode == 0 and len(shell.stdout.splitlines()) == 2 and shell.stderr == ""


def test_epoch_time_limit_flag_and_every_train_key_documented(capsys: pytest.CaptureFixture[str]) -> None:
    parser = cli.build_parser()
    settings = cmd_run.settings_from_args(parser.parse_args(["run", "--epoch-time-limit", "42"]))
    assert settings.train.epoch_time_limit_s == 42.0
    assert set(run_setup.TRAIN_KEYS) == set(TrainSettings.model_fields)
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert "--epoch-time-limit" in out and "[train] keys" in out
    assert all(f"  {key} " in out for key in TrainSettings.model_fields)


def test_live_view_notes_a_lowered_concurrency() -> None:
    view = LiveView(2, "t", enabled=False, clock=FakeClock())
    view({"event": "concurrency_adjusted", "requested": 100, "using": 2, "why": "2 CPU core(s) / 1 thread(s)"})
    assert "concurrency 100 is more than this machine can train at once (2 CPU core(s) / 1 thread(s)): using 2" \
        in _text(view)


def test_a_bad_dataset_fails_before_any_run_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("NNCAPTION_HOME", str(home))
    empty = tmp_path / "coco"
    empty.mkdir()
    run_dir = tmp_path / "run"
    assert main(["run", "--dataset", "coco", "--coco-root", str(empty), "--run-dir", str(run_dir)]) == 2
    assert "error [dataset]" in capsys.readouterr().err and not run_dir.exists()
    assert main(["run", "--dataset", "coco", "--coco-root", str(empty)]) == 2
    assert not (home / "runs").exists() or not any((home / "runs").iterdir())


def test_summary_ends_with_the_next_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nncaption.graph.runner import RunOutcome

    run_dir = tmp_path / "my run"
    search = argparse.Namespace(outcome=RunOutcome(run_dir=run_dir, status="finished", stop_reason="candidates",
                                                   best=None, best_file=None, counts={"candidates": 1}))
    cmd_run._summary(search, 0)
    lines = capsys.readouterr().out.strip().splitlines()
    quoted = f"'{run_dir}'"
    assert lines[-3:] == [f"  inspect: nncaption trace {quoted}   (or --html trace.html for the viewer)",
                          f"  report:  nncaption report {quoted}",
                          f"  export:  nncaption export {quoted} --lemur OUT_DIR"]


def _text(view: LiveView) -> str:
    from rich.console import Console

    console = Console(file=io.StringIO(), width=140)
    console.print(view._render())
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(out, str)
    return out


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_live_view_progress_running_and_resumed_counts() -> None:
    clock = FakeClock()
    view = LiveView(6, "t", enabled=False, clock=clock)
    view({"event": "resumed", "counts": {"finished": 3, "scored": 2, "failed": 1}, "elapsed_before_s": 50,
          "funnel": {"designed": 4, "static_ok": 0, "trained": 3, "scored": 2}, "failures": {"timeout": 1},
          "leaderboard": [{"cid": "c0001", "bleu4": 0.2, "origin": "draft"},
                          {"cid": "c0002", "bleu4": 0.1, "origin": "draft"}], "inflight": ["c0004"]})
    view({"event": "candidate_scored", "candidate": "c0001", "bleu4": 0.2})  # announced again: counted once
    view({"event": "node_started", "candidate": "c0004", "node": "train"})
    view({"event": "node_started", "candidate": "c0005", "node": "review"})
    view({"event": "train_progress", "candidate": "c0004", "epoch": 1, "epochs": 2, "batch": 41, "batches": 63,
          "loss": 3.2, "epoch_seconds": 12.2})
    clock.now += 0.8
    view({"event": "node_finished", "candidate": "c0005", "node": "review", "status": "ok"})
    text = _text(view)
    assert "running  c0004 train 1 s: epoch 1/2, batch 41/63, loss 3.2, 12 s/epoch" in text
    assert "running  c0005" not in text and "waiting  c0005 (review ok" in text
    assert "candidates 3/6 finished" in text and "51 s" in text
    assert "timeout 1" in text
    view({"event": "node_waiting", "candidate": "c0006", "node": "train", "for": "a training slot"})
    assert "waiting  c0006 (train waits for a training slot" in _text(view)
    view({"event": "node_started", "candidate": "c0006", "node": "train", "queued_s": 3.0})
    assert "running  c0006 train" in _text(view)
    funnel = next(line for line in text.splitlines() if line.count("│") >= 6)
    assert [c.strip() for c in funnel.split("│")[1:-1]] == ["4", "0", "1", "0", "3", "2"]
    clock.now += 30  # no event: the clock still moves
    assert "81 s" in _text(view)
    view({"event": "candidate_failed", "candidate": "c0004", "category": "[/bad] markup"})
    text = _text(view)
    assert "c0004" not in text.split("funnel")[-1] and "[/bad] markup 1" in text and "4/6 finished" in text


@pytest.mark.slow  # over a second of real work or waiting (training, timeouts, servers, subprocesses)
def test_live_view_clock_ticks_without_events() -> None:
    """rich redraws from the current state on its own once a second: two different elapsed times, no event."""
    from rich.console import Console

    buf = io.StringIO()
    view = LiveView(2, "tick", console=Console(file=buf, force_terminal=True, width=100))
    with view:
        time.sleep(3.5)
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buf.getvalue())
    shown = set(re.findall(r"finished, \d+ running, \d+ waiting, (\d+) s", plain))
    assert len(shown) >= 2, buf.getvalue()[-500:]


def test_json_logs_throttle_progress_and_print_an_outcome_once(capsys: pytest.CaptureFixture[str]) -> None:
    clock = FakeClock()
    sink = JsonLines(clock=clock)
    for batch in range(1, 6):
        sink({"event": "train_progress", "candidate": "c1", "epoch": 1, "epochs": 2, "batch": batch, "batches": 9})
        clock.now += 0.1
    sink({"event": "train_progress", "candidate": "c2", "epoch": 1, "batch": 1})
    clock.now += 1.0
    sink({"event": "train_progress", "candidate": "c1", "epoch": 1, "batch": 7, "batches": 9})
    sink({"event": "train_progress", "candidate": "c1", "epoch": 1, "batch": 9, "batches": 9})  # epoch end: kept
    for _ in range(2):
        sink({"event": "candidate_scored", "candidate": "c1", "bleu4": 0.1})
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["event"], e["candidate"], e.get("batch")) for e in events] == [
        ("train_progress", "c1", 1), ("train_progress", "c2", 1), ("train_progress", "c1", 7),
        ("train_progress", "c1", 9), ("candidate_scored", "c1", None)]


def test_live_view_takes_the_runners_resumed_event() -> None:
    """The shape graph/runner.py emits: whole-run counts and journal funnel, no leaderboard."""
    view = LiveView(8, "t", enabled=False, clock=FakeClock())
    view({"event": "resumed", "counts": {"planned": 1, "finished": 4, "scored": 2, "failed": 1, "duplicate": 1},
          "funnel": {"designed": 5, "static_ok": 4, "review_ok": 4, "smoke_ok": 3, "trained": 2, "scored": 2,
                     "duplicate": 1}, "inflight": ["c0005"], "elapsed_before_s": 120.0})
    view({"event": "node_finished", "candidate": "c0005", "node": "train", "status": "ok"})
    view({"event": "candidate_scored", "candidate": "c0005", "bleu4": 0.3})
    text = _text(view)
    funnel = next(line for line in text.splitlines() if line.count("│") >= 6)
    assert [c.strip() for c in funnel.split("│")[1:-1]] == ["5", "4", "4", "3", "3", "3"]
    assert "candidates 5/8 finished" in text and "120 s" in text and "before the resume 2" in text
