"""``protocol = "tls-passthrough"``: route by SNI without decrypting, replay the bytes.

Behind tlsgate are Python ``ssl`` servers in threads, each holding its own
certificate from the session's LocalCA and answering one HTTP request with its
name, and recorders that keep every byte they receive (to prove what reached a
backend, byte for byte). Clients are curl (verifying with ``--cacert`` and
``--resolve``, as a user would), Python ``ssl`` sockets, and raw sockets that send
a real ClientHello (made with ``ssl.MemoryBIO``) however the test wants: one byte
per TCP segment, cut short, corrupted or oversized, and that can then finish the
handshake by pumping the same MemoryBIO.

Listeners of one tlsgate:

* ``pt``: routes exact.test and a.wild.test -> alpha, ``*.wild.test`` -> wild,
  record.test -> a recorder; anything else -> default; no fallback (closes);
  ``header_timeout = "3s"``, ``max_client_hello_size = "1KiB"``.
* ``ptfb``: exact.test -> alpha, default backend, ``fallback_backend`` -> another
  recorder; ``header_timeout = "1s"`` (the timeout tests), the same size limit.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from harness import (
    CertFiles,
    GateFactory,
    Pki,
    ThreadedTcpServer,
    Tlsgate,
    curl,
    dns_names,
    free_port,
    issue_files,
    s_client,
    table,
    wait_until,
)

from tlsgate.ca.local import LocalCA

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

CLIENT = "127.0.0.2"
LIMIT = 1024  # max_client_hello_size of both listeners
GARBAGE = b"GET / HTTP/1.1\r\nHost: exact.test\r\n\r\n"


# --------------------------------------------------------------------------- servers


@dataclass
class Accepted:
    peer: tuple[str, int]
    data: bytearray = field(default_factory=bytearray)
    sni: str | None = None
    alpn: str | None = None
    error: str = ""
    done: threading.Event = field(default_factory=threading.Event)


class ThreadServer(ThreadedTcpServer):
    """A TCP server on 127.0.0.1; each connection is served by ``self.serve`` in a thread."""

    def __init__(self, name: str) -> None:
        self.accepted: list[Accepted] = []
        super().__init__(name=name)

    def handle(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        seen = Accepted(peer)
        self.accepted.append(seen)
        self._run(sock, seen)

    def _run(self, sock: socket.socket, seen: Accepted) -> None:
        try:
            self.serve(sock, seen)
        except (OSError, ssl.SSLError) as exc:
            seen.error = str(exc)
        finally:
            with contextlib.suppress(OSError):
                sock.close()
            seen.done.set()

    def serve(self, sock: socket.socket, seen: Accepted) -> None:
        raise NotImplementedError

    def only(self, timeout: float = 10.0) -> Accepted:
        wait_until(lambda: self.accepted, timeout, what=f"a connection to {self.name}")
        (seen,) = self.accepted
        assert seen.done.wait(timeout), f"{self.name} did not finish the connection"
        return seen


class Recorder(ThreadServer):
    """Keeps every byte until the peer's FIN; sends nothing."""

    def serve(self, sock: socket.socket, seen: Accepted) -> None:
        while data := sock.recv(65536):
            seen.data += data


class TLSApp(ThreadServer):
    """Terminates TLS with its own certificate and answers one request with its name."""

    def __init__(self, name: str, cert: CertFiles) -> None:
        self.cert = cert
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert.cert_file, cert.key_file)
        self.ctx.set_alpn_protocols(["http/1.1"])
        # the SNI each handshake carried, by connection (the callback only records)
        self._sni: dict[int, str | None] = {}
        self.ctx.sni_callback = self._remember_sni
        super().__init__(name)

    def _remember_sni(
        self, conn: ssl.SSLObject | ssl.SSLSocket, name: str | None, _: ssl.SSLContext
    ) -> None:
        self._sni[id(conn)] = name

    def serve(self, sock: socket.socket, seen: Accepted) -> None:
        with self.ctx.wrap_socket(sock, server_side=True) as tls:
            seen.sni = self._sni.pop(id(tls), None)
            seen.alpn = tls.selected_alpn_protocol()
            head = b""
            while b"\r\n\r\n" not in head:
                data = tls.recv(4096)
                if not data:
                    return
                head += data
            body = self.name.encode()
            tls.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )


