"""In-memory transports and a serve context: the data plane driven without sockets.

How this works: :class:`FakeTransport` records what a protocol writes and
which flow-control calls it makes; :class:`FakeContext` implements
``ServeContext`` on an event loop that need not be running (its deadline wheel
runs on a :class:`FakeLoop`, whose clock moves only when told to). :class:`Harness` builds
a runtime graph from TOML text, wires a client connection to it and seeds the
pools with upstream connections on fake transports, so a test or a
microbenchmark can feed request bytes to the client side, response bytes to
the upstream side, and read what each side wrote -- one keep-alive exchange
is a few function calls (uvicorn's protocol tests are the model).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any

from tlsgate.config.loader import parse_config
from tlsgate.logs import AccessLog
from tlsgate.net.context import Drainable
from tlsgate.net.deadlines import Deadlines
from tlsgate.net.http_proxy import ClientConnection
from tlsgate.net.poller import Poller
from tlsgate.net.runtime import ListenerRuntime, Runtime, ServerRuntime
from tlsgate.net.upstream import UpstreamConnection

__all__ = ["FakeContext", "FakeLoop", "FakeTransport", "Harness"]


class FakeTransport:
    """Enough of ``asyncio.Transport`` for the data plane's protocols."""

    def __init__(
        self,
        peer: tuple[str, int] = ("127.0.0.2", 40000),
        local: tuple[str, int] = ("127.0.0.1", 443),
    ) -> None:
        self.written: list[bytes] = []
        self.closed = False
        self.aborted = False
        self.reading = True
        self.eof_written = False
        # what get_write_buffer_size reports: a test sets it to play a client that
        # does not read
        self.buffered = 0
        self.extra: dict[str, Any] = {"peername": peer, "sockname": local}

    def data(self) -> bytes:
        """Everything written since the last call."""
        out = b"".join(self.written)
        self.written.clear()
        return out

    # asyncio.Transport
    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.extra.get(name, default)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True
        self.aborted = True


class _Handle:
    def __init__(self, when: float, callback: Any, args: tuple[Any, ...]) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """The parts of an event loop the data plane calls synchronously, on a manual clock.

    ``call_soon`` callbacks run on :meth:`run_ready`; ``call_later`` ones when
    :meth:`advance` moves the clock past them.
    """

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self._ready: list[_Handle] = []
        self._timers: list[_Handle] = []

    def time(self) -> float:
        return self.now

    def call_soon(self, callback: Any, *args: Any) -> _Handle:
        handle = _Handle(self.now, callback, args)
        self._ready.append(handle)
        return handle

    def call_later(self, delay: float, callback: Any, *args: Any) -> _Handle:
        handle = _Handle(self.now + delay, callback, args)
        self._timers.append(handle)
        return handle

    def run_ready(self) -> None:
        """Run the ``call_soon`` callbacks queued so far (and those they queue)."""
        while self._ready:
            ready, self._ready = self._ready, []
            for h in ready:
                if not h.cancelled:
                    h.callback(*h.args)

    def advance(self, seconds: float) -> None:
        """Move the clock on, running the timers that come due, in order."""
        end = self.now + seconds
        while True:
            due = [h for h in self._timers if h.when <= end and not h.cancelled]
            if not due:
                break
            h = min(due, key=lambda t: t.when)
            self._timers.remove(h)
            self.now = max(self.now, h.when)
            h.callback(*h.args)
            self.run_ready()
        self._timers = [h for h in self._timers if not h.cancelled]
        self.now = end
        self.run_ready()


class FakeContext:
    """A ``ServeContext`` for tests: real deadline wheel, spawned coroutines kept in a list."""

    def __init__(self, loop: FakeLoop | None = None, *, access: str = "") -> None:
        self.fake_loop = loop or FakeLoop()
        self.loop: asyncio.AbstractEventLoop = self.fake_loop  # type: ignore[assignment]
        self.slot = 0
        self.draining = False
        self.deadlines = Deadlines(self.loop)
        self.poller = Poller(self.loop)
        self.access = AccessLog(access, self.loop)
        self.connections: set[Drainable] = set()
        self.http01: dict[str, str] = {}
        self.spawned: list[Coroutine[Any, Any, None]] = []
        self.runtime: Runtime | None = None
        self.closed_count = 0

    @property
    def acme_http01(self) -> Mapping[str, str]:
        return self.http01

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self.spawned.append(coro)

    def acme_tls_alpn01_context(self, name: str) -> ssl.SSLContext | None:
        return None

    def connection_closed(self) -> None:
        self.closed_count += 1

    def close(self) -> None:
        for coro in self.spawned:
            coro.close()
        self.spawned.clear()
        self.deadlines.close()
        self.poller.close()
        self.access.close()


class Harness:
    """A runtime graph from ``toml``, one client connection, and fake upstream connections.

    Args:
        toml: a complete configuration; its first listener is the one served.
        access: the access log destination (``""``: none).
    """

    def __init__(self, toml: str, *, access: str = "") -> None:
        self.ctx = FakeContext(access=access)
        self.loop = self.ctx.fake_loop
        config = parse_config(toml, Path("harness.toml"))
        self.runtime = Runtime.build(1, config, (), {})
        self.ctx.runtime = self.runtime
        self.listener: ListenerRuntime = next(iter(self.runtime.listeners.values()))
        self.upstreams: list[tuple[UpstreamConnection, FakeTransport]] = []

    def reload(self, toml: str) -> None:
        """What a worker does on a reload: build a graph from ``toml``, swap, retire the old."""
        config = parse_config(toml, Path("harness.toml"))
        old = self.runtime
        self.runtime = Runtime.build(old.generation + 1, config, (), {})
        self.ctx.runtime = self.runtime
        self.listener = next(iter(self.runtime.listeners.values()))
        old.retire(self.runtime)

    def server(self, backend: str | None = None, index: int = 0) -> ServerRuntime:
        b = (
            self.runtime.backends[backend]
            if backend
            else next(iter(self.runtime.backends.values()))
        )
        return b.servers[index]

    def pooled_upstream(self, server: ServerRuntime | None = None) -> FakeTransport:
        """Put an upstream connection on a fake transport into ``server``'s pool."""
        server = server or self.server()
        up = UpstreamConnection(server, self.ctx.deadlines)
        transport = FakeTransport(peer=(server.state.host, server.state.port))
        up.connection_made(transport)  # type: ignore[arg-type]
        server.pool.release(up, self.ctx.loop.time())
        self.upstreams.append((up, transport))
        return transport

    def client(
        self, *, tls: bool = False, peer: tuple[str, int] = ("127.0.0.2", 40000)
    ) -> tuple[ClientConnection, FakeTransport]:
        """A client connection that has just been accepted."""
        conn = ClientConnection(self.ctx, self.listener, tls)
        transport = FakeTransport(peer=peer)
        conn.connection_made(transport)  # type: ignore[arg-type]
        return conn, transport

    def upstream_of(self, transport: FakeTransport) -> UpstreamConnection:
        for up, t in self.upstreams:
            if t is transport:
                return up
        raise KeyError("not one of this harness's upstream transports")

    def access_entries(self) -> list[dict[str, Any]]:
        """The access log's lines so far, parsed (the harness was given ``access``)."""
        self.ctx.access.flush()
        destination = self.ctx.access.destination
        assert destination, "a Harness made without an access log"
        text = Path(destination).read_text()
        return [json.loads(line) for line in text.splitlines()]

    def close(self) -> None:
        self.ctx.close()
