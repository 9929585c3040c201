"""`nncaption data synth` / `nncaption data prepare`, and `resolve_dataset` for the other commands.

`resolve_dataset` (its home is nncaption.netapi.data.resolve) is what eval-model and the graph call: it
generates the default synthetic set on first use (under NNCAPTION_HOME) and prepares the cache, so that a
fresh machine needs no data step. Both data commands check NNCAPTION_HOME (or --out / --cache-dir) first,
so an unusable folder is an environment error (exit 2). `data synth` writes under an exclusive lock, builds
aside and renames into place, and keeps a complete set generated with the same parameters, so two commands
started together never delete the dataset the other just finished.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from nncaption.netapi import paths as config
from nncaption.netapi.data.locks import file_lock, lock_path_for
from nncaption.netapi.errors import ConfigError

if TYPE_CHECKING:  # torch is imported by the data layer: keep `nncaption --help` fast
    from nncaption.netapi.data.prepare import PreparedPaths

DATASETS: tuple[str, ...] = ("synthetic", "coco")
SYNTH_ENTRIES: frozenset[str] = frozenset({"annotations", "train", "val", "train2017", "val2017", "generator-secret"})


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


def _replaceable(out: Path) -> bool:
    """Whether `out` may be replaced by a new synthetic set: missing, empty, or a synthetic set itself."""
    if not out.exists():
        return True
    if out.is_symlink() or not out.is_dir():
        return False
    return all(p.name in SYNTH_ENTRIES or p.name.startswith(".generator-secret") for p in out.iterdir())


def _cmd_synth(args: argparse.Namespace) -> int:
    from nncaption.netapi.data.resolve import progress_bars, synthetic_dir_for
    from nncaption.netapi.data.synthetic import generate_synthetic, is_current, read_secret

    if args.size < 16:
        raise ConfigError(f"--size {args.size} is too small for the shapes to be visible", "use --size 16 or more")
    if args.out:
        out = Path(args.out).expanduser()
        config.ensure_writable_dir(out.parent, "--out")
    else:
        config.ensure_home()
        out = synthetic_dir_for(args.seed, args.size)
    wanted = {"seed": args.seed, "size": args.size, "n_train": args.n_train, "n_val": args.n_val,
              "layout": "synthetic"}
    with file_lock(lock_path_for(out)):  # one writer; `data prepare` and eval-model read under a shared lock
        if is_current(out, **wanted) and not args.force:
            print(f"synthetic dataset already at {out} (same seed, size and counts; --force writes it again)")
            print(f"next: nncaption data prepare --synthetic {out}")
            return 0
        if not _replaceable(out):
            raise ConfigError(f"--out {out} exists and is not a synthetic dataset",
                              "give --out a new or empty folder (or one written by `nncaption data synth`)")
        secret = read_secret(out) if out.is_dir() else None  # regenerating keeps the same captions
        tmp = out.with_name(f".tmp-{out.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        old = out.with_name(f".old-{out.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            with progress_bars(not args.quiet) as cb:
                generate_synthetic(tmp, n_train=args.n_train, n_val=args.n_val, size=args.size, seed=args.seed,
                                   secret=secret, progress=(lambda d, t: cb("synthetic images", d, t)) if cb else None)
            if out.exists():
                os.rename(out, old)
            os.rename(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
    print(f"synthetic dataset written to {out}")
    print(f"  images:      {out / 'train'} ({args.n_train}), {out / 'val'} ({args.n_val})")
    print(f"  annotations: {out / 'annotations' / 'captions_train.json'}, {out / 'annotations' / 'captions_val.json'}")
    print(f"next: nncaption data prepare --synthetic {out}")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from nncaption.netapi.data.resolve import progress_bars

    source, root = ("coco", Path(args.coco_root)) if args.coco_root else ("synthetic", Path(args.synthetic))
    if args.cache_dir:
        cache = config.ensure_writable_dir(Path(args.cache_dir), "--cache-dir")
    else:
        config.ensure_home()
        cache = config.cache_root()
    karpathy = Path(args.karpathy) if args.karpathy else None
    with progress_bars(not args.quiet) as cb:
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


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `data` command group."""
    data = subparsers.add_parser("data", help="generate the synthetic dataset and prepare datasets")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    def group_help(_args: argparse.Namespace) -> int:
        data.print_help(sys.stderr)
        return 2

    data.set_defaults(func=group_help)

    synth = sub.add_parser("synth", help="write the synthetic COCO-format dataset (images + captions)")
    synth.add_argument("--out", metavar="DIR", help="output folder (default: under NNCAPTION_HOME/data)")
    synth.add_argument("--n-train", type=_positive, default=config.DEFAULT_SYNTH_TRAIN, metavar="N")
    synth.add_argument("--n-val", type=_positive, default=config.DEFAULT_SYNTH_VAL, metavar="N")
    synth.add_argument("--size", type=int, default=config.DEFAULT_IMAGE_SIZE, metavar="PX", help="image side")
    synth.add_argument("--seed", type=int, default=config.DEFAULT_SEED, metavar="S")
    synth.add_argument("--quiet", action="store_true", help="no progress bars")
    synth.add_argument("--force", action="store_true",
                       help="write the set again even when the same one is already there")
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
