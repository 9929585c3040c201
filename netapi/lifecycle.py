"""Verdicts from runner results, and the runner in this process for tests and tools.

A smoke check is the runner (`nncaption.netapi.train.run_job`) on a tiny job
(`JobSpec.smoke()`), so a check and a training run apply the same rules. The
parent derives the Verdict `{ok, stage, category, message, line}` from the
runner's result; a job that left no readable result is a candidate failure
(`crashed`), never a usage error.

`smoke_here` / `check_here` run the lifecycle without a sandbox: the runner in
this process, the candidate in the child it forks. For tests and trusted
tools only; untrusted candidates go through a sandbox (`sandbox.service`).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from nncaption.netapi.categories import Category, Verdict
from nncaption.netapi.errors import ConfigError
from nncaption.netapi.job import DEFAULT_PRM, JobSpec, RunnerResult, RunnerStatus, Stage


def verdict_of(result: RunnerResult | None, stage: Stage = Stage.SMOKE) -> Verdict:
    """The verdict a runner result stands for; no result at all is `crashed`."""
    if result is None:
        return Verdict.reject(stage.value, Category.CRASHED, "the job ended without a readable result.json.\n"
                              f"What to change: {Category.CRASHED.hint}")
    if result.status is RunnerStatus.OK:
        return Verdict.accept(result.stage.value, result.message or "accepted")
    if result.status is RunnerStatus.ERROR:
        return Verdict.reject(result.stage.value, Category.CRASHED, result.message or "the runner failed")
    return Verdict.reject(result.stage.value, result.category or Category.CRASHED, result.message, result.line)


def smoke_here(candidate: Path, data_dir: Path, *, batch_size: int = 4, max_params: int = 50_000_000,
               time_limit_s: float = 120.0, device: str = "cpu", seed: int = 0, prm: dict[str, Any] | None = None,
               threads: int = 1, job_dir: Path | None = None) -> Verdict:
    """The smoke stage of `candidate` by the runner in this process (the candidate in a forked child).

    Raises DatasetError when `data_dir` is not a prepared dataset and ConfigError for an unusable
    device: caller problems, checked before any job starts.
    """
    from nncaption.netapi.data.loader import PreparedData
    from nncaption.netapi.evaluate import make_job_dir
    from nncaption.netapi.jobfiles import JobFileError, load_result
    from nncaption.netapi.train import run_job

    PreparedData.open(Path(data_dir))  # DatasetError before any job
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but CUDA is not available here", "use --device cpu")
    spec = JobSpec(data_dir=str(Path(data_dir).resolve()), prm={**DEFAULT_PRM, **(prm or {})}, seed=seed,
                   device=device, max_params=max_params, threads=threads).smoke(time_limit_s=time_limit_s)
    spec.batch_size = spec.max_val_images = spec.decode_batch_size = batch_size
    own = job_dir is None
    work = Path(tempfile.mkdtemp(prefix="nncaption-smoke-")) if job_dir is None else Path(job_dir)
    try:
        make_job_dir(work, Path(candidate).read_text(encoding="utf-8"), spec)
        run_job(work)
        try:
            return verdict_of(load_result(work))
        except JobFileError:
            return verdict_of(None)
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)


def check_here(candidate: Path, data_dir: Path, **kwargs: Any) -> Verdict:
    """Static check, then (if it passes) `smoke_here`. ConfigError when the file cannot be read."""
    from nncaption.netapi.validate import static_check

    candidate = Path(candidate)
    try:
        source = candidate.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        return Verdict.reject("static", Category.SYNTAX, f"{candidate.name} is not UTF-8 text ({e}); "
                              "send plain Python source.")
    except OSError as e:
        raise ConfigError(f"cannot read candidate file {candidate}: {e.strerror or e}",
                          "pass the path of a Python file, or ref-lstm / ref-gru / ref-transformer") from e
    verdict = static_check(source, filename=candidate.name)
    if not verdict.ok:
        return verdict
    return smoke_here(candidate, data_dir, **kwargs)

