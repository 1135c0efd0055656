"""The L4 data plane on a real event loop and real loopback sockets, without a worker.

``Splicer`` and ``L4Session`` are driven by the edge-triggered ``Poller``: every
event is reported once, so these tests go after the cases where an event could
be lost -- a pipe that fills up with many small segments while the destination
stalls, bytes that arrive before the splicer starts, a FIN that comes with the
last bytes -- and check that a finished session is freed by reference counting
alone (no cycle left for the garbage collector, one per connection).
"""

from __future__ import annotations

import asyncio
import gc
import socket
import ssl
from collections.abc import Callable, Coroutine, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import uvloop

from tlsgate.config.loader import parse_config
from tlsgate.logs import AccessLog
from tlsgate.net.context import Drainable
from tlsgate.net.deadlines import Deadlines
from tlsgate.net.l4 import L4Session, RawSocket, Splicer
from tlsgate.net.poller import EPOLLIN, EPOLLOUT, Poller
from tlsgate.net.runtime import Runtime

pytestmark = pytest.mark.timeout(30)


class Context:
    """A ``ServeContext`` on a real loop: what an L4 session uses of a worker."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.slot = 0
        self.draining = False
        self.deadlines = Deadlines(loop, resolution=0.01)
        self.poller = Poller(loop)
        self.access = AccessLog("")
        self.connections: set[Drainable] = set()
        self.runtime: Runtime | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.closed = 0

    @property
    def acme_http01(self) -> Mapping[str, str]:
        return {}

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self.tasks.append(self.loop.create_task(coro))

    def acme_tls_alpn01_context(self, name: str) -> ssl.SSLContext | None:
        return None

    def connection_closed(self) -> None:
        self.closed += 1

    def close(self) -> None:
        self.deadlines.close()
        self.poller.close()
        self.access.close()


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = uvloop.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def ctx(loop: asyncio.AbstractEventLoop) -> Iterator[Context]:
    ctx = Context(loop)
    yield ctx
    ctx.close()


def tcp_pair(buffers: int = 0) -> tuple[socket.socket, socket.socket]:
    """Two ends of one loopback TCP connection, both non-blocking; ``buffers``: the
    kernel's send and receive buffers, set before the connection is made (so that
    TCP's window fits them), else the kernel's defaults."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        a = socket.socket()
        for s in (listener, a):
            if buffers:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffers)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffers)
        a.connect(listener.getsockname())
        b, _ = listener.accept()
    for s in (a, b):
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return a, b


def raw(sock: socket.socket) -> RawSocket:
    """The same connection as the C socket type the L4 path works with."""
    return RawSocket(sock.family, socket.SOCK_STREAM, 0, sock.detach())


def run_until(
    loop: asyncio.AbstractEventLoop, done: Callable[[], bool], timeout: float = 5.0
) -> None:
    async def wait() -> None:
        async with asyncio.timeout(timeout):
            while not done():
                await asyncio.sleep(0.001)

    loop.run_until_complete(wait())


