"""Errors tlsgate answers itself: 400 malformed, 408 header timeout (slowloris),
413 body too large, 431 header limits, 502 bad upstream, 503 no server, 504
upstream timeout; plus the keep-alive idle timeout."""

from __future__ import annotations

import contextlib
import select
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from appserver import AppServer
from harness import (
    PeerClosed,
    RawConn,
    Tlsgate,
    app_saw,
    free_port,
    request_bytes,
    table,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

HEADER_TIMEOUT = 1.0
IDLE_TIMEOUT = 1.5


@dataclass
class ErrStack:
    gate: Tlsgate
    app: AppServer
    limits: int  # small limits, healthy app
    dead: int  # the only server refuses connections, no retries
    down: int  # the only server is down per health checks
    slow: int  # read_timeout 500ms


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ErrStack]:
    app = AppServer("errors").start()
    limits, dead, down, slow = (free_port() for _ in range(4))
    nobody = f"127.0.0.1:{free_port()}"  # nothing listens here
    config = (
        table(
            "listeners",
            name="limits",
            bind=[f"127.0.0.1:{limits}"],
            protocol="http",
            backend="app",
            header_timeout=f"{int(HEADER_TIMEOUT * 1000)}ms",
            idle_timeout=f"{int(IDLE_TIMEOUT * 1000)}ms",
            max_body_size="1KiB",
            max_headers=10,
            max_header_size="2KiB",
        )
        + table(
            "listeners", name="dead", bind=[f"127.0.0.1:{dead}"], protocol="http", backend="dead"
        )
        + table(
            "listeners", name="down", bind=[f"127.0.0.1:{down}"], protocol="http", backend="down"
        )
        + table(
            "listeners", name="slow", bind=[f"127.0.0.1:{slow}"], protocol="http", backend="slow"
        )
        + table("backends", name="app", servers=[app.address])
        + table("backends", name="dead", servers=[nobody], retries=0, connect_timeout="1s")
        + table(
            "backends",
            name="down",
            servers=[nobody],
            health={
                "path": "/healthz",
                "interval": "200ms",
                "timeout": "100ms",
                "rise": 1,
                "fall": 1,
            },
        )
        + table("backends", name="slow", servers=[app.address], read_timeout="500ms")
    )
    gate = Tlsgate(tmp_path_factory.mktemp("errors"), config)
    try:
        gate.start()
        yield ErrStack(gate, app, limits, dead, down, slow)
    finally:
        gate.kill()
        app.stop()


def one(port: int, data: bytes, *, wait_close: bool = False) -> tuple[int, bool]:
    """Send ``data``, read one response: (status, did the server then close?).

    The close is waited for (3 s) only with ``wait_close``; otherwise it is False.
    """
    with RawConn(port) as c:
        c.send(data)
        resp = c.read_response()
        return resp.status, wait_close and c.closed_by_peer(3)


# ------------------------------------------------------------------ 400


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost localhost\r\n\r\n",  # no colon
        b"HELLO\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Nul: a\x00b\r\n\r\n",
        b"GET /a b HTTP/1.1\r\nHost: localhost\r\n\r\n",  # space in the target
        # RFC 9112 3.2: "A server MUST respond with a 400 (Bad Request) status code to
        # any HTTP/1.1 request message that lacks a Host header field and to any
        # request message that contains more than one Host header field line".
        b"GET / HTTP/1.1\r\nUser-Agent: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
    ],
    ids=["no-colon", "garbage", "nul-in-value", "space-in-target", "no-host", "two-hosts"],
)
def test_400_malformed(stack: ErrStack, data: bytes) -> None:
    status, closed = one(stack.limits, data, wait_close=True)
    assert status == 400
    assert closed


# ------------------------------------------------------------------ 408


def test_408_when_the_head_does_not_arrive(stack: ErrStack) -> None:
    with RawConn(stack.limits) as c:
        start = time.monotonic()
        c.send(b"GET /echo HTTP/1.1\r\nHost: localhost\r\n")  # and nothing more
        c.sock.settimeout(HEADER_TIMEOUT + 5)
        resp = c.read_response()
        elapsed = time.monotonic() - start
        assert resp.status == 408
        assert c.closed_by_peer(3)
    assert HEADER_TIMEOUT * 0.8 <= elapsed <= HEADER_TIMEOUT + 3


def test_408_slowloris_dribbling_does_not_extend_the_deadline(stack: ErrStack) -> None:
    """The whole head must arrive within header_timeout, however steadily it drips."""
    with RawConn(stack.limits) as c:
        start = time.monotonic()
        c.send(b"GET /echo HTTP/1.1\r\nHost: localhost\r\n")
        try:
            for i in range(int(HEADER_TIMEOUT * 4 / 0.25)):
                # the 408 is there (and the connection half-closed, lingering): stop
                if select.select([c.sock], [], [], 0.25)[0]:
                    break
                c.send(f"X-Drip-{i}: a\r\n".encode())
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed on us: what we want; read what it said
        c.sock.settimeout(5)
        try:
            resp = c.read_response()
        except PeerClosed:
            pytest.fail("closed without a 408")
        elapsed = time.monotonic() - start
    assert resp.status == 408
    assert elapsed < HEADER_TIMEOUT * 4


