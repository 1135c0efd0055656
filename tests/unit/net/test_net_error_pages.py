"""Error responses tlsgate makes itself, driven in memory (issue 8, defects 2 to 5).

What a client is told and what the logs are told differ: an error page carries a
generic text and a request id (body and ``X-Request-Id``), while the detail (server
addresses, errno text, config names) goes to the access log and the error log under
that id. Every upstream failure before the response head has reached the client
becomes a 502; after it, the client connection is closed and the log says why.
Response heads have the listener's header limits; an HTTP/0.9 request line is
refused at once.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tlsgate.net.testing import Harness

CONFIG = """
[[listeners]]
name = "web"
bind = ["127.0.0.1:8080"]
protocol = "http"
backend = "app"
header_timeout = "5s"
idle_timeout = "30s"
max_header_size = "4KiB"
max_headers = 20
max_body_size = "1KiB"

[[backends]]
name = "app"
servers = ["127.0.0.1:9000"]
read_timeout = "10s"
"""

GET = b"GET /a HTTP/1.1\r\nHost: example.com\r\n\r\n"
POST = b"POST /a HTTP/1.1\r\nHost: example.com\r\nContent-Length: 3\r\n\r\nabc"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"

REQUEST_ID = re.compile(rb"request id: ([0-9a-f]{16})\n\Z")
# what no error page may tell a client: server addresses, errno text, config names
INSIDE = (
    "127.0.0.1",
    "9000",
    "Errno",
    "reset by peer",
    "backend",
    "app",
    "read_timeout",
    "header_timeout",
    "max_body_size",
    "max_header_size",
    "max_headers",
    "max_connections",
)


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(CONFIG, access=str(tmp_path / "access.log"))
    yield harness
    harness.close()


class ErrorLog(logging.Handler):
    """The records of the ``tlsgate.http`` logger, caught on the logger itself
    (``tlsgate`` need not propagate to the root logger caplog listens on)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def text(self) -> str:
        return "\n".join(r.getMessage() for r in self.records)


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


def split(response: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), fields, body


def assert_error_page(
    response: bytes,
    status: int,
    error_log: ErrorLog,
    h: Harness,
    *,
    detail: str,
    generic: bool | None = None,
) -> str:
    """A page with a request id, generic (the default for 5xx) or not; ``detail`` in the
    access and error logs under that id."""
    got, fields, body = split(response)
    assert got == status, response
    m = REQUEST_ID.search(body)
    assert m is not None, body
    rid = m.group(1)
    assert fields[b"x-request-id"] == rid
    text = body.decode()
    for word in INSIDE:
        assert word not in text, f"{word!r} told to the client: {text!r}"
    if status >= 500 if generic is None else generic:
        assert body.split(b"\n")[0] == f"{status} {split_reason(response)}".encode()
    entry = next(e for e in h.access_entries() if e.get("request_id") == rid.decode())
    assert entry["status"] == status
    assert detail in str(entry["error"])
    logged = [r.getMessage() for r in error_log.records if rid.decode() in r.getMessage()]
    assert logged, f"no error log line for request {rid!r}: {error_log.text}"
    assert detail in logged[0]
    return rid.decode()


def split_reason(response: bytes) -> str:
    return response.split(b"\r\n", 1)[0].split(b" ", 2)[2].decode()


# ---- defect 2: error pages tell clients nothing about the inside ---------------------------


