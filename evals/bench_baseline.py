"""Does a reference model really learn? Its val BLEU-4 next to constant-caption baselines.

    python -m nncaption.evals.bench_baseline [--model transformer] [--epochs 3] [--json]

Trains a reference captioner for a few CPU epochs on the default synthetic
data (generated and prepared under NNCAPTION_HOME on first use, exactly the
data `nncaption eval-model` uses), with the runner in a plain subprocess, and
scores its free-running decodes after every epoch. Two constant captions put
the number in context, both chosen on TRAINING captions only:

  * the single most frequent training caption;
  * the best constant caption: of the most frequent training captions, the one
    with the highest corpus BLEU-4 on training images.

The printed ratio is model BLEU-4 / best-constant BLEU-4, measured in this run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any, cast

from nncaption.netapi import paths as config


def run(model: str, epochs: int, seed: int, size: int, threads: int, lr: float) -> dict[str, Any]:
    from nncaption.cmd_data import resolve_dataset
    from nncaption.netapi import reference
    from nncaption.netapi.data.loader import PreparedData
    from nncaption.netapi.data.prepare import load_references
    from nncaption.netapi.evaluate import constant_caption_baseline, make_job_dir, new_job_dir, score
    from nncaption.netapi.job import JobSpec, read_predictions, read_result
    from nncaption.netapi.metrics import corpus_bleu

    paths = resolve_dataset("synthetic", coco_root=None, size=size, seed=config.DEFAULT_SEED, progress=True)
    data = PreparedData.open(paths.public_dir)
    refs = load_references(paths.private_dir)

    prm = {"lr": lr, "momentum": 0.9, "dropout": 0.1, "batch": 32, "epoch": epochs}
    spec = JobSpec(data_dir=str(paths.public_dir), epochs=epochs, batch_size=32, prm=prm, seed=seed,
                   threads=threads)
    job = make_job_dir(new_job_dir(config.runs_root(), f"bench-baseline-{model}"), reference.source(model), spec)
    print(f"training ref-{model} for {epochs} epoch(s) on {data.meta.name} ({data.meta.n_train} train, "
          f"{data.meta.n_val} val images, {threads} thread(s)); job dir {job}", file=sys.stderr)
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "nncaption.netapi.run", str(job)], capture_output=True, text=True)
    wall = time.time() - t0
    result = read_result(job)
    if proc.returncode != 0 or result is None or result.status != "ok":
        raise SystemExit(f"the runner failed ({proc.returncode}): {result.message if result else proc.stderr[-2000:]}")
    report = score(read_predictions(job), refs, data.vocab, params=result.params)

    ids = sorted(refs)
    counts = Counter(tuple(data.vocab.decode(c)) for caps in data.train_captions for c in caps)
    most_frequent = list(counts.most_common(1)[0][0])
    frequent_bleu4 = corpus_bleu([most_frequent] * len(ids), [refs[i] for i in ids])["bleu4"]
    # train_captions is an [N, Ncap, T] int array: indexable and iterable like the nested sequence the scorer reads.
    best = constant_caption_baseline(cast("Sequence[Sequence[Sequence[int]]]", data.train_captions), data.vocab, refs)
    model_bleu4 = report.bleu4 or 0.0
    return {
        "model": f"ref-{model}",
        "dataset": data.meta.name,
        "epochs": [{"epoch": e.epoch, "bleu4": e.bleu4, "lemur_bleu4": e.lemur_bleu4, "seconds": e.seconds,
                    "train_loss": e.train_loss} for e in report.epochs],
        "bleu4": model_bleu4,
        "params": result.params,
        "most_frequent_caption": {"caption": " ".join(most_frequent), "bleu4": frequent_bleu4},
        "best_constant_caption": {"caption": " ".join(best.caption), "bleu4": best.val["bleu4"],
                                  "train_bleu4": best.train_bleu4},
        "ratio_vs_best_constant": model_bleu4 / best.val["bleu4"] if best.val["bleu4"] else None,
        "ratio_vs_most_frequent": model_bleu4 / frequent_bleu4 if frequent_bleu4 else None,
        "wall_s": round(wall, 1),
        "job_dir": str(job),
    }


def _ratio(r: float | None) -> str:
    return "n/a (the constant scores 0)" if r is None else f"{r:.2f}x"


def main(argv: Sequence[str] | None = None) -> int:
    from nncaption.netapi import reference

    ap = argparse.ArgumentParser(prog="python -m nncaption.evals.bench_baseline", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=reference.NAMES, default="transformer")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=config.DEFAULT_IMAGE_SIZE)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    args = ap.parse_args(argv)
    out = run(args.model, args.epochs, args.seed, args.size, args.threads, args.lr)
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{out['model']} on {out['dataset']} ({out['params']:,} params), val BLEU-4 per epoch "
          f"(COCO protocol, free-running greedy decode):")
    for e in out["epochs"]:
        print(f"  epoch {e['epoch']}: BLEU-4 {e['bleu4']:.4f}  (LEMUR-compatible {e['lemur_bleu4']:.4f})  "
              f"train {e['seconds']:.1f} s, loss {e['train_loss']:.3f}")
    mf, bc = out["most_frequent_caption"], out["best_constant_caption"]
    print(f"most frequent training caption  '{mf['caption']}': BLEU-4 {mf['bleu4']:.4f}")
    print(f"best constant caption (on train) '{bc['caption']}': BLEU-4 {bc['bleu4']:.4f}")
    print(f"ratio model / best constant: {_ratio(out['ratio_vs_best_constant'])}   "
          f"model / most frequent: {_ratio(out['ratio_vs_most_frequent'])}   (wall {out['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
