"""Issue 8: scores nobody can derive from what the sandbox sees.

An attacker holds the project's code (the generator included) and every file under `public/`, which is
what a candidate sees inside a sandbox. It regenerates the synthetic set with the public seed (or, when
there is none, with the likely seeds), matches the regenerated validation images to the public ones to
pick the right seed, and submits the regenerated captions (or the canonical description of each
regenerated scene) as its predictions. On the old generator (seed in meta.json, no secret) this gives
BLEU-4 1.0; with the secret it must stay far below honest training (reference models reach 0.3-0.4).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nncaption.netapi.data.coco import decode_image
from nncaption.netapi.data.prepare import PreparedPaths, load_references, prepare_dataset
from nncaption.netapi.data.scenes import Scene, describe
from nncaption.netapi.data.synthetic import (
    SECRET_FILE,
    VAL_ID_OFFSET,
    generate_synthetic,
    read_secret,
)
from nncaption.netapi.data.tokenizer import tokenize
from nncaption.netapi.metrics import corpus_bleu

ATTACK_BOUND = 0.25  # well below honest training of the reference models (0.3-0.4); the old code gave 1.0
SIZE = 32


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PreparedPaths]:
    base = tmp_path_factory.mktemp("secret")
    raw = generate_synthetic(base / "raw", n_train=20, n_val=60, size=SIZE, seed=0)  # the default seed
    return raw, prepare_dataset("synthetic", raw, base / "prepared", size=SIZE, seed=0)


def attack(public_dir: Path, work: Path) -> list[dict[str, str]]:
    """Predictions an attacker derives from public/ and the generator's code (two strategies)."""
    meta = json.loads((public_dir / "meta.json").read_text(encoding="utf-8"))
    val_ids = [int(i) for i in json.loads((public_dir / "val_ids.json").read_text(encoding="utf-8"))]
    public_images = np.load(public_dir / "val_images.npy").astype(np.float64)
    size = int(meta["image_size"])
    n_val = max(val_ids) - VAL_ID_OFFSET + 1
    seeds = [int(meta["seed"])] if "seed" in meta else [0, 1, 2]
    best: tuple[float, dict[int, list[str]], dict[int, dict]] | None = None
    for seed in seeds:
        root = generate_synthetic(work / f"seed{seed}", n_train=1, n_val=n_val, size=size, seed=seed)
        ann = json.loads((root / "annotations" / "captions_val.json").read_text(encoding="utf-8"))
        captions: dict[int, list[str]] = {}
        for a in ann["annotations"]:
            captions.setdefault(a["image_id"], []).append(a["caption"])
        scenes = {im["id"]: im["scene"] for im in ann["images"]}
        mine = np.stack([decode_image(root / "val" / f"{i:012d}.jpg", size) for i in val_ids]).astype(np.float64)
        distance = float(np.abs(mine - public_images).mean())
        if best is None or distance < best[0]:
            best = (distance, captions, scenes)
    assert best is not None
    _, captions, scenes = best
    return [
        {str(i): captions[i][0] for i in val_ids},
        {str(i): describe(Scene.from_dict(scenes[i])) for i in val_ids},
    ]


def bleu4(predictions: dict[str, str], private_dir: Path) -> float:
    refs = load_references(private_dir)
    ids = sorted(refs)
    return corpus_bleu([tokenize(predictions[i]) for i in ids], [refs[i] for i in ids])["bleu4"]


def test_attacker_with_public_files_and_code_scores_below_honest_training(
    prepared: tuple[Path, PreparedPaths], tmp_path: Path
) -> None:
    raw, paths = prepared
    scores = [bleu4(p, paths.private_dir) for p in attack(paths.public_dir, tmp_path)]
    assert max(scores) < ATTACK_BOUND, scores
    # the bound means something: the true scenes (private raw data) describe the references far better
    ann = json.loads((raw / "annotations" / "captions_val.json").read_text(encoding="utf-8"))
    oracle = {str(im["id"]): describe(Scene.from_dict(im["scene"])) for im in ann["images"]}
    assert bleu4(oracle, paths.private_dir) > 0.45


def test_public_holds_neither_the_secret_nor_the_seed(prepared: tuple[Path, PreparedPaths]) -> None:
    raw, paths = prepared
    secret = read_secret(raw)
    assert secret is not None and (raw / SECRET_FILE).is_file()
    meta = json.loads((paths.public_dir / "meta.json").read_text(encoding="utf-8"))
    assert "seed" not in meta
    for f in paths.root.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert secret not in data and secret.hex().encode() not in data, f
    assert not list(paths.root.rglob(SECRET_FILE))
    # where a job runs as another user with the host's files in view, it can read neither secret nor references
    for private in (raw / SECRET_FILE, raw / "annotations", paths.private_dir):
        assert private.stat().st_mode & 0o077 == 0, private


def test_reprepare_same_raw_data_gives_same_references(prepared: tuple[Path, PreparedPaths], tmp_path: Path) -> None:
    raw, paths = prepared
    again = prepare_dataset("synthetic", raw, tmp_path / "again", size=SIZE, seed=0)
    assert again.key == paths.key
    assert load_references(again.private_dir) == load_references(paths.private_dir)
