"""PROXY protocol: accepted on every listener kind, sent to every backend kind.

Accepting (``accept_proxy_protocol = true``, ``trusted_proxies = ["127.0.0.2/32"]``):
clients connect from 127.0.0.2 (the "load balancer in front") or 127.0.0.3 (anyone
else) and write the header themselves, built with ``tlsgate.proto.proxy_protocol``
(whose bytes the unit tests pin to the spec and the peers tests to HAProxy). A
header from anyone else is refused, a missing header is refused, a v2 ``LOCAL``
header is accepted, and the address a header carries is what X-Forwarded-For,
Forwarded, ip_hash, the access log and a further PROXY header all use.

Sending (``send_proxy_protocol``): ``ProxyServer`` reads the header a backend gets
byte-exactly (the framing written from the spec, not with tlsgate's code), parses
it with ``parse_proxy_header`` (which checks a CRC32C when one is present), and
then records the payload, says its name, or answers HTTP requests. Chains of two
tlsgates pass the first client's address on hop by hop.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import psutil
import pytest
from appserver import AppServer
from harness import (
    GateFactory,
    Pki,
    RawConn,
    ThreadedTcpServer,
    Tlsgate,
    client_context,
    free_port,
    request_bytes,
    table,
    wait_until,
)

from tlsgate.proto.proxy_protocol import (
    PP2_TYPE_CRC32C,
    V2_SIGNATURE,
    ProxyHeader,
    build_v1,
    build_v2,
    parse_proxy_header,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

TRUSTED = "127.0.0.2"
UNTRUSTED = "127.0.0.3"
REAL_CLIENT = ("203.0.113.9", 40000)
REAL_CLIENT6 = ("2001:db8::7", 40000)
ADVERTISED = ("192.0.2.1", 443)  # the destination the LB in front says the client used
ADVERTISED6 = ("2001:db8::1", 443)

Mode = Literal["record", "name", "http"]


# --------------------------------------------------------------------------- servers


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def read_proxy_preamble(sock: socket.socket) -> bytes:
    """The PROXY header at the start of ``sock``, without reading a byte past it."""
    first = _recv_exactly(sock, 1)
    if first == b"\r":  # v2: 12-byte signature, ver/cmd, family, 2-byte length
        head = first + _recv_exactly(sock, 15)
        if head[:12] != V2_SIGNATURE:
            raise ValueError(f"not a PROXY v2 signature: {head!r}")
        return head + _recv_exactly(sock, int.from_bytes(head[14:16], "big"))
    line = first  # v1: one line of at most 107 bytes ending with CRLF
    while not line.endswith(b"\r\n"):
        if len(line) >= 107:
            raise ValueError(f"no PROXY v1 line within 107 bytes: {line[:20]!r}")
        line += _recv_exactly(sock, 1)
    return line


@dataclass
class Seen:
    peer: tuple[str, int]
    raw_header: bytes = b""
    header: ProxyHeader | None = None
    data: bytearray = field(default_factory=bytearray)
    requests: int = 0
    error: str = ""
    done: threading.Event = field(default_factory=threading.Event)


class ProxyServer(ThreadedTcpServer):
    """A server on 127.0.0.1 that (optionally) reads a PROXY header first, then:
    ``record`` keeps every byte until EOF; ``name`` sends its name, then reads to
    EOF; ``http`` answers each request on the connection with its name."""

    def __init__(self, name: str, mode: Mode, *, expect_proxy: bool = True) -> None:
        self.mode = mode
        self.expect_proxy = expect_proxy
        self.seen: list[Seen] = []
        super().__init__(name=name)

    def handle(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        seen = Seen(peer)
        self.seen.append(seen)
        self._serve(sock, seen)

    def _serve(self, sock: socket.socket, seen: Seen) -> None:
        try:
            if self.expect_proxy:
                seen.raw_header = read_proxy_preamble(sock)
                parsed = parse_proxy_header(seen.raw_header)
                assert isinstance(parsed, ProxyHeader), parsed
                assert parsed.size == len(seen.raw_header)
                seen.header = parsed
            if self.mode == "http":
                self._http(sock, seen)
                return
            if self.mode == "name":
                sock.sendall(self.name.encode())
            while data := sock.recv(65536):
                seen.data += data
        except (OSError, ValueError, AssertionError) as exc:
            seen.error = f"{type(exc).__name__}: {exc}"
        finally:
            with contextlib.suppress(OSError):
                sock.close()
            seen.done.set()

    def _http(self, sock: socket.socket, seen: Seen) -> None:
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                data = sock.recv(65536)
                if not data:
                    return
                buf += data
            head, _, buf = buf.partition(b"\r\n\r\n")
            seen.data += head + b"\r\n\r\n"
            seen.requests += 1
            body = self.name.encode()
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    def only(self, timeout: float = 10.0) -> Seen:
        wait_until(lambda: self.seen, timeout, what=f"a connection to {self.name}")
        (seen,) = self.seen
        assert seen.done.wait(timeout), f"{self.name} did not finish the connection"
        assert seen.error == "", seen.error
        return seen


ServerFactory = Callable[..., ProxyServer]


@pytest.fixture
def servers() -> Iterator[ServerFactory]:
    started: list[ProxyServer] = []

    def make(name: str, mode: Mode, *, expect_proxy: bool = True) -> ProxyServer:
        server = ProxyServer(name, mode, expect_proxy=expect_proxy)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


# --------------------------------------------------------------------------- clients


def hello_bytes(server_hostname: str, alpn: list[str] | None = None) -> bytes:
    """A real TLS ClientHello (made by ``ssl`` on MemoryBIOs)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def connect(port: int, source: str) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))


