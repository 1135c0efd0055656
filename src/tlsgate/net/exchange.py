"""One HTTP request and its response, between a client connection and an app server.

How this works: a client connection queues one ``Exchange`` per request head
(pipelined requests wait their turn); the exchange at the head of the queue
routes, picks a server, takes a pooled keep-alive connection (the common case,
synchronous: no task, no extra loop turn) or connects in a task, sends the
rewritten head and streams the body, then relays the response. Bodies are
never held whole: request pieces go straight upstream once a connection is
attached (or into a small buffer until then, with client reading paused past
a high-water mark), response pieces straight to the client.

The exchange's progress is one state, changed only through the transition
table below; a transition the table doesn't list is a bug and raises
:class:`~tlsgate.errors.LocalProtocolError` (h11's ``_state.py`` is the model).
Whether the request body has been read completely is the one other dimension
(``request_done``), because it runs independently of the response.

    WAITING    -> CONNECTING (proxied) | DONE (answered locally)
    CONNECTING -> FORWARDING (head sent upstream) | DONE (no route/server: error answer)
    FORWARDING -> RESPONDING (response head relayed) | CONNECTING (stale pooled
                  connection: retried once) | DONE (upstream failed: error answer)
    RESPONDING -> DONE (response complete, or cut short; or an error answer when the
                  head relayed is still corked) | TUNNEL (101)
    TUNNEL     -> DONE
    any but DONE/ABANDONED -> ABANDONED (the client went away)

Until the request body is all read, a server that says nothing is waiting for
the client, not late: its ``read_timeout`` is put off while the client is
still sending (:meth:`Exchange.upstream_request_pending`), unless the server
stops taking the body (``net.upstream``); the client's ``body_timeout`` bounds
that wait.

Framing and keep-alive decisions are the pure functions of ``proto.http1``
(:func:`~tlsgate.proto.http1.response_framing`,
:func:`~tlsgate.proto.http1.client_keep_alive`).

Errors: until the response head has reached the client, every failure is
answered with an error page (:meth:`Exchange.error_page`): upstream trouble
with 502/503/504, including a broken response whose head was relayed in the
same upstream read, which is still corked in the client's output and taken
back. After that, the client connection is aborted (the only honest option).
A request body too slow for the listener's ``body_timeout``/``body_min_rate``
(timed by the client connection) ends the same way, with a 408 page or the
abort, and the upstream connection is closed, not pooled: the server sees the
request end unfinished. Either way the exchange gets a request id -- 16 random
hex digits, made only on these paths -- and the detail goes to the error log
and the access log under it. A 5xx page shows the client only its status and
that id: server addresses, errno text and config names stay inside. A 4xx page
also says what was wrong with the request, in words that name no setting.
"""

from __future__ import annotations

import enum
import logging
import os
from typing import TYPE_CHECKING

