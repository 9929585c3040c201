"""Command lines for the isolation wrappers of the local backend: bubblewrap, unshare, setpriv.

bubblewrap builds a fresh root with only what the job needs: /usr and a few
/etc files read-only, the Python environment read-only, the public data
read-only, the job directory read-write, a private /tmp, a minimal /dev, a new
/proc; new network (loopback only), pid, ipc and uts namespaces. The pid
namespace dies with its first process, which takes every daemon with it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ETC_FILES: tuple[str, ...] = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/localtime",
    "/etc/hosts",
    "/etc/alternatives",
    "/etc/ssl/certs",
)
TOP_LINKS: tuple[str, ...] = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
GPU_DEVICE_PREFIX = "/dev/nvidia"


@dataclass(frozen=True)
class Bind:
    """One bind mount at the same path inside as outside."""

    path: Path
    writable: bool = False
    device: bool = False


def _covered(path: Path, mounted: list[Path]) -> bool:
    return any(path == m or m in path.parents for m in mounted)


def bwrap_argv(
    binds: list[Bind],
    *,
    chdir: Path,
    as_root: bool,
    gpus: bool,
    bwrap: str = "bwrap",
    tmp_mb: int | None = None,
    seccomp_fd: int | None = None,
) -> list[str]:
    """bubblewrap's arguments up to and including `--` (the command follows).

    `tmp_mb`: the size of the private, world-writable (sticky) /tmp; `seccomp_fd`: a readable fd holding
    a BPF program (sandbox/seccomp.py) that bwrap installs before it executes the command.
    """
    argv = [
        bwrap,
        "--die-with-parent",
        "--new-session",
        "--unshare-net",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--hostname",
        "sandbox",
        "--ro-bind",
        "/usr",
        "/usr",
    ]
    if not as_root:
        argv.append("--unshare-user")
    for top in TOP_LINKS:
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    argv += ["--perms", "0755", "--dir", "/etc", "--perms", "0755", "--dir", "/etc/ssl"]
    for f in ETC_FILES:
        argv += ["--ro-bind-try", f, f]
    argv += ["--dev", "/dev", "--proc", "/proc", "--perms", "1777"]
    if tmp_mb:
        argv += ["--size", str(int(tmp_mb) * 2**20)]
    argv += ["--tmpfs", "/tmp"]
    mounted: list[Path] = [Path("/usr"), Path("/dev"), Path("/proc")]
    if gpus:
        argv += ["--ro-bind", "/sys", "/sys"]
        mounted.append(Path("/sys"))
        for name in sorted(os.listdir("/dev")):
            dev = f"/dev/{name}"
            if dev.startswith(GPU_DEVICE_PREFIX):
                argv += ["--dev-bind-try", dev, dev]
    created: set[Path] = {Path("/etc"), Path("/etc/ssl")}
    tmp_mounts = [Path("/tmp")]
    for b in sorted(binds, key=lambda b: len(b.path.parts)):
        for anc in reversed(b.path.parents):
            if anc == Path("/") or anc in created or _covered(anc, mounted):
                continue
            if anc in tmp_mounts:
                continue
            argv += ["--perms", "0755", "--dir", str(anc)]
            created.add(anc)
        flag = "--dev-bind" if b.device else ("--bind" if b.writable else "--ro-bind")
        argv += [flag, str(b.path), str(b.path)]
        mounted.append(b.path)
    argv += ["--chdir", str(chdir)]
    if as_root:  # only to let setpriv drop to the unprivileged uid; setpriv then clears every capability
        argv += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    argv.append("--")
    return argv


def unshare_argv(*, as_root: bool, unshare: str = "unshare") -> list[str]:
    """unshare's arguments: new network, pid (with its own /proc), ipc and uts namespaces.

    The command runs under a shell that stays pid 1 of the namespace (so that the
    candidate is not pid 1, which would make it immune to its own signals) and
    reports a signal death as 128+N.
    """
    argv = [unshare]
    if not as_root:
        argv += ["--user", "--map-root-user"]
    argv += ["--net", "--pid", "--fork", "--kill-child", "--mount", "--mount-proc", "--ipc", "--uts", "--"]
    return argv + ["/bin/sh", "-c", '"$@"; exit $?', "sh"]


def setpriv_argv(uid: int, gid: int, setpriv: str = "setpriv") -> list[str]:
    """Drop to uid:gid with no supplementary groups, no capabilities and no_new_privs."""
    return [
        setpriv,
        f"--reuid={uid}",
        f"--regid={gid}",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--no-new-privs",
        "--",
    ]
