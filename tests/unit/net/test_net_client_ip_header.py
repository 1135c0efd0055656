"""``client_ip_header`` is believed per request, and only from a trusted peer (issue 8).

An edge (Cloudflare, or a tier of its own) keeps one connection open for many
clients and names each request's client in a header such as
``CF-Connecting-IP``. Each request is its own: one without the header, or with
an invalid value, is the edge's own (its TCP address), never the previous
request's client; pipelined requests keep their own clients too. The client
address goes to X-Forwarded-For, to the access log and to ``ip_hash``
balancing. From an untrusted peer the header is dropped and not believed.
"""

from __future__ import annotations

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
trusted_proxies = ["127.0.0.2/32"]
client_ip_header = "CF-Connecting-IP"

[[backends]]
name = "app"
servers = ["127.0.0.1:9000"]
"""

EDGE = ("127.0.0.2", 40000)
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(CONFIG, access=str(tmp_path / "access.log"))
    yield harness
    harness.close()


def request(path: str, client: str | None) -> bytes:
    header = f"CF-Connecting-IP: {client}\r\n" if client is not None else ""
    return f"GET {path} HTTP/1.1\r\nHost: a\r\n{header}\r\n".encode()


def xff(upstream_bytes: bytes) -> str:
    head = upstream_bytes.split(b"\r\n\r\n", 1)[0].decode()
    (value,) = [
        line.split(": ", 1)[1]
        for line in head.split("\r\n")
        if line.lower().startswith("x-forwarded-for:")
    ]
    return value


def test_each_request_on_one_connection_has_its_own_client(h: Harness) -> None:
    up = h.pooled_upstream()
    upstream = h.upstream_of(up)
    conn, client = h.client(peer=EDGE)
    seen = []
    for path, named in [
        ("/1", "198.51.100.1"),
        ("/2", None),  # the edge's own request
        ("/3", "not-an-ip"),  # invalid: not believed
        ("/4", "2001:db8::7"),
        ("/5", "198.51.100.1"),
    ]:
        conn.data_received(request(path, named))
        seen.append(xff(up.data()))
        upstream.data_received(OK)
        assert client.data().startswith(b"HTTP/1.1 200 ")
    assert seen == [
        "198.51.100.1, 127.0.0.2",
        "127.0.0.2",
        "127.0.0.2",
        "2001:db8::7, 127.0.0.2",
        "198.51.100.1, 127.0.0.2",
    ]
    clients = [e["client_ip"] for e in h.access_entries()]
    assert clients == ["198.51.100.1", "127.0.0.2", "127.0.0.2", "2001:db8::7", "198.51.100.1"]
    assert all(e["peer_ip"] == "127.0.0.2" for e in h.access_entries())


def test_pipelined_requests_keep_their_own_clients(h: Harness) -> None:
    up = h.pooled_upstream()
    upstream = h.upstream_of(up)
    conn, _client = h.client(peer=EDGE)
    conn.data_received(
        request("/a", "192.0.2.1") + request("/b", "192.0.2.2") + request("/c", None)
    )
    seen = []
    for _ in range(3):
        h.loop.run_ready()
        seen.append(xff(up.data()))
        upstream.data_received(OK)
    assert seen == ["192.0.2.1, 127.0.0.2", "192.0.2.2, 127.0.0.2", "127.0.0.2"]


def test_an_untrusted_peer_cannot_name_a_client(h: Harness) -> None:
    up = h.pooled_upstream()
    conn, _client = h.client(peer=("127.0.0.9", 40000))
    conn.data_received(request("/x", "198.51.100.1"))
    sent = up.data()
    assert b"CF-Connecting-IP" not in sent  # dropped, not passed on for the app to believe
    assert xff(sent) == "127.0.0.9"
    h.upstream_of(up).data_received(OK)
    (entry,) = h.access_entries()
    assert entry["client_ip"] == "127.0.0.9"
