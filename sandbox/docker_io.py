"""Engine-side helpers of the docker backend: the attach-socket output reader, and cgroup reads of a container.

Split from sandbox/docker.py (which keeps the container lifecycle); nothing here decides policy.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from nncaption.netapi.compute import Usage, tree_usage

from .streams import TailBuffer

log = logging.getLogger(__name__)


class AttachReader:
    """Drains a container's stdout/stderr into bounded tails, in a thread.

    Attached before start through the raw multiplexed socket (8-byte frame
    headers: stream, 0, 0, 0, big-endian size). After the container has exited
    the reader stops at EOF or after the stream has been idle for a moment:
    the engine does not always close an attach stream promptly.
    """

    def __init__(self, container: Any, out: TailBuffer, err: TailBuffer, *, stdin: bool = False) -> None:
        params = {"stdout": 1, "stderr": 1, "stream": 1, "logs": 1, "stdin": int(stdin)}
        sock = container.client.api.attach_socket(container.id, params=params)
        self._sock = getattr(sock, "_sock", sock)
        self._sock.settimeout(0.1)
        self._keep = sock
        self._targets = {1: out, 2: err}
        self._finishing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sandbox-attach", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        buf = bytearray()
        idle = 0
        while True:
            try:
                data = self._sock.recv(1 << 16)
            except TimeoutError:
                idle += 1
                if self._finishing.is_set() and idle >= 3:
                    break
                continue
            except OSError:
                break
            if not data:
                break
            idle = 0
            buf += data
            while len(buf) >= 8:
                size = int.from_bytes(buf[4:8], "big")
                if len(buf) < 8 + size:
                    break
                target = self._targets.get(buf[0])
                if target is not None:
                    target.write(bytes(buf[8 : 8 + size]))
                del buf[: 8 + size]

    def send_go(self) -> bool:
        """Tell a warm container's entry to start (prewarm)."""
        try:
            self._sock.sendall(b"go\n")
            return True
        except OSError:
            return False

    def join(self, timeout: float) -> None:
        self._finishing.set()
        self._thread.join(timeout)
        try:
            self._keep.close()
        except Exception as e:  # noqa: BLE001 - closing a dead socket
            log.debug("closing an attach socket: %s", e)


def max_or_none(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    return a if b is None else max(a, b)


def _cgroup_files(pid: int, controller: str, v1_name: str, v2_name: str) -> list[Path] | None:
    """The files of host pid `pid`'s cgroup for `controller` (v1's `<controller>/.../v1_name`, v2's `.../v2_name`);
    None when the process is gone."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    files = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            files.append(Path("/sys/fs/cgroup") / controller / path.lstrip("/") / v1_name)
        elif controllers == "":
            files.append(Path("/sys/fs/cgroup") / path.lstrip("/") / v2_name)
    return files


def cgroup_peak(pid: int) -> int | None:
    """Peak memory of the container's cgroup, read from the host while it runs (v1 or v2)."""
    if not pid:
        return None
    for f in _cgroup_files(pid, "memory", "memory.max_usage_in_bytes", "memory.peak") or []:
        try:
            return int(f.read_text().strip())
        except (OSError, ValueError):
            continue
    return None


def container_pids(pid: int) -> set[int]:
    """Every process in the cgroup of host pid `pid` (a container's init), read from the host."""
    files = _cgroup_files(pid, "pids", "cgroup.procs", "cgroup.procs") if pid else None
    if files is None:
        return set()
    for procs in files:
        try:
            return {int(t) for t in procs.read_text().split()} | {pid}
        except (OSError, ValueError):
            continue
    return {pid}



def container_usage(pid: int) -> Usage | None:
    """CPU time and run-queue delay of a container's processes (host pid of its init), None when unseen."""
    if not pid:
        return None
    pids = container_pids(pid)
    return tree_usage(sorted(pids)) if pids else None
