"""``protocol = "tcp"`` listeners: bytes forwarded as they are, both directions.

Behind tlsgate are small TCP servers in threads (``TcpServer``), one thread per
connection running a handler the test picks: echo, answer only after the client's
FIN, greet and FIN first, send a lot, or read a lot late. Clients connect from
127.0.0.2 so the access log's ``client_ip`` is checked against a real, distinct
address. What is proven: bytes arrive intact and in order; a FIN in one direction
leaves the other open (both ways round); a reader that stops reading stalls the
sender instead of filling tlsgate's memory (the sender is seen to block, nothing
is lost, the worker's RSS stays bounded); a silent connection is closed after
``connect_idle_timeout``; a failed connect is retried on another server; when no
server answers the client is closed and the access log says why; ``max_connections``
refuses the one too many; weighted round robin and health checks steer connections;
SIGTERM lets a connection run to the shutdown deadline.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from appserver import PatternChecker, pattern_chunks
from harness import (
    GateFactory,
    RssSampler,
    ThreadedTcpServer,
    Tlsgate,
    free_port,
    table,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

CLIENT = "127.0.0.2"
MiB = 1024 * 1024
RSS_LIMIT = 150 * MiB
# More than every socket buffer on the path can hold (client send buffer, tlsgate's
# receive and send buffers, the server's receive buffer: tcp_rmem may autotune to
# 32 MiB each), so a stalled reader must stall the sender.
STALL_SIZE = 256 * MiB


# --------------------------------------------------------------------------- servers


@dataclass
class Conn:
    """One connection a ``TcpServer`` accepted, and what its handler recorded."""

    sock: socket.socket
    peer: tuple[str, int]
    received: int = 0
    digest: Any = field(default_factory=hashlib.sha256)
    error: str = ""
    done: threading.Event = field(default_factory=threading.Event)

    def read_to_eof(self, delay: float = 0.0) -> None:
        """Read (hashing) until the peer's FIN; sleep ``delay`` s between reads."""
        while data := self.sock.recv(256 * 1024):
            self.received += len(data)
            self.digest.update(data)
            if delay:
                time.sleep(delay)


Handler = Callable[[Conn], None]


class TcpServer(ThreadedTcpServer):
    """A TCP server on 127.0.0.1; each connection runs ``handler(conn)`` in a thread."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.conns: list[Conn] = []
        super().__init__(name="tcp-server", conn_timeout=30.0)

    def handle(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        conn = Conn(sock, peer)
        self.conns.append(conn)
        self._serve(conn)

    def _serve(self, conn: Conn) -> None:
        try:
            self.handler(conn)
        except OSError as exc:
            conn.error = str(exc)
        finally:
            with contextlib.suppress(OSError):
                conn.sock.close()
            conn.done.set()

    def only_conn(self, timeout: float = 10.0) -> Conn:
        """The single connection accepted, once its handler is done."""
        wait_until(lambda: self.conns, timeout, what="a connection to the server")
        (conn,) = self.conns
        assert conn.done.wait(timeout), "the server's handler did not finish"
        return conn


def echo_then_bye(conn: Conn) -> None:
    """Echo everything; after the client's FIN, say how much came, then close."""
    while data := conn.sock.recv(65536):
        conn.received += len(data)
        conn.sock.sendall(data)
    conn.sock.sendall(b"BYE %d" % conn.received)


def answer_after_eof(conn: Conn) -> None:
    """Say nothing until the client's FIN; then (a moment later) answer with its digest."""
    conn.read_to_eof()
    time.sleep(0.3)  # the answer comes well after the FIN went through tlsgate
    conn.sock.sendall(
        b"got %d bytes, sha256 %s" % (conn.received, conn.digest.hexdigest().encode())
    )


def greet_and_fin(conn: Conn) -> None:
    """Greet, send a FIN at once, then keep reading what the client still sends."""
    conn.sock.sendall(b"hello, and that is all from me")
    conn.sock.shutdown(socket.SHUT_WR)
    conn.read_to_eof()


@pytest.fixture
def servers() -> Iterator[Callable[[Handler], TcpServer]]:
    started: list[TcpServer] = []

    def make(handler: Handler) -> TcpServer:
        server = TcpServer(handler)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