def closed_within(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except (ConnectionResetError, ssl.SSLError):
        return True


def read_to_eof(sock: socket.socket) -> bytes:
    out = b""
    while data := sock.recv(65536):
        out += data
    return out


def v1(source: tuple[str, int] = REAL_CLIENT, dest: tuple[str, int] = ADVERTISED) -> bytes:
    return build_v1(source, dest)


def v2(source: tuple[str, int] = REAL_CLIENT, dest: tuple[str, int] = ADVERTISED) -> bytes:
    return build_v2(source, dest)


def header_of(version: str, source: tuple[str, int], dest: tuple[str, int]) -> bytes:
    return v1(source, dest) if version == "v1" else v2(source, dest)


def header_field(echo: dict[str, Any], name: str) -> str | None:
    values = [v for k, v in echo["headers"] if k.lower() == name.lower()]
    return ", ".join(values) if values else None


# --------------------------------------------------------------------------- stack


@dataclass
class Stack:
    gate: Tlsgate
    ports: dict[str, int]
    pki: Pki
    app: AppServer
    rec: ProxyServer  # v2 + CRC32C, records
    rec1: ProxyServer  # v1, records
    web: ProxyServer  # v2, answers HTTP
    h1: ProxyServer  # ip_hash pair, no PROXY header, say their names
    h2: ProxyServer

    def proxied_http(
        self, listener: str, header: bytes, *, source: str = TRUSTED, tls: bool = False
    ) -> RawConn:
        """A client that writes ``header`` first, then (``tls``) starts TLS for localhost."""
        conn = RawConn(self.ports[listener], source=source)
        conn.send(header)
        if tls:
            conn.sock = client_context(self.pki.ca_pem).wrap_socket(
                conn.sock, server_hostname="localhost"
            )
        return conn

    def nothing_forwarded(self) -> None:
        assert self.app.state.conn_count == 0, "the app server got a connection"
        for server in (self.rec, self.rec1, self.web, self.h1, self.h2):
            assert not server.seen, f"{server.name} got a connection"


@pytest.fixture
def stack(
    pki: Pki, make_gate: GateFactory, make_app: Callable[..., AppServer], servers: ServerFactory
) -> Stack:
    app = make_app("app")
    rec = servers("rec", "record")
    rec1 = servers("rec1", "record")
    web = servers("web", "http")
    h1 = servers("h1", "name", expect_proxy=False)
    h2 = servers("h2", "name", expect_proxy=False)
    ports = {name: free_port() for name in ("tcp", "pt", "http", "https", "hash", "web")}
    trust: dict[str, object] = {
        "accept_proxy_protocol": True,
        "trusted_proxies": [f"{TRUSTED}/32"],
        "header_timeout": "3s",
    }

    def listener(name: str, protocol: str, backend: str, **kw: object) -> str:
        return table(
            "listeners",
            name=name,
            bind=[f"127.0.0.1:{ports[name]}"],
            protocol=protocol,
            backend=backend,
            **kw,
        )

    config = (
        pki.toml()
        + listener("tcp", "tcp", "rec", **trust)
        + listener("pt", "tls-passthrough", "rec", **trust)
        + listener("http", "http", "app", **trust)
        + listener("https", "https", "app", default_certificate="main-ecdsa", **trust)
        + listener("hash", "tcp", "hash", **trust)
        # no PROXY header in: the https listener's HTTP backend gets one out
        + listener("web", "https", "web", default_certificate="main-ecdsa")
        + table("routes", listener="pt", hosts=["exact.test"], backend="rec1")
        + table(
            "backends",
            name="rec",
            servers=[rec.address],
            send_proxy_protocol="v2",
            proxy_protocol_crc32c=True,
        )
        + table("backends", name="rec1", servers=[rec1.address], send_proxy_protocol="v1")
        + table("backends", name="web", servers=[web.address], send_proxy_protocol="v2")
        + table("backends", name="app", servers=[app.address])
        + table("backends", name="hash", servers=[h1.address, h2.address], balance="ip_hash")
    )
    return Stack(make_gate(config), ports, pki, app, rec, rec1, web, h1, h2)


# ------------------------------------------------------------------------- trust


def _payload(listener: str) -> bytes:
    if listener in ("tcp", "hash"):
        return b"hello backend"
    if listener == "pt":
        return hello_bytes("exact.test")
    return request_bytes("GET", "/echo", "localhost")


@pytest.mark.parametrize("listener", ["tcp", "pt", "http", "https"])
def test_a_valid_header_from_an_untrusted_peer_is_refused(stack: Stack, listener: str) -> None:
    header = v1(dest=("127.0.0.1", stack.ports[listener]))
    with connect(stack.ports[listener], UNTRUSTED) as sock:
        with contextlib.suppress(OSError):
            # https: a ClientHello after the header (it is never read)
            sock.sendall(header + (hello_bytes("localhost") if listener == "https" else b""))
            sock.sendall(_payload(listener) if listener != "https" else b"")
        assert closed_within(sock, 5)
    if listener in ("tcp", "pt"):
        entry = stack.gate.wait_access_log(lambda e: e.get("listener") == listener)
        assert entry["client_ip"] == UNTRUSTED  # the header was not believed
        assert entry["backend"] is None
        assert "trusted_proxies" in entry["close_reason"], entry
    else:
        wait_until(
            lambda: f"closing a connection from {UNTRUSTED}" in stack.gate.error_log_text(),
            5,
            what="the refusal in the error log",
        )
    stack.nothing_forwarded()


@pytest.mark.parametrize("listener", ["tcp", "pt", "http", "https"])
def test_a_trusted_peer_without_a_header_is_refused(stack: Stack, listener: str) -> None:
    payload = hello_bytes("localhost") if listener == "https" else _payload(listener)
    with connect(stack.ports[listener], TRUSTED) as sock:
        sock.sendall(payload)
        assert closed_within(sock, 5)
    if listener in ("tcp", "pt"):
        entry = stack.gate.wait_access_log(lambda e: e.get("listener") == listener)
        assert entry["client_ip"] == TRUSTED
        assert str(entry["close_reason"]).startswith("bad PROXY header"), entry
    else:
        wait_until(
            lambda: "bad PROXY header" in stack.gate.error_log_text(),
            5,
            what="the refusal in the error log",
        )
    stack.nothing_forwarded()


def test_a_trusted_peer_that_sends_nothing_is_closed_after_header_timeout(stack: Stack) -> None:
    with connect(stack.ports["tcp"], TRUSTED) as sock:
        assert not closed_within(sock, 2.0)
        assert closed_within(sock, 3.0)
    entry = stack.gate.wait_access_log(lambda e: e.get("listener") == "tcp")
    assert entry["close_reason"] == "timeout: no complete PROXY header within 3s", entry
    stack.nothing_forwarded()


def test_v2_local_is_accepted_and_the_peer_is_the_client(stack: Stack) -> None:
    """A v2 LOCAL header (an LB's own health check) carries no client: the real
    endpoints are used."""
    local = build_v2(None, None, command="LOCAL")
    with connect(stack.ports["tcp"], TRUSTED) as sock:
        sock.sendall(local + b"health?")
        sock.shutdown(socket.SHUT_WR)
        assert read_to_eof(sock) == b""
        client = sock.getsockname()
    seen = stack.rec.only()
    assert bytes(seen.data) == b"health?"
    assert seen.header is not None
    assert seen.header.command == "PROXY"
    assert seen.header.source == client
    entry = stack.gate.wait_access_log(lambda e: e.get("listener") == "tcp")
    assert (entry["client_ip"], entry["peer_ip"]) == (TRUSTED, TRUSTED)

    with stack.proxied_http("http", local) as conn:
        conn.send(request_bytes("GET", "/echo", "localhost"))
        resp = conn.read_response()
    assert resp.status == 200
    assert header_field(resp.json(), "x-forwarded-for") == TRUSTED


def test_a_bare_v2_local_health_check_is_not_an_error(stack: Stack) -> None:
    """HAProxy-style: the header, then the checker hangs up."""
    with connect(stack.ports["tcp"], TRUSTED) as sock:
        sock.sendall(build_v2(None, None, command="LOCAL"))
        sock.shutdown(socket.SHUT_WR)
        assert closed_within(sock, 5)
    entry = stack.gate.wait_access_log(lambda e: e.get("listener") == "tcp")
    assert "PROXY" not in entry["close_reason"], entry
    assert entry["client_ip"] == TRUSTED


# -------------------------------------------------- the header's address is used


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("listener", ["http", "https"])
@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_the_header_address_is_the_forwarded_client(
    stack: Stack, version: str, listener: str, family: str
) -> None:
    source, dest = (REAL_CLIENT, ADVERTISED) if family == "ipv4" else (REAL_CLIENT6, ADVERTISED6)
    header = header_of(version, source, dest)
    with stack.proxied_http(listener, header, tls=listener == "https") as conn:
        for _ in range(2):  # the whole keep-alive connection is that client's
            conn.send(request_bytes("GET", "/echo", "www.example.test"))
            resp = conn.read_response()
            assert resp.status == 200
            echo = resp.json()
            assert header_field(echo, "x-forwarded-for") == source[0]
            assert header_field(echo, "x-forwarded-port") == str(dest[1])
            forwarded = header_field(echo, "forwarded") or ""
            assert source[0] in forwarded, forwarded
            assert TRUSTED not in json.dumps(echo["headers"])
    entry = stack.gate.wait_access_log(lambda e: e.get("listener") == listener)
    assert entry["client_ip"] == source[0]
    assert entry["peer_ip"] == TRUSTED


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_the_header_address_goes_into_a_further_proxy_header(
    stack: Stack, version: str, family: str
) -> None:
    source, dest = (REAL_CLIENT, ADVERTISED) if family == "ipv4" else (REAL_CLIENT6, ADVERTISED6)
    with connect(stack.ports["tcp"], TRUSTED) as sock:
        sock.sendall(header_of(version, source, dest) + b"payload after the header")
        sock.shutdown(socket.SHUT_WR)
        assert read_to_eof(sock) == b""
    seen = stack.rec.only()
    header = seen.header
    assert header is not None
    assert (header.version, header.command) == (2, "PROXY")
    assert header.protocol == ("TCP4" if family == "ipv4" else "TCP6")
    assert header.source == source
    assert header.destination == dest
    # proxy_protocol_crc32c = true: the parser verified the checksum it found
    assert any(t == PP2_TYPE_CRC32C for t, _ in header.tlvs)
    assert bytes(seen.data) == b"payload after the header"
    entry = stack.gate.wait_access_log(lambda e: e.get("listener") == "tcp")
    assert (entry["client_ip"], entry["client_port"], entry["peer_ip"]) == (*source, TRUSTED)


def test_passthrough_passes_the_address_on_in_v1_and_keeps_the_hello(stack: Stack) -> None:
    hello = hello_bytes("exact.test", ["h2", "http/1.1"])
    with connect(stack.ports["pt"], TRUSTED) as sock:
        sock.sendall(v2() + hello)
        sock.shutdown(socket.SHUT_WR)
        assert read_to_eof(sock) == b""
    seen = stack.rec1.only()
    assert seen.raw_header == b"PROXY TCP4 203.0.113.9 192.0.2.1 40000 443\r\n"
    assert bytes(seen.data) == hello
    entry = stack.gate.wait_access_log(lambda e: e.get("listener") == "pt")
    assert (entry["client_ip"], entry["sni"], entry["backend"]) == (
        REAL_CLIENT[0],
        "exact.test",
        "rec1",
    )


def test_passthrough_v2_carries_alpn_and_authority_tlvs(stack: Stack) -> None:
    hello = hello_bytes("Other.Example.TEST", ["h2", "http/1.1"])
    with connect(stack.ports["pt"], TRUSTED) as sock:
        sock.sendall(v1() + hello)
        sock.shutdown(socket.SHUT_WR)
        assert read_to_eof(sock) == b""
    seen = stack.rec.only()
    header = seen.header
    assert header is not None
    assert header.source == REAL_CLIENT
    assert header.authority == "other.example.test"
    assert header.alpn == b"h2"  # the client's first choice: passthrough can't see the answer
    assert any(t == PP2_TYPE_CRC32C for t, _ in header.tlvs)
    assert bytes(seen.data) == hello


def test_ip_hash_balances_on_the_header_address(stack: Stack) -> None:
    picked: dict[str, set[bytes]] = {}
    for i in range(16):
        source = (f"198.51.100.{i + 1}", 1000 + i)
        for _ in range(2):
            with connect(stack.ports["hash"], TRUSTED) as sock:
                sock.sendall(v1(source))
                name = _recv_exactly(sock, 2)
            picked.setdefault(source[0], set()).add(name)
    # the same client always lands on the same server...
    assert all(len(names) == 1 for names in picked.values()), picked
    # ...and the clients are spread although every connection came from one peer
    assert set().union(*picked.values()) == {b"h1", b"h2"}, picked


# ------------------------------------------------------- HTTP backends get headers


def test_an_http_backend_gets_one_header_per_client_connection(stack: Stack) -> None:
    ctx = client_context(stack.pki.ca_pem)
    ports: dict[str, int] = {}
    for source in (TRUSTED, UNTRUSTED):
        with RawConn(
            stack.ports["web"], tls=ctx, server_hostname="localhost", source=source
        ) as conn:
            ports[source] = conn.sock.getsockname()[1]
            for _ in range(3):
                conn.send(request_bytes("GET", "/", "localhost"))
                resp = conn.read_response()
                assert (resp.status, resp.body) == (200, b"web")
    wait_until(lambda: len(stack.web.seen) == 2, 10, what="two upstream connections")
    by_client: dict[str, Seen] = {}
    for seen in stack.web.seen:
        assert seen.header is not None, seen.error
        assert seen.header.source is not None
        by_client[seen.header.source[0]] = seen
    assert set(by_client) == {TRUSTED, UNTRUSTED}  # never one client's header for another
    for source, seen in by_client.items():
        header = seen.header
        assert header is not None
        assert header.source == (source, ports[source])
        assert header.destination == ("127.0.0.1", stack.ports["web"])
        assert header.authority == "localhost"
        assert header.alpn == b"http/1.1"
        assert not any(t == PP2_TYPE_CRC32C for t, _ in header.tlvs)  # not asked for
        assert seen.requests == 3  # kept alive, for this client only


# --------------------------------------------------------------- tlsgate chains


def test_a_chain_of_two_tlsgates_keeps_the_first_client(
    make_gate: GateFactory, servers: ServerFactory
) -> None:
    rec = servers("rec", "record")
    front, back = free_port(), free_port()
    second = make_gate(
        table(
            "listeners",
            name="back",
            bind=[f"127.0.0.1:{back}"],
            protocol="tcp",
            backend="rec",
            accept_proxy_protocol=True,
            trusted_proxies=["127.0.0.1/32"],
        )
        + table("backends", name="rec", servers=[rec.address], send_proxy_protocol="v1")
    )
    first = make_gate(
        table("listeners", name="front", bind=[f"127.0.0.1:{front}"], protocol="tcp", backend="b")
        + table(
            "backends",
            name="b",
            servers=[f"127.0.0.1:{back}"],
            send_proxy_protocol="v2",
            proxy_protocol_crc32c=True,
        )
    )
    with connect(front, UNTRUSTED) as sock:
        client = sock.getsockname()
        sock.sendall(b"through two hops")
        sock.shutdown(socket.SHUT_WR)
        assert read_to_eof(sock) == b""
    seen = rec.only()
    expected = f"PROXY TCP4 {client[0]} 127.0.0.1 {client[1]} {front}\r\n".encode()
    assert seen.raw_header == expected
    assert bytes(seen.data) == b"through two hops"
    entry = second.wait_access_log(lambda e: e.get("listener") == "back")
    assert (entry["client_ip"], entry["client_port"], entry["peer_ip"]) == (
        *client,
        "127.0.0.1",
    )
    first_entry = first.wait_access_log(lambda e: e.get("listener") == "front")
    assert first_entry["client_ip"] == UNTRUSTED


@pytest.mark.parametrize("listener", ["tcp", "http"])
def test_a_header_cut_short_by_a_fin_is_closed_at_once_without_spinning(
    stack: Stack, listener: str
) -> None:
    (worker,) = stack.gate.worker_pids()
    before = psutil.Process(worker).cpu_times()
    with connect(stack.ports[listener], TRUSTED) as sock:  # header_timeout 3s
        sock.sendall(v1()[:20])
        sock.shutdown(socket.SHUT_WR)
        t0 = time.monotonic()
        assert closed_within(sock, 5)
        elapsed = time.monotonic() - t0
    after = psutil.Process(worker).cpu_times()
    cpu = (after.user - before.user) + (after.system - before.system)
    assert elapsed < 1.0, elapsed
    assert cpu < 0.5, f"the worker used {cpu:.2f}s of CPU on one half-open connection"


def test_a_header_and_hello_in_one_byte_segments_are_read_exactly(stack: Stack) -> None:
    """The PROXY header is consumed to its last byte and not one byte further; the
    ClientHello after it is peeked, not consumed, however the bytes arrive."""
    hello = hello_bytes("exact.test", ["http/1.1"])
    data = v2(REAL_CLIENT6, ADVERTISED6) + hello
    with connect(stack.ports["pt"], TRUSTED) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(data)):
            sock.send(data[i : i + 1])
            time.sleep(0.001)
        sock.shutdown(socket.SHUT_WR)
        assert read_to_eof(sock) == b""
    seen = stack.rec1.only()
    assert seen.raw_header == b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 443\r\n"
    assert bytes(seen.data) == hello
