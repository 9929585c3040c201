"""Fast training and validation batches from a prepared (memory-mapped) dataset.

Images are stored as uint8 [N, H, W, 3]; a batch is gathered from the memmap,
turned into float32 [B, 3, H, W] on the 0..1 scale and normalised with the
training-set mean/std (computed on the same 0..1 scale). Captions come as
int64 [B, Ncap, T]: every caption SOS ... EOS, then PAD.

`DecodingData` has the same interface but decodes the original image files for
every batch; it exists only so that the benchmark can show what the cache saves.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nncaption.netapi.data.vocab import Vocab
from nncaption.netapi.errors import DatasetError

FORMAT_VERSION = 2  # 2: meta.json no longer carries the seed (it lives in private/split.json)
PUBLIC_FILES: tuple[str, ...] = (
    "meta.json", "vocab.json", "train_images.npy", "train_captions.npy", "val_images.npy", "val_ids.json",
)
PRIVATE_FILES: tuple[str, ...] = ("val_refs.json", "split.json", "train_files.json")
REPREPARE_HINT = "delete the folder and prepare again: nncaption data prepare (--synthetic DIR | --coco-root DIR)"


@dataclass
class DatasetMeta:
    """Facts about a prepared dataset (public_dir/meta.json), all of which a candidate may see.

    It deliberately holds no seed: the synthetic generator's seed (and secret) stay out of public/.
    """

    name: str
    image_size: int
    n_train: int
    n_val: int
    vocab_size: int
    max_len: int  # T: caption length including SOS and EOS
    n_caps: int  # Ncap: captions per training image
    mean: list[float]  # per RGB channel, 0..1 scale, training images
    std: list[float]
    key: str
    source: str = "synthetic"
    val_limit: int | None = None
    min_freq: int = 2
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DatasetMeta:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class PreparedData:
    """A prepared dataset opened for batching (images memory-mapped, read-only)."""

    def __init__(self, public_dir: Path, meta: DatasetMeta, vocab: Vocab, train_images: np.ndarray,
                 train_captions: np.ndarray, val_images: np.ndarray, val_ids: list[str]) -> None:
        self.public_dir = Path(public_dir)
        self.meta = meta
        self.vocab = vocab
        self.train_images = train_images
        self.train_captions = train_captions
        self.val_images = val_images
        self.val_ids = val_ids
        std = torch.tensor(meta.std, dtype=torch.float32).view(1, 3, 1, 1)
        mean = torch.tensor(meta.mean, dtype=torch.float32).view(1, 3, 1, 1)
        # x_norm = (u8 / 255 - mean) / std = u8 * scale + shift
        self._scale = 1.0 / (255.0 * std)
        self._shift = -mean / std

    @classmethod
    def open(cls, public_dir: Path) -> PreparedData:
        """Open `public_dir`; DatasetError when it is missing, partial or inconsistent."""
        public_dir = Path(public_dir)
        missing = [f for f in PUBLIC_FILES if not (public_dir / f).is_file()]
        if missing:
            raise DatasetError(f"prepared dataset {public_dir} is missing {', '.join(missing)}", REPREPARE_HINT)
        try:
            meta = DatasetMeta.from_dict(json.loads((public_dir / "meta.json").read_text(encoding="utf-8")))
            vocab = Vocab.load(public_dir / "vocab.json")
            train_images = np.load(public_dir / "train_images.npy", mmap_mode="r")
            train_captions = np.load(public_dir / "train_captions.npy", mmap_mode="r")
            val_images = np.load(public_dir / "val_images.npy", mmap_mode="r")
            val_ids = [str(i) for i in json.loads((public_dir / "val_ids.json").read_text(encoding="utf-8"))]
        except DatasetError:
            raise
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise DatasetError(f"prepared dataset {public_dir} is unreadable: {e}", REPREPARE_HINT) from e
        s = meta.image_size
        problems = []
        if train_images.shape != (meta.n_train, s, s, 3) or train_images.dtype != np.uint8:
            problems.append(f"train_images {train_images.shape} {train_images.dtype}")
        if train_captions.shape != (meta.n_train, meta.n_caps, meta.max_len):
            problems.append(f"train_captions {train_captions.shape}")
        if val_images.shape != (meta.n_val, s, s, 3) or val_images.dtype != np.uint8:
            problems.append(f"val_images {val_images.shape} {val_images.dtype}")
        if len(val_ids) != meta.n_val:
            problems.append(f"{len(val_ids)} val ids")
        if len(vocab) != meta.vocab_size:
            problems.append(f"vocabulary of {len(vocab)} words")
        if problems:
            raise DatasetError(f"prepared dataset {public_dir} does not match its meta.json: {'; '.join(problems)}",
                               REPREPARE_HINT)
        return cls(public_dir, meta, vocab, train_images, train_captions, val_images, val_ids)

    # ------------------------------------------------------------ batches

    def in_shape(self, batch_size: int) -> tuple[int, int, int, int]:
        """(B, C, H, W) as given to Net.__init__."""
        return (batch_size, 3, self.meta.image_size, self.meta.image_size)

    def normalise(self, images_u8: np.ndarray) -> torch.Tensor:
        """uint8 [B, H, W, 3] -> float32 [B, 3, H, W], (x/255 - mean) / std."""
        arr = np.ascontiguousarray(images_u8)
        if not arr.flags.writeable:  # a slice of the read-only memmap: copy (torch wants writable memory)
            arr = arr.copy()
        x = torch.from_numpy(arr).permute(0, 3, 1, 2).float()
        return x.mul_(self._scale).add_(self._shift).contiguous()

    def _train_images(self, idx: np.ndarray) -> np.ndarray:
        return self.train_images[idx]

    def n_train_batches(self, batch_size: int, *, limit: int | None = None, drop_last: bool = False) -> int:
        n = self.meta.n_train // batch_size if drop_last else -(-self.meta.n_train // batch_size)
        return n if limit is None else min(n, limit)

    def train_batches(self, batch_size: int, *, seed: int, epoch: int, limit: int | None = None,
                      drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images float32 [B,3,H,W], captions int64 [B,Ncap,T]) in an order shuffled by (seed, epoch).

        `limit` caps the number of batches; `drop_last` drops a final short batch.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        order = np.random.default_rng([seed, epoch]).permutation(self.meta.n_train)
        for b in range(self.n_train_batches(batch_size, limit=limit, drop_last=drop_last)):
            idx = np.sort(order[b * batch_size:(b + 1) * batch_size])  # sorted: sequential memmap reads
            images = self.normalise(self._train_images(idx))
            captions = torch.from_numpy(self.train_captions[idx].astype(np.int64))
            yield images, captions

    def val_batches(self, batch_size: int, *, limit: int | None = None) -> Iterator[tuple[list[str], torch.Tensor]]:
        """(image ids, images float32 [B,3,H,W]) in the recorded order; `limit` caps the number of images."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        n = self.meta.n_val if limit is None else min(self.meta.n_val, limit)
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            yield self.val_ids[start:stop], self.normalise(self.val_images[start:stop])


class DecodingData(PreparedData):
    """Like PreparedData, but training images are decoded from the original files for every batch.

    Only for the benchmark (evals/bench_data.py): it needs the private dir's
    train_files.json, which sandboxes never see.
    """

    train_files: list[str]

    @classmethod
    def open_decoding(cls, public_dir: Path, private_dir: Path) -> DecodingData:
        base = PreparedData.open(public_dir)
        path = Path(private_dir) / "train_files.json"
        try:
            files = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise DatasetError(f"cannot read {path}: {e}", REPREPARE_HINT) from e
        self = cls(base.public_dir, base.meta, base.vocab, base.train_images, base.train_captions,
                   base.val_images, base.val_ids)
        self.train_files = list(files)
        return self

    def _train_images(self, idx: np.ndarray) -> np.ndarray:
        from nncaption.netapi.data.coco import decode_image

        size = self.meta.image_size
        return np.stack([decode_image(self.train_files[i], size) for i in idx])
