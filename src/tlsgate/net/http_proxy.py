"""The HTTP/1.1 reverse proxy's client side: one protocol object per client connection.

How this works: a ``ClientConnection`` feeds what it reads to an httptools
request parser. Each request head that completes is validated
(``proto.http1``) and becomes an :class:`~tlsgate.net.exchange.Exchange`
appended to the connection's queue; only the exchange at the head of the queue
talks to an app server, so pipelined requests are answered in order. Each
side's ``pause_writing``/``resume_writing`` pauses and resumes reading on the
other.

Per-connection work is done once, in ``connection_made``: who the client is,
whether its peer is trusted, the forwarding context every request's
X-Forwarded-*/Forwarded fields come from, the HSTS value. Per request the
connection only parses, validates and queues.

Timeouts are deadlines on the worker's wheel (``net.deadlines``): the request
head must arrive within ``header_timeout``; between requests the connection
may stay idle for ``idle_timeout``. While an exchange is in progress, the
upstream side's timeouts apply, and while its request body is being read, the
body's own (slow POST): its next bytes must come within ``body_timeout``, and
with ``body_min_rate`` the body must average that many bytes per second after
a first ``body_timeout`` of grace (Apache's mod_reqtimeout ``MinRate``). Both
are one deadline, ``min(last read + body_timeout, start + body_timeout +
received / body_min_rate)``, which only grows as bytes come: each body read
moves it later with a float store, no timer. Time spent with reading paused by
tlsgate itself (an upstream that takes the body slowly, a full buffer, a full
pipeline) is not the client's: the deadline stops, and starts again on resume.
A ``100 Continue`` relayed before any body byte starts the body's clock over
(the client was told to wait for it). A body that misses its deadline is
answered ``408`` with ``Connection: close`` if no response has started yet, or
else the connection is closed; the upstream connection is closed, never pooled,
and the error and access logs say why.

Output has its own bound (slow readers): while a client's transport's write
buffer is full (above its high-water mark, ``pause_writing``), and after
tlsgate closed the connection with output left in it, the client must take
some of it (the buffer must shrink) within every ``send_timeout``, else it is
dropped and the logs say so -- nginx's ``send_timeout``, which also counts
from one successful write to the next. What a slow reader holds is bounded in
memory too: the high-water mark is 64 KiB, and each read from the app server
takes only the room left below it (``output_room``, at least 16 KiB), so a
256 KiB read never lands on top of a full buffer. On TLS, uvloop's socket
transport under the SSL layer holds what that layer flushed to it before it
paused (its own mark is 64 KiB), so a reader that takes nothing holds about
three times the mark: ~240 KiB of RSS each in ``make attack``'s slowread, where
a 256 KiB mark and 256 KiB reads held ~790 KiB (reads of up to 32 KiB would
save a third more, at ~20 % of an HTTPS bulk download's throughput).
A connection closed while the client may still be sending (a refused request,
a 408) is closed in two steps on plain TCP, as nginx's ``lingering_close``
does: the answer and a FIN first, then what the client goes on sending is read
and dropped until it closes too or ``LINGER_TIME`` has passed. Closing at once
would make the kernel answer that data with a reset, which can destroy the
answer in the client's receive buffer before it is read. (On TLS, uvloop's
shutdown reads and drops the client's data itself until its close_notify.)
Both deadlines belong to one small object (``_OutputWatch``), made only for a
connection that needs one.

A ``101 Switching Protocols`` answer to an upgrade request (WebSocket) turns
the pair of connections into a byte tunnel.

Errors are answered as HTTP responses (400/408/413/431 for clients, 502/503/504
for upstream trouble) through the same queue, so they too come in order. Each
error page carries a request id that the error and access logs repeat with the
detail (``Exchange.error_page``); a 4xx page says what was wrong with the
request without naming a setting, a 5xx page says nothing more. An HTTP/0.9
request line (no version) is refused with 400 as soon as it has ended, not
left to the header timeout.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import ipaddress
import logging
import sys
import termios
from typing import cast

import httptools

from tlsgate.errors import ClientProtocolError
from tlsgate.net.context import ServeContext
from tlsgate.net.deadlines import INF
from tlsgate.net.exchange import DONE, WAITING, Exchange
from tlsgate.net.runtime import Cancellable, ListenerRuntime
from tlsgate.net.upstream import Headers, UpstreamConnection
from tlsgate.proto import http1
from tlsgate.proto.proxy_protocol import ProxyHeader, client_address_of

log = logging.getLogger("tlsgate.http")

ACME_CHALLENGE_PREFIX = "/.well-known/acme-challenge/"
# More pipelined requests than this waiting: stop reading until some are answered.
MAX_PIPELINE = 32
# The client transport's high-water mark, and the least one upstream read takes (one
# TLS record) when the client's buffer is at or over it: see "Output has its own bound"
TRANSPORT_HIGH_WATER = 64 * 1024
MIN_UPSTREAM_READ = 16 * 1024
# What every client connection of the worker reads into (get_buffer): one buffer, since
# a read is copied out before anything else runs. Without it, uvloop's TLS transport
# allocates a 256 KiB bytes object for each TLS record it decrypts and shrinks it to the
# record's size: those large-then-shrunk chunks fragment glibc's heap, and a worker
# relaying uploads grew without bound (see net.memory).
READ_BUFFER_SIZE = 256 * 1024
_READ_BUFFER = memoryview(bytearray(READ_BUFFER_SIZE))
# Upstream connections that carry a PROXY header kept for one client connection: one per
# server and per client address its requests named (client_ip_header)
MAX_PRIVATE_UPSTREAMS = 8
# A client whose connection tlsgate closed while it may still have been sending: the
# longest its further bytes are read and dropped (nginx's lingering_time is 30 s, its
# lingering_timeout 5 s)
LINGER_TIME = 5.0

# What a connection waits for while its deadline runs.
_WAIT_HEAD = 1
_WAIT_IDLE = 2
_WAIT_BODY = 3  # the rest of a request body (body_timeout, body_min_rate)


class _OutputWatch:
    """The output deadlines of one client connection (``send_timeout``, lingering close).

    Its own object in the deadline wheel, so these never disturb the connection's
    deadline (head, idle, body); made on the first need, which most connections never
    have.
    """

    __slots__ = ("conn", "deadline", "slot")

    def __init__(self, conn: ClientConnection) -> None:
        self.conn: ClientConnection | None = conn
        self.deadline = INF
        self.slot = 0

    def deadline_reached(self, now: float) -> None:
        conn = self.conn
        if conn is not None:
            conn.output_deadline(now)


class ClientConnection(asyncio.BufferedProtocol):
    """One client connection on an http or https listener.

    A buffered protocol: uvloop reads (and on TLS, decrypts) into the worker's one
    read buffer, and :meth:`buffer_updated` hands an exact-size copy to
    :meth:`data_received`.
    """

    # Why reading is paused: a bit each, reading resumes when none is left.
    PAUSED_BUFFER = 1  # request body waiting for an upstream connection
    PAUSED_UPSTREAM = 2  # the upstream connection's write buffer is full
    PAUSED_PIPELINE = 4  # too many pipelined requests waiting
    PAUSED_REJECTED = 8  # a broken request was answered: read no more

    def __init__(
        self,
        ctx: ServeContext,
        listener: ListenerRuntime,
        tls: bool,
        *,
        proxy: ProxyHeader | None = None,
        client_slot: str | None = None,
        opening: Cancellable | None = None,
    ) -> None:
        self.ctx = ctx
        self.loop = ctx.loop
        self.listener = listener
        # the listener's opening entry (its handshake task): it leaves ``opening`` the
        # moment the connection is in ``connections``, so it never counts twice
        self.opening = opening
        # its max_connections_per_client key, given back once (release_client)
        self.client_slot = client_slot
        self.tls = tls
        self._use_listener_config(listener)
        self.proxy = proxy
        self.transport: asyncio.Transport | None = None
        # its callbacks are bound methods of this object: connection_lost breaks the cycle
        # made on the first bytes: an idle connection (keep-alive, or a TLS client that
        # has not sent its request yet) holds no llhttp state (about 0.9 KiB)
        self.parser: httptools.HttpRequestParser | None = None
        # in order, at most MAX_PIPELINE + 1: a list (an empty deque is ~0.7 KiB, and
        # most connections hold one exchange at a time)
        self.queue: list[Exchange] = []
        self.receiving: Exchange | None = None
        self.paused = 0
        self.writing_paused = False
        self.draining = False
        self.closed = False
        self.in_head = False
        self.upgraded = False
        self.peer_eof = False
        self.tunnel_exchange: Exchange | None = None
        self.tunnel_upstream: UpstreamConnection | None = None
        # upstream connections that carry this client's PROXY header: never shared
        self.private_upstreams: dict[str, UpstreamConnection] | None = None
        # who the client is (connection_made)
        self.fwd = _NO_FORWARDING
        # the last context a client_ip_header made (_client_ip_header)
        self._header_fwd: http1.ForwardingContext | None = None
        self.client_key = b""
        self.peer_port = 0
        self.local_ip = ""
        self.local_port = 0
        self.proxy_peer = ""
        self.sni: str | None = None
        self.tls_version: str | None = None
        # net.deadlines.Timed
        self.deadline = INF
        self.slot = 0
        self._waiting = 0
        # the request body being read (_WAIT_BODY): when its clock started (moved on by
        # the time reading was paused), its last read, when reading was paused (0: not)
        self._body_start = 0.0
        self._body_last = 0.0
        self._body_paused_at = 0.0
        # the output deadlines (_OutputWatch): the client must take output by _send_by,
        # and a lingering close ends at _linger_until (0: none)
        self._watch: _OutputWatch | None = None
        self._send_by = 0.0
        self._send_unsent = 0  # the write buffer's size when _send_by was set
        self._linger_until = 0.0
        # output held while corked: one upstream read becomes one client write
        self._corked = 0
        self._out: list[bytes] = []
        # the request head being parsed
        self._url = b""
        self._headers: Headers = []
        self._trailers: Headers = []
        self._head_size = 0
        # bytes of the head in reads after the one it began in (-1: none yet), and how
        # many heads have begun (on_message_begin)
        self._head_pending = -1
        self._heads_begun = 0
        # bytes of a chunked request body's reads that brought no body byte, in a row
        self._chunk_overhead = 0

    # ---- lifecycle ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = t = cast(asyncio.Transport, transport)
        t.set_write_buffer_limits(high=TRANSPORT_HIGH_WATER)
        # (TCP_NODELAY: uvloop and asyncio set it on every TCP transport themselves)
        peer = t.get_extra_info("peername")
        peer_ip = str(peer[0]) if peer else ""
        self.peer_port = int(peer[1]) if peer else 0
        if self.proxy is not None:
            # the trusted load balancer in front vouches for the client: use it everywhere
            vouched = client_address_of(self.proxy, (peer_ip, self.peer_port))
            if vouched != (peer_ip, self.peer_port):
                self.proxy_peer = peer_ip
                peer_ip, self.peer_port = vouched
        sockname = t.get_extra_info("sockname")
        self.local_ip = str(sockname[0]) if sockname else ""
        self.local_port = int(sockname[1]) if sockname else 0
        if self.proxy is not None and self.proxy.command == "PROXY" and self.proxy.destination:
            self.local_ip, self.local_port = self.proxy.destination
        if self.tls:
            ssl_object = t.get_extra_info("ssl_object")
            if ssl_object is not None:
                self.tls_version = ssl_object.version()
                if self.listener.certificates is not None:
                    self.sni = self.listener.certificates.sni_of(ssl_object)
        self._set_forwarding(peer_ip, peer_ip)
        # (max_connections: the listener's Acceptor counts it from its accept on)
        self.listener.connections.add(self)
        opening, self.opening = self.opening, None
        if opening is not None:
            self.listener.opened(opening)
        self.ctx.connections.add(self)
        if self.draining or self.ctx.draining:
            self._close()
            return
        self._wait(_WAIT_HEAD)

    def _use_listener_config(self, listener: ListenerRuntime) -> None:
        self.limits = limits = listener.config.limits
        # the response head limits each exchange hands its upstream connection
        self.max_header_size = limits.max_header_size
        self.max_headers = limits.max_headers
        # read on every request body piece
        self._body_timeout = limits.body_timeout
        self._body_rate = float(limits.body_min_rate)
        self._send_timeout = limits.send_timeout
        self.hsts = listener.config.hsts if self.tls else ""

    def _follow_reload(self) -> None:
        """A reload replaced this connection's listener: move to the new one.

        Called as a request begins (exchanges already queued keep their backends),
        so this request and those after it are routed, limited and pooled by the
        new graph; the connection counts against the new listener's limits from now on.
        """
        old = new = self.listener
        while new.successor is not None:
            new = new.successor
        old.release(self)
        new.connections.add(self)
        slot = self.client_slot
        if slot is not None:
            old.client_left(slot)
            new.per_client[slot] = new.per_client.get(slot, 0) + 1
        self.listener = new
        self._use_listener_config(new)
        fwd = self.fwd
        self._set_forwarding(fwd.client_ip, fwd.peer_ip)
        self._header_fwd = None

    def release_client(self) -> None:
        """Give the ``max_connections_per_client`` key back (once)."""
        slot, self.client_slot = self.client_slot, None
        if slot is not None:
            self.listener.client_left(slot)

    def _set_forwarding(self, client_ip: str, peer_ip: str) -> None:
        lc = self.listener.config
        self.fwd = http1.ForwardingContext(
            client_ip=client_ip,
            peer_ip=peer_ip,
            peer_trusted=self.listener.is_trusted(peer_ip),
            proto="https" if self.tls else "http",
            listener_port=self.local_port,
            client_ip_header=lc.client_ip_header.encode("ascii"),
            authority=http1.default_authority(
                self.sni, self.local_ip, self.local_port, tls=self.tls
            ),
        )
        self.client_key = client_ip.encode()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.ctx.deadlines.discard(self)
        watch = self._watch
        if watch is not None:
            self._watch = None
            self.ctx.deadlines.discard(watch)
            watch.conn = None
        self.listener.release(self)
        self.ctx.connections.discard(self)
        if self.client_slot is not None:
            self.release_client()
        if self.private_upstreams:
            for up in self.private_upstreams.values():
                up.close()
            self.private_upstreams = None
        if self.tunnel_upstream is not None:
            up, self.tunnel_upstream = self.tunnel_upstream, None
            up.close()
            if self.tunnel_exchange is not None:
                self.tunnel_exchange.abandon()
        queue, self.queue = self.queue, []
        for ex in queue:
            ex.abandon()
        # Nothing may lead back to this object any more (the parser's callbacks, an
        # exchange's .conn): then refcounting frees it, its transport and uvloop's 256 KiB
        # SSL read buffer right now. In a cycle they would wait for a full collection of
        # the cyclic GC, which an idle worker never runs: after a burst, thousands of them.
        self.parser = None
        self.receiving = None
        self.tunnel_exchange = None
        # and uvloop's TLS protocol keeps the bound get_buffer and buffer_updated of a
        # buffered protocol after the connection is lost: with the transport still
        # held here, that would be a cycle too
        self.transport = None
        self.ctx.connection_closed()

    def eof_received(self) -> bool | None:
        self.peer_eof = True
        if self.closed:
            return False  # lingering: the client has read the answer and is done
        if self.tunnel_upstream is not None:
            transport = self.tunnel_upstream.transport
            if transport is not None and transport.can_write_eof():
                transport.write_eof()
                return not self.tls
            return False
        if self.receiving is not None or self.in_head or not self.queue:
            return False  # nothing left to answer, or a request cut short: close
        # the client sent everything and half-closed; answer what is queued, then close
        return not self.tls

    def pause_writing(self) -> None:
        self.writing_paused = True
        if self._send_timeout > 0 and not self._send_by:
            self._arm_send(self.loop.time())
        up = self._active_upstream()
        if up is not None:
            up.pause_reading()
            if self.queue:
                self.queue[0].upstream_paused_by_client = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        if not self.closed:
            # (after a close, the rest must still go within send_timeout)
            self._send_by = 0.0
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

    # ---- private (PROXY-header-carrying) upstream connections ----------------------------------

    def take_private_upstream(self, key: str) -> UpstreamConnection | None:
        if not self.private_upstreams:
            return None
        conn = self.private_upstreams.pop(key, None)
        if conn is not None and conn.usable():
            return conn
        if conn is not None:
            conn.abort()
        return None

    def keep_private_upstream(self, key: str, upstream: UpstreamConnection) -> None:
        if self.private_upstreams is None:
            self.private_upstreams = {}
        kept = self.private_upstreams
        old = kept.pop(key, None)
        if old is not None and old is not upstream:
            old.close()
        kept[key] = upstream
        if len(kept) > MAX_PRIVATE_UPSTREAMS:
            # one per client address an edge names: keep the most recent few
            kept.pop(next(iter(kept))).close()

    # ---- reading ------------------------------------------------------------------------------

    def pause_reading(self, reason: int) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.transport.pause_reading()
            if self._waiting == _WAIT_BODY:
                # not read now: not the client's time. The wheel drops the connection
                # when its slot comes; resume_reading arms it again
                self._body_paused_at = self.loop.time()
                self.deadline = INF
        self.paused |= reason

    def resume_reading(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and self.transport is not None and not self.closed:
                self.transport.resume_reading()
                if self._waiting == _WAIT_BODY:
                    self._body_resumed()

    def get_buffer(self, sizehint: int) -> memoryview:
        return _READ_BUFFER

    def buffer_updated(self, nbytes: int) -> None:
        # copied out first: the buffer is the next read's, whichever connection's
        self.data_received(_READ_BUFFER[:nbytes].tobytes())

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return  # lingering after a close: dropped
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
        parser = self.parser
        if parser is None:
            parser = self.parser = httptools.HttpRequestParser(self)
        try:
            rx = self.receiving
            if rx is not None and rx.request_chunked:
                self._feed_chunked(parser, data, rx)
                began = -2
            else:
                # between requests, a head that begins in this read is all of it
                began = self._heads_begun if rx is None and not self.in_head else -2
                parser.feed_data(data)
            if self.in_head:
                # rare: a head split over reads
                self._head_unfinished(data, whole=self._heads_begun == began + 1)
        except httptools.HttpParserUpgrade as exc:
            self.upgraded = True
            offset = int(exc.args[0]) if exc.args else len(data)
            rest = data[offset:]
            if self.queue:
                last = self.queue[-1]
                if not last.upgrade:
                    # llhttp stopped at an Upgrade tlsgate ignores (HTTP/1.0): it parses
                    # nothing more here, so nothing more is forwarded; close after it
                    last.client_keep_alive = False
                    last.close_after = True
                elif rest:
                    last.tunnel_bytes(rest)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, ClientProtocolError):
                self._reject(cause.status_hint, str(cause))
            else:
                raise
        except httptools.HttpParserError as exc:
            self._reject(400, f"malformed request: {exc}")

    def _head_unfinished(self, data: bytes, *, whole: bool) -> None:
        """A read ended inside a request head: bound what the parser holds of it.

        llhttp hands over a field only once its line has ended (httptools gathers the
        pieces till then), so ``on_header`` alone can't stop an endless line. Every
        read after the one the head began in is all head; so is that one if the head
        began it (``whole``: nothing of an earlier request in it), else that read is
        not counted. Past ``max_header_size`` the head is refused with 431 -- at most
        one read later than an exact count would, for a head behind a pipeline.
        """
        if self._url:
            self._check_request_line(data)
        if self.paused & self.PAUSED_REJECTED:
            return
        pending = self._head_pending
        if pending < 0:  # the read it began in
            pending = len(data) if whole else 0
        else:
            pending += len(data)
        self._head_pending = pending
        limit = self.limits.max_header_size
        if pending > limit:
            self._reject(431, f"request head is larger than {limit} bytes (a line without end)")

    def _feed_chunked(self, parser: httptools.HttpRequestParser, data: bytes, rx: Exchange) -> None:
        """Feed a read of a chunked request body, and bound what is not body in it.

        Chunk-size lines, extensions and the trailer section carry no body bytes; the
        trailer fields, like header fields, are held whole by the parser until their
        line ends. Reads that bring no body byte add up, and past ``max_header_size``
        the request is refused with 431; any body byte starts the count over, so
        small chunks are fine.
        """
        before = rx.body_received
        parser.feed_data(data)
        if self.receiving is not rx:
            return  # the body ended (or was refused) in this read
        if rx.body_received != before:
            self._chunk_overhead = 0
            return
        overhead = self._chunk_overhead + len(data)
        self._chunk_overhead = overhead
        limit = self.limits.max_header_size
        if overhead > limit:
            self._reject(
                431,
                f"chunked request body: more than {limit} bytes of chunk framing or trailer "
                "fields without data",
            )

    def _check_request_line(self, data: bytes) -> None:
        """Refuse an HTTP/0.9 request line (``GET /`` and no version) once it has ended.

        llhttp takes it for HTTP/0.9 and goes on to wait for header fields, which
        such a client never sends: without this, the header timeout would answer
        408. llhttp reports version 0.9 only once a byte after the line has come;
        before that, a request line that ended (``data`` ends with LF, after the
        target) while no version was parsed (still 0.0) is the same case. (After
        an earlier request on the connection llhttp goes on reporting that one's
        version, so an HTTP/0.9 line pipelined behind it is refused only when its
        head ends, by ``validate_request``, or else by the header timeout.)
        """
        p = self.parser
        if p is None or self.paused & self.PAUSED_REJECTED:
            return
        version = p.get_http_version()
        if version == "0.9" or (version == "0.0" and data.endswith(b"\n")):
            self._reject(400, "HTTP/0.9 request line (no HTTP version)")

    def _reject(self, status: int, detail: str, public: str | None = None) -> None:
        """Answer a broken request (after anything queued before it) and stop reading.

        The client is told ``public`` if given, else ``detail`` (see ``Exchange.error_page``).
        """
        self.deadline = INF
        self._waiting = 0
        self.pause_reading(self.PAUSED_REJECTED)
        ex = self.receiving
        self.receiving = None
        if ex is not None and not ex.finished:
            ex.request_done = True
            ex.client_keep_alive = False
            ex.close_after = True
            if ex.state == WAITING:
                # pipelined behind another, not started: it becomes the error answer
                # itself, in its turn, and what arrived of its body goes nowhere
                ex.buffer = None
                ex.buffered = 0
                ex.status = status
                info = ex.info
                ex.local_response = ex.error_page(
                    status,
                    detail,
                    public,
                    client_error=True,
                    head=info is not None and info.method == b"HEAD",
                )
                return
            # the request whose body broke the rules is already on its way: cut it
            self.draining = True
            ex.fail_local(status, detail, public, client_error=True)
            return
        ex = Exchange(self, None, [], local_status=status, close_after=True)
        # the detail describes the request (even for 501/505): the client may read it
        ex.local_response = ex.error_page(
            status, detail, public, client_error=True, head=self._refused_head_is_head()
        )
        self._enqueue(ex)

    def _refused_head_is_head(self) -> bool:
        """Whether the request refused before it became an exchange is a HEAD, whose
        error page must have no body (RFC 9110 §9.3.2). llhttp's method is only
        meaningful once a request line has been read (``_url``)."""
        parser = self.parser
        return parser is not None and bool(self._url) and parser.get_method() == b"HEAD"

    # ---- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.listener.successor is not None:
            self._follow_reload()
        self.in_head = True
        self._url = b""
        self._headers = []
        self._trailers = []
        self._head_size = 0
        self._head_pending = -1
        self._heads_begun += 1
        self._chunk_overhead = 0
        if self.deadline != INF and self._waiting != _WAIT_HEAD:
            self._wait(_WAIT_HEAD)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)
        if self._head_size > self.limits.max_header_size:
            raise ClientProtocolError(
                f"request target is longer than {self.limits.max_header_size} bytes",
                status_hint=414,
            )

    def on_header(self, name: bytes, value: bytes) -> None:
        # llhttp leaves a value's trailing OWS on it (RFC 9112 §5: not part of the value)
        value = value.rstrip(b" \t")
        if not self.in_head:
            trailers = self._trailers
            trailers.append((name, value))
            limits = self.limits
            if len(trailers) > limits.max_headers:
                raise ClientProtocolError("too many trailer fields", status_hint=431)
            if sum(len(n) + len(v) + 4 for n, v in trailers) > limits.max_header_size:
                raise ClientProtocolError(
                    f"trailer section is larger than {limits.max_header_size} bytes",
                    status_hint=431,
                )
            return
        headers = self._headers
        headers.append((name, value))
        self._head_size += len(name) + len(value) + 4
        limits = self.limits
        if len(headers) > limits.max_headers:
            raise ClientProtocolError(
                f"more than {limits.max_headers} header fields", status_hint=431
            )
        if self._head_size > limits.max_header_size:
            raise ClientProtocolError(
                f"request head is larger than {limits.max_header_size} bytes", status_hint=431
            )

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.deadline = INF
        p = self.parser
        assert p is not None  # called from feed_data only
        limits = self.limits
        headers = self._headers
        info = http1.validate_request(
            p.get_method(),
            self._url,
            p.get_http_version(),
            headers,
            max_headers=limits.max_headers,
            max_header_size=limits.max_header_size,
            max_body_size=limits.max_body_size,
            framed_by_llhttp=True,
        )
        if info.content_length or info.body == "chunked":
            self._wait_body()  # before the exchange starts: it may end, and close, at once
        lc = self.listener.config
        fwd = None
        if lc.client_ip_header and self.fwd.peer_trusted:
            fwd = self._client_ip_header(headers)
        if (
            not self.tls
            and self.ctx.acme_http01
            and info.path.startswith(ACME_CHALLENGE_PREFIX)
            and (answer := self._acme_http01(info)) is not None
        ):
            self.receiving = answer
            self._enqueue(answer)
            return
        if lc.protocol == "http" and lc.redirect_https:
            close = not info.keep_alive or info.body != "none"
            location = http1.https_redirect_location(info, lc.redirect_port)
            ex = Exchange(
                self,
                info,
                headers,
                local_response=http1.redirect_response(location, close=close),
                local_status=308,
                close_after=close,
                fwd=fwd,
            )
        else:
            ex = Exchange(self, info, headers, fwd=fwd)
        self.receiving = ex
        self._enqueue(ex)

    def on_body(self, body: bytes) -> None:
        ex = self.receiving
        if ex is not None:
            ex.request_body(body)
            if self._waiting == _WAIT_BODY and not self.paused:
                now = self.loop.time()
                self._body_last = now
                # never earlier than before: a float store (net.deadlines)
                self.deadline = self._body_deadline(now, ex.body_received)

    def on_message_complete(self) -> None:
        ex, self.receiving = self.receiving, None
        if self._waiting == _WAIT_BODY:
            self._waiting = 0
            self.deadline = INF
        if ex is not None:
            ex.request_complete(self._trailers)

    def _acme_http01(self, info: http1.RequestInfo) -> Exchange | None:
        """RFC 8555 §8.3: answer a pending HTTP-01 challenge, before any redirect or route."""
        token = info.path[len(ACME_CHALLENGE_PREFIX) :]
        key_auth = self.ctx.acme_http01.get(token)
        if key_auth is None or info.method not in (b"GET", b"HEAD"):
            return None
        body = key_auth.encode("ascii")
        head = http1.response_head_bytes(
            200,
            b"OK",
            [
                (b"Content-Type", b"application/octet-stream"),
                (b"Content-Length", b"%d" % len(body)),
                (b"Cache-Control", b"no-store"),
            ],
        )
        return Exchange(
            self,
            info,
            [],
            local_response=head + (b"" if info.method == b"HEAD" else body),
            local_status=200,
            close_after=not info.keep_alive,
        )

    def _client_ip_header(self, headers: Headers) -> http1.ForwardingContext | None:
        """The forwarding context of a request whose trusted peer names its client in
        ``client_ip_header``; None (the connection's own) when it names none, or an
        invalid one. Per request: the connection's context is never changed, so a
        request without the header is not taken for the last one's client."""
        base = self.fwd
        wanted = base.client_ip_header.lower()
        for name, value in headers:
            if name.lower() == wanted:
                try:
                    ip = str(ipaddress.ip_address(value.decode("ascii").strip()))
                except (UnicodeDecodeError, ValueError):
                    log.info(
                        "listener %s: ignoring invalid %s from %s",
                        self.listener.name,
                        self.listener.config.client_ip_header,
                        base.peer_ip,
                    )
                    return None
                if ip == base.client_ip:
                    return None
                last = self._header_fwd
                if last is not None and last.client_ip == ip:
                    return last  # an edge's keep-alive connection: often the same client
                self._header_fwd = fwd = dataclasses.replace(base, client_ip=ip)
                return fwd
        return None

    # ---- the queue ----------------------------------------------------------------------------

    def _enqueue(self, ex: Exchange) -> None:
        queue = self.queue
        queue.append(ex)
        if len(queue) == 1:
            ex.start()
        elif len(queue) > MAX_PIPELINE:
            self.pause_reading(self.PAUSED_PIPELINE)

    def exchange_finished(self, ex: Exchange, *, abort: bool = False) -> None:
        queue = self.queue
        if queue and queue[0] is ex:
            del queue[0]
        if self.paused & self.PAUSED_PIPELINE and len(queue) <= MAX_PIPELINE:
            self.resume_reading(self.PAUSED_PIPELINE)
        if abort:
            self.abort()
            return
        if not ex.client_keep_alive or ex.close_after or self.draining:
            self._close()
            return
        if queue:
            self.loop.call_soon(queue[0].start)
        elif self.peer_eof:
            self._close()
        else:
            self._wait(_WAIT_HEAD if self.in_head else _WAIT_IDLE)

    # ---- tunnel (after 101) ----------------------------------------------------------------------

    def start_tunnel(self, ex: Exchange, upstream: UpstreamConnection) -> None:
        self.tunnel_exchange = ex
        self.tunnel_upstream = upstream
        self.deadline = INF
        self._waiting = 0  # bytes after the upgrade are no request body
        held = ex.take_tunnel_held()
        if held:
            upstream.write(held)
        self.resume_reading(self.PAUSED_BUFFER)

    def tunnel_upstream_eof(self) -> None:
        if self.transport is None or self.closed:
            return
        if self.transport.can_write_eof() and not self.peer_eof:
            self.transport.write_eof()
        else:
            self._close()

    # ---- writing & closing ---------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            return
        if self._corked:
            self._out.append(data)
        else:
            self.transport.write(data)

    def output_room(self) -> int:
        """How much one upstream read may bring: the room left below the high-water mark."""
        t = self.transport
        room = TRANSPORT_HIGH_WATER - (t.get_write_buffer_size() if t is not None else 0)
        return room if room > MIN_UPSTREAM_READ else MIN_UPSTREAM_READ

    def cork(self) -> None:
        """Hold writes until ``uncork``: one upstream read becomes one client write."""
        self._corked += 1

    def uncork(self) -> None:
        self._corked -= 1
        if not self._corked and self._out:
            self._flush()

    def discard_corked(self) -> None:
        """Drop the output held by ``cork``: a response head and body that must not go out.

        Only the exchange relaying the current upstream read writes while corked, so
        what is held is all its own.
        """
        if self._corked:
            self._out.clear()

    def _flush(self) -> None:
        out = self._out
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _close(self) -> None:
        t = self.transport
        if t is not None and not self.closed:
            if self._out:
                self._flush()
            self.closed = True
            self.deadline = INF
            now = self.loop.time()
            if not self.tls and not self.peer_eof and self._client_may_send() and t.can_write_eof():
                # the client may still be sending: FIN now, close when it has read the
                # answer and closed too (eof_received), or after LINGER_TIME
                t.write_eof()
                if self.paused:
                    self.paused = 0
                    t.resume_reading()
                self._linger_until = now + LINGER_TIME
                self._arm_watch(self._linger_until)
            else:
                t.close()
            if self._send_timeout > 0 and not self._send_by and t.get_write_buffer_size():
                self._arm_send(now)

    def _arm_send(self, now: float) -> None:
        """The client must take some output within send_timeout from ``now``."""
        t = self.transport
        self._send_unsent = _unsent_bytes(t) if t is not None else 0
        self._send_by = now + self._send_timeout
        self._arm_watch(self._send_by)

    def _client_may_send(self) -> bool:
        """Whether bytes of a request may still be on their way: a refused request, a
        head cut short, or a body not all read."""
        if self.paused & self.PAUSED_REJECTED or self.in_head:
            return True
        rx = self.receiving
        return rx is not None and rx.info is not None and rx.info.body != "none"

    def _arm_watch(self, when: float) -> None:
        watch = self._watch
        if watch is None:
            watch = self._watch = _OutputWatch(self)
        if when < watch.deadline:
            self.ctx.deadlines.arm(watch, when)

    def output_deadline(self, now: float) -> None:
        """The output watch's deadline: a lingering close ends, or a client that took no
        output for ``send_timeout`` is dropped."""
        t = self.transport
        if t is None:
            return
        if self._linger_until and now >= self._linger_until:
            self._linger_until = 0.0
            t.close()
        if self._send_by and now >= self._send_by:
            self._send_by = 0.0
            unsent = _unsent_bytes(t)
            if self.writing_paused or (self.closed and unsent):
                if unsent >= self._send_unsent:
                    self._send_timed_out(unsent)
                    return
                self._arm_send(now)  # it took some: another send_timeout for the next
        nxt = min(x for x in (self._linger_until, self._send_by, INF) if x)
        if nxt != INF:
            self._arm_watch(nxt)

    def _send_timed_out(self, unsent: int) -> None:
        detail = (
            f"client took no output for {self._send_timeout:g}s (send_timeout), "
            f"{unsent} bytes unsent"
        )
        ex = self.queue[0] if self.queue else self.tunnel_exchange
        if ex is not None and not ex.error_detail:
            ex.error_detail = detail
        log.info(
            "listener %s: client %s:%d: %s: connection dropped",
            self.listener.name,
            self.fwd.client_ip,
            self.peer_port,
            detail,
        )
        self.closed = True
        self.deadline = INF
        if self.transport is not None:
            self.transport.abort()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.deadline = INF
            self.transport.abort()

    def idle_since(self) -> float:
        """When this connection became idle (loop time), or INF if it is not idle.

        Idle: between keep-alive requests, or established with no byte of a request
        yet, and all output taken by the client. A full listener or a worker out of
        descriptors closes idle connections, the longest idle first (as nginx reuses
        its least recently used keep-alive connections); nothing is lost, since a
        client may close an idle connection too and open another (RFC 9112, section
        9.3.1).
        """
        t = self.transport
        if (
            t is None
            or self.closed
            or self.queue
            or self.in_head
            or self.tunnel_upstream is not None
            or self._waiting not in (_WAIT_IDLE, _WAIT_HEAD)
            or t.get_write_buffer_size()
        ):
            return INF
        limits = self.limits
        timeout = limits.header_timeout if self._waiting == _WAIT_HEAD else limits.idle_timeout
        # the deadline was armed when it became idle (_wait); no timeout: the oldest
        return self.deadline - timeout if timeout > 0 and self.deadline < INF else 0.0

    def reap(self) -> bool:
        """Close this connection at once if it is idle (``idle_since``); True if it was."""
        if self.idle_since() == INF:
            return False
        self.abort()
        return True

    def drain(self) -> None:
        """Graceful shutdown: close now if idle, else after the response in progress."""
        self.draining = True
        if not self.queue and not self.in_head and self.tunnel_upstream is None:
            self._close()

    # ---- timeouts (net.deadlines.Timed) ---------------------------------------------------------

    def _wait(self, what: int) -> None:
        timeout = self.limits.header_timeout if what == _WAIT_HEAD else self.limits.idle_timeout
        if timeout > 0:
            self._waiting = what
            self.ctx.deadlines.arm(self, self.loop.time() + timeout)
        else:
            self.deadline = INF

    def deadline_reached(self, now: float) -> None:
        if self.closed:
            return
        waiting = self._waiting
        if waiting == _WAIT_HEAD:
            self._header_timeout()
        elif waiting == _WAIT_BODY:
            self._body_timed_out(now)
        elif not self.queue and not self.in_head:
            self._close()

    def _header_timeout(self) -> None:
        if self.queue:
            return  # a response is in progress; its own timeouts apply
        if self.in_head or self._url:
            ex = Exchange(self, None, [], local_status=408)
            detail = (
                f"request head not received within header_timeout ({self.limits.header_timeout:g}s)"
            )
            self.write(
                ex.error_page(
                    408,
                    detail,
                    "the request head did not arrive in time",
                    head=self._refused_head_is_head(),
                )
            )
            ex.state = DONE
            if self.ctx.access.enabled:
                self.ctx.access.write(ex.access_record())
        self._close()

    # ---- the request body's deadline (body_timeout, body_min_rate) ------------------------------

    def _wait_body(self) -> None:
        """A request body follows the head just parsed: start its clock."""
        timeout = self._body_timeout
        if timeout <= 0:
            return
        now = self.loop.time()
        self._waiting = _WAIT_BODY
        self._body_start = now
        self._body_last = now
        if self.paused:
            self._body_paused_at = now  # not read now: the clock starts at resume_reading
            self.deadline = INF
        else:
            self._body_paused_at = 0.0
            self.ctx.deadlines.arm(self, now + timeout)

    def _body_deadline(self, now: float, received: int) -> float:
        """The body's next deadline after a read at ``now``, ``received`` bytes in all."""
        timeout = self._body_timeout
        deadline = now + timeout
        rate = self._body_rate
        if rate <= 0.0:
            return deadline
        # the first body_timeout is grace, then every `rate` bytes buy one second more
        slow = self._body_start + timeout + received / rate
        return slow if slow < deadline else deadline

    def _body_resumed(self) -> None:
        """Reading resumed during a body: the paused time is taken off its clock."""
        now = self.loop.time()
        if self._body_paused_at:
            self._body_start += now - self._body_paused_at
            self._body_paused_at = 0.0
        self._body_last = now
        ex = self.receiving
        received = ex.body_received if ex is not None else 0
        self.ctx.deadlines.arm(self, self._body_deadline(now, received))

    def body_continue(self) -> None:
        """A ``100 Continue`` reached the client before any of its body: the client was
        waiting for it, so the body's clock starts now."""
        if self._waiting == _WAIT_BODY and not self.paused and not self.closed:
            now = self.loop.time()
            self._body_start = now
            self._body_last = now
            self.deadline = now + self._body_timeout  # later than before: a float store

    def _body_timed_out(self, now: float) -> None:
        self._waiting = 0
        ex = self.receiving
        if ex is None:
            return
        if ex.finished:
            self._close()  # already answered: the rest of its body is not worth waiting for
            return
        timeout = self._body_timeout
        if now >= self._body_last + timeout:
            detail = f"request body: nothing for {timeout:g}s (body_timeout)"
            public = "the request body did not arrive in time"
        else:
            detail = (
                f"request body: {ex.body_received} bytes in {now - self._body_start:.1f}s, "
                f"slower than body_min_rate ({self.limits.body_min_rate} bytes/s after the "
                f"first {timeout:g}s)"
            )
            public = "the request body arrived too slowly"
        self._reject(408, detail, public)


def _unsent_bytes(t: asyncio.Transport) -> int:
    """What the client has not taken yet: the transport's buffer plus the socket's send
    queue (``SIOCOUTQ``), so a client reading slowly from a large kernel buffer is seen
    to make progress. Asked only when an output deadline comes."""
    n = t.get_write_buffer_size()
    sock = t.get_extra_info("socket")
    if sock is not None:
        try:
            out = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        except (OSError, ValueError):
            return n
        n += int.from_bytes(out, sys.byteorder)
    return n


_NO_FORWARDING = http1.ForwardingContext(
    client_ip="", peer_ip="", peer_trusted=False, proto="http", listener_port=0
)
