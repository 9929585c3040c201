"""The offline and replay servers under hostile clients: size limit, strict Content-Length, bad JSON, idle floods.

Every test talks to a real server on loopback through raw sockets, so the bytes on
the wire are exactly the hostile ones (http.client would fix some of them).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

import pytest

from nncaption.agents.http_server import json_depth_ok
from nncaption.agents.offline_server import OfflineComposerServer
from nncaption.agents.replay_server import ReplayServer
from nncaption.prompts.library import DatasetFacts, designer_messages, sample_snippets

pytestmark = pytest.mark.timeout(120)

FACTS = DatasetFacts(vocab_size=40, image_size=32, max_len=16, n_caps=5)


def _request(port: int, head: bytes, body: bytes = b"", *, timeout: float = 20) -> tuple[int, dict[str, Any], bytes]:
    """Send raw bytes, read one response: (status, JSON body or {}, raw headers)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head + body)
        return _read_response(s)


def _read_response(s: socket.socket) -> tuple[int, dict[str, Any], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed without an answer after {data!r}")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if
                  line.lower().startswith(b"content-length:"))
    while len(rest) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(rest[:length]) if rest else {}, head


def _post_head(length: str | None, extra: str = "") -> bytes:
    cl = f"Content-Length: {length}\r\n" if length is not None else ""
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{cl}{extra}"
            "\r\n").encode()


def _chat_body() -> bytes:
    msgs = designer_messages(FACTS, sample_snippets(2, 0), decoder="gru")
    return json.dumps({"model": "m", "messages": msgs, "seed": 1}).encode()


def test_200_mib_request_is_answered_413_without_being_read() -> None:
    with OfflineComposerServer(seed=1) as srv:
        t0 = time.monotonic()
        status, body, head = _request(srv.port, _post_head(str(200 << 20)), b'{"messages": [')
        assert status == 413 and body["error"]["code"] == "request_too_large"
        assert b"connection: close" in head.lower()
        assert time.monotonic() - t0 < 15  # answered while the 200 MiB were never sent
        assert srv.requests_served == 0


@pytest.mark.parametrize("length", [None, "abc", "-1", "1e3", " 12 x", "١٢"])
def test_bad_content_length_is_a_400_json_answer(length: str | None) -> None:
    with OfflineComposerServer(seed=1) as srv:
        status, body, _ = _request(srv.port, _post_head(length), b"{}")
        assert status == 400 and body["error"]["code"] == "bad_length"


def test_duplicate_lengths_and_chunked_are_refused() -> None:
    with OfflineComposerServer(seed=1) as srv:
        status, body, _ = _request(srv.port, _post_head("2", "Content-Length: 3\r\n"), b"{} ")
        assert status == 400 and body["error"]["code"] == "bad_length"
        chunked = _post_head(None, "Transfer-Encoding: chunked\r\n")
        status, body, _ = _request(srv.port, chunked, b"2\r\n{}\r\n0\r\n\r\n")
        assert status == 400 and body["error"]["code"] == "bad_length"


@pytest.mark.parametrize(("raw", "code"), [
    (b"[" * 100_000 + b"]" * 100_000, "json_too_deep"),
    (b'{"messages": [{"content": "' + b"[" * 200 + b'"}]}', None),  # brackets inside a string are not nesting
    (b'{"messages": "\xff\xfe"}', "invalid_utf8"),
    (b'{"messages": [', "invalid_json"),
    (b'{"messages": [], "x": NaN', "invalid_json"),
])
def test_bad_json_is_a_400_json_answer(raw: bytes, code: str | None) -> None:
    with OfflineComposerServer(seed=1) as srv:
        status, body, _ = _request(srv.port, _post_head(str(len(raw))), raw)
        if code is None:
            assert status != 400 or body["error"]["code"] not in ("json_too_deep", "invalid_json")
        else:
            assert status == 400 and body["error"]["code"] == code


@pytest.mark.slow  # over a second of real work or waiting (training, timeouts, servers, subprocesses)
def test_a_body_shorter_than_its_length_times_out_with_an_answer() -> None:
    srv = OfflineComposerServer(seed=1)
    srv.idle_seconds = 1.0
    with srv:
        status, body, _ = _request(srv.port, _post_head("100"), b"{")
        assert status in (400, 408) and body["error"]["code"] in ("body_timeout", "short_body")


