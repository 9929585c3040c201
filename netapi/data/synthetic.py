"""A seeded synthetic captioning dataset in COCO format (the embedded default).

Each image shows one or two groups of coloured shapes on a plain background;
each group has a count (1-3), a colour, a shape, a size and a position. Five
captions per image describe the scene with synonyms, different word orders
and different levels of detail ("two red circles on the left and a blue
square on the right", "a picture of two red circles and a blue square",
"three shapes on a black background", ...). The vocabulary stays under 100
words. A captioner must read colours, shapes, counts and positions from
pixels to score well, while a constant caption only matches function words.

Files are real JPEGs plus COCO caption annotations, so the dataset goes
through the same pycocotools path as real COCO:

    out_dir/train/000000000001.jpg ...      (layout "synthetic")
    out_dir/val/000001000000.jpg ...
    out_dir/annotations/captions_train.json
    out_dir/annotations/captions_val.json

With `layout="coco"` the names are those of COCO 2017 (train2017/, val2017/,
captions_train2017.json, captions_val2017.json); tests use it to exercise the
COCO code path without the real dataset.

A secret drawn when the set is generated (32 random bytes, `out_dir/generator-secret`,
mode 0600) is mixed into every image's random stream with HMAC-SHA256(secret,
seed/split/index): the scene, its rendering and the caption wording all depend
on it. The secret stays with the raw data, which is never mounted into a
sandbox, and the prepared `public/` folder carries neither it nor the seed, so
a candidate holding the generator's code and every public file still cannot
re-derive the validation captions (nor the scenes: knowing a scene exactly
would give its canonical description, which scores far above honest training).
Generating into a folder that already holds a secret reuses it, so regenerating
the same raw data gives the same files; the same (seed, secret) always gives
byte-identical files.

The scenes and their captions: `scenes.py`; drawing them and writing the files: here.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import random
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from PIL import Image, ImageDraw

from nncaption.netapi.data.scenes import (
    BACKGROUNDS,
    COLOURS,
    SIZES,
    Group,
    Scene,
    make_captions,
    sample_scene,
)

log = logging.getLogger(__name__)

Layout = Literal["synthetic", "coco"]
ProgressFn = Callable[[int, int], None]

VAL_ID_OFFSET = 1_000_000  # val image ids do not depend on n_train
SUPERSAMPLE = 2  # draw at 2x and downsample: smooth edges
SECRET_FILE = "generator-secret"  # beside the raw data; never copied into a prepared public/ folder
SECRET_BYTES = 32

def _rng(seed: int, split: str, index: int, secret: bytes) -> random.Random:
    """The random stream of one image: keyed by the secret, so the public seed alone reproduces nothing."""
    key = hmac.new(secret, f"nncaption-synthetic/{seed}/{split}/{index}".encode(), hashlib.sha256).digest()
    return random.Random(key)  # bytes seeds are hashed with SHA-512: stable across runs and platforms


def read_secret(out_dir: Path) -> bytes | None:
    """The generator secret stored with the raw data at `out_dir`, or None when there is none (or it is malformed)."""
    path = Path(out_dir) / SECRET_FILE
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        log.warning("cannot read the generator secret %s (%s); drawing a new one", path, e)
        return None
    try:
        value = bytes.fromhex(text)
    except ValueError:
        log.warning("malformed generator secret %s; drawing a new one", path)
        return None
    return value if len(value) >= 16 else None


def _write_secret(out_dir: Path, secret: bytes) -> None:
    """Store the secret beside the raw data, readable by the owner only, never through a symlink."""
    path = out_dir / SECRET_FILE
    tmp = out_dir / f".{SECRET_FILE}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(secret.hex() + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------- rendering


def _centres(group: Group, rng: random.Random) -> list[tuple[float, float]]:
    """Object centres (fractions of the side) laid out along the region's axis, with jitter."""
    out = []
    for k in range(group.count):
        along = 0.15 + 0.7 * (k + 0.5) / group.count + rng.uniform(-0.015, 0.015)
        across = rng.uniform(-0.03, 0.03)
        if group.region == "left":
            out.append((0.22 + across, along))
        elif group.region == "right":
            out.append((0.78 + across, along))
        elif group.region == "top":
            out.append((along, 0.22 + across))
        elif group.region == "bottom":
            out.append((along, 0.78 + across))
        else:  # middle: a horizontal row through the centre
            out.append((along, 0.5 + across))
    return out


def _jitter(rgb: tuple[int, int, int], rng: random.Random, amount: int = 15) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)  # type: ignore[return-value]


