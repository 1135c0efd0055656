"""Connection limits on an https listener: ``tls_handshake_timeout`` and ``max_connections``.

A client that opens a TCP connection and never starts (or finishes) its TLS
handshake is closed after ``tls_handshake_timeout``. ``max_connections`` (per
worker) counts connections from their accept on, handshakes included: a full
listener stops accepting, so a connection beyond it waits in the accept queue
until one closes (the ones open go on being served); while it is full, an idle
connection (between keep-alive requests, or no request yet) is closed for a
connection that waits, and so is one that has spent over a second in its
handshake. ``max_connections_per_client`` closes a client's connection at once,
before any handshake, while that address has as many open.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from appserver import AppServer
from harness import Pki, RawConn, Tlsgate, client_context, free_port, request_bytes, table

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@dataclass
class Stack:
    gate: Tlsgate
    port: int
    tls: ssl.SSLContext


def limits_config(
    pki: Pki, app: AppServer, port: int, handshake_timeout: str, **limits: int
) -> str:
    """An https listener on ``port`` with ``max_connections`` 2 (unless ``limits`` say)."""
    return (
        pki.toml()
        + table(
            "listeners",
            name="web",
            bind=[f"127.0.0.1:{port}"],
            protocol="https",
            backend="app",
            default_certificate="main-ecdsa",
            tls_handshake_timeout=handshake_timeout,
            **({"max_connections": 2} | limits),
        )
        + table("backends", name="app", servers=[app.address])
    )


@contextlib.contextmanager
def running_stack(
    pki: Pki,
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    handshake_timeout: str,
    **limits: int,
) -> Iterator[Stack]:
    """An app server and a tlsgate with ``limits_config``, both stopped at the end."""
    app = AppServer(name).start()
    port = free_port()
    config = limits_config(pki, app, port, handshake_timeout, **limits)
    gate = Tlsgate(tmp_path_factory.mktemp(name), config)
    try:
        gate.start()
        yield Stack(gate, port, client_context(pki.ca_pem))
    finally:
        gate.kill()
        app.stop()


@pytest.fixture(scope="module")
def stack(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(pki, tmp_path_factory, "limits", "1s") as s:
        yield s


HELLO_BEGUN = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"  # a ClientHello's first bytes


def closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_a_client_that_never_starts_its_handshake_is_closed(stack: Stack) -> None:
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as silent:
        started = time.monotonic()
        assert not closed_within(silent, 0.5)  # not at once: it has its second
        assert closed_within(silent, 5)
        assert time.monotonic() - started >= 0.9


def test_a_handshake_cut_short_is_closed_too(stack: Stack) -> None:
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as half:
        half.sendall(HELLO_BEGUN)
        assert closed_within(half, 5)


HEAD_BEGUN = b"GET /echo HTTP/1.1\r\nHost: localhost\r\n"  # the blank line still to come


def test_a_connection_beyond_max_connections_waits_for_a_free_slot(stack: Stack) -> None:
    # two connections that are not idle: each has a request head under way
    one = RawConn(stack.port, tls=stack.tls, server_hostname="localhost")
    with RawConn(stack.port, tls=stack.tls, server_hostname="localhost") as two:
        for c in (one, two):
            c.send(HEAD_BEGUN)
        time.sleep(0.3)  # read by the worker: neither is idle now
        raw = socket.create_connection(("127.0.0.1", stack.port), timeout=10)
        three = stack.tls.wrap_socket(
            raw, server_hostname="localhost", do_handshake_on_connect=False
        )
        try:
            three.settimeout(1.5)
            with pytest.raises(TimeoutError):
                three.do_handshake()  # not accepted: it waits in the kernel's queue
            two.send(b"\r\n")  # the two open are served meanwhile
            assert two.read_response().status == 200
            two.send(HEAD_BEGUN)
            time.sleep(0.3)
            one.close()  # a slot frees: the waiting connection is accepted
            three.settimeout(5)
            three.do_handshake()
            three.sendall(request_bytes("GET", "/echo", "localhost"))
            assert three.recv(12) == b"HTTP/1.1 200"
            two.send(b"\r\n")
            assert two.read_response().status == 200
        finally:
            three.close()
    assert "max_connections (2) reached; new connections wait" in stack.gate.error_log_text()


def test_a_full_listener_closes_an_idle_keep_alive_connection_for_a_new_one(
    stack: Stack,
) -> None:
    with (
        RawConn(stack.port, tls=stack.tls, server_hostname="localhost") as idle,
        RawConn(stack.port, tls=stack.tls, server_hostname="localhost") as busy,
    ):
        idle.send(request_bytes("GET", "/echo", "localhost"))
        assert idle.read_response().status == 200  # and now idle, between requests
        busy.send(HEAD_BEGUN)
        time.sleep(0.2)
        started = time.monotonic()
        with RawConn(stack.port, tls=stack.tls, server_hostname="localhost") as new:
            new.send(request_bytes("GET", "/echo", "localhost"))
            assert new.read_response().status == 200
        assert time.monotonic() - started < 2
        assert idle.closed_by_peer(2)  # its place went to the new one
        busy.send(b"\r\n")  # the one with a request under way was left alone
        assert busy.read_response().status == 200
    text = stack.gate.error_log_text()
    assert "closed 1 idle connection(s) to make room for new ones" in text


def test_a_full_listener_sheds_a_handshake_that_is_overdue(
    pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with (
        running_stack(pki, tmp_path_factory, "shed", "30s") as st,
        socket.create_connection(("127.0.0.1", st.port), timeout=10) as silent1,
        socket.create_connection(("127.0.0.1", st.port), timeout=10) as silent2,
    ):
        for s in (silent1, silent2):  # a ClientHello begun: the kernel passes them on
            s.sendall(HELLO_BEGUN)
            time.sleep(0.05)  # in this order
        time.sleep(0.2)  # both accepted, in their handshakes: the listener is full
        started = time.monotonic()
        with RawConn(st.port, tls=st.tls, server_hostname="localhost") as good:
            good.send(request_bytes("GET", "/echo", "localhost"))
            assert good.read_response().status == 200
            took = time.monotonic() - started
            # the oldest silent one made room after about a second, not 30
            assert 0.5 <= took < 5, took
            assert closed_within(silent1, 1)
            assert not closed_within(silent2, 0.3)  # no more than the one needed


def test_a_client_that_sends_nothing_holds_no_slot(
    pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # TCP_DEFER_ACCEPT: it waits in the kernel, not in the listener's max_connections
    with contextlib.ExitStack() as held:
        st = held.enter_context(running_stack(pki, tmp_path_factory, "silent", "30s"))
        for _ in range(5):
            held.enter_context(socket.create_connection(("127.0.0.1", st.port), timeout=10))
        time.sleep(0.2)
        started = time.monotonic()
        for _ in range(2):  # the listener's two slots are free for good clients
            with RawConn(st.port, tls=st.tls, server_hostname="localhost") as good:
                good.send(request_bytes("GET", "/echo", "localhost"))
                assert good.read_response().status == 200
        assert time.monotonic() - started < 0.5  # no shedding, no waiting
        assert "max_connections (2) reached" not in st.gate.error_log_text()


def test_max_connections_per_client_closes_the_one_too_many_at_accept(
    pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> None:
    def served(conn: RawConn) -> bool:
        conn.send(request_bytes("GET", "/echo", "localhost"))
        return conn.read_response().status == 200

    limits = {"max_connections": 10, "max_connections_per_client": 2}
    with running_stack(pki, tmp_path_factory, "per-client", "10s", **limits) as st:
        port, tls = st.port, st.tls
        one = RawConn(port, tls=tls, server_hostname="localhost")
        with RawConn(port, tls=tls, server_hostname="localhost") as two:
            assert served(one)
            assert served(two)
            with pytest.raises((ssl.SSLError, ConnectionError)):  # closed before its handshake
                RawConn(port, tls=tls, server_hostname="localhost")
            # another address is another client
            with RawConn(port, tls=tls, server_hostname="localhost", source="127.0.0.2") as other:
                assert served(other)
            assert served(one)
            assert served(two)
            one.close()
            time.sleep(0.2)
            with RawConn(port, tls=tls, server_hostname="localhost") as again:
                assert served(again)
        assert "127.0.0.1 has max_connections_per_client (2) open" in st.gate.error_log_text()
