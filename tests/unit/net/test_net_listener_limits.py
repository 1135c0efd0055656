"""What a listener counts for its connection limits (``net.listener``, ``net.runtime``).

``max_connections_per_client`` counts a client by its address (an IPv6 client by its
/64, an IPv4-mapped one as the IPv4 address), never a trusted proxy, which carries
many clients; a key goes away when its last connection closes. ``held`` counts
opening connections (handshakes, preambles) with the established ones.
"""

from __future__ import annotations

import dataclasses
import gc
import socket

import pytest

from tlsgate.config.model import ListenerProtocol
from tlsgate.net.http_proxy import ClientConnection
from tlsgate.net.listener import Acceptor, client_key, defer_accept
from tlsgate.net.runtime import BackendRuntime, ListenerRuntime, Runtime, ServerRuntime
from tlsgate.net.testing import FakeTransport, Harness
from tlsgate.net.upstream import UpstreamConnection

CONFIG = """
[[listeners]]
name = "web"
bind = ["127.0.0.1:8080"]
protocol = "http"
backend = "app"
trusted_proxies = ["10.0.0.0/8", "2001:db8:ff::/48"]
max_connections = 3
max_connections_per_client = 2

[[backends]]
name = "app"
servers = ["127.0.0.1:9000"]
"""


@pytest.fixture
def listener(h: Harness) -> ListenerRuntime:
    return h.listener


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:198.51.100.4", "198.51.100.4"),
        ("fe80::1%eth0", "fe80::/64"),
        ("10.1.2.3", None),  # a trusted proxy
        ("2001:db8:ff:1::5", None),
    ],
)
def test_a_client_is_counted_by_its_address_or_its_ipv6_64(
    listener: ListenerRuntime, host: str, key: str | None
) -> None:
    assert client_key(listener, host) == key


def test_a_key_goes_when_its_last_connection_closes(listener: ListenerRuntime) -> None:
    listener.per_client["192.0.2.7"] = 2
    listener.client_left("192.0.2.7")
    assert listener.per_client == {"192.0.2.7": 1}
    listener.client_left("192.0.2.7")
    assert listener.per_client == {}
    listener.client_left("192.0.2.7")  # never below zero, never a negative entry
    assert listener.per_client == {}


class Task:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> bool:
        self.cancelled = True
        return True


class Resumable:
    def __init__(self) -> None:
        self.resumed = 0

    def resume(self) -> None:
        self.resumed += 1


def test_opening_connections_count_and_a_close_resumes_a_full_listener(
    listener: ListenerRuntime,
) -> None:
    a, b = object(), object()
    opening = Task()
    listener.connections.update((a, b))
    listener.opening[opening] = 0.0
    assert listener.held() == 3  # == max_connections: full
    acceptor = Resumable()
    listener.full.append(acceptor)
    listener.opened(opening)  # its handshake failed: room for one
    assert (listener.held(), acceptor.resumed, listener.full) == (2, 1, [])
    listener.connections.add(opening)  # full again
    listener.full.append(acceptor)
    listener.release(object())  # not one of ours: still full
    assert acceptor.resumed == 1
    listener.release(a)
    assert (listener.held(), acceptor.resumed) == (2, 2)


def test_a_connection_leaves_opening_as_it_joins_connections(
    h: Harness, listener: ListenerRuntime
) -> None:
    # counted twice for a moment (opening until its handshake task's done callback ran)
    # a full listener closed the idle one it had just made for the next connection
    task = Task()
    listener.opening[task] = 0.0
    conn = ClientConnection(h.ctx, listener, True, opening=task)
    conn.connection_made(FakeTransport(peer=("127.0.0.2", 40000)))  # type: ignore[arg-type]
    assert listener.held() == 1
    assert listener.opening == {}
    assert conn in listener.connections
    listener.opened(task)  # the task's done callback, later: nothing more to do
    assert listener.held() == 1


def test_a_connection_moves_to_the_reloaded_listener_at_its_next_request(h: Harness) -> None:
    old = h.listener
    conn = ClientConnection(h.ctx, old, False, client_slot="127.0.0.2")
    old.per_client["127.0.0.2"] = 1
    conn.connection_made(FakeTransport(peer=("127.0.0.2", 40000)))  # type: ignore[arg-type]
    h.reload(CONFIG.replace("max_connections = 3", "max_connections = 5"))
    new = h.listener
    assert old.successor is new
    assert conn.listener is old  # nothing moves between requests
    conn.data_received(b"GET /x HT")
    assert conn.listener is new
    assert (old.held(), old.per_client) == (0, {})
    assert (new.held(), new.per_client) == (1, {"127.0.0.2": 1})
    assert conn.limits.max_connections == 5
    conn.release_client()
    assert new.per_client == {}


