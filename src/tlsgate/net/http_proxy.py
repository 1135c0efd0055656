"""The HTTP/1.1 reverse proxy: client connections and the exchanges they carry.

How this works: a ``ClientConnection`` is an asyncio protocol that feeds what
it reads to an httptools request parser. Each request head that completes is
validated (``proto.http1``) and becomes an ``Exchange`` appended to the
connection's queue; only the exchange at the head of the queue talks to an
app server, so pipelined requests are answered in order. Bodies are never
held whole: request body pieces go straight to the upstream connection once it
is attached (or into a small buffer until then, with client reading paused
past a high-water mark), response pieces straight to the client. Each side's
``pause_writing``/``resume_writing`` pauses and resumes reading on the other.

Framing is rebuilt, never copied: Content-Length passes through, chunked and
close-delimited bodies are re-chunked for HTTP/1.1 clients (close-delimited for
HTTP/1.0 ones), and trailers travel in the last chunk.

A ``101 Switching Protocols`` answer to an upgrade request (WebSocket) turns
the pair of connections into a byte tunnel.

Errors are answered as HTTP responses (400/408/413/431 for clients, 502/503/504
for upstream trouble) through the same queue, so they too come in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections import deque
from typing import TYPE_CHECKING, cast

import httptools

from tlsgate.errors import (
    ClientProtocolError,
    NoServerAvailable,
    UpstreamError,
)
from tlsgate.net.connect import connect_to_backend
from tlsgate.net.l4 import client_address_of, proxy_header_for
from tlsgate.net.upstream import Headers, UpstreamConnection, UpstreamFailure
from tlsgate.proto import http1
from tlsgate.proto.proxy_protocol import ProxyHeader

if TYPE_CHECKING:
    from tlsgate.net.runtime import BackendRuntime, ListenerRuntime, ServerRuntime
    from tlsgate.worker import Worker

log = logging.getLogger("tlsgate.http")

ACME_CHALLENGE_PREFIX = "/.well-known/acme-challenge/"
# Client reading pauses once this much request body waits for an upstream.
BUFFER_HIGH_WATER = 256 * 1024
# More pipelined requests than this waiting: stop reading until some are answered.
MAX_PIPELINE = 32
TRANSPORT_HIGH_WATER = 256 * 1024


class Exchange:
    """One request and its response.

    A *local* exchange carries a response tlsgate makes itself (redirect,
    error); a proxied one goes to a server of ``backend``.
    """

    def __init__(
        self,
        conn: ClientConnection,
        info: http1.RequestInfo | None,
        headers: Headers,
        *,
        local_response: bytes | None = None,
        local_status: int = 0,
        close_after: bool = False,
    ) -> None:
        self.conn = conn
        self.info = info
        self.headers = headers
        self.local_response = local_response
        self.status = local_status
        self.close_after = close_after
        self.backend: BackendRuntime | None = None
        self.server: ServerRuntime | None = None
        self.upstream: UpstreamConnection | None = None
        self.reused = False  # the upstream connection came from the keep-alive pool
        self.started = False
        self.finished = False
        self.head_sent_upstream = False
        self.request_done = info is None
        self.request_chunked = info is not None and info.body == "chunked"
        self.body_received = 0
        self.buffer: list[bytes] = []
        self.buffered = 0
        self.tried: set[str] = set()
        self.response_started = False
        self.response_mode = "raw"  # raw | chunked | none
        self.client_keep_alive = bool(info and info.keep_alive) and not close_after
        self.bytes_out = 0
        self.t_start = time.monotonic()
        self.t_upstream = 0.0
        self.upstream_ms = -1.0
        self.stale_retry_done = False
        self.upgrade = info is not None and info.upgrade is not None
        self.upstream_paused_by_client = False
        self.error_detail = ""

    # ---- request side -----------------------------------------------------------------------

    def request_body(self, data: bytes) -> None:
        self.body_received += len(data)
        assert self.info is not None or self.upgrade
        limit = self.conn.listener.config.limits.max_body_size
        if limit and self.body_received > limit and not self.upgrade:
            raise ClientProtocolError(
                f"request body exceeds max_body_size ({limit} bytes)", status_hint=413
            )
        if self.request_chunked:
            data = http1.encode_chunk(data)
        self._send_upstream(data)

    def request_complete(self, trailers: Headers) -> None:
        if self.request_chunked:
            kept = [(n, v) for n, v in trailers if n.lower() not in http1.HOP_BY_HOP]
            self._send_upstream(http1.last_chunk(kept))
        self.request_done = True

    def tunnel_bytes(self, data: bytes) -> None:
        """Client bytes after an upgrade request: held until the server agrees (101)."""
        self._send_upstream(data)

    def _send_upstream(self, data: bytes) -> None:
        if not data:
            return
        if self.upstream is not None and self.head_sent_upstream:
            self.upstream.write(data)
            return
        if self.local_response is not None:
            return  # a local answer: the body is read and dropped
        self.buffer.append(data)
        self.buffered += len(data)
        if self.buffered > BUFFER_HIGH_WATER:
            self.conn.pause_reading("buffer")

    # ---- start: route, pick, connect ---------------------------------------------------------

    def start(self) -> None:
        if self.started or self.finished:
            return
        self.started = True
        if self.local_response is not None:
            self.conn.write(self.local_response)
            self.response_started = True
            self.finish(reusable=False)
            return
        assert self.info is not None
        listener = self.conn.listener
        backend = listener.routes.match(self.info.host, self.info.path)
        if backend is None:
            self.fail_local(
                404, f"no route for host {self.info.host!r} and path {self.info.path!r}"
            )
            return
        self.backend = backend
        self.connect()

    def connect(self) -> None:
        """Pick a server; use a pooled connection at once, or connect in a task."""
        assert self.backend is not None
        server = self.backend.pick(self.conn.client_key, frozenset(self.tried))
        if server is None:
            self.fail_local(503, f"no server of backend {self.backend.name!r} is available")
            return
        idle = self._take_idle(server)
        if idle is not None:
            # the common keep-alive case stays synchronous: no task, no extra loop turn
            self.attach(server, idle, reused=True)
            return
        self.conn.worker.spawn(self._connect(server))

    def _take_idle(self, server: ServerRuntime) -> UpstreamConnection | None:
        if server.backend.config.send_proxy_protocol:
            conn = self.conn.private_upstreams.pop(server.key, None)
            if conn is not None and conn.usable():
                return conn
            if conn is not None:
                conn.abort()
            return None
        return server.take_idle()

    async def _connect(self, first: ServerRuntime) -> None:
        assert self.backend is not None
        backend = self.backend
        cfg = backend.config
        loop = self.conn.worker.loop

        async def open_one(server: ServerRuntime) -> UpstreamConnection:
            self.t_upstream = time.monotonic()
            _transport, proto = await loop.create_connection(
                lambda: UpstreamConnection(server, loop),
                server.state.host,
                server.state.port,
                ssl=backend.ssl_context,
                server_hostname=(cfg.server_name or server.state.host)
                if backend.ssl_context
                else None,
            )
            return proto

        try:
            server, upstream, reused = await connect_to_backend(
                backend,
                self.conn.client_key,
                self.tried,
                open_one,
                first=first,
                reuse=self._take_idle,
            )
        except NoServerAvailable as exc:
            self.fail_local(503, str(exc))
            return
        except UpstreamError as exc:
            self.fail_upstream(exc)
            return
        if self.is_finished():  # the client went away while we connected
            upstream.close()
            return
        self.attach(server, upstream, reused=reused)

    def attach(self, server: ServerRuntime, upstream: UpstreamConnection, *, reused: bool) -> None:
        assert self.info is not None
        self.server = server
        self.upstream = upstream
        self.reused = reused
        if not self.t_upstream:
            self.t_upstream = time.monotonic()
        server.state.active += 1
        info = self.info
        upstream.begin(self, head_request=info.method == b"HEAD")
        conn = self.conn
        cfg = server.backend.config
        if cfg.send_proxy_protocol and not reused:
            # a new connection for this client: its first bytes name the real client
            upstream.write(
                proxy_header_for(
                    cfg.send_proxy_protocol,
                    (conn.client_ip, conn.peer_port),
                    (conn.local_ip, conn.local_port),
                    sni=conn.sni,
                    alpn="http/1.1" if conn.tls else None,
                    crc32c=cfg.proxy_protocol_crc32c,
                )
            )
        fwd = http1.ForwardingContext(
            client_ip=conn.client_ip,
            peer_ip=conn.peer_ip,
            peer_trusted=conn.peer_trusted,
            proto="https" if conn.tls else "http",
            listener_port=conn.local_port,
            host_header=conn.host_header_of(self.headers),
            client_ip_header=conn.client_ip_header,
        )
        out = http1.rewrite_request_headers(self.headers, info, fwd)
        if info.body == "length":
            out.append((b"Content-Length", str(info.content_length).encode()))
        elif info.body == "chunked":
            out.append((b"Transfer-Encoding", b"chunked"))
        head = http1.request_head_bytes(info, out)
        self.head_sent_upstream = True
        if self.buffer:
            upstream.write(head + b"".join(self.buffer))
            self.buffer.clear()
            self.buffered = 0
            self.conn.resume_reading("buffer")
        else:
            upstream.write(head)
        if conn.writing_paused:
            upstream.pause_reading()
            self.upstream_paused_by_client = True

    def is_finished(self) -> bool:
        return self.finished

    # ---- response side (UpstreamOwner) --------------------------------------------------------

    def upstream_informational(self, status: int, reason: bytes, headers: Headers) -> None:
        assert self.info is not None
        # RFC 9110 §15.2: "A server MUST NOT send a 1xx response to an HTTP/1.0 client."
        if self.info.http_version == "1.0" or self.response_started:
            return
        out = http1.rewrite_response_headers(headers, hsts="", keep_alive=True)
        self.conn.write(http1.response_head_bytes(status, reason, out))

    def upstream_response_head(
        self, status: int, reason: bytes, headers: Headers, keep_alive: bool
    ) -> None:
        assert self.info is not None
        info = self.info
        self.upstream_ms = (time.monotonic() - self.t_upstream) * 1000.0
        self.status = status
        self.response_started = True
        self.upstream_keep_alive = keep_alive
        if status == 101 and not self.upgrade:
            self.error_detail = "server switched protocols without an upgrade request"
            self.client_keep_alive = False
        if self.upgrade and status != 101:
            # the request parser is in upgrade mode: this connection can't carry more requests
            self.client_keep_alive = False
        if not self.request_done or self.conn.draining:
            self.client_keep_alive = False
        content_length: bytes | None = None
        chunked = False
        for n, v in headers:
            ln = n.lower()
            if ln == b"content-length":
                content_length = v
            elif ln == b"transfer-encoding":
                chunked = True
        hsts = self.conn.listener.config.hsts if self.conn.tls else ""
        out = http1.rewrite_response_headers(
            headers,
            hsts=hsts,
            keep_alive=self.client_keep_alive,
            upgrade=status == 101,
            client_version=info.http_version,
        )
        if info.method == b"HEAD" or status in (204, 304) or status == 101:
            self.response_mode = "none"
            if content_length is not None and status != 204:
                out.append((b"Content-Length", content_length))
            elif chunked and info.method == b"HEAD":
                out.append((b"Transfer-Encoding", b"chunked"))
        elif content_length is not None:
            self.response_mode = "raw"
            out.append((b"Content-Length", content_length))
        elif info.http_version == "1.1":
            self.response_mode = "chunked"
            out.append((b"Transfer-Encoding", b"chunked"))
        else:
            self.response_mode = "raw"  # close-delimited to an HTTP/1.0 client
            if self.client_keep_alive:
                self.client_keep_alive = False
                out = [(n, v) for n, v in out if n.lower() != b"connection"]
                out.append((b"Connection", b"close"))
        self.conn.write(http1.response_head_bytes(status, reason, out))

    def upstream_body(self, data: bytes) -> None:
        if not data:
            return
        self.bytes_out += len(data)
        if self.response_mode == "chunked":
            self.conn.write(http1.encode_chunk(data))
        elif self.response_mode == "raw":
            self.conn.write(data)

    def upstream_complete(self, trailers: Headers, reusable: bool) -> None:
        if self.response_mode == "chunked":
            kept = [(n, v) for n, v in trailers if n.lower() not in http1.HOP_BY_HOP]
            self.conn.write(http1.last_chunk(kept))
        self.finish(reusable=reusable and self.request_done)

    def upstream_upgraded(self, data: bytes) -> None:
        upstream = self.upstream
        if upstream is None or not self.upgrade:
            self.conn.abort()
            return
        if data:
            self.conn.write(data)
        self.conn.start_tunnel(self, upstream)

    def upstream_failed(self, error: UpstreamFailure) -> None:
        if self.finished:
            return
        server = self.server
        if (
            self.upstream is not None
            and self.reused
            and not self.response_started
            and not self.stale_retry_done
            and self.info is not None
            and self.info.body == "none"
            and not self.upgrade
            and server is not None
        ):
            # A pooled connection the server had already closed: nothing was processed,
            # so the request is safe to send again on a fresh connection.
            self.stale_retry_done = True
            self._detach(reusable=False)
            self.head_sent_upstream = False
            self.conn.worker.spawn(self._connect(server))
            return
        if self.response_started:
            log.warning("backend %s: %s (response cut short)", self._backend_name(), error)
            self.error_detail = str(error)
            self.finish(reusable=False, abort_client=True)
            return
        self.fail_upstream(error)

    def upstream_pause_writing(self) -> None:
        self.conn.pause_reading("upstream")

    def upstream_resume_writing(self) -> None:
        self.conn.resume_reading("upstream")

    def cork(self) -> None:
        self.conn.cork()

    def uncork(self) -> None:
        self.conn.uncork()

    def tunnel_data(self, data: bytes) -> None:
        self.bytes_out += len(data)
        self.conn.write(data)

    def tunnel_eof(self) -> None:
        self.conn.tunnel_upstream_eof()

    # ---- endings --------------------------------------------------------------------------------

    def _backend_name(self) -> str:
        return self.backend.name if self.backend else "-"

    def fail_upstream(self, error: UpstreamFailure) -> None:
        # each error knows its status: 504 for timeouts, 503 for no server, else 502
        status = error.status_hint if error.status_hint in (502, 503, 504) else 502
        log.warning("backend %s: answering %d: %s", self._backend_name(), status, error)
        self.fail_local(status, str(error))

    def fail_local(self, status: int, detail: str) -> None:
        if self.finished:
            return
        self.error_detail = detail
        if self.response_started:
            self.finish(reusable=False, abort_client=True)
            return
        self.status = status
        self.client_keep_alive = self.client_keep_alive and self.request_done and status < 500
        head = self.info is not None and self.info.method == b"HEAD"
        self.conn.write(
            http1.error_response(status, detail, close=not self.client_keep_alive, head=head)
        )
        self.response_started = True
        self.finish(reusable=False)

    def _detach(self, *, reusable: bool) -> None:
        upstream, self.upstream = self.upstream, None
        server = self.server
        if upstream is None or server is None:
            return
        server.state.active -= 1
        upstream.release()
        if self.upstream_paused_by_client:
            upstream.resume_reading()
        backend = server.backend
        if backend.config.send_proxy_protocol:
            # it carries this client's PROXY header: keep it for this client only
            if reusable and upstream.usable() and not self.conn.closed:
                old = self.conn.private_upstreams.pop(server.key, None)
                if old is not None and old is not upstream:
                    old.close()
                self.conn.private_upstreams[server.key] = upstream
            else:
                upstream.close()
        elif (
            reusable
            and upstream.usable()
            and not backend.retired
            and len(server.idle) < backend.config.max_idle_per_server
        ):
            server.idle.append(upstream)
            upstream.start_idle_timer(backend.config.pool_idle_timeout)
        else:
            upstream.close()

    def finish(self, *, reusable: bool, abort_client: bool = False) -> None:
        if self.finished:
            return
        self.finished = True
        self._detach(reusable=reusable)
        self.conn.worker.access_log(self)
        self.conn.exchange_finished(self, abort=abort_client)

    def abandon(self) -> None:
        """The client went away: drop the upstream side without reusing it."""
        if self.finished:
            return
        self.finished = True
        if not self.response_started:
            self.status = self.status or 499  # nginx's "client closed request"
        self._detach(reusable=False)
        self.conn.worker.access_log(self)


class ClientConnection(asyncio.Protocol):
    """One client connection on an http or https listener."""

    def __init__(
        self,
        worker: Worker,
        listener: ListenerRuntime,
        tls: bool,
        *,
        proxy: ProxyHeader | None = None,
    ) -> None:
        self.worker = worker
        self.proxy = proxy
        # upstream connections that carry this client's PROXY header: never shared
        self.private_upstreams: dict[str, UpstreamConnection] = {}
        self.listener = listener
        self.limits = listener.config.limits
        self.tls = tls
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[Exchange] = deque()
        self.receiving: Exchange | None = None
        self.paused: set[str] = set()
        self.writing_paused = False
        self.draining = False
        self.closed = False
        self.in_head = False
        self.upgraded = False
        self.tunnel_exchange: Exchange | None = None
        self.tunnel_upstream: UpstreamConnection | None = None
        self.peer_eof = False
        self.sni: str | None = None
        self.tls_version: str | None = None
        self.peer_ip = ""
        self.client_ip = ""
        self.peer_trusted = False
        self.client_key = b""
        self.local_port = 0
        self.client_ip_header = listener.config.client_ip_header.encode("ascii")
        self._timer: asyncio.TimerHandle | None = None
        self._corked = 0
        self._pending: list[bytes] = []
        self._head_size = 0
        self._head_count = 0
        self._url = bytearray()
        self._headers: Headers = []
        self._trailers: Headers = []

    # ---- lifecycle ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)
        transport = self.transport
        transport.set_write_buffer_limits(high=TRANSPORT_HIGH_WATER)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # a response head and body are separate writes; Nagle would hold the second
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        self.peer_ip = str(peer[0]) if peer else ""
        self.peer_port = int(peer[1]) if peer else 0
        self.proxy_peer = ""
        if self.proxy is not None:
            # the trusted load balancer in front vouches for the client: use it everywhere
            vouched = client_address_of(self.proxy, (self.peer_ip, self.peer_port))
            if vouched != (self.peer_ip, self.peer_port):
                self.proxy_peer = self.peer_ip
                self.peer_ip, self.peer_port = vouched
        self.client_ip = self.peer_ip
        sockname = transport.get_extra_info("sockname")
        self.local_ip = str(sockname[0]) if sockname else ""
        self.local_port = int(sockname[1]) if sockname else 0
        if self.proxy is not None and self.proxy.command == "PROXY" and self.proxy.destination:
            self.local_ip, self.local_port = self.proxy.destination
        self.peer_trusted = self.listener.is_trusted(self.peer_ip)
        self.client_key = self.client_ip.encode()
        if self.tls:
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is not None:
                self.tls_version = ssl_object.version()
                if self.listener.certificates is not None:
                    self.sni = self.listener.certificates.sni_of(ssl_object)
        self.listener.connections.add(self)
        self.worker.connections.add(self)
        if len(self.listener.connections) > self.limits.max_connections:
            log.warning(
                "listener %s: max_connections (%d) reached; refusing a connection from %s",
                self.listener.name,
                self.limits.max_connections,
                self.peer_ip,
            )
            self.write(http1.error_response(503, "too many connections", close=True))
            self._close()
            return
        if self.draining or self.worker.draining:
            self._close()
            return
        self._arm(self.limits.header_timeout, self._header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        self.listener.connections.discard(self)
        self.worker.connections.discard(self)
        for up in self.private_upstreams.values():
            up.close()
        self.private_upstreams.clear()
        if self.tunnel_upstream is not None:
            up, self.tunnel_upstream = self.tunnel_upstream, None
            up.close()
            if self.tunnel_exchange is not None:
                self.tunnel_exchange.abandon()
        for ex in self.queue:
            ex.abandon()
        self.queue.clear()
        self.worker.connection_closed()

    def eof_received(self) -> bool | None:
        self.peer_eof = True
        if self.tunnel_upstream is not None:
            if (
                self.tunnel_upstream.transport is not None
                and self.tunnel_upstream.transport.can_write_eof()
            ):
                self.tunnel_upstream.transport.write_eof()
                return not self.tls
            return False
        if self.receiving is not None or self.in_head or not self.queue:
            return False  # nothing left to answer, or a request cut short: close
        # the client sent everything and half-closed; answer what is queued, then close
        return not self.tls

    def pause_writing(self) -> None:
        self.writing_paused = True
        up = self._active_upstream()
        if up is not None:
            up.pause_reading()
            if self.queue:
                self.queue[0].upstream_paused_by_client = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        up = self._active_upstream()
        if up is not None:
            up.resume_reading()
            if self.queue:
                self.queue[0].upstream_paused_by_client = False

    def _active_upstream(self) -> UpstreamConnection | None:
        if self.tunnel_upstream is not None:
            return self.tunnel_upstream
        if self.queue and self.queue[0].upstream is not None:
            return self.queue[0].upstream
        return None

    # ---- reading ------------------------------------------------------------------------------

    def pause_reading(self, reason: str) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self.paused.add(reason)

    def resume_reading(self, reason: str) -> None:
        if reason in self.paused:
            self.paused.discard(reason)
            if not self.paused and self.transport is not None and not self.closed:
                self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.tunnel_upstream is not None:
            self.tunnel_upstream.write(data)
            return
        if self.upgraded:
            if self.queue:
                self.queue[-1].tunnel_bytes(data)
            return
        if self.draining and not self.queue and not self.in_head:
            self._close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.upgraded = True
            offset = int(exc.args[0]) if exc.args else len(data)
            rest = data[offset:]
            if rest and self.queue:
                self.queue[-1].tunnel_bytes(rest)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, ClientProtocolError):
                self._reject(cause.status_hint, str(cause))
            else:
                raise
        except httptools.HttpParserError as exc:
            self._reject(400, f"malformed request: {exc}")

    def _reject(self, status: int, detail: str) -> None:
        """Answer a broken request (after anything queued before it) and stop reading."""
        log.info(
            "listener %s: rejected a request from %s: %d %s",
            self.listener.name,
            self.client_ip,
            status,
            detail,
        )
        self._cancel_timer()
        self.pause_reading("rejected")
        if self.receiving is not None and self.receiving.started and not self.receiving.finished:
            # the request whose body broke the rules is already on its way: cut it
            ex = self.receiving
            self.receiving = None
            self.draining = True
            ex.request_done = True
            ex.client_keep_alive = False
            ex.close_after = True
            ex.fail_local(status, detail)
            return
        self.receiving = None
        ex = Exchange(
            self,
            None,
            [],
            local_response=http1.error_response(status, detail, close=True),
            local_status=status,
            close_after=True,
        )
        ex.error_detail = detail
        self._enqueue(ex)

    # ---- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.in_head = True
        self._url.clear()
        self._headers = []
        self._trailers = []
        self._head_size = 0
        self._head_count = 0
        if self._timer is not None and self._timer_kind != "header":
            self._arm(self.limits.header_timeout, self._header_timeout)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)
        if self._head_size > self.limits.max_header_size:
            raise ClientProtocolError(
                f"request target is longer than max_header_size ({self.limits.max_header_size})",
                status_hint=414,
            )

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.in_head:
            self._trailers.append((name, value))
            if len(self._trailers) > self.limits.max_headers:
                raise ClientProtocolError("too many trailer fields", status_hint=431)
            return
        self._head_count += 1
        self._head_size += len(name) + len(value) + 4
        if self._head_count > self.limits.max_headers:
            raise ClientProtocolError(
                f"more than max_headers ({self.limits.max_headers}) header fields",
                status_hint=431,
            )
        if self._head_size > self.limits.max_header_size:
            raise ClientProtocolError(
                "request head is larger than max_header_size "
                f"({self.limits.max_header_size} bytes)",
                status_hint=431,
            )
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.in_head = False
        self._cancel_timer()
        p = self.parser
        info = http1.validate_request(
            p.get_method(),
            bytes(self._url),
            p.get_http_version(),
            self._headers,
            max_headers=self.limits.max_headers,
            max_header_size=self.limits.max_header_size,
            max_body_size=self.limits.max_body_size,
        )
        headers = self._headers
        if self.listener.config.client_ip_header and self.peer_trusted:
            self._take_client_ip_header(headers)
        lc = self.listener.config
        if not self.tls and info.path.startswith(ACME_CHALLENGE_PREFIX) and self.worker.acme_http01:
            answer = self._acme_http01(info)
            if answer is not None:
                self.receiving = answer
                self._enqueue(answer)
                return
        if lc.protocol == "http" and lc.redirect_https:
            location = http1.https_redirect_location(info, lc.redirect_port)
            ex = Exchange(
                self,
                info,
                headers,
                local_response=http1.redirect_response(
                    location, close=not info.keep_alive or info.body != "none"
                ),
                local_status=308,
                close_after=not info.keep_alive or info.body != "none",
            )
        else:
            ex = Exchange(self, info, headers)
        self.receiving = ex
        self._enqueue(ex)

    def on_body(self, body: bytes) -> None:
        if self.receiving is not None:
            self.receiving.request_body(body)

    def on_message_complete(self) -> None:
        ex, self.receiving = self.receiving, None
        if ex is not None:
            ex.request_complete(self._trailers)
        self._trailers = []

    def _acme_http01(self, info: http1.RequestInfo) -> Exchange | None:
        """RFC 8555 §8.3: answer a pending HTTP-01 challenge, before any redirect or route."""
        token = info.path[len(ACME_CHALLENGE_PREFIX) :]
        key_auth = self.worker.acme_http01.get(token)
        if key_auth is None or info.method not in (b"GET", b"HEAD"):
            return None
        body = key_auth.encode("ascii")
        head = http1.response_head_bytes(
            200,
            b"OK",
            [
                (b"Content-Type", b"application/octet-stream"),
                (b"Content-Length", str(len(body)).encode()),
                (b"Cache-Control", b"no-store"),
            ],
        )
        close = not info.keep_alive
        return Exchange(
            self,
            info,
            [],
            local_response=head + (b"" if info.method == b"HEAD" else body),
            local_status=200,
            close_after=close,
        )

    def _take_client_ip_header(self, headers: Headers) -> None:
        wanted = self.listener.config.client_ip_header.lower().encode()
        for name, value in headers:
            if name.lower() == wanted:
                try:
                    ip = ipaddress.ip_address(value.decode("ascii").strip())
                except (UnicodeDecodeError, ValueError):
                    log.info(
                        "listener %s: ignoring invalid %s from %s",
                        self.listener.name,
                        self.listener.config.client_ip_header,
                        self.peer_ip,
                    )
                    return
                self.client_ip = str(ip)
                self.client_key = self.client_ip.encode()
                return

    # ---- the queue ----------------------------------------------------------------------------

    def _enqueue(self, ex: Exchange) -> None:
        self.queue.append(ex)
        if len(self.queue) > MAX_PIPELINE:
            self.pause_reading("pipeline")
        if len(self.queue) == 1:
            ex.start()

    def exchange_finished(self, ex: Exchange, *, abort: bool = False) -> None:
        if self.queue and self.queue[0] is ex:
            self.queue.popleft()
        if len(self.queue) <= MAX_PIPELINE:
            self.resume_reading("pipeline")
        if abort:
            self.abort()
            return
        if not ex.client_keep_alive or ex.close_after or self.draining:
            self._close()
            return
        if self.queue:
            nxt = self.queue[0]
            self.worker.loop.call_soon(nxt.start)
        elif self.peer_eof:
            self._close()
        elif self.in_head:
            self._arm(self.limits.header_timeout, self._header_timeout)
        else:
            self._arm(self.limits.idle_timeout, self._idle_timeout)

    # ---- tunnel (after 101) ----------------------------------------------------------------------

    def start_tunnel(self, ex: Exchange, upstream: UpstreamConnection) -> None:
        self.tunnel_exchange = ex
        self.tunnel_upstream = upstream
        self._cancel_timer()
        if ex.buffer:
            upstream.write(b"".join(ex.buffer))
            ex.buffer.clear()
            ex.buffered = 0
        self.resume_reading("buffer")

    def tunnel_upstream_eof(self) -> None:
        if self.transport is None or self.closed:
            return
        if self.transport.can_write_eof() and not self.peer_eof:
            self.transport.write_eof()
        else:
            self._close()

    # ---- writing & closing ---------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is None or self.closed:
            return
        if self._corked:
            self._pending.append(data)
        else:
            self.transport.write(data)

    def cork(self) -> None:
        """Hold writes until ``uncork``: one upstream read becomes one client write."""
        self._corked += 1

    def uncork(self) -> None:
        self._corked -= 1
        if not self._corked and self._pending:
            self._flush()

    def _flush(self) -> None:
        data = b"".join(self._pending)
        self._pending.clear()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def host_header_of(self, headers: Headers) -> bytes:
        for n, v in headers:
            if n.lower() == b"host":
                return v
        return b""

    def _close(self) -> None:
        if self.transport is not None and not self.closed:
            if self._pending:
                self._flush()
            self.closed = True
            self._cancel_timer()
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self._cancel_timer()
            self.transport.abort()

    def drain(self) -> None:
        """Graceful shutdown: close now if idle, else after the response in progress."""
        self.draining = True
        if not self.queue and not self.in_head and self.tunnel_upstream is None:
            self._close()

    # ---- timers ---------------------------------------------------------------------------------

    _timer_kind = ""

    def _arm(self, delay: float, callback: object) -> None:
        self._cancel_timer()
        if delay > 0:
            self._timer_kind = "header" if callback == self._header_timeout else "idle"
            self._timer = self.worker.loop.call_later(delay, callback)  # type: ignore[arg-type]

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_kind = ""

    def _header_timeout(self) -> None:
        self._timer = None
        if self.queue:
            return  # a response is in progress; its own timeouts apply
        if self.in_head or self._url:
            detail = (
                f"request head not received within header_timeout ({self.limits.header_timeout:g}s)"
            )
            log.info("listener %s: %s from %s", self.listener.name, detail, self.client_ip)
            self.write(http1.error_response(408, detail, close=True))
            ex = Exchange(self, None, [], local_status=408)
            ex.error_detail = detail
            ex.finished = True
            self.worker.access_log(ex)
        self._close()

    def _idle_timeout(self) -> None:
        self._timer = None
        if not self.queue and not self.in_head:
            self._close()
