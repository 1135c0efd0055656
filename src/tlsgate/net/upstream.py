"""Connections to app servers: an asyncio protocol with an httptools response parser.

How this works: an ``UpstreamConnection`` carries one exchange at a time (no
upstream pipelining). ``begin()`` hands it to an owner (the exchange); parser
callbacks become owner calls (head, body, complete, failure). Between
exchanges the connection sits in its server's :class:`~tlsgate.net.pool.Pool`.

The response parser is kept from one response to the next while responses end
cleanly (llhttp starts over by itself after a complete keep-alive message); a
response to HEAD (which llhttp cannot know has no body) or one cut short gets a
fresh parser with the next ``begin()``, so no stale parser state survives.

Timeouts are deadlines on the worker's wheel (``net.deadlines``): while an
exchange runs, ``read_timeout`` after the last byte received; while pooled,
``pool_idle_timeout`` after release. Moving the deadline on each read is a
float store, not a timer. A server that says nothing before its response head
while the client is still sending the request body is waiting for the rest of
it, not late: when the deadline comes then, it is put off by another
``read_timeout`` (the client's ``body_timeout`` bounds that wait) -- unless
the server has stopped taking the body (this connection's write buffer is
full): ``pause_writing`` and ``resume_writing`` move the deadline, so a server
that takes none of the body for ``read_timeout`` times out as a silent one does.
The end of a body moves it too (``request_sent``): the wait for the response
starts there. While tlsgate has stopped reading the server (the client takes
the response more slowly than the server sends it), the deadline is put off
too: the client's ``send_timeout`` bounds that, and the count starts over when
reading resumes.

Response heads (and trailer sections) have the limits of the listener the
request came in on, which ``begin()`` passes: ``max_header_size`` bytes for
the status line and fields, ``max_headers`` fields. The size is added up per
field as it is parsed; a head still incomplete after a read is also bounded
by the bytes received so far, so one endless field value can't grow without
limit either. Over a limit, the response is a failure like a malformed one.

A failure tells the owner whether the response head it relayed is still
unsent: the client side corks its output for the length of one upstream read
(``cork``/``uncork``), so a head parsed in the same read as the error that
follows it has not left yet, and the owner can still answer 502 instead.

Flow control runs both ways: when this connection's write buffer fills, the
client stops being read; when the client's write buffer fills, the owner pauses
this connection's reading. And each read takes only what the owner says it has
room for (``upstream_read_size``): the connection is a buffered protocol that
reads into one buffer per thread, of up to ``READ_SIZE``, and hands the owner a
copy of what came (the copy uvloop makes itself for a plain protocol).
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Protocol, cast

import httptools

from tlsgate.errors import UpstreamError, UpstreamProtocolError, UpstreamTimeout
from tlsgate.net.deadlines import INF, Deadlines

if TYPE_CHECKING:
    from tlsgate.net.pool import Pool
    from tlsgate.net.runtime import ServerRuntime

# What can go wrong with an app server: it is unusable, or it broke HTTP.
UpstreamFailure = UpstreamError | UpstreamProtocolError

Headers = list[tuple[bytes, bytes]]

_NO_BODY_STATUS = frozenset({204, 304})
_FRAMING_LENGTHS = frozenset({len(b"content-length"), len(b"transfer-encoding")})


# The most one read from a server takes (uvloop's reads for a plain protocol: 250 KB)
READ_SIZE = 256 * 1024
_buffers = threading.local()


def _read_buffer() -> memoryview:
    """This thread's read buffer: its upstream connections read into it one at a time."""
    buf: memoryview | None = getattr(_buffers, "buffer", None)
    if buf is None:
        buf = _buffers.buffer = memoryview(bytearray(READ_SIZE))
    return buf


