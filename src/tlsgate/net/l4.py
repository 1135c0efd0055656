"""Layer 4: reading preambles by peeking, and splicing bytes.

How this works (connections come from ``net.listener``'s ``Acceptor``; every
raw socket here is driven by the worker's edge-triggered ``net.poller``, where
it is registered once, and by the worker's deadline wheel, not by per-event
callbacks or timers):

* ``Preamble`` reads what comes before the payload: the PROXY header (only
  from ``trusted_proxies``; PROXY spec §5: never auto-detected) and, on
  tls-passthrough listeners, the ClientHello. It *peeks* (``MSG_PEEK``) on each
  arrival of bytes; the PROXY header is then consumed exactly and the
  ClientHello not at all, so the payload reaches the next stage untouched (TLS
  on an https listener, the app server on a passthrough one). A FIN before the
  preamble is complete ends the connection at once.
* ``L4Session`` routes (SNI for passthrough) and connects to a server of the
  backend without a task: a non-blocking ``connect`` whose completion is the
  socket's first writable event, under the backend's ``connect_timeout``,
  retried on another server and recorded for passive ejection the way HTTP
  upstream connects are (``net.connect``). It sends a PROXY header if the
  backend wants one, then hands both sockets to a ``Splicer``.
* ``Splicer`` moves bytes each way with ``os.splice`` through a pipe: zero
  copies into Python, and at most one pipe (64 KiB) in flight per direction,
  which is also the backpressure: a direction stops reading while its pipe
  can't drain. Each direction remembers what the last events said (the source
  has bytes or EOF, the destination has room) and pumps until the kernel says
  ``EAGAIN``. EOF in one direction is passed on as ``shutdown(SHUT_WR)`` once
  the pipe is empty (half-close); the session ends when both directions are
  done, on an error, or after ``connect_idle_timeout`` of silence.
"""

from __future__ import annotations

import _socket
import contextlib
import errno
import functools
import ipaddress
import logging
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tlsgate.errors import NoServerAvailable, RemoteProtocolError, UpstreamError
from tlsgate.logs import AccessRecord
from tlsgate.net.connect import connect_error, connect_failed, connect_timeout
from tlsgate.net.context import ServeContext
from tlsgate.net.deadlines import Deadlines
from tlsgate.net.poller import EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT, EPOLLRDHUP, Poller
from tlsgate.proto.clienthello import ClientHello, parse_client_hello
from tlsgate.proto.common import NeedMoreData
from tlsgate.proto.proxy_protocol import (
    ProxyHeader,
    client_address_of,
    parse_proxy_header,
    proxy_header_for,
)

if TYPE_CHECKING:
    from tlsgate.net.runtime import BackendRuntime, ListenerRuntime, ServerRuntime

log = logging.getLogger("tlsgate.l4")

_PROXY_MAX = 16 + 4096 + 232  # v2 fixed part + TLV cap + largest address block (v1 is <= 107)
_SPLICE_CHUNK = 1 << 16
_SPLICE_FLAGS = os.SPLICE_F_NONBLOCK | os.SPLICE_F_MOVE
_READABLE = EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP  # a read will say what happened
_WRITABLE = EPOLLOUT | EPOLLERR | EPOLLHUP  # a write will say what happened
_INF = float("inf")

Address = tuple[str, int]

# The C socket type under ``socket.socket``. Accepted and upstream sockets of the L4
# path are made as these: ``socket.socket`` adds Python-level ``__init__``, ``accept``
# and ``close`` wrappers (with enum conversions) that were 14 % of a worker's samples
# per new passthrough connection (py-spy), and nothing here needs what they add.
RawSocket = _socket.socket


def _addr(sockaddr: Any) -> Address:
    return (str(sockaddr[0]), int(sockaddr[1])) if sockaddr else ("", 0)


