"""The channel between the runner and the candidate's child process: framed messages with deadlines.

One message is a JSON header frame followed by the raw payload frames it announces
(`header["payloads"]`: their sizes). A frame is a 4-byte big-endian length and its bytes.
Headers are plain JSON (never pickle): the runner parses what the child sends as hostile
input, with a size cap on every frame and a deadline on every read, so a child that stalls
mid-message, sends a huge frame or garbage cannot hang or crash the runner. A deadline is a
time.monotonic() value or an object that says how long the channel may still wait (the runner's
compute-time deadlines, `netapi.compute.StepDeadline`); a frame is never cut short by a wait.
"""

from __future__ import annotations

import json
import select
import socket
import struct
import time
from typing import Any, Protocol

FRAME_HEAD = struct.Struct(">I")
MAX_HEADER = 256 * 1024
MAX_PAYLOADS = 4
SEND_CHUNK = 1 << 20


class ChannelError(Exception):
    """The peer broke the protocol (bad frame, bad JSON, too large)."""


class ChannelClosed(ChannelError):
    """The peer closed the connection (it exited or died)."""


class ChannelTimeout(Exception):
    """The deadline passed before a whole message arrived."""


class Remaining(Protocol):
    """A deadline that decides itself how long a wait may last (netapi.compute.StepDeadline: compute time)."""

    def remaining(self) -> float: ...


Deadline = float | Remaining  # a float is a time.monotonic() deadline


def _left(deadline: Deadline) -> float:
    """Seconds the channel may wait now; ChannelTimeout once the deadline has passed."""
    left = deadline - time.monotonic() if isinstance(deadline, (int, float)) else deadline.remaining()
    if left <= 0:
        raise ChannelTimeout()
    return left


class Channel:
    """A framed, deadline-aware message channel over a connected stream socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.setblocking(True)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    # ------------------------------------------------------------------ send

    def send(self, header: dict[str, Any], *payloads: bytes | memoryview, deadline: Deadline | None = None) -> None:
        """Send one message (header and payloads).

        Without a deadline it blocks until written; with one (the runner's side) a peer that stops
        reading cannot hold the sender past it: ChannelTimeout. ChannelClosed when the peer is gone.
        """
        head = dict(header)
        head["payloads"] = [len(p) for p in payloads]
        body = json.dumps(head).encode("utf-8")
        parts: list[bytes | memoryview] = [FRAME_HEAD.pack(len(body)), body]
        for p in payloads:
            parts += [FRAME_HEAD.pack(len(p)), p]
        try:
            for part in parts:
                if deadline is None:
                    self.sock.sendall(part)
                    continue
                view = memoryview(part).cast("B")
                done = 0
                while done < len(view):  # a frame is never cut short: wait, re-ask the deadline, go on
                    _, writable, _ = select.select([], [self.sock], [], _left(deadline))
                    if not writable:
                        continue
                    try:
                        done += self.sock.send(view[done:done + SEND_CHUNK], socket.MSG_DONTWAIT)
                    except BlockingIOError:
                        continue
        except (BrokenPipeError, ConnectionResetError) as e:
            raise ChannelClosed(str(e)) from None

    # ------------------------------------------------------------------ receive

    def _read_exact(self, n: int, deadline: Deadline | None) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            if deadline is not None:
                ready, _, _ = select.select([self.sock], [], [], _left(deadline))
                if not ready:
                    continue  # the deadline decides (a compute deadline may allow more time)
            try:
                chunk = self.sock.recv(min(n - len(buf), 1 << 20))
            except (ConnectionResetError, BrokenPipeError) as e:
                raise ChannelClosed(str(e)) from None
            if not chunk:
                raise ChannelClosed("the peer closed the channel")
            buf += chunk
        return bytes(buf)

    def _frame(self, cap: int, deadline: Deadline | None) -> bytes:
        (size,) = FRAME_HEAD.unpack(self._read_exact(FRAME_HEAD.size, deadline))
        if size > cap:
            raise ChannelError(f"a frame of {size} bytes is over the cap of {cap}")
        return self._read_exact(size, deadline)

    def recv(self, deadline: Deadline | None, *, max_header: int = MAX_HEADER,
             max_payload: int = 1 << 20) -> tuple[dict[str, Any], list[bytes]]:
        """One message: (header, payloads). Raises ChannelTimeout, ChannelClosed or ChannelError."""
        raw = self._frame(max_header, deadline)
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise ChannelError(f"an unreadable message header ({type(e).__name__})") from None
        if not isinstance(header, dict):
            raise ChannelError("a message header that is not a JSON object")
        sizes = header.get("payloads", [])
        if not isinstance(sizes, list) or len(sizes) > MAX_PAYLOADS:
            raise ChannelError("a message announcing a bad list of payloads")
        payloads = [self._frame(max_payload, deadline) for _ in sizes]
        return header, payloads


def channel_pair() -> tuple[Channel, Channel]:
    """Two connected channels (runner end, child end)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return Channel(a), Channel(b)