def test_idle_keep_alive_connection_is_closed(stack: ErrStack) -> None:
    with RawConn(stack.limits) as c:
        c.send(request_bytes("GET", "/echo", "localhost"))
        assert c.read_response().status == 200
        start = time.monotonic()
        assert c.closed_by_peer(IDLE_TIMEOUT + 5)
        assert time.monotonic() - start >= IDLE_TIMEOUT * 0.8


# ------------------------------------------------------------------ 413


def test_413_content_length_over_max_body_size(stack: ErrStack) -> None:
    marker = f"big-{uuid.uuid4().hex}"
    status, _ = one(
        stack.limits, request_bytes("POST", f"/{marker}", "localhost", body=b"x" * 2048)
    )
    assert status == 413
    assert not app_saw(stack.app.address, marker)


def test_413_chunked_body_over_max_body_size(stack: ErrStack) -> None:
    head = request_bytes("POST", "/upload", "localhost", [("Transfer-Encoding", "chunked")])
    body = b"".join(b"200\r\n" + b"y" * 512 + b"\r\n" for _ in range(4)) + b"0\r\n\r\n"
    with RawConn(stack.limits) as c:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            c.send(head + body)
        assert c.read_response().status == 413


def test_body_at_max_body_size_passes(stack: ErrStack) -> None:
    status, _ = one(stack.limits, request_bytes("POST", "/upload", "localhost", body=b"z" * 1024))
    assert status == 200


# ------------------------------------------------------------------ 431


def test_431_too_many_headers(stack: ErrStack) -> None:
    marker = f"many-{uuid.uuid4().hex}"
    headers = [(f"X-H{i}", "v") for i in range(20)]
    status, _ = one(stack.limits, request_bytes("GET", f"/{marker}", "localhost", headers))
    assert status == 431
    assert not app_saw(stack.app.address, marker)


def test_431_header_section_too_large(stack: ErrStack) -> None:
    marker = f"large-{uuid.uuid4().hex}"
    headers = [("X-Large", "a" * 3000)]
    status, _ = one(stack.limits, request_bytes("GET", f"/{marker}", "localhost", headers))
    assert status == 431
    assert not app_saw(stack.app.address, marker)


def test_within_header_limits_passes(stack: ErrStack) -> None:
    headers = [(f"X-H{i}", "v" * 100) for i in range(8)]  # 9 fields with Host, ~1 KiB
    status, _ = one(stack.limits, request_bytes("GET", "/echo", "localhost", headers))
    assert status == 200


# ----------------------------------------------------------- 502/503/504


def test_502_when_the_server_refuses_connections(stack: ErrStack) -> None:
    status, _ = one(stack.dead, request_bytes("GET", "/", "localhost"))
    assert status == 502


@pytest.mark.parametrize("path", ["/garbage", "/drop"])
def test_502_on_an_invalid_or_missing_upstream_response(stack: ErrStack, path: str) -> None:
    status, _ = one(stack.limits, request_bytes("GET", path, "localhost"))
    assert status == 502


def test_503_when_every_server_is_down(stack: ErrStack) -> None:
    def answered_503() -> bool:
        return one(stack.down, request_bytes("GET", "/", "localhost"))[0] == 503

    # Down after the first failed check (fall = 1, interval 200ms).
    wait_until(answered_503, 5, interval=0.2, what="a 503 from the all-down backend")
    for _ in range(5):
        assert one(stack.down, request_bytes("GET", "/", "localhost"))[0] == 503


def test_504_when_the_server_is_too_slow(stack: ErrStack) -> None:
    start = time.monotonic()
    status, _ = one(stack.slow, request_bytes("GET", "/slow?delay=3", "localhost"))
    elapsed = time.monotonic() - start
    assert status == 504
    assert elapsed < 2.5, f"504 after {elapsed:.2f}s, read_timeout is 0.5s"


def test_fast_requests_on_the_slow_backend_pass(stack: ErrStack) -> None:
    status, _ = one(stack.slow, request_bytes("GET", "/slow?delay=0.1", "localhost"))
    assert status == 200


def test_service_continues_after_errors(stack: ErrStack) -> None:
    """Every error above was contained to its connection."""
    with socket.create_connection(("127.0.0.1", stack.limits), timeout=5):
        pass
    status, _ = one(stack.limits, request_bytes("GET", "/echo", "localhost"))
    assert status == 200