# --------------------------------------------------------------------------- hellos


def make_tls_client(
    ca_file: Path | None, server_hostname: str | None, alpn: list[str] | None = None
) -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO, bytes]:
    """A client TLS state on MemoryBIOs and the ClientHello it wants to send."""
    if ca_file is not None:
        ctx = ssl.create_default_context(cafile=str(ca_file))
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16", hello[:8]
    return obj, incoming, outgoing, hello


def client_hello(server_hostname: str | None, alpn: list[str] | None = None) -> bytes:
    return make_tls_client(None, server_hostname, alpn)[3]


def big_hello() -> bytes:
    """A real ClientHello over the listeners' 1 KiB limit (a long ALPN list)."""
    hello = client_hello("exact.test", [f"proto-{i:03d}" for i in range(120)])
    assert len(hello) > LIMIT
    return hello


def finish_handshake(
    sock: socket.socket, obj: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO
) -> None:
    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            if outgoing.pending:
                sock.sendall(outgoing.read())
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("closed during the handshake") from None
            incoming.write(data)
    if outgoing.pending:
        sock.sendall(outgoing.read())


def tls_get(
    sock: socket.socket, obj: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO
) -> bytes:
    """Send a GET over the MemoryBIO TLS state; return the whole response."""
    obj.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    sock.sendall(outgoing.read())
    response = b""
    while True:
        try:
            chunk = obj.read(65536)
        except ssl.SSLWantReadError:
            data = sock.recv(65536)
            if not data:
                return response
            incoming.write(data)
            continue
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return response
        if not chunk:
            return response
        response += chunk


