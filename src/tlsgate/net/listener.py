"""Accept paths: how a listening socket's connections reach the data plane.

How this works: ``serve`` starts one accept path per listening socket:

* ``http``/``https`` listeners that need nothing before HTTP or TLS starts use
  the event loop's own server (``loop.create_server``): uvloop accepts in C and
  hands each connection to a :class:`~tlsgate.net.http_proxy.ClientConnection`.
* Listeners that must read something first use an :class:`Acceptor`, which
  accepts on the loop and passes each socket on: ``tcp``/``tls-passthrough``
  listeners to an :class:`~tlsgate.net.l4.L4Session`; http/https listeners that
  take a PROXY header (TLS must not start before it is read) or, on https, while
  an ACME TLS-ALPN-01 challenge is pending (RFC 8737), to a preamble reader that
  peeks at the ClientHello first. With no challenge pending an https listener is
  on the fast path; the worker switches the accept path when challenges come
  and go.

The ``Acceptor`` backs off for a moment on EMFILE/ENFILE instead of spinning.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Protocol

from tlsgate.net.context import ServeContext
from tlsgate.net.http_proxy import ClientConnection
from tlsgate.net.l4 import Address, L4Session, Preamble, RawSocket, _addr
from tlsgate.net.runtime import ListenerRuntime
from tlsgate.proto.clienthello import ClientHello
from tlsgate.proto.proxy_protocol import ProxyHeader

log = logging.getLogger("tlsgate.listener")

_ACCEPT_BATCH = 64
_ACCEPT_BACKOFF = 0.5
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
    if lc.protocol in ("tcp", "tls-passthrough"):

        def accept_l4(conn: RawSocket, peer: Address) -> None:
            L4Session(ctx, listener, conn, peer).start()

        acceptor = Acceptor(ctx.loop, sock, lc.name, accept_l4)
        acceptor.start()
        return acceptor
    want_hello = tls and tls_alpn01
    if lc.accept_proxy_protocol or want_hello:

        def accept_http(conn: RawSocket, peer: Address) -> None:
            accept_http_with_preamble(ctx, listener, tls, conn, peer, want_hello=want_hello)

        acceptor = Acceptor(ctx.loop, sock, lc.name, accept_http)
        acceptor.start()
        return acceptor
    assert not tls or listener.certificates is not None

    def make() -> ClientConnection:
        return ClientConnection(ctx, listener, tls)

    return await ctx.loop.create_server(
        make,
        sock=sock,
        ssl=listener.certificates.base_context if listener.certificates else None,
        ssl_handshake_timeout=lc.limits.tls_handshake_timeout if tls else None,
        backlog=4096,
    )


class Acceptor:
    """Accepts connections on the event loop and passes each to ``on_accept``."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        name: str,
        on_accept: Callable[[RawSocket, Address], None],
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.name = name
        self.on_accept = on_accept
        self.closed = False
        self._resume: _Cancellable | None = None
        self.family = sock.family
        sock.setblocking(False)
        # accepted sockets inherit it: no setsockopt per connection
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def start(self) -> None:
        self.loop.add_reader(self.sock.fileno(), self._ready)

    def _ready(self) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                # the C accept: socket.socket.accept would wrap the descriptor in a
                # Python-level socket.socket, and connections here become RawSockets
                fd, peer = self.sock._accept()  # type: ignore[attr-defined]  # not in typeshed
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRNOS:
                    # out of descriptors/memory: pause accepting instead of spinning on it
                    log.error(
                        "listener %s: accept failed (%s); pausing accepts for %gs",
                        self.name,
                        exc.strerror,
                        _ACCEPT_BACKOFF,
                    )
                    self.loop.remove_reader(self.sock.fileno())
                    self._resume = self.loop.call_later(_ACCEPT_BACKOFF, self._resume_accepting)
                elif exc.errno not in (errno.ECONNABORTED, errno.EPROTO):
                    log.warning("listener %s: accept failed: %s", self.name, exc)
                return
            conn = RawSocket(self.family, socket.SOCK_STREAM, 0, fd)
            conn.setblocking(False)
            self.on_accept(conn, _addr(peer))

    def _resume_accepting(self) -> None:
        self._resume = None
        if not self.closed:
            self.start()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._resume is not None:
            self._resume.cancel()
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()


def accept_http_with_preamble(
    ctx: ServeContext,
    listener: ListenerRuntime,
    tls: bool,
    sock: RawSocket,
    peer: Address,
    *,
    want_hello: bool,
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
        return

    def done(proxy: ProxyHeader | None, hello: ClientHello | None, error: str | None) -> None:
        if (want_proxy and proxy is None) or (error is not None and not error.startswith("bad")):
            log.info("listener %s: closing a connection from %s: %s", lc.name, peer[0], error)
            ctx.poller.forget(sock.fileno())
            sock.close()
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
        ctx.spawn(_start_http(ctx, listener, handed, proxy, context))

    Preamble(
        ctx.poller,
        ctx.deadlines,
        sock,
        want_proxy=want_proxy,
        want_hello=want_hello,
        max_hello=lc.limits.max_client_hello_size,
        timeout=lc.limits.header_timeout,
        on_done=done,
    ).start()


async def _start_http(
    ctx: ServeContext,
    listener: ListenerRuntime,
    sock: socket.socket,
    proxy: ProxyHeader | None,
    context: ssl.SSLContext | None,
) -> None:
    lc = listener.config
    try:
        await ctx.loop.connect_accepted_socket(
            lambda: ClientConnection(ctx, listener, context is not None, proxy=proxy),
            sock=sock,
            ssl=context,
            ssl_handshake_timeout=lc.limits.tls_handshake_timeout if context else None,
        )
    except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
        who = proxy.source if proxy is not None and proxy.source else "a client"
        log.info("listener %s: connection from %s failed: %s", lc.name, who, exc)
        sock.close()
