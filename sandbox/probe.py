"""`python -m nncaption.sandbox.probe JOB_DIR`: report, from inside a sandbox, what a job can see and do.

Used by the tests and by `nncaption sandbox probe` to show which isolation
measures hold on this host, without importing torch (it starts in milliseconds).
Reads optional instructions from JOB_DIR/probe.json:
    {"connect": [["127.0.0.1", 8080], ...], "write": ["/some/path", ...], "read": ["/some/file", ...],
     "daemon": true, "sleep": 5.0}
writes JOB_DIR/verdict.json: {"ok": true, "stage": "probe", "facts": {...}}, then (for tests of the
sandbox itself) leaves a double-forked daemon behind and/or sleeps.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any


def _try_connect(host: str, port: int) -> str:
    try:
        with socket.create_connection((host, port), timeout=2):
            return "connected"
    except OSError as e:
        return f"refused: {e.__class__.__name__}: {e}"


def _try_write(path: str) -> str:
    try:
        with open(path, "w") as f:
            f.write("probe")
        return "written"
    except OSError as e:
        return f"refused: {e.__class__.__name__}: {e}"


def _try_read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.read(16)
        return "read"
    except OSError as e:
        return f"refused: {e.__class__.__name__}: {e}"


def facts(instructions: dict[str, Any]) -> dict[str, Any]:
    status = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("CapEff", "CapBnd", "NoNewPrivs"):
                status[k] = v.strip()
    except OSError:
        pass
    return {
        "uid": os.getuid(),
        "gid": os.getgid(),
        "groups": os.getgroups(),
        "pid": os.getpid(),
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "hostname": socket.gethostname(),
        "executable": sys.executable,
        "status": status,
        "interfaces": [name for _, name in socket.if_nameindex()],
        "connect": {f"{h}:{p}": _try_connect(h, int(p)) for h, p in instructions.get("connect", [])},
        "write": {p: _try_write(p) for p in instructions.get("write", [])},
        "read": {p: _try_read(p) for p in instructions.get("read", [])},
    }


def main(argv: list[str]) -> int:
    job_dir = Path(argv[0]) if argv else Path.cwd()
    try:
        instructions = json.loads((job_dir / "probe.json").read_text())
    except (OSError, ValueError):
        instructions = {}
    out = {"ok": True, "stage": "probe", "message": "probe finished", "facts": facts(instructions)}
    (job_dir / "verdict.json").write_text(json.dumps(out))
    if instructions.get("daemon") and os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            time.sleep(3600)
        os._exit(0)
    time.sleep(float(instructions.get("sleep", 0)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
