"""Layer 4 health checks against real local servers: tcp, tls (with and without
verification) and the PROXY header that precedes every check of a backend that
sends one.

``probe`` is called directly, on both event loops the project runs (asyncio and
uvloop: the supervisor uses uvloop), against servers in threads: a listener that
accepts and says nothing, a closed port, a Python ``ssl`` server holding a
certificate from the session's LocalCA, and a server that records the exact bytes
that precede everything else, read in clear text before it starts TLS, as a
server behind a PROXY-sending load balancer does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import pytest
import uvloop
from harness import Pki, free_port

from tlsgate.ca.local import LocalCA
from tlsgate.config.model import BackendConfig, HealthCheckConfig, ServerConfig
from tlsgate.net.health_check import (
    HealthChecker,
    _open_connection,
    health_check_context,
    probe,
)
from tlsgate.proto.proxy_protocol import ProxyHeader, build_v2, parse_proxy_header

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

T = TypeVar("T")


class Run(Protocol):
    """Runs a coroutine to completion on a fresh event loop."""

    def __call__(self, coro: Coroutine[Any, Any, T]) -> T: ...


ProxyMode = Literal["", "v1", "v2"]

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Run:
    """Run a coroutine to completion on a fresh loop of the parametrized kind."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def runner(coro: Coroutine[Any, Any, T]) -> T:
        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(coro)

    return runner


# ------------------------------------------------------------------------- servers


@dataclass
class Seen:
    """What one connection brought: its peer, the bytes before anything else, and
    what went wrong on the server's side. ``done`` is set when the server is done
    with the connection (a tcp check may return before that)."""

    peer: tuple[str, int]
    preamble: bytes = b""
    tls_error: str = ""
    error: str = ""
    done: threading.Event = field(default_factory=threading.Event)

    def wait(self) -> Seen:
        assert self.done.wait(5), "the server never finished the connection"
        return self


def _recv_exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def read_proxy_preamble(conn: socket.socket) -> bytes:
    """The PROXY header at the start of ``conn``, byte-exact and without reading one
    byte past it (the TLS ClientHello that follows must stay in the socket). Written
    from the spec rather than with tlsgate's parser, which is not under test here."""
    first = _recv_exactly(conn, 1)
    if first == b"\r":  # v2: 12-byte signature, ver/cmd, family, 2-byte length
        head = first + _recv_exactly(conn, 15)
        if head[:12] != V2_SIGNATURE:
            raise ValueError(f"not a PROXY v2 signature: {head!r}")
        return head + _recv_exactly(conn, int.from_bytes(head[14:16], "big"))
    line = first  # v1: one line, at most 107 bytes, ending with CRLF
    while not line.endswith(b"\r\n"):
        if len(line) >= 107:
            raise ValueError(f"no PROXY v1 line within 107 bytes: {line[:20]!r}")
        line += _recv_exactly(conn, 1)
    return line


@dataclass
class Server:
    """A TCP server on 127.0.0.1 in a thread, one thread per connection.

    ``proxy``: read a PROXY header first and record it. ``banner``: then send this
    greeting, as SSH or SMTP servers do. ``tls``: then run a TLS
    handshake as the server. ``http_status``: then answer one HTTP request. After
    that the connection is read until the client closes it.
    """

    proxy: bool = False
    banner: bytes = b""
    tls: ssl.SSLContext | None = None
    http_status: int | None = None
    port: int = 0
    seen: list[Seen] = field(default_factory=list)
    _sock: socket.socket | None = None
    _thread: threading.Thread | None = None
    _stopping: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Server:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(16)
        sock.settimeout(0.05)
        self.port = sock.getsockname()[1]
        self._sock = sock
        self._stopping.clear()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def only_connection(self) -> Seen:
        """The one connection this server had, once the server is done with it; a
        tcp check returns as soon as it connected, maybe before the accept."""
        deadline = time.monotonic() + 5
        while not self.seen and time.monotonic() < deadline:
            time.sleep(0.01)
        (seen,) = self.seen
        return seen.wait()

    @property
    def address(self) -> ServerConfig:
        return ServerConfig("127.0.0.1", self.port)

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            try:
                conn, peer = self._sock.accept()
            except TimeoutError:
                continue
            seen = Seen(peer=peer)
            self.seen.append(seen)
            threading.Thread(target=self._serve, args=(conn, seen), daemon=True).start()

    def _serve(self, conn: socket.socket, seen: Seen) -> None:
        conn.settimeout(5)
        with contextlib.ExitStack() as stack:
            stack.callback(seen.done.set)
            stack.callback(conn.close)
            try:
                if self.proxy:
                    seen.preamble = read_proxy_preamble(conn)
                if self.banner:
                    conn.sendall(self.banner)
                if self.tls is not None:
                    try:
                        conn = self.tls.wrap_socket(conn, server_side=True)
                    except (ssl.SSLError, OSError) as exc:
                        seen.tls_error = str(exc)
                        return
                    stack.callback(conn.close)
                if self.http_status is not None:
                    request = b""
                    while b"\r\n\r\n" not in request:
                        chunk = conn.recv(4096)
                        if not chunk:
                            return
                        request += chunk
                    conn.sendall(
                        f"HTTP/1.1 {self.http_status} X\r\nContent-Length: 0\r\n"
                        "Connection: close\r\n\r\n".encode()
                    )
                    return
                while conn.recv(4096):
                    pass
            except (OSError, ValueError) as exc:
                seen.error = str(exc)


