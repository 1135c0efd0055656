"""Connection limits on an https listener: ``tls_handshake_timeout`` and ``max_connections``.

A client that opens a TCP connection and never starts (or finishes) its TLS
handshake is closed after ``tls_handshake_timeout``; a connection beyond a
listener's ``max_connections`` (per worker) is answered ``503`` and closed,
while the ones already open go on being served.
"""

from __future__ import annotations

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


@pytest.fixture(scope="module")
def stack(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    app = AppServer("limits").start()
    port = free_port()
    config = (
        pki.toml()
        + table(
            "listeners",
            name="web",
            bind=[f"127.0.0.1:{port}"],
            protocol="https",
            backend="app",
            default_certificate="main-ecdsa",
            tls_handshake_timeout="1s",
            max_connections=2,
        )
        + table("backends", name="app", servers=[app.address])
    )
    gate = Tlsgate(tmp_path_factory.mktemp("limits"), config)
    try:
        gate.start()
        yield Stack(gate, port, client_context(pki.ca_pem))
    finally:
        gate.kill()
        app.stop()


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
        half.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello begun
        assert closed_within(half, 5)


def test_a_connection_beyond_max_connections_gets_503(stack: Stack) -> None:
    with (
        RawConn(stack.port, tls=stack.tls, server_hostname="localhost") as one,
        RawConn(stack.port, tls=stack.tls, server_hostname="localhost") as two,
    ):
        for c in (one, two):
            c.send(request_bytes("GET", "/echo", "localhost"))
            assert c.read_response().status == 200
        with RawConn(stack.port, tls=stack.tls, server_hostname="localhost") as three:
            three.send(request_bytes("GET", "/echo", "localhost"))
            resp = three.read_response()
            assert resp.status == 503
            assert three.closed_by_peer(5)
        # the two already open are still served
        for c in (one, two):
            c.send(request_bytes("GET", "/echo", "localhost"))
            assert c.read_response().status == 200
    assert "max_connections (2) reached" in stack.gate.error_log_text()
