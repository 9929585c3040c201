"""CPU allocation: epoch time of 1, 2 and 4 concurrent sandboxed jobs, with the CPU allocation and without.

    python -m nncaption.evals.bench_cpu [--jobs 1,2,4] [--batches 6] [--backend local]

Each job trains 1 epoch of the GRU reference model (--batches batches of 16, 32 px synthetic images).
"with": the sandbox's CpuAllocator gives each job cores // jobs (at least 1) pinned cores and as many
torch threads. "without": no pinning, and torch's default thread count (every core) in every job, as
before the allocation. Printed: the median and the slowest per-job epoch seconds (the runner's own
measure), and the wall time of the whole batch of jobs.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from nncaption.sandbox import Job, Limits


def _jobs(base: Path, data_dir: Path, n: int, batches: int, tag: str) -> list[Job]:
    from nncaption.netapi.evaluate import make_job_dir
    from nncaption.netapi.job import JobSpec
    from nncaption.netapi.reference import path as reference_path
    out: list[Job] = []
    for i in range(n):
        spec = JobSpec(data_dir=str(data_dir), epochs=1, batch_size=16, max_train_batches=batches, max_val_images=8)
        job_dir = make_job_dir(base / f"{tag}-{n}-{i}", reference_path("gru").read_text(), spec)
        out.append(Job(job_dir, spec, Limits(timeout_s=900)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--jobs", default="1,2,4")
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--backend", default="local", choices=["local", "docker"])
    args = parser.parse_args(argv)
    counts = [int(x) for x in args.jobs.split(",") if x.strip()]

    from nncaption.netapi.data.prepare import prepare_dataset
    from nncaption.netapi.data.synthetic import generate_synthetic
    from nncaption.sandbox import get_sandbox
    from nncaption.sandbox.cpus import host_cores

    base = Path(tempfile.mkdtemp(prefix="nncaption-bench-cpu-"))
    rows: list[tuple[int, str, float, float, float, str]] = []
    try:
        src = generate_synthetic(base / "raw", n_train=96, n_val=24, size=32, seed=0)
        data_dir = Path(prepare_dataset("synthetic", src, base / "prepared", size=32, seed=0).public_dir)
        for n in counts:
            for mode in ("with", "without"):
                with get_sandbox(args.backend, prewarm=False, cpu_allocation=(mode == "with")) as sb:
                    jobs = _jobs(base, data_dir, n, args.batches, mode)
                    t0 = time.monotonic()
                    results = sb.run_many(jobs)
                    wall = time.monotonic() - t0
                epochs = [r.predictions[0].seconds for r in results if r.ok and r.predictions]
                statuses = ",".join(sorted({str(r.status) for r in results}))
                med = statistics.median(epochs) if epochs else float("nan")
                worst = max(epochs) if epochs else float("nan")
                rows.append((n, mode, med, worst, wall, statuses))
                print(f"... {n} job(s) {mode} allocation: epochs {[round(e, 2) for e in epochs]} wall {wall:.1f}s",
                      file=sys.stderr)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"\nepoch time per job, {args.backend} sandbox, {len(host_cores())} cores, "
          f"{args.batches} batches of 16 (ref-gru, 32 px)")
    print(f"{'jobs':>4} {'allocation':<10} {'median epoch s':>15} {'slowest s':>10} {'wall s':>8}  status")
    for n, mode, med, worst, wall, statuses in rows:
        print(f"{n:>4} {mode:<10} {med:>15.2f} {worst:>10.2f} {wall:>8.1f}  {statuses}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
