"""Build the prepared cache: decode and resize images once, encode captions, split public/private.

    cache_root/<source>-<size>px-<key>/
        public/   meta.json vocab.json train_images.npy train_captions.npy val_images.npy val_ids.json
        private/  val_refs.json split.json train_files.json

`public/` is everything a candidate may see (it is mounted read-only into
sandboxes); it holds no validation captions and no seed (the synthetic
generator's seed and secret would let a candidate re-derive the references).
`private/` stays with the parent that scores. The folder name carries a hash of the dataset identity
(annotation file contents, root, Karpathy split) and of every option, so a
changed option never reuses a stale cache. A cache is built in a temporary
folder and renamed into place when complete: a crash leaves no partial cache
that could be reused. Building holds a lock on the cache folder (and a shared
lock on a synthetic source), so concurrent processes build once and never
delete each other's finished cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from nncaption.netapi.contract import PAD
from nncaption.netapi.data.coco import CaptionRecord, decode_image, load_records
from nncaption.netapi.data.loader import FORMAT_VERSION, PRIVATE_FILES, PUBLIC_FILES, DatasetMeta
from nncaption.netapi.data.locks import file_lock, optional_shared_lock
from nncaption.netapi.data.tokenizer import tokenize
from nncaption.netapi.data.vocab import Vocab
from nncaption.netapi.errors import ConfigError, DatasetError
from nncaption.netapi.procs import pid_alive

Source = Literal["synthetic", "coco"]
ProgressFn = Callable[[str, int, int], None]  # (stage, done, total)

DECODE_CHUNK = 256
PARALLEL_MIN_IMAGES = 4000  # below this a process pool costs more than it saves


@dataclass
class PreparedPaths:
    """Where a prepared dataset lives."""

    key: str
    root: Path
    public_dir: Path
    private_dir: Path


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_key(source: Source, root: Path, *, size: int, seed: int, val_limit: int | None,
              karpathy_split: Path | None, min_freq: int, max_len: int, n_caps: int) -> str:
    """Hash of the dataset identity and every option that changes the prepared arrays."""
    from nncaption.netapi.data.coco import find_coco_files

    files = find_coco_files(root, source)
    identity = {
        "format": FORMAT_VERSION,
        "source": source,
        "root": str(Path(root).resolve()),
        "annotations": {split: _sha256_file(ann) for split, (ann, _) in sorted(files.items())},
        "karpathy": _sha256_file(Path(karpathy_split)) if karpathy_split is not None else None,
        "size": size, "seed": seed, "val_limit": val_limit,
        "min_freq": min_freq, "max_len": max_len, "n_caps": n_caps,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def is_complete(paths: PreparedPaths) -> bool:
    """All files present and meta.json carries the expected key."""
    if not all((paths.public_dir / f).is_file() for f in PUBLIC_FILES):
        return False
    if not all((paths.private_dir / f).is_file() for f in PRIVATE_FILES):
        return False
    try:
        meta = json.loads((paths.public_dir / "meta.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return meta.get("key") == paths.key


def _paths(folder: Path, key: str) -> PreparedPaths:
    return PreparedPaths(key=key, root=folder, public_dir=folder / "public", private_dir=folder / "private")



def _remove_stale_tmp(cache_root: Path, name: str) -> None:
    """Delete temporary folders of this cache left behind by dead processes."""
    for tmp in cache_root.glob(f".tmp-{name}-*"):
        try:
            pid = int(tmp.name[len(f".tmp-{name}-"):].split("-")[0])
        except ValueError:
            continue
        if not pid_alive(pid):
            shutil.rmtree(tmp, ignore_errors=True)


def _decode_chunk(args: tuple[list[str], int]) -> np.ndarray:
    files, size = args
    return np.stack([decode_image(f, size) for f in files])


def _decode_into(out: np.ndarray, files: Sequence[str], size: int, *, workers: int, stage: str,
                 progress: ProgressFn | None) -> None:
    """Decode `files` into the uint8 array `out` (a memmap being written), chunk by chunk."""
    chunks = [(list(files[i:i + DECODE_CHUNK]), size) for i in range(0, len(files), DECODE_CHUNK)]
    done = 0
    if progress:
        progress(stage, 0, len(files))
    if workers > 1 and len(files) >= PARALLEL_MIN_IMAGES:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = pool.map(_decode_chunk, chunks)
            for arr in results:
                out[done:done + len(arr)] = arr
                done += len(arr)
                if progress:
                    progress(stage, done, len(files))
        return
    for chunk in chunks:
        arr = _decode_chunk(chunk)
        out[done:done + len(arr)] = arr
        done += len(arr)
        if progress:
            progress(stage, done, len(files))


def channel_stats(images: np.ndarray, chunk: int = 1024) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 [N, H, W, 3] images on the 0..1 scale (float64 accumulation)."""
    total = np.zeros(3)
    total_sq = np.zeros(3)
    count = 0
    for i in range(0, len(images), chunk):
        x = np.asarray(images[i:i + chunk], dtype=np.float64).reshape(-1, 3) / 255.0
        total += x.sum(0)
        total_sq += (x * x).sum(0)
        count += len(x)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
    std = np.maximum(std, 1e-3)  # a constant channel must not divide by zero
    return [float(m) for m in mean], [float(s) for s in std]


