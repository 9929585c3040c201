"""Compatibility names for the old smoke entry (to be removed once callers use `nncaption.netapi.run`).

`python -m nncaption.netapi.smoke JOB_DIR` is now exactly the runner
(`python -m nncaption.netapi.run JOB_DIR`); `write_smoke_job` writes a job in
smoke mode (`JobSpec.smoke()`). The verdict is derived by the parent from
result.json (`nncaption.netapi.lifecycle.verdict_of`, or `RunResult.verdict`
from the sandbox); the job never writes a verdict or an error file itself.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from nncaption.netapi.job import JobSpec

VERDICT_FILE = "verdict.json"  # never written any more: kept for imports
ERROR_FILE = "smoke_error.json"  # never written any more: kept for imports


def write_smoke_job(job_dir: Path, candidate_source: str, data_dir: Path, *, batch_size: int = 4,
                    max_params: int = 50_000_000, time_limit_s: float = 120.0, device: str = "cpu",
                    seed: int = 0, threads: int | None = None) -> Path:
    """Lay out JOB_DIR for a smoke job: candidate.py and job.json (mode "smoke")."""
    from nncaption.netapi.evaluate import make_job_dir

    spec = JobSpec(data_dir=str(Path(data_dir).resolve()), max_params=max_params, device=device, seed=seed,
                   threads=threads).smoke(time_limit_s=time_limit_s)
    spec.batch_size = spec.max_val_images = spec.decode_batch_size = batch_size
    return make_job_dir(Path(job_dir), candidate_source, spec)


if __name__ == "__main__":  # pragma: no cover - exercised through the sandboxes
    from nncaption.netapi.run import main

    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
