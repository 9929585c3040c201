"""Find or build the prepared dataset a command or the graph asks for.

`resolve_dataset` is what `eval-model`, `check`, `llm` and the graph call: an
already prepared folder (`prepared=`), the default synthetic set (generated
under NNCAPTION_HOME on first use) or a COCO folder, prepared into the cache.

Two processes started together on a fresh NNCAPTION_HOME must not undo each
other's work: generation and preparation each run under a file lock
(netapi.data.locks), build aside and rename into place, and the second process
finds the finished set.
Every problem is a `ConfigError` or `DatasetError` (a usage error for the CLI),
raised before any job starts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nncaption.netapi import paths as config
from nncaption.netapi.errors import ConfigError, DatasetError

if TYPE_CHECKING:  # the data layer imports torch: keep importers of this module fast
    from nncaption.netapi.data.prepare import PreparedPaths

log = logging.getLogger(__name__)

DATASETS: tuple[str, ...] = ("synthetic", "coco")
MAX_META_BYTES = 1 << 20
ProgressCb = Callable[[str, int, int], None]


@contextlib.contextmanager
def progress_bars(enabled: bool) -> Iterator[ProgressCb | None]:
    """Rich progress bars on stderr; yields a (stage, done, total) callback, or None when disabled."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    tasks: dict[str, Any] = {}
    with Progress(TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=False) as bar:

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield update


def synthetic_dir_for(seed: int, size: int) -> Path:
    """Where the default synthetic set lives; sets above the default size get their own folder."""
    base = config.default_synthetic_dir(seed)
    return base if size <= config.DEFAULT_IMAGE_SIZE else base.with_name(f"{base.name}-{size}px")


def synthetic_complete(root: Path) -> bool:
    """Whether `root` holds a finished synthetic set made by this generator (with its secret)."""
    from nncaption.netapi.data.synthetic import is_current

    return is_current(root)


def ensure_synthetic(root: Path, *, n_train: int, n_val: int, size: int, seed: int, progress: bool) -> Path:
    """Generate the synthetic set at `root` unless current there: under its lock, built aside, renamed into place.

    A set without a generator secret (an older generator's) is generated again, keeping nothing of it.
    """
    if synthetic_complete(root):
        return root
    from nncaption.netapi.data.locks import file_lock, lock_path_for
    from nncaption.netapi.data.synthetic import generate_synthetic

    with file_lock(lock_path_for(root)):  # the lock `data synth` takes; `prepare` reads under a shared one
        if synthetic_complete(root):  # another process finished it while we waited
            return root
        tmp = root.with_name(f".tmp-{root.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        old = root.with_name(f".old-{root.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            with progress_bars(progress) as cb:
                generate_synthetic(tmp, n_train=n_train, n_val=n_val, size=size, seed=seed,
                                   progress=(lambda d, t: cb("synthetic images", d, t)) if cb else None)
            if root.exists():  # an incomplete or outdated set (we hold the lock)
                os.rename(root, old)
            os.rename(tmp, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
    return root


def open_prepared(folder: Path) -> PreparedPaths:
    """PreparedPaths of an already prepared folder (holding public/ and private/); its key from meta.json."""
    from nncaption.netapi.data.prepare import PreparedPaths

    root = Path(folder).expanduser().resolve()
    paths = PreparedPaths(key=root.name, root=root, public_dir=root / "public", private_dir=root / "private")
    for sub in (paths.public_dir, paths.private_dir):
        if not sub.is_dir():
            raise ConfigError(f"{root} is not a prepared dataset (no {sub.name}/ folder)",
                              "pass the folder printed by `nncaption data prepare` (it holds public/ and "
                              "private/), or leave --prepared out")
    meta = paths.public_dir / "meta.json"
    try:
        with open(meta, "rb") as f:
            raw = json.loads(f.read(MAX_META_BYTES + 1)[:MAX_META_BYTES].decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DatasetError(f"{meta} is missing or unreadable ({e})",
                           "prepare the dataset again: nncaption data prepare ...") from None
    key = raw.get("key") if isinstance(raw, dict) else None
    if isinstance(key, str) and key:
        paths.key = key
    return paths


def resolve_dataset(
    name: str = "synthetic",
    *,
    coco_root: Path | None = None,
    prepared: Path | None = None,
    size: int = config.DEFAULT_IMAGE_SIZE,
    seed: int = config.DEFAULT_SEED,
    val_limit: int | None = None,
    progress: bool = False,
    karpathy_split: Path | None = None,
) -> PreparedPaths:
    """A prepared dataset ready for training.

    `prepared` (a folder written by `nncaption data prepare`) wins; else `name` is 'synthetic' (generated on
    first use under NNCAPTION_HOME) or 'coco' (needs `coco_root`). `PreparedPaths.key` is the dataset version
    that content-addressed jobs use.
    """
    if prepared is not None:
        return open_prepared(Path(prepared))
    if name == "synthetic":
        if coco_root is not None:
            raise ConfigError("a COCO folder was given for the synthetic dataset",
                              "pass --dataset coco with --coco-root, or leave --coco-root out")
        root = ensure_synthetic(synthetic_dir_for(seed, size), n_train=config.DEFAULT_SYNTH_TRAIN,
                                n_val=config.DEFAULT_SYNTH_VAL, size=max(size, config.DEFAULT_IMAGE_SIZE),
                                seed=seed, progress=progress)
    elif name == "coco":
        if coco_root is None:
            raise ConfigError("the coco dataset needs --coco-root DIR",
                              "pass --coco-root pointing at a folder with annotations/, train2017/ and val2017/, "
                              "or use --dataset synthetic")
        root = Path(coco_root).expanduser()
        if not root.is_dir():
            raise DatasetError(f"COCO folder {root} does not exist" if not root.exists() else f"{root} is not a folder",
                               "pass --coco-root pointing at a folder with annotations/, train2017/ and val2017/")
    else:
        raise ConfigError(f"unknown dataset {name!r}", f"use one of: {', '.join(DATASETS)}")
    from nncaption.netapi.data.prepare import prepare_dataset

    cache = config.cache_root()
    with progress_bars(progress) as cb:  # prepare_dataset locks its cache folder itself
        return prepare_dataset(name, root, cache, size=size, seed=seed,  # type: ignore[arg-type]
                               val_limit=val_limit, karpathy_split=karpathy_split, progress=cb)
