"""Connections to app servers: an asyncio protocol with an httptools response parser.

How this works: an ``UpstreamConnection`` carries one exchange at a time (no
upstream pipelining). ``begin()`` hands it to an owner (the exchange) and
makes a fresh response parser, so a HEAD response or an aborted body can never
leave stale parser state behind for the next request. Parser callbacks are
translated into owner calls (head, body, complete, failure); an idle connection
sits in its server's pool (``ServerRuntime.idle``) with a timer that closes it
before the app server's own keep-alive timeout is likely to.

Flow control runs both ways: when this connection's write buffer fills, the
client stops being read; when the client's write buffer fills, the owner pauses
this connection's reading.

Read timeout: rather than re-arming a timer on every chunk, one timer checks
``last_activity`` and re-arms itself for the remainder (cheap on the hot path).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import TYPE_CHECKING, Protocol, cast

import httptools

from tlsgate.errors import UpstreamError, UpstreamProtocolError, UpstreamTimeout

# What can go wrong with an app server: it is unusable, or it broke HTTP.
UpstreamFailure = UpstreamError | UpstreamProtocolError

if TYPE_CHECKING:
    from tlsgate.net.runtime import ServerRuntime

Headers = list[tuple[bytes, bytes]]

_NO_BODY_STATUS = frozenset({204, 304})


class UpstreamOwner(Protocol):
    """What an upstream connection reports to the exchange using it."""

    def upstream_informational(self, status: int, reason: bytes, headers: Headers) -> None: ...
    def upstream_response_head(
        self, status: int, reason: bytes, headers: Headers, keep_alive: bool
    ) -> None: ...
    def upstream_body(self, data: bytes) -> None: ...
    def upstream_complete(self, trailers: Headers, reusable: bool) -> None: ...
    def upstream_upgraded(self, data: bytes) -> None: ...
    def upstream_failed(self, error: UpstreamFailure) -> None: ...
    def upstream_pause_writing(self) -> None: ...
    def cork(self) -> None: ...
    def uncork(self) -> None: ...
    def upstream_resume_writing(self) -> None: ...
    # tunnel mode (after a 101)
    def tunnel_data(self, data: bytes) -> None: ...
    def tunnel_eof(self) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """One connection to one app server."""

    def __init__(self, server: ServerRuntime, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.owner: UpstreamOwner | None = None
        self.parser: httptools.HttpResponseParser | None = None
        self.requests = 0
        self.closed = False
        self.tunnel = False
        self.read_timeout = server.backend.config.read_timeout
        self.last_activity = loop.time()
        self._timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._reset_response()

    def _reset_response(self) -> None:
        self._headers: Headers = []
        self._trailers: Headers = []
        self._reason = b""
        self._head_done = False
        self._informational = False
        self._head_request = False
        self._close_delimited = False
        self._keep_alive = False
        self._done = False
        self.response_started = False

    # ---- lifecycle ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)
        transport = self.transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def usable(self) -> bool:
        return (
            not self.closed
            and self.transport is not None
            and not self.transport.is_closing()
            and not self.tunnel
        )

    def begin(self, owner: UpstreamOwner, *, head_request: bool) -> None:
        """Start carrying a new exchange for ``owner``."""
        self.owner = owner
        self.parser = httptools.HttpResponseParser(self)
        self._reset_response()
        self._head_request = head_request
        self.requests += 1
        self.last_activity = self.loop.time()
        self._arm_timer(self.read_timeout)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.last_activity = self.loop.time()
            self.transport.write(data)

    def release(self) -> None:
        """The owner is done with this connection (it may go back to a pool)."""
        self.owner = None
        self._cancel_timer()

    def start_idle_timer(self, timeout: float) -> None:
        self._idle_timer = self.loop.call_later(timeout, self._idle_expired)

    def cancel_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _idle_expired(self) -> None:
        self._idle_timer = None
        with contextlib.suppress(ValueError):
            self.server.idle.remove(self)
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._cancel_timer()
            self.cancel_idle_timer()
            if self.transport is not None:
                self.transport.close()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self._cancel_timer()
            self.cancel_idle_timer()
            if self.transport is not None:
                self.transport.abort()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    # ---- timers -----------------------------------------------------------------------------

    def _arm_timer(self, delay: float) -> None:
        self._cancel_timer()
        if delay > 0:
            self._timer = self.loop.call_later(delay, self._check_timeout)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check_timeout(self) -> None:
        self._timer = None
        if self.owner is None or self.tunnel:
            return
        remaining = self.last_activity + self.read_timeout - self.loop.time()
        if remaining > 0.001:
            self._arm_timer(remaining)
            return
        owner = self.owner
        self.owner = None
        self.abort()
        owner.upstream_failed(
            UpstreamTimeout(
                f"server {self.server.key} sent nothing for {self.read_timeout:g}s "
                "(backend read_timeout)"
            )
        )

    # ---- asyncio.Protocol -------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.last_activity = self.loop.time()
        if self.tunnel:
            if self.owner is not None:
                self.owner.tunnel_data(data)
            return
        if self.owner is None or self.parser is None:
            # An idle keep-alive connection must stay silent; anything else means the
            # server is confused, and the connection can't be trusted for the next request.
            self.abort()
            return
        corked = self.owner
        corked.cork()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = int(exc.args[0]) if exc.args else len(data)
            owner = cast("UpstreamOwner | None", self.owner)  # callbacks may have released it
            if owner is None:
                return
            self.tunnel = True
            self._cancel_timer()
            owner.upstream_upgraded(data[offset:])
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, UpstreamError | UpstreamProtocolError):
                self._fail(cause)
            else:
                raise
        except httptools.HttpParserError as exc:
            self._fail(
                UpstreamProtocolError(f"server {self.server.key} sent a malformed response: {exc}")
            )
        finally:
            corked.uncork()

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
        self._cancel_timer()
        self.cancel_idle_timer()
        with contextlib.suppress(ValueError):
            self.server.idle.remove(self)
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
        if self.owner is not None:
            self.owner.upstream_pause_writing()

    def resume_writing(self) -> None:
        if self.owner is not None:
            self.owner.upstream_resume_writing()

    def _fail(self, error: UpstreamFailure) -> None:
        owner = self.owner
        self.owner = None
        self.abort()
        if owner is not None and not self._done:
            self._done = True
            owner.upstream_failed(error)

    # ---- httptools callbacks ------------------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._head_done:
            self._trailers.append((name, value))
        else:
            self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        owner = self.owner
        if owner is None or self.parser is None:
            return
        status = self.parser.get_status_code()
        headers, self._headers = self._headers, []
        reason, self._reason = self._reason, b""
        self.response_started = True
        if 100 <= status < 200 and status != 101:
            self._informational = True
            owner.upstream_informational(status, reason, headers)
            return
        self._informational = False
        self._head_done = True
        self._keep_alive = self.parser.should_keep_alive()
        no_body = self._head_request or status in _NO_BODY_STATUS or status == 101
        if not no_body:
            framed = any(n.lower() in (b"content-length", b"transfer-encoding") for n, _ in headers)
            self._close_delimited = not framed
        owner.upstream_response_head(status, reason, headers, self._keep_alive)
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
        self._cancel_timer()
        owner.upstream_complete(self._trailers, self._keep_alive and not self._close_delimited)