def test_a_lost_connection_is_a_generic_502_with_the_detail_in_the_logs(
    h: Harness, error_log: ErrorLog
) -> None:
    up = h.pooled_upstream()
    conn, client = h.client()
    conn.data_received(POST)  # a body: no retry on a new connection
    h.upstream_of(up).connection_lost(ConnectionResetError(104, "Connection reset by peer"))
    rid = assert_error_page(client.data(), 502, error_log, h, detail="127.0.0.1:9000 was lost")
    (record,) = [r for r in error_log.records if rid in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert "Connection reset by peer" in record.getMessage()


def test_a_read_timeout_is_a_generic_504(h: Harness, error_log: ErrorLog) -> None:
    h.pooled_upstream()
    conn, client = h.client()
    conn.data_received(GET)
    h.loop.advance(10.1)
    assert_error_page(client.data(), 504, error_log, h, detail="(backend read_timeout)")


def test_no_server_available_is_a_generic_503(h: Harness, error_log: ErrorLog) -> None:
    h.server().state.healthy = False
    conn, client = h.client()
    conn.data_received(GET)
    assert_error_page(client.data(), 503, error_log, h, detail="no server of backend 'app'")


def test_the_header_timeout_408_names_no_setting(h: Harness, error_log: ErrorLog) -> None:
    conn, client = h.client()
    conn.data_received(b"GET / HTTP/1.1\r\nHost: exa")
    h.loop.advance(5.1)
    assert_error_page(client.data(), 408, error_log, h, detail="header_timeout (5s)")


@pytest.mark.parametrize(
    ("request_bytes", "status", "told"),
    [
        (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414, b"longer than 4096 bytes"),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-A: b\r\n" * 25 + b"\r\n",
            431,
            b"more than 20 header fields",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * 5000 + b"\r\n\r\n",
            431,
            b"larger than 4096 bytes",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"800\r\n" + b"x" * 2048 + b"\r\n0\r\n\r\n",
            413,
            b"larger than 1024 bytes",
        ),
        (b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n", 400, b"malformed request"),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            501,
            b"transfer coding 'gzip' is not supported",
        ),
    ],
    ids=["414-target", "431-count", "431-size", "413-chunked", "400-malformed", "501-coding"],
)
def test_client_error_pages_explain_the_request_but_name_no_setting(
    h: Harness,
    error_log: ErrorLog,
    request_bytes: bytes,
    status: int,
    told: bytes,
) -> None:
    h.pooled_upstream()
    conn, client = h.client()
    conn.data_received(request_bytes)
    out = client.data()
    rid = assert_error_page(out, status, error_log, h, detail="", generic=False)
    _, _, body = split(out)
    assert told in body  # what the client did wrong is not inside information
    (record,) = [r for r in error_log.records if rid in r.getMessage()]
    assert record.levelno == logging.INFO  # the client's fault, not trouble inside


def test_a_successful_exchange_has_no_request_id(h: Harness) -> None:
    up = h.pooled_upstream()
    conn, client = h.client()
    conn.data_received(GET)
    h.upstream_of(up).data_received(OK)
    assert b"X-Request-Id" not in client.data()
    (entry,) = h.access_entries()
    assert "request_id" not in entry
    assert "error" not in entry


def test_every_error_page_gets_its_own_request_id(h: Harness) -> None:
    ids = set()
    for _ in range(3):
        h.server().state.healthy = False
        conn, client = h.client()
        conn.data_received(GET)
        _, fields, _ = split(client.data())
        ids.add(fields[b"x-request-id"])
    assert len(ids) == 3


# ---- defect 3: broken responses are a 502 until the head went out --------------------------


def test_an_invalid_chunk_size_with_the_head_is_a_502(h: Harness, error_log: ErrorLog) -> None:
    up = h.pooled_upstream()
    conn, client = h.client()
    conn.data_received(GET)
    h.upstream_of(up).data_received(CHUNKED_HEAD + b"zz\r\nabc\r\n0\r\n\r\n")
    out = client.data()
    assert out.count(b"HTTP/1.1") == 1  # the 200 head never left
    assert_error_page(out, 502, error_log, h, detail="malformed response")
    assert up.aborted
    assert client.closed
    assert not h.ctx.spawned  # the server answered: no retry on a new connection


