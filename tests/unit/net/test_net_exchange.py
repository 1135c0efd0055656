"""The HTTP data plane driven in memory: client connection, exchange, upstream, pool.

Every test wires a real ``ClientConnection`` and ``UpstreamConnection`` to fake
transports (``tlsgate.net.testing``) and a fake loop whose clock moves only when
told, so keep-alive, pipelining, framing and every timeout are checked without a
socket or a sleep.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tlsgate.errors import LocalProtocolError
from tlsgate.net.exchange import DONE, FORWARDING, WAITING, Exchange
from tlsgate.net.testing import FakeTransport, Harness

CONFIG = """
[[listeners]]
name = "web"
bind = ["127.0.0.1:8080"]
protocol = "http"
backend = "app"
header_timeout = "5s"
idle_timeout = "30s"

[[backends]]
name = "app"
servers = ["127.0.0.1:9000"]
read_timeout = "10s"
pool_idle_timeout = "2s"
"""

GET = b"GET /a HTTP/1.1\r\nHost: example.com\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


def exchange(h: Harness, up: FakeTransport, request: bytes, response: bytes) -> bytes:
    conn, client = h.client()
    conn.data_received(request)
    h.upstream_of(up).data_received(response)
    return client.data()


def test_a_keep_alive_exchange_reuses_the_pooled_connection(h: Harness) -> None:
    up = h.pooled_upstream()
    conn, client = h.client()
    upstream = h.upstream_of(up)
    for _ in range(3):
        conn.data_received(GET)
        sent = up.data()
        assert sent.startswith(b"GET /a HTTP/1.1\r\nHost: example.com\r\n")
        assert b"X-Forwarded-For: 127.0.0.2\r\n" in sent
        upstream.data_received(OK)
        assert client.data() == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
        assert len(h.server().pool) == 1  # back in the pool, ready for the next request
    assert not client.closed
    assert upstream.requests == 3


def test_one_upstream_read_is_one_client_write(h: Harness) -> None:
    up = h.pooled_upstream()
    conn, client = h.client()
    conn.data_received(GET)
    h.upstream_of(up).data_received(OK)
    assert len(client.written) == 1


def test_pipelined_requests_are_answered_in_order(h: Harness) -> None:
    up = h.pooled_upstream()
    conn, client = h.client()
    conn.data_received(GET + GET.replace(b"/a", b"/b"))
    assert up.data().startswith(b"GET /a ")  # only the first is sent upstream
    upstream = h.upstream_of(up)
    upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nA")
    assert client.data().endswith(b"A")
    h.loop.run_ready()  # the next exchange starts on the next loop turn
    assert up.data().startswith(b"GET /b ")
    upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nB")
    assert client.data().endswith(b"B")


def test_a_chunked_response_is_rechunked_for_http11_and_close_delimited_for_http10(
    h: Harness,
) -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    out = exchange(h, h.pooled_upstream(), GET, chunked)
    assert b"Transfer-Encoding: chunked\r\n" in out
    assert out.endswith(b"3\r\nabc\r\n0\r\n\r\n")

    conn, client = h.client()
    up = h.pooled_upstream()
    conn.data_received(b"GET / HTTP/1.0\r\nHost: example.com\r\nConnection: keep-alive\r\n\r\n")
    h.upstream_of(up).data_received(chunked)
    out = client.data()
    assert b"Transfer-Encoding" not in out
    assert b"Connection: close\r\n" in out
    assert out.endswith(b"\r\n\r\nabc")
    assert client.closed  # the end of a close-delimited body is the close


def test_the_header_timeout_answers_408_and_closes(h: Harness) -> None:
    conn, client = h.client()
    conn.data_received(b"GET / HTTP/1.1\r\nHost: exa")  # a head that never ends
    h.loop.advance(4.9)
    assert not client.is_closing()
    h.loop.advance(0.2)
    assert client.data().startswith(b"HTTP/1.1 408 ")
    assert client.eof_written  # a lingering close: the answer and a FIN first


def test_an_idle_keep_alive_connection_is_closed_after_idle_timeout(h: Harness) -> None:
    up = h.pooled_upstream()
    conn, client = h.client()
    conn.data_received(GET)
    h.upstream_of(up).data_received(OK)
    client.data()
    h.loop.advance(29.9)
    assert not client.is_closing()
    h.loop.advance(0.2)
    assert client.is_closing()
    assert not client.data()  # closed silently: nothing was being asked


def test_a_silent_server_gets_504_after_read_timeout(h: Harness) -> None:
    up = h.pooled_upstream()
    conn, client = h.client()
    conn.data_received(GET)
    h.loop.advance(9.9)
    assert not client.data()
    h.loop.advance(0.2)
    assert client.data().startswith(b"HTTP/1.1 504 ")
    assert up.aborted  # a connection that timed out is never pooled again
    assert len(h.server().pool) == 0


def test_read_timeout_counts_from_the_last_byte(h: Harness) -> None:
    up = h.pooled_upstream()
    conn, client = h.client()
    upstream = h.upstream_of(up)
    conn.data_received(GET)
    upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
    h.loop.advance(9.0)
    upstream.data_received(b"c")
    h.loop.advance(9.0)  # 18 s since the request, 9 s since the last byte
    upstream.data_received(b"d")
    assert client.data().endswith(b"abcd")
    assert not client.closed


def test_pooled_connections_expire_after_pool_idle_timeout(h: Harness) -> None:
    up = h.pooled_upstream()
    h.loop.advance(2.2)
    assert up.closed
    assert len(h.server().pool) == 0


def test_an_upstream_that_closes_while_pooled_leaves_the_pool(h: Harness) -> None:
    up = h.pooled_upstream()
    h.upstream_of(up).connection_lost(None)
    assert h.server().take_idle(h.loop.time()) is None


def test_a_stale_pooled_connection_is_retried_once_on_a_new_one(h: Harness) -> None:
    up = h.pooled_upstream()
    conn, client = h.client()
    conn.data_received(GET)
    # the server had closed it: nothing was processed, so retrying is safe
    h.upstream_of(up).connection_lost(ConnectionResetError())
    assert len(h.ctx.spawned) == 1  # a connect to a new upstream was started
    assert not client.data()


def test_a_local_error_answers_with_connection_close_for_5xx(h: Harness) -> None:
    h.server().state.healthy = False
    conn, client = h.client()
    conn.data_received(GET)
    out = client.data()
    assert out.startswith(b"HTTP/1.1 503 ")
    assert b"Connection: close\r\n" in out
    assert client.closed


def test_a_malformed_request_gets_400_and_nothing_reaches_the_server(h: Harness) -> None:
    up = h.pooled_upstream()
    conn, client = h.client()
    conn.data_received(b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n")
    assert client.data().startswith(b"HTTP/1.1 400 ")
    assert not up.data()
    assert client.eof_written  # a lingering close: the answer and a FIN first


def test_transitions_outside_the_table_are_refused(h: Harness) -> None:
    conn, _ = h.client()
    ex = Exchange(conn, None, [], local_response=b"x")
    assert ex.state == WAITING
    with pytest.raises(LocalProtocolError, match="WAITING to FORWARDING"):
        ex._to(FORWARDING)
    ex.start()
    assert ex.state == DONE
    with pytest.raises(LocalProtocolError):
        ex._to(WAITING)


def test_the_access_log_gets_one_line_per_exchange_written_in_one_batch(
    tmp_path: Path,
) -> None:
    log = tmp_path / "access.log"
    h = Harness(CONFIG, access=str(log))
    try:
        up = h.pooled_upstream()
        conn, _ = h.client()
        upstream = h.upstream_of(up)
        for _ in range(3):
            conn.data_received(GET)
            upstream.data_received(OK)
        h.loop.run_ready()
        assert log.read_text() == ""  # not yet: one write for the batch, 0.1 s later
        h.loop.advance(0.11)
        lines = [json.loads(line) for line in log.read_text().splitlines()]
    finally:
        h.close()
    assert len(lines) == 3
    first = lines[0]
    assert first["status"] == 200
    assert first["method"] == "GET"
    assert first["path"] == "/a"
    assert first["client_ip"] == "127.0.0.2"
    assert first["backend"] == "app"
    assert first["server"] == "127.0.0.1:9000"
    assert first["bytes_out"] == 5