class Preamble:
    """Reads the PROXY header and/or the ClientHello of one accepted connection.

    The socket is registered with ``poller`` by :meth:`start` and stays registered
    when the preamble is done: the caller retargets or removes it. ``on_done(proxy,
    hello, error)`` is called once: ``error`` is None on success; on a ClientHello
    problem ``hello`` is None and ``error`` says why (the caller decides: fallback
    backend or close); a PROXY problem or a timeout is an error too (close).
    """

    def __init__(
        self,
        poller: Poller,
        deadlines: Deadlines,
        sock: RawSocket,
        *,
        want_proxy: bool,
        want_hello: bool,
        max_hello: int,
        timeout: float,
        on_done: Callable[[ProxyHeader | None, ClientHello | None, str | None], None],
    ) -> None:
        self.poller = poller
        self.deadlines = deadlines
        self.sock = sock
        self.fd = sock.fileno()
        self.want_proxy = want_proxy
        self.want_hello = want_hello
        self.max_hello = max_hello
        self.on_done = on_done
        self.proxy: ProxyHeader | None = None
        self.finished = False
        self.timeout = timeout
        self.deadline = _INF  # net.deadlines.Timed
        self.slot = 0

    def start(self) -> None:
        self.deadlines.arm(self, self.deadlines.loop.time() + self.timeout)
        self.poller.add(self.fd, self)
        # bytes that came with the connection raise no event of their own
        self._readable(eof=False)

    def on_events(self, fd: int, events: int) -> None:
        if events & _READABLE:
            self._readable(eof=bool(events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)))

    def deadline_reached(self, now: float) -> None:
        what = "PROXY header" if self.want_proxy and self.proxy is None else "ClientHello"
        self.abort(f"timeout: no complete {what} within {self.timeout:g}s")

    def _finish(self, hello: ClientHello | None, error: str | None) -> None:
        self.finished = True
        self.deadlines.discard(self)
        self.on_done(self.proxy, hello, error)

    def abort(self, reason: str) -> None:
        """Give up on this connection (timeout, bad PROXY header, peer gone)."""
        if not self.finished:
            self._finish(None, reason)

    def cancel(self) -> None:
        """A full listener sheds this connection (net.listener.Acceptor)."""
        self.abort("shed: the listener is at max_connections and this preamble was overdue")

    def _readable(self, *, eof: bool) -> None:
        if self.finished:
            return
        try:
            data = self.sock.recv(_PROXY_MAX + self.max_hello + 5, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            if eof:
                self.abort("connection closed before a preamble")
            return
        except OSError as exc:
            self.abort(f"connection error while reading the preamble: {exc.strerror or exc}")
            return
        eof = eof or not data
        if self.want_proxy and self.proxy is None:
            try:
                parsed = parse_proxy_header(data)
            except RemoteProtocolError as exc:
                self.abort(f"bad PROXY header: {exc}")
                return
            if isinstance(parsed, NeedMoreData):
                if eof:
                    self.abort("connection closed before the PROXY header")
                return
            self.proxy = parsed
            # consume exactly the header; what follows stays queued for the next stage
            got = self.sock.recv(parsed.size)
            if len(got) != parsed.size:
                self.abort("short read while consuming the PROXY header")
                return
            data = data[parsed.size :]
        if not self.want_hello:
            self._finish(None, None)
            return
        try:
            hello = parse_client_hello(data, max_size=self.max_hello)
        except RemoteProtocolError as exc:
            self._finish(None, f"bad ClientHello: {exc}")
            return
        if isinstance(hello, NeedMoreData):
            if eof:
                self.abort("connection closed before a ClientHello")
            return
        self._finish(hello, None)


# Empty pipes kept for the next session: two pipe2() and four close() calls fewer per
# connection (measured: pipe set-up and tear-down were ~6 % of a worker's samples under
# wrk with one request per connection).
_PIPES: list[tuple[int, int]] = []
_PIPES_KEPT = 256


def _take_pipe() -> tuple[int, int]:
    return _PIPES.pop() if _PIPES else os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)


def _give_pipe(r: int, w: int, *, empty: bool) -> None:
    if empty and len(_PIPES) < _PIPES_KEPT:
        _PIPES.append((r, w))
    else:
        os.close(r)
        os.close(w)