def test_an_invalid_chunk_size_after_the_head_closes_and_says_why(
    h: Harness, error_log: ErrorLog
) -> None:
    up = h.pooled_upstream()
    conn, client = h.client()
    conn.data_received(GET)
    upstream = h.upstream_of(up)
    upstream.data_received(CHUNKED_HEAD + b"3\r\nabc\r\n")
    assert client.data().startswith(b"HTTP/1.1 200 OK\r\n")
    upstream.data_received(b"zz\r\n")
    assert client.aborted  # the only honest option once the head is out
    assert not client.data()
    (entry,) = h.access_entries()
    assert entry["status"] == 200
    assert "malformed response" in str(entry["error"])
    rid = entry["request_id"]
    assert isinstance(rid, str)
    assert len(rid) == 16
    (record,) = [r for r in error_log.records if rid in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert "cut short" in record.getMessage()
    assert "malformed response" in record.getMessage()


def test_a_101_to_a_request_that_asked_for_no_upgrade_is_a_502(
    h: Harness, error_log: ErrorLog
) -> None:
    up = h.pooled_upstream()
    conn, client = h.client()
    conn.data_received(GET)
    h.upstream_of(up).data_received(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
    )
    assert_error_page(client.data(), 502, error_log, h, detail="without an upgrade request")
    assert up.aborted
    assert not h.ctx.spawned


def test_a_malformed_response_on_a_pooled_connection_is_not_sent_again(
    h: Harness, error_log: ErrorLog
) -> None:
    up = h.pooled_upstream()
    conn, client = h.client()
    conn.data_received(GET)
    h.upstream_of(up).data_received(b"THIS IS NOT HTTP\r\n\r\n")
    assert not h.ctx.spawned  # the server did answer: the request is not repeated
    assert_error_page(client.data(), 502, error_log, h, detail="malformed response")


def test_a_1xx_before_a_broken_final_head_still_gets_a_502(h: Harness) -> None:
    up = h.pooled_upstream()
    conn, client = h.client()
    conn.data_received(GET)
    h.upstream_of(up).data_received(
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + CHUNKED_HEAD + b"-1\r\n"
    )
    out = client.data()
    assert b" 200 " not in out
    assert b"HTTP/1.1 502 Bad Gateway\r\n" in out


# ---- defect 4: response heads have limits ---------------------------------------------------


def test_a_response_head_over_max_header_size_is_a_502(h: Harness, error_log: ErrorLog) -> None:
    up = h.pooled_upstream()
    conn, client = h.client()
    conn.data_received(GET)
    big = b"HTTP/1.1 200 OK\r\nX-Big: " + b"b" * 200_000 + b"\r\nContent-Length: 0\r\n\r\n"
    h.upstream_of(up).data_received(big)
    assert_error_page(client.data(), 502, error_log, h, detail="max_header_size")
    assert up.aborted


def test_a_response_head_over_max_headers_is_a_502(h: Harness, error_log: ErrorLog) -> None:
    up = h.pooled_upstream()
    conn, client = h.client()
    conn.data_received(GET)
    many = b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 21 + b"Content-Length: 0\r\n\r\n"
    h.upstream_of(up).data_received(many)
    assert_error_page(client.data(), 502, error_log, h, detail="max_headers")


def test_a_response_head_dribbling_past_the_limit_is_refused_before_it_ends(
    h: Harness, error_log: ErrorLog
) -> None:
    up = h.pooled_upstream()
    conn, client = h.client()
    conn.data_received(GET)
    upstream = h.upstream_of(up)
    upstream.data_received(b"HTTP/1.1 200 OK\r\nX-Big: ")
    for _ in range(5):
        if up.aborted:
            break
        upstream.data_received(b"b" * 1000)  # one value that never ends
    assert up.aborted
    assert_error_page(client.data(), 502, error_log, h, detail="max_header_size")


def test_a_response_head_within_the_limits_passes(h: Harness) -> None:
    up = h.pooled_upstream()
    conn, client = h.client()
    conn.data_received(GET)
    head = b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 18 + b"X-Big: " + b"b" * 3000
    h.upstream_of(up).data_received(head + b"\r\nContent-Length: 2\r\n\r\nok")
    out = client.data()
    assert out.startswith(b"HTTP/1.1 200 OK\r\n")
    assert out.endswith(b"\r\n\r\nok")


def test_response_trailers_have_the_limits_too(h: Harness) -> None:
    up = h.pooled_upstream()
    conn, client = h.client()
    conn.data_received(GET)
    upstream = h.upstream_of(up)
    upstream.data_received(CHUNKED_HEAD + b"2\r\nok\r\n")
    client.data()
    upstream.data_received(b"0\r\n" + b"X-T: v\r\n" * 25 + b"\r\n")
    assert client.aborted


# ---- defect 5: an HTTP/0.9 request line ------------------------------------------------------


@pytest.mark.parametrize(
    "pieces",
    [
        [b"GET /\r\n"],
        [b"GET /\n"],
        [b"GET /", b"\r\n"],
        [b"GET /\r", b"\n"],
        [b"GET /\r\nHost: a\r\n"],
        [b"GET /\r\n\r\n"],
    ],
    ids=["crlf", "lf", "split", "split-crlf", "with-a-header", "complete"],
)
def test_an_http09_request_line_gets_400_at_once(
    h: Harness, error_log: ErrorLog, pieces: list[bytes]
) -> None:
    up = h.pooled_upstream()
    conn, client = h.client()
    for piece in pieces:
        conn.data_received(piece)
    out = client.data()  # no time has passed: not the 408 of the header timeout
    assert_error_page(out, 400, error_log, h, detail="HTTP/0.9")
    assert client.eof_written  # a lingering close: the answer and a FIN first
    assert not up.data()


def test_a_request_line_still_arriving_is_not_taken_for_http09(h: Harness) -> None:
    up = h.pooled_upstream()
    conn, client = h.client()
    for piece in (b"GET /abc", b" HTT", b"P/1.1\r\n", b"Host: a\r\n"):
        conn.data_received(piece)
        assert not client.data()
    conn.data_received(b"\r\n")
    assert up.data().startswith(b"GET /abc HTTP/1.1\r\n")
