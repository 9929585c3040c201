"""Check the GPU path for real on a GPU machine: a reference model trained on CUDA inside the sandboxes.

    python -m nncaption.evals.gpu_check_docker [--gpus 0,1] [--jobs-per-gpu 1] [--backends docker,local] [--image TAG]

For each backend: one job per GPU slot (len(--gpus) x --jobs-per-gpu, at most 4), run at once with
`run_many`, each one epoch of ref-gru on a tiny synthetic set with `JobSpec.device="cuda"` and
`Job.num_gpus=1`; the sandbox's GpuAllocator gives each job its own device, never more than
--jobs-per-gpu jobs on one. docker gets the GPU through
`device_requests` (needs the NVIDIA container toolkit registered with dockerd);
local binds /dev/nvidia* and /sys into bubblewrap and sets CUDA_VISIBLE_DEVICES.
Passes when every job ends `ok`, the runner reports a CUDA device, and no device ran more jobs at once
than --jobs-per-gpu (checked from the device each job was given).
Prints one JSON line per backend and exits non-zero on any failure (and with
status 2 when the machine has no GPU or docker cannot reach one).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def _has_gpu() -> bool:
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", type=int, default=0, help="GPU id (when --gpus is not given)")
    parser.add_argument("--gpus", default=None, help="GPU ids for the allocator, e.g. 0,1,2,3")
    parser.add_argument("--jobs-per-gpu", type=int, default=1)
    parser.add_argument("--backends", default="docker,local")
    parser.add_argument("--image", default=None,
                        help="docker image (default: nncaption-sandbox:offline, built if missing)")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    if not _has_gpu():
        print(json.dumps({"ok": False, "reason": "no GPU visible (nvidia-smi -L failed)"}))
        return 2

    from nncaption.netapi.data.prepare import prepare_dataset
    from nncaption.netapi.data.synthetic import generate_synthetic
    from nncaption.netapi.evaluate import make_job_dir
    from nncaption.netapi.job import JobSpec
    from nncaption.netapi.reference import path as reference_path
    from nncaption.sandbox import GpuAllocator, Job, Limits, get_sandbox, parse_gpus

    base = Path(tempfile.mkdtemp(prefix="nncaption-gpu-check-"))
    failures = 0
    try:
        src = generate_synthetic(base / "raw", n_train=96, n_val=24, size=32, seed=0)
        data_dir = Path(prepare_dataset("synthetic", src, base / "prepared", size=32, seed=0).public_dir)
        for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
            options = {}
            if backend == "docker":
                from nncaption.sandbox.image_build import OFFLINE_IMAGE, build_offline_image

                options["image"] = args.image or OFFLINE_IMAGE
                if args.image is None:
                    build_offline_image(OFFLINE_IMAGE, log=lambda m: print(m, file=sys.stderr))
            gpus = parse_gpus(args.gpus) if args.gpus else [args.gpu]
            alloc = GpuAllocator(gpus, jobs_per_gpu=args.jobs_per_gpu)
            jobs = []
            for i in range(min(4, alloc.capacity)):
                spec = JobSpec(data_dir=str(data_dir), epochs=1, batch_size=16, max_val_images=24, device="cuda")
                job_dir = make_job_dir(base / f"job-{backend}-{i}", reference_path("gru").read_text(), spec)
                jobs.append(Job(job_dir, spec, Limits(timeout_s=args.timeout), num_gpus=1))
            try:
                with get_sandbox(backend, gpu_allocator=alloc, prewarm=False, **options) as sb:
                    results = sb.run_many(jobs)
            except Exception as e:  # noqa: BLE001 - report and go on with the next backend
                print(json.dumps({"backend": backend, "ok": False, "error": f"{type(e).__name__}: {e}"}))
                failures += 1
                continue
            given: dict[str, int] = {}
            for i, result in enumerate(results):
                device = result.runner.device if result.runner else None
                ok = result.ok and bool(device) and str(device).startswith("cuda")
                got = [m for m in result.isolation if m.startswith("gpus:")]
                for tag in got:
                    given[tag] = given.get(tag, 0) + 1
                failures += not ok
                print(json.dumps({
                    "backend": backend, "job": i, "ok": ok, "status": str(result.status), "category": result.category,
                    "message": result.message, "runner_device": device, "isolation": result.isolation,
                    "timings": result.timings, "peak_memory_mb": result.peak_memory_mb,
                    "stderr_tail": result.stderr_tail[-1500:] if not ok else "",
                }))
            over = {k: v for k, v in given.items() if k.startswith("gpus:") and v > args.jobs_per_gpu}
            if over:
                failures += 1
            print(json.dumps({"backend": backend, "devices_given": given, "over_shared": over,
                              "allocator_usage_after": alloc.usage()}))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