class UpstreamOwner(Protocol):
    """What an upstream connection reports to the exchange using it."""

    def upstream_informational(self, status: int, reason: bytes, headers: Headers) -> None: ...
    def upstream_response_head(
        self,
        status: int,
        reason: bytes,
        headers: Headers,
        keep_alive: bool,
        *,
        content_length: bytes | None,
        chunked: bool,
    ) -> None: ...
    def upstream_body(self, data: bytes) -> None: ...
    def upstream_read_size(self) -> int:
        """How much the next read from the server may take (1 to ``READ_SIZE``)."""

    def upstream_complete(self, trailers: Headers, reusable: bool) -> None: ...
    def upstream_request_pending(self) -> bool:
        """The client is still sending the request: the server may be waiting for it."""

    def upstream_upgraded(self, data: bytes) -> None: ...
    def upstream_failed(self, error: UpstreamFailure, *, unsent: bool = False) -> None:
        """``unsent``: the response head was relayed in this very read, still corked."""

    def upstream_pause_writing(self) -> None: ...
    def upstream_resume_writing(self) -> None: ...
    def cork(self) -> None: ...
    def uncork(self) -> None: ...
    # tunnel mode (after a 101)
    def tunnel_data(self, data: bytes) -> None: ...
    def tunnel_eof(self) -> None: ...


