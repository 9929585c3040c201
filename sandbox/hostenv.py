"""What a sandboxed job needs from the host: the Python environment's paths and an allow-listed environment.

The job runs the *same* interpreter as the parent (so the same torch build),
which needs: the venv (`sys.prefix`), the base interpreter (`sys.base_prefix`,
e.g. a pyenv build under /root), and the project's source folders when the
package is installed in editable mode. Backends mount these read-only at the
same paths (bubblewrap, docker).

The environment is built from an allow-list: API keys, tokens and every
`NNCAPTION_*` variable of the parent never reach the candidate.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path

# Passed through from the parent when set (names only: nothing secret belongs here).
PASSTHROUGH: tuple[str, ...] = (
    "LANG",
    "LANGUAGE",
    "TZ",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)
SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH|COOKIE|SESSION)", re.IGNORECASE)
DENIED_PREFIXES: tuple[str, ...] = ("NNCAPTION_", "OPENAI_", "AWS_", "GOOGLE_", "AZURE_", "HF_", "HUGGING")
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
THREAD_VARS: tuple[str, ...] = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")
PROJECT_PACKAGES: tuple[str, ...] = (
    "nncaption",
    "nncaption.netapi",
    "nncaption.sandbox",
    "nncaption.agents",
    "nncaption.prompts",
    "nncaption.graph",
    "nncaption.evals",
)


def is_denied(name: str) -> bool:
    """Variables that must never be passed into a sandbox."""
    upper = name.upper()
    return bool(SECRET_NAME.search(upper)) or upper.startswith(DENIED_PREFIXES)


def job_environment(
    *,
    home: str,
    tmpdir: str,
    gpus: list[int],
    threads: int | None,
    parent: dict[str, str] | None = None,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """The complete environment of a job (nothing else is inherited)."""
    parent = dict(os.environ if parent is None else parent)
    env: dict[str, str] = {k: parent[k] for k in PASSTHROUGH if k in parent and not is_denied(k)}
    for k, v in parent.items():
        if k.startswith("LC_") and not is_denied(k):
            env[k] = v
    env.setdefault("LANG", "C.UTF-8")
    env.update(
        {
            "PATH": SAFE_PATH,
            "HOME": home,
            "TMPDIR": tmpdir,
            "PYTHONNOUSERSITE": "1",
            "CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in gpus),  # "" hides every GPU from CPU jobs
            # OpenMP threads sleep instead of spinning while they wait: on a busy machine spinning burns CPU time
            # waiting for a descheduled sibling thread (measured: 2.6x the CPU time of an idle run), and time limits
            # count the job's CPU time (netapi.compute)
            "OMP_WAIT_POLICY": "PASSIVE",
        }
    )
    if threads:
        for k in THREAD_VARS:
            env[k] = str(threads)
    for k, v in (extra or {}).items():
        if is_denied(k):
            raise ValueError(f"refusing to pass {k!r} into a sandbox: it looks like a secret")
        env[k] = str(v)
    return env


def python_executable() -> str:
    """The interpreter jobs run: the parent's own (venv path kept so the venv is found)."""
    return sys.executable


def python_paths() -> list[Path]:
    """Directories that must be readable inside a sandbox for `python_executable()` to run the project.

    The venv, the base interpreter, and the source folders of an editable install
    (each project package's folder, where it lives outside the venv).
    """
    paths: list[Path] = []
    for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix):
        paths.append(Path(p))
    exe = Path(sys.executable)
    paths.append(exe.resolve().parent.parent)  # the real interpreter's prefix, if the venv links elsewhere
    for name in PROJECT_PACKAGES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        for loc in (spec.submodule_search_locations or []) if spec else []:
            paths.append(Path(loc))
    return minimal_roots(paths)


def minimal_roots(paths: list[Path]) -> list[Path]:
    """Resolved, de-duplicated paths with those inside another one removed."""
    resolved = sorted({Path(os.path.realpath(p)) for p in paths if Path(p).exists()}, key=lambda p: len(p.parts))
    out: list[Path] = []
    for p in resolved:
        if not any(p == q or q in p.parents for q in out):
            out.append(p)
    return out


def traversable_by_others(path: Path) -> bool:
    """True when an unrelated uid can walk down to `path` (every ancestor has the others' x bit)."""
    try:
        return all(os.stat(anc).st_mode & 0o001 for anc in Path(os.path.realpath(path)).parents)
    except OSError:
        return False


def readable_by_others(path: Path) -> bool:
    """True when an unrelated uid can traverse to `path` and read it (mode bits only)."""
    path = Path(os.path.realpath(path))
    for anc in reversed(path.parents):
        try:
            if not os.stat(anc).st_mode & 0o001:
                return False
        except OSError:
            return False
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return bool(mode & 0o004) and (not path.is_dir() or bool(mode & 0o001))


def process_tree(*roots: int) -> set[int]:
    """The `roots` still running and their descendants (parent links from one read of /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # exited meanwhile
        children.setdefault(ppid, []).append(int(entry))
    seen: set[int] = set()
    todo = [pid for pid in roots if os.path.exists(f"/proc/{pid}")]
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.add(p)
            todo.extend(children.get(p, []))
    return seen
