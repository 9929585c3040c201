"""Entry point of every candidate job: `python -m nncaption.netapi.run JOB_DIR`.

Smoke checks and training are the same entry; job.json's `mode` says which. Thin on
purpose: the lifecycle lives in `nncaption.netapi.train` (the runner) and
`nncaption.netapi.child` (the candidate's process). Exit codes: 0 the candidate
trained and decoded every epoch, 1 it failed cleanly (result.json names the
category), 2 the job directory itself is unusable.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nncaption.netapi.run",
                                     description="Smoke-check or train one candidate as described by JOB_DIR/job.json.")
    parser.add_argument("job_dir", type=Path, help="job directory holding job.json and candidate.py")
    args = parser.parse_args(argv)
    if not (args.job_dir / "job.json").is_file():
        print(f"error: {args.job_dir}/job.json not found", file=sys.stderr)
        return 2
    from nncaption.netapi.train import run_job

    return run_job(args.job_dir, own_process=True)


if __name__ == "__main__":
    code = main()
    # Every result is on disk by now. Skip the interpreter's torch teardown (about a second) and any
    # non-daemon thread left behind, either of which would delay or hang the exit.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
