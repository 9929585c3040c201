"""The COCO code path (pycocotools) on a tiny COCO-2017-layout tree written by the synthetic generator."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from nncaption.netapi.data.coco import find_coco_files, load_records, load_split
from nncaption.netapi.data.loader import PreparedData
from nncaption.netapi.data.prepare import load_references, prepare_dataset
from nncaption.netapi.data.synthetic import VAL_ID_OFFSET, generate_synthetic
from nncaption.netapi.errors import DatasetError

COCO_FILES = ("annotations/captions_train2017.json", "annotations/captions_val2017.json", "train2017/", "val2017/")


@pytest.fixture()
def coco_root(tmp_path: Path) -> Path:
    return generate_synthetic(tmp_path / "coco", n_train=12, n_val=6, size=32, seed=3, layout="coco")


def test_coco_layout_loads_through_pycocotools(coco_root: Path) -> None:
    files = find_coco_files(coco_root, "coco")
    assert files["train"] == (coco_root / "annotations/captions_train2017.json", coco_root / "train2017")
    records = load_split(*files["val"])
    assert [r.image_id for r in records] == list(range(VAL_ID_OFFSET, VAL_ID_OFFSET + 6))
    assert all(Path(r.file_name).is_absolute() and Path(r.file_name).is_file() for r in records)
    assert all(len(r.captions) == 5 for r in records)


def test_prepare_coco_root(coco_root: Path, tmp_path: Path) -> None:
    paths = prepare_dataset("coco", coco_root, tmp_path / "cache", size=16, seed=0)
    data = PreparedData.open(paths.public_dir)
    assert data.meta.source == "coco" and data.meta.n_train == 12 and data.meta.n_val == 6
    assert data.train_images.shape == (12, 16, 16, 3)
    refs = load_references(paths.private_dir)
    assert set(refs) == set(data.val_ids) and all(len(r) == 5 for r in refs.values())


def test_synthetic_layout_goes_through_the_same_loader(tiny_synthetic_root: Path) -> None:
    files = find_coco_files(tiny_synthetic_root, "synthetic")
    records = load_split(*files["train"])
    assert len(records) == 96 and records[0].image_id == 1 and len(records[0].captions) == 5


def test_missing_root_names_every_expected_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as e:
        find_coco_files(tmp_path / "absent", "coco")
    for name in COCO_FILES:
        assert name in e.value.message
    assert "cocodataset.org" in e.value.hint


@pytest.mark.parametrize("remove", ["annotations/captions_val2017.json", "train2017"])
def test_partial_root_names_the_missing_part(coco_root: Path, remove: str) -> None:
    target = coco_root / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(DatasetError) as e:
        find_coco_files(coco_root, "coco")
    assert "incomplete" in e.value.message and remove in e.value.message
    assert e.value.hint


def test_empty_image_folder_is_partial(coco_root: Path) -> None:
    for f in (coco_root / "val2017").iterdir():
        f.unlink()
    with pytest.raises(DatasetError, match=r"val2017/ \(empty\)"):
        find_coco_files(coco_root, "coco")


def test_missing_image_files_are_reported(coco_root: Path, tmp_path: Path) -> None:
    victim = sorted((coco_root / "train2017").iterdir())[2]
    victim.unlink()
    with pytest.raises(DatasetError) as e:
        prepare_dataset("coco", coco_root, tmp_path / "cache", size=16)
    assert "1 of 12 images" in e.value.message and victim.name in e.value.message
    assert not any((tmp_path / "cache").glob("coco-*"))  # nothing half-built left behind


def test_malformed_annotations(coco_root: Path) -> None:
    ann = coco_root / "annotations/captions_train2017.json"
    ann.write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_records(coco_root, "coco")
    ann.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(DatasetError, match="no captioned images"):
        load_records(coco_root, "coco")


def _karpathy(path: Path, splits: dict[int, str]) -> Path:
    images = [{"cocoid": i, "split": s, "filepath": "val2014", "filename": f"COCO_val2014_{i:012d}.jpg",
               "sentences": []} for i, s in splits.items()]
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return path


def test_karpathy_split_reassigns_images(coco_root: Path, tmp_path: Path) -> None:
    splits = {i: "train" for i in range(1, 7)}
    splits.update({i: "restval" for i in range(7, 10)})
    splits.update({i: "val" for i in (10, 11, VAL_ID_OFFSET)})
    splits.update({i: "test" for i in range(VAL_ID_OFFSET + 1, VAL_ID_OFFSET + 6)})
    splits[12] = "test"
    k = _karpathy(tmp_path / "dataset_coco.json", splits)
    records = load_records(coco_root, "coco", k)
    assert [r.image_id for r in records["train"]] == list(range(1, 10))
    assert [r.image_id for r in records["val"]] == [10, 11, VAL_ID_OFFSET]
    paths = prepare_dataset("coco", coco_root, tmp_path / "cache", size=16, karpathy_split=k)
    split = json.loads((paths.private_dir / "split.json").read_text())
    assert split["val_ids"] == [10, 11, VAL_ID_OFFSET] and split["karpathy_split"] == str(k)
    plain = prepare_dataset("coco", coco_root, tmp_path / "cache", size=16)
    assert plain.key != paths.key
    assert np.load(plain.public_dir / "train_images.npy").shape[0] == 12


def test_karpathy_split_errors(coco_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_records(coco_root, "coco", tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text(json.dumps({"images": [{"id": 1}]}))
    with pytest.raises(DatasetError, match="malformed"):
        load_records(coco_root, "coco", tmp_path / "bad.json")
    unknown = _karpathy(tmp_path / "unknown.json", {1: "train", 424242: "val"})
    with pytest.raises(DatasetError, match="424242"):
        load_records(coco_root, "coco", unknown)
    no_val = _karpathy(tmp_path / "noval.json", {1: "train", 2: "test"})
    with pytest.raises(DatasetError, match="no image to val"):
        load_records(coco_root, "coco", no_val)