def read_available(sock: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk


class Spliced:
    """A splicer between two loopback connections: ``client`` and ``server`` are the
    far ends the test talks through."""

    def __init__(self, ctx: Context, *, idle_timeout: float = 10.0, buffers: int = 0) -> None:
        self.client, near_client = tcp_pair(buffers)
        near_server, self.server = tcp_pair(buffers)
        self.reasons: list[str] = []
        self.splicer = Splicer(
            ctx.poller,
            ctx.deadlines,
            raw(near_client),
            raw(near_server),
            idle_timeout=idle_timeout,
            on_close=self.reasons.append,
        )
        ctx.poller.add(self.splicer.client_fd, self.splicer)
        ctx.poller.add(self.splicer.server_fd, self.splicer)

    def close(self) -> None:
        self.splicer.close("the test is over")  # does nothing if it closed already
        self.client.close()
        self.server.close()


@pytest.fixture
def spliced(ctx: Context) -> Iterator[Callable[..., Spliced]]:
    made: list[Spliced] = []

    def make(**kw: Any) -> Spliced:
        s = Spliced(ctx, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def test_bytes_cross_both_ways_and_each_fin_is_passed_on(
    loop: asyncio.AbstractEventLoop, spliced: Callable[..., Spliced]
) -> None:
    s = spliced()
    s.client.sendall(b"hello")  # before the splicer starts: no event will say so again
    s.splicer.start()
    got = b""

    def server_has_hello() -> bool:
        nonlocal got
        got += read_available(s.server)
        return got == b"hello"

    run_until(loop, server_has_hello)
    s.server.sendall(b"world")
    s.server.shutdown(socket.SHUT_WR)  # the server is done; the client may still talk
    back = b""

    def client_sees_the_fin() -> bool:
        nonlocal back
        try:
            chunk = s.client.recv(100)
        except BlockingIOError:
            return False
        back += chunk
        return chunk == b""

    run_until(loop, client_sees_the_fin)
    assert back == b"world"
    assert not s.reasons  # half-closed, still open the other way
    s.client.sendall(b"late")
    late = b""

    def server_has_late() -> bool:
        nonlocal late
        late += read_available(s.server)
        return late == b"late"

    run_until(loop, server_has_late)
    s.client.shutdown(socket.SHUT_WR)
    run_until(loop, lambda: bool(s.reasons))
    assert s.reasons == ["server closed"]
    assert (s.splicer.up.bytes, s.splicer.down.bytes) == (9, 5)


def test_a_stalled_reader_holds_at_most_a_pipe_and_nothing_is_lost(
    loop: asyncio.AbstractEventLoop, spliced: Callable[..., Spliced]
) -> None:
    """Thousands of small segments fill the pipe's slots long before 64 KiB; the
    splicer must neither spin nor forget that the source still has bytes."""
    s = spliced(buffers=128 * 1024)
    s.splicer.start()
    sent = bytearray()
    for i in range(3000):
        piece = b"%05d," % i
        s.client.sendall(piece)
        sent += piece
    bulk = memoryview(bytes(range(256)) * (16 * 4096))  # 16 MiB behind them
    stalled = 0
    while stalled < 20:  # the server reads nothing: everything fills up, then stops
        try:
            n = s.client.send(bulk[len(sent) - 18000 :])
        except BlockingIOError:
            stalled += 1
            loop.run_until_complete(asyncio.sleep(0.005))
            continue
        sent += bulk[len(sent) - 18000 : len(sent) - 18000 + n]
        stalled = 0
    assert len(sent) < len(bulk), "nothing stalled: the buffers are larger than the test"
    up = s.splicer.up
    assert 0 < up.in_pipe <= 1 << 16
    assert not up.writable
    received = bytearray()
    rest = bulk[len(sent) - 18000 :]
    while rest:  # now the server reads, and the client sends the rest as room comes
        received += read_available(s.server)
        try:
            n = s.client.send(rest)
        except BlockingIOError:
            loop.run_until_complete(asyncio.sleep(0))
            continue
        sent += rest[:n]
        rest = rest[n:]
    s.client.shutdown(socket.SHUT_WR)

    def all_arrived() -> bool:
        received.extend(read_available(s.server))
        return len(received) == len(sent)

    run_until(loop, all_arrived, timeout=20)
    assert bytes(received) == bytes(sent)


def test_silence_for_the_idle_timeout_closes_both_sides(
    loop: asyncio.AbstractEventLoop, spliced: Callable[..., Spliced]
) -> None:
    s = spliced(idle_timeout=0.05)
    s.splicer.start()
    run_until(loop, lambda: bool(s.reasons))
    assert s.reasons == ["idle timeout (0.05s)"]
    run_until(loop, lambda: s.client.recv(1) == b"")


def test_activity_keeps_the_idle_timeout_away(
    loop: asyncio.AbstractEventLoop, spliced: Callable[..., Spliced]
) -> None:
    s = spliced(idle_timeout=0.1)
    s.splicer.start()
    for _ in range(10):  # 0.3 s in all, never 0.1 s of silence
        s.client.sendall(b"x")
        loop.run_until_complete(asyncio.sleep(0.03))
        read_available(s.server)
    assert not s.reasons


def test_the_poller_routes_each_descriptor_to_its_current_owner(
    loop: asyncio.AbstractEventLoop, ctx: Context
) -> None:
    a, b = tcp_pair()
    seen: list[tuple[str, int]] = []

    class Target:
        def __init__(self, name: str) -> None:
            self.name = name

        def on_events(self, fd: int, events: int) -> None:
            seen.append((self.name, events))

    ctx.poller.add(a.fileno(), Target("first"))
    run_until(loop, lambda: bool(seen))  # registered while writable: one EPOLLOUT edge
    assert seen == [("first", EPOLLOUT)]
    ctx.poller.retarget(a.fileno(), Target("second"))
    b.sendall(b"x")
    run_until(loop, lambda: len(seen) == 2)
    assert seen[1][0] == "second"
    assert seen[1][1] & EPOLLIN
    ctx.poller.remove(a.fileno())  # still open, handed elsewhere: no more events here
    b.sendall(b"y")
    loop.run_until_complete(asyncio.sleep(0.05))
    assert len(seen) == 2
    assert len(ctx.poller) == 0
    a.close()
    b.close()


# ------------------------------------------------------------------------ sessions


def tcp_config(*ports: int) -> str:
    servers = ", ".join(f'"127.0.0.1:{p}"' for p in ports)
    return f"""
[[listeners]]
name = "tcp"
bind = ["127.0.0.1:1"]
protocol = "tcp"
backend = "app"

[[backends]]
name = "app"
servers = [{servers}]
balance = "round_robin"
connect_timeout = "1s"
retries = 1
"""


def session(ctx: Context, toml: str) -> tuple[L4Session, socket.socket]:
    """An L4 session for a fresh client connection; returns it and the client's end."""
    config = parse_config(toml, Path("t.toml"))
    runtime = Runtime.build(1, config, (), {})
    ctx.runtime = runtime
    listener = next(iter(runtime.listeners.values()))
    client, accepted = tcp_pair()
    peer = accepted.getpeername()
    return L4Session(ctx, listener, raw(accepted), (peer[0], peer[1])), client


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_session_reaches_the_server_and_is_freed_by_reference_counting(
    loop: asyncio.AbstractEventLoop, ctx: Context
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as app:
        app.setblocking(False)
        s, client = session(ctx, tcp_config(app.getsockname()[1]))
        gc.collect()
        gc.disable()
        try:
            s.start()
            client.sendall(b"ping")
            accepted: list[socket.socket] = []

            def app_accepted() -> bool:
                try:
                    conn, _ = app.accept()
                except BlockingIOError:
                    return False
                conn.setblocking(False)
                accepted.append(conn)
                return True

            run_until(loop, app_accepted)
            got = b""

            def ping_arrived() -> bool:
                nonlocal got
                got += read_available(accepted[0])
                return got == b"ping"

            run_until(loop, ping_arrived)
            # watched by id: compiled classes need not support weak references
            watched = {id(s), id(s.splicer)}
            accepted[0].close()
            client.close()
            run_until(loop, lambda: ctx.closed == 1)
            assert s.reason == ""
            assert ctx.closed == 1
            assert len(ctx.poller) == 0
            assert len(ctx.deadlines) == 0
            del s
            gc.set_debug(gc.DEBUG_SAVEALL)  # what only the cyclic GC would free
            gc.collect()
            cyclic = [type(o).__name__ for o in gc.garbage if id(o) in watched]
            assert not cyclic, "a finished session is kept alive by a reference cycle"
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()


def test_a_refused_connect_is_retried_on_the_next_server(
    loop: asyncio.AbstractEventLoop, ctx: Context
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as app:
        app.setblocking(False)
        dead = closed_port()
        s, client = session(ctx, tcp_config(dead, app.getsockname()[1]))
        s.start()

        def app_accepted() -> bool:
            try:
                conn, _ = app.accept()
            except BlockingIOError:
                return False
            conn.close()
            return True

        run_until(loop, app_accepted)
        assert s.tried == {f"127.0.0.1:{dead}"}
        assert s.server is not None
        assert s.server.key == f"127.0.0.1:{app.getsockname()[1]}"
        client.close()
        run_until(loop, lambda: s.closed)
        assert s.reason == ""


def test_every_server_refusing_ends_the_session_with_the_reason(
    loop: asyncio.AbstractEventLoop, ctx: Context, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = closed_port(), closed_port()
    s, client = session(ctx, tcp_config(first, second))
    s.start()
    run_until(loop, lambda: s.closed)
    assert client.recv(1) == b""
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert f"connecting to 127.0.0.1:{first} failed: Connection refused" in logged
    assert f"connecting to 127.0.0.1:{second} failed: Connection refused" in logged
    assert s.server is None
    assert len(ctx.poller) == 0
    client.close()
