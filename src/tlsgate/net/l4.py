"""Layer 4: reading preambles by peeking, and splicing bytes.

How this works (connections come from ``net.listener``'s ``Acceptor``):

* ``Preamble`` reads what comes before the payload: the PROXY header (only
  from ``trusted_proxies``; PROXY spec §5: never auto-detected) and, on
  tls-passthrough listeners, the ClientHello. It *peeks* (``MSG_PEEK``) and
  sets ``SO_RCVLOWAT`` to the number of bytes it still needs, so epoll wakes it
  only when more have arrived; the PROXY header is then consumed exactly and
  the ClientHello not at all, so the payload reaches the next stage untouched
  (TLS on an https listener, the app server on a passthrough one).
* ``L4Session`` routes (SNI for passthrough), connects to a server of the
  backend (connect timeout, retry on another server, passive ejection), sends
  a PROXY header if the backend wants one, then hands both sockets to a
  ``Splicer``.
* ``Splicer`` moves bytes each way with ``os.splice`` through a pipe: zero
  copies into Python, and at most one pipe (64 KiB) in flight per direction,
  which is also the backpressure: a direction stops reading when its pipe
  can't drain. EOF in one direction is passed on as ``shutdown(SHUT_WR)``
  once the pipe is empty (half-close); the session ends when both directions
  are done, on an error, or after ``connect_idle_timeout`` of silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import ipaddress
import logging
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tlsgate.errors import RemoteProtocolError, UpstreamError
from tlsgate.logs import AccessRecord
from tlsgate.net.connect import connect_to_backend
from tlsgate.net.context import ServeContext
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

Address = tuple[str, int]


def _addr(sockaddr: Any) -> Address:
    return (str(sockaddr[0]), int(sockaddr[1])) if sockaddr else ("", 0)


class PreambleError(Exception):
    """The preamble could not be read; ``reason`` goes to the logs."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Preamble:
    """Reads the PROXY header and/or the ClientHello of one accepted connection.

    ``on_done(proxy, hello, error)`` is called once: ``error`` is None on success; on a
    ClientHello problem ``hello`` is None and ``error`` says why (the caller decides:
    fallback backend or close); a PROXY problem or a timeout closes the socket.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        *,
        want_proxy: bool,
        want_hello: bool,
        max_hello: int,
        timeout: float,
        on_done: Callable[[ProxyHeader | None, ClientHello | None, str | None], None],
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.want_proxy = want_proxy
        self.want_hello = want_hello
        self.max_hello = max_hello
        self.on_done = on_done
        self.proxy: ProxyHeader | None = None
        self.finished = False
        self._seen = 0  # bytes queued at the last wake-up that needed more
        self._timer = loop.call_later(timeout, self._timeout)
        self._timeout_s = timeout

    def start(self) -> None:
        self.loop.add_reader(self.fd, self._readable)

    def _finish(self, hello: ClientHello | None, error: str | None) -> None:
        self.finished = True
        self._timer.cancel()
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(self.fd)
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
        self.on_done(self.proxy, hello, error)

    def abort(self, reason: str) -> None:
        """Give up on this connection (timeout, bad PROXY header, peer gone)."""
        if self.finished:
            return
        self.finished = True
        self._timer.cancel()
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(self.fd)
        self.on_done(self.proxy, None, reason)

    def _timeout(self) -> None:
        what = "PROXY header" if self.want_proxy and self.proxy is None else "ClientHello"
        self.abort(f"timeout: no complete {what} within {self._timeout_s:g}s")

    def _need(self, total: int) -> None:
        # wake up only once `total` bytes are queued (or on EOF), instead of spinning
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, max(1, total))

    def _readable(self) -> None:
        if self.finished:
            return
        try:
            data = self.sock.recv(_PROXY_MAX + self.max_hello + 5, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.abort(f"connection error while reading the preamble: {exc.strerror or exc}")
            return
        # SO_RCVLOWAT wakes us only when more bytes are queued, or on EOF; a wake-up that
        # brings nothing new is therefore the peer's FIN (a peek can't tell it otherwise)
        eof = not data or len(data) <= self._seen
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
                self._seen = len(data)
                self._need(parsed.at_least or len(data) + 1)
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
            self._seen = len(data)
            self._need(hello.at_least or len(data) + 1)
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
    __slots__ = ("bytes", "dst", "eof", "in_pipe", "name", "pipe_r", "pipe_w", "src", "writing")

    def __init__(self, name: str, src: socket.socket, dst: socket.socket) -> None:
        self.name = name
        self.src = src
        self.dst = dst
        self.pipe_r, self.pipe_w = _take_pipe()
        self.in_pipe = 0
        self.eof = False
        self.writing = False
        self.bytes = 0


class Splicer:
    """Bidirectional zero-copy forwarding between two connected non-blocking sockets."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client: socket.socket,
        server: socket.socket,
        *,
        idle_timeout: float,
        on_close: Callable[[str], None],
    ) -> None:
        self.loop = loop
        self.client = client
        self.server = server
        self.up = _Direction("client", client, server)  # client -> server
        self.down = _Direction("server", server, client)  # server -> client
        self.idle_timeout = idle_timeout
        self.on_close = on_close
        self.closed = False
        self.first_eof: str | None = None  # which side closed first, for the access log
        self.last_activity = loop.time()
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        for d in (self.up, self.down):
            self.loop.add_reader(d.src.fileno(), self._on_readable, d)
        self._timer = self.loop.call_later(self.idle_timeout, self._check_idle)

    def _check_idle(self) -> None:
        self._timer = None
        if self.closed:
            return
        remaining = self.last_activity + self.idle_timeout - self.loop.time()
        if remaining > 0.001:
            self._timer = self.loop.call_later(remaining, self._check_idle)
            return
        self.close(f"idle timeout ({self.idle_timeout:g}s)")

    def _on_readable(self, d: _Direction) -> None:
        if self.closed:
            return
        try:
            n = os.splice(d.src.fileno(), d.pipe_w, _SPLICE_CHUNK, flags=_SPLICE_FLAGS)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.close(f"{d.name} error: {exc.strerror or exc}")
            return
        if n == 0:
            d.eof = True
            if self.first_eof is None:
                self.first_eof = d.name
            self.loop.remove_reader(d.src.fileno())
        else:
            d.in_pipe += n
            d.bytes += n
            self.last_activity = self.loop.time()
        self._flush(d)

    def _on_writable(self, d: _Direction) -> None:
        if not self.closed:
            self._flush(d)

    def _flush(self, d: _Direction) -> None:
        while d.in_pipe:
            try:
                m = os.splice(d.pipe_r, d.dst.fileno(), d.in_pipe, flags=_SPLICE_FLAGS)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                other = "server" if d.name == "client" else "client"
                self.close(f"{other} error: {exc.strerror or exc}")
                return
            d.in_pipe -= m
        if d.in_pipe:
            # the destination is full: stop reading the source until it drains
            if not d.writing:
                d.writing = True
                if not d.eof:
                    self.loop.remove_reader(d.src.fileno())
                self.loop.add_writer(d.dst.fileno(), self._on_writable, d)
            return
        if d.writing:
            d.writing = False
            self.loop.remove_writer(d.dst.fileno())
            if not d.eof:
                self.loop.add_reader(d.src.fileno(), self._on_readable, d)
        if d.eof:
            # half-close: pass the FIN on, keep the other direction open
            with contextlib.suppress(OSError):
                d.dst.shutdown(socket.SHUT_WR)
            if self.up.eof and self.down.eof and not self.up.in_pipe and not self.down.in_pipe:
                self.close(f"{self.first_eof} closed")

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        for d in (self.up, self.down):
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_reader(d.src.fileno())
            if d.writing:
                with contextlib.suppress(ValueError, OSError):
                    self.loop.remove_writer(d.dst.fileno())
            _give_pipe(d.pipe_r, d.pipe_w, empty=d.in_pipe == 0)
        self.client.close()
        self.server.close()
        self.on_close(reason)


