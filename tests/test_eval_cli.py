"""`nncaption eval-model` and `nncaption check` end to end through `nncaption.cli.main` (local sandbox)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nncaption import config
from nncaption.cli import main
from nncaption.netapi.categories import Category

from test_runner import tiny_candidate


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = main(list(argv))
    out = capsys.readouterr().out.strip()
    lines = out.splitlines()
    assert len(lines) == 1, out  # exactly one JSON object on stdout
    return code, json.loads(lines[0])


def data_args(tiny_dataset: Any) -> list[str]:
    return ["--prepared", str(tiny_dataset.root)]


def test_eval_model_json_reference(capsys: pytest.CaptureFixture[str], tiny_dataset: Any) -> None:
    code, out = run_cli(capsys, "eval-model", "ref-gru", *data_args(tiny_dataset), "--epochs", "2",
                        "--max-train-batches", "2", "--threads", "1", "--json")
    assert code == 0, out
    assert out["status"] == "ok" and out["category"] is None
    for key in ("message", "bleu4", "lemur_bleu4", "epochs", "params", "job_dir", "baseline"):
        assert key in out
    assert [e["epoch"] for e in out["epochs"]] == [1, 2]
    assert all({"bleu4", "seconds", "lemur_bleu4", "bleu1"} <= set(e) for e in out["epochs"])
    assert out["bleu4"] == out["epochs"][-1]["bleu4"] and 0 <= out["bleu4"] <= 1
    assert out["params"] > 100_000
    assert out["sandbox"] == "local" and out["isolation"]
    job = Path(out["job_dir"])
    assert (job / "predictions.json").is_file() and (job / "result.json").is_file()
    assert job.is_relative_to(config.runs_root())  # under NNCAPTION_HOME, set per test session


def test_eval_model_failure_is_categorised(capsys: pytest.CaptureFixture[str], tiny_dataset: Any,
                                           tmp_path: Path) -> None:
    bad = tmp_path / "needs_captions.py"
    bad.write_text(tiny_candidate(needs_captions=True))
    code, out = run_cli(capsys, "eval-model", str(bad), *data_args(tiny_dataset), "--epochs", "1",
                        "--max-train-batches", "1", "--threads", "1", "--json")
    assert code == 1
    assert out["status"] == "failed" and out["category"] == Category.EVAL_CONTRACT.value
    assert out["hint"] == Category.EVAL_CONTRACT.hint and out["bleu4"] is None and out["epochs"] == []


def test_eval_model_never_runs_a_statically_rejected_file(capsys: pytest.CaptureFixture[str], tiny_dataset: Any,
                                                          tmp_path: Path) -> None:
    bad = tmp_path / "spawns.py"
    bad.write_text(tiny_candidate().replace("import time\n", "import time\nimport subprocess\n"
                                            "subprocess.run(['touch', 'pwned'])\n", 1))
    code, out = run_cli(capsys, "eval-model", str(bad), *data_args(tiny_dataset), "--json")
    assert code == 1
    assert out["status"] == "failed" and out["category"] == Category.FORBIDDEN_CALL.value
    assert out["stage"] == "static" and out["job_dir"] is None and out["line"] is not None


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["eval-model", "no/such/file.py"], "does not exist"),
        (["eval-model", "ref-resnet"], "unknown reference model"),
        (["eval-model", "ref-gru", "--epochs", "0"], "--epochs"),
        (["eval-model", "ref-gru", "--lr", "-1"], "--lr"),
        (["eval-model", "ref-gru", "--prepared", "/nonexistent/prepared"], "not a prepared dataset"),
        (["eval-model", "ref-gru", "--dataset", "coco"], "--coco-root"),
        (["check", "no/such/file.py"], "does not exist"),
    ],
)
def test_usage_errors_exit_2_with_a_hint(argv: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_cli(capsys, *argv, "--json")
    assert code == 2
    assert out["category"] == "config" and words in out["message"] and out["hint"]


def test_usage_error_without_json_prints_category_and_next_step(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval-model", "no/such/file.py"]) == 2
    err = capsys.readouterr().err
    assert "error [config]" in err and "next:" in err


def test_bad_option_is_an_argparse_usage_error() -> None:
    with pytest.raises(SystemExit) as e:
        main(["eval-model", "ref-gru", "--sandbox", "vm"])
    assert e.value.code == 2


def test_check_accepts_a_reference_model(capsys: pytest.CaptureFixture[str], tiny_dataset: Any) -> None:
    code, out = run_cli(capsys, "check", "ref-transformer", *data_args(tiny_dataset), "--json")
    assert code == 0, out
    assert set(out) == {"ok", "stage", "category", "message", "line"}
    assert out["ok"] is True and out["stage"] == "smoke" and out["category"] is None


def test_check_rejects_at_the_static_stage(capsys: pytest.CaptureFixture[str], tiny_dataset: Any,
                                           tmp_path: Path) -> None:
    bad = tmp_path / "broken.py"
    bad.write_text("import torch\n\ndef supported_hyperparameters(:\n    return {'lr'}\n")
    code, out = run_cli(capsys, "check", str(bad), *data_args(tiny_dataset), "--json")
    assert code == 1
    assert out == {**out, "ok": False, "stage": "static", "category": "syntax", "line": 3}


def test_check_rejects_at_the_smoke_stage(capsys: pytest.CaptureFixture[str], tiny_dataset: Any,
                                          tmp_path: Path) -> None:
    bad = tmp_path / "badvocab.py"
    bad.write_text(tiny_candidate(output="badvocab"))
    code, out = run_cli(capsys, "check", str(bad), *data_args(tiny_dataset), "--json")
    assert code == 1
    assert out["ok"] is False and out["stage"] == "smoke" and out["category"] == Category.SHAPE_ERROR.value


def test_human_readable_eval_report(capsys: pytest.CaptureFixture[str], tiny_dataset: Any) -> None:
    code = main(["eval-model", "ref-lstm", *data_args(tiny_dataset), "--epochs", "1", "--max-train-batches", "1",
                 "--threads", "1", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    assert "BLEU-4" in out and "LEMUR" in out and "constant-caption baseline" in out and "job dir" in out


def test_sandbox_options_from_the_command_line() -> None:
    from nncaption.cli import build_parser
    from nncaption.cmd_eval import sandbox_options

    parser = build_parser()
    ray = parser.parse_args(["eval-model", "ref-gru", "--sandbox", "ray", "--ray-address", "ray://head:10001"])
    assert sandbox_options(ray) == {"address": "ray://head:10001"}
    docker = parser.parse_args(["check", "ref-gru", "--sandbox", "docker", "--docker-runtime", "runsc"])
    assert sandbox_options(docker) == {"runtime": "runsc"}
    assert sandbox_options(parser.parse_args(["check", "ref-gru"])) == {}