@pytest.fixture
def servers() -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def make(**kw: object) -> Server:
        server = Server(**kw)  # type: ignore[arg-type]
        started.append(server)
        return server.start()

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def tls_server_context(pki: Pki) -> ssl.SSLContext:
    """The server side: the ECDSA certificate for localhost, example.test, *.example.test."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.ecdsa.cert_file, pki.ecdsa.key_file)
    return ctx


@pytest.fixture(scope="module")
def other_ca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA that issued none of the test certificates."""
    cert_file, _ = LocalCA.create("an unrelated CA").write(tmp_path_factory.mktemp("other-ca"))
    return cert_file


def check(kind: Literal["tcp", "tls", "http"] = "tcp", **kw: object) -> HealthCheckConfig:
    values: dict[str, object] = {"interval": 2.0, "timeout": 1.0}
    values.update(kw)
    return HealthCheckConfig(kind=kind, **values)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- tcp


def test_tcp_check_passes_against_a_listening_port(
    run: Run, servers: Callable[..., Server]
) -> None:
    server = servers()
    assert run(probe(server.address, check("tcp"), None, "")) == (True, "")


def test_tcp_check_of_a_closed_port_says_connection_refused(run: Run) -> None:
    closed = ServerConfig("127.0.0.1", free_port())
    assert run(probe(closed, check("tcp"), None, "")) == (False, "connect: connection refused")


# --------------------------------------------------------------------------- tls


def test_tls_check_without_verification_passes(
    run: Run, servers: Callable[..., Server], tls_server_context: ssl.SSLContext
) -> None:
    server = servers(tls=tls_server_context)
    # None: the probe builds a non-verifying context from the check itself
    assert run(probe(server.address, check("tls"), None, "")) == (True, "")
    assert server.only_connection().tls_error == ""


def test_tls_check_verifies_against_the_ca_file_and_host(
    run: Run,
    servers: Callable[..., Server],
    tls_server_context: ssl.SSLContext,
    pki: Pki,
) -> None:
    server = servers(tls=tls_server_context)
    verified = check("tls", tls_verify=True, ca_file=pki.ca_file, host="localhost")
    assert run(probe(server.address, verified, None, "")) == (True, "")
    # without host, the backend's server_name is the name verified
    by_server_name = check("tls", tls_verify=True, ca_file=pki.ca_file)
    assert run(probe(server.address, by_server_name, None, "www.example.test")) == (True, "")


def test_tls_check_against_another_ca_fails_with_the_reason(
    run: Run,
    servers: Callable[..., Server],
    tls_server_context: ssl.SSLContext,
    other_ca_file: Path,
) -> None:
    server = servers(tls=tls_server_context)
    ok, why = run(
        probe(
            server.address,
            check("tls", tls_verify=True, ca_file=other_ca_file, host="localhost"),
            None,
            "",
        )
    )
    assert not ok
    assert why.startswith("TLS handshake: certificate verification failed: "), why
    assert "unable to get local issuer certificate" in why


def test_tls_check_against_the_wrong_name_fails_with_the_reason(
    run: Run,
    servers: Callable[..., Server],
    tls_server_context: ssl.SSLContext,
    pki: Pki,
) -> None:
    server = servers(tls=tls_server_context)
    # no host and no server_name: the server's IP address is verified, which the
    # certificate does not hold
    ok, why = run(
        probe(server.address, check("tls", tls_verify=True, ca_file=pki.ca_file), None, "")
    )
    assert not ok
    assert "certificate verification failed" in why
    assert "127.0.0.1" in why