class L4Session:
    """One connection on a tcp or tls-passthrough listener."""

    def __init__(
        self,
        ctx: ServeContext,
        listener: ListenerRuntime,
        sock: socket.socket,
        peer: Address,
    ) -> None:
        self.ctx = ctx
        self.listener = listener
        self.sock = sock
        self.peer = peer
        self.client = peer
        self.local = _addr(sock.getsockname())
        self.proxy: ProxyHeader | None = None
        self.hello: ClientHello | None = None
        self.backend: BackendRuntime | None = None
        self.server: ServerRuntime | None = None
        self.upstream: socket.socket | None = None
        self.splicer: Splicer | None = None
        self.preamble: Preamble | None = None
        self.t_start = ctx.loop.time()
        self.closed = False
        self.reason = ""
        self.tried: set[str] = set()

    # ---- start --------------------------------------------------------------------------------

    def start(self) -> None:
        lc = self.listener.config
        self.listener.connections.add(self)
        self.ctx.connections.add(self)
        if len(self.listener.connections) > lc.limits.max_connections:
            self.finish(f"max_connections ({lc.limits.max_connections}) reached")
            return
        if lc.accept_proxy_protocol and not self.listener.is_trusted(self.peer[0]):
            self.finish(f"PROXY header expected from trusted_proxies only; {self.peer[0]} is not")
            return
        want_hello = lc.protocol == "tls-passthrough"
        if not lc.accept_proxy_protocol and not want_hello:
            self.routed()
            return
        self.preamble = Preamble(
            self.ctx.loop,
            self.sock,
            want_proxy=lc.accept_proxy_protocol,
            want_hello=want_hello,
            max_hello=lc.limits.max_client_hello_size,
            timeout=lc.limits.header_timeout,
            on_done=self._preamble_done,
        )
        self.preamble.start()

    def _preamble_done(
        self, proxy: ProxyHeader | None, hello: ClientHello | None, error: str | None
    ) -> None:
        self.preamble = None
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
            self.ctx.spawn(self._connect())
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
        self.ctx.spawn(self._connect())

    # ---- connect ------------------------------------------------------------------------------

    async def _connect(self) -> None:
        assert self.backend is not None
        loop = self.ctx.loop

        async def open_one(server: ServerRuntime) -> socket.socket:
            host, port = server.state.host, server.state.port
            family: int
            sockaddr: Any
            if is_ip(host):  # the common case: no resolver round trip through a thread
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                sockaddr = (host, port)
            else:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                family, _, _, _, sockaddr = infos[0]
            up = socket.socket(family, socket.SOCK_STREAM)
            up.setblocking(False)
            try:
                await _connect(loop, up, sockaddr)
            except BaseException:  # failed, timed out or cancelled: don't leak the socket
                up.close()
                raise
            return up

        try:
            server, up, _ = await connect_to_backend(
                self.backend, self.client[0].encode(), self.tried, open_one
            )
        except UpstreamError as exc:
            self.finish(str(exc))
            return
        if self.is_closed():
            up.close()
            return
        server.state.active += 1
        self.server = server
        self.upstream = up
        self._forward(up)

    def is_closed(self) -> bool:
        return self.closed

    def _forward(self, up: socket.socket) -> None:
        assert self.backend is not None
        cfg = self.backend.config
        with contextlib.suppress(OSError):
            up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if cfg.send_proxy_protocol:
            hello = self.hello
            header = proxy_header_for(
                cfg.send_proxy_protocol,
                self.client,
                self.proxy.destination
                if self.proxy is not None and self.proxy.destination
                else self.local,
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
        self.splicer = Splicer(
            self.ctx.loop,
            self.sock,
            up,
            idle_timeout=self.listener.config.limits.connect_idle_timeout,
            on_close=self._spliced_done,
        )
        self.splicer.start()

    def server_key(self) -> str:
        return self.server.key if self.server else "-"

    # ---- endings ------------------------------------------------------------------------------

    def _spliced_done(self, reason: str) -> None:
        self.splicer_reason = reason
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
            self.sock.close()
            if self.upstream is not None:
                self.upstream.close()
        if self.server is not None:
            self.server.state.active -= 1
        self.listener.connections.discard(self)
        self.ctx.connections.discard(self)
        self._access_log(self.reason + "; " + reason if self.reason else reason)
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


async def _connect(loop: asyncio.AbstractEventLoop, sock: socket.socket, sockaddr: Any) -> None:
    """Connect a non-blocking socket to an already resolved address.

    ``loop.sock_connect`` would resolve (and IDNA-encode) the address again on every
    call; measured, that was a visible part of a new passthrough connection's cost.
    """
    err = sock.connect_ex(sockaddr)
    if err in (errno.EINPROGRESS, errno.EAGAIN):
        done: asyncio.Future[None] = loop.create_future()
        fd = sock.fileno()
        loop.add_writer(fd, _writable, done)
        try:
            await done
        finally:
            loop.remove_writer(fd)
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, os.strerror(err))


def _writable(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


@functools.lru_cache(maxsize=1024)  # called per connect with the same few server hosts
def is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True
