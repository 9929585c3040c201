"""Sandbox overhead, cold and warm start: time from job start to the runner's first training batch, per backend.

    python -m nncaption.evals.bench_sandbox [--runs 3] [--backends inprocess,subprocess,local,local-warm,docker,...]

Baseline: the runner called in this process (torch already imported). For each
backend: the median over --runs of (a) seconds from job start to the
"first_batch" progress event and (b) the whole job, for 1 epoch of the GRU
reference model on a tiny synthetic set (32 px). Overhead = (a) minus the
in-process (a); ratio = (b) / in-process (b). "subprocess" is a bare
`python -m nncaption.netapi.run` without isolation: it shows what a fresh
interpreter importing torch costs by itself. "local" / "docker" are COLD starts (`prewarm=False`: a
fresh sandbox and interpreter per job); "local-warm" / "docker-warm" are the default (`prewarm=True`):
each job after the first runs in a sandboxed process started
(and torch imported) while the previous job's results were being handled; the
runs are spaced by --gap seconds so that the slot is ready, as between an
agent's jobs. Targets: local < 2 s, docker < 3 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TARGETS = {"local": 2.0, "local-warm": 2.0, "docker": 3.0, "docker-warm": 3.0}


def _prepare_data(root: Path) -> Path:
    from nncaption.netapi.data.prepare import prepare_dataset
    from nncaption.netapi.data.synthetic import generate_synthetic

    src = generate_synthetic(root / "raw", n_train=96, n_val=24, size=32, seed=0)
    return Path(prepare_dataset("synthetic", src, root / "prepared", size=32, seed=0).public_dir)


def _job_dir(base: Path, data_dir: Path, tag: str) -> Path:
    from nncaption.netapi.evaluate import make_job_dir
    from nncaption.netapi.job import JobSpec
    from nncaption.netapi.reference import path as reference_path

    spec = JobSpec(data_dir=str(data_dir), epochs=1, batch_size=16, max_val_images=24, threads=1)
    job_dir = base / f"{tag}-{time.monotonic_ns()}"
    return make_job_dir(job_dir, reference_path("gru").read_text(), spec)


def _first_batch(job_dir: Path) -> float | None:
    try:
        for line in (job_dir / "progress.jsonl").read_text().splitlines():
            event = json.loads(line)
            if event.get("event") == "first_batch":
                return float(event["t"])
    except (OSError, ValueError):
        return None
    return None


def _timed(run: Callable[[Path], str], job_dir: Path) -> tuple[float, float, str]:
    t0_wall, t0 = time.time(), time.monotonic()
    status = run(job_dir)
    total = time.monotonic() - t0
    fb = _first_batch(job_dir)
    return (fb - t0_wall if fb else float("nan")), total, status


def _runners(names: list[str], opened: list[Any]) -> dict[str, Callable[[Path], str]]:
    from nncaption.netapi.job import JobSpec
    from nncaption.sandbox import Job, Limits, Sandbox, get_sandbox

    def job_of(job_dir: Path) -> Job:
        return Job(job_dir, JobSpec.read(job_dir), Limits(timeout_s=600))

    def bind(sb: Sandbox) -> Callable[[Path], str]:
        def run(d: Path) -> str:
            return str(sb.run(job_of(d)).status)

        return run

    out: dict[str, Callable[[Path], str]] = {}
    for name in names:
        if name == "inprocess":
            from nncaption.netapi.train import run_job

            out[name] = lambda d: "ok" if run_job(d) == 0 else "failed"
        elif name == "subprocess":
            out[name] = lambda d: "ok" if subprocess.run(
                [sys.executable, "-m", "nncaption.netapi.run", str(d)], capture_output=True
            ).returncode == 0 else "failed"
        elif name in ("local", "docker", "local-warm", "docker-warm"):
            backend, _, warm = name.partition("-")
            try:
                sb = get_sandbox(backend, prewarm=bool(warm))
                if backend == "docker":
                    sb.client  # type: ignore[attr-defined]  # noqa: B018 - fail early when the engine is unreachable
            except Exception as e:  # noqa: BLE001 - a backend this host lacks is skipped, said so
                print(f"[skip] {name}: {e}", file=sys.stderr)
                continue
            opened.append(sb)
            out[name] = bind(sb)
        elif name == "ray":
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            from nncaption.sandbox.ray_backend import RaySandbox

            ray_sb = RaySandbox(local_num_cpus=2)
            ray_sb._ensure_ray()  # start Ray outside the timings
            opened.append(ray_sb)
            out[name] = bind(ray_sb)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--backends", default="inprocess,subprocess,local,local-warm,docker,docker-warm,ray")
    parser.add_argument("--gap", type=float, default=6.0,
                        help="seconds between *-warm jobs (an agent's think time), so the next slot is ready")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.backends.split(",") if n.strip()]
    if "inprocess" not in names:
        names.insert(0, "inprocess")
    import torch

    torch.set_num_threads(1)
    base = Path(tempfile.mkdtemp(prefix="nncaption-bench-sandbox-"))
    opened: list[Any] = []
    try:
        data_dir = _prepare_data(base / "data")
        runners = _runners(names, opened)
        rows: dict[str, tuple[float, float, list[str]]] = {}
        for name, run in runners.items():
            _timed(run, _job_dir(base, data_dir, f"warm-{name}"))  # warm caches (page cache, image layers)
            fbs, totals, statuses = [], [], []
            for i in range(args.runs):
                if name.endswith("-warm"):
                    time.sleep(args.gap)
                fb, total, status = _timed(run, _job_dir(base, data_dir, f"{name}-{i}"))
                fbs.append(fb)
                totals.append(total)
                statuses.append(status)
            rows[name] = (statistics.median(fbs), statistics.median(totals), statuses)
            print(f"... {name}: first_batch {fbs} total {totals} {statuses}", file=sys.stderr)
        fb0, total0, _ = rows["inprocess"]
        print(f"\nsandbox overhead, median of {args.runs} runs (1 epoch ref-gru, 96 images, 32 px, 1 thread)")
        print(f"{'backend':<15} {'start':<5} {'to 1st batch s':>15} {'overhead s':>11} {'target s':>9} {'total s':>8} "
              f"{'ratio':>6}  status")
        for name, (fb, total, statuses) in rows.items():
            start = "warm" if name.endswith("-warm") else ("cold" if name in ("local", "docker", "ray") else "-")
            over = fb - fb0
            target = TARGETS.get(name)
            mark = "" if target is None else (" (met)" if over < target else " (MISSED)")
            print(f"{name:<15} {start:<5} {fb:>15.2f} {over:>11.2f} {target if target else '-':>9} {total:>8.2f} "
                  f"{total / total0:>6.2f}  {','.join(sorted(set(statuses)))}{mark}")
        return 0
    finally:
        for sb in opened:  # pre-started processes, a local Ray instance
            sb.close()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
