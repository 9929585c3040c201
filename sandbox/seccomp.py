"""A seccomp filter for the local sandbox, as a classic BPF program built here (no libseccomp needed).

bubblewrap installs it (`--seccomp FD`) right before it executes the job, so it binds the job and
everything the job starts. Default allow; `EPERM` for the kernel keyring (state shared between jobs),
new user namespaces (clone/unshare with CLONE_NEWUSER; clone3 gets ENOSYS so that libc falls back to
clone, whose flags can be checked), mounting, ptrace, bpf, perf_event_open, userfaultfd, kernel
modules and a few more that no training job needs. Other architectures (x32 system-call numbers, i386)
are refused outright, so the x86_64 numbers cannot be bypassed.
"""

from __future__ import annotations

import errno
import os
import platform
import struct

# classic BPF opcodes
BPF_LD, BPF_JMP, BPF_RET = 0x00, 0x05, 0x06
BPF_W, BPF_ABS, BPF_K = 0x00, 0x20, 0x00
BPF_JEQ, BPF_JGE, BPF_JSET = 0x10, 0x30, 0x40

SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_KILL_PROCESS = 0x80000000
AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
CLONE_NEWUSER = 0x10000000

# struct seccomp_data offsets
OFF_NR, OFF_ARCH, OFF_ARG0_LO = 0, 4, 16

# x86_64 system-call numbers refused with EPERM
DENIED_X86_64: dict[str, int] = {
    "ptrace": 101,
    "syslog": 103,
    "personality": 135,
    "vhangup": 153,
    "pivot_root": 155,
    "chroot": 161,
    "acct": 163,
    "settimeofday": 164,
    "mount": 165,
    "umount2": 166,
    "swapon": 167,
    "swapoff": 168,
    "reboot": 169,
    "iopl": 172,
    "ioperm": 173,
    "init_module": 175,
    "delete_module": 176,
    "quotactl": 179,
    "kexec_load": 246,
    "add_key": 248,
    "request_key": 249,
    "keyctl": 250,
    "perf_event_open": 298,
    "name_to_handle_at": 303,
    "open_by_handle_at": 304,
    "setns": 308,
    "process_vm_readv": 310,
    "process_vm_writev": 311,
    "kcmp": 312,
    "finit_module": 313,
    "kexec_file_load": 320,
    "bpf": 321,
    "userfaultfd": 323,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "mount_setattr": 442,
}
CLONE_NR, UNSHARE_NR, CLONE3_NR, PERSONALITY_NR = 56, 272, 435, 135


def _stmt(code: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, 0, 0, k)


def _jump(code: int, k: int, jt: int, jf: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def supported() -> bool:
    """The filter is built for x86_64 only."""
    return platform.machine() in ("x86_64", "AMD64")


def build_filter(denied: dict[str, int] | None = None) -> bytes:
    """The BPF program (an array of struct sock_filter) as bytes, for bwrap --seccomp."""
    denied = dict(DENIED_X86_64 if denied is None else denied)
    denied.pop("personality", None)  # personality(0xffffffff) (a query) is used by some runtimes: allowed
    eperm = SECCOMP_RET_ERRNO | errno.EPERM
    enosys = SECCOMP_RET_ERRNO | errno.ENOSYS
    prog: list[bytes] = []
    # [0] arch must be x86_64, else kill
    prog.append(_stmt(BPF_LD | BPF_W | BPF_ABS, OFF_ARCH))
    prog.append(_jump(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0))
    prog.append(_stmt(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS))
    # [3] the system-call number; x32 numbers refused
    prog.append(_stmt(BPF_LD | BPF_W | BPF_ABS, OFF_NR))
    prog.append(_jump(BPF_JMP | BPF_JGE | BPF_K, X32_SYSCALL_BIT, 0, 1))
    prog.append(_stmt(BPF_RET | BPF_K, eperm))
    # clone3 (flags live in memory, unreadable here) -> ENOSYS: libc falls back to clone
    prog.append(_jump(BPF_JMP | BPF_JEQ | BPF_K, CLONE3_NR, 0, 1))
    prog.append(_stmt(BPF_RET | BPF_K, enosys))
    # clone / unshare with CLONE_NEWUSER in the flags (arg0 on x86_64) -> EPERM
    for nr in (CLONE_NR, UNSHARE_NR):
        prog.append(_jump(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 4))
        prog.append(_stmt(BPF_LD | BPF_W | BPF_ABS, OFF_ARG0_LO))
        prog.append(_jump(BPF_JMP | BPF_JSET | BPF_K, CLONE_NEWUSER, 0, 1))
        prog.append(_stmt(BPF_RET | BPF_K, eperm))
        prog.append(_stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW))
    # the plain deny list: each a "jeq nr -> ret EPERM"
    for nr in sorted(set(denied.values())):
        prog.append(_jump(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1))
        prog.append(_stmt(BPF_RET | BPF_K, eperm))
    prog.append(_stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW))
    if len(prog) > 4096:
        raise ValueError("seccomp program too long")
    return b"".join(prog)


def filter_fd(program: bytes | None = None) -> int:
    """A readable file descriptor holding the program (a memfd, rewound), to pass to bwrap; the caller closes it."""
    data = build_filter() if program is None else program
    fd = os.memfd_create("nncaption-seccomp", 0)
    try:
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        os.close(fd)
        raise
    return fd
