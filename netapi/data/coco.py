"""COCO-format caption data through pycocotools (real COCO and the synthetic set alike).

Real COCO 2017 is expected as

    ROOT/annotations/captions_train2017.json
    ROOT/annotations/captions_val2017.json
    ROOT/train2017/*.jpg
    ROOT/val2017/*.jpg

(the synthetic layout uses captions_train.json / captions_val.json and train/,
val/). An optional Karpathy split file (dataset_coco.json) re-assigns images
to splits by `cocoid`: train + restval -> train, val -> val (the split scored
during search); test is left out.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from nncaption.netapi.errors import DatasetError

if TYPE_CHECKING:
    import numpy as np

Layout = Literal["coco", "synthetic"]
Split = Literal["train", "val"]

COCO_DOWNLOAD_HINT = (
    "download the 2017 caption annotations (annotations_trainval2017.zip) and the train2017/val2017 image zips "
    "from https://cocodataset.org/#download and unpack them into {root}, or use the synthetic data "
    "(nncaption data synth, then nncaption data prepare --synthetic DIR)"
)
SYNTHETIC_HINT = "generate it with: nncaption data synth --out {root}"

KARPATHY_TRAIN = ("train", "restval")
KARPATHY_VAL = ("val",)


@dataclass
class CaptionRecord:
    """One image and its raw reference captions."""

    image_id: int
    file_name: str  # absolute path of the image file
    captions: list[str] = field(default_factory=list)


def expected_files(layout: Layout) -> dict[str, tuple[str, str]]:
    """split -> (annotation file relative to the root, image folder relative to the root)."""
    if layout == "coco":
        return {"train": ("annotations/captions_train2017.json", "train2017"),
                "val": ("annotations/captions_val2017.json", "val2017")}
    if layout == "synthetic":
        return {"train": ("annotations/captions_train.json", "train"),
                "val": ("annotations/captions_val.json", "val")}
    raise ValueError(f"unknown layout {layout!r}")


def find_coco_files(root: Path, layout: Layout) -> dict[str, tuple[Path, Path]]:
    """Locate the annotation files and image folders of both splits under `root`.

    Raises DatasetError naming every expected path and the missing ones.
    """
    root = Path(root).expanduser()
    wanted = expected_files(layout)
    expected = [p for ann, img in wanted.values() for p in (ann, img + "/")]
    hint = (COCO_DOWNLOAD_HINT if layout == "coco" else SYNTHETIC_HINT).format(root=root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist; expected in it: {', '.join(expected)}", hint)
    missing: list[str] = []
    out: dict[str, tuple[Path, Path]] = {}
    for split, (ann, img) in wanted.items():
        ann_path, img_dir = root / ann, root / img
        if not ann_path.is_file():
            missing.append(ann)
        if not img_dir.is_dir():
            missing.append(img + "/")
        elif not any(img_dir.iterdir()):
            missing.append(img + "/ (empty)")
        out[split] = (ann_path, img_dir)
    if missing:
        raise DatasetError(
            f"the {layout} dataset at {root} is incomplete: missing {', '.join(missing)} "
            f"(expected {', '.join(expected)})",
            hint,
        )
    return out


def load_split(ann_file: Path, image_dir: Path) -> list[CaptionRecord]:
    """Images with their captions (sorted by image id, captions by annotation id) via pycocotools.

    Images without any caption are skipped. Image files are not opened here;
    `check_images` verifies that they exist.
    """
    from pycocotools.coco import COCO

    ann_file, image_dir = Path(ann_file), Path(image_dir)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco = COCO(str(ann_file))
    except FileNotFoundError as e:
        raise DatasetError(f"annotation file {ann_file} is missing", "check the dataset root") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"annotation file {ann_file} is not valid JSON: {e}",
                           "download or generate the annotations again") from e
    except (KeyError, TypeError, AssertionError) as e:
        raise DatasetError(f"annotation file {ann_file} is not in COCO caption format ({e!r})",
                           "it needs 'images' (id, file_name) and 'annotations' (id, image_id, caption)") from e
    records: list[CaptionRecord] = []
    try:
        for image_id in sorted(coco.imgs):
            anns = [cast(dict[str, Any], a) for a in coco.imgToAnns.get(image_id, [])]
            anns.sort(key=lambda a: a["id"])
            captions = [str(a["caption"]).strip() for a in anns if str(a.get("caption", "")).strip()]
            if not captions:
                continue
            file_name = coco.imgs[image_id]["file_name"]
            records.append(CaptionRecord(int(image_id), str((image_dir / file_name).resolve()), captions))
    except (KeyError, TypeError) as e:
        raise DatasetError(f"annotation file {ann_file} lacks a COCO caption field: {e!r}",
                           "images need id and file_name, annotations need id, image_id and caption") from e
    if not records:
        raise DatasetError(f"annotation file {ann_file} holds no captioned images",
                           "check that it is a captions_*.json file, not instances_*.json")
    return records


def check_images(records: list[CaptionRecord], where: str) -> None:
    """Raise DatasetError when image files referenced by the annotations are missing (a partial download)."""
    missing = [r.file_name for r in records if not Path(r.file_name).is_file()]
    if missing:
        shown = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
        raise DatasetError(
            f"{len(missing)} of {len(records)} images listed in {where} are missing (e.g. {shown})",
            "the image folder looks partially downloaded or unpacked: unpack the full image zip again",
        )


def load_karpathy_split(path: Path) -> dict[int, str]:
    """cocoid -> split ('train', 'val', 'test', 'restval') from a dataset_coco.json file."""
    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {int(im["cocoid"]): str(im["split"]) for im in data["images"]}
    except FileNotFoundError as e:
        raise DatasetError(f"Karpathy split file {path} does not exist",
                           "pass the dataset_coco.json of Karpathy's splits, or leave --karpathy out") from e
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise DatasetError(f"Karpathy split file {path} is malformed ({e!r})",
                           "it must be dataset_coco.json: {'images': [{'cocoid', 'split', 'filepath', "
                           "'filename', ...}]}") from e


def load_records(root: Path, layout: Layout, karpathy_split: Path | None = None) -> dict[str, list[CaptionRecord]]:
    """Train and val records of a dataset root, optionally re-split by a Karpathy file."""
    files = find_coco_files(root, layout)
    by_split = {split: load_split(ann, img) for split, (ann, img) in files.items()}
    if karpathy_split is not None:
        assignment = load_karpathy_split(karpathy_split)
        pool = {r.image_id: r for recs in by_split.values() for r in recs}
        unknown = sorted(set(assignment) - set(pool))
        if unknown:
            raise DatasetError(
                f"{len(unknown)} images of the Karpathy split {karpathy_split} are not in the annotations "
                f"under {root} (e.g. cocoid {unknown[0]})",
                "use the 2017 annotations that cover train2014+val2014 images, or the matching split file",
            )
        by_split = {
            "train": [pool[i] for i in sorted(pool) if assignment.get(i) in KARPATHY_TRAIN],
            "val": [pool[i] for i in sorted(pool) if assignment.get(i) in KARPATHY_VAL],
        }
        for split, recs in by_split.items():
            if not recs:
                raise DatasetError(f"the Karpathy split {karpathy_split} assigns no image to {split}",
                                   "check the file's 'split' fields (train/val/test/restval)")
    for split, recs in by_split.items():
        check_images(recs, f"the {split} split of {root}")
    return by_split


def decode_image(path: str | Path, size: int) -> np.ndarray:
    """Decode an image file to uint8 RGB [size, size, 3] (squashed to a square, antialiased).

    JPEG draft mode lets libjpeg decode at a reduced scale first, which makes
    large COCO images several times cheaper to read.
    """
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as src:
            src.draft("RGB", (size, size))
            im = src.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as e:
        raise DatasetError(f"cannot decode image {path}: {e}",
                           "the file is missing or corrupt: download or generate the dataset again") from e