class UpstreamConnection(asyncio.BufferedProtocol):
    """One connection to one app server."""

    def __init__(self, server: ServerRuntime, deadlines: Deadlines) -> None:
        self.server = server
        self.deadlines = deadlines
        self.loop = deadlines.loop
        self.transport: asyncio.Transport | None = None
        self.owner: UpstreamOwner | None = None
        self.parser: httptools.HttpResponseParser | None = None
        self.requests = 0
        self.closed = False
        self.tunnel = False
        self.read_timeout = server.config.read_timeout
        self._write_blocked = False  # between pause_writing and resume_writing
        # tlsgate stopped reading (the client takes the response slowly): the server is
        # not late, and read_timeout waits; the client's send_timeout bounds this
        self._reading_paused = False
        # deadline-wheel and pool bookkeeping (net.deadlines.Timed, net.pool.Poolable)
        self.deadline = INF
        self.slot = 0
        self.pool: Pool | None = None
        self.idle_until = 0.0
        # the response being parsed
        self._headers: Headers = []
        self._trailers: Headers = []
        self._reason = b""
        self._head_done = False
        self._informational = False
        self._head_request = False
        self._close_delimited = False
        self._keep_alive = False
        self._done = False
        # the server sent something for this exchange (a head, or bytes that failed to
        # parse): a failure now is no stale keep-alive connection, and not retried
        self.response_started = False
        # response head limits (begin) and what the head being parsed has used of them
        self._max_head_size = 64 * 1024
        self._max_head_fields = 100
        self._head_size = 0
        self._head_pending = 0
        self._buffer = _read_buffer()

    # ---- lifecycle ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)
        # (TCP_NODELAY: uvloop and asyncio set it on every TCP transport themselves)

    def usable(self) -> bool:
        return (
            not self.closed
            and self.transport is not None
            and not self.transport.is_closing()
            and not self.tunnel
        )

    def begin(
        self,
        owner: UpstreamOwner,
        *,
        head_request: bool,
        max_head_size: int,
        max_head_fields: int,
    ) -> None:
        """Start carrying a new exchange for ``owner``.

        ``max_head_size`` / ``max_head_fields``: the limits of the response head (and
        of its trailers): the request's listener's ``max_header_size``/``max_headers``.
        """
        self.owner = owner
        if self.parser is None or not self._done or self._head_request:
            self.parser = httptools.HttpResponseParser(self)
        self._headers = []
        self._trailers = []
        self._reason = b""
        self._head_done = False
        self._informational = False
        self._close_delimited = False
        self._keep_alive = False
        self._done = False
        self.response_started = False
        self._head_request = head_request
        self._max_head_size = max_head_size
        self._max_head_fields = max_head_fields
        self._head_size = 0
        self._head_pending = 0
        self.requests += 1
        if self.read_timeout > 0:
            self.deadlines.arm(self, self.loop.time() + self.read_timeout)

    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def request_sent(self) -> None:
        """The rest of a request body went out: the server's silence counts from now."""
        if self.owner is not None and not self._head_done:
            self._moved()

    def release(self) -> None:
        """The owner is done with this connection (it may go back to a pool)."""
        self.owner = None
        self.deadline = INF

    # ---- net.pool.Poolable ------------------------------------------------------------------

    def pooled(self, pool: Pool, deadline: float) -> None:
        self.pool = pool
        self.idle_until = deadline
        self.deadlines.arm(self, deadline)

    def unpooled(self) -> None:
        self.pool = None
        self.deadline = INF

    # ---- net.deadlines.Timed ----------------------------------------------------------------

    def deadline_reached(self, now: float) -> None:
        if self.pool is not None:  # idle for pool_idle_timeout: nobody came back for it
            pool, self.pool = self.pool, None
            pool.discard(self)
            self.close()
            return
        owner = self.owner
        if owner is None or self.tunnel:
            return
        if self._reading_paused:
            # not read by tlsgate meanwhile: the client's send_timeout applies, not this
            self.deadlines.arm(self, now + self.read_timeout)
            return
        if not self._head_done and owner.upstream_request_pending():
            if not self._write_blocked:
                # it waits for the rest of the request body, which the client is slow to
                # send: the client's body_timeout applies, not this
                self.deadlines.arm(self, now + self.read_timeout)
                return
            what = "took none of the request body"
        else:
            what = "sent nothing"
        self.owner = None
        self.abort()
        owner.upstream_failed(
            UpstreamTimeout(
                f"server {self.server.key} {what} for {self.read_timeout:g}s (backend read_timeout)"
            )
        )

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.deadline = INF
            if self.transport is not None:
                self.transport.close()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self.deadline = INF
            if self.transport is not None:
                self.transport.abort()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self._reading_paused = False
            self.transport.resume_reading()
            if self.deadline != INF:
                # read_timeout counts again from now: later, a float store
                self.deadline = self.loop.time() + self.read_timeout

    # ---- asyncio.BufferedProtocol -------------------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        owner = self.owner
        size = READ_SIZE if owner is None else owner.upstream_read_size()
        return self._buffer if size >= READ_SIZE else self._buffer[:size]

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._buffer[:nbytes].tobytes())

    def data_received(self, data: bytes) -> None:
        owner = self.owner
        if owner is None or self.parser is None:
            # An idle keep-alive connection must stay silent; anything else means the
            # server is confused, and the connection can't be trusted for the next request.
            if self.tunnel:
                return
            self.abort()
            return
        if self.tunnel:
            owner.tunnel_data(data)
            return
        if self.deadline != INF:
            self.deadline = self.loop.time() + self.read_timeout  # the wheel moves it lazily
        head_was_out = self._head_done  # relayed in an earlier read: it has left
        owner.cork()
        try:
            self.parser.feed_data(data)
            if not self._head_done and self.owner is not None:
                # rare: a head split over reads. Everything received since begin() is head
                # (and 1xx heads), so this bounds what the parser buffers
                self._head_pending += len(data)
                if self._head_pending > self._max_head_size:
                    self.response_started = True
                    self._fail(self._head_too_large())
        except httptools.HttpParserUpgrade as exc:
            offset = int(exc.args[0]) if exc.args else len(data)
            current = self.owner  # the callbacks may have released it
            if current is not None:
                self.tunnel = True
                self.deadline = INF
                current.upstream_upgraded(data[offset:])
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, UpstreamError | UpstreamProtocolError):
                self.response_started = True
                self._fail(cause, unsent=not head_was_out)
            else:
                raise
        except httptools.HttpParserError as exc:
            self.response_started = True
            self._fail(
                UpstreamProtocolError(f"server {self.server.key} sent a malformed response: {exc}"),
                unsent=not head_was_out,
            )
        finally:
            owner.uncork()

    def eof_received(self) -> bool | None:
        owner = self.owner
        if self.tunnel:
            if owner is not None:
                owner.tunnel_eof()
            return True
        if owner is not None and not self._done:
            if self._head_done and self._close_delimited:
                self._done = True
                self.owner = None
                owner.upstream_complete(self._trailers, False)
            else:
                what = "in the middle of the response" if self._head_done else "before responding"
                self._fail(
                    UpstreamProtocolError(f"server {self.server.key} closed the connection {what}")
                )
        self.closed = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.parser = None  # its callbacks are bound methods of this object: break the cycle
        self.deadlines.discard(self)
        if self.pool is not None:
            pool, self.pool = self.pool, None
            pool.discard(self)
        owner = self.owner
        if owner is None:
            return
        self.owner = None
        if self.tunnel:
            owner.tunnel_eof()
            return
        if not self._done:
            reason = f": {exc}" if exc else ""
            owner.upstream_failed(
                UpstreamProtocolError(f"connection to server {self.server.key} was lost{reason}")
            )

    def pause_writing(self) -> None:
        self._write_blocked = True
        owner = self.owner
        if owner is not None:
            self._moved()
            owner.upstream_pause_writing()

    def resume_writing(self) -> None:
        self._write_blocked = False
        owner = self.owner
        if owner is not None:
            self._moved()
            owner.upstream_resume_writing()

    def _moved(self) -> None:
        """The server took some of the request (or stopped): its silence counts from now."""
        if self.deadline != INF:
            self.deadline = self.loop.time() + self.read_timeout  # later: a float store

    def _fail(self, error: UpstreamFailure, *, unsent: bool = False) -> None:
        owner = self.owner
        self.owner = None
        self.abort()
        if owner is not None and not self._done:
            self._done = True
            owner.upstream_failed(error, unsent=unsent)

    def _head_too_large(self) -> UpstreamProtocolError:
        return UpstreamProtocolError(
            f"server {self.server.key} sent a response head larger than "
            f"{self._max_head_size} bytes (listener max_header_size)"
        )

    # ---- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.owner is None:
            # a response nobody asked for, after the one that ended in this same read:
            # kept, the pooled parser would hand its bytes to the next exchange's client
            raise UpstreamProtocolError(
                f"server {self.server.key} sent a response no request was waiting for"
            )

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        # llhttp leaves a value's trailing OWS on it (RFC 9112 §5: not part of the value)
        value = value.rstrip(b" \t")
        if self._head_done:
            self._trailer(name, value)
            return
        self._headers.append((name, value))
        self._head_size += len(name) + len(value) + 4  # name ": " value CRLF
        if self._head_size > self._max_head_size:
            raise self._head_too_large()

    def _trailer(self, name: bytes, value: bytes) -> None:
        trailers = self._trailers
        trailers.append((name, value))
        self._head_size += len(name) + len(value) + 4
        if len(trailers) > self._max_head_fields:
            raise UpstreamProtocolError(
                f"server {self.server.key} sent more than {self._max_head_fields} trailer "
                "fields (listener max_headers)"
            )
        if self._head_size > self._max_head_size:
            raise UpstreamProtocolError(
                f"server {self.server.key} sent a trailer section larger than "
                f"{self._max_head_size} bytes (listener max_header_size)"
            )

    def on_headers_complete(self) -> None:
        owner = self.owner
        parser = self.parser
        if owner is None or parser is None:
            return
        status = parser.get_status_code()
        headers, self._headers = self._headers, []
        reason, self._reason = self._reason, b""
        self.response_started = True
        if status < 100:  # llhttp takes any three digits, 000 to 099 included
            raise UpstreamProtocolError(f"server {self.server.key} sent status code {status:03d}")
        if len(headers) > self._max_head_fields:
            raise UpstreamProtocolError(
                f"server {self.server.key} sent more than {self._max_head_fields} header "
                "fields (listener max_headers)"
            )
        # "HTTP/1.1 200 " reason CRLF
        if self._head_size + len(reason) + 15 > self._max_head_size:
            raise self._head_too_large()
        self._head_size = 0  # the next head (after a 1xx) or the trailers start afresh
        if status < 200 and status != 101:
            self._informational = True
            owner.upstream_informational(status, reason, headers)
            return
        self._informational = False
        self._head_done = True
        self._keep_alive = parser.should_keep_alive()
        content_length: bytes | None = None
        chunked = False
        for n, v in headers:
            if len(n) in _FRAMING_LENGTHS:  # a cheap filter before lower()
                ln = n.lower()
                if ln == b"content-length":
                    content_length = v
                elif ln == b"transfer-encoding":
                    chunked = True
        if not (self._head_request or status in _NO_BODY_STATUS or status == 101):
            self._close_delimited = content_length is None and not chunked
        owner.upstream_response_head(
            status,
            reason,
            headers,
            self._keep_alive,
            content_length=content_length,
            chunked=chunked,
        )
        if self._head_request and self.owner is owner:
            # llhttp can't be told that this was a response to HEAD, so it would wait for a
            # body; the response is complete now, and begin() gives the next one a new parser.
            self._done = True
            self.owner = None
            owner.upstream_complete([], self._keep_alive)

    def on_body(self, body: bytes) -> None:
        if self.owner is not None and not self._informational:
            self.owner.upstream_body(body)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        owner = self.owner
        if owner is None or self._done or not self._head_done:
            return
        if self.parser is not None and self.parser.get_status_code() == 101:
            return  # the HttpParserUpgrade that follows switches to tunnel mode
        self._done = True
        self.owner = None
        self.deadline = INF
        owner.upstream_complete(self._trailers, self._keep_alive and not self._close_delimited)