def encode_captions(records: Sequence[CaptionRecord], vocab: Vocab, *, n_caps: int, max_len: int) -> np.ndarray:
    """int32 [N, n_caps, max_len]; images with fewer captions repeat theirs cyclically (no all-PAD rows)."""
    out = np.full((len(records), n_caps, max_len), PAD, dtype=np.int32)
    for i, rec in enumerate(records):
        for k in range(n_caps):
            ids = vocab.encode(tokenize(rec.captions[k % len(rec.captions)]), max_len)
            out[i, k, : len(ids)] = ids
    return out


def select_val(records: list[CaptionRecord], val_limit: int | None, seed: int) -> list[CaptionRecord]:
    """A seeded subset of `val_limit` validation images, kept in image-id order."""
    if val_limit is None or val_limit >= len(records):
        return list(records)
    idx = np.sort(np.random.default_rng(seed).choice(len(records), size=val_limit, replace=False))
    return [records[i] for i in idx]


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj), encoding="utf-8")


def _build(tmp: Path, source: Source, root: Path, key: str, *, size: int, seed: int, val_limit: int | None,
           karpathy_split: Path | None, min_freq: int, max_len: int, n_caps: int, workers: int,
           progress: ProgressFn | None) -> None:
    public, private = tmp / "public", tmp / "private"
    public.mkdir(parents=True)
    private.mkdir(mode=0o700)  # references: owner only, even where a job can see the host's files
    os.chmod(private, 0o700)  # mkdir's mode is filtered by the umask
    records = load_records(root, source, karpathy_split)
    train, val = records["train"], select_val(records["val"], val_limit, seed)

    vocab = Vocab.build((tokenize(c) for r in train for c in r.captions), min_freq=min_freq)
    vocab.save(public / "vocab.json")
    np.save(public / "train_captions.npy", encode_captions(train, vocab, n_caps=n_caps, max_len=max_len))

    for name, recs, stage in (("train_images.npy", train, "train images"), ("val_images.npy", val, "val images")):
        arr = np.lib.format.open_memmap(public / name, mode="w+", dtype=np.uint8, shape=(len(recs), size, size, 3))
        _decode_into(arr, [r.file_name for r in recs], size, workers=workers, stage=stage, progress=progress)
        arr.flush()
        del arr

    mean, std = channel_stats(np.load(public / "train_images.npy", mmap_mode="r"))
    val_ids = [str(r.image_id) for r in val]
    _write_json(public / "val_ids.json", val_ids)
    _write_json(private / "val_refs.json", {str(r.image_id): r.captions for r in val})
    _write_json(private / "train_files.json", [r.file_name for r in train])
    _write_json(private / "split.json", {
        "source": source, "root": str(Path(root).resolve()), "seed": seed, "val_limit": val_limit,
        "karpathy_split": str(karpathy_split) if karpathy_split else None,
        "n_val_available": len(records["val"]),
        "train_ids": [r.image_id for r in train], "val_ids": [r.image_id for r in val],
    })
    meta = DatasetMeta(
        name=f"{source}-{size}px", image_size=size, n_train=len(train), n_val=len(val), vocab_size=len(vocab),
        max_len=max_len, n_caps=n_caps, mean=mean, std=std, key=key, source=source,
        val_limit=val_limit, min_freq=min_freq,
        extra={"n_val_available": len(records["val"]), "karpathy": karpathy_split is not None},
    )
    _write_json(public / "meta.json", meta.to_dict())  # written last in public/


