"""Client connections read into the worker's one buffer, and keep exact-size copies.

Why: as a plain ``asyncio.Protocol`` on a TLS transport, uvloop decrypts every TLS
record into a fresh 256 KiB bytes object and shrinks it to the record's size; those
chunks fragmented glibc's heap and a worker relaying uploads grew without bound
(``make soak``). A buffered protocol gets the records decrypted into its own buffer
instead. The buffer is shared by every connection of the worker, so what a read
brings must be copied out before the next read overwrites it.
"""

from __future__ import annotations

import asyncio

from tlsgate.net import http_proxy
from tlsgate.net.http_proxy import ClientConnection
from tlsgate.net.testing import FakeTransport, Harness
from tlsgate.net.upstream import UpstreamConnection

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

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class HoldingTransport(FakeTransport):
    """Keeps the very objects written (a real transport may hold them unsent)."""

    def write(self, data: bytes) -> None:
        self.written.append(data)


def feed(conn: ClientConnection, data: bytes) -> None:
    """What uvloop does for one read: fill the buffer get_buffer gave, then report it."""
    buf = conn.get_buffer(len(data))
    assert len(buf) >= len(data)
    buf[: len(data)] = data
    conn.buffer_updated(len(data))


def test_uvloop_sees_a_buffered_protocol() -> None:
    # uvloop's TLS and TCP transports read into get_buffer only for a protocol that has
    # it and is not an asyncio.Protocol
    assert issubclass(ClientConnection, asyncio.BufferedProtocol)
    assert not issubclass(ClientConnection, asyncio.Protocol)


def test_every_connection_gets_the_one_large_buffer(h: Harness) -> None:
    a, _ = h.client()
    b, _ = h.client()
    buf = a.get_buffer(16)
    assert len(buf) == http_proxy.READ_BUFFER_SIZE  # a hint never shrinks it
    assert b.get_buffer(1 << 20) is buf
    assert not buf.readonly


def test_a_request_read_through_the_buffer_is_forwarded_and_answered(h: Harness) -> None:
    up = h.pooled_upstream()
    conn, client = h.client()
    feed(conn, b"GET /a HTTP/1.1\r\nHo")
    feed(conn, b"st: example.com\r\n\r\n")
    assert up.data().startswith(b"GET /a HTTP/1.1\r\n")
    h.upstream_of(up).data_received(OK)
    assert client.data().endswith(b"\r\n\r\nok")


def test_what_a_read_brought_survives_the_next_read_into_the_buffer(h: Harness) -> None:
    server = h.server()
    up = UpstreamConnection(server, h.ctx.deadlines)
    held = HoldingTransport(peer=(server.state.host, server.state.port))
    up.connection_made(held)  # type: ignore[arg-type]
    server.pool.release(up, h.ctx.loop.time())
    conn, _ = h.client()
    body = bytes(range(256)) * 64  # 16 KiB
    feed(conn, b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body))
    feed(conn, body[:10000])
    conn.get_buffer(1)[:10000] = b"x" * 10000  # the next read, another connection's
    feed(conn, body[10000:])
    sent = b"".join(held.written)
    assert sent.endswith(b"\r\n\r\n" + body)
    assert all(isinstance(piece, bytes) for piece in held.written)
