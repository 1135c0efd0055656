"""WebSocket upgrades are tunnelled: a ``websockets`` client talks through tlsgate
(wss with the test CA, and plain ws) to a ``websockets`` echo server."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from appserver import AppServer
from harness import Pki, Tlsgate, client_context, free_port, table
from websockets.sync.client import ClientConnection, connect

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@dataclass
class WsStack:
    gate: Tlsgate
    https_port: int
    http_port: int
    pki: Pki


@pytest.fixture(scope="module")
def stack(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WsStack]:
    app = AppServer("ws", ws=True).start()
    https_port, http_port = free_port(), free_port()
    config = (
        pki.toml()
        + table(
            "listeners",
            name="https",
            bind=[f"127.0.0.1:{https_port}"],
            protocol="https",
            backend="app",
            default_certificate="main-ecdsa",
        )
        + table(
            "listeners",
            name="http",
            bind=[f"127.0.0.1:{http_port}"],
            protocol="http",
            backend="app",
        )
        + table("routes", listener="https", path_prefix="/ws", backend="ws")
        + table("routes", listener="http", path_prefix="/ws", backend="ws")
        + table("backends", name="app", servers=[app.address])
        + table("backends", name="ws", servers=[f"127.0.0.1:{app.ws_port}"])
    )
    gate = Tlsgate(tmp_path_factory.mktemp("ws"), config)
    try:
        gate.start()
        yield WsStack(gate, https_port, http_port, pki)
    finally:
        gate.kill()
        app.stop()


def open_ws(port: int, ctx: ssl.SSLContext | None = None) -> ClientConnection:
    """Connect to 127.0.0.1:PORT ourselves ("localhost" may resolve to ::1 first);
    the URI still names localhost, which is the SNI and the name verified."""
    scheme = "wss" if ctx is not None else "ws"
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return connect(
        f"{scheme}://localhost:{port}/ws",
        sock=sock,
        ssl=ctx,
        server_hostname="localhost" if ctx is not None else None,
        proxy=None,
        open_timeout=10,
        close_timeout=5,
        max_size=2**20,
    )


def exchange(ws: ClientConnection) -> None:
    big = os.urandom(256 * 1024)
    with ws:
        for i in range(50):
            ws.send(f"message {i}")
            assert ws.recv(timeout=5) == f"message {i}"
        ws.send(big)
        assert ws.recv(timeout=10) == big
        ws.send("")
        assert ws.recv(timeout=5) == ""


def test_wss_echo_through_tlsgate(stack: WsStack) -> None:
    exchange(open_ws(stack.https_port, client_context(stack.pki.ca_pem)))


def test_ws_echo_through_tlsgate(stack: WsStack) -> None:
    exchange(open_ws(stack.http_port))


def test_many_concurrent_tunnels(stack: WsStack) -> None:
    ctx = client_context(stack.pki.ca_pem)
    with contextlib.ExitStack() as opened:
        conns = [opened.enter_context(open_ws(stack.https_port, ctx)) for _ in range(10)]
        for i, ws in enumerate(conns):
            ws.send(f"hello {i}")
        for i, ws in enumerate(conns):
            assert ws.recv(timeout=5) == f"hello {i}"


def test_plain_requests_still_work_beside_tunnels(stack: WsStack) -> None:
    with open_ws(stack.http_port) as ws:
        ws.send("ping")
        r = httpx.get(f"http://127.0.0.1:{stack.http_port}/echo", timeout=5)
        assert r.status_code == 200
        assert ws.recv(timeout=5) == "ping"
