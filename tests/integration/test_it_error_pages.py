"""Error pages on the wire (issue 8): what a client is told, what the logs are told.

One tlsgate (1 worker) in front of a raw, scripted app server that misbehaves on
purpose, one way per path: it resets the connection, sits on the request, sends an
invalid chunk size with the head or after it, switches protocols unasked, or sends
a head far over the listener's limits. The client is curl where the issue saw the
problem with curl ("empty reply from server"), otherwise a raw socket. Each error
page must carry a request id (body and ``X-Request-Id``) and nothing from the
inside; the access log and the error log must carry the same id with the detail.
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from harness import (
    RawConn,
    ThreadedTcpServer,
    Tlsgate,
    curl,
    free_port,
    request_bytes,
    table,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

READ_TIMEOUT = 0.5
HEADER_TIMEOUT = 5.0
RESET = object()  # a script step: close with an RST

CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
# path -> what the server does once it has read the request head
SCRIPTS: dict[str, list[Any]] = {
    "/ok": [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"],
    "/reset": [RESET],
    "/slow": [READ_TIMEOUT * 4],
    "/bad-chunk": [CHUNKED_HEAD + b"zz\r\nabc\r\n0\r\n\r\n"],
    "/bad-chunk-later": [CHUNKED_HEAD + b"3\r\nabc\r\n", 0.5, b"zz\r\n"],
    "/switch": [
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    ],
    "/big-head": [
        b"HTTP/1.1 200 OK\r\n"
        + b"".join(b"X-Big-%d: %s\r\n" % (i, b"b" * 1000) for i in range(200))
        + b"Content-Length: 2\r\n\r\nok"
    ],
    "/many-headers": [
        b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 150 + b"Content-Length: 2\r\n\r\nok"
    ],
}
REQUEST_ID = re.compile(r"request id: ([0-9a-f]{16})\n\Z")


class Misbehaving(ThreadedTcpServer):
    """Reads one request head per connection and plays the script its path names."""

    def handle(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        with contextlib.suppress(OSError), sock:
            buf = b""
            while b"\r\n\r\n" not in buf:
                data = sock.recv(65536)
                if not data:
                    return
                buf += data
            path = "/" + buf.split(b" ", 2)[1].decode().split("/")[1]
            for step in SCRIPTS[path]:
                if step is RESET:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                if isinstance(step, float):
                    time.sleep(step)
                else:
                    sock.sendall(step)
            time.sleep(0.2)


@dataclass
class Stack:
    gate: Tlsgate
    server: Misbehaving
    web: int
    dead: int
    dead_address: str

    def url(self, path: str, port: int | None = None) -> str:
        return f"http://127.0.0.1:{port or self.web}{path}/{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    server = Misbehaving(name="misbehaving")
    web, dead = free_port(), free_port()
    nobody = f"127.0.0.1:{free_port()}"  # nothing listens here
    config = (
        table(
            "listeners",
            name="web",
            bind=[f"127.0.0.1:{web}"],
            protocol="http",
            backend="bad",
            header_timeout=f"{int(HEADER_TIMEOUT)}s",
        )
        + table(
            "listeners", name="dead", bind=[f"127.0.0.1:{dead}"], protocol="http", backend="dead"
        )
        + table(
            "backends",
            name="bad",
            servers=[server.address],
            read_timeout=f"{int(READ_TIMEOUT * 1000)}ms",
            max_idle_per_server=0,  # one connection per request: no stale-connection retry
        )
        + table("backends", name="dead", servers=[nobody], retries=0, connect_timeout="1s")
    )
    gate = Tlsgate(tmp_path_factory.mktemp("error-pages"), config)
    try:
        gate.start()
        yield Stack(gate, server, web, dead, nobody)
    finally:
        gate.kill()
        server.stop()


def logged(stack: Stack, rid: str) -> tuple[dict[str, Any], str]:
    """The access-log entry and the error-log line of request ``rid``."""
    entry = stack.gate.wait_access_log(lambda e: e.get("request_id") == rid)

    def error_line() -> str | None:
        return next((ln for ln in stack.gate.error_log_text().splitlines() if rid in ln), None)

    line = wait_until(error_line, 10, what=f"an error log line for request {rid}")
    assert line is not None
    return entry, line


def check_page(
    stack: Stack, status: int, headers: dict[str, str], body: bytes, *, inside: list[str]
) -> tuple[dict[str, Any], str]:
    """A generic page with an id; ``inside`` (the detail) only in both logs, under that id."""
    text = body.decode()
    m = REQUEST_ID.search(text)
    assert m is not None, text
    rid = m.group(1)
    assert headers.get("x-request-id") == rid
    if status >= 500:
        assert text.split("\n")[0] in (
            "502 Bad Gateway",
            "503 Service Unavailable",
            "504 Gateway Timeout",
        )
    for word in [*inside, "127.0.0.1", str(stack.server.port), "Errno", "backend", "timeout"]:
        assert word not in text, f"{word!r} told to the client: {text!r}"
    entry, line = logged(stack, rid)
    assert entry["status"] == status
    for word in inside:
        assert word in entry["error"], entry
        assert word in line, line
    return entry, line


def lower(pairs: list[tuple[str, str]]) -> dict[str, str]:
    return {k.lower(): v for k, v in pairs}


# ---- defect 2: no inside information on error pages --------------------------------------------


def test_a_reset_connection_is_a_generic_502(stack: Stack) -> None:
    r = curl(stack.url("/reset"))
    assert r.status == 502
    _, line = check_page(
        stack,
        502,
        lower(r.headers),
        r.body,
        inside=[f"connection to server {stack.server.address} was lost", "Connection reset"],
    )
    assert " WARNING " in line


def test_a_silent_server_is_a_generic_504(stack: Stack) -> None:
    r = curl(stack.url("/slow"))
    assert r.status == 504
    check_page(stack, 504, lower(r.headers), r.body, inside=["(backend read_timeout)"])


def test_a_refused_connection_is_a_generic_502(stack: Stack) -> None:
    r = curl(stack.url("/", stack.dead))
    assert r.status == 502
    check_page(
        stack,
        502,
        lower(r.headers),
        r.body,
        inside=[stack.dead_address, "Connection refused"],
    )


def test_a_4xx_page_says_what_was_wrong_but_names_no_setting(stack: Stack) -> None:
    with RawConn(stack.web) as c:
        c.send(request_bytes("GET", "/ok", "localhost", [(f"X-H{i}", "v") for i in range(120)]))
        resp = c.read_response()
    assert resp.status == 431
    assert b"more than 100 header fields" in resp.body
    assert b"max_headers" not in resp.body
    check_page(stack, 431, lower(resp.headers), resp.body, inside=[])


def test_a_good_response_has_no_request_id(stack: Stack) -> None:
    r = curl(stack.url("/ok"))
    assert (r.status, r.body) == (200, b"ok")
    assert r.header("x-request-id") is None


# ---- defect 3: a broken response is a 502 until its head went out ------------------------------


def test_an_invalid_chunk_size_with_the_head_is_a_502_not_an_empty_reply(stack: Stack) -> None:
    r = curl(stack.url("/bad-chunk"))
    assert r.returncode == 0, r.stderr  # curl: (52) Empty reply from server, before the fix
    assert r.status == 502
    check_page(stack, 502, lower(r.headers), r.body, inside=["malformed response", "chunk size"])


def test_an_unrequested_101_is_a_502(stack: Stack) -> None:
    r = curl(stack.url("/switch"))
    assert r.returncode == 0, r.stderr
    assert r.status == 502
    check_page(stack, 502, lower(r.headers), r.body, inside=["without an upgrade request"])


def test_an_invalid_chunk_after_the_head_closes_the_client_and_the_logs_say_why(
    stack: Stack,
) -> None:
    url = stack.url("/bad-chunk-later")
    r = curl(url)
    assert r.status == 200  # the head had gone out
    assert r.returncode != 0  # and the body was cut off: curl tells
    path = url.split(str(stack.web), 1)[1]
    entry = stack.gate.wait_access_log(lambda e: e.get("path") == path)
    assert "malformed response" in entry["error"]
    rid = entry["request_id"]
    _, line = logged(stack, rid)
    assert "cut short" in line
    assert "chunk size" in line


# ---- defect 4: response heads have limits ---------------------------------------------------


@pytest.mark.parametrize(
    ("path", "detail"),
    [("/big-head", "larger than 65536 bytes"), ("/many-headers", "more than 100 header fields")],
)
def test_a_response_head_over_the_listener_limits_is_a_502(
    stack: Stack, path: str, detail: str
) -> None:
    r = curl(stack.url(path))
    assert r.status == 502
    assert r.header("x-big-1") is None
    check_page(stack, 502, lower(r.headers), r.body, inside=[detail])


# ---- defect 5: an HTTP/0.9 request line ------------------------------------------------------


def test_an_http09_request_line_gets_400_at_once(stack: Stack) -> None:
    with RawConn(stack.web) as c:
        start = time.monotonic()
        c.send(b"GET /\r\n")
        resp = c.read_response()
        elapsed = time.monotonic() - start
        assert resp.status == 400
        assert c.closed_by_peer(3)
    assert elapsed < HEADER_TIMEOUT / 2, f"answered after {elapsed:.2f}s: the header timeout"
    assert b"HTTP/0.9" in resp.body
    check_page(stack, 400, lower(resp.headers), resp.body, inside=[])
