"""What a client may make the parser hold: field lines without end, trailers (issue 8).

llhttp hands a field over only when its line has ended, and httptools gathers the
pieces until then, so a line that never ends must be bounded by the bytes read,
not by ``on_header``: 431 once the head passes ``max_header_size``. The same for a
chunked body's trailer section, whole or unfinished, and for reads of chunk
framing that bring no body byte. Heads and bodies within the limits, in however
many reads and behind however many pipelined requests, are untouched.
"""

from __future__ import annotations

import pytest

from tlsgate.net.testing import Harness

CONFIG = """
[[listeners]]
name = "web"
bind = ["127.0.0.1:8080"]
protocol = "http"
backend = "app"
max_header_size = "4KiB"

[[backends]]
name = "app"
servers = ["127.0.0.1:9000"]
"""

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
CHUNKED = b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"


def status_of(out: bytes) -> int:
    return int(out.split(b" ", 2)[1])


@pytest.mark.parametrize("piece", [1000, 4000, 5000])
def test_a_field_line_without_end_is_refused_once_past_max_header_size(
    h: Harness, piece: int
) -> None:
    up = h.pooled_upstream()
    conn, client = h.client()
    conn.data_received(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ")
    for _ in range(6):
        if client.written:
            break
        conn.data_received(b"v" * piece)
    out = client.data()
    assert status_of(out) == 431, out[:100]
    assert not up.data()  # nothing of it went on
    assert not client.reading or client.eof_written


def test_a_head_in_many_small_reads_within_the_limit_passes(h: Harness) -> None:
    up = h.pooled_upstream()
    conn, client = h.client()
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Fine: " + b"v" * 3500 + b"\r\n\r\n"
    for i in range(0, len(head), 100):
        conn.data_received(head[i : i + 100])
    assert up.data().startswith(b"GET / HTTP/1.1\r\n")
    h.upstream_of(up).data_received(OK)
    assert status_of(client.data()) == 200


def test_a_head_behind_a_pipeline_in_one_read_is_not_miscounted(h: Harness) -> None:
    """The read a head begins in may hold earlier requests: it is not counted as head."""
    up = h.pooled_upstream()
    conn, client = h.client()
    earlier = b"GET /one HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"p" * 3000 + b"\r\n\r\n"
    late = b"GET /two HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"q" * 3000 + b"\r\n\r\n"
    conn.data_received(earlier + late[:2000])  # more than 4 KiB in one read
    conn.data_received(late[2000:])
    assert up.data().startswith(b"GET /one ")
    h.upstream_of(up).data_received(OK)
    h.loop.run_ready()
    assert status_of(client.data()) == 200


def test_a_trailer_section_larger_than_max_header_size_is_refused(h: Harness) -> None:
    up = h.pooled_upstream()
    conn, client = h.client()
    conn.data_received(CHUNKED + b"5\r\nhello\r\n0\r\nX-Big: " + b"t" * 5000 + b"\r\n\r\n")
    out = client.data()
    assert status_of(out) == 431, out[:100]
    assert b"X-Big" not in up.data()


def test_a_trailer_line_without_end_is_refused(h: Harness) -> None:
    up = h.pooled_upstream()
    conn, client = h.client()
    conn.data_received(CHUNKED + b"5\r\nhello\r\n0\r\nX-Big: ")
    for _ in range(10):
        if client.written:
            break
        conn.data_received(b"t" * 1000)
    assert status_of(client.data()) == 431
    assert b"X-Big" not in up.data()


def test_small_chunks_and_fine_trailers_pass(h: Harness) -> None:
    up = h.pooled_upstream()
    conn, client = h.client()
    conn.data_received(CHUNKED)
    for _ in range(3000):  # 3000 one-byte chunks: 18 KB of framing for 3 KB of body
        conn.data_received(b"1\r\nx\r\n")
    conn.data_received(b"0\r\nX-Sum: 3000\r\n\r\n")
    sent = up.data()
    assert sent.endswith(b"0\r\nX-Sum: 3000\r\n\r\n")
    h.upstream_of(up).data_received(OK)
    assert status_of(client.data()) == 200