BACKEND_KEYS = ("retries", "max_fails", "connect_timeout", "health", "balance")


def tcp_gate(
    make_gate: GateFactory, servers: Sequence[str | dict[str, object]], **listener: object
) -> tuple[Tlsgate, int]:
    """A tlsgate with one tcp listener on 127.0.0.1 in front of ``servers``; keyword
    arguments go to the listener, or to the backend for the keys in BACKEND_KEYS."""
    port = free_port()
    backend = {k: listener.pop(k) for k in BACKEND_KEYS if k in listener}
    config = table(
        "listeners",
        name="tcp",
        bind=[f"127.0.0.1:{port}"],
        protocol="tcp",
        backend="svc",
        **listener,
    ) + table("backends", name="svc", servers=servers, **backend)
    return make_gate(config), port


def connect(port: int, source: str = CLIENT, timeout: float = 30.0) -> socket.socket:
    return socket.create_connection(
        ("127.0.0.1", port), timeout=timeout, source_address=(source, 0)
    )


def read_to_eof(sock: socket.socket) -> bytes:
    out = bytearray()
    while data := sock.recv(65536):
        out += data
    return bytes(out)


def closed_within(sock: socket.socket, timeout: float) -> bool:
    """True if the peer closes ``sock`` (EOF or RST, no data) within ``timeout``."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


# --------------------------------------------------------------------------- tests


def test_echo_bytes_intact_and_logged(
    make_gate: GateFactory, servers: Callable[[Handler], TcpServer]
) -> None:
    server = servers(echo_then_bye)
    gate, port = tcp_gate(make_gate, [server.address])
    payload = os.urandom(3 * MiB + 17)
    with connect(port) as sock:
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()  # echo while sending: neither side may wait for the other
        echoed = bytearray()
        while len(echoed) < len(payload):
            data = sock.recv(65536)
            assert data, f"closed after {len(echoed)} echoed bytes"
            echoed += data
        sender.join()
        sock.shutdown(socket.SHUT_WR)
        tail = read_to_eof(sock)
    assert bytes(echoed) == payload
    assert tail == b"BYE %d" % len(payload)

    entry = gate.wait_access_log(lambda e: e.get("listener") == "tcp")
    assert entry["client_ip"] == CLIENT
    assert entry["peer_ip"] == CLIENT
    assert entry["protocol"] == "tcp"
    assert entry["sni"] is None
    assert entry["alpn"] is None
    assert entry["backend"] == "svc"
    assert entry["server"] == server.address
    assert entry["bytes_in"] == len(payload)
    assert entry["bytes_out"] == len(payload) + len(tail)
    assert entry["duration_ms"] > 0
    assert entry["close_reason"] in ("client closed", "server closed"), entry
    # the server saw tlsgate, not the client: the client address is only in the log
    assert server.only_conn().peer[0] == "127.0.0.1"


def test_client_fin_keeps_the_reply_direction_open(
    make_gate: GateFactory, servers: Callable[[Handler], TcpServer]
) -> None:
    """The server answers only after it has seen the client's FIN (as e.g. a
    request-then-shutdown protocol does): the answer still reaches the client."""
    server = servers(answer_after_eof)
    gate, port = tcp_gate(make_gate, [server.address])
    question = b"what is the digest of this? " * 1000
    with connect(port) as sock:
        sock.sendall(question)
        sock.shutdown(socket.SHUT_WR)
        reply = read_to_eof(sock)
    expected = b"got %d bytes, sha256 %s" % (
        len(question),
        hashlib.sha256(question).hexdigest().encode(),
    )
    assert reply == expected
    entry = gate.wait_access_log(lambda e: e.get("listener") == "tcp")
    assert (entry["bytes_in"], entry["bytes_out"]) == (len(question), len(expected))
    assert entry["close_reason"] == "client closed", entry


def test_server_fin_keeps_the_client_direction_open(
    make_gate: GateFactory, servers: Callable[[Handler], TcpServer]
) -> None:
    server = servers(greet_and_fin)
    gate, port = tcp_gate(make_gate, [server.address])
    with connect(port) as sock:
        greeting = read_to_eof(sock)  # the server's FIN reached us...
        assert greeting == b"hello, and that is all from me"
        time.sleep(0.2)
        late = b"still talking after your FIN " * 5000
        sock.sendall(late)  # ...and our direction still goes through
        sock.shutdown(socket.SHUT_WR)
        assert closed_within(sock, 10)
    conn = server.only_conn()
    assert conn.error == ""
    assert (conn.received, conn.digest.hexdigest()) == (len(late), hashlib.sha256(late).hexdigest())
    entry = gate.wait_access_log(lambda e: e.get("listener") == "tcp")
    assert (entry["bytes_in"], entry["bytes_out"]) == (len(late), len(greeting))


def test_close_reason_names_the_side_that_closed_first(
    make_gate: GateFactory, servers: Callable[[Handler], TcpServer]
) -> None:
    server = servers(greet_and_fin)
    gate, port = tcp_gate(make_gate, [server.address])
    with connect(port) as sock:
        assert read_to_eof(sock) == b"hello, and that is all from me"
        time.sleep(0.2)
        sock.shutdown(socket.SHUT_WR)
        assert closed_within(sock, 10)
    entry = gate.wait_access_log(lambda e: e.get("listener") == "tcp")
    assert entry["close_reason"] == "server closed", entry


def test_slow_client_reader_stalls_the_server_not_memory(
    make_gate: GateFactory, servers: Callable[[Handler], TcpServer]
) -> None:
    """The client reads nothing for a while: the server's send must block (tlsgate
    stops reading it), then every byte arrives in order, in bounded memory."""
    sent = [0]

    def blast(conn: Conn) -> None:
        for piece in pattern_chunks(STALL_SIZE, MiB):
            conn.sock.sendall(piece)
            sent[0] += len(piece)
        conn.sock.shutdown(socket.SHUT_WR)
        conn.read_to_eof()

    server = servers(blast)
    gate, port = tcp_gate(make_gate, [server.address])
    checker = PatternChecker()
    with RssSampler(gate) as rss, connect(port, timeout=60) as sock:
        wait_until(lambda: sent[0] > 0, 10, what="the server to start sending")
        time.sleep(1.0)
        stalled_at = sent[0]
        time.sleep(0.5)
        assert sent[0] == stalled_at, "the server kept sending to a client that reads nothing"
        assert stalled_at < STALL_SIZE
        # now read, slowly at first
        for _ in range(20):
            checker.feed(sock.recv(65536))
            time.sleep(0.02)
        while data := sock.recv(1 << 20):
            checker.feed(data)
    assert checker.received == STALL_SIZE
    assert checker.ok, "the bytes differ from what the server sent"
    assert rss.samples > 0
    assert rss.max_rss < RSS_LIMIT, f"worker RSS reached {rss.max_rss / MiB:.0f} MiB"
    entry = gate.wait_access_log(lambda e: e.get("listener") == "tcp")
    assert entry["bytes_out"] == STALL_SIZE


def test_slow_server_reader_stalls_the_client_not_memory(
    make_gate: GateFactory, servers: Callable[[Handler], TcpServer]
) -> None:
    go = threading.Event()

    def late_reader(conn: Conn) -> None:
        assert go.wait(30)
        conn.read_to_eof(delay=0.001)
        conn.sock.sendall(b"%d %s" % (conn.received, conn.digest.hexdigest().encode()))

    server = servers(late_reader)
    gate, port = tcp_gate(make_gate, [server.address])
    sent = [0]
    digest = hashlib.sha256()
    with RssSampler(gate) as rss, connect(port, timeout=60) as sock:

        def send_all() -> None:
            for piece in pattern_chunks(STALL_SIZE, MiB):
                digest.update(piece)
                sock.sendall(piece)
                sent[0] += len(piece)
            sock.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send_all, daemon=True)
        sender.start()
        time.sleep(1.0)
        stalled_at = sent[0]
        time.sleep(0.5)
        assert sent[0] == stalled_at, "the client kept sending to a server that reads nothing"
        assert stalled_at < STALL_SIZE
        go.set()
        sender.join(60)
        assert not sender.is_alive()
        reply = read_to_eof(sock)
    assert reply == b"%d %s" % (STALL_SIZE, digest.hexdigest().encode())
    assert rss.samples > 0
    assert rss.max_rss < RSS_LIMIT, f"worker RSS reached {rss.max_rss / MiB:.0f} MiB"


def test_idle_connection_is_closed_after_connect_idle_timeout(
    make_gate: GateFactory, servers: Callable[[Handler], TcpServer]
) -> None:
    server = servers(echo_then_bye)
    gate, port = tcp_gate(make_gate, [server.address], connect_idle_timeout="1s")
    with connect(port) as sock:
        # traffic keeps it open past the timeout...
        for i in range(6):
            if i:
                time.sleep(0.3)
            sock.sendall(b"ping")
            assert sock.recv(16) == b"ping"
        # ...silence closes it
        t0 = time.monotonic()
        assert closed_within(sock, 5), "the idle connection stayed open"
        elapsed = time.monotonic() - t0
    assert 0.9 <= elapsed <= 3.0, elapsed
    entry = gate.wait_access_log(lambda e: e.get("listener") == "tcp")
    assert entry["close_reason"] == "idle timeout (1s)", entry
    assert server.only_conn().received == 4 * 6


def test_connect_failure_is_retried_on_another_server(
    make_gate: GateFactory, servers: Callable[[Handler], TcpServer]
) -> None:
    server = servers(echo_then_bye)
    dead = f"127.0.0.1:{free_port()}"
    # max_fails high: the dead server is never ejected, so round robin keeps
    # picking it first for every other connection, and each of those must retry
    gate, port = tcp_gate(make_gate, [dead, server.address], retries=1, max_fails=1000)
    for i in range(6):
        with connect(port) as sock:
            sock.sendall(b"try %d" % i)
            assert sock.recv(64) == b"try %d" % i
            sock.shutdown(socket.SHUT_WR)
            assert read_to_eof(sock) == b"BYE %d" % len(b"try %d" % i)
    wait_until(lambda: len(gate.access_log_lines()) == 6, 10, what="6 access log lines")
    assert {e["server"] for e in gate.access_log_lines()} == {server.address}
    failures = gate.error_log_text().count(f"connecting to {dead} failed")
    assert failures >= 3, gate.error_log_text()


def test_all_servers_dead_closes_the_client_and_says_why(make_gate: GateFactory) -> None:
    dead = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    gate, port = tcp_gate(make_gate, dead, retries=1)
    with connect(port) as sock:
        sock.sendall(b"anyone there?")
        assert closed_within(sock, 10)
    entry = gate.wait_access_log(lambda e: e.get("listener") == "tcp")
    assert entry["client_ip"] == CLIENT
    assert entry["backend"] == "svc"
    assert entry["server"] is None
    assert (entry["bytes_in"], entry["bytes_out"]) == (0, 0)
    reason = entry["close_reason"]
    assert reason.startswith(f"connecting to {dead[0]} failed") or reason.startswith(
        f"connecting to {dead[1]} failed"
    ), reason
    # both servers were tried, and each failure went to the error log
    for address in dead:
        assert f"connecting to {address} failed" in gate.error_log_text()


def test_connect_failure_reason_says_connection_refused(make_gate: GateFactory) -> None:
    dead = f"127.0.0.1:{free_port()}"
    gate, port = tcp_gate(make_gate, [dead], retries=0)
    with connect(port) as sock:
        assert closed_within(sock, 10)
    entry = gate.wait_access_log(lambda e: e.get("listener") == "tcp")
    assert "connection refused" in entry["close_reason"].lower(), entry["close_reason"]


# --------------------------------------------------------------- limits, balancing


def test_max_connections_per_client_closes_the_extra_one_at_once(
    make_gate: GateFactory, servers: Callable[[Handler], TcpServer]
) -> None:
    server = servers(echo_then_bye)
    gate, port = tcp_gate(make_gate, [server.address], max_connections_per_client=1)
    with connect(port) as first:
        first.sendall(b"x")
        assert first.recv(1) == b"x"
        with connect(port) as second:
            assert closed_within(second, 5)  # the same address: closed at accept
        with connect(port, source="127.0.0.3") as other:
            other.sendall(b"o")
            assert other.recv(1) == b"o"
        first.sendall(b"y")
        assert first.recv(1) == b"y"
    assert len(server.conns) == 2
    wait_until(lambda: len(gate.access_log_lines()) == 2, 10, what="both closes logged")
    with connect(port) as again:  # its slot came back
        again.sendall(b"z")
        assert again.recv(1) == b"z"
    assert "has max_connections_per_client (1) open" in gate.error_log_text()


def test_max_connections_makes_the_one_too_many_wait(
    make_gate: GateFactory, servers: Callable[[Handler], TcpServer]
) -> None:
    server = servers(echo_then_bye)
    gate, port = tcp_gate(make_gate, [server.address], max_connections=2)
    with connect(port) as second:
        first = connect(port)
        for sock in (first, second):
            sock.sendall(b"x")
            assert sock.recv(1) == b"x"  # both are through to the server
        with connect(port) as third:
            # not accepted: it waits in the kernel's accept queue, not closed
            third.sendall(b"w")
            assert not closed_within(third, 1)
            assert len(server.conns) == 2
            second.sendall(b"y")  # the two in flight are undisturbed
            assert second.recv(1) == b"y"
            first.close()  # a slot frees: the third is accepted and forwarded
            third.settimeout(5)
            assert third.recv(1) == b"w"
    assert "max_connections (2) reached; new connections wait" in gate.error_log_text()


def test_weighted_round_robin_spreads_connections(
    make_gate: GateFactory, servers: Callable[[Handler], TcpServer]
) -> None:
    light = servers(echo_then_bye)
    heavy = servers(echo_then_bye)
    _, port = tcp_gate(make_gate, [light.address, {"address": heavy.address, "weight": 3}])
    for _ in range(8):
        with connect(port) as sock:
            sock.shutdown(socket.SHUT_WR)
            assert read_to_eof(sock) == b"BYE 0"
    assert (len(light.conns), len(heavy.conns)) == (2, 6)


def test_a_server_marked_down_by_health_checks_is_not_tried(
    make_gate: GateFactory, servers: Callable[[Handler], TcpServer]
) -> None:
    live = servers(echo_then_bye)
    dead = f"127.0.0.1:{free_port()}"
    health = {"type": "tcp", "interval": "100ms", "timeout": "90ms", "rise": 1, "fall": 1}
    gate, port = tcp_gate(make_gate, [dead, live.address], health=health, max_fails=1000)
    gate.wait_for_log(f"server {dead} is DOWN", 1, 10)
    for i in range(4):
        with connect(port) as sock:
            sock.sendall(b"%d" % i)
            sock.shutdown(socket.SHUT_WR)
            assert read_to_eof(sock) == b"%dBYE 1" % i
    # no connection was even attempted to the server the checks took down
    assert f"connecting to {dead} failed" not in gate.error_log_text()
    assert len(live.conns) >= 4


def test_sigterm_lets_a_connection_run_to_the_shutdown_deadline(
    make_gate: GateFactory, servers: Callable[[Handler], TcpServer]
) -> None:
    """A byte stream has no request boundary to stop at: on SIGTERM tlsgate stops
    accepting, keeps forwarding what is in flight, and closes it at the deadline."""
    server = servers(echo_then_bye)
    port = free_port()
    gate = make_gate(
        table("listeners", name="tcp", bind=[f"127.0.0.1:{port}"], protocol="tcp", backend="svc")
        + table("backends", name="svc", servers=[server.address]),
        shutdown_timeout="3s",
    )
    with connect(port) as sock:
        sock.sendall(b"before")
        assert sock.recv(16) == b"before"
        t0 = time.monotonic()
        gate.signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(OSError):  # no longer accepting
            connect(port, timeout=2).close()
        sock.sendall(b"during")  # still forwarded while draining
        assert sock.recv(16) == b"during"
        assert closed_within(sock, 15)
        elapsed = time.monotonic() - t0
    assert gate.stop(timeout=15) == 0
    assert 2.5 <= elapsed <= 6.0, elapsed
    entry = gate.wait_access_log(lambda e: e.get("listener") == "tcp")
    assert entry["close_reason"] == "shutdown deadline", entry
