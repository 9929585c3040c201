"""Shared machinery of the paper's experiments: arms x seeds of real search runs, bootstrap CIs, one table and a plot.

An experiment is a list of `Arm`s (a name and the settings that differ); every arm
runs `nncaption run`'s graph (`SearchRun`) once per seed with the same budget, into
OUT/runs/<arm>-s<seed>/. Per run it reads the results database: the success rate
per stage (statically valid, smoke-passed, trained, scored, each over designed
candidates) and the best COCO-protocol BLEU-4. Per arm it reports the mean over
seeds with a percentile bootstrap 95% confidence interval, and writes
OUT/comparison.md, OUT/comparison.csv, OUT/runs.csv and OUT/comparison.png.

Any OpenAI-compatible endpoint works (`--llm-base-url`, `--llm-model`,
`--llm-api-key-env`); `--offline` starts nn-caption's offline composer endpoint
on 127.0.0.1 for the LLM arms (no GPU, no network: for smoke tests of a suite).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

METRICS: tuple[str, ...] = ("statically valid", "smoke-passed", "trained", "scored", "best BLEU-4")
OFFLINE_MODEL = "nncaption-offline-composer"
BOOTSTRAP = 2000


@dataclass(frozen=True)
class Arm:
    """One condition of an experiment: its name and the run settings it sets (nested dict, merged over the base)."""

    name: str
    settings: dict[str, Any]
    uses_llm: bool = True


@dataclass
class RunResult:
    arm: str
    seed: int
    run_dir: str
    status: str
    candidates: int
    funnel: dict[str, int]
    rates: dict[str, float]
    best_bleu4: float | None
    tokens: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def add_suite_options(p: argparse.ArgumentParser) -> None:
    """The options every suite shares: budget, seeds, endpoint, data, sandbox, output."""
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (runs/, comparison.md/.csv/.png)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated search seeds (default 0,1,2)")
    p.add_argument("--candidates", type=int, default=8, help="candidates per run (the same budget for every arm)")
    p.add_argument("--wall-time", type=float, default=None, metavar="S", help="wall-time budget per run")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-train-batches", type=int, default=20)
    p.add_argument("--max-val-images", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--max-fix-rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch threads per job")
    p.add_argument("--llm-base-url", metavar="URL", help="OpenAI-compatible endpoint of the LLM arms (.../v1)")
    p.add_argument("--llm-model", metavar="NAME", help="model served there")
    p.add_argument("--llm-api-key-env", metavar="VAR", help="environment variable holding the API key")
    p.add_argument("--offline", action="store_true", help="start the offline composer endpoint for the LLM arms")
    p.add_argument("--offline-fault-rate", type=float, default=0.0, help="planted defects of the offline endpoint")
    p.add_argument("--dataset", choices=("synthetic", "coco"), default="synthetic")
    p.add_argument("--coco-root", metavar="DIR")
    p.add_argument("--prepared", metavar="DIR", help="an already prepared dataset folder")
    p.add_argument("--sandbox", choices=("local", "docker", "ray"), default="local")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--share-jobs", action="store_true", help="share the content-addressed sandbox jobs of all runs "
                   "(OUT/jobs): an identical candidate with the same training spec is scored once, not retrained")
    p.add_argument("--json", action="store_true", help="print the comparison as one strict JSON object")


def base_settings(args: argparse.Namespace, base_url: str | None, model: str | None) -> dict[str, Any]:
    """The settings every arm shares (budget, data, sandbox, training, the endpoint)."""
    llm: dict[str, Any] = {}
    if base_url:
        llm["base_url"] = base_url
    if model:
        llm["model"] = model
    if args.llm_api_key_env:
        llm["api_key_env"] = args.llm_api_key_env
    return {"concurrency": args.concurrency, "max_fix_rounds": args.max_fix_rounds,
            "budget": {"candidates": args.candidates, "wall_time_s": args.wall_time},
            "train": {"epochs": args.epochs, "max_train_batches": args.max_train_batches,
                      "max_val_images": args.max_val_images, "threads": args.threads, "device": args.device},
            "data": {"dataset": args.dataset, "coco_root": args.coco_root, "prepared": args.prepared},
            "sandbox": {"kind": args.sandbox}, "agents": {"llm": {"shared": llm}}}


def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@contextlib.contextmanager
def endpoint(args: argparse.Namespace) -> Iterator[tuple[str | None, str | None]]:
    """(base_url, model) of the LLM arms: the given endpoint, or the offline composer started here."""
    if not args.offline:
        yield args.llm_base_url, args.llm_model
        return
    from nncaption.agents.offline_server import OfflineComposerServer

    with OfflineComposerServer(fault_rate=args.offline_fault_rate) as server:
        yield server.base_url, args.llm_model or OFFLINE_MODEL


def run_one(settings: dict[str, Any], run_dir: Path) -> RunResult:
    """One real search run (the graph `nncaption run` runs) and what the suite measures of it."""
    from nncaption.graph.runner import SearchRun
    from nncaption.graph.settings import RunSettings

    t0 = time.monotonic()
    resolved = RunSettings.model_validate(settings)
    status = "finished"
    try:
        asyncio.run(SearchRun(resolved, run_dir).run())
    except Exception as e:  # a failed run is a data point (e.g. every endpoint down), not the end of the suite
        log.error("run %s failed: %s", run_dir, e)
        status = f"failed: {type(e).__name__}"
    return measure(run_dir, status, time.monotonic() - t0)


def measure(run_dir: Path, status: str, seconds: float) -> RunResult:
    from nncaption.graph.trace import RunReader
    from nncaption.inspection.report_data import funnel

    with RunReader(run_dir) as r:
        fun = funnel(r)["stages"]
        best = r.one("SELECT MAX(bleu4) AS b FROM candidates WHERE status='scored'") or {}
        tokens = r.one("SELECT COALESCE(SUM(total_tokens), 0) AS t FROM llm_calls") or {}
        n = len(r.candidates())
    designed = max(fun.get("designed", 0), 1)
    rates = {k: fun.get(k, 0) / designed for k in ("statically valid", "smoke-passed", "trained", "scored")}
    return RunResult(arm="", seed=0, run_dir=str(run_dir), status=status, candidates=n, funnel=fun, rates=rates,
                     best_bleu4=best.get("b"), tokens=int(tokens.get("t") or 0), seconds=round(seconds, 1))


def bootstrap_ci(values: Sequence[float], *, seed: int = 0, n: int = BOOTSTRAP) -> tuple[float, float, float]:
    """(mean, low, high): the mean and a percentile bootstrap 95% interval of the mean."""
    import numpy as np

    x = np.asarray([v for v in values if v is not None], dtype=float)
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n, x.size))].mean(axis=1)
    return float(x.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def metric_values(results: Sequence[RunResult], metric: str) -> list[float]:
    if metric == "best BLEU-4":
        return [r.best_bleu4 if r.best_bleu4 is not None else 0.0 for r in results]
    return [r.rates[metric] for r in results]


def compare(arms: Sequence[Arm], results: Sequence[RunResult]) -> list[dict[str, Any]]:
    rows = []
    for arm in arms:
        mine = [r for r in results if r.arm == arm.name]
        row: dict[str, Any] = {"arm": arm.name, "runs": len(mine), "seeds": ",".join(str(r.seed) for r in mine)}
        for m in METRICS:
            mean, lo, hi = bootstrap_ci(metric_values(mine, m))
            row[m] = {"mean": mean, "ci_low": lo, "ci_high": hi}
        rows.append(row)
    return rows


def _cell(v: dict[str, float], pct: bool) -> str:
    if v["mean"] != v["mean"]:  # NaN: no value
        return "-"
    f = (lambda x: f"{100 * x:.0f}%") if pct else (lambda x: f"{x:.4f}")
    return f"{f(v['mean'])} [{f(v['ci_low'])}, {f(v['ci_high'])}]"


def write_outputs(out: Path, title: str, arms: Sequence[Arm], results: Sequence[RunResult],
                  budget: dict[str, Any]) -> dict[str, Any]:
    """comparison.md, comparison.csv, runs.csv and comparison.png; returns the comparison as data."""
    rows = compare(arms, results)
    with open(out / "runs.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["arm", "seed", "status", "candidates", *METRICS[:-1], "best BLEU-4 (COCO protocol)", "tokens",
                    "seconds", "run_dir"])
        for r in results:
            w.writerow([r.arm, r.seed, r.status, r.candidates, *(f"{r.rates[m]:.4f}" for m in METRICS[:-1]),
                        "" if r.best_bleu4 is None else f"{r.best_bleu4:.6f}", r.tokens, r.seconds, r.run_dir])
    with open(out / "comparison.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["arm", "runs", "seeds", *(f"{m} {k}" for m in METRICS for k in ("mean", "ci_low", "ci_high"))])
        for row in rows:
            w.writerow([row["arm"], row["runs"], row["seeds"],
                        *(f"{row[m][k]:.6f}" for m in METRICS for k in ("mean", "ci_low", "ci_high"))])
    header = "| arm | runs | " + " | ".join(f"{m} rate" if m != "best BLEU-4" else "best BLEU-4 (COCO protocol)"
                                            for m in METRICS) + " |"
    lines = [f"# {title}", "", f"Budget per run: {json.dumps(budget, sort_keys=True)}. Mean over seeds with a "
             f"percentile bootstrap 95% CI ({BOOTSTRAP} resamples) in brackets; stage rates are over designed "
             "candidates; BLEU-4 is the COCO-protocol corpus BLEU-4 of the run's best candidate.", "",
             header, "|" + "---|" * (len(METRICS) + 2)]
    for row in rows:
        lines.append(f"| {row['arm']} | {row['runs']} (seeds {row['seeds']}) | " + " | ".join(
            _cell(row[m], m != "best BLEU-4") for m in METRICS) + " |")
    lines += ["", "![comparison](comparison.png)", ""]
    (out / "comparison.md").write_text("\n".join(lines), encoding="utf-8")
    _plot(out / "comparison.png", title, rows)
    return {"title": title, "budget": budget, "arms": rows, "runs": [vars(r) for r in results],
            "markdown": str(out / "comparison.md"), "csv": str(out / "comparison.csv"),
            "plot": str(out / "comparison.png")}


def _plot(path: Path, title: str, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    stages = [m for m in METRICS if m != "best BLEU-4"]
    width = 0.8 / max(len(rows), 1)
    for i, row in enumerate(rows):
        xs = np.arange(len(stages)) + i * width
        means = [row[m]["mean"] for m in stages]
        err = [[row[m]["mean"] - row[m]["ci_low"] for m in stages],
               [row[m]["ci_high"] - row[m]["mean"] for m in stages]]
        a1.bar(xs, means, width, yerr=err, capsize=3, label=row["arm"])
    a1.set_xticks(np.arange(len(stages)) + width * (len(rows) - 1) / 2, stages, fontsize=8)
    a1.set_ylim(0, 1.05)
    a1.set_title("success rate per stage (95% bootstrap CI)", fontsize=9)
    a1.legend(fontsize=8)
    b = [row["best BLEU-4"] for row in rows]
    a2.bar([row["arm"] for row in rows], [v["mean"] for v in b],
           yerr=[[v["mean"] - v["ci_low"] for v in b], [v["ci_high"] - v["mean"] for v in b]], capsize=4,
           color="tab:green")
    a2.set_ylim(bottom=0)
    a2.set_title("best BLEU-4, COCO protocol (95% bootstrap CI)", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_suite(args: argparse.Namespace, title: str, arms_for: Callable[[str | None, str | None], list[Arm]]) -> int:
    """Run every arm for every seed, then write the comparison; prints the Markdown table (or --json)."""
    from nncaption.netapi.safetext import strict_dumps

    out = Path(args.out).expanduser()
    (out / "runs").mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    results: list[RunResult] = []
    with endpoint(args) as (base_url, model):
        arms = arms_for(base_url, model)
        if any(a.uses_llm for a in arms) and not base_url:
            raise SystemExit("an LLM arm needs an endpoint: give --llm-base-url URL --llm-model NAME, or --offline")
        base = base_settings(args, base_url, model)
        if args.share_jobs:
            base = merge(base, {"train": {"jobs_root": str((out / "jobs").resolve())}})
        for arm in arms:
            for seed in seeds:
                run_dir = out / "runs" / f"{arm.name}-s{seed}"
                if (run_dir / "results.sqlite").exists():
                    log.info("%s exists: measured again, not rerun", run_dir)
                    r = measure(run_dir, "finished (earlier)", 0.0)
                else:
                    log.info("running %s seed %d", arm.name, seed)
                    r = run_one(merge(merge(base, arm.settings), {"seed": seed}), run_dir)
                r.arm, r.seed = arm.name, seed
                results.append(r)
    budget = {"candidates": args.candidates, "wall_time_s": args.wall_time, "epochs": args.epochs,
              "max_train_batches": args.max_train_batches, "max_val_images": args.max_val_images}
    data = write_outputs(out, title, arms, results, budget)
    if args.json:
        print(strict_dumps({"ok": True, **data}))
    else:
        print((out / "comparison.md").read_text(encoding="utf-8"))
        print(f"wrote {out / 'comparison.md'}, {out / 'comparison.csv'}, {out / 'runs.csv'}, {out / 'comparison.png'}")
    return 0


def suite_main(prog: str, doc: str | None, title: str, arms_for: Callable[[str | None, str | None], list[Arm]],
               argv: Sequence[str] | None = None) -> int:
    """The command line of one suite module: its options, logging, then `run_suite`."""
    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_suite_options(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_suite(args, title, arms_for)
