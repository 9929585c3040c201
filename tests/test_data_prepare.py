"""The prepared cache: keys and reuse, no partial caches, normalisation, public/private split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import nncaption.netapi.data.prepare as prepare_mod
from nncaption.netapi.contract import EOS, PAD, SOS
from nncaption.netapi.data.loader import PUBLIC_FILES, PreparedData
from nncaption.netapi.data.prepare import PreparedPaths, load_references, prepare_dataset
from nncaption.netapi.data.synthetic import generate_synthetic
from nncaption.netapi.data.tokenizer import tokenize
from nncaption.netapi.errors import ConfigError, DatasetError


@pytest.fixture()
def small_root(tmp_path: Path) -> Path:
    return generate_synthetic(tmp_path / "synth", n_train=20, n_val=10, size=32, seed=5)


def test_cache_is_reused_without_rebuilding(small_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    first = prepare_dataset("synthetic", small_root, cache, size=16)
    stamp = (first.public_dir / "train_images.npy").stat().st_mtime_ns

    def no_rebuild(*a: object, **k: object) -> None:
        raise AssertionError("the complete cache should have been reused")

    monkeypatch.setattr(prepare_mod, "_build", no_rebuild)
    again = prepare_dataset("synthetic", small_root, cache, size=16)
    assert again == first and (again.public_dir / "train_images.npy").stat().st_mtime_ns == stamp


def test_key_changes_with_every_option(small_root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    base = prepare_dataset("synthetic", small_root, cache, size=16)
    keys = {
        base.key,
        prepare_dataset("synthetic", small_root, cache, size=24).key,
        prepare_dataset("synthetic", small_root, cache, size=16, seed=1).key,
        prepare_dataset("synthetic", small_root, cache, size=16, val_limit=4).key,
        prepare_dataset("synthetic", small_root, cache, size=16, min_freq=1).key,
        prepare_dataset("synthetic", small_root, cache, size=16, max_len=12).key,
    }
    assert len(keys) == 6
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 6
    # the dataset's identity is part of the key: other annotations, other cache
    other = generate_synthetic(tmp_path / "other", n_train=20, n_val=10, size=32, seed=6)
    assert prepare_dataset("synthetic", other, cache, size=16).key != base.key


def test_failed_build_leaves_no_cache_and_next_run_succeeds(small_root: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"

    def crash(*a: object, **k: object) -> None:
        raise KeyboardInterrupt  # as if the user hit Ctrl-C half way

    monkeypatch.setattr(prepare_mod, "channel_stats", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset("synthetic", small_root, cache, size=16)
    assert [p for p in cache.iterdir() if not p.name.endswith(".lock")] == []  # no final or temporary folder
    monkeypatch.undo()
    paths = prepare_dataset("synthetic", small_root, cache, size=16)
    assert PreparedData.open(paths.public_dir).meta.n_train == 20


def test_partial_cache_is_never_reused(small_root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    good = prepare_dataset("synthetic", small_root, cache, size=16)
    (good.public_dir / "val_images.npy").unlink()  # damaged after the fact
    rebuilt = prepare_dataset("synthetic", small_root, cache, size=16)
    assert (rebuilt.public_dir / "val_images.npy").is_file()
    assert PreparedData.open(rebuilt.public_dir).meta.n_val == 10


def test_leftover_tmp_of_dead_process_is_removed(small_root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    paths = prepare_dataset("synthetic", small_root, cache, size=16)
    name = paths.root.name
    import shutil

    shutil.rmtree(paths.root)
    dead_pid = 2 ** 22 + 12345  # above pid_max on Linux: never alive
    leftover = cache / f".tmp-{name}-{dead_pid}-deadbeef"
    (leftover / "public").mkdir(parents=True)
    (leftover / "public" / "meta.json").write_text("{}")
    again = prepare_dataset("synthetic", small_root, cache, size=16)
    assert not leftover.exists() and again.root.is_dir()


def test_normalisation_uses_training_stats_on_the_0_1_scale(tiny_dataset: PreparedPaths, tiny_data: PreparedData,
                                                          tiny_synthetic_root: Path) -> None:
    files = json.loads((tiny_dataset.private_dir / "train_files.json").read_text())
    raw = np.stack([np.asarray(Image.open(f).convert("RGB"), dtype=np.float64) / 255.0 for f in files])
    assert np.allclose(tiny_data.meta.mean, raw.mean(axis=(0, 1, 2)), atol=1e-6)
    assert np.allclose(tiny_data.meta.std, raw.std(axis=(0, 1, 2)), atol=1e-6)
    assert all(0 < m < 1 for m in tiny_data.meta.mean) and all(0 < s < 1 for s in tiny_data.meta.std)
    x = torch.cat([images for images, _ in tiny_data.train_batches(32, seed=0, epoch=0)])
    assert x.shape[0] == tiny_data.meta.n_train
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-2)


def test_public_dir_holds_no_validation_captions(tiny_dataset: PreparedPaths, tiny_synthetic_root: Path) -> None:
    assert sorted(p.name for p in tiny_dataset.public_dir.iterdir()) == sorted(PUBLIC_FILES)
    val = json.loads((tiny_synthetic_root / "annotations/captions_val.json").read_text())
    val_caps = [a["caption"] for a in val["annotations"]]
    public_text = " ".join(p.read_text() for p in tiny_dataset.public_dir.glob("*.json"))
    assert not [c for c in val_caps if c in public_text]
    assert np.load(tiny_dataset.public_dir / "train_captions.npy").shape[0] == 96  # training rows only
    refs = load_references(tiny_dataset.private_dir)
    assert len(refs) == 24 and all(len(r) == 5 for r in refs.values())
    assert sorted(c for caps in refs.values() for c in map(tuple, caps)) == sorted(tuple(tokenize(c)) for c in val_caps)


def test_vocabulary_comes_from_training_captions_only(tmp_path: Path) -> None:
    root = generate_synthetic(tmp_path / "s", n_train=10, n_val=4, size=32, seed=0)
    ann = root / "annotations/captions_val.json"
    val = json.loads(ann.read_text())
    val["annotations"][0]["caption"] = "xylophone xylophone xylophone"
    ann.write_text(json.dumps(val))
    paths = prepare_dataset("synthetic", root, tmp_path / "cache", size=16, min_freq=1)
    data = PreparedData.open(paths.public_dir)
    assert "xylophone" not in data.vocab.stoi
    assert data.vocab.itos[:4] == ["<pad>", "<sos>", "<eos>", "<unk>"]


def test_validation_subset_is_seeded_and_recorded(small_root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    a = prepare_dataset("synthetic", small_root, cache, size=16, seed=0, val_limit=4)
    b = prepare_dataset("synthetic", small_root, cache / "again", size=16, seed=0, val_limit=4)
    c = prepare_dataset("synthetic", small_root, cache, size=16, seed=1, val_limit=4)
    split = lambda p: json.loads((p.private_dir / "split.json").read_text())  # noqa: E731
    ids = lambda p: json.loads((p.public_dir / "val_ids.json").read_text())  # noqa: E731
    assert split(a)["val_ids"] == split(b)["val_ids"] != split(c)["val_ids"]
    assert [str(i) for i in split(a)["val_ids"]] == ids(a) and len(ids(a)) == 4
    assert split(a)["val_limit"] == 4 and split(a)["seed"] == 0 and split(a)["n_val_available"] == 10
    meta = json.loads((a.public_dir / "meta.json").read_text())
    assert meta["val_limit"] == 4 and meta["n_val"] == 4 and "seed" not in meta  # the seed stays private
    assert set(load_references(a.private_dir)) == set(ids(a))
    assert sorted(split(a)["train_ids"]) == list(range(1, 21))


def test_captions_padded_and_wrapped(tiny_dataset: PreparedPaths) -> None:
    caps = np.load(tiny_dataset.public_dir / "train_captions.npy")
    assert caps.shape == (96, 5, 20) and caps.dtype == np.int32
    for row in caps.reshape(-1, 20):
        assert row[0] == SOS
        end = int(np.where(row == EOS)[0][0])
        assert end >= 2 and (row[1:end] > EOS).all() and (row[end + 1:] == PAD).all()


def test_fewer_captions_than_n_caps_repeat(tmp_path: Path) -> None:
    root = generate_synthetic(tmp_path / "s", n_train=4, n_val=2, size=32, seed=0)
    ann = root / "annotations/captions_train.json"
    raw = json.loads(ann.read_text())
    raw["annotations"] = [a for a in raw["annotations"] if not (a["image_id"] == 1 and a["id"] % 10 >= 2)]
    ann.write_text(json.dumps(raw))
    paths = prepare_dataset("synthetic", root, tmp_path / "cache", size=16, min_freq=1)
    caps = np.load(paths.public_dir / "train_captions.npy")
    assert (caps[0, 2] == caps[0, 0]).all() and (caps[0, 3] == caps[0, 1]).all()


@pytest.mark.parametrize("kwargs", [{"size": 4}, {"val_limit": 0}, {"max_len": 2}])
def test_bad_options_are_config_errors(small_root: Path, tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        prepare_dataset("synthetic", small_root, tmp_path / "cache", **kwargs)


def test_missing_synthetic_root_is_a_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as e:
        prepare_dataset("synthetic", tmp_path / "nothing", tmp_path / "cache")
    assert "annotations/captions_train.json" in e.value.message and "nncaption data synth" in e.value.hint


def test_load_references_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="missing"):
        load_references(tmp_path)
    (tmp_path / "val_refs.json").write_text("{")
    with pytest.raises(DatasetError, match="malformed"):
        load_references(tmp_path)


def test_parallel_decoding_matches_serial(small_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    serial = prepare_dataset("synthetic", small_root, tmp_path / "a", size=16, workers=1)
    monkeypatch.setattr(prepare_mod, "PARALLEL_MIN_IMAGES", 1)
    monkeypatch.setattr(prepare_mod, "DECODE_CHUNK", 7)
    parallel = prepare_dataset("synthetic", small_root, tmp_path / "b", size=16, workers=2)
    for name in ("train_images.npy", "val_images.npy"):
        assert np.array_equal(np.load(serial.public_dir / name), np.load(parallel.public_dir / name))
