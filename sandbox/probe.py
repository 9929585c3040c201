"""`python -m nncaption.sandbox.probe JOB_DIR`: report, from inside a sandbox, what a job can see and do.

Used by the tests and by `nncaption sandbox probe` to show which isolation
measures hold on this host, without importing torch (it starts in milliseconds).
Reads optional instructions from JOB_DIR/probe.json:
    {"connect": [["127.0.0.1", 8080], ...], "write": ["/some/path", ...], "read": ["/some/file", ...],
     "daemon": true, "sleep": 5.0, "kernel": true, "tmp": true, "fill": [400, 5], "deep": 1200}
("kernel": try the keyring, user namespaces and ptrace; "tmp": write through tempfile and measure /tmp;
"fill": write N MiB files until an error or the count; "deep": make a directory chain that deep in the job dir)
writes JOB_DIR/verdict.json: {"ok": true, "stage": "probe", "facts": {...}} (read it with `read_facts`) and a
runner-shaped ok result.json/predictions.json, then (for tests of the
sandbox itself) leaves a double-forked daemon behind and/or sleeps.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SYS_PTRACE, SYS_ADD_KEY, SYS_KEYCTL, SYS_UNSHARE, SYS_CLONE = 101, 248, 250, 272, 56
CLONE_NEWUSER, SIGCHLD = 0x10000000, 17
KEY_SPEC_SESSION_KEYRING = -3
FACTS_FILE = "verdict.json"  # one of the outputs the sandbox copies back (sandbox/quota.py OUTPUT_FILES)


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


def _syscall(nr: int, *args: int | bytes) -> str:
    """Call a system call directly; "ok" or "refused: <errno name>"."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    ret = libc.syscall(ctypes.c_long(nr), *[a if isinstance(a, bytes) else ctypes.c_long(a) for a in args])
    if ret == -1:
        return "refused: " + errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
    if nr == SYS_CLONE:
        if ret == 0:  # the child of a clone that was allowed
            os._exit(0)
        os.waitpid(int(ret), 0)
    return "ok"


def kernel_facts() -> dict[str, str]:
    """What the seccomp filter must refuse: the keyring, new user namespaces, ptrace."""
    return {
        "add_key": _syscall(SYS_ADD_KEY, b"user", b"nncaption-probe", b"secret", 6, KEY_SPEC_SESSION_KEYRING),
        "keyctl": _syscall(SYS_KEYCTL, 0, KEY_SPEC_SESSION_KEYRING, 0),  # KEYCTL_GET_KEYRING_ID
        "unshare_user": _syscall(SYS_UNSHARE, CLONE_NEWUSER),
        "clone_user": _syscall(SYS_CLONE, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0),
        "ptrace_traceme": _syscall(SYS_PTRACE, 0, 0, 0, 0),
    }


def tmp_facts() -> dict[str, Any]:
    try:
        with tempfile.NamedTemporaryFile() as f:
            f.write(b"x" * 4096)
            f.flush()
            wrote = f"written: {f.name}"
    except OSError as e:
        wrote = f"refused: {e.__class__.__name__}: {e}"
    try:
        st = os.statvfs(tempfile.gettempdir())
        size_mb = st.f_blocks * st.f_frsize // 2**20
    except OSError:
        size_mb = -1
    return {"tempfile": wrote, "gettempdir": tempfile.gettempdir(), "size_mb": size_mb}


def fill(count: int, size_mb: int) -> str:
    """Write `count` files of `size_mb` MiB into the job dir; how far it got."""
    block = b"\0" * 2**20
    for i in range(count):
        try:
            with open(f"fill-{i}.bin", "wb") as f:
                for _ in range(size_mb):
                    f.write(block)
        except OSError as e:
            os.unlink(f"fill-{i}.bin")  # room for the verdict
            return f"stopped at file {i}: {errno.errorcode.get(e.errno or 0, e.errno)}"
    return f"wrote {count} files"


def deep(levels: int) -> int:
    made = 0
    fd = os.open(".", os.O_RDONLY)
    try:
        for _ in range(levels):
            os.mkdir("d", dir_fd=fd)
            nfd = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nfd
            made += 1
    except OSError as e:  # the probe reports how deep it got, and why it stopped
        print(f"probe: directory chain stopped at {made}: {e}", file=sys.stderr)
    finally:
        os.close(fd)
    return made


def facts(instructions: dict[str, Any]) -> dict[str, Any]:
    status = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("CapEff", "CapBnd", "NoNewPrivs", "Seccomp", "Cpus_allowed_list"):
                status[k] = v.strip()
    except OSError as e:
        status["error"] = str(e)
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
        "kernel": kernel_facts() if instructions.get("kernel") else {},
        "tmp": tmp_facts() if instructions.get("tmp") else {},
        "fill": fill(*instructions["fill"]) if instructions.get("fill") else "",
        "deep": deep(int(instructions["deep"])) if instructions.get("deep") else 0,
    }


def read_facts(job_dir: Path) -> dict[str, Any]:
    """The facts a probe job reported (in the parent, after the job)."""
    data = json.loads((Path(job_dir) / FACTS_FILE).read_text())
    return dict(data["facts"])


def main(argv: list[str]) -> int:
    job_dir = Path(argv[0]) if argv else Path.cwd()
    try:
        instructions = json.loads((job_dir / "probe.json").read_text())
    except (OSError, ValueError):
        instructions = {}
    out = {"ok": True, "stage": "probe", "message": "probe finished", "facts": facts(instructions)}
    (job_dir / FACTS_FILE).write_text(json.dumps(out))
    # a runner-shaped success, so that the parent's outcome reading reports "ok" (facts stay in FACTS_FILE)
    epoch: dict[str, Any] = {"epoch": 1, "seconds": 0.0, "decode_seconds": 0.0, "train_loss": None, "ids": {}}
    (job_dir / "predictions.json").write_text(json.dumps({"epochs": [epoch]}))
    (job_dir / "result.json").write_text(json.dumps({"status": "ok", "message": "probe finished"}))
    if instructions.get("daemon") and os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            time.sleep(3600)
        os._exit(0)
    time.sleep(float(instructions.get("sleep", 0)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
