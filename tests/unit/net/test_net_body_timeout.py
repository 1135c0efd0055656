"""A slow request body, driven in memory (issue 8, defect 6).

A body's next bytes must come within the listener's ``body_timeout``; with
``body_min_rate``, after a first ``body_timeout`` of grace, it must also average
that many bytes per second. One that doesn't is answered ``408`` with
``Connection: close`` (or, once a response has started, the connection is closed),
the upstream connection is closed and never pooled, and the logs say which limit it
was. A body that keeps within the limits, in however many pieces, is untouched; so
is a body that takes longer than the backend's ``read_timeout``: the server is
waiting for it, not late. Time with reading paused by tlsgate itself is not the
client's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from tlsgate.net.testing import FakeTransport, Harness

LISTENER = """
[[listeners]]
name = "web"
bind = ["127.0.0.1:8080"]
protocol = "http"
backend = "app"
header_timeout = "5s"
idle_timeout = "30s"
body_timeout = "5s"
"""
BACKEND = """
[[backends]]
name = "app"
servers = ["127.0.0.1:9000"]
read_timeout = "10s"
"""
CONFIG = LISTENER + 'body_min_rate = "0"\n' + BACKEND
RATE_CONFIG = LISTENER + 'body_min_rate = "100B"\n' + BACKEND

GET = b"GET /a HTTP/1.1\r\nHost: example.com\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


def post(length: int, *, extra: bytes = b"") -> bytes:
    return b"POST /upload HTTP/1.1\r\nHost: example.com\r\nContent-Length: %d\r\n%s\r\n" % (
        length,
        extra,
    )


# what no error page may tell a client
INSIDE = ("body_timeout", "body_min_rate", "read_timeout", "127.0.0.1", "9000", "backend", "app")


class ErrorLog(logging.Handler):
    """The records of the ``tlsgate.http`` logger (which need not propagate to root)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines_with(self, text: str) -> list[logging.LogRecord]:
        return [r for r in self.records if text in r.getMessage()]


@pytest.fixture
def error_log() -> Iterator[ErrorLog]:
    logger = logging.getLogger("tlsgate.http")
    handler = ErrorLog()
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(CONFIG, access=str(tmp_path / "access.log"))
    yield harness
    harness.close()


@pytest.fixture
def rated(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(RATE_CONFIG, access=str(tmp_path / "access.log"))
    yield harness
    harness.close()


def reading(transport: FakeTransport) -> bool:
    return transport.reading


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def assert_408(response: bytes, public: bytes) -> bytes:
    """A 408 page that closes the connection, tells ``public`` and names no setting;
    returns its request id."""
    assert response.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), response
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"\r\nConnection: close\r\n" in head + b"\r\n"
    assert public in body, body
    for word in INSIDE:
        assert word.encode() not in body, f"{word!r} told to the client: {body!r}"
    rid = head.split(b"X-Request-Id: ", 1)[1].split(b"\r\n", 1)[0]
    assert len(rid) == 16
    return rid


# ---- body_timeout: the longest wait for the body's next bytes ------------------------------


def test_a_stalled_body_gets_408_after_body_timeout(h: Harness, error_log: ErrorLog) -> None:
    up = h.pooled_upstream()
    conn, client = h.client()
    conn.data_received(post(100) + b"0123456789")
    assert up.data().endswith(b"\r\n\r\n0123456789")  # the head and what came went on
    h.loop.advance(4.9)
    assert not client.data()
    assert not up.is_closing()
    h.loop.advance(0.2)
    rid = assert_408(client.data(), b"the request body did not arrive in time")
    assert client.eof_written  # a lingering close: the answer and a FIN first
    # the server sees the request end unfinished: its connection closed, never pooled
    assert up.is_closing()
    assert not up.data()
    assert len(h.server().pool) == 0
    assert h.server().state.active == 0
    (entry,) = h.access_entries()
    assert entry["status"] == 408
    assert entry["request_id"] == rid.decode()
    assert entry["error"] == "request body: nothing for 5s (body_timeout)"
    assert entry["bytes_in"] == 10
    assert entry["method"] == "POST"
    (record,) = error_log.lines_with(rid.decode())
    assert record.levelno == logging.INFO  # the client's doing, not trouble inside
    assert "answering 408: request body: nothing for 5s (body_timeout)" in record.getMessage()


def test_a_body_that_never_starts_gets_408_too(h: Harness) -> None:
    h.pooled_upstream()
    conn, client = h.client()
    conn.data_received(post(100))
    h.loop.advance(5.1)
    assert_408(client.data(), b"did not arrive in time")


