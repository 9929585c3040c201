"""The CUDA training path and its throughput, measured on a GPU machine in one run.

    python -m nncaption.evals.bench_gpu [--models lstm,gru,transformer] [--devices cuda,cpu] [--epochs 1]
                                        [--batch 32] [--concurrent 4] [--backend local] [--out FILE]

Everything goes through the path users take (`CandidateService.evaluate`: the smoke job, then training and
scoring in the sandbox, the runner forking the candidate) on the default synthetic set (2,000 train / 250
val images, 64 px).

Part 1, per reference model and device: one evaluation; it must end ok, on the device asked for (the runner
records it). Printed: training seconds per epoch (the runner's), train images per second, decode seconds,
BLEU-4, and for cuda the speed-up over cpu measured in the same run.
Part 2 (cuda only): `--concurrent` evaluations of the GRU reference (different seeds) sharing the one GPU
(GpuAllocator jobs_per_gpu=N) against the same evaluations one at a time (jobs_per_gpu=1): wall seconds
and candidates per hour.

One JSON object per line; the last one is the summary. Exit 0 when every job ended ok on its device,
1 otherwise, 2 when cuda is asked for and no GPU is visible.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from nncaption.netapi.data.prepare import PreparedPaths


def emit_line(args: argparse.Namespace, obj: dict[str, Any]) -> None:
    """Print one JSON line, and append it to `args.out` when given."""
    line = json.dumps(obj)
    print(line, flush=True)
    if args.out is not None:
        with args.out.open("a", encoding="utf-8") as f:
            f.write(line + "\n")


def _row(report: Any, **extra: Any) -> dict[str, Any]:
    train_s = [e.seconds for e in report.epochs if e.seconds > 0]
    decode_s = [e.decode_seconds for e in report.epochs]
    return {
        **extra, "status": str(report.status), "category": str(report.category or ""),
        "message": report.message[:300], "bleu4": report.bleu4, "params": report.params,
        "train_s_per_epoch": round(sum(train_s) / len(train_s), 3) if train_s else None,
        "decode_s_per_epoch": round(sum(decode_s) / len(decode_s), 3) if decode_s else None,
        "timings": {k: round(v, 3) for k, v in report.timings.items()},
        "isolation": [m for m in report.isolation if m.startswith(("gpus:", "device", "cpus:"))],
    }


def _service(data: PreparedPaths, base: Path, tag: str, device: str, args: argparse.Namespace,
             jobs_per_gpu: int = 1) -> Any:
    from nncaption.sandbox import GpuAllocator, get_sandbox
    from nncaption.sandbox.service import CandidateService
    from nncaption.sandbox.settings import EvalSettings

    options: dict[str, Any] = {"prewarm": False, **args.sandbox_options}
    if device == "cuda":
        options["gpu_allocator"] = GpuAllocator([0], jobs_per_gpu=jobs_per_gpu)
    sandbox = get_sandbox(args.backend, **options)
    settings = EvalSettings(epochs=args.epochs, batch_size=args.batch, device=device, baseline=False, reuse=False)
    return CandidateService(data, sandbox, jobs_root=base / tag, settings=settings)


def _ran_on(report: Any, device: str) -> bool:
    """The runner's own record of the device (job/result.json), not what was asked for."""
    path = Path(report.job_dir or "") / "job" / "result.json"
    try:
        recorded = str(json.loads(path.read_text()).get("device", ""))
    except (OSError, ValueError):
        return False
    return recorded.startswith(device)