class _Direction:
    """One way through a splicer: source socket -> pipe -> destination socket.

    ``readable``/``writable`` are what the last events said and no ``EAGAIN`` has
    contradicted since (edge-triggered readiness is reported once).
    """

    __slots__ = (
        "bytes",
        "dst",
        "dst_fd",
        "eof",
        "in_pipe",
        "name",
        "pipe_r",
        "pipe_w",
        "readable",
        "shut",
        "src_fd",
        "writable",
    )

    def __init__(self, name: str, src_fd: int, dst: RawSocket, *, readable: bool) -> None:
        self.name = name
        self.src_fd = src_fd
        self.dst = dst
        self.dst_fd = dst.fileno()
        self.pipe_r, self.pipe_w = _take_pipe()
        self.in_pipe = 0
        self.eof = False
        self.shut = False  # the FIN has been passed on
        self.readable = readable
        self.writable = True
        self.bytes = 0


class Splicer:
    """Bidirectional zero-copy forwarding between two connected non-blocking sockets,
    both registered with ``poller`` (see :class:`Splicer.start`)."""

    def __init__(
        self,
        poller: Poller,
        deadlines: Deadlines,
        client: RawSocket,
        server: RawSocket,
        *,
        idle_timeout: float,
        on_close: Callable[[str], None],
        server_readable: bool = True,
    ) -> None:
        self.poller = poller
        self.deadlines = deadlines
        self.client = client
        self.server = server
        self.client_fd = client.fileno()
        self.server_fd = server.fileno()
        # client -> server: the client's bytes so far (the ClientHello) are waiting
        self.up = _Direction("client", self.client_fd, server, readable=True)
        self.down = _Direction("server", self.server_fd, client, readable=server_readable)
        self.idle_timeout = idle_timeout
        self.on_close = on_close
        self.closed = False
        self.first_eof: str | None = None  # which side closed first, for the access log
        self.deadline = _INF  # net.deadlines.Timed
        self.slot = 0

    def start(self) -> None:
        """Take over both sockets' events (they are registered already) and move
        what is waiting."""
        self.poller.retarget(self.client_fd, self)
        self.poller.retarget(self.server_fd, self)
        self.deadlines.arm(self, self.deadlines.loop.time() + self.idle_timeout)
        self._pump(self.up)
        if not self.closed:
            self._pump(self.down)

    def deadline_reached(self, now: float) -> None:
        if not self.closed:
            self.close(f"idle timeout ({self.idle_timeout:g}s)")

    def on_events(self, fd: int, events: int) -> None:
        if self.closed:
            return
        # the client's socket is the source going up and the destination coming down
        src, dst = (self.up, self.down) if fd == self.client_fd else (self.down, self.up)
        if events & _READABLE:
            src.readable = True
        if events & _WRITABLE:
            dst.writable = True
        self._pump(src)
        if not self.closed:
            self._pump(dst)

    def _pump(self, d: _Direction) -> None:
        moved = False
        while True:
            progressed = False
            if d.in_pipe and d.writable:
                try:
                    m = os.splice(d.pipe_r, d.dst_fd, d.in_pipe, flags=_SPLICE_FLAGS)
                except (BlockingIOError, InterruptedError):
                    d.writable = False
                except OSError as exc:
                    other = "server" if d.name == "client" else "client"
                    self.close(f"{other} error: {exc.strerror or exc}")
                    return
                else:
                    d.in_pipe -= m
                    progressed = True
            if d.readable and not d.eof and d.in_pipe < _SPLICE_CHUNK:
                try:
                    n = os.splice(
                        d.src_fd, d.pipe_w, _SPLICE_CHUNK - d.in_pipe, flags=_SPLICE_FLAGS
                    )
                except (BlockingIOError, InterruptedError):
                    # with bytes in the pipe the pipe may be what is full: keep trying
                    # once it drains; an empty pipe means the socket has nothing
                    if not d.in_pipe:
                        d.readable = False
                except OSError as exc:
                    self.close(f"{d.name} error: {exc.strerror or exc}")
                    return
                else:
                    if n == 0:
                        d.eof = True
                        if self.first_eof is None:
                            self.first_eof = d.name
                    else:
                        d.in_pipe += n
                        d.bytes += n
                        moved = True
                    progressed = True
            if not progressed:
                break
        if moved:
            # a later deadline is one store: the wheel moves the session on lazily
            self.deadline = self.deadlines.loop.time() + self.idle_timeout
        if d.eof and not d.in_pipe and not d.shut:
            # half-close: pass the FIN on, keep the other direction open
            d.shut = True
            with contextlib.suppress(OSError):
                d.dst.shutdown(socket.SHUT_WR)
            if self.up.shut and self.down.shut:
                self.close(f"{self.first_eof} closed")

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.deadlines.discard(self)
        self.poller.forget(self.client_fd)
        self.poller.forget(self.server_fd)
        for d in (self.up, self.down):
            _give_pipe(d.pipe_r, d.pipe_w, empty=d.in_pipe == 0)
        self.client.close()
        self.server.close()
        self.on_close(reason)


