"""Accept paths: how a listening socket's connections reach the data plane.

How this works: ``serve`` starts one accept path per listening socket:

Each listening socket has an :class:`Acceptor`, which accepts on the loop and
passes each socket on:

* ``http``/``https`` listeners that need nothing before HTTP or TLS starts: to the
  event loop's transport (``loop.connect_accepted_socket``, which does the TLS
  handshake) and a :class:`~tlsgate.net.http_proxy.ClientConnection`;
* ``tcp``/``tls-passthrough`` listeners: to an :class:`~tlsgate.net.l4.L4Session`;
* http/https listeners that take a PROXY header (TLS must not start before it is
  read) or, on https, while an ACME TLS-ALPN-01 challenge is pending (RFC 8737):
  to a preamble reader that peeks at the ClientHello first. With no challenge
  pending an https listener is on the direct path; the worker switches the accept
  path when challenges come and go.

``max_connections`` counts a connection from its accept to its close, its TLS
handshake or preamble included. A full listener stops accepting (new connections
wait in the kernel's accept queue, as with HAProxy's ``maxconn``) until one
closes; while full, a connection that has spent more than ``SHED_AFTER`` in its
handshake or preamble is dropped for the next one waiting (a connection flood of
clients that never finish their handshake cannot hold the listener).

The ``Acceptor`` backs off for a moment on EMFILE/ENFILE instead of spinning.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import heapq
import logging
import os
import socket
import ssl
import sys
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from tlsgate.config.model import ListenerConfig
from tlsgate.net.context import ServeContext
from tlsgate.net.http_proxy import ClientConnection
from tlsgate.net.l4 import Address, L4Session, Preamble, RawSocket, _addr
from tlsgate.net.runtime import ListenerRuntime
from tlsgate.proto.clienthello import ClientHello
from tlsgate.proto.proxy_protocol import ProxyHeader

log = logging.getLogger("tlsgate.listener")

_ACCEPT_BATCH = 64
_ACCEPT_BACKOFF = 0.5
# a full listener drops a connection that has been opening for longer than this
SHED_AFTER = 1.0
_FULL_LOG_EVERY = 10.0
# Linux turns TCP_DEFER_ACCEPT seconds into SYN-ACK retransmissions: a silent client is
# accepted after 1, 3, 7, 15, 31 or 63 s
_DEFER_STEPS = (63, 31, 15, 7, 3, 1)
# idle connections closed per look, and how often to look (net.listener.Acceptor._reap)
_REAP_BATCH = 64
_REAP_EVERY = 0.05
INF = float("inf")
_V4_MAPPED = bytes(10) + b"\xff\xff"
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

ACME_TLS_ALPN = "acme-tls/1"


class Closable(Protocol):
    def close(self) -> None: ...


class _Cancellable(Protocol):
    # uvloop's TimerHandle is no asyncio.TimerHandle subclass, and compiled code checks
    def cancel(self) -> None: ...


async def serve(
    ctx: ServeContext, listener: ListenerRuntime, sock: socket.socket, *, tls_alpn01: bool
) -> Closable:
    """Start accepting on ``sock`` (a duplicate the caller may close with the server).

    Args:
        tls_alpn01: a TLS-ALPN-01 challenge is pending, so https ClientHellos are
            peeked at before TLS starts.
    """
    lc = listener.config
    tls = lc.protocol == "https"
    family = sock.family
    if lc.protocol in ("tcp", "tls-passthrough"):

        def accept_l4(fd: int, peer: Any, client: str | None) -> None:
            conn = RawSocket(family, socket.SOCK_STREAM, 0, fd)
            conn.setblocking(False)
            L4Session(ctx, listener, conn, _addr(peer), client_slot=client).start()

        accept = accept_l4
    elif lc.accept_proxy_protocol or (tls and tls_alpn01):
        want_hello = tls and tls_alpn01

        def accept_http(fd: int, peer: Any, client: str | None) -> None:
            conn = RawSocket(family, socket.SOCK_STREAM, 0, fd)
            conn.setblocking(False)
            accept_http_with_preamble(
                ctx, listener, tls, conn, _addr(peer), want_hello=want_hello, client=client
            )

        accept = accept_http
    else:
        assert not tls or listener.certificates is not None
        context = listener.certificates.base_context if listener.certificates else None

        def accept_direct(fd: int, peer: Any, client: str | None) -> None:
            # the event loop's transports want the socket module's own sockets
            conn = socket.socket(family, socket.SOCK_STREAM, 0, fd)
            conn.setblocking(False)
            start_http(ctx, listener, conn, None, context, client=client)

        accept = accept_direct
    acceptor = Acceptor(ctx.loop, sock, listener, accept, ctx.connections)
    acceptor.start()
    return acceptor


class _Throttled:
    """What one log line counts, written at most every ``_FULL_LOG_EVERY`` seconds."""

    def __init__(self) -> None:
        self.last = -INF
        self.count = 0

    def due(self, now: float, n: int = 1) -> int:
        """Count ``n`` more; if a line is due, the count since the last one (else 0)."""
        self.count += n
        if now - self.last < _FULL_LOG_EVERY:
            return 0
        self.last = now
        count, self.count = self.count, 0
        return count


class Acceptor:
    """Accepts connections on the event loop and passes each to ``on_accept``.

    ``on_accept`` gets the new descriptor, the peer address as ``accept(2)`` gave
    it, and the client key the connection counts against for
    ``max_connections_per_client`` (None: not counted); whoever ends the connection
    gives the key back with ``ListenerRuntime.client_left``.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        listener: ListenerRuntime,
        on_accept: Callable[[int, Any, str | None], None],
        everyone: Iterable[object] = (),
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.listener = listener
        self.name = listener.name
        self.on_accept = on_accept
        self.closed = False
        self.reading = False
        self._resume: _Cancellable | None = None  # the EMFILE back-off
        self._retry: _Cancellable | None = None  # a full listener looks again
        # log lines at most every _FULL_LOG_EVERY: the listener full, connections refused
        # by max_connections_per_client, idle ones closed
        self._full_log = _Throttled()
        self._refused = _Throttled()
        self._reaped = _Throttled()
        # the worker's connections: idle ones are closed when descriptors run out
        self.everyone = everyone
        self._reaped_at = -INF
        sock.setblocking(False)
        # accepted sockets inherit it: no setsockopt per connection
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # a client that sends nothing waits in the kernel (TCP_DEFER_ACCEPT), off the
        # accept queue, holding no descriptor and no slot (defer_accept). Set, or
        # cleared, on every start: a reload may give the socket to another listener.
        defer = defer_accept(listener.config)
        with contextlib.suppress(OSError, AttributeError):  # not on every platform
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, defer)

    def start(self) -> None:
        if not self.closed and not self.reading:
            self.loop.add_reader(self.fd, self._ready)
            self.reading = True

    def _stop(self) -> None:
        if self.reading:
            self.reading = False
            self.loop.remove_reader(self.fd)

    def _ready(self) -> None:
        listener = self.listener
        limit = listener.config.limits.max_connections
        per_client = listener.config.limits.max_connections_per_client
        for i in range(_ACCEPT_BATCH):
            if len(listener.connections) + len(listener.opening) >= limit:
                if i:
                    # full again after accepting: if more wait, the socket is still
                    # readable, and the next call may shed for one of them
                    return
                if not self._shed():
                    self._reap(listener.connections, self._queued())
                    self._full(limit)
                    return
            try:
                # the C accept: socket.socket.accept would wrap the descriptor in a
                # Python-level socket.socket first
                fd, peer = self.sock._accept()  # type: ignore[attr-defined]  # not in typeshed
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRNOS:
                    # out of descriptors/memory: pause accepting instead of spinning on
                    # it, and give idle connections' descriptors back for the next
                    reaped = self._reap(self.everyone, max(self._queued(), 1))
                    pause = _ACCEPT_BACKOFF / 10 if reaped else _ACCEPT_BACKOFF
                    log.error(
                        "listener %s: accept failed (%s); pausing accepts for %gs",
                        self.name,
                        exc.strerror,
                        pause,
                    )
                    self._stop()
                    self._resume = self.loop.call_later(pause, self._resume_accepting)
                elif exc.errno not in (errno.ECONNABORTED, errno.EPROTO):
                    log.warning("listener %s: accept failed: %s", self.name, exc)
                return
            client: str | None = None
            if per_client:
                client = client_key(listener, peer[0])
                if client is not None:
                    n = listener.per_client.get(client, 0)
                    if n >= per_client:
                        os.close(fd)
                        self._refuse(client, per_client)
                        continue
                    listener.per_client[client] = n + 1
            self.on_accept(fd, peer, client)

    def _shed(self) -> bool:
        """Make room in a full listener: drop its oldest opening connection, if overdue.

        Called when the socket is readable, so a connection waits for the room; at
        most one is shed per call.
        """
        opening = self.listener.opening
        if not opening:
            return False
        oldest = next(iter(opening))
        if self.loop.time() - opening[oldest] < SHED_AFTER:
            return False
        del opening[oldest]
        oldest.cancel()
        return True

    def _refuse(self, client: str, limit: int) -> None:
        """A connection over ``max_connections_per_client`` was closed at once."""
        count = self._refused.due(self.loop.time())
        if count:
            log.warning(
                "listener %s: %s has max_connections_per_client (%d) open; closed %d new "
                "connection(s) from over-limit clients at accept",
                self.name,
                client,
                limit,
                count,
            )

    def _queued(self) -> int:
        """Connections waiting in the kernel's accept queue (TCP_INFO of a listening
        socket: ``tcpi_unacked`` is its backlog's length)."""
        try:
            info = self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 32)
        except OSError:
            return 1
        if len(info) < 28:
            return 1
        return int.from_bytes(info[24:28], sys.byteorder)

    def _reap(self, conns: Iterable[object], want: int) -> int:
        """Close up to ``want`` (at most ``_REAP_BATCH``) idle HTTP connections, the
        longest idle first (``ClientConnection.idle_since``), for connections that wait
        to be accepted.

        At most every ``_REAP_EVERY`` seconds: it looks at every connection.
        """
        now = self.loop.time()
        want = min(want, _REAP_BATCH)
        if want <= 0 or now - self._reaped_at < _REAP_EVERY:
            return 0
        self._reaped_at = now
        idle: list[tuple[float, ClientConnection]] = []
        for conn in conns:
            if isinstance(conn, ClientConnection):
                since = conn.idle_since()
                if since < INF:
                    idle.append((since, conn))
        n = 0
        for _, conn in heapq.nsmallest(want, idle, key=_first):
            if conn.reap():  # still idle: closed
                n += 1
        count = self._reaped.due(now, n) if n else 0
        if count:
            log.warning(
                "listener %s: closed %d idle connection(s) to make room for new ones",
                self.name,
                count,
            )
        return n

    def _full(self, limit: int) -> None:
        """Stop accepting until a connection closes (or an opening one is overdue)."""
        self._stop()
        self.listener.full.append(self)
        if self._retry is None:
            self._retry = self.loop.call_later(SHED_AFTER / 4, self._look_again)
        if self._full_log.due(self.loop.time()):
            log.warning(
                "listener %s: max_connections (%d) reached; new connections wait until one closes",
                self.name,
                limit,
            )

    def _look_again(self) -> None:
        self._retry = None
        with contextlib.suppress(ValueError):
            self.listener.full.remove(self)
        self.resume()

    def resume(self) -> None:
        """The listener has room again (``ListenerRuntime.resume_accepting``)."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._resume is None:  # not while backing off from EMFILE
            self.start()

    def _resume_accepting(self) -> None:
        self._resume = None
        self.start()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for timer in (self._resume, self._retry):
            if timer is not None:
                timer.cancel()
        with contextlib.suppress(ValueError):
            self.listener.full.remove(self)
        with contextlib.suppress(ValueError, OSError):
            self._stop()
        self.sock.close()


def defer_accept(lc: ListenerConfig) -> int:
    """Seconds a client that sends nothing waits in the kernel (TCP_DEFER_ACCEPT).

    HTTP, TLS and PROXY clients speak first; on a ``tcp`` listener the server may
    (SMTP, MySQL), so 0 there. Otherwise the longest retransmission step within the
    time the listener gives a client for its first bytes (``tls_handshake_timeout``
    on https, ``header_timeout`` otherwise; at least 1 s): such a client then gets
    that time again from tlsgate, while it waited it held no descriptor and no slot.
    """
    if lc.protocol == "tcp":
        return 0
    limits = lc.limits
    first = limits.tls_handshake_timeout if lc.protocol == "https" else limits.header_timeout
    if first <= 0:
        return 1
    return next((step for step in _DEFER_STEPS if step <= first), 1)


def _first(pair: tuple[float, ClientConnection]) -> float:
    return pair[0]


def client_key(listener: ListenerRuntime, host: str) -> str | None:
    """What ``max_connections_per_client`` counts a peer as: its address, an IPv6 /64.

    None for a trusted proxy (``trusted_proxies``): it carries many clients.
    """
    if listener.trusted and listener.is_trusted(host):
        return None
    if ":" not in host:
        return host
    try:
        packed = socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
    except OSError:
        return host
    if packed[:12] == _V4_MAPPED:
        return socket.inet_ntop(socket.AF_INET, packed[12:])
    return socket.inet_ntop(socket.AF_INET6, packed[:8] + bytes(8)) + "/64"


def accept_http_with_preamble(
    ctx: ServeContext,
    listener: ListenerRuntime,
    tls: bool,
    sock: RawSocket,
    peer: Address,
    *,
    want_hello: bool,
    client: str | None = None,
) -> None:
    """An http/https listener that must read before HTTP or TLS starts.

    That is a PROXY header (``accept_proxy_protocol``), and/or the ClientHello of an
    https listener that answers ACME TLS-ALPN-01 (RFC 8737): a client offering only
    ``acme-tls/1`` for a name with a pending challenge gets the challenge certificate.
    """
    lc = listener.config
    want_proxy = lc.accept_proxy_protocol
    if want_proxy and not listener.is_trusted(peer[0]):
        log.info(
            "listener %s: closing a connection from %s: PROXY headers are accepted from "
            "trusted_proxies only",
            lc.name,
            peer[0],
        )
        sock.close()
        if client is not None:
            listener.client_left(client)
        return

    def done(proxy: ProxyHeader | None, hello: ClientHello | None, error: str | None) -> None:
        listener.opened(preamble)
        if (want_proxy and proxy is None) or (error is not None and not error.startswith("bad")):
            log.info("listener %s: closing a connection from %s: %s", lc.name, peer[0], error)
            ctx.poller.forget(sock.fileno())
            sock.close()
            if client is not None:
                listener.client_left(client)
            return
        ctx.poller.remove(sock.fileno())  # the event loop's transport takes the socket over
        # a malformed ClientHello is left for OpenSSL to refuse with a proper alert
        context = listener.certificates.base_context if tls and listener.certificates else None
        if hello is not None and ACME_TLS_ALPN in hello.alpn and hello.server_name:
            challenge = ctx.acme_tls_alpn01_context(hello.server_name)
            if challenge is not None:
                context = challenge
        # the event loop's transports want the socket module's own sockets
        family = sock.family
        handed = socket.socket(family, socket.SOCK_STREAM, 0, fileno=sock.detach())
        start_http(ctx, listener, handed, proxy, context, client=client)

    preamble = Preamble(
        ctx.poller,
        ctx.deadlines,
        sock,
        want_proxy=want_proxy,
        want_hello=want_hello,
        max_hello=lc.limits.max_client_hello_size,
        timeout=lc.limits.header_timeout,
        on_done=done,
    )
    listener.opening[preamble] = ctx.loop.time()
    preamble.start()


def start_http(
    ctx: ServeContext,
    listener: ListenerRuntime,
    sock: socket.socket,
    proxy: ProxyHeader | None,
    context: ssl.SSLContext | None,
    *,
    client: str | None = None,
) -> None:
    """Hand an accepted socket to the event loop's transport: TLS handshake, then HTTP.

    Until the handshake is done the connection is one of the listener's opening ones.
    ``client``: its ``max_connections_per_client`` key, given back when it closes.
    """
    task = ctx.loop.create_task(_start_http(ctx, listener, sock, proxy, context, client=client))
    listener.opening[task] = ctx.loop.time()
    task.add_done_callback(listener.opened)


async def _start_http(
    ctx: ServeContext,
    listener: ListenerRuntime,
    sock: socket.socket,
    proxy: ProxyHeader | None,
    context: ssl.SSLContext | None,
    *,
    client: str | None,
) -> None:
    lc = listener.config
    tls = context is not None
    made: list[ClientConnection] = []
    me = asyncio.current_task()  # its entry in listener.opening

    def make() -> ClientConnection:
        conn = ClientConnection(ctx, listener, tls, proxy=proxy, client_slot=client, opening=me)
        made.append(conn)
        return conn

    try:
        await ctx.loop.connect_accepted_socket(
            make,
            sock=sock,
            ssl=context,
            ssl_handshake_timeout=lc.limits.tls_handshake_timeout if context else None,
        )
    except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
        who = proxy.source if proxy is not None and proxy.source else "a client"
        log.info("listener %s: connection from %s failed: %s", lc.name, who, exc)
        sock.close()
        _never_made(listener, made, client)
    except asyncio.CancelledError:
        # shed by a full listener (Acceptor._shed), or the worker stopping
        sock.close()
        _never_made(listener, made, client)


def _never_made(
    listener: ListenerRuntime, made: list[ClientConnection], client: str | None
) -> None:
    """The handshake failed: the connection's client key goes back."""
    if made:
        made[0].release_client()
    elif client is not None:
        listener.client_left(client)
