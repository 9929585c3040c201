"""A real search run for the inspection tests (trace, fork, viewer, report, export), made once per session.

`make_run(base)` generates a tiny synthetic dataset, prepares it and runs the real
`nncaption run` (CLI, baseline designer with planted faults, local sandbox, 3
candidates, 1 epoch of 2 batches) into `base/run`. The result is cached per pytest
session (`real_run` fixture) and, to spare the 2-core CI machine, per process.
Set NNCAPTION_TEST_RUN_DIR to an existing run directory to reuse one instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

N_TRAIN, N_VAL, SIZE, SEED = 48, 16, 32, 0
RUN_ARGS: tuple[str, ...] = ("--candidates", "3", "--epochs", "1", "--max-train-batches", "2", "--max-val-images",
                             "8", "--fault-rate", "0.5", "--concurrency", "2", "--seed", "3", "--threads", "1")
_made: dict[str, Path] = {}


def prepare_tiny(base: Path) -> Path:
    """A prepared tiny synthetic dataset under `base` (its public dir is what `--prepared` takes)."""
    from nncaption.netapi.data.prepare import prepare_dataset
    from nncaption.netapi.data.synthetic import generate_synthetic

    root = generate_synthetic(base / "synthetic", n_train=N_TRAIN, n_val=N_VAL, size=SIZE, seed=SEED,
                              secret=b"nncaption-tests: inspect run")
    paths = prepare_dataset("synthetic", root, base / "prepared", size=SIZE, seed=SEED)
    return Path(paths.root)


def run_cli(args: list[str], *, timeout: float = 900, env: dict[str, str] | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    """`python -m nncaption.cli ARGS` in a real subprocess."""
    proc = subprocess.run([sys.executable, "-m", "nncaption.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"nncaption {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\n"
                             f"stderr:\n{proc.stderr[-3000:]}")
    return proc


def make_run(base: Path) -> Path:
    """Run the real graph once into base/run and return the run directory."""
    given = os.environ.get("NNCAPTION_TEST_RUN_DIR")
    if given:
        return Path(given)
    if "run" in _made:
        return _made["run"]
    base.mkdir(parents=True, exist_ok=True)
    prepared = prepare_tiny(base)
    run_dir = base / "run"
    run_cli(["run", "--run-dir", str(run_dir), "--prepared", str(prepared), "--no-live", *RUN_ARGS])
    _made["run"] = run_dir
    return run_dir