def connect(port: int, source: str = CLIENT) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def closed_within(sock: socket.socket, timeout: float) -> bool:
    """True if the peer closes ``sock`` (EOF or RST, no data) within ``timeout``."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


# --------------------------------------------------------------------------- stack


@dataclass
class Stack:
    gate: Tlsgate
    pt: int
    ptfb: int
    pki: Pki
    alpha: TLSApp
    wild: TLSApp
    default: TLSApp
    recorder: Recorder
    fallback: Recorder

    def entry_for(self, sock_name: tuple[str, int], timeout: float = 10.0) -> dict[str, object]:
        """The access log line of the connection made from ``sock_name``."""
        ip, port = sock_name
        return self.gate.wait_access_log(
            lambda e: e.get("client_ip") == ip and e.get("client_port") == port, timeout
        )


@pytest.fixture(scope="module")
def certs(ca: LocalCA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, CertFiles]:
    d = tmp_path_factory.mktemp("pt-certs")
    return {
        "alpha": issue_files(ca, d, "alpha", ("exact.test", "a.wild.test"), "ecdsa-p256"),
        "wild": issue_files(ca, d, "wild", ("*.wild.test",), "ecdsa-p256"),
        "default": issue_files(ca, d, "default", ("unrouted.test",), "rsa-2048"),
    }


@pytest.fixture
def stack(pki: Pki, certs: dict[str, CertFiles], make_gate: GateFactory) -> Iterator[Stack]:
    alpha = TLSApp("alpha", certs["alpha"])
    wild = TLSApp("wild", certs["wild"])
    default = TLSApp("default", certs["default"])
    recorder = Recorder("recorder")
    fallback = Recorder("fallback")
    servers: list[ThreadServer] = [alpha, wild, default, recorder, fallback]
    try:
        pt, ptfb = free_port(), free_port()
        limit = {"max_client_hello_size": "1KiB"}
        config = (
            table(
                "listeners",
                name="pt",
                bind=[f"127.0.0.1:{pt}"],
                protocol="tls-passthrough",
                backend="default",
                header_timeout="3s",
                **limit,
            )
            + table(
                "listeners",
                name="ptfb",
                bind=[f"127.0.0.1:{ptfb}"],
                protocol="tls-passthrough",
                backend="default",
                fallback_backend="fallback",
                header_timeout="1s",
                **limit,
            )
            + table("routes", listener="pt", hosts=["exact.test", "a.wild.test"], backend="alpha")
            + table("routes", listener="pt", hosts=["*.wild.test"], backend="wild")
            + table("routes", listener="pt", hosts=["record.test"], backend="recorder")
            + table("routes", listener="ptfb", hosts=["exact.test"], backend="alpha")
            + "".join(
                table("backends", name=s.name, servers=[s.address])
                for s in (alpha, wild, default, recorder, fallback)
            )
        )
        gate = make_gate(config)
        yield Stack(gate, pt, ptfb, pki, alpha, wild, default, recorder, fallback)
    finally:
        for s in servers:
            s.stop()


# --------------------------------------------------------------------------- routing


@pytest.mark.parametrize(
    ("name", "app"),
    [
        ("exact.test", "alpha"),
        ("x.wild.test", "wild"),
        ("a.wild.test", "alpha"),  # an exact route beats the wildcard
        ("unrouted.test", "default"),  # no route: the listener's backend
    ],
)
def test_sni_routes_to_the_server_holding_that_certificate(
    stack: Stack, name: str, app: str
) -> None:
    url = f"https://{name}:{stack.pt}/"
    res = curl(
        "--cacert",
        str(stack.pki.ca_file),
        "--resolve",
        f"{name}:{stack.pt}:127.0.0.1",
        "--interface",
        CLIENT,
        url,
    )
    assert res.returncode == 0, res.stderr  # curl verified the chain and the name
    assert res.status == 200
    assert res.body == app.encode()
    server: TLSApp = getattr(stack, app)
    seen = server.only()
    assert seen.sni == name  # the ClientHello reached it untouched, SNI and all
    assert seen.alpn == "http/1.1"
    entry = stack.gate.wait_access_log(lambda e: e.get("sni") == name)
    assert entry["client_ip"] == CLIENT
    assert entry["protocol"] == "tls-passthrough"
    assert entry["backend"] == app
    assert entry["server"] == server.address
    assert entry["alpn"] == ["h2", "http/1.1"]  # what curl offered, in its order
    assert entry["bytes_in"] > 0
    assert entry["bytes_out"] > len(app)


def test_each_name_is_served_its_own_certificate(stack: Stack) -> None:
    for name, expected in (
        ("exact.test", ["exact.test", "a.wild.test"]),
        ("x.wild.test", ["*.wild.test"]),
        ("unrouted.test", ["unrouted.test"]),
    ):
        probe = s_client(stack.pt, servername=name, ca_file=stack.pki.ca_file)
        assert probe.handshake_ok, probe.output
        assert probe.cert is not None
        assert dns_names(probe.cert) == expected


def test_alpn_offered_by_the_client_is_in_the_access_log(stack: Stack) -> None:
    obj, incoming, outgoing, hello = make_tls_client(
        stack.pki.ca_file, "exact.test", ["h2", "http/1.1", "acme-tls/1"]
    )
    with connect(stack.pt) as sock:
        sock.sendall(hello)
        finish_handshake(sock, obj, incoming, outgoing)
        assert obj.selected_alpn_protocol() == "http/1.1"
        assert tls_get(sock, obj, incoming, outgoing).endswith(b"\r\n\r\nalpha")
        name = sock.getsockname()
    entry = stack.entry_for(name)
    assert entry["alpn"] == ["h2", "http/1.1", "acme-tls/1"]
    assert entry["sni"] == "exact.test"


# ------------------------------------------------------------------ segmentation


def test_client_hello_in_one_byte_segments_reaches_the_backend_unchanged(stack: Stack) -> None:
    hello = client_hello("record.test", ["http/1.1"])
    with connect(stack.pt) as sock:
        for i in range(len(hello)):
            sock.send(hello[i : i + 1])
            time.sleep(0.001)
        sock.shutdown(socket.SHUT_WR)
        assert closed_within(sock, 10)
    seen = stack.recorder.only()
    assert bytes(seen.data) == hello
    entry = stack.gate.wait_access_log(lambda e: e.get("sni") == "record.test")
    assert entry["bytes_in"] == len(hello)


def test_handshake_completes_after_one_byte_segments(stack: Stack) -> None:
    obj, incoming, outgoing, hello = make_tls_client(stack.pki.ca_file, "exact.test", ["http/1.1"])
    with connect(stack.pt) as sock:
        for i in range(len(hello)):
            sock.send(hello[i : i + 1])
            time.sleep(0.001)
        finish_handshake(sock, obj, incoming, outgoing)  # verifies alpha's certificate
        response = tls_get(sock, obj, incoming, outgoing)
    assert response.startswith(b"HTTP/1.1 200 OK\r\n")
    assert response.endswith(b"\r\n\r\nalpha")
    assert stack.alpha.only().sni == "exact.test"


# ------------------------------------------------------------- refused hellos


def test_garbage_is_closed_and_logged_other_connections_undisturbed(stack: Stack) -> None:
    # a connection in the middle of its life when the garbage arrives...
    ctx = ssl.create_default_context(cafile=str(stack.pki.ca_file))
    with (
        connect(stack.pt) as raw,
        ctx.wrap_socket(raw, server_hostname="x.wild.test") as established,
    ):
        with connect(stack.pt) as bad:
            bad.sendall(GARBAGE)
            assert closed_within(bad, 5)
            entry = stack.entry_for(bad.getsockname())
        # ...still works afterwards
        established.sendall(b"GET / HTTP/1.1\r\nHost: x.wild.test\r\n\r\n")
        response = b""
        while data := established.recv(4096):
            response += data
    assert response.endswith(b"\r\n\r\nwild")
    reason = str(entry["close_reason"])
    assert reason.startswith("bad ClientHello"), reason
    assert "HTTP" in reason, reason
    assert entry["backend"] is None
    assert (entry["bytes_in"], entry["bytes_out"]) == (0, 0)
    assert "closing a connection from 127.0.0.2" in stack.gate.error_log_text()
    # nothing reached any server but the established connection's
    assert not stack.alpha.accepted
    assert not stack.default.accepted
    assert not stack.recorder.accepted
    assert len(stack.wild.accepted) == 1


@pytest.mark.parametrize(
    ("what", "payload", "reason"),
    [
        ("oversized", "big", f"ClientHello larger than the limit of {LIMIT} bytes"),
        ("not a handshake record", "alert", "bad ClientHello"),
        ("not a ClientHello", "server-hello-type", "not a ClientHello"),
    ],
)
def test_bad_hellos_are_closed_with_the_reason(
    stack: Stack, what: str, payload: str, reason: str
) -> None:
    hello = client_hello("exact.test")
    data = {
        "big": big_hello(),
        "alert": b"\x15\x03\x03\x00\x02\x02\x28",
        "server-hello-type": hello[:5] + b"\x02" + hello[6:],
    }[payload]
    with connect(stack.pt) as sock:
        sock.sendall(data)
        assert closed_within(sock, 2), what
        entry = stack.entry_for(sock.getsockname())
    assert reason in str(entry["close_reason"]), entry
    assert entry["backend"] is None
    assert not stack.alpha.accepted
    assert not stack.default.accepted


def test_a_hello_under_the_limit_still_passes(stack: Stack) -> None:
    hello = client_hello("record.test", [f"p{i}" for i in range(100)])
    assert 517 < len(hello) <= LIMIT
    with connect(stack.pt) as sock:
        sock.sendall(hello)
        sock.shutdown(socket.SHUT_WR)
        assert closed_within(sock, 10)
    assert bytes(stack.recorder.only().data) == hello


def test_no_sni_is_closed_without_a_fallback(stack: Stack) -> None:
    hello = client_hello(None)
    with connect(stack.pt) as sock:
        sock.sendall(hello)
        assert closed_within(sock, 5)
        entry = stack.entry_for(sock.getsockname())
    assert entry["close_reason"] == "no SNI in the ClientHello"
    assert entry["sni"] is None
    assert not stack.default.accepted


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        ("no-sni", "no SNI in the ClientHello"),
        ("garbage", "bad ClientHello"),
        ("oversized", "ClientHello larger than the limit"),
    ],
)
def test_unroutable_connections_go_to_the_fallback_backend(
    stack: Stack, payload: str, why: str
) -> None:
    data = {"no-sni": client_hello(None), "garbage": GARBAGE, "oversized": big_hello()}[payload]
    with connect(stack.ptfb) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        assert closed_within(sock, 10)
        entry = stack.entry_for(sock.getsockname())
    assert bytes(stack.fallback.only().data) == data  # replayed untouched
    assert entry["backend"] == "fallback"
    assert entry["server"] == stack.fallback.address
    assert entry["bytes_in"] == len(data)
    assert why in str(entry["close_reason"]), entry


def test_an_unrouted_sni_goes_to_the_default_backend_not_the_fallback(stack: Stack) -> None:
    res = curl(
        "--cacert",
        str(stack.pki.ca_file),
        "--resolve",
        f"unrouted.test:{stack.ptfb}:127.0.0.1",
        f"https://unrouted.test:{stack.ptfb}/",
    )
    assert res.returncode == 0, res.stderr
    assert res.body == b"default"
    assert not stack.fallback.accepted


# ------------------------------------------------------------------ timeouts


@pytest.mark.parametrize("sent", ["nothing", "half a ClientHello"])
def test_a_client_that_sends_no_whole_hello_is_closed_after_header_timeout(
    stack: Stack, sent: str
) -> None:
    hello = client_hello("exact.test")
    with connect(stack.ptfb) as sock:
        if sent != "nothing":
            sock.sendall(hello[: len(hello) // 2])
        t0 = time.monotonic()
        assert closed_within(sock, 5)
        elapsed = time.monotonic() - t0
        entry = stack.entry_for(sock.getsockname())
    assert 0.8 <= elapsed <= 3.0, elapsed
    assert entry["close_reason"] == "timeout: no complete ClientHello within 1s"
    assert not stack.alpha.accepted
    assert not stack.fallback.accepted  # a timeout is not sent to the fallback backend


def test_a_hello_cut_short_by_a_fin_is_closed_at_once_without_spinning(stack: Stack) -> None:
    hello = client_hello("exact.test")
    (worker,) = stack.gate.worker_pids()
    before = psutil.Process(worker).cpu_times()
    with connect(stack.pt) as sock:  # header_timeout 3s
        sock.sendall(hello[: len(hello) // 2])
        sock.shutdown(socket.SHUT_WR)
        t0 = time.monotonic()
        assert closed_within(sock, 5)
        elapsed = time.monotonic() - t0
        entry = stack.entry_for(sock.getsockname())
    after = psutil.Process(worker).cpu_times()
    cpu = (after.user - before.user) + (after.system - before.system)
    assert entry["close_reason"] == "connection closed before a ClientHello", entry
    assert elapsed < 1.0, elapsed
    assert cpu < 0.5, f"the worker used {cpu:.2f}s of CPU on one half-open connection"


def test_many_silent_clients_do_not_block_a_real_one(stack: Stack) -> None:
    silent: list[socket.socket] = []
    try:
        for _ in range(50):
            silent.append(connect(stack.pt))
        res = curl(
            "--cacert",
            str(stack.pki.ca_file),
            "--resolve",
            f"exact.test:{stack.pt}:127.0.0.1",
            f"https://exact.test:{stack.pt}/",
        )
        assert res.returncode == 0, res.stderr
        assert res.body == b"alpha"
    finally:
        for sock in silent:
            sock.close()
