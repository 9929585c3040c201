"""Data and validation speed, measured in one run on the same data.

    .venv/bin/python -m nncaption.evals.bench_data [--n-train 2000] [--n-val 250] [--size 64] [--batch 32]

Prints
1. the epoch time of the prepared, memory-mapped cache vs decoding the image
   files for every batch (same batches, same normalisation; target: the cache
   at least 3x faster), plus the one-off synthetic generation and preparation
   times;
2. the median time of a static check and of a smoke check of a reference
   model (nncaption.netapi.validate / nncaption.netapi.lifecycle.smoke_here:
   the runner on a smoke job, in this process), when those modules exist.

Everything is written to a temporary directory; nothing touches NNCAPTION_HOME.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from nncaption.netapi.data.loader import DecodingData, PreparedData
from nncaption.netapi.data.prepare import PreparedPaths, prepare_dataset
from nncaption.netapi.data.synthetic import generate_synthetic


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _epoch(data: PreparedData, batch: int, epoch: int) -> None:
    """One pass over the training split, touching every tensor like a training loop would."""
    total = 0.0
    for images, captions in data.train_batches(batch, seed=0, epoch=epoch):
        total += float(images[:, 0, 0, 0].sum()) + float(captions[:, 0, 1].sum())


def bench_cache(paths: PreparedPaths, batch: int, repeats: int) -> tuple[float, float]:
    """Median epoch seconds (cache, decode-per-batch), interleaved so both see the same machine state."""
    cached = PreparedData.open(paths.public_dir)
    decoding = DecodingData.open_decoding(paths.public_dir, paths.private_dir)
    _epoch(cached, batch, 99)  # warm the page cache for both: the files are read either way
    _epoch(decoding, batch, 99)
    t_cache, t_decode = [], []
    for r in range(repeats):
        t_cache.append(_timed(partial(_epoch, cached, batch, r)))
        t_decode.append(_timed(partial(_epoch, decoding, batch, r)))
    return statistics.median(t_cache), statistics.median(t_decode)


def bench_checks(paths: PreparedPaths, model: str, static_repeats: int, smoke_repeats: int) -> None:
    """Median static and smoke check times of a reference model (when the validator exists)."""
    # Section completed by whoever owns validate/lifecycle if the names below change.
    try:
        from nncaption.netapi import reference, validate
    except ImportError as e:
        print(f"  static/smoke check: not measured ({e}); needs nncaption.netapi.validate and .reference")
        return
    try:
        candidate = Path(reference.path(model))
    except (AttributeError, KeyError, ValueError, FileNotFoundError) as e:
        print(f"  static/smoke check: not measured (reference model {model!r} unavailable: {e})")
        return
    source = candidate.read_text(encoding="utf-8")
    times = []
    for _ in range(static_repeats):
        t0 = time.perf_counter()
        verdict = validate.static_check(source, candidate.name)
        times.append(time.perf_counter() - t0)
    print(f"  static check ({model}): median {statistics.median(times) * 1000:.2f} ms over {static_repeats} "
          f"runs, verdict ok={verdict.ok}")
    try:
        from nncaption.netapi.lifecycle import smoke_here
    except ImportError as e:
        print(f"  smoke check: not measured ({e}); needs nncaption.netapi.lifecycle")
        return
    times = []
    for _ in range(smoke_repeats):
        t0 = time.perf_counter()
        verdict = smoke_here(candidate, paths.public_dir)
        times.append(time.perf_counter() - t0)
    print(f"  smoke check ({model}, runner in this process, {torch.get_num_threads()} threads): median "
          f"{statistics.median(times):.2f} s over {smoke_repeats} runs, verdict ok={verdict.ok}"
          + ("" if verdict.ok else f" [{verdict.category}] {verdict.message}"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nncaption.evals.bench_data", description=__doc__.split("\n")[0])
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--n-val", type=int, default=250)
    p.add_argument("--size", type=int, default=64, help="image side of the generated and prepared images")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3, help="epochs timed per loader (median)")
    p.add_argument("--model", default="gru", help="reference model for the check timings")
    p.add_argument("--static-repeats", type=int, default=20)
    p.add_argument("--smoke-repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 = fair on a shared machine)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="nncaption-bench-data-") as tmp:
        root = Path(tmp) / "synthetic"
        t_gen = _timed(lambda: generate_synthetic(root, n_train=args.n_train, n_val=args.n_val, size=args.size))
        t0 = time.perf_counter()
        paths = prepare_dataset("synthetic", root, Path(tmp) / "cache", size=args.size, workers=1)
        t_prep = time.perf_counter() - t0
        t_reuse = _timed(lambda: prepare_dataset("synthetic", root, Path(tmp) / "cache", size=args.size))
        print(f"synthetic data: {args.n_train}+{args.n_val} images at {args.size}px, batch {args.batch}, "
              f"{args.threads} torch thread(s)")
        print(f"  generate: {t_gen:.2f} s   prepare (decode once): {t_prep:.2f} s   "
              f"prepare again (cache hit): {t_reuse * 1000:.1f} ms")
        t_cache, t_decode = bench_cache(paths, args.batch, args.repeats)
        print(f"  epoch, prepared cache (memmap): {t_cache:.3f} s")
        print(f"  epoch, decode images per batch: {t_decode:.3f} s")
        ratio = t_decode / t_cache
        print(f"  cache speed-up: {ratio:.1f}x  (target >= 3x: {'met' if ratio >= 3 else 'NOT met'})")
        print("validation checks:")
        bench_checks(paths, args.model, args.static_repeats, args.smoke_repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
