"""Run the smoke check in its own process: `python -m nncaption.netapi.smoke JOB_DIR`.

The child side (`main`) reads JOB_DIR/job.json (a `JobSpec`, plus an optional
`"smoke"` object: `{"batch_size": 4, "time_limit_s": 120, "seed": 0}`), runs
`harness.smoke_check` on JOB_DIR/<spec.candidate>, appends the stage it enters
to JOB_DIR/smoke_progress.jsonl and writes JOB_DIR/verdict.json
(`Verdict.to_dict()`). Sandboxes run exactly this module.

A caller problem (no prepared dataset, unreadable job.json) is not a candidate
verdict: the child writes JOB_DIR/smoke_error.json (`category`, `message`,
`hint`) and exits with status 3.

The parent side, `smoke_in_subprocess`, runs the child in a plain subprocess
in its own process group with a hard wall-clock timeout (the whole group is
killed), and maps what happened to a Verdict:

    verdict.json written            -> that verdict
    killed at the timeout           -> timeout (naming the stage it was in)
    died by a signal / exited early -> crashed (out-of-memory for SIGKILL or a MemoryError tail)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from nncaption.netapi.categories import Category, Verdict
from nncaption.netapi.errors import NNCaptionError
from nncaption.netapi.job import CANDIDATE_FILE, JOB_FILE, JobSpec, write_json_atomic

VERDICT_FILE = "verdict.json"
ERROR_FILE = "smoke_error.json"
PROGRESS_FILE = "smoke_progress.jsonl"
STDOUT_FILE = "smoke_stdout.txt"
STDERR_FILE = "smoke_stderr.txt"
EXIT_CALLER_ERROR = 3
TAIL_CHARS = 2000
# Environment variables never handed to the child (it runs untrusted code).
_SECRET_MARKERS: tuple[str, ...] = ("KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL")

STAGE_TEXT: dict[str, str] = {
    "import": "importing the candidate",
    "hparams": "supported_hyperparameters()",
    "init": "Net.__init__",
    "params": "counting parameters",
    "setup": "Net.train_setup",
    "learn": "Net.learn",
    "eval": "free-running forward(images)",
}


# --------------------------------------------------------------------------- child side


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m nncaption.netapi.smoke JOB_DIR`; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m nncaption.netapi.smoke JOB_DIR", file=sys.stderr)
        return 2
    job_dir = Path(args[0])
    try:
        raw = json.loads((job_dir / JOB_FILE).read_text(encoding="utf-8"))
        spec = JobSpec.from_dict(raw)
        opts: dict[str, Any] = dict(raw.get("smoke") or {})
    except (OSError, ValueError, TypeError) as e:
        _write_error(job_dir, "config", f"cannot read {job_dir / JOB_FILE}: {e}", "write job.json with a JobSpec")
        return EXIT_CALLER_ERROR

    if spec.threads:
        import torch

        torch.set_num_threads(int(spec.threads))

    from nncaption.netapi.harness import smoke_check

    progress = job_dir / PROGRESS_FILE

    def on_stage(stage: str) -> None:
        with open(progress, "a", encoding="utf-8") as f:
            f.write(json.dumps({"stage": stage, "t": time.time()}) + "\n")

    try:
        verdict = smoke_check(
            job_dir / spec.candidate,
            Path(spec.data_dir),
            batch_size=int(opts.get("batch_size", 4)),
            max_params=int(spec.max_params),
            time_limit_s=float(opts.get("time_limit_s", 120.0)),
            device=spec.device,
            seed=int(opts.get("seed", spec.seed)),
            on_stage=on_stage,
        )
    except NNCaptionError as e:
        _write_error(job_dir, e.category, e.message, e.hint)
        return EXIT_CALLER_ERROR
    write_json_atomic(job_dir / VERDICT_FILE, verdict.to_dict())
    return 0


def _write_error(job_dir: Path, category: str, message: str, hint: str) -> None:
    try:
        write_json_atomic(job_dir / ERROR_FILE, {"category": category, "message": message, "hint": hint})
    except OSError:
        print(f"{category}: {message}", file=sys.stderr)


# --------------------------------------------------------------------------- parent side


def write_smoke_job(job_dir: Path, candidate_source: str, data_dir: Path, *, batch_size: int = 4,
                    max_params: int = 50_000_000, time_limit_s: float = 120.0, device: str = "cpu",
                    seed: int = 0, threads: int | None = None) -> Path:
    """Lay out JOB_DIR for the smoke child: candidate.py and job.json (JobSpec + "smoke" options)."""
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / CANDIDATE_FILE).write_text(candidate_source, encoding="utf-8")
    spec = JobSpec(data_dir=str(Path(data_dir).resolve()), max_params=max_params, device=device, seed=seed,
                   threads=threads)
    payload = asdict(spec)
    payload["smoke"] = {"batch_size": batch_size, "time_limit_s": time_limit_s, "seed": seed}
    write_json_atomic(job_dir / JOB_FILE, payload)
    return job_dir


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The parent's environment without anything that looks like a secret, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not any(m in k.upper() for m in _SECRET_MARKERS)}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra or {})
    return env


def smoke_in_subprocess(
    candidate: Path,
    data_dir: Path,
    timeout_s: float,
    *,
    batch_size: int = 4,
    max_params: int = 50_000_000,
    time_limit_s: float | None = None,
    device: str = "cpu",
    seed: int = 0,
    threads: int | None = None,
    memory_mb: int | None = None,
    python: str | None = None,
    job_dir: Path | None = None,
) -> Verdict:
    """Smoke-check `candidate` in a child process with a hard wall-clock timeout.

    The child (`python -m nncaption.netapi.smoke JOB_DIR`) runs in its own session;
    after `timeout_s` seconds the whole process group is killed (SIGKILL) and the
    verdict is `timeout`. `time_limit_s` is the child's own soft budget (default:
    `timeout_s`), so Python-level loops usually end with the child's timeout
    verdict and code stuck in C calls is killed from outside. `memory_mb` sets
    RLIMIT_AS in the child (the CUDA torch build needs >= 4096 to import).
    Without `job_dir` a temporary one is used and removed afterwards.
    Raises NNCaptionError for caller problems (e.g. `data_dir` not prepared).
    """
    candidate = Path(candidate)
    own_dir = job_dir is None
    work = Path(tempfile.mkdtemp(prefix="nncaption-smoke-")) if own_dir else Path(job_dir)  # type: ignore[arg-type]
    try:
        write_smoke_job(work, candidate.read_text(encoding="utf-8"), data_dir, batch_size=batch_size,
                        max_params=max_params, time_limit_s=time_limit_s if time_limit_s is not None else timeout_s,
                        device=device, seed=seed, threads=threads)
        return _run_child(work, timeout_s, memory_mb, python or sys.executable)
    finally:
        if own_dir:
            shutil.rmtree(work, ignore_errors=True)


def check_in_subprocess(candidate: Path, data_dir: Path, timeout_s: float, **kwargs: Any) -> Verdict:
    """Static check in this process, then the smoke check via `smoke_in_subprocess`."""
    from nncaption.netapi.validate import static_check

    candidate = Path(candidate)
    try:
        source = candidate.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        return Verdict.reject("static", Category.SYNTAX, f"{candidate.name} is not UTF-8 text ({e}).")
    verdict = static_check(source, filename=candidate.name)
    if not verdict.ok:
        return verdict
    return smoke_in_subprocess(candidate, data_dir, timeout_s, **kwargs)


def _limit_memory(memory_mb: int) -> None:
    import resource

    limit = int(memory_mb) * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _run_child(job_dir: Path, timeout_s: float, memory_mb: int | None, python: str) -> Verdict:
    cmd = [python, "-m", "nncaption.netapi.smoke", str(job_dir)]
    preexec = (lambda: _limit_memory(memory_mb)) if memory_mb else None  # type: ignore[arg-type]
    started = time.monotonic()
    with open(job_dir / STDOUT_FILE, "wb") as out, open(job_dir / STDERR_FILE, "wb") as err:
        proc = subprocess.Popen(cmd, cwd=job_dir, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                env=child_env(), start_new_session=True, preexec_fn=preexec)
        timed_out = False
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
            rc = proc.wait()
        finally:
            if proc.poll() is None:  # interrupted in the parent: never leave the child behind
                _kill_group(proc)
                proc.wait()
        _kill_group(proc)  # stragglers the candidate left in its group
    elapsed = time.monotonic() - started
    verdict_path = job_dir / VERDICT_FILE
    if verdict_path.is_file() and not timed_out:
        try:
            return Verdict.from_dict(json.loads(verdict_path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError) as e:
            return _crashed(f"the smoke child wrote an unreadable verdict ({e})", job_dir)
    error_path = job_dir / ERROR_FILE
    if rc == EXIT_CALLER_ERROR and error_path.is_file():
        info = json.loads(error_path.read_text(encoding="utf-8"))
        raise NNCaptionError(info.get("message", "smoke check failed"), info.get("hint", ""),
                             category=info.get("category", "error"))
    stage = last_stage(job_dir)
    where = STAGE_TEXT.get(stage or "", "starting up (importing torch)")
    if timed_out and verdict_path.is_file():
        return Verdict.reject(
            "smoke", Category.TIMEOUT,
            f"the smoke check wrote its verdict but the process did not exit within {timeout_s:g} s: something the "
            "candidate started (a thread, a child process) keeps it alive. Start no threads or processes."
            f"\nWhat to change: {Category.TIMEOUT.hint}",
        )
    if timed_out:
        return Verdict.reject(
            "smoke", Category.TIMEOUT,
            f"the smoke check did not finish within the hard limit of {timeout_s:g} s and its process group was "
            f"killed; it was in {where}. Look for a loop that never ends (a `while` without exit, a decode loop "
            f"without a length cap, a sleep) or a far too slow model.\nWhat to change: {Category.TIMEOUT.hint}",
        )
    return _died(rc, where, elapsed, job_dir)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def last_stage(job_dir: Path) -> str | None:
    """The last stage the smoke child entered (from smoke_progress.jsonl), if any."""
    try:
        lines = (Path(job_dir) / PROGRESS_FILE).read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return str(json.loads(line)["stage"])
        except (ValueError, KeyError, TypeError):
            continue
    return None


def _tail(path: Path, chars: int = TAIL_CHARS) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - chars))
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _crashed(message: str, job_dir: Path, category: Category = Category.CRASHED) -> Verdict:
    tail = _tail(job_dir / STDERR_FILE)
    text = message + (f"\nstderr tail:\n{tail}" if tail else "") + f"\nWhat to change: {category.hint}"
    return Verdict.reject("smoke", category, text)


def _died(rc: int, where: str, elapsed: float, job_dir: Path) -> Verdict:
    stderr = _tail(job_dir / STDERR_FILE)
    if rc < 0:
        sig = -rc
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        if sig == signal.SIGKILL:
            return _crashed(f"the smoke process was killed by SIGKILL after {elapsed:.1f} s in {where} — usually "
                            "the out-of-memory killer.", job_dir, Category.OUT_OF_MEMORY)
        return _crashed(f"the smoke process died from {name} after {elapsed:.1f} s in {where} (no Python error: "
                        "a native crash, os.abort or a signal).", job_dir)
    if "MemoryError" in stderr or "can't allocate memory" in stderr:
        return _crashed(f"the smoke process ran out of memory in {where} and exited with status {rc}.", job_dir,
                        Category.OUT_OF_MEMORY)
    return _crashed(f"the smoke process exited with status {rc} in {where} before writing a verdict "
                    "(an exit call such as os._exit or sys.exit in candidate code?).", job_dir)


if __name__ == "__main__":  # pragma: no cover - exercised through subprocess tests
    status = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Exit now: do not wait for non-daemon threads the candidate may have left running.
    os._exit(status)