def test_garbage_request_line_gets_json() -> None:
    with OfflineComposerServer(seed=1) as srv:
        status, body, _ = _request(srv.port, b"\x1b[2J\x00 / HTTP/9.9\r\n\r\n")
        assert status in (400, 505) and "error" in body


def test_keep_alive_serves_several_requests_on_one_connection() -> None:
    with OfflineComposerServer(seed=1) as srv, socket.create_connection(("127.0.0.1", srv.port), timeout=30) as s:
        body = _chat_body()
        for _ in range(3):
            s.sendall(_post_head(str(len(body))) + body)
            status, data, _ = _read_response(s)
            assert status == 200 and data["choices"][0]["message"]["content"]
        assert srv.requests_served == 3


def test_still_answers_after_2000_idle_connections_with_bounded_threads() -> None:
    with OfflineComposerServer(seed=1) as srv:
        before = threading.active_count()
        idle = [socket.create_connection(("127.0.0.1", srv.port), timeout=30) for _ in range(2000)]
        try:
            time.sleep(0.5)
            threads = threading.active_count() - before
            body = _chat_body()
            status, data, _ = _request(srv.port, _post_head(str(len(body))), body, timeout=30)
            assert status == 200 and data["choices"][0]["message"]["content"]
            assert threads < 100, f"{threads} threads for 2000 idle connections"
        finally:
            for s in idle:
                s.close()


def test_idle_connections_are_closed_after_the_idle_timeout() -> None:
    srv = OfflineComposerServer(seed=1)
    srv.idle_seconds = 0.5
    with srv, socket.create_connection(("127.0.0.1", srv.port), timeout=20) as s:
        t0 = time.monotonic()
        assert s.recv(10) == b""  # the server closed it
        assert time.monotonic() - t0 < 15


def test_replay_server_has_the_same_limits(tmp_path: Any) -> None:
    rec = tmp_path / "rec.jsonl"
    rec.write_text("", encoding="utf-8")
    with ReplayServer(rec) as srv:
        status, body, _ = _request(srv.port, _post_head(str(200 << 20)))
        assert status == 413
        status, body, _ = _request(srv.port, _post_head("-1"), b"{}")
        assert status == 400 and body["error"]["code"] == "bad_length"


def test_json_depth_check_is_linear_and_skips_strings() -> None:
    assert json_depth_ok(b'{"a": [[1]]}', 3) and not json_depth_ok(b'{"a": [[[1]]]}', 3)
    assert json_depth_ok(b'["[[[[\\"[[[["]', 1)


@pytest.mark.parametrize(("line", "why"), [
    (b'{"request": {"messages": []}, "status": 200, "response": "\xff"}', "line 2"),
    (b"[" * 50_000 + b"]" * 50_000, "too deeply nested"),
    (b'{"request": [], "status": 200}', "line 2"),
    (b'{"request": {}, "status": 9999}', "out of range"),
])
def test_malformed_replay_files_are_configuration_errors_with_the_line(tmp_path: Any, line: bytes, why: str) -> None:
    from nncaption.netapi.errors import ConfigError

    rec = tmp_path / "rec.jsonl"
    rec.write_bytes(b'{"request": {"messages": []}, "status": 200, "response": {}}\n' + line + b"\n")
    with pytest.raises(ConfigError) as info:
        ReplayServer(rec)
    assert info.value.exit_code == 2 and ":2 " in info.value.message and why.split()[-1] in info.value.message


@pytest.mark.slow  # over a second of real work or waiting (training, timeouts, servers, subprocesses)
def test_clients_dripping_bytes_cannot_hold_the_workers() -> None:
    srv = OfflineComposerServer(seed=1)
    srv.workers, srv.read_seconds = 4, 2.0
    stop = threading.Event()

    def drip() -> None:
        try:
            with socket.create_connection(("127.0.0.1", srv.port), timeout=60) as s:
                s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\n")
                while not stop.wait(0.3):
                    s.sendall(b"X")  # one header byte at a time, never done
        except OSError:
            pass  # the server shut it down

    with srv:
        drippers = [threading.Thread(target=drip, daemon=True) for _ in range(8)]
        for t in drippers:
            t.start()
        time.sleep(1.0)
        try:
            body = _chat_body()
            status, data, _ = _request(srv.port, _post_head(str(len(body))), body, timeout=30)
            assert status == 200 and data["choices"][0]["message"]["content"]
        finally:
            stop.set()
