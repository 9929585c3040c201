"""Batches from the prepared cache: shapes, dtypes, shuffling, limits and the decode-per-batch twin."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from nncaption.netapi.contract import EOS, SOS
from nncaption.netapi.data.loader import DatasetMeta, DecodingData, PreparedData
from nncaption.netapi.data.prepare import PreparedPaths
from nncaption.netapi.errors import DatasetError


def test_train_batch_shapes_and_dtypes(tiny_data: PreparedData) -> None:
    images, captions = next(tiny_data.train_batches(8, seed=0, epoch=0))
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32
    assert captions.shape == (8, 5, 20) and captions.dtype == torch.int64
    assert (captions[:, :, 0] == SOS).all() and ((captions == EOS).sum(-1) == 1).all()
    assert tiny_data.in_shape(8) == (8, 3, 32, 32)
    assert captions.max() < len(tiny_data.vocab)


def test_meta_describes_the_dataset(tiny_data: PreparedData) -> None:
    m = tiny_data.meta
    assert (m.image_size, m.n_train, m.n_val, m.n_caps, m.max_len) == (32, 96, 24, 5, 20)
    assert "seed" not in m.to_dict()  # public meta.json carries no seed (issue 8)
    assert m.vocab_size == len(tiny_data.vocab) and len(m.mean) == len(m.std) == 3
    assert DatasetMeta.from_dict({**m.to_dict(), "future_field": 1}) == m


def test_epoch_covers_every_image_once_and_shuffles_by_seed_and_epoch(tiny_data: PreparedData) -> None:
    def order(seed: int, epoch: int) -> list[bytes]:
        return [img.numpy().tobytes() for images, _ in tiny_data.train_batches(10, seed=seed, epoch=epoch)
                for img in images]

    e0 = order(0, 0)
    assert len(e0) == 96 and len(set(e0)) == 96
    assert order(0, 0) == e0
    assert order(0, 1) != e0 and sorted(order(0, 1)) == sorted(e0)
    assert order(1, 0) != e0


def test_images_and_captions_stay_paired(tiny_data: PreparedData) -> None:
    by_image = {tiny_data.normalise(tiny_data.train_images[i:i + 1])[0].numpy().tobytes():
                torch.from_numpy(tiny_data.train_captions[i].astype(np.int64)) for i in range(96)}
    for images, captions in tiny_data.train_batches(16, seed=3, epoch=2):
        for img, cap in zip(images, captions, strict=True):
            assert torch.equal(by_image[img.numpy().tobytes()], cap)


def test_limit_and_drop_last(tiny_data: PreparedData) -> None:
    sizes = [len(x) for x, _ in tiny_data.train_batches(40, seed=0, epoch=0)]
    assert sizes == [40, 40, 16]
    assert [len(x) for x, _ in tiny_data.train_batches(40, seed=0, epoch=0, drop_last=True)] == [40, 40]
    assert len(list(tiny_data.train_batches(8, seed=0, epoch=0, limit=2))) == 2
    assert tiny_data.n_train_batches(40) == 3 and tiny_data.n_train_batches(8, limit=2) == 2
    with pytest.raises(ValueError):
        next(tiny_data.train_batches(0, seed=0, epoch=0))


def test_val_batches_in_recorded_order(tiny_data: PreparedData, tiny_dataset: PreparedPaths) -> None:
    batches = list(tiny_data.val_batches(10))
    assert [len(ids) for ids, _ in batches] == [10, 10, 4]
    ids = [i for b, _ in batches for i in b]
    assert ids == json.loads((tiny_dataset.public_dir / "val_ids.json").read_text())
    assert all(isinstance(i, str) for i in ids)
    assert batches[0][1].shape == (10, 3, 32, 32) and batches[0][1].dtype == torch.float32
    limited = list(tiny_data.val_batches(4, limit=6))
    assert [len(b) for b, _ in limited] == [4, 2]


def test_images_are_memory_mapped(tiny_data: PreparedData) -> None:
    assert isinstance(tiny_data.train_images, np.memmap) and isinstance(tiny_data.val_images, np.memmap)
    assert not tiny_data.train_images.flags.writeable


def test_decoding_twin_gives_identical_batches(tiny_dataset: PreparedPaths, tiny_data: PreparedData) -> None:
    decoding = DecodingData.open_decoding(tiny_dataset.public_dir, tiny_dataset.private_dir)
    for (a, ca), (b, cb) in zip(tiny_data.train_batches(16, seed=0, epoch=0, limit=2),
                                decoding.train_batches(16, seed=0, epoch=0, limit=2), strict=True):
        assert torch.equal(a, b) and torch.equal(ca, cb)


def _copy(tiny_dataset: PreparedPaths, tmp_path: Path) -> Path:
    dst = tmp_path / "public"
    shutil.copytree(tiny_dataset.public_dir, dst)
    return dst


def test_open_missing_or_partial_is_a_dataset_error(tiny_dataset: PreparedPaths, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="missing"):
        PreparedData.open(tmp_path / "nowhere")
    public = _copy(tiny_dataset, tmp_path)
    (public / "val_images.npy").unlink()
    with pytest.raises(DatasetError, match="val_images.npy") as e:
        PreparedData.open(public)
    assert "nncaption data prepare" in e.value.hint


def test_open_inconsistent_is_a_dataset_error(tiny_dataset: PreparedPaths, tmp_path: Path) -> None:
    public = _copy(tiny_dataset, tmp_path)
    meta = json.loads((public / "meta.json").read_text())
    meta["n_train"] = 95
    (public / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="does not match"):
        PreparedData.open(public)
    (public / "train_images.npy").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="unreadable"):
        PreparedData.open(public)