def prepare_dataset(
    source: Source,
    root: Path,
    cache_root: Path,
    *,
    size: int = 64,
    seed: int = 0,
    val_limit: int | None = None,
    karpathy_split: Path | None = None,
    min_freq: int = 2,
    max_len: int = 20,
    n_caps: int = 5,
    progress: ProgressFn | None = None,
    workers: int | None = None,
) -> PreparedPaths:
    """Prepare `root` (COCO or synthetic layout) into `cache_root`, reusing a complete cache with the same key.

    `progress(stage, done, total)` is called while images are decoded.
    `workers` = decoding processes for large datasets (default: up to 4 CPU cores).
    """
    if source not in ("synthetic", "coco"):
        raise ConfigError(f"unknown dataset source {source!r}", "use 'synthetic' or 'coco'")
    if size < 8 or size > 1024:
        raise ConfigError(f"image size {size} is out of range", "use a size between 8 and 1024 pixels (e.g. 64)")
    if val_limit is not None and val_limit < 1:
        raise ConfigError(f"val_limit must be >= 1, got {val_limit}", "leave it out to use every validation image")
    if max_len < 3 or n_caps < 1 or min_freq < 1:
        raise ConfigError("max_len must be >= 3, n_caps >= 1 and min_freq >= 1")
    root = Path(root).expanduser()
    cache_root = Path(cache_root).expanduser()
    key = cache_key(source, root, size=size, seed=seed, val_limit=val_limit, karpathy_split=karpathy_split,
                    min_freq=min_freq, max_len=max_len, n_caps=n_caps)
    name = f"{source}-{size}px-{key}"
    final = _paths(cache_root / name, key)
    if is_complete(final):
        return final
    cache_root.mkdir(parents=True, exist_ok=True)
    n_workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    # One builder per cache folder; the raw synthetic set may not be replaced while it is read.
    raw_lock = optional_shared_lock(root) if source == "synthetic" else contextlib.nullcontext()
    with file_lock(cache_root / f".{name}.lock"), raw_lock:
        if is_complete(final):  # another process built it while we waited
            return final
        _remove_stale_tmp(cache_root, name)
        if final.root.exists():  # incomplete or damaged: never reuse it (we hold the lock)
            shutil.rmtree(final.root, ignore_errors=True)
        tmp = cache_root / f".tmp-{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            _build(tmp, source, root, key, size=size, seed=seed, val_limit=val_limit, karpathy_split=karpathy_split,
                   min_freq=min_freq, max_len=max_len, n_caps=n_caps, workers=n_workers, progress=progress)
            os.rename(tmp, final.root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if not is_complete(final):
        raise DatasetError(f"prepared cache {final.root} is incomplete after writing it",
                           f"check free disk space under {cache_root} and prepare again")
    return final


def load_references(private_dir: Path) -> dict[str, list[list[str]]]:
    """Validation references (image id string -> tokenised captions) for scoring in the parent."""
    path = Path(private_dir) / "val_refs.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise DatasetError(f"validation references {path} are missing",
                           "prepare the dataset again: nncaption data prepare ...") from e
    except json.JSONDecodeError as e:
        raise DatasetError(f"validation references {path} are malformed: {e}",
                           "delete the prepared folder and prepare it again") from e
    return {str(k): [tokenize(c) for c in caps] for k, caps in raw.items()}