def test_body_timeout_counts_from_the_last_read(h: Harness) -> None:
    """Pieces 4 s apart for 40 s: past body_timeout (5 s) and read_timeout (10 s) in all,
    never between two reads. The server waits for the body; it is not late."""
    up = h.pooled_upstream()
    conn, client = h.client()
    upstream = h.upstream_of(up)
    conn.data_received(post(100))
    for _ in range(9):
        h.loop.advance(4.0)
        conn.data_received(b"x" * 10)
    h.loop.advance(4.0)
    assert not client.data()
    conn.data_received(b"y" * 10)
    assert up.data().endswith(b"x" * 90 + b"y" * 10)
    upstream.data_received(OK)
    assert client.data() == OK
    assert not client.closed
    assert len(h.server().pool) == 1  # a clean exchange: back in the pool


def test_a_body_in_a_few_chunks_within_the_limits_is_untouched(h: Harness) -> None:
    up = h.pooled_upstream()
    conn, client = h.client()
    upstream = h.upstream_of(up)
    head = b"POST /c HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
    conn.data_received(head + b"3\r\nabc\r\n")
    h.loop.advance(2.0)
    conn.data_received(b"2\r\nde\r\n")
    h.loop.advance(2.0)
    conn.data_received(b"0\r\n\r\n")
    assert up.data().endswith(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    h.loop.advance(4.0)  # waiting for the response: no body deadline any more
    upstream.data_received(OK)
    assert client.data() == OK
    # keep-alive goes on, with the usual timeouts
    conn.data_received(GET)
    assert up.data().startswith(b"GET /a ")
    upstream.data_received(OK)
    assert client.data() == OK
    h.loop.advance(29.9)
    assert not client.is_closing()
    h.loop.advance(0.2)
    assert client.is_closing()  # idle_timeout, silently
    assert not client.data()


def test_a_body_with_its_head_in_one_read_on_keep_alive(h: Harness) -> None:
    up = h.pooled_upstream()
    conn, client = h.client()
    upstream = h.upstream_of(up)
    for _ in range(3):
        conn.data_received(post(3) + b"abc")
        assert up.data().endswith(b"\r\n\r\nabc")
        h.loop.advance(6.0)  # longer than body_timeout: the body was complete
        upstream.data_received(OK)
        assert client.data() == OK
    assert not client.closed
    assert upstream.requests == 3


def test_pipelined_a_slow_body_behind_another_request_is_answered_408_in_its_turn(
    h: Harness,
) -> None:
    up = h.pooled_upstream()
    conn, client = h.client()
    upstream = h.upstream_of(up)
    conn.data_received(GET + post(100) + b"abc")
    assert up.data().startswith(b"GET /a ")
    h.loop.advance(5.1)  # the POST's body stalls while the GET is answered
    assert not client.data()
    upstream.data_received(OK)
    h.loop.run_ready()
    out = client.data()
    assert out.startswith(OK)
    assert_408(out[len(OK) :], b"did not arrive in time")
    assert client.eof_written  # a lingering close: the answer and a FIN first
    assert not up.data()  # nothing of the POST went to the server
    assert len(h.server().pool) == 1  # the GET's connection was clean


def test_after_the_response_started_a_stalled_body_closes_and_says_why(
    h: Harness, error_log: ErrorLog
) -> None:
    up = h.pooled_upstream()
    conn, client = h.client()
    upstream = h.upstream_of(up)
    conn.data_received(post(100) + b"abc")
    # the server answers before it has the whole body, and takes its time
    upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
    assert client.data().startswith(b"HTTP/1.1 200 OK\r\n")
    h.loop.advance(5.1)
    assert client.aborted  # the only honest option once the head is out
    assert not client.data()
    assert up.closed
    assert len(h.server().pool) == 0
    (entry,) = h.access_entries()
    assert entry["status"] == 200
    assert entry["error"] == "request body: nothing for 5s (body_timeout)"
    rid = entry["request_id"]
    assert isinstance(rid, str)
    (record,) = error_log.lines_with(rid)
    assert "response cut short" in record.getMessage()
    assert "(body_timeout)" in record.getMessage()


def test_reading_paused_by_tlsgate_is_not_the_clients_time(h: Harness) -> None:
    up = h.pooled_upstream()
    conn, client = h.client()
    upstream = h.upstream_of(up)
    conn.data_received(post(100) + b"abc")
    h.loop.advance(1.0)
    upstream.pause_writing()  # the server takes the body slowly: tlsgate stops reading
    assert not reading(client)
    h.loop.advance(8.0)  # 9 s since the last read, all but 1 s of it paused
    assert not client.data()
    upstream.resume_writing()
    assert reading(client)
    h.loop.advance(4.9)
    assert not client.data()
    h.loop.advance(0.2)
    assert_408(client.data(), b"did not arrive in time")


# ---- body_min_rate: after the first body_timeout, at least this many bytes a second --------


def test_a_body_slower_than_body_min_rate_gets_408(rated: Harness, error_log: ErrorLog) -> None:
    h = rated
    up = h.pooled_upstream()
    conn, client = h.client()
    conn.data_received(post(1_000_000))
    for _ in range(5):  # 1 byte a second: never 5 s between reads
        h.loop.advance(1.0)
        conn.data_received(b"x")
    assert not client.data()  # the first body_timeout is grace
    h.loop.advance(1.0)  # 5 bytes in 5 s: due at 5 s + 5 / 100 s
    rid = assert_408(client.data(), b"the request body arrived too slowly")
    assert up.closed
    (entry,) = h.access_entries()
    error = str(entry["error"])
    assert error.startswith("request body: ")
    assert "slower than body_min_rate (100 bytes/s after the first 5s)" in error
    assert error_log.lines_with(rid.decode())


def test_a_body_at_body_min_rate_passes(rated: Harness) -> None:
    h = rated
    up = h.pooled_upstream()
    conn, client = h.client()
    upstream = h.upstream_of(up)
    conn.data_received(post(3000))
    for _ in range(20):  # 150 bytes a second for 20 s
        h.loop.advance(1.0)
        conn.data_received(b"z" * 150)
    assert up.data().endswith(b"z" * 3000)
    upstream.data_received(OK)
    assert client.data() == OK
    assert not client.closed


def test_a_burst_then_a_pause_shorter_than_body_timeout_passes(rated: Harness) -> None:
    """The rate is an average over the whole body: bytes early buy time later."""
    h = rated
    up = h.pooled_upstream()
    conn, client = h.client()
    upstream = h.upstream_of(up)
    conn.data_received(post(1003) + b"b" * 1000)  # 10 s of credit at 100 bytes/s
    for _ in range(3):  # then a byte every 4.5 s: 13.5 s in all
        h.loop.advance(4.5)
        assert not client.data()
        conn.data_received(b"!")
    assert up.data().endswith(b"b" * 1000 + b"!!!")
    upstream.data_received(OK)
    assert client.data() == OK


# ---- Expect: 100-continue -----------------------------------------------------------------


def test_a_100_continue_starts_the_body_clock_over(h: Harness) -> None:
    up = h.pooled_upstream()
    conn, client = h.client()
    upstream = h.upstream_of(up)
    conn.data_received(post(10, extra=b"Expect: 100-continue\r\n"))
    h.loop.advance(4.0)  # the server decides whether it wants the body
    upstream.data_received(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert client.data() == b"HTTP/1.1 100 Continue\r\n\r\n"
    h.loop.advance(4.9)  # 8.9 s since the head, 4.9 s since the client was told to go on
    assert not client.data()
    h.loop.advance(0.2)
    assert_408(client.data(), b"did not arrive in time")


# ---- the backend's read_timeout and a body that is still coming ----------------------------


def test_read_timeout_counts_from_the_end_of_a_slow_body(h: Harness) -> None:
    up = h.pooled_upstream()
    conn, client = h.client()
    conn.data_received(post(60))
    for _ in range(6):  # 24 s of body, a piece every 4 s
        h.loop.advance(4.0)
        conn.data_received(b"q" * 10)
    h.loop.advance(9.9)
    assert not client.data()
    h.loop.advance(0.2)
    out = client.data()
    assert status_of(out) == 504
    assert up.aborted


def test_a_server_that_takes_none_of_the_body_times_out(h: Harness, error_log: ErrorLog) -> None:
    up = h.pooled_upstream()
    conn, client = h.client()
    upstream = h.upstream_of(up)
    conn.data_received(post(100) + b"abc")
    h.loop.advance(3.0)
    upstream.pause_writing()  # its write buffer stays full: it reads nothing
    h.loop.advance(9.9)
    assert not client.data()
    h.loop.advance(0.2)
    out = client.data()
    assert status_of(out) == 504
    assert up.aborted
    (entry,) = h.access_entries()
    assert "took none of the request body for 10s (backend read_timeout)" in str(entry["error"])