def render_scene(scene: Scene, size: int, rng: random.Random) -> Image.Image:
    """Draw `scene` as an RGB image of `size` x `size` pixels."""
    side = size * SUPERSAMPLE
    img = Image.new("RGB", (side, side), _jitter(BACKGROUNDS[scene.background], rng, 10))
    draw = ImageDraw.Draw(img)
    for group in scene.groups:
        for cx, cy in _centres(group, rng):
            r = SIZES[group.size] * side * rng.uniform(0.9, 1.1)
            x, y = cx * side, cy * side
            fill = _jitter(COLOURS[group.colour], rng)
            if group.shape == "circle":
                draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
            elif group.shape == "square":
                s = r * 0.9
                draw.rectangle((x - s, y - s, x + s, y + s), fill=fill)
            else:
                draw.polygon([(x, y - r), (x + r * 0.95, y + r * 0.75), (x - r * 0.95, y + r * 0.75)], fill=fill)
    return img.resize((size, size), Image.Resampling.LANCZOS)


# ---------------------------------------------------------------- writing


def split_names(layout: Layout) -> dict[str, tuple[str, str]]:
    """split -> (annotation file name, image folder name) for a layout."""
    if layout == "coco":
        return {"train": ("captions_train2017.json", "train2017"), "val": ("captions_val2017.json", "val2017")}
    return {"train": ("captions_train.json", "train"), "val": ("captions_val.json", "val")}


def _write_json_atomic(path: Path, obj: object) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj), encoding="utf-8")
    os.replace(tmp, path)


def generated_with(out_dir: Path) -> dict[str, object] | None:
    """The parameters a complete set at `out_dir` was generated with (seed, size, n_train, n_val, layout), or None."""
    for ann_name, _ in split_names("synthetic").values():
        path = Path(out_dir) / "annotations" / ann_name
        if path.is_file():
            break
    else:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f).get("info", {})
    except (OSError, ValueError, AttributeError) as e:
        log.debug("cannot read %s: %s", path, e)
        return None
    params = info.get("generator") if isinstance(info, dict) else None
    return params if isinstance(params, dict) else None


def is_current(out_dir: Path, **params: object) -> bool:
    """Whether `out_dir` holds a complete set made by this generator with a secret (and, if given, these params).

    A set written before the secret existed (no `generator-secret`) is not current: its captions follow from
    the public seed alone, so it must be generated again.
    """
    out_dir = Path(out_dir)
    complete = all((out_dir / "annotations" / a).is_file() for a, _ in split_names("synthetic").values())
    if not complete or read_secret(out_dir) is None:
        return False
    made = generated_with(out_dir)
    return made is not None and all(made.get(k) == v for k, v in params.items())


def generate_synthetic(
    out_dir: Path,
    *,
    n_train: int,
    n_val: int,
    size: int = 64,
    seed: int = 0,
    progress: ProgressFn | None = None,
    layout: Layout = "synthetic",
    secret: bytes | None = None,
) -> Path:
    """Write the dataset under `out_dir` and return `out_dir`.

    `secret` keys every image's random stream; when None, the secret already
    stored in `out_dir` is reused, else a new one is drawn from os.urandom.
    It is written to `out_dir/generator-secret`. Deterministic given the
    secret: the same (seed, secret, size) gives byte-identical files, and image
    i of a split does not depend on how many images are generated. The
    annotation files are written last, so their presence means the images
    are all there.
    """
    if n_train < 1 or n_val < 1:
        raise ValueError("n_train and n_val must be >= 1")
    if size < 16:
        raise ValueError("size must be >= 16 pixels")
    if secret is not None and len(secret) < 16:
        raise ValueError("the generator secret must have at least 16 bytes")
    out_dir = Path(out_dir)
    names = split_names(layout)
    (out_dir / "annotations").mkdir(parents=True, exist_ok=True)
    os.chmod(out_dir / "annotations", 0o700)  # the captions are the references: owner only, like the secret
    if secret is None:
        secret = read_secret(out_dir) or secrets.token_bytes(SECRET_BYTES)
    _write_secret(out_dir, secret)
    total, done = n_train + n_val, 0
    payloads: dict[str, dict] = {}
    for split, count, offset in (("train", n_train, 1), ("val", n_val, VAL_ID_OFFSET)):
        ann_name, folder = names[split]
        image_dir = out_dir / folder
        image_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            rng = _rng(seed, split, i, secret)
            scene = sample_scene(rng)
            image_id = offset + i
            file_name = f"{image_id:012d}.jpg"
            render_scene(scene, size, rng).save(image_dir / file_name, format="JPEG", quality=92)
            images.append({"id": image_id, "file_name": file_name, "width": size, "height": size,
                           "scene": scene.to_dict()})
            for k, cap in enumerate(make_captions(scene, rng)):
                annotations.append({"id": image_id * 10 + k, "image_id": image_id, "caption": cap})
            done += 1
            if progress is not None:
                progress(done, total)
        payloads[ann_name] = {
            "info": {"description": f"nn-caption synthetic shapes, seed {seed}, {size}px, split {split}",
                     "version": "1.0",
                     "generator": {"seed": seed, "size": size, "n_train": n_train, "n_val": n_val, "layout": layout}},
            "licenses": [],
            "type": "captions",
            "images": images,
            "annotations": annotations,
        }
    for ann_name, payload in payloads.items():
        _write_json_atomic(out_dir / "annotations" / ann_name, payload)
    return out_dir
