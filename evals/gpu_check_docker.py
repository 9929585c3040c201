"""Check the GPU path for real on a GPU machine: a reference model trained on CUDA inside the sandboxes.

    python -m nncaption.evals.gpu_check_docker [--gpu 0] [--backends docker,local] [--image TAG]

For each backend: one epoch of ref-gru on a tiny synthetic set with
`JobSpec.device="cuda"` and `Job.gpus=[--gpu]`. docker gets the GPU through
`device_requests` (needs the NVIDIA container toolkit registered with dockerd);
local binds /dev/nvidia* and /sys into bubblewrap and sets CUDA_VISIBLE_DEVICES.
Passes when every job ends `ok` and the runner reports a CUDA device.
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
    parser.add_argument("--gpu", type=int, default=0, help="GPU id given to the job")
    parser.add_argument("--backends", default="docker,local")
    parser.add_argument("--image", default=None, help="docker image (default: nncaption-sandbox:offline, built if missing)")
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
    from nncaption.sandbox import Job, Limits, get_sandbox

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
            spec = JobSpec(data_dir=str(data_dir), epochs=1, batch_size=16, max_val_images=24, device="cuda")
            job_dir = make_job_dir(base / f"job-{backend}", reference_path("gru").read_text(), spec)
            job = Job(job_dir, spec, Limits(timeout_s=args.timeout), gpus=[args.gpu])
            try:
                result = get_sandbox(backend, **options).run(job)
            except Exception as e:  # noqa: BLE001 - report and go on with the next backend
                print(json.dumps({"backend": backend, "ok": False, "error": f"{type(e).__name__}: {e}"}))
                failures += 1
                continue
            device = result.runner.device if result.runner else None
            ok = result.ok and bool(device) and str(device).startswith("cuda")
            failures += not ok
            print(json.dumps({
                "backend": backend, "ok": ok, "status": result.status, "category": result.category,
                "message": result.message, "runner_device": device, "isolation": result.isolation,
                "timings": result.timings, "peak_memory_mb": result.peak_memory_mb,
                "stderr_tail": result.stderr_tail[-1500:] if not ok else "",
            }))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
