"""An HTTP server with a fixed pool of worker threads and one selector for idle connections.

`ThreadingHTTPServer` keeps one thread per open connection for as long as the
client keeps it open, so a few thousand idle connections exhaust the process.
Here an accepted (or kept-alive) connection waits in a selector, costing one file
descriptor and no thread; when it becomes readable one request is served on a pool
thread and the connection goes back to the selector (or is closed). Connections
idle for `idle_seconds` are closed, and at most `max_connections` are kept: beyond
that, the longest idle one is closed to make room. A request must be read (line,
headers and body) within `read_seconds` of its first byte, or its connection is shut
down: a client dripping bytes cannot hold a worker thread.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

log = logging.getLogger(__name__)


class PoolHTTPServer(HTTPServer):
    """HTTPServer whose requests run on `workers` threads; idle keep-alive connections wait in a selector."""

    daemon_threads = True
    request_queue_size = 1024  # listen backlog: a burst of connections is accepted, not dropped

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], *, workers: int = 64,
                 idle_seconds: float = 30.0, max_connections: int = 4096, read_seconds: float = 90.0) -> None:
        super().__init__(address, handler)
        self.idle_seconds = idle_seconds
        self.read_seconds = read_seconds
        self._reading: dict[socket.socket, float] = {}  # socket -> deadline for reading its request
        self.max_connections = max_connections
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="http-worker")
        self._selector = selectors.DefaultSelector()
        self._parked: dict[socket.socket, tuple[Any, float]] = {}  # socket -> (client address, parked at)
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._watcher = threading.Thread(target=self._watch, name="http-idle", daemon=True)
        self._watcher.start()

    # -- socketserver hooks -----------------------------------------------------------------------
    def process_request(self, request: Any, client_address: Any) -> None:
        """Called by serve_forever for each accepted connection: park it until it sends something."""
        self._park(request, client_address)

    def server_close(self) -> None:
        if not hasattr(self, "_closing"):  # the bind failed inside HTTPServer.__init__: nothing else was started
            super().server_close()
            return
        self._closing.set()
        super().server_close()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self._watcher.join(timeout=5)
        with self._lock:
            for sock in list(self._parked):
                self._drop(sock)
        self._pool.shutdown(wait=False, cancel_futures=True)
        for s in (self._wake_r, self._wake_w):
            s.close()
        self._selector.close()

    # -- the pool -----------------------------------------------------------------------------------
    def _park(self, sock: socket.socket, addr: Any) -> None:
        if self._closing.is_set():
            self.shutdown_request(sock)
            return
        with self._lock:
            if len(self._parked) >= self.max_connections:
                oldest = min(self._parked, key=lambda s: self._parked[s][1])
                self._drop(oldest)
            try:
                self._selector.register(sock, selectors.EVENT_READ, addr)
            except (ValueError, OSError, KeyError):
                self.shutdown_request(sock)
                return
            self._parked[sock] = (addr, time.monotonic())
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _drop(self, sock: socket.socket) -> None:
        """Forget and close a parked socket (the lock is held)."""
        self._parked.pop(sock, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(sock)
        self.shutdown_request(sock)

    def _watch(self) -> None:
        while not self._closing.is_set():
            try:
                events = self._selector.select(timeout=0.5)
            except (OSError, ValueError):
                if self._closing.is_set():
                    return
                time.sleep(0.05)
                continue
            ready = []
            with self._lock:
                for key, _ in events:
                    if key.fileobj is self._wake_r:
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(4096)
                        continue
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    with contextlib.suppress(KeyError, ValueError, OSError):
                        self._selector.unregister(sock)
                    self._parked.pop(sock, None)
                    ready.append((sock, key.data))
                now = time.monotonic()
                for sock in [s for s, (_, t) in self._parked.items() if now - t > self.idle_seconds]:
                    self._drop(sock)
                for sock in [s for s, t in self._reading.items() if now > t]:
                    self._reading.pop(sock, None)
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)  # the worker's read fails now
            for sock, addr in ready:
                try:
                    self._pool.submit(self._serve_one, sock, addr)
                except RuntimeError:  # the pool is shut down
                    self.shutdown_request(sock)

    def request_read(self, sock: Any) -> None:
        """Called by the handler once its request is read: from here on only the handler's own time counts."""
        with self._lock:
            self._reading.pop(sock, None)

    def _serve_one(self, sock: socket.socket, addr: Any) -> None:
        """One request on a pool thread; the connection is parked again when it stays open."""
        keep = False
        with self._lock:
            self._reading[sock] = time.monotonic() + self.read_seconds
        try:
            handler_class: Any = self.RequestHandlerClass
            handler = handler_class(sock, addr, self)
            keep = not getattr(handler, "close_connection", True)
        except Exception:  # noqa: BLE001 - one bad connection must not end the server
            log.debug("request from %s failed", addr, exc_info=True)
        self.request_read(sock)
        if keep and not self._closing.is_set():
            with contextlib.suppress(OSError):
                sock.settimeout(None)
            self._park(sock, addr)
        else:
            self.shutdown_request(sock)