from tlsgate.errors import (
    ClientProtocolError,
    LocalProtocolError,
    NoServerAvailable,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from tlsgate.logs import AccessRecord
from tlsgate.net.connect import connect_to_backend
from tlsgate.net.upstream import Headers, UpstreamConnection, UpstreamFailure
from tlsgate.proto import http1
from tlsgate.proto.proxy_protocol import proxy_header_for

if TYPE_CHECKING:
    from tlsgate.net.http_proxy import ClientConnection
    from tlsgate.net.runtime import BackendRuntime, ServerRuntime

log = logging.getLogger("tlsgate.http")

# Client reading pauses once this much request body waits for an upstream.
BUFFER_HIGH_WATER = 256 * 1024

_NOTHING: frozenset[str] = frozenset()


def new_request_id() -> str:
    """16 random hex digits that name one failed exchange (made on error paths only)."""
    return os.urandom(8).hex()


class State(enum.IntEnum):
    WAITING = 0
    CONNECTING = 1
    FORWARDING = 2
    RESPONDING = 3
    TUNNEL = 4
    DONE = 5
    ABANDONED = 6


WAITING, CONNECTING, FORWARDING, RESPONDING, TUNNEL, DONE, ABANDONED = State

_TRANSITIONS: dict[State, frozenset[State]] = {
    WAITING: frozenset({CONNECTING, DONE, ABANDONED}),
    CONNECTING: frozenset({FORWARDING, DONE, ABANDONED}),
    FORWARDING: frozenset({RESPONDING, CONNECTING, DONE, ABANDONED}),
    RESPONDING: frozenset({TUNNEL, DONE, ABANDONED}),
    TUNNEL: frozenset({DONE, ABANDONED}),
    DONE: frozenset(),
    ABANDONED: frozenset(),
}


class Exchange:
    """One request and its response.

    A *local* exchange carries a response tlsgate makes itself (redirect, error,
    ACME challenge); a proxied one goes to a server of the backend its route names.
    """

    __slots__ = (
        "backend",
        "body_mode",
        "body_received",
        "buffer",
        "buffered",
        "bytes_out",
        "client_keep_alive",
        "client_key",
        "close_after",
        "conn",
        "error_detail",
        "fwd",
        "headers",
        "info",
        "local_response",
        "request_chunked",
        "request_done",
        "request_id",
        "response_started",
        "reused",
        "server",
        "stale_retry_done",
        "state",
        "status",
        "t_start",
        "t_upstream",
        "tried",
        "tunnel_held",
        "tunnel_held_bytes",
        "upgrade",
        "upstream",
        "upstream_ms",
        "upstream_paused_by_client",
    )

    def __init__(
        self,
        conn: ClientConnection,
        info: http1.RequestInfo | None,
        headers: Headers,
        *,
        local_response: bytes | None = None,
        local_status: int = 0,
        close_after: bool = False,
        fwd: http1.ForwardingContext | None = None,
    ) -> None:
        self.conn = conn
        # who sent it: the connection's client, or the one a trusted peer named in this
        # request's client_ip_header (each request its own: on a keep-alive connection
        # from an edge, every request may come from someone else)
        if fwd is None:
            self.fwd = conn.fwd
            self.client_key = conn.client_key
        else:
            self.fwd = fwd
            self.client_key = fwd.client_ip.encode()
        self.info = info
        self.headers = headers
        self.state = WAITING
        self.local_response = local_response
        self.status = local_status
        self.close_after = close_after
        self.backend: BackendRuntime | None = None
        self.server: ServerRuntime | None = None
        self.upstream: UpstreamConnection | None = None
        self.reused = False  # the upstream connection came from the keep-alive pool
        self.request_done = info is None
        self.request_chunked = info is not None and info.body == "chunked"
        self.upgrade = info is not None and info.upgrade is not None
        self.client_keep_alive = info is not None and info.keep_alive and not close_after
        self.body_received = 0
        self.buffer: list[bytes] | None = None
        self.buffered = 0
        # client bytes after an upgrade request, until the server agrees (tunnel_bytes)
        self.tunnel_held: list[bytes] | None = None
        self.tunnel_held_bytes = 0
        self.tried: set[str] | None = None
        self.response_started = False
        self.body_mode = http1.BODY_RAW
        self.bytes_out = 0
        self.t_start = conn.loop.time()
        self.t_upstream = 0.0
        self.upstream_ms = -1.0
        self.stale_retry_done = False
        self.upstream_paused_by_client = False
        self.error_detail = ""
        self.request_id = ""

    def _to(self, new: State) -> None:
        if new not in _TRANSITIONS[self.state]:
            raise LocalProtocolError(
                f"exchange: no transition from {self.state.name} to {new.name}"
            )
        self.state = new

    @property
    def finished(self) -> bool:
        return self.state >= DONE

    # ---- request side -----------------------------------------------------------------------

    def request_body(self, data: bytes) -> None:
        self.body_received += len(data)
        limit = self.conn.limits.max_body_size
        if limit and self.body_received > limit and not self.upgrade:
            raise ClientProtocolError(f"request body is larger than {limit} bytes", status_hint=413)
        if self.request_chunked:
            data = http1.encode_chunk(data)
        self._send_upstream(data)

    def request_complete(self, trailers: Headers) -> None:
        if self.request_chunked:
            kept = [(n, v) for n, v in trailers if n.lower() not in http1.HOP_BY_HOP]
            self._send_upstream(http1.last_chunk(kept))
        self.request_done = True
        upstream = self.upstream
        if upstream is not None and self.body_received:
            upstream.request_sent()  # its read_timeout was put off while the body came

    def tunnel_bytes(self, data: bytes) -> None:
        """Client bytes after an upgrade request: held until the server agrees (101).

        Until then they are no request of the connection's (llhttp parses nothing
        after an upgrade request) and must not reach the server: a request hidden
        there would arrive unvalidated, with the client's own Host and forwarding
        fields, and a server that declines the upgrade would answer it on a
        connection going back to the pool. A declined upgrade drops them (the client
        connection closes after the response), and so does an exchange that is no
        upgrade to tlsgate (llhttp stops at an HTTP/1.0 ``Connection: upgrade``).
        """
        if not data:
            return
        upstream = self.upstream
        if self.state == TUNNEL and upstream is not None:
            upstream.write(data)
            return
        if not self.upgrade or self.state >= DONE or self.local_response is not None:
            return
        if self.tunnel_held is None:
            self.tunnel_held = [data]
        else:
            self.tunnel_held.append(data)
        self.tunnel_held_bytes += len(data)
        if self.tunnel_held_bytes > BUFFER_HIGH_WATER:
            self.conn.pause_reading(self.conn.PAUSED_BUFFER)

    def take_tunnel_held(self) -> bytes:
        """What the client sent after its upgrade request, for the tunnel's start."""
        held, self.tunnel_held = self.tunnel_held, None
        self.tunnel_held_bytes = 0
        return b"".join(held) if held else b""

    def _send_upstream(self, data: bytes) -> None:
        if not data:
            return
        upstream = self.upstream
        if upstream is not None and FORWARDING <= self.state <= TUNNEL:
            upstream.write(data)
            return
        if self.local_response is not None or self.state >= DONE:
            return  # a local answer: the body is read and dropped
        if self.buffer is None:
            self.buffer = [data]
        else:
            self.buffer.append(data)
        self.buffered += len(data)
        if self.buffered > BUFFER_HIGH_WATER:
            self.conn.pause_reading(self.conn.PAUSED_BUFFER)

    # ---- start: route, pick, connect ---------------------------------------------------------

    def start(self) -> None:
        if self.state != WAITING:
            return
        if self.local_response is not None:
            self.conn.write(self.local_response)
            self.response_started = True
            self.finish(reusable=False)
            return
        info = self.info
        assert info is not None
        self._to(CONNECTING)
        backend = self.conn.listener.routes.match(info.host, info.path)
        if backend is None:
            self.fail_local(404, f"no route for host {info.host!r} and path {info.path!r}")
            return
        self.backend = backend
        self.connect()

    def connect(self) -> None:
        """Pick a server; use a pooled connection at once, or connect in a task."""
        backend = self.backend
        assert backend is not None
        now = self.conn.loop.time()
        server = backend.pick(self.client_key, self.tried or _NOTHING, now)
        if server is None:
            self.fail_local(503, f"no server of backend {backend.name!r} is available")
            return
        idle = self._take_idle(server, now)
        if idle is not None:
            # the common keep-alive case stays synchronous: no task, no extra loop turn
            self.attach(server, idle, reused=True)
            return
        self.conn.ctx.spawn(self._connect(server))

    def _take_idle(
        self, server: ServerRuntime, now: float | None = None
    ) -> UpstreamConnection | None:
        if server.config.send_proxy_protocol:
            return self.conn.take_private_upstream(self._private_key(server))
        return server.take_idle(self.conn.loop.time() if now is None else now)

    async def _connect(self, first: ServerRuntime) -> None:
        backend = self.backend
        assert backend is not None
        cfg = backend.config
        conn = self.conn
        loop = conn.loop
        deadlines = conn.ctx.deadlines

        async def open_one(server: ServerRuntime) -> UpstreamConnection:
            self.t_upstream = loop.time()
            _transport, proto = await loop.create_connection(
                lambda: UpstreamConnection(server, deadlines),
                server.state.host,
                server.state.port,
                ssl=backend.ssl_context,
                server_hostname=(cfg.server_name or server.state.host)
                if backend.ssl_context
                else None,
            )
            return proto

        if self.tried is None:
            self.tried = set()
        try:
            server, upstream, reused = await connect_to_backend(
                backend,
                self.client_key,
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
        if self.state != CONNECTING:  # the client went away while we connected
            upstream.close()
            return
        self.attach(server, upstream, reused=reused)

    def attach(self, server: ServerRuntime, upstream: UpstreamConnection, *, reused: bool) -> None:
        info = self.info
        assert info is not None
        self._to(FORWARDING)
        self.server = server
        self.upstream = upstream
        self.reused = reused
        if not self.t_upstream:
            self.t_upstream = self.conn.loop.time()
        server.state.active += 1
        conn = self.conn
        upstream.begin(
            self,
            head_request=info.method == b"HEAD",
            max_head_size=conn.max_header_size,
            max_head_fields=conn.max_headers,
        )
        cfg = server.config
        if cfg.send_proxy_protocol and not reused:
            # a new connection for this client: its first bytes name the real client
            upstream.write(
                proxy_header_for(
                    cfg.send_proxy_protocol,
                    (self.fwd.client_ip, conn.peer_port),
                    (conn.local_ip, conn.local_port),
                    sni=conn.sni,
                    alpn="http/1.1" if conn.tls else None,
                    crc32c=cfg.proxy_protocol_crc32c,
                )
            )
        out = http1.rewrite_request_headers(self.headers, info, self.fwd)
        if info.body == "length":
            out.append((b"Content-Length", b"%d" % (info.content_length or 0)))
        elif info.body == "chunked":
            out.append((b"Transfer-Encoding", b"chunked"))
        head = http1.request_head_bytes(info, out)
        if self.buffer:
            upstream.write(head + b"".join(self.buffer))
            self.buffer = None
            self.buffered = 0
            conn.resume_reading(conn.PAUSED_BUFFER)
        else:
            upstream.write(head)
        if conn.writing_paused:
            upstream.pause_reading()
            self.upstream_paused_by_client = True

    # ---- response side (UpstreamOwner) --------------------------------------------------------

    def upstream_informational(self, status: int, reason: bytes, headers: Headers) -> None:
        info = self.info
        assert info is not None
        # RFC 9110 §15.2: "A server MUST NOT send a 1xx response to an HTTP/1.0 client."
        if info.http_version == "1.0" or self.response_started:
            return
        out = http1.rewrite_response_headers(headers, hsts="", keep_alive=True)
        self.conn.write(http1.response_head_bytes(status, reason, out))
        if status == 100 and not self.request_done and not self.body_received:
            self.conn.body_continue()  # the client waited for this to send its body

    def upstream_request_pending(self) -> bool:
        """The client is still sending the request (its body is not all read)."""
        return not self.request_done

    def upstream_response_head(
        self,
        status: int,
        reason: bytes,
        headers: Headers,
        keep_alive: bool,
        *,
        content_length: bytes | None,
        chunked: bool,
    ) -> None:
        info = self.info
        assert info is not None
        if status == 101 and not self.upgrade:
            # raised into the upstream's parser: a failure before anything was relayed
            raise UpstreamProtocolError(
                f"server {self.server.key if self.server else '-'} switched protocols (101) "
                "without an upgrade request"
            )
        self._to(RESPONDING)
        conn = self.conn
        self.upstream_ms = (conn.loop.time() - self.t_upstream) * 1000.0
        self.status = status
        self.response_started = True
        if self.upgrade and status != 101:
            # declined: what the client sent after the request is no request of ours
            self.tunnel_held = None
            self.tunnel_held_bytes = 0
        self.client_keep_alive = http1.client_keep_alive(
            wanted=self.client_keep_alive,
            request_done=self.request_done,
            upgrade_requested=self.upgrade,
            status=status,
            draining=conn.draining,
        )
        mode, framing, reusable = http1.response_framing(
            status,
            content_length,
            chunked,
            head_request=info.method == b"HEAD",
            client_version=info.http_version,
        )
        self.body_mode = mode
        if not reusable:
            self.client_keep_alive = False
        out = http1.rewrite_response_headers(
            headers,
            hsts=conn.hsts,
            keep_alive=self.client_keep_alive,
            upgrade=status == 101,
            client_version=info.http_version,
            framed_by_llhttp=True,
        )
        out += framing
        conn.write(http1.response_head_bytes(status, reason, out))

    def upstream_body(self, data: bytes) -> None:
        if not data:
            return
        self.bytes_out += len(data)
        mode = self.body_mode
        if mode == http1.BODY_RAW:
            self.conn.write(data)
        elif mode == http1.BODY_CHUNKED:
            self.conn.write(http1.encode_chunk(data))

    def upstream_read_size(self) -> int:
        return self.conn.output_room()

    def upstream_complete(self, trailers: Headers, reusable: bool) -> None:
        if self.body_mode == http1.BODY_CHUNKED:
            kept = [(n, v) for n, v in trailers if n.lower() not in http1.HOP_BY_HOP]
            self.conn.write(http1.last_chunk(kept))
        self.finish(reusable=reusable and self.request_done)

    def upstream_upgraded(self, data: bytes) -> None:
        upstream = self.upstream
        if upstream is None or not self.upgrade or self.state != RESPONDING:
            self.conn.abort()
            return
        self._to(TUNNEL)
        if data:
            self.conn.write(data)
        self.conn.start_tunnel(self, upstream)

    def upstream_failed(self, error: UpstreamFailure, *, unsent: bool = False) -> None:
        if self.state >= DONE:
            return
        server = self.server
        info = self.info
        upstream = self.upstream
        if (
            upstream is not None
            and self.reused
            # the server answered something: it saw the request, which must not go twice
            and not upstream.response_started
            and self.state == FORWARDING
            and not self.stale_retry_done
            and info is not None
            and info.body == "none"
            and not self.upgrade
            and server is not None
            # a server that sat on the request may have acted on it: no retry after a timeout
            and not isinstance(error, UpstreamTimeout)
        ):
            # A pooled connection the server had already closed: nothing was processed,
            # so the request is safe to send again on a fresh connection.
            self.stale_retry_done = True
            self._detach(reusable=False)
            self._to(CONNECTING)
            self.conn.ctx.spawn(self._connect(server))
            return
        if self.response_started and unsent and self.state == RESPONDING:
            # the head was relayed in this same upstream read: still corked, so it never
            # left, and the client can still be told 502 instead
            self.conn.discard_corked()
            self.response_started = False
            self.bytes_out = 0
        self.fail_upstream(error)

    def upstream_pause_writing(self) -> None:
        self.conn.pause_reading(self.conn.PAUSED_UPSTREAM)

    def upstream_resume_writing(self) -> None:
        self.conn.resume_reading(self.conn.PAUSED_UPSTREAM)

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

    def fail_upstream(self, error: UpstreamFailure) -> None:
        # each error knows its status: 504 for timeouts, 503 for no server, else 502
        status = error.status_hint if error.status_hint in (502, 503, 504) else 502
        self.fail_local(status, str(error))

    def fail_local(
        self,
        status: int,
        detail: str,
        public: str | None = None,
        *,
        client_error: bool | None = None,
    ) -> None:
        """Answer ``status`` (see :meth:`error_page`), or abort the client if too late."""
        if self.state >= DONE:
            return
        if client_error is None:
            client_error = status < 500
        if self.response_started:
            self.request_id = rid = new_request_id()
            self.error_detail = detail
            log.log(
                logging.INFO if client_error else logging.WARNING,
                "%s: request %s: response cut short, closing the client connection: %s",
                self._where(),
                rid,
                detail,
            )
            self.finish(reusable=False, abort_client=True)
            return
        self.status = status
        self.client_keep_alive = self.client_keep_alive and self.request_done and status < 500
        head = self.info is not None and self.info.method == b"HEAD"
        page = self.error_page(
            status,
            detail,
            public,
            client_error=client_error,
            close=not self.client_keep_alive,
            head=head,
        )
        self.conn.write(page)
        self.response_started = True
        self.finish(reusable=False)

    def error_page(
        self,
        status: int,
        detail: str,
        public: str | None = None,
        *,
        client_error: bool | None = None,
        close: bool = True,
        head: bool = False,
    ) -> bytes:
        """The error response for ``status``, with a new request id, logged with ``detail``.

        ``client_error`` (default: a 4xx status) says the request was at fault, not the
        inside: a rejected request, whatever its status (501 and 505 too). The client
        sees ``public``; by default ``detail`` itself for a client error (it says what
        was wrong with the request, and callers phrase it without naming settings),
        else nothing (the detail is about the inside: server addresses, system errors,
        settings). The error log (info for client errors, else warning) and the access
        log get ``detail`` and the id.
        """
        if client_error is None:
            client_error = status < 500
        self.request_id = rid = new_request_id()
        self.error_detail = detail
        if public is None:
            public = detail if client_error else ""
        log.log(
            logging.INFO if client_error else logging.WARNING,
            "%s: request %s from %s: answering %d: %s",
            self._where(),
            rid,
            self.fwd.client_ip,
            status,
            detail,
        )
        return http1.error_response(status, public, close=close, head=head, request_id=rid)

    def _private_key(self, server: ServerRuntime) -> str:
        """The key of this client's own upstream connection to ``server`` (one that
        carries its PROXY header): one per client address the requests name."""
        fwd = self.fwd
        if fwd is self.conn.fwd:
            return server.key
        return f"{server.key} {fwd.client_ip}"

    def _where(self) -> str:
        where = f"listener {self.conn.listener.name}"
        return f"{where}, backend {self.backend.name}" if self.backend else where

    def _detach(self, *, reusable: bool) -> None:
        upstream, self.upstream = self.upstream, None
        server = self.server
        if upstream is None or server is None:
            return
        server.state.active -= 1
        upstream.release()
        if self.upstream_paused_by_client:
            upstream.resume_reading()
        conn = self.conn
        if server.config.send_proxy_protocol:
            # it carries this client's PROXY header: keep it for this client only
            if reusable and upstream.usable() and not conn.closed:
                conn.keep_private_upstream(self._private_key(server), upstream)
            else:
                upstream.close()
        elif not (
            reusable
            and not server.retired
            and upstream.usable()
            and server.pool.release(upstream, conn.loop.time())
        ):
            upstream.close()

    def finish(self, *, reusable: bool, abort_client: bool = False) -> None:
        if self.state >= DONE:
            return
        self._to(DONE)
        self._detach(reusable=reusable)
        conn = self.conn
        if conn.ctx.access.enabled:
            conn.ctx.access.write(self.access_record())
        conn.exchange_finished(self, abort=abort_client)

    def abandon(self) -> None:
        """The client went away: drop the upstream side without reusing it."""
        if self.state >= DONE:
            return
        self._to(ABANDONED)
        if not self.response_started:
            self.status = self.status or 499  # nginx's "client closed request"
        self._detach(reusable=False)
        if self.conn.ctx.access.enabled:
            self.conn.ctx.access.write(self.access_record())

    def access_record(self) -> AccessRecord:
        conn = self.conn
        info = self.info
        return AccessRecord(
            kind="http",
            client_ip=self.fwd.client_ip,
            peer_ip=conn.proxy_peer or self.fwd.peer_ip,
            listener=conn.listener.name,
            worker=conn.ctx.slot,
            duration_ms=round((conn.loop.time() - self.t_start) * 1000.0, 3),
            backend=self.backend.name if self.backend else None,
            server=self.server.key if self.server else None,
            sni=conn.sni,
            bytes_in=self.body_received,
            bytes_out=self.bytes_out,
            tls_version=conn.tls_version,
            method=info.method.decode("latin-1") if info else None,
            host=info.host if info else None,
            path=info.path if info else None,
            status=self.status,
            upstream_duration_ms=round(self.upstream_ms, 3) if self.upstream_ms >= 0 else None,
            error=self.error_detail,
            request_id=self.request_id,
        )
