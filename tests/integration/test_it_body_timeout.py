"""A slow request body against a real tlsgate (issue 8, defect 6: slow POST).

One tlsgate (1 worker) with an http and an https listener, both with
``body_timeout = "1s"`` and ``body_min_rate = "1KiB"``. Paths under ``/sink`` go
to a raw recording app server that answers a request only once its whole body
has come and notes how each connection ended; everything else goes to the
ordinary app server. A client whose body stalls gets ``408`` with
``Connection: close`` after about ``body_timeout``; one that drips its body gets
it after the grace period, for being slower than ``body_min_rate``; the server
sees its connection end with the body unfinished; the access and error logs say
which limit it was; and meanwhile good clients on other connections, bodies
included, are served at once.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from appserver import AppServer
from harness import (
    Pki,
    RawConn,
    RawResponse,
    ThreadedTcpServer,
    Tlsgate,
    client_context,
    free_port,
    request_bytes,
    table,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

BODY_TIMEOUT = 1.0
MIN_RATE = 1024


@dataclass
class SinkConnection:
    """What the recording server saw on one connection."""

    received: bytearray = field(default_factory=bytearray)
    answered: int = 0  # requests whose whole body came, and were answered
    ended: str = ""  # "eof" or "reset" once the peer closed
    done: threading.Event = field(default_factory=threading.Event)


class Sink(ThreadedTcpServer):
    """Reads Content-Length requests; answers each once its whole body has come."""

    def __init__(self) -> None:
        super().__init__(name="sink", conn_timeout=20.0)
        self.connections: list[SinkConnection] = []

    def handle(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        seen = SinkConnection()
        self.connections.append(seen)
        buf = b""
        try:
            while True:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    seen.ended = "reset"
                    return
                if not data:
                    seen.ended = "eof"
                    return
                seen.received += data
                buf += data
                while (end := buf.find(b"\r\n\r\n")) >= 0:
                    head = buf[:end].decode("latin-1").lower()
                    length = 0
                    for line in head.split("\r\n")[1:]:
                        name, _, value = line.partition(":")
                        if name.strip() == "content-length":
                            length = int(value)
                    if len(buf) < end + 4 + length:
                        break
                    buf = buf[end + 4 + length :]
                    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    seen.answered += 1
        except OSError:
            seen.ended = seen.ended or "error"
        finally:
            seen.done.set()
            with contextlib.suppress(OSError):
                sock.close()

    def connection_with(self, marker: str) -> SinkConnection:
        def find() -> SinkConnection | None:
            m = marker.encode()
            return next((c for c in self.connections if m in c.received), None)

        found = wait_until(find, 5, what=f"the sink connection of {marker}")
        assert found is not None
        return found


@dataclass
class Stack:
    gate: Tlsgate
    app: AppServer
    sink: Sink
    http_port: int
    https_port: int
    pki: Pki

    def conn(self, tls: bool) -> RawConn:
        if tls:
            return RawConn(
                self.https_port, tls=client_context(self.pki.ca_pem), server_hostname="localhost"
            )
        return RawConn(self.http_port)


@pytest.fixture(scope="module")
def stack(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    app = AppServer("body-timeout").start()
    sink = Sink()
    http_port, https_port = free_port(), free_port()
    limits = {"body_timeout": f"{int(BODY_TIMEOUT * 1000)}ms", "body_min_rate": "1KiB"}
    config = (
        pki.toml()
        + table(
            "listeners",
            name="http",
            bind=[f"127.0.0.1:{http_port}"],
            protocol="http",
            backend="app",
            **limits,
        )
        + table(
            "listeners",
            name="https",
            bind=[f"127.0.0.1:{https_port}"],
            protocol="https",
            backend="app",
            default_certificate="main-ecdsa",
            **limits,
        )
        + table("routes", listener="http", backend="sink", path_prefix="/sink/")
        + table("routes", listener="https", backend="sink", path_prefix="/sink/")
        + table("backends", name="app", servers=[app.address], read_timeout="10s")
        + table("backends", name="sink", servers=[sink.address], read_timeout="10s")
    )
    gate = Tlsgate(tmp_path_factory.mktemp("body-timeout"), config)
    try:
        gate.start()
        yield Stack(gate, app, sink, http_port, https_port, pki)
    finally:
        gate.kill()
        app.stop()
        sink.stop()


def post_head(path: str, length: int) -> bytes:
    return request_bytes("POST", path, "localhost", [("Content-Length", str(length))])


class GoodClient(threading.Thread):
    """Meanwhile, on its own connection: GETs, and a POST whose body comes in pieces."""

    def __init__(self, stack: Stack, tls: bool, until: threading.Event) -> None:
        super().__init__(daemon=True)
        self.stack = stack
        self.tls = tls
        self.until = until
        self.latencies: list[float] = []
        self.statuses: list[int] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with self.stack.conn(self.tls) as c:
                while not self.until.is_set():
                    start = time.monotonic()
                    c.send(request_bytes("GET", "/echo", "localhost"))
                    self.statuses.append(c.read_response().status)
                    self.latencies.append(time.monotonic() - start)
                    body = b"p" * 3000
                    c.send(post_head("/echo", len(body)))
                    for i in range(0, len(body), 1000):  # in pieces, well within the limits
                        time.sleep(0.1)
                        c.send(body[i : i + 1000])
                    resp = c.read_response()
                    self.statuses.append(resp.status)
                    assert resp.json()["body_len"] == len(body)
        except BaseException as exc:  # reported by the test
            self.error = exc


@contextlib.contextmanager
def good_client(stack: Stack, tls: bool) -> Iterator[GoodClient]:
    stop = threading.Event()
    client = GoodClient(stack, tls, stop)
    client.start()
    try:
        yield client
    finally:
        stop.set()
        client.join(10)
    assert client.error is None, repr(client.error)
    assert client.statuses
    assert set(client.statuses) == {200}
    # served at once, not after the slow client's 408: well under body_timeout
    assert max(client.latencies) < BODY_TIMEOUT * 0.75, client.latencies


def check_408(stack: Stack, resp: RawResponse, c: RawConn, *, told: str, detail: str) -> None:
    assert resp.status == 408, resp
    assert (resp.header("connection") or "").lower() == "close"
    text = resp.body.decode()
    assert told in text
    for word in ("body_timeout", "body_min_rate", "127.0.0.1", "sink", "backend"):
        assert word not in text, f"{word!r} told to the client: {text!r}"
    rid = resp.header("x-request-id")
    assert rid is not None
    assert c.closed_by_peer(3)
    entry = stack.gate.wait_access_log(lambda e: e.get("request_id") == rid)
    assert entry["status"] == 408
    assert detail in entry["error"], entry

    def logged() -> str | None:
        lines = stack.gate.error_log_text().splitlines()
        return next((ln for ln in lines if rid in ln), None)

    line = wait_until(logged, 10, what=f"an error log line for request {rid}")
    assert line is not None
    assert detail in line


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_a_stalled_body_gets_408_and_the_server_sees_it_end(stack: Stack, tls: bool) -> None:
    marker = uuid.uuid4().hex
    with good_client(stack, tls), stack.conn(tls) as c:
        start = time.monotonic()
        c.send(post_head(f"/sink/{marker}", 100_000) + b"x" * 10)  # and no more
        c.sock.settimeout(BODY_TIMEOUT + 5)
        resp = c.read_response()
        elapsed = time.monotonic() - start
        check_408(
            stack,
            resp,
            c,
            told="the request body did not arrive in time",
            detail="request body: nothing for 1s (body_timeout)",
        )
    assert BODY_TIMEOUT * 0.8 <= elapsed <= BODY_TIMEOUT + 2
    seen = stack.sink.connection_with(marker)
    assert seen.done.wait(5), "tlsgate kept the server's connection open"
    assert seen.ended in ("eof", "reset")
    assert seen.received.endswith(b"\r\n\r\n" + b"x" * 10)  # the body went no further
    assert seen.answered == 0


def test_a_dripping_body_gets_408_for_its_rate(stack: Stack) -> None:
    """One byte every 0.1 s never leaves body_timeout between reads, but is far below
    body_min_rate: cut off once the first body_timeout of grace is over."""
    marker = uuid.uuid4().hex
    with good_client(stack, False), stack.conn(False) as c:
        start = time.monotonic()
        c.send(post_head(f"/sink/{marker}", 1_000_000))
        answered = threading.Event()

        def drip() -> None:
            with contextlib.suppress(OSError):  # closed on us: what we want
                while not answered.wait(0.1) and time.monotonic() - start < BODY_TIMEOUT * 4:
                    c.send(b"d")

        dripper = threading.Thread(target=drip, daemon=True)
        dripper.start()
        c.sock.settimeout(5)
        try:
            resp = c.read_response()
        finally:
            answered.set()
            dripper.join(5)
        elapsed = time.monotonic() - start
        check_408(
            stack,
            resp,
            c,
            told="the request body arrived too slowly",
            detail="slower than body_min_rate (1024 bytes/s after the first 1s)",
        )
    assert BODY_TIMEOUT * 0.8 <= elapsed <= BODY_TIMEOUT + 2
    seen = stack.sink.connection_with(marker)
    assert seen.done.wait(5), "tlsgate kept the server's connection open"
    assert seen.answered == 0


def test_a_body_within_the_limits_reaches_the_server_whole(stack: Stack) -> None:
    marker = uuid.uuid4().hex
    body = b"w" * (MIN_RATE * 3)
    with stack.conn(False) as c:
        for _ in range(2):  # and the connection stays usable
            c.send(post_head(f"/sink/{marker}", len(body)))
            for i in range(0, len(body), MIN_RATE):
                time.sleep(BODY_TIMEOUT / 2)
                c.send(body[i : i + MIN_RATE])
            resp = c.read_response()
            assert resp.status == 200
            assert resp.body == b"ok"
    seen = stack.sink.connection_with(marker)
    assert seen.answered == 2