def test_a_connection_stays_when_its_listener_is_gone_or_changed_protocol(h: Harness) -> None:
    old = h.listener
    conn, _ = h.client()
    h.reload(CONFIG.replace('protocol = "http"', 'protocol = "tcp"'))
    assert old.successor is None
    conn.data_received(b"GET /x HT")
    assert conn.listener is old


# ---- idle connections given back (ClientConnection.reap) -----------------------------------

GET = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def test_a_connection_with_no_request_yet_is_idle(h: Harness) -> None:
    conn, client = h.client()
    assert conn.reap()
    assert client.aborted


def test_a_keep_alive_connection_between_requests_is_idle(h: Harness) -> None:
    up = h.pooled_upstream()
    conn, client = h.client()
    conn.data_received(GET)
    h.upstream_of(up).data_received(ANSWER)
    assert client.data().endswith(b"ok")
    assert conn.reap()
    assert client.aborted


def test_a_request_begun_or_in_progress_is_not_idle(h: Harness) -> None:
    conn, client = h.client()
    conn.data_received(b"GET /x HT")  # a head begun
    assert not conn.reap()
    h.pooled_upstream()
    other, other_client = h.client()
    other.data_received(GET)  # waiting for its answer
    assert not other.reap()
    assert not client.aborted
    assert not other_client.aborted


def test_output_the_client_has_not_taken_yet_keeps_it(h: Harness) -> None:
    up = h.pooled_upstream()
    conn, client = h.client()
    conn.data_received(GET)
    h.upstream_of(up).data_received(ANSWER)
    client.buffered = 2  # the answer's tail is still in the transport's buffer
    assert not conn.reap()
    client.buffered = 0
    assert conn.reap()


def test_a_full_listener_closes_the_longest_idle_first(
    h: Harness, listener: ListenerRuntime
) -> None:
    loop = h.ctx.fake_loop
    first, first_client = h.client()  # no request yet: idle since its accept
    loop.advance(1)
    served, served_client = h.client()
    loop.advance(1)
    third, third_client = h.client()
    loop.advance(1)
    up = h.pooled_upstream()
    served.data_received(GET)  # answered now: idle from now on, the newest idle
    h.upstream_of(up).data_received(ANSWER)
    busy, busy_client = h.client()
    busy.data_received(b"GET /x HT")  # never idle
    assert served.idle_since() == loop.time() > third.idle_since() > first.idle_since()
    with socket.socket() as sock:
        acceptor = Acceptor(loop, sock, listener, lambda fd, peer, client: None)  # type: ignore[arg-type]
        assert acceptor._reap(listener.connections, 2) == 2
    assert (first_client.aborted, third_client.aborted) == (True, True)
    assert (served_client.aborted, busy_client.aborted) == (False, False)


@pytest.mark.parametrize(
    ("protocol", "handshake", "header", "defer"),
    [
        ("https", 10.0, 10.0, 7),  # the default: accepted after 7 s if it sent nothing
        ("https", 1.0, 10.0, 1),
        ("https", 0.5, 10.0, 1),  # never under the first retransmission
        ("https", 15.0, 2.0, 15),
        ("http", 10.0, 3.0, 3),  # no handshake: the request head's timeout
        ("tls-passthrough", 1.0, 64.0, 63),  # the ClientHello falls under header_timeout
        ("tcp", 10.0, 10.0, 0),  # the server may speak first
    ],
)
def test_a_silent_client_waits_in_the_kernel_within_the_first_bytes_timeout(
    listener: ListenerRuntime,
    protocol: ListenerProtocol,
    handshake: float,
    header: float,
    defer: int,
) -> None:
    limits = dataclasses.replace(
        listener.config.limits, tls_handshake_timeout=handshake, header_timeout=header
    )
    lc = dataclasses.replace(listener.config, protocol=protocol, limits=limits)
    assert defer_accept(lc) == defer


def test_a_retired_graph_is_freed_without_the_cycle_collector(h: Harness) -> None:
    # every reload drops a whole graph: reference counting must free it (no cycles
    # between backends and their servers, or listeners and their certificate caches);
    # what is left for the collector is saved in gc.garbage and must hold none of it
    up = h.pooled_upstream()
    conn, client = h.client()
    conn.data_received(GET)
    upstream = h.upstream_of(up)
    upstream.data_received(ANSWER)
    assert client.data().endswith(b"ok")
    graph = (Runtime, ListenerRuntime, BackendRuntime, ServerRuntime, UpstreamConnection)
    gc.collect()
    gc.disable()
    try:
        h.reload(CONFIG)
        conn.data_received(b"GET /x HT")  # the connection moves to the new listener
        assert up.closed  # the retired pool closed its idle connection
        upstream.connection_lost(None)  # as the event loop does after a close
        h.upstreams.clear()
        del upstream
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        left = [type(o).__name__ for o in gc.garbage if isinstance(o, graph)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert left == []
