"""How much one read from an app server takes: the room in the client's output buffer.

A client that reads slowly must not have a whole 256 KiB server read land on top of
a full output buffer (``bench/attack.py``'s slow readers held ~700 KiB each that
way): each read is sized by what is left below the client transport's high-water
mark, with a floor of one TLS record's worth so a response always moves on.
"""

from __future__ import annotations

from tlsgate.net.http_proxy import MIN_UPSTREAM_READ, TRANSPORT_HIGH_WATER
from tlsgate.net.testing import Harness
from tlsgate.net.upstream import READ_SIZE

CONFIG = """
[[listeners]]
name = "web"
bind = ["127.0.0.1:8080"]
protocol = "http"
backend = "app"

[[backends]]
name = "app"
servers = ["127.0.0.1:9000"]
"""

GET = b"GET /big HTTP/1.1\r\nHost: example.com\r\n\r\n"
HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n"


def test_a_read_takes_the_room_left_in_the_clients_buffer(h: Harness) -> None:
    up = h.pooled_upstream()
    upstream = h.upstream_of(up)
    conn, client = h.client()
    conn.data_received(GET)
    assert len(upstream.get_buffer(-1)) == TRANSPORT_HIGH_WATER
    client.buffered = 40 * 1024
    assert len(upstream.get_buffer(-1)) == TRANSPORT_HIGH_WATER - 40 * 1024
    client.buffered = TRANSPORT_HIGH_WATER + 1  # over the mark: one record's worth still
    assert len(upstream.get_buffer(-1)) == MIN_UPSTREAM_READ
    assert TRANSPORT_HIGH_WATER <= READ_SIZE


def test_an_idle_pooled_connection_reads_into_the_whole_buffer(h: Harness) -> None:
    up = h.pooled_upstream()
    assert len(h.upstream_of(up).get_buffer(-1)) == READ_SIZE


def test_what_is_read_into_the_buffer_is_relayed(h: Harness) -> None:
    up = h.pooled_upstream()
    upstream = h.upstream_of(up)
    conn, client = h.client()
    conn.data_received(GET)
    for piece in (HEAD + b"a" * 1000, b"b" * 2000):
        buf = upstream.get_buffer(-1)
        buf[: len(piece)] = piece
        upstream.buffer_updated(len(piece))
    assert client.data() == HEAD + b"a" * 1000 + b"b" * 2000
