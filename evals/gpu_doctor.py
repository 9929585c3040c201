"""Why does CUDA fail inside the sandbox? A ladder of probes on a GPU machine, one JSON line each.

    python -m nncaption.evals.gpu_doctor [--out FILE]

1. The GPU device nodes as they are before anything here touched CUDA (/dev/nvidia-uvm, for one, is often
   created by the first CUDA context on the machine).
2. The smoke check of the GRU reference on cuda in the local sandbox as configured by default, then with one
   layer of isolation removed at a time (seccomp, cgroups, dropping to nobody, bubblewrap).
3. CUDA in a plain interpreter, and in a child forked after the runner's torch warm-up (the runner forks the
   candidate after importing torch: CUDA must not be initialised before that fork).
4. The device nodes again, and the default sandbox once more.
The last line names the first sandbox variant that worked. Exit 0 when the default one did.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from nncaption.evals.bench_gpu import emit_line

PROBE = "import torch; torch.zeros(1, device='cuda'); print('cuda ok', torch.cuda.get_device_name(0))"
FORK_PROBE = f"""
import os, sys
import torch
from nncaption.netapi import train
train._warm_up_torch(sys.argv[1])
pid = os.fork()
if pid == 0:
    try:
        {PROBE}
        os._exit(0)
    except Exception as e:
        print('child:', type(e).__name__, str(e).splitlines()[0]); os._exit(1)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""
VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("default", {}),
    ("no-seccomp", {"use_seccomp": False}),
    ("no-seccomp-no-cgroups", {"use_seccomp": False, "use_cgroups": False}),
    ("bwrap-as-root", {"use_seccomp": False, "use_cgroups": False, "drop_privileges": False}),
    ("no-namespaces-nobody", {"isolation": "none", "use_seccomp": False, "use_cgroups": False}),
    ("no-isolation", {"isolation": "none", "use_seccomp": False, "use_cgroups": False,
                      "drop_privileges": False}),
]


def _nodes() -> list[str]:
    return sorted(f"{p.name}:{oct(p.stat().st_mode & 0o777)}" for p in Path("/dev").glob("nvidia*"))


def _run(argv: list[str]) -> dict[str, Any]:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"ok": False, "output": f"{type(e).__name__}: {e}"}
    return {"ok": r.returncode == 0, "output": (r.stdout + r.stderr).strip()[-600:]}


def _check(data: Any, base: Path, name: str, options: dict[str, Any]) -> dict[str, Any]:
    from nncaption.netapi.reference import path as reference_path
    from nncaption.sandbox import get_sandbox
    from nncaption.sandbox.service import CandidateService
    from nncaption.sandbox.settings import EvalSettings

    sandbox = get_sandbox("local", prewarm=False, **options)
    try:
        service = CandidateService(data, sandbox, jobs_root=base / name,
                                   settings=EvalSettings(epochs=1, device="cuda", baseline=False, reuse=False))
        result = asyncio.run(service.check(reference_path("gru").read_text()))
    finally:
        sandbox.close()
    logs: dict[str, str] = {}
    for f in sorted(Path(result.job_dir or base / "none").rglob("*")):
        if f.is_file() and f.suffix in (".log", ".txt") and f.stat().st_size:
            logs[f.name] = f.read_bytes()[-1500:].decode("utf-8", "replace")
    return {"ok": result.ok, "category": str(result.category or ""), "message": result.message[:400],
            "logs": logs if not result.ok else {}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    from nncaption.netapi.data.resolve import resolve_dataset

    emit_line(args, {"step": "device-nodes-before", "nodes": _nodes()})
    data = resolve_dataset("synthetic")
    works: list[str] = []
    with tempfile.TemporaryDirectory(prefix="nncaption-gpu-doctor-") as tmp:
        for name, options in VARIANTS:
            row = _check(data, Path(tmp), name, options)
            emit_line(args, {"step": "sandbox", "variant": name, "options": options, **row})
            if row["ok"]:
                works.append(name)
        emit_line(args, {"step": "plain", **_run([sys.executable, "-c", PROBE])})
        for device in ("cuda", "cpu"):  # the runner's warm-up for a cuda job, and the cpu one (breaks CUDA)
            probe = _run([sys.executable, "-c", FORK_PROBE, device])
            emit_line(args, {"step": f"fork-after-{device}-warm-up", **probe})
        emit_line(args, {"step": "device-nodes-after", "nodes": _nodes()})
        row = _check(data, Path(tmp), "default-again", {})
        emit_line(args, {"step": "sandbox", "variant": "default-again", **row})
    emit_line(args, {"step": "summary", "working_variants": works, "pid": os.getpid()})
    return 0 if "default" in works else 1


if __name__ == "__main__":
    sys.exit(main())