class L4Session:
    """One connection on a tcp or tls-passthrough listener.

    Between the preamble and the splicer it owns the events of both sockets: the
    upstream socket's first writable event is the end of the connect, and what the
    client's say meanwhile is remembered for the splicer (a poll target).
    """

    def __init__(
        self,
        ctx: ServeContext,
        listener: ListenerRuntime,
        sock: RawSocket,
        peer: Address,
        *,
        client_slot: str | None = None,
    ) -> None:
        self.ctx = ctx
        self.listener = listener
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.client_slot = client_slot  # its max_connections_per_client key
        self.client = peer
        self.proxy: ProxyHeader | None = None
        self.hello: ClientHello | None = None
        self.backend: BackendRuntime | None = None
        self.server: ServerRuntime | None = None
        self.upstream: RawSocket | None = None
        self.splicer: Splicer | None = None
        self.preamble: Preamble | None = None
        self.t_start = ctx.loop.time()
        self.closed = False
        self.reason = ""
        self.tried: set[str] = set()
        self.registered = False  # the client socket is in the poller
        self.upstream_readable = False  # the server spoke while we connected
        self.deadline = _INF  # net.deadlines.Timed: the connect timeout
        self.slot = 0

    # ---- start --------------------------------------------------------------------------------

    def start(self) -> None:
        lc = self.listener.config
        # (max_connections: the listener's Acceptor counts it from its accept on)
        self.listener.connections.add(self)
        self.ctx.connections.add(self)
        if lc.accept_proxy_protocol and not self.listener.is_trusted(self.peer[0]):
            self.finish(f"PROXY header expected from trusted_proxies only; {self.peer[0]} is not")
            return
        want_hello = lc.protocol == "tls-passthrough"
        if not lc.accept_proxy_protocol and not want_hello:
            self.ctx.poller.add(self.fd, self)
            self.registered = True
            self.routed()
            return
        self.preamble = Preamble(
            self.ctx.poller,
            self.ctx.deadlines,
            self.sock,
            want_proxy=lc.accept_proxy_protocol,
            want_hello=want_hello,
            max_hello=lc.limits.max_client_hello_size,
            timeout=lc.limits.header_timeout,
            on_done=self._preamble_done,
        )
        self.registered = True
        self.preamble.start()

    def on_events(self, fd: int, events: int) -> None:
        if self.closed:
            return
        if fd == self.fd:
            return  # the splicer starts by reading the client in any case
        if events & _READABLE:
            self.upstream_readable = True
        up = self.upstream
        if up is not None and events & (EPOLLOUT | EPOLLERR | EPOLLHUP) and fd == up.fileno():
            err = up.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._connect_failed(connect_error(self._server(), OSError(err, os.strerror(err))))
            else:
                self._connected()

    def _preamble_done(
        self, proxy: ProxyHeader | None, hello: ClientHello | None, error: str | None
    ) -> None:
        self.preamble = None
        self.ctx.poller.retarget(self.fd, self)
        self.proxy = proxy
        self.client = client_address_of(proxy, self.peer)
        self.hello = hello
        lc = self.listener.config
        if error is not None:
            if lc.protocol == "tls-passthrough" and error.startswith("bad ClientHello"):
                self._fallback(error)
                return
            self.finish(error)
            return
        self.routed()

    def _fallback(self, why: str) -> None:
        lc = self.listener.config
        fb = lc.fallback_backend
        runtime = self.ctx.runtime
        if fb and runtime is not None and fb in runtime.backends:
            log.info(
                "listener %s: %s from %s; sending it to fallback backend %s",
                lc.name,
                why,
                self.client[0],
                fb,
            )
            self.reason = why
            self.backend = runtime.backends[fb]
            self._connect_next()
            return
        log.info("listener %s: closing a connection from %s: %s", lc.name, self.client[0], why)
        self.finish(why)

    def routed(self) -> None:
        lc = self.listener.config
        if lc.protocol == "tls-passthrough":
            hello = self.hello
            if hello is None or not hello.server_name:
                self._fallback("no SNI in the ClientHello")
                return
            backend = self.listener.routes.match(hello.server_name, "/")
            if backend is None:
                self._fallback(f"no route for SNI {hello.server_name!r}")
                return
        else:
            backend = self.listener.routes.match("", "/")
            if backend is None:
                self.finish("no backend")
                return
        self.backend = backend
        self._connect_next()

    # ---- connect ------------------------------------------------------------------------------

    def _backend(self) -> BackendRuntime:
        assert self.backend is not None
        return self.backend

    def _server(self) -> ServerRuntime:
        assert self.server is not None
        return self.server

    def _connect_next(self, last: UpstreamError | None = None) -> None:
        """Pick a server not tried yet and start connecting to it."""
        backend = self._backend()
        server = backend.pick(self.client[0].encode(), frozenset(self.tried))
        if server is None:
            error = last or NoServerAvailable(f"no server of backend {backend.name!r} is available")
            self.finish(str(error))
            return
        self.server = server
        server.state.active += 1  # from the connect to the end of the session
        host, port = server.state.host, server.state.port
        if is_ip(host):  # the common case: no resolver round trip through a thread
            self._connect_to(socket.AF_INET6 if ":" in host else socket.AF_INET, (host, port))
        else:
            self.ctx.spawn(self._resolve_and_connect(server, host, port))

    async def _resolve_and_connect(self, server: ServerRuntime, host: str, port: int) -> None:
        try:
            infos = await self.ctx.loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            if not self.closed:
                self._connect_failed(connect_error(server, exc))
            return
        if not self.closed:
            family, _, _, _, sockaddr = infos[0]
            self._connect_to(family, sockaddr)

    def _connect_to(self, family: int, sockaddr: Any) -> None:
        server = self._server()
        timeout = self._backend().config.connect_timeout
        try:
            up = RawSocket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except OSError as exc:
            self._connect_failed(connect_error(server, exc))
            return
        self.upstream = up
        self.upstream_readable = False
        with contextlib.suppress(OSError):
            up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = up.connect_ex(sockaddr)
        if err == 0:
            self.ctx.poller.add(up.fileno(), self)
            self.upstream_readable = True  # connected at once: look for a greeting
            self._connected()
        elif err in (errno.EINPROGRESS, errno.EAGAIN):
            self.ctx.poller.add(up.fileno(), self)  # its first writable event ends the connect
            self.ctx.deadlines.arm(self, self.ctx.loop.time() + timeout)
        else:
            self._connect_failed(connect_error(server, OSError(err, os.strerror(err))))

    def deadline_reached(self, now: float) -> None:
        if not self.closed and self.splicer is None and self.upstream is not None:
            server = self._server()
            self._connect_failed(connect_timeout(server, self._backend().config.connect_timeout))

    def _drop_upstream(self) -> None:
        up = self.upstream
        if up is not None:
            self.upstream = None
            self.ctx.poller.forget(up.fileno())
            up.close()

    def _connect_failed(self, error: UpstreamError) -> None:
        self.ctx.deadlines.discard(self)
        self._drop_upstream()
        server = self._server()
        server.state.active -= 1
        self.server = None
        if connect_failed(self._backend(), server, error, self.ctx.loop.time(), self.tried):
            self._connect_next(error)
        else:
            self.finish(str(error))

    def _connected(self) -> None:
        self.ctx.deadlines.discard(self)
        self._server().state.record_success()
        up = self.upstream
        assert up is not None
        self._forward(up)

    def is_closed(self) -> bool:
        return self.closed

    def _forward(self, up: RawSocket) -> None:
        cfg = self._backend().config
        if cfg.send_proxy_protocol:
            hello = self.hello
            header = proxy_header_for(
                cfg.send_proxy_protocol,
                self.client,
                self.proxy.destination
                if self.proxy is not None and self.proxy.destination
                else _addr(self.sock.getsockname()),
                sni=hello.server_name if hello else None,
                alpn=hello.alpn[0] if hello and hello.alpn else None,
                crc32c=cfg.proxy_protocol_crc32c,
            )
            try:
                sent = up.send(header)  # a fresh socket's send buffer always takes ~100 bytes
            except OSError as exc:
                self.finish(f"sending the PROXY header to {self.server_key()} failed: {exc}")
                return
            if sent != len(header):
                self.finish(f"could not send the whole PROXY header to {self.server_key()}")
                return
        splicer = Splicer(
            self.ctx.poller,
            self.ctx.deadlines,
            self.sock,
            up,
            idle_timeout=self.listener.config.limits.connect_idle_timeout,
            on_close=self._spliced_done,
            server_readable=self.upstream_readable,
        )
        self.splicer = splicer
        splicer.start()  # may end the session at once (the server already closed)

    def server_key(self) -> str:
        return self.server.key if self.server else "-"

    # ---- endings ------------------------------------------------------------------------------

    def _spliced_done(self, reason: str) -> None:
        self.finish(reason, sockets_closed=True)

    def drain(self) -> None:
        """Graceful shutdown: a byte stream has no request boundary; it runs to the deadline."""
        if self.splicer is None:
            self.abort()

    def abort(self) -> None:
        if self.splicer is not None:
            self.splicer.close("shutdown deadline")
        else:
            self.finish("shutdown")

    def finish(self, reason: str, *, sockets_closed: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        if self.preamble is not None:
            self.preamble.abort(reason)
            self.preamble = None
        if not sockets_closed:
            self.ctx.deadlines.discard(self)
            if self.registered:
                self.ctx.poller.forget(self.fd)
            self.sock.close()
            self._drop_upstream()
        if self.server is not None:
            self.server.state.active -= 1
        self.listener.release(self)
        self.ctx.connections.discard(self)
        if self.client_slot is not None:
            self.listener.client_left(self.client_slot)
            self.client_slot = None
        self._access_log(self.reason + "; " + reason if self.reason else reason)
        # the splicer calls back into the session: without it the pair would be a cycle
        # left for the garbage collector, one per connection
        self.splicer = None
        self.ctx.connection_closed()

    def _access_log(self, reason: str) -> None:
        access = self.ctx.access
        if not access.enabled:
            return
        hello = self.hello
        access.write(
            AccessRecord(
                kind="stream",
                client_ip=self.client[0],
                client_port=self.client[1],
                peer_ip=self.peer[0],
                listener=self.listener.name,
                protocol=self.listener.config.protocol,
                sni=hello.server_name if hello else None,
                alpn=list(hello.alpn) if hello else None,
                backend=self.backend.name if self.backend else None,
                server=self.server.key if self.server else None,
                bytes_in=self.splicer.up.bytes if self.splicer else 0,
                bytes_out=self.splicer.down.bytes if self.splicer else 0,
                duration_ms=round((self.ctx.loop.time() - self.t_start) * 1000.0, 3),
                close_reason=reason,
                worker=self.ctx.slot,
            )
        )


@functools.lru_cache(maxsize=1024)  # called per connect with the same few server hosts
def is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True