def test_tls_check_of_a_server_that_does_not_speak_tls(
    run: Run, servers: Callable[..., Server]
) -> None:
    server = servers(banner=b"SSH-2.0-OpenSSH_9.2\r\n")
    # the banner ends the handshake at once; the timeout only has to outlast a busy CI box
    ok, why = run(probe(server.address, check("tls", timeout=5.0, interval=10.0), None, ""))
    assert not ok
    assert why.startswith("TLS handshake failed: the server does not speak TLS"), why


def test_a_banner_that_arrives_before_the_handshake_reaches_the_tls_layer(
    run: Run, servers: Callable[..., Server]
) -> None:
    """The race behind a flaky CI run, made certain: the banner is in the socket
    before ``start_tls`` is called. A stream that kept reading would have buffered it
    where OpenSSL never looks, and the handshake would wait for the timeout."""
    server = servers(banner=b"SSH-2.0-OpenSSH_9.2\r\n")

    async def scenario() -> str:
        _, writer = await _open_connection(server.address, hold_reading=True)
        try:
            await asyncio.sleep(0.3)  # the banner has arrived by now
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            async with asyncio.timeout(5):
                with pytest.raises(ssl.SSLError) as caught:
                    await writer.start_tls(context)
            return str(caught.value.reason)
        finally:
            writer.transport.abort()

    assert run(scenario()) == "WRONG_VERSION_NUMBER"


def test_tls_check_of_a_silent_server_times_out(run: Run, servers: Callable[..., Server]) -> None:
    server = servers()  # accepts, never answers the ClientHello
    ok, why = run(probe(server.address, check("tls", timeout=0.3), None, ""))
    assert (ok, why) == (False, "TLS handshake: no answer within 0.3s")


def test_health_check_context_follows_the_check_and_the_backend(pki: Pki) -> None:
    def backend(
        tls: Literal["off", "insecure", "verify"], health: HealthCheckConfig
    ) -> BackendConfig:
        return BackendConfig(
            name="b",
            servers=(),
            tls=tls,
            ca_file=pki.ca_file if tls == "verify" else None,
            health=health,
        )

    assert health_check_context(backend("off", check("tcp"))) is None
    assert health_check_context(backend("off", check("http"))) is None
    plain_tls = health_check_context(backend("off", check("tls")))
    assert plain_tls is not None
    assert plain_tls.verify_mode == ssl.CERT_NONE
    verifying = health_check_context(
        backend("off", check("tls", tls_verify=True, ca_file=pki.ca_file))
    )
    assert verifying is not None
    assert verifying.verify_mode == ssl.CERT_REQUIRED
    assert verifying.check_hostname
    # a tls = "verify" backend's checks verify, as its requests do
    strict = health_check_context(backend("verify", check("http")))
    assert strict is not None
    assert strict.verify_mode == ssl.CERT_REQUIRED
    insecure = health_check_context(backend("insecure", check("http")))
    assert insecure is not None
    assert insecure.verify_mode == ssl.CERT_NONE


def test_http_check_over_tls_verifies_with_the_context(
    run: Run,
    servers: Callable[..., Server],
    tls_server_context: ssl.SSLContext,
    pki: Pki,
) -> None:
    server = servers(tls=tls_server_context, http_status=204)
    health = check("http", path="/healthz", tls_verify=True, ca_file=pki.ca_file)
    b = BackendConfig(name="b", servers=(server.address,), tls="insecure", health=health)
    ctx = health_check_context(b)
    assert run(probe(server.address, health, ctx, "example.test")) == (True, "")
    ok, why = run(probe(server.address, health, ctx, "nope.invalid"))
    assert not ok
    assert "certificate verification failed" in why


# ------------------------------------------------------------------------- PROXY


def _assert_local_header(seen: Seen, mode: ProxyMode, server: Server, crc32c: bool) -> None:
    if mode == "v2":
        assert seen.preamble == build_v2(None, None, command="LOCAL", crc32c=crc32c)
        header = parse_proxy_header(seen.preamble)
        assert isinstance(header, ProxyHeader)
        assert (header.version, header.command, header.source) == (2, "LOCAL", None)
        assert any(t == 0x03 for t, _ in header.tlvs) is crc32c  # PP2_TYPE_CRC32C
    else:
        # v1 has no LOCAL: the check's own endpoints, as the server sees them
        client_ip, client_port = seen.peer
        expected = f"PROXY TCP4 {client_ip} 127.0.0.1 {client_port} {server.port}\r\n"
        assert seen.preamble == expected.encode()


