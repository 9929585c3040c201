"""`nncaption data synth` / `nncaption data prepare`, and `resolve_dataset` for the other commands.

`resolve_dataset` is what eval-model and the graph call: it generates the
default synthetic set on first use (under NNCAPTION_HOME) and prepares the
cache, showing progress bars, so that a fresh machine needs no data step.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from nncaption import config
from nncaption.netapi.errors import ConfigError

if TYPE_CHECKING:  # torch is imported by the data layer: keep `nncaption --help` fast
    from nncaption.netapi.data.prepare import PreparedPaths

DATASETS: tuple[str, ...] = ("synthetic", "coco")


# ---------------------------------------------------------------- progress


@contextlib.contextmanager
def _bars(enabled: bool) -> Iterator[Callable[[str, int, int], None] | None]:
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


# ---------------------------------------------------------------- public helpers


def synthetic_dir_for(seed: int, size: int) -> Path:
    """Where the default synthetic set lives; sets above the default size get their own folder."""
    base = config.default_synthetic_dir(seed)
    return base if size <= config.DEFAULT_IMAGE_SIZE else base.with_name(f"{base.name}-{size}px")


def _synthetic_complete(root: Path) -> bool:
    # generate_synthetic writes the annotation files last
    return all((root / "annotations" / n).is_file() for n in ("captions_train.json", "captions_val.json"))


def ensure_synthetic(root: Path, *, n_train: int, n_val: int, size: int, seed: int, progress: bool) -> Path:
    """Generate the synthetic set at `root` unless complete there (built aside and renamed into place)."""
    from nncaption.netapi.data.synthetic import generate_synthetic

    if _synthetic_complete(root):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.with_name(f".tmp-{root.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with _bars(progress) as cb:
            generate_synthetic(tmp, n_train=n_train, n_val=n_val, size=size, seed=seed,
                               progress=(lambda d, t: cb("synthetic images", d, t)) if cb else None)
        if root.exists():
            shutil.rmtree(root)  # incomplete leftovers
        try:
            os.rename(tmp, root)
        except OSError:
            if not _synthetic_complete(root):  # another process finished first, else a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def resolve_dataset(dataset: str, *, coco_root: Path | None, size: int = config.DEFAULT_IMAGE_SIZE,
                    seed: int = config.DEFAULT_SEED, progress: bool = True, val_limit: int | None = None,
                    karpathy_split: Path | None = None) -> PreparedPaths:
    """A prepared dataset ready for training; see nncaption.netapi.data.resolve.resolve_dataset (its home)."""
    from nncaption.netapi.data.resolve import resolve_dataset as _resolve

    return _resolve(dataset, coco_root=coco_root, size=size, seed=seed, progress=progress, val_limit=val_limit,
                    karpathy_split=karpathy_split)


# ---------------------------------------------------------------- commands


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def _cmd_synth(args: argparse.Namespace) -> int:
    from nncaption.netapi.data.synthetic import generate_synthetic

    if args.size < 16:
        raise ConfigError(f"--size {args.size} is too small for the shapes to be visible", "use --size 16 or more")
    out = Path(args.out) if args.out else synthetic_dir_for(args.seed, args.size)
    with _bars(not args.quiet) as cb:
        generate_synthetic(out, n_train=args.n_train, n_val=args.n_val, size=args.size, seed=args.seed,
                           progress=(lambda d, t: cb("synthetic images", d, t)) if cb else None)
    print(f"synthetic dataset written to {out}")
    print(f"  images:      {out / 'train'} ({args.n_train}), {out / 'val'} ({args.n_val})")
    print(f"  annotations: {out / 'annotations' / 'captions_train.json'}, {out / 'annotations' / 'captions_val.json'}")
    print(f"next: nncaption data prepare --synthetic {out}")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    source, root = ("coco", Path(args.coco_root)) if args.coco_root else ("synthetic", Path(args.synthetic))
    cache = Path(args.cache_dir) if args.cache_dir else config.cache_root()
    karpathy = Path(args.karpathy) if args.karpathy else None
    with _bars(not args.quiet) as cb:
        from nncaption.netapi.data.prepare import prepare_dataset

        paths = prepare_dataset(source, root, cache, size=args.size, seed=args.seed,  # type: ignore[arg-type]
                                val_limit=args.val_limit, karpathy_split=karpathy, min_freq=args.min_freq,
                                max_len=args.max_len, progress=cb)
    from nncaption.netapi.data.loader import PreparedData

    meta = PreparedData.open(paths.public_dir).meta
    print(f"prepared dataset {meta.name} (key {paths.key}) written to {paths.root}")
    print(f"  public (for candidates): {paths.public_dir}")
    print(f"  private (references):    {paths.private_dir}")
    print(f"  train {meta.n_train} images, val {meta.n_val} images, vocabulary {meta.vocab_size} words, "
          f"{meta.image_size}px, captions {meta.n_caps}x{meta.max_len}")
    return 0


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the `data` command group."""
    data = subparsers.add_parser("data", help="generate the synthetic dataset and prepare datasets")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data.set_defaults(func=lambda a: (data.print_help(sys.stderr), 2)[1])

    synth = sub.add_parser("synth", help="write the synthetic COCO-format dataset (images + captions)")
    synth.add_argument("--out", metavar="DIR", help="output folder (default: under NNCAPTION_HOME/data)")
    synth.add_argument("--n-train", type=_positive, default=config.DEFAULT_SYNTH_TRAIN, metavar="N")
    synth.add_argument("--n-val", type=_positive, default=config.DEFAULT_SYNTH_VAL, metavar="N")
    synth.add_argument("--size", type=int, default=config.DEFAULT_IMAGE_SIZE, metavar="PX", help="image side")
    synth.add_argument("--seed", type=int, default=config.DEFAULT_SEED, metavar="S")
    synth.add_argument("--quiet", action="store_true", help="no progress bars")
    synth.set_defaults(func=_cmd_synth)

    prep = sub.add_parser("prepare", help="decode, resize and cache a dataset for training")
    src = prep.add_mutually_exclusive_group(required=True)
    src.add_argument("--coco-root", metavar="DIR", help="COCO 2017: annotations/, train2017/, val2017/")
    src.add_argument("--synthetic", metavar="DIR", help="a folder written by `nncaption data synth`")
    prep.add_argument("--size", type=int, default=config.DEFAULT_IMAGE_SIZE, metavar="PX")
    prep.add_argument("--seed", type=int, default=config.DEFAULT_SEED, metavar="S",
                      help="seed of the validation subset")
    prep.add_argument("--val-limit", type=_positive, default=None, metavar="N",
                      help="score on a seeded subset of N validation images")
    prep.add_argument("--karpathy", metavar="FILE", help="Karpathy split file (dataset_coco.json)")
    prep.add_argument("--min-freq", type=_positive, default=2, metavar="N", help="vocabulary frequency threshold")
    prep.add_argument("--max-len", type=int, default=20, metavar="T", help="caption length incl. SOS/EOS")
    prep.add_argument("--cache-dir", metavar="DIR", help="where caches go (default: NNCAPTION_HOME/prepared)")
    prep.add_argument("--quiet", action="store_true", help="no progress bars")
    prep.set_defaults(func=_cmd_prepare)
