"""A client's output deadlines, driven in memory (issue 8: slow readers, lingering close).

``send_timeout``: a client whose write buffer stays above its high-water mark
(``pause_writing``) that long is dropped, and so is one that, once tlsgate has
closed the connection, leaves output unsent that long; the access and error logs
say so. A lingering close: a connection closed while the client may still be
sending (a refused request, a 408) gets the answer and a FIN, then what the
client sends is dropped until it closes too or ``LINGER_TIME`` has passed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from tlsgate.net.http_proxy import LINGER_TIME
from tlsgate.net.testing import FakeTransport, Harness

CONFIG = """
[[listeners]]
name = "web"
bind = ["127.0.0.1:8080"]
protocol = "http"
backend = "app"
header_timeout = "5s"
idle_timeout = "30s"
send_timeout = "20s"

[[backends]]
name = "app"
servers = ["127.0.0.1:9000"]
read_timeout = "10s"
"""

GET = b"GET /big HTTP/1.1\r\nHost: example.com\r\n\r\n"
BIG_HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n"


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(CONFIG, access=str(tmp_path / "access.log"))
    yield harness
    harness.close()


def is_closed(transport: FakeTransport) -> bool:
    return transport.closed  # (a call: mypy keeps no narrowing across it)


# ---- send_timeout: slow readers ------------------------------------------------------------


def test_a_client_that_stops_reading_is_dropped_after_send_timeout(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    up = h.pooled_upstream()
    conn, client = h.client()
    conn.data_received(GET)
    assert up.data().startswith(b"GET /big ")
    h.upstream_of(up).data_received(BIG_HEAD + b"x" * 300_000)
    assert client.data().startswith(b"HTTP/1.1 200 OK")
    client.buffered = 300_000
    conn.pause_writing()  # the transport's buffer went over its high-water mark
    assert not up.reading  # backpressure: the app server is read no more
    h.loop.advance(19.9)
    assert not client.closed
    with caplog.at_level(logging.INFO, logger="tlsgate.http"):
        h.loop.advance(0.2)
    assert client.aborted
    conn.connection_lost(None)  # what the loop does after an abort
    assert up.is_closing()  # the response was cut short: never pooled
    assert len(h.server().pool) == 0
    assert h.server().state.active == 0
    (entry,) = h.access_entries()
    assert entry["status"] == 200
    assert entry["error"] == "client took no output for 20s (send_timeout), 300000 bytes unsent"
    assert any("(send_timeout)" in r.getMessage() for r in caplog.records)


def test_a_client_that_takes_its_output_in_time_is_not_dropped(h: Harness) -> None:
    up = h.pooled_upstream()
    conn, client = h.client()
    conn.data_received(GET)
    upstream = h.upstream_of(up)
    upstream.data_received(BIG_HEAD + b"x" * 300_000)
    for _ in range(5):  # five stalls of 15 s each: 75 s in all, never 20 s in one
        conn.pause_writing()
        h.loop.advance(15)
        conn.resume_writing()
        h.loop.advance(1)
    assert not client.closed
    upstream.data_received(b"x" * 700_000)
    assert not client.closed
    assert client.data().endswith(b"x" * 700_000)
    h.loop.advance(30)  # the wheel's stale deadline passes harmlessly
    assert not client.aborted


def test_output_left_unsent_after_a_close_must_go_within_send_timeout(h: Harness) -> None:
    conn, client = h.client()
    pooled = h.pooled_upstream()
    conn.data_received(b"GET / HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
    client.buffered = 50_000  # below the high-water mark: no pause_writing
    h.upstream_of(pooled).data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert client.closed  # closed: the transport flushes what is left, then closes
    assert not client.aborted
    h.loop.advance(20.2)
    assert client.aborted  # the client never took it: dropped


def test_without_unsent_output_a_close_needs_no_watch(h: Harness) -> None:
    pooled = h.pooled_upstream()
    conn, client = h.client()
    conn.data_received(b"GET / HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
    h.upstream_of(pooled).data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert client.closed
    assert conn._watch is None
    h.loop.advance(60)
    assert not client.aborted


# ---- the lingering close --------------------------------------------------------------------


def test_a_refused_request_is_answered_then_half_closed_and_the_rest_dropped(
    h: Harness,
) -> None:
    up = h.pooled_upstream()
    conn, client = h.client()
    conn.data_received(b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\nmore bytes")
    assert client.data().startswith(b"HTTP/1.1 400 ")
    assert client.eof_written  # the answer and a FIN
    assert not client.closed
    assert client.reading  # what the client still sends is read, not left to cause a reset
    conn.data_received(b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n" * 100)
    assert not client.data()
    assert not up.data()  # dropped, never parsed
    assert conn.eof_received() is False  # the client closed too: close now
    conn.connection_lost(None)
    assert conn._watch is None


def test_a_lingering_close_ends_after_linger_time(h: Harness) -> None:
    conn, client = h.client()
    conn.data_received(b"GET / HTTP/1.1\r\nHost: exa")  # a head that never ends
    h.loop.advance(5.1)
    assert client.data().startswith(b"HTTP/1.1 408 ")
    assert client.eof_written
    assert not client.closed
    h.loop.advance(LINGER_TIME - 0.2)
    assert not client.closed
    h.loop.advance(0.4)
    assert is_closed(client)
    assert not client.aborted


def test_a_close_after_a_complete_request_does_not_linger(h: Harness) -> None:
    h.server().state.healthy = False
    conn, client = h.client()
    conn.data_received(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert client.data().startswith(b"HTTP/1.1 503 ")
    assert client.closed
    assert not client.eof_written


def test_tls_connections_do_not_linger_here(h: Harness) -> None:
    """On TLS the transport's own shutdown reads and drops the client's data until its
    close_notify: tlsgate closes at once."""
    conn, client = h.client(tls=True)
    conn.data_received(b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n")
    assert client.data().startswith(b"HTTP/1.1 400 ")
    assert client.closed
    assert not client.eof_written


def test_the_backend_read_timeout_waits_while_the_client_is_slow_and_counts_after(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """A slow client is not the server's fault: read_timeout (10 s) does not run while
    tlsgate is not reading the server, and runs again, from zero, once it reads."""
    up = h.pooled_upstream()
    conn, _client = h.client()
    conn.data_received(GET)
    h.upstream_of(up).data_received(BIG_HEAD + b"x" * 300_000)
    conn.pause_writing()
    h.loop.advance(18)  # past read_timeout, within send_timeout
    assert not up.is_closing()
    conn.resume_writing()
    assert up.reading
    h.loop.advance(9.8)
    assert not up.is_closing()
    with caplog.at_level(logging.WARNING, logger="tlsgate.http"):
        h.loop.advance(0.4)
    assert up.is_closing()  # now the server is late
    assert any("backend read_timeout" in r.getMessage() for r in caplog.records)


def test_a_client_that_keeps_taking_some_output_is_not_dropped(h: Harness) -> None:
    """As with nginx's send_timeout, the count starts over whenever the client has
    taken some of the buffer, even while it stays above the high-water mark."""
    up = h.pooled_upstream()
    conn, client = h.client()
    conn.data_received(GET)
    h.upstream_of(up).data_received(BIG_HEAD + b"x" * 300_000)
    client.buffered = 300_000
    conn.pause_writing()
    for _ in range(4):
        h.loop.advance(19)
        client.buffered -= 10_000  # a slow reader, but a reader
    h.loop.advance(19)
    assert not client.closed
    h.loop.advance(21)  # then it stops: one send_timeout later it is dropped
    assert client.aborted
