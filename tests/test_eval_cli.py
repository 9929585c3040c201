"""`nncaption eval-model` and `nncaption check` end to end through `nncaption.cli.main` (local sandbox)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tiny_candidates import tiny_candidate

from nncaption.cli import main
from nncaption.netapi import paths as config
from nncaption.netapi.categories import Category

CANDIDATES = Path(__file__).parent / "candidates"


def _no_constants(name: str) -> Any:
    raise ValueError(f"not strict JSON: {name}")


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse usage errors
        code = int(e.code or 0)
    out = capsys.readouterr().out.strip()
    lines = out.splitlines()
    assert len(lines) == 1, out  # exactly one JSON object on stdout
    return code, json.loads(lines[0], parse_constant=_no_constants)  # strict: no NaN / Infinity


def data_args(tiny_dataset: Any) -> list[str]:
    return ["--prepared", str(tiny_dataset.root)]


FAST = ["--epochs", "1", "--max-train-batches", "1", "--max-val-images", "8", "--threads", "1"]


# --------------------------------------------------------------------------- eval-model


@pytest.mark.sandbox
def test_eval_model_json_reference(capsys: pytest.CaptureFixture[str], tiny_dataset: Any) -> None:
    code, out = run_cli(capsys, "eval-model", "ref-gru", *data_args(tiny_dataset), "--epochs", "2",
                        "--max-train-batches", "2", "--threads", "1", "--json")
    assert code == 0, out
    assert out["status"] == "ok" and out["category"] is None and out["stage"] == "score"
    for key in ("message", "bleu4", "lemur_bleu4", "epochs", "params", "job_id", "job_dir", "baseline_bleu4",
                "baseline_caption", "suspect", "prm", "timings", "reused"):
        assert key in out
    assert [e["epoch"] for e in out["epochs"]] == [1, 2]
    assert all({"bleu4", "seconds", "lemur_bleu4", "bleu1"} <= set(e) for e in out["epochs"])
    assert out["bleu4"] == out["epochs"][-1]["bleu4"] and 0 <= out["bleu4"] <= 1
    assert out["params"] > 100_000 and out["suspect"] is False
    assert out["sandbox"] == "local" and out["isolation"]
    job = Path(out["job_dir"])
    assert job.name == out["job_id"] and job.is_relative_to(config.runs_root())  # under NNCAPTION_HOME
    assert (job / "job" / "predictions.json").is_file() and (job / "job" / "result.json").is_file()
    saved = json.loads((job / "report.json").read_text())  # the scores are saved with the job
    assert saved["bleu4"] == out["bleu4"] and saved["job_id"] == out["job_id"]


@pytest.mark.sandbox
def test_eval_model_failure_is_categorised(capsys: pytest.CaptureFixture[str], tiny_dataset: Any,
                                           tmp_path: Path) -> None:
    bad = tmp_path / "needs_captions.py"
    bad.write_text(tiny_candidate(needs_captions=True))
    code, out = run_cli(capsys, "eval-model", str(bad), *data_args(tiny_dataset), *FAST, "--json")
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


@pytest.mark.sandbox
@pytest.mark.parametrize("kind", ["no_update", "empty_decode"])
def test_eval_model_fails_fast_with_the_category_check_gives(kind: str, capsys: pytest.CaptureFixture[str],
                                                             tiny_dataset: Any, tmp_path: Path) -> None:
    """A learn that never steps, a decode of zero tokens: eval-model used to train both to `ok`; now it stops at
    the smoke stage with the category `check` gives."""
    if kind == "no_update":
        bad = str(CANDIDATES / "bad_no_update.py")
    else:
        bad = str(tmp_path / "empty_decode.py")
        Path(bad).write_text(tiny_candidate().replace('        if OUTPUT == "ids":\n            return ids\n',
                                                      '        if OUTPUT == "ids":\n            return ids[:, :0]\n'))
        assert "ids[:, :0]" in Path(bad).read_text()
    code, checked = run_cli(capsys, "check", bad, *data_args(tiny_dataset), "--json")
    assert code == 1 and checked["ok"] is False and checked["stage"] == "smoke"
    code, out = run_cli(capsys, "eval-model", bad, *data_args(tiny_dataset), *FAST, "--json")
    assert code == 1
    assert out["status"] == "failed" and out["category"] == checked["category"] and out["stage"] == "smoke"
    assert out["epochs"] == [] and out["bleu4"] is None
    assert not (Path(out["job_dir"]) / "job").exists()  # no training job was started


@pytest.mark.sandbox
def test_the_identical_eval_is_reused_and_no_reuse_trains_again(capsys: pytest.CaptureFixture[str],
                                                                 tiny_dataset: Any) -> None:
    argv = ["eval-model", "ref-lstm", *data_args(tiny_dataset), *FAST, "--json"]
    code, first = run_cli(capsys, *argv)
    assert code == 0, first
    code, again = run_cli(capsys, *argv)
    assert code == 0 and again["reused"] is True and again["job_id"] == first["job_id"]
    assert again["bleu4"] == first["bleu4"]
    code, fresh = run_cli(capsys, *argv, "--no-reuse")
    assert code == 0 and fresh["reused"] is False and fresh["job_id"] == first["job_id"]


@pytest.mark.sandbox
def test_human_readable_eval_report(capsys: pytest.CaptureFixture[str], tiny_dataset: Any) -> None:
    code = main(["eval-model", "ref-lstm", *data_args(tiny_dataset), *FAST, "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    assert "BLEU-4" in out and "LEMUR" in out and "constant-caption baseline" in out and "job dir" in out


# --------------------------------------------------------------------------- usage errors: up front, one JSON object


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["eval-model", "no/such/file.py"], "does not exist"),
        (["eval-model", "ref-resnet"], "unknown reference model"),
        (["eval-model", "ref-gru", "--epochs", "0"], "--epochs"),
        (["eval-model", "ref-gru", "--lr", "-1"], "--lr"),
        (["eval-model", "ref-gru", "--lr", "nan"], "--lr"),
        (["eval-model", "ref-gru", "--prepared", "/nonexistent/prepared"], "not a prepared dataset"),
        (["eval-model", "ref-gru", "--dataset", "coco"], "--coco-root"),
        (["check", "no/such/file.py"], "does not exist"),
    ],
)
def test_usage_errors_exit_2_with_a_hint(argv: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_cli(capsys, *argv, "--json")
    assert code == 2
    assert out["category"] == "config" and words in out["message"] and out["hint"]


CONFLICTS: list[tuple[list[str], str]] = [
    (["eval-model", "ref-gru", "--coco-root", "/data/coco"], "--coco-root"),
    (["check", "ref-gru", "--coco-root", "/data/coco", "--dataset", "synthetic"], "--coco-root"),
    (["eval-model", "ref-gru", "--docker-runtime", "runsc"], "--docker-runtime"),
    (["check", "ref-gru", "--sandbox", "ray", "--docker-runtime", "runsc"], "--docker-runtime"),
    (["eval-model", "ref-gru", "--ray-address", "head:6379"], "--ray-address"),
    (["eval-model", "ref-gru", "--prepared", "/p", "--dataset", "coco"], "--dataset"),
    (["eval-model", "ref-gru", "--prepared", "/p", "--size", "32"], "--size"),
    (["check", "ref-gru", "--prepared", "/p", "--val-limit", "5"], "--val-limit"),
]
BAD_VALUES: list[tuple[list[str], str]] = [
    (["eval-model", "ref-gru", "--max-val-images", "0"], "--max-val-images"),
    (["eval-model", "ref-gru", "--max-train-batches", "0"], "--max-train-batches"),
    (["eval-model", "ref-gru", "--threads", "0"], "--threads"),
    (["check", "ref-gru", "--threads", "0"], "--threads"),
    (["eval-model", "ref-gru", "--val-limit", "0"], "--val-limit"),
    (["eval-model", "ref-gru", "--batch", "0"], "--batch"),
    (["eval-model", "ref-gru", "--batch", "100000"], "--batch"),
    (["eval-model", "ref-gru", "--lr", "2"], "--lr"),
    (["eval-model", "ref-gru", "--momentum", "1"], "--momentum"),
    (["eval-model", "ref-gru", "--dropout", "1"], "--dropout"),
    (["eval-model", "ref-gru", "--epoch-time-limit", "0"], "--epoch-time-limit"),
    (["eval-model", "ref-gru", "--size", "4"], "--size"),
]


@pytest.mark.parametrize(("argv", "flag", "category"), [(*c, "usage") for c in CONFLICTS]
                         + [(*c, "config") for c in BAD_VALUES])
def test_nonsense_options_are_refused_before_any_data_work(argv: list[str], flag: str, category: str,
                                                           capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def no_data(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the dataset was resolved before the options were checked")

    monkeypatch.setattr("nncaption.netapi.data.resolve.resolve_dataset", no_data)
    code, out = run_cli(capsys, *argv, "--json")
    assert code == 2, out
    assert out["category"] == category and flag in out["message"] and out["hint"]


def test_a_usage_error_costs_no_torch_import() -> None:
    """Cheap argument errors used to take 6-10 s because the data layer (torch) loaded first."""
    script = ("import sys, time; t = time.monotonic(); from nncaption.cli import main; "
              "rc = main(['eval-model', 'ref-gru', '--threads', '0', '--json']); "
              "print(rc, 'torch' in sys.modules, round(time.monotonic() - t, 2), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    rc, torch_loaded, _seconds = proc.stderr.split()[-3:]
    assert (rc, torch_loaded) == ("2", "False"), proc.stderr
    assert json.loads(proc.stdout)["category"] == "config"


def test_argparse_errors_under_json_are_one_json_object(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_cli(capsys, "eval-model", "ref-gru", "--sandbox", "vm", "--json")
    assert code == 2 and out["category"] == "usage" and "vm" in out["message"]
    code, out = run_cli(capsys, "check", "--json")  # FILE missing
    assert code == 2 and out["category"] == "usage"


def test_bad_option_without_json_is_an_argparse_usage_error() -> None:
    with pytest.raises(SystemExit) as e:
        main(["eval-model", "ref-gru", "--sandbox", "vm"])
    assert e.value.code == 2


def test_usage_error_without_json_prints_category_and_next_step(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval-model", "no/such/file.py"]) == 2
    err = capsys.readouterr().err
    assert "error [config]" in err and "next:" in err


def test_an_internal_error_under_json_is_one_json_object(capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch, tiny_dataset: Any) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a bug \x1b]0;title\x07")

    monkeypatch.setattr("nncaption.cmd_eval.build_service", broken)
    code, out = run_cli(capsys, "eval-model", "ref-gru", *data_args(tiny_dataset), "--json")
    assert code == 1 and out["category"] == "internal" and "RuntimeError" in out["message"]
    assert "\x1b" not in out["message"] and "bug" in out["hint"]


def test_a_partial_prepared_dataset_is_a_usage_error_before_any_job(capsys: pytest.CaptureFixture[str],
                                                                     tmp_path: Path) -> None:
    (tmp_path / "public").mkdir()
    (tmp_path / "private").mkdir()
    (tmp_path / "public" / "meta.json").write_text('{"key": "abc"}')
    code, out = run_cli(capsys, "check", "ref-gru", "--prepared", str(tmp_path), "--json")
    assert code == 2 and out["category"] == "dataset" and out["job_id"] is None


def test_cuda_without_cuda_is_a_usage_error(capsys: pytest.CaptureFixture[str], tiny_dataset: Any) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, out = run_cli(capsys, "eval-model", "ref-gru", *data_args(tiny_dataset), "--device", "cuda", "--json")
    assert code == 2 and out["category"] == "config" and "CUDA" in out["message"]


# --------------------------------------------------------------------------- check


@pytest.mark.sandbox
def test_check_accepts_a_reference_model(capsys: pytest.CaptureFixture[str], tiny_dataset: Any) -> None:
    code, out = run_cli(capsys, "check", "ref-transformer", *data_args(tiny_dataset), "--json")
    assert code == 0, out
    assert {"ok", "stage", "category", "message", "line", "job_id", "job_dir", "timings", "reused", "hint"} == set(out)
    assert out["ok"] is True and out["stage"] == "smoke" and out["category"] is None


@pytest.mark.sandbox
def test_check_shows_progress_on_stderr(capsys: pytest.CaptureFixture[str], tiny_dataset: Any) -> None:
    code = main(["check", "ref-gru", *data_args(tiny_dataset)])
    captured = capsys.readouterr()
    assert code == 0
    assert "smoke run in the local sandbox" in captured.err and "accepted" in captured.out


@pytest.mark.sandbox
def test_check_accepts_a_file_with_a_utf8_bom(capsys: pytest.CaptureFixture[str], tiny_dataset: Any,
                                              tmp_path: Path) -> None:
    from nncaption.netapi import reference

    bom = tmp_path / "bom.py"
    bom.write_bytes(b"\xef\xbb\xbf" + reference.source("transformer").encode("utf-8"))
    code, out = run_cli(capsys, "check", str(bom), *data_args(tiny_dataset), "--json")
    assert code == 0 and out["ok"] is True, out


def test_check_rejects_at_the_static_stage(capsys: pytest.CaptureFixture[str], tiny_dataset: Any,
                                           tmp_path: Path) -> None:
    bad = tmp_path / "broken.py"
    bad.write_text("import torch\n\ndef supported_hyperparameters(:\n    return {'lr'}\n")
    code, out = run_cli(capsys, "check", str(bad), *data_args(tiny_dataset), "--json")
    assert code == 1
    assert out == {**out, "ok": False, "stage": "static", "category": "syntax", "line": 3}


@pytest.mark.sandbox
def test_check_rejects_at_the_smoke_stage(capsys: pytest.CaptureFixture[str], tiny_dataset: Any,
                                          tmp_path: Path) -> None:
    bad = tmp_path / "badvocab.py"
    bad.write_text(tiny_candidate(output="badvocab"))
    code, out = run_cli(capsys, "check", str(bad), *data_args(tiny_dataset), "--json")
    assert code == 1
    assert out["ok"] is False and out["stage"] == "smoke" and out["category"] == Category.SHAPE_ERROR.value


def test_sandbox_options_from_the_command_line() -> None:
    from nncaption.cli import build_parser
    from nncaption.cmd_eval import sandbox_options

    parser = build_parser()
    ray = parser.parse_args(["eval-model", "ref-gru", "--sandbox", "ray", "--ray-address", "ray://head:10001"])
    assert sandbox_options(ray) == {"address": "ray://head:10001"}
    docker = parser.parse_args(["check", "ref-gru", "--sandbox", "docker", "--docker-runtime", "runsc"])
    assert sandbox_options(docker) == {"runtime": "runsc"}
    assert sandbox_options(parser.parse_args(["check", "ref-gru"])) == {}


def test_an_unusable_nncaption_home_is_an_environment_error(capsys: pytest.CaptureFixture[str], tiny_dataset: Any,
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home-is-a-file"
    home.write_text("")
    monkeypatch.setenv("NNCAPTION_HOME", str(home))
    code, out = run_cli(capsys, "eval-model", "ref-gru", *data_args(tiny_dataset), "--json")
    assert code == 2 and out["category"] == "environment" and out["hint"]
