"""`nncaption data synth` / `data prepare` through nncaption.cli.main, and resolve_dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nncaption import cmd_data
from nncaption.cli import main
from nncaption.netapi import paths as config
from nncaption.netapi.data.loader import PreparedData
from nncaption.netapi.errors import ConfigError


def test_synth_then_prepare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "synth"
    rc = main(["data", "synth", "--out", str(out), "--n-train", "12", "--n-val", "4", "--size", "32",
               "--seed", "2", "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    assert str(out) in text and "captions_train.json" in text
    assert len(list((out / "train").glob("*.jpg"))) == 12 and len(list((out / "val").glob("*.jpg"))) == 4

    cache = tmp_path / "cache"
    rc = main(["data", "prepare", "--synthetic", str(out), "--size", "16", "--val-limit", "3",
               "--cache-dir", str(cache)])
    assert rc == 0
    text = capsys.readouterr().out
    [folder] = [p for p in cache.iterdir() if not p.name.startswith(".")]  # beside the build lock
    assert str(folder) in text and str(folder / "public") in text and "val 3 images" in text
    assert PreparedData.open(folder / "public").meta.n_val == 3


def test_synth_default_goes_under_nncaption_home(nncaption_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["data", "synth", "--n-train", "3", "--n-val", "2", "--size", "32", "--seed", "41", "--quiet"])
    assert rc == 0
    expected = nncaption_home / "data" / "synthetic-s41"
    assert config.default_synthetic_dir(41) == expected
    assert (expected / "annotations" / "captions_val.json").is_file()
    assert str(expected) in capsys.readouterr().out


def test_prepare_missing_coco_root_exits_1_naming_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["data", "prepare", "--coco-root", str(tmp_path / "coco"), "--cache-dir", str(tmp_path / "c")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "error [dataset]" in err and "captions_train2017.json" in err and "val2017/" in err and "next:" in err


def test_prepare_partial_coco_root_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "coco" / "annotations").mkdir(parents=True)
    (tmp_path / "coco" / "train2017").mkdir()
    rc = main(["data", "prepare", "--coco-root", str(tmp_path / "coco"), "--cache-dir", str(tmp_path / "c")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "incomplete" in err and "train2017/ (empty)" in err and "annotations/captions_val2017.json" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["data", "prepare"],  # a source is required
        ["data", "prepare", "--coco-root", "a", "--synthetic", "b"],  # exclusive
        ["data", "synth", "--n-train", "0"],
        ["data", "synth", "--n-val", "two"],
        ["data", "prepare", "--synthetic", "x", "--val-limit", "-1"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2


def test_bare_data_group_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data"]) == 2
    assert "synth" in capsys.readouterr().err


def test_config_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A value the command cannot run with is a configuration error: exit 2, like bad arguments."""
    assert main(["data", "synth", "--out", str(tmp_path), "--size", "8", "--quiet"]) == 2
    assert "error [config]" in capsys.readouterr().err
    assert main(["data", "prepare", "--synthetic", str(tmp_path), "--size", "2"]) == 2


def test_resolve_dataset_generates_once_then_reuses(nncaption_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "DEFAULT_SYNTH_TRAIN", 10)
    monkeypatch.setattr(config, "DEFAULT_SYNTH_VAL", 4)
    paths = cmd_data.resolve_dataset("synthetic", coco_root=None, size=16, seed=77, progress=False)
    assert paths.root.parent == nncaption_home / "prepared"
    data = PreparedData.open(paths.public_dir)
    assert (data.meta.n_train, data.meta.n_val, data.meta.image_size) == (10, 4, 16)
    source = nncaption_home / "data" / "synthetic-s77"
    assert json.loads((paths.private_dir / "split.json").read_text())["root"] == str(source.resolve())
    stamp = (source / "annotations" / "captions_train.json").stat().st_mtime_ns
    again = cmd_data.resolve_dataset("synthetic", coco_root=None, size=16, seed=77, progress=True)
    assert again == paths
    assert (source / "annotations" / "captions_train.json").stat().st_mtime_ns == stamp
    assert not [p for p in source.parent.iterdir() if p.name.startswith(".tmp")]


def test_resolve_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--coco-root"):
        cmd_data.resolve_dataset("coco", coco_root=None, size=32, seed=0, progress=False)
    with pytest.raises(ConfigError, match="unknown dataset"):
        cmd_data.resolve_dataset("imagenet", coco_root=None, size=32, seed=0, progress=False)


def test_resolve_dataset_coco(tmp_path: Path) -> None:
    from nncaption.netapi.data.synthetic import generate_synthetic

    root = generate_synthetic(tmp_path / "coco", n_train=6, n_val=3, size=32, layout="coco")
    paths = cmd_data.resolve_dataset("coco", coco_root=root, size=16, seed=0, progress=False, val_limit=2)
    assert PreparedData.open(paths.public_dir).meta.n_val == 2