async def _part1(data: PreparedPaths, base: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    from nncaption.netapi.reference import path as reference_path

    rows: list[dict[str, Any]] = []
    for model in args.models:
        code = reference_path(model).read_text()
        per_device: dict[str, dict[str, Any]] = {}
        for device in args.devices:
            service = _service(data, base, f"p1-{model}-{device}", device, args)
            try:
                t0 = time.monotonic()
                report = await service.evaluate(code)
                row = _row(report, part=1, model=model, device=device, wall_s=round(time.monotonic() - t0, 2))
            finally:
                service.sandbox.close()
            row["on_device"] = report.ok and _ran_on(report, device)
            if row["train_s_per_epoch"]:
                row["train_images_per_s"] = round(data_train_images(data) / row["train_s_per_epoch"], 1)
            per_device[device] = row
            emit_line(args, row)
        cpu, cuda = per_device.get("cpu"), per_device.get("cuda")
        if cpu and cuda and cpu.get("train_s_per_epoch") and cuda.get("train_s_per_epoch"):
            cuda["speedup_vs_cpu"] = round(cpu["train_s_per_epoch"] / cuda["train_s_per_epoch"], 2)
            emit_line(args, {"part": 1, "model": model, "speedup_train_cuda_vs_cpu": cuda["speedup_vs_cpu"]})
        rows += per_device.values()
    return rows


async def _part2(data: PreparedPaths, base: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    from nncaption.netapi.reference import path as reference_path

    code = reference_path("gru").read_text()
    rows: list[dict[str, Any]] = []
    walls: dict[int, float] = {}
    for jobs_per_gpu in (1, args.concurrent):
        service = _service(data, base, f"p2-{jobs_per_gpu}", "cuda", args, jobs_per_gpu=jobs_per_gpu)
        try:
            t0 = time.monotonic()
            # distinct candidates (jobs are content-addressed): the same model, one comment line apart
            reports = await asyncio.gather(*(service.evaluate(f"{code}\n# bench variant {i}\n")
                                             for i in range(args.concurrent)))
            walls[jobs_per_gpu] = time.monotonic() - t0
        finally:
            service.sandbox.close()
        for i, report in enumerate(reports):
            row = _row(report, part=2, jobs_per_gpu=jobs_per_gpu, job=i)
            row["on_device"] = report.ok and _ran_on(report, "cuda")
            rows.append(row)
            emit_line(args, row)
        emit_line(args, {"part": 2, "jobs_per_gpu": jobs_per_gpu, "jobs": args.concurrent,
                     "wall_s": round(walls[jobs_per_gpu], 2),
                     "candidates_per_hour": round(3600 * args.concurrent / walls[jobs_per_gpu], 1)})
    return rows


def data_train_images(data: PreparedPaths) -> int:
    meta = json.loads((Path(data.public_dir) / "meta.json").read_text())
    return int(meta.get("n_train") or meta.get("train_images") or 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--models", default="lstm,gru,transformer")
    parser.add_argument("--devices", default="cuda,cpu")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--concurrent", type=int, default=4, help="part 2: jobs sharing the GPU (0: skip part 2)")
    parser.add_argument("--backend", default="local", choices=["local", "docker"])
    parser.add_argument("--sandbox-options", type=json.loads, default={},
                        help='JSON options for the sandbox, e.g. \'{"use_seccomp": false}\'')
    parser.add_argument("--out", type=Path, default=None, help="also write every JSON line to FILE")
    args = parser.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    if "cuda" in args.devices:
        import torch

        if not torch.cuda.is_available():
            print(json.dumps({"ok": False, "reason": "cuda asked for, but torch sees no GPU"}))
            return 2

    from nncaption.netapi.data.resolve import resolve_dataset

    data = resolve_dataset("synthetic", progress=True)
    with tempfile.TemporaryDirectory(prefix="nncaption-bench-gpu-") as tmp:
        rows = asyncio.run(_part1(data, Path(tmp), args))
        if "cuda" in args.devices and args.concurrent > 1:
            rows += asyncio.run(_part2(data, Path(tmp), args))
    failed = [r for r in rows if not r.get("on_device")]
    emit_line(args, {"summary": True, "jobs": len(rows), "failed": len(failed),
                 "failures": [{k: r.get(k) for k in ("part", "model", "device", "jobs_per_gpu", "category",
                                                     "message")} for r in failed]})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