@pytest.mark.parametrize("mode", ["v1", "v2"])
@pytest.mark.parametrize("kind", ["tcp", "tls", "http"])
def test_every_check_sends_the_proxy_header_first(
    run: Run,
    servers: Callable[..., Server],
    tls_server_context: ssl.SSLContext,
    pki: Pki,
    mode: ProxyMode,
    kind: Literal["tcp", "tls", "http"],
) -> None:
    """The server reads the header in clear text, then (tls) completes a verified
    handshake or (http) answers: the header came first and nothing else did."""
    server = servers(
        proxy=True,
        tls=tls_server_context if kind == "tls" else None,
        http_status=204 if kind == "http" else None,
    )
    extra: dict[str, object] = {}
    if kind == "tls":
        extra = {"tls_verify": True, "ca_file": pki.ca_file, "host": "localhost"}
    result = run(probe(server.address, check(kind, **extra), None, "", send_proxy_protocol=mode))
    assert result == (True, "")
    seen = server.only_connection()
    assert (seen.tls_error, seen.error) == ("", "")
    _assert_local_header(seen, mode, server, crc32c=False)


def test_proxy_v2_header_carries_crc32c_when_configured(
    run: Run, servers: Callable[..., Server], tls_server_context: ssl.SSLContext
) -> None:
    server = servers(proxy=True, tls=tls_server_context)
    result = run(
        probe(
            server.address,
            check("tls"),
            None,
            "",
            send_proxy_protocol="v2",
            proxy_protocol_crc32c=True,
        )
    )
    assert result == (True, "")
    _assert_local_header(server.only_connection(), "v2", server, crc32c=True)


def test_tls_check_without_the_expected_proxy_header_fails(
    run: Run, servers: Callable[..., Server], tls_server_context: ssl.SSLContext
) -> None:
    """The reverse: a server that waits for a header gets a ClientHello instead and
    drops the connection; the check says where it failed."""
    server = servers(proxy=True, tls=tls_server_context)
    ok, why = run(probe(server.address, check("tls", timeout=0.5), None, ""))
    assert (ok, why) == (False, "TLS handshake: connection closed by the server")
    assert "no PROXY v1 line within 107 bytes" in server.only_connection().error


# -------------------------------------------------------------------- rise / fall


def _backend(server: Server, **health: object) -> BackendConfig:
    values: dict[str, object] = {"interval": 0.05, "timeout": 0.04, "rise": 2, "fall": 2}
    values.update(health)
    return BackendConfig(name="app", servers=(server.address,), health=check("tcp", **values))


def test_checker_goes_down_after_fall_and_up_after_rise(
    run: Run, servers: Callable[..., Server], caplog: pytest.LogCaptureFixture
) -> None:
    server = servers()
    changes: list[tuple[str, str, bool]] = []
    checker = HealthChecker(_backend(server), server.address, lambda *c: changes.append(c))
    address = server.address.address

    async def scenario() -> list[bool | None]:
        steps = [await checker.check_once()]  # up, stays up
        server.stop()
        steps += [await checker.check_once(), await checker.check_once()]  # fall = 2
        steps.append(await checker.check_once())  # still down: no change
        server.start()  # the same port again
        steps += [await checker.check_once(), await checker.check_once()]  # rise = 2
        return steps

    with caplog.at_level(logging.WARNING, logger="tlsgate.health"):
        steps = run(scenario())
    assert steps == [None, None, False, None, None, True]
    assert changes == [("app", address, False), ("app", address, True)]
    assert [r.getMessage() for r in caplog.records] == [
        f"backend app: server {address} is DOWN (connect: connection refused)",
        f"backend app: server {address} is UP",
    ]


def test_checker_task_reports_changes_until_stopped(
    run: Run, servers: Callable[..., Server]
) -> None:
    server = servers()
    changes: list[bool] = []

    async def scenario() -> None:
        changed = asyncio.Event()

        def on_change(backend: str, address: str, up: bool) -> None:
            changes.append(up)
            changed.set()

        checker = HealthChecker(_backend(server, rise=1, fall=1), server.address, on_change)
        checker.start()
        try:
            server.stop()
            async with asyncio.timeout(5):
                await changed.wait()
            changed.clear()
            server.start()
            async with asyncio.timeout(5):
                await changed.wait()
        finally:
            checker.stop()
            assert checker.task is not None
            with contextlib.suppress(asyncio.CancelledError):
                await checker.task

    run(scenario())
    assert changes == [False, True]
