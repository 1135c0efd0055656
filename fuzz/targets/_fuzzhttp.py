"""The HTTP data plane driven by fuzzer bytes without sockets, and what it must uphold.

How this works: :class:`Driver` wires one ``ClientConnection`` of a
``tlsgate.net.testing.Harness`` to an in-memory client transport and keeps
every backend server's keep-alive pool stocked with upstream connections on
in-memory transports, then plays a script decoded from the input:

    input  = scenario-byte  segment ( SEP segment )*
    segment = "C" bytes   the client sends bytes
            | "U" bytes   the upstream connection in use sends bytes
            | "E"         the client half-closes (EOF)
            | "F"         the upstream connection in use closes (EOF)
            | "T" n       n seconds pass (one byte)
            | other       the whole segment is bytes from the client (request-side
                          target) or from the upstream (response-side target)

The scenario byte picks one of :data:`CONFIGS` and, for the response-side
target, one of :data:`REQUESTS` that the client sends first. The driver does
what an event loop would: it delivers bytes only while the receiving
transport reads (``pause_reading`` holds them back), calls
``connection_lost`` once a transport was closed, runs ``call_soon``
callbacks, and -- for the request-side target -- answers every request that
reaches an upstream transport complete with one of :data:`RESPONSES`.

When the script ends, :meth:`Driver.finish` lets every timeout pass and then
checks (raising :class:`~_fuzzcommon.InvariantViolation`):

* **the client side**: what the client received is a sequence of well-formed
  HTTP/1.1 responses (RFC 9112 grammar: status line, token field names,
  field values without CR/LF/NUL or outer whitespace, one valid framing, a
  correct chunked encoding), one final response per request at most (plus
  one error answer), nothing after a ``Connection: close`` response, no byte
  written after the transport was closed, a response cut short only on a
  closed connection, and each response relayed whole with the body the app
  server sent, byte for byte (chunked or not on either side);
* **the upstream side**: what the upstream transports received parses, with
  llhttp, as exactly the client's requests in order (a prefix of them): the
  same method, the target in origin-form, the same end-to-end fields in the
  same order, one Host, the same body (or a prefix of it, when the exchange
  was cut short) and trailers -- so no request is smuggled, split or merged
  on the way;
* **a second parser**: llhttp is tlsgate's own parser, so the checks above agree
  with tlsgate's framing by construction. Each upstream connection's bytes are
  framed again by h11 as the app server (``h11.SERVER``), which goes by
  Content-Length and Transfer-Encoding whatever else the head says: it must
  accept them (up to a tunnel after a 101) and find the same requests (method,
  target, body, whether complete); every request the app answered must be
  complete for h11 too, and each time the connection sat idle in the pool h11
  must have been between two requests; llhttp must not have rejected them.
  What the client received is framed again by h11 as the client
  (``h11.CLIENT``, told each request's method and whether it proposed an
  upgrade), which must accept it and find the same responses (status, body)
  as the strict parser above.
  This is what catches a framing tlsgate announces but does not keep, e.g. an
  upgrade request's Content-Length with no body behind it (llhttp ends such a
  request at its head; an app server reads the next request as its body);
* **liveness**: once every timeout has passed, the client connection is closed
  (unless it became a tunnel, or waits on a connection attempt the fake loop
  cannot make).

A known bug that has a failing regression test but no fix yet is tolerated
(``_fuzzcommon.KNOWN_ISSUES``) unless ``TLSGATE_FUZZ_STRICT=1``, so a long run
is not spent rediscovering it.
"""

from __future__ import annotations

import functools
import logging
import re
from collections import deque
from dataclasses import dataclass, field

import h11
import httptools

from fuzz.targets._fuzzcommon import InvariantViolation, Reader, check, known_issue
from tlsgate.net import testing
from tlsgate.net.deadlines import Deadlines
from tlsgate.net.http_proxy import ClientConnection
from tlsgate.net.runtime import ServerRuntime
from tlsgate.net.testing import FakeTransport, Harness
from tlsgate.net.upstream import UpstreamConnection
from tlsgate.proto import http1

__all__ = ["CONFIGS", "REQUESTS", "RESPONSES", "SEP", "Driver", "run"]

Headers = list[tuple[bytes, bytes]]

SEP = b"\xff\xfe"

_TIMEOUTS = """
header_timeout = "5s"
idle_timeout = "10s"
body_timeout = "10s"
"""
_BACKEND = """
[[backends]]
name = "app"
servers = ["127.0.0.1:9000"]
read_timeout = "10s"
pool_idle_timeout = "30s"
"""
CONFIGS: tuple[str, ...] = (
    # 0: an http listener with the default limits
    f"""
[[listeners]]
name = "web"
bind = ["127.0.0.1:8080"]
protocol = "http"
backend = "app"
{_TIMEOUTS}
{_BACKEND}
""",
    # 1: small limits, so that every limit is within the fuzzer's reach
    f"""
[[listeners]]
name = "web"
bind = ["127.0.0.1:8080"]
protocol = "http"
backend = "app"
max_header_size = 300
max_headers = 6
max_body_size = 32
body_min_rate = "4B"
{_TIMEOUTS}
{_BACKEND}
""",
    # 2: a trusted peer with a client-IP header, and a second backend behind a route
    f"""
[[listeners]]
name = "web"
bind = ["127.0.0.1:8080"]
protocol = "http"
backend = "app"
trusted_proxies = ["127.0.0.0/8"]
client_ip_header = "X-Client-IP"
{_TIMEOUTS}

[[routes]]
listener = "web"
backend = "api"
hosts = ["api.example.com"]
path_prefix = "/api"
{_BACKEND}
[[backends]]
name = "api"
servers = ["127.0.0.1:9001"]
read_timeout = "10s"
pool_idle_timeout = "30s"
""",
    # 3: every request answered with a redirect to https
    f"""
[[listeners]]
name = "web"
bind = ["127.0.0.1:8080"]
protocol = "http"
backend = "app"
redirect_https = true
{_TIMEOUTS}
{_BACKEND}
""",
)

# What the client sends first in the response-side target.
REQUESTS: tuple[bytes, ...] = (
    b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: example.com\r\n\r\n",
    b"GET / HTTP/1.0\r\nHost: example.com\r\nConnection: keep-alive\r\n\r\n",
    b"POST /f HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /f HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n0\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: example.com\r\n\r\nGET /b HTTP/1.1\r\nHost: example.com\r\n\r\n",
    b"PUT /u HTTP/1.1\r\nHost: example.com\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
)

# What an app server answers in the request-side target (head only for HEAD).
RESPONSES: tuple[tuple[bytes, bytes], ...] = (
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", b"ok"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"2\r\nok\r\n0\r\n\r\n"),
    (b"HTTP/1.1 204 No Content\r\n\r\n", b""),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", b""),
    (b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\nConnection: close\r\n\r\n", b"nah"),
    (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n", b"to eof"),
)


_MAX_UPSTREAMS = 64

# RFC 9112 §4 and RFC 9110 §5: what tlsgate may write to a client.
_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-9][0-9][0-9]) ([\t \x21-\x7e\x80-\xff]*)\r\n")
# field-line = field-name ":" OWS field-value OWS; tlsgate writes one SP before the value
# and none after it (it strips what llhttp leaves: net.http_proxy, net.upstream on_header)
_FIELD_LINE = re.compile(
    rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+): "
    rb"((?:[\x21-\x7e\x80-\xff](?:[\t \x21-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?)\r\n"
)
_CHUNK_SIZE = re.compile(rb"([0-9a-f]{1,16})\r\n")
_ABSOLUTE = re.compile(rb"[A-Za-z][A-Za-z0-9+.\-]*://[^/?]*(.*)", re.DOTALL)
# fields tlsgate adds, removes or rewrites on the way upstream
_REWRITTEN = frozenset(
    {
        *http1.HOP_BY_HOP,
        b"host",
        b"content-length",
        b"forwarded",
        b"x-real-ip",
        b"x-client-ip",
    }
)


def memoize_config() -> None:
    """Parse each of :data:`CONFIGS` once per process instead of once per input.

    ``Harness`` parses its TOML each time, which costs more than a whole
    exchange; the ``Config`` is frozen, so sharing one is safe. Done only by
    the fuzz targets' ``main``: the test process keeps the module as it is.
    """
    testing.parse_config = functools.lru_cache(maxsize=None)(testing.parse_config)  # type: ignore[attr-defined]
    logging.disable(logging.CRITICAL)  # error pages log; millions of lines help nobody


class _Transport(FakeTransport):
    """A FakeTransport that keeps what is written after ``close``/``abort`` apart."""

    def __init__(self, peer: tuple[str, int], local: tuple[str, int] = ("127.0.0.1", 8080)):
        super().__init__(peer=peer, local=local)
        self.late = b""
        self.total = 0  # bytes written before the close

    def write(self, data: bytes) -> None:
        if self.closed:
            self.late += bytes(data)
            return
        self.total += len(data)
        super().write(data)


@dataclass
class _Message:
    """One HTTP request as llhttp sees it."""

    method: bytes = b""
    url: bytes = b""
    version: str = ""
    headers: Headers = field(default_factory=list)
    trailers: Headers = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    head_done: bool = False
    complete: bool = False
    answered: bool = False


class _RequestStream:
    """An incremental llhttp request parser that records every message it sees."""

    def __init__(self, log: list[_Message] | None = None) -> None:
        self.messages: list[_Message] = []
        self._log = log
        self._parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self.error: str | None = None
        self.upgraded = False

    def feed(self, data: bytes) -> None:
        if self._parser is None or not data:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.upgraded = True
            self._parser = None
        except httptools.HttpParserError as exc:
            self.error = str(exc) or type(exc).__name__
            self._parser = None

    # httptools callbacks
    def on_message_begin(self) -> None:
        msg = _Message()
        self.messages.append(msg)
        if self._log is not None:
            self._log.append(msg)

    def on_url(self, url: bytes) -> None:
        msg = self.messages[-1]
        if not msg.url and self._parser is not None:
            msg.method = self._parser.get_method()
        msg.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        msg = self.messages[-1]
        value = value.rstrip(b" \t")  # RFC 9112 §5: trailing OWS is no part of the value
        (msg.trailers if msg.head_done else msg.headers).append((name, value))

    def on_headers_complete(self) -> None:
        msg = self.messages[-1]
        msg.head_done = True
        assert self._parser is not None
        msg.method = self._parser.get_method()
        msg.version = self._parser.get_http_version()

    def on_body(self, body: bytes) -> None:
        self.messages[-1].body += body

    def on_message_complete(self) -> None:
        self.messages[-1].complete = True


@dataclass
class _Reply:
    """One response as llhttp sees it in what an app server sent."""

    status: int = 0
    body: bytearray = field(default_factory=bytearray)
    complete: bool = False


class _ResponseStream:
    """An incremental llhttp response parser over what one upstream transport was sent."""

    def __init__(self, log: list[_Reply]) -> None:
        self._log = log
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self._current: _Reply | None = None

    def feed(self, data: bytes) -> None:
        if self._parser is None:
            return
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self._parser = None

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._current = _Reply()
        self._log.append(self._current)

    def on_headers_complete(self) -> None:
        assert self._current is not None
        assert self._parser is not None
        self._current.status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        assert self._current is not None
        self._current.body += body

    def on_message_complete(self) -> None:
        assert self._current is not None
        self._current.complete = True


@dataclass
class _Upstream:
    server: ServerRuntime
    protocol: UpstreamConnection
    transport: _Transport
    stream: _RequestStream
    pending: deque[bytes | None] = field(default_factory=deque)  # None: EOF
    seen: int = 0  # entries of transport.written already parsed
    lost: bool = False
    replies: _ResponseStream | None = None  # what it was sent, while an exchange used it
    sent: list[_Reply] = field(default_factory=list)  # every response it was sent
    counter: _ResponseStream | None = None
    # how many bytes it had been sent each time it was seen idle in the pool (reusable)
    pooled_at: list[int] = field(default_factory=list)


def _note_pooled(up: _Upstream) -> None:
    """Record where in its bytes an upstream connection that carried requests is idle
    in the pool (for the check that this is between two requests)."""
    written = up.transport.total
    if (
        up.protocol.pool is not None
        and written
        and not up.transport.closed
        and (not up.pooled_at or up.pooled_at[-1] != written)
    ):
        up.pooled_at.append(written)


class Driver:
    """One client connection through a fresh Harness; see the module docstring."""

    def __init__(self, config: str, *, answer: bool, salt: int = 0) -> None:
        self.h = Harness(config)
        # a coarser wheel than the worker's 50 ms: timeouts fire up to 0.5 s late, which
        # no invariant minds, and letting a minute pass costs 120 ticks instead of 1200
        self.h.ctx.deadlines.close()
        self.h.ctx.deadlines = Deadlines(self.h.ctx.loop, resolution=0.5)
        self.answer = answer
        self.salt = salt
        self.upstream_log: list[_Message] = []
        self.upstreams: list[_Upstream] = []
        self.conn = ClientConnection(self.h.ctx, self.h.listener, False)
        self.client = _Transport(peer=("127.0.0.2", 40000))
        self.conn.connection_made(self.client)  # type: ignore[arg-type]
        self.client_sent = _RequestStream()  # the reference view of the client's bytes
        self.pending: deque[bytes | None] = deque()  # None: EOF
        self.client_eof = False
        self.client_lost = False
        self._answers = 0
        self.replies: list[_Reply] = []  # every response the app servers sent, in order
        self.unrelated = False  # bytes reached an idle connection: replies are not comparable
        self.stray = False  # an app server sent a response nobody asked for
        self._stock()

    # ---- the script -------------------------------------------------------------------------

    def client_data(self, data: bytes) -> None:
        if data:
            self.pending.append(data)
        self.pump()

    def client_close(self) -> None:
        self.pending.append(None)
        self.pump()

    def upstream_data(self, data: bytes) -> None:
        up = self._current()
        if up is not None and data:
            up.pending.append(data)
        self.pump()

    def upstream_close(self) -> None:
        up = self._current()
        if up is not None:
            up.pending.append(None)
        self.pump()

    def advance(self, seconds: float) -> None:
        self.h.loop.advance(seconds)
        self.pump()

    def play(self, r: Reader) -> None:
        for segment in r.rest().split(SEP):
            op, body = segment[:1], segment[1:]
            if op == b"U":
                self.upstream_data(body)
            elif op == b"E":
                self.client_close()
            elif op == b"F":
                self.upstream_close()
            elif op == b"T":
                self.advance(float(body[0] if body else 1))
            elif op == b"C":
                self.client_data(body)
            elif self.answer:
                self.client_data(segment)
            else:
                self.upstream_data(segment)

    # ---- the event loop's part ------------------------------------------------------------------

    def _stock(self) -> None:
        """Keep one idle connection in every server's pool (connecting is not possible)."""
        if len(self.upstreams) >= _MAX_UPSTREAMS:
            return
        for backend in self.h.runtime.backends.values():
            for server in backend.servers:
                if len(server.pool) == 0:
                    self._add_upstream(server)

    def _add_upstream(self, server: ServerRuntime) -> None:
        protocol = UpstreamConnection(server, self.h.ctx.deadlines)
        transport = _Transport(peer=(server.state.host, server.state.port))
        protocol.connection_made(transport)  # type: ignore[arg-type]
        server.pool.release(protocol, self.h.loop.time())
        self.upstreams.append(
            _Upstream(server, protocol, transport, _RequestStream(self.upstream_log))
        )

    def _current(self) -> _Upstream | None:
        """The upstream connection an exchange uses, else the last one that got a request."""
        for up in self.upstreams:
            if up.protocol.owner is not None and not up.lost:
                return up
        for up in reversed(self.upstreams):
            if up.stream.messages and not up.lost:
                return up
        return None

    def pump(self) -> None:
        """Run until nothing moves: deliveries, callbacks, answers, connection_lost."""
        for _ in range(10_000):
            moved = False
            self._stock()
            client = self.client
            while self.pending and client.reading and not client.closed and not self.client_eof:
                data = self.pending.popleft()
                moved = True
                if data is None:
                    self.client_eof = True
                    if not self.conn.eof_received():
                        client.close()
                else:
                    self.client_sent.feed(data)
                    self.conn.data_received(data)
                self.h.loop.run_ready()
            self.h.loop.run_ready()
            for up in self.upstreams:
                if up.seen < len(up.transport.written):
                    new = b"".join(up.transport.written[up.seen :])
                    up.seen = len(up.transport.written)
                    up.stream.feed(new)
                    moved = True
                if self.answer and not up.lost and not up.transport.closed:
                    for msg in up.stream.messages:
                        if not msg.answered and (msg.complete or up.stream.upgraded):
                            msg.answered = True
                            up.pending.append(self._response(msg))
                while up.pending and up.transport.reading and not up.lost:
                    data = up.pending.popleft()
                    moved = True
                    if data is None:
                        if not up.protocol.eof_received():
                            up.transport.close()
                        break
                    self._upstream_received(up, data)
                    self.h.loop.run_ready()
                _note_pooled(up)
                if up.transport.closed and not up.lost:
                    up.lost = True
                    moved = True
                    up.protocol.connection_lost(None)
            if client.closed and not self.client_lost:
                self.client_lost = True
                moved = True
                self.conn.connection_lost(None)
            self.h.loop.run_ready()
            if not moved:
                return
        check(False, "the data plane keeps itself busy forever")

    def _upstream_received(self, up: _Upstream, data: bytes) -> None:
        if up.protocol.owner is None:
            up.replies = None  # bytes on an idle connection: no response to compare
            self.unrelated = True
        elif up.replies is None and not self.unrelated:
            up.replies = _ResponseStream(self.replies)
        if up.replies is not None:
            up.replies.feed(data)
        if up.counter is None:
            up.counter = _ResponseStream(up.sent)
        up.counter.feed(data)
        if sum(1 for r in up.sent if not 100 <= r.status < 200) > len(up.stream.messages):
            self.stray = True  # more responses than requests: see "stray-response"
        up.protocol.data_received(data)

    def _response(self, msg: _Message) -> bytes:
        head, body = RESPONSES[(self._answers + self.salt) % len(RESPONSES)]
        self._answers += 1
        return head if msg.method == b"HEAD" else head + body

    # ---- the end ---------------------------------------------------------------------------------

    def finish(self) -> None:
        """Let every timeout pass, then check the invariants; see the module docstring."""
        for _ in range(8):
            self.advance(7.0)
        tunnel = self.conn.upgraded or self.conn.tunnel_upstream is not None
        waiting = bool(self.h.ctx.spawned)  # a connect the fake loop cannot complete
        try:
            check(self.client.late == b"", f"written after close: {self.client.late[:200]!r}")
            for up in self.upstreams:
                check(
                    up.transport.late == b"",
                    f"upstream got bytes after close: {up.transport.late[:200]!r}",
                )
            if not tunnel and not waiting:
                check(self.client.closed, "the client connection outlived every timeout")
            try:
                self._check_client_side_h11(self._check_client_side(tunnel))
            except InvariantViolation as exc:
                if not self.stray:
                    raise
                known_issue("stray-response", str(exc))
            try:
                self._check_upstream_side()
                self._check_upstream_side_h11()
            except InvariantViolation as exc:
                if not self.client_sent.upgraded:
                    raise
                known_issue("upgrade-smuggling", str(exc))
        finally:
            self.h.close()

    def _methods(self) -> list[bytes]:
        return [m.method for m in self.client_sent.messages]

    def _check_client_side(self, tunnel: bool) -> list[tuple[int, bytes | None]]:
        """Parse what the client got (strictly, as tlsgate writes it) and check it; returns
        each final response's status and body (None: cut short), a 101 last if there is one."""
        data = b"".join(self.client.written)
        methods = self._methods()
        pos = 0
        finals = 0
        bodies: list[tuple[int, bytes | None]] = []  # each final response: status, body
        while pos < len(data):
            status, fields, pos = _head(data, pos)
            if 100 <= status < 200 and status != 101:
                check(not _framing(fields), f"framing fields in a {status} response")
                continue
            method = methods[finals] if finals < len(methods) else b""
            finals += 1
            check(
                finals <= len(methods) + 1,
                f"{finals} responses for {len(methods)} requests: {data[:400]!r}",
            )
            if status == 101:
                check(tunnel, "101 but no tunnel")
                bodies.append((101, b""))
                break  # the rest is the tunnel's
            cls = [v for n, v in fields if n.lower() == b"content-length"]
            tes = [v for n, v in fields if n.lower() == b"transfer-encoding"]
            check(len(cls) <= 1 and len(tes) <= 1, f"framing fields {cls} {tes}")
            check(not (cls and tes), "both Content-Length and Transfer-Encoding")
            close = any(
                b"close" in [t.strip().lower() for t in v.split(b",")]
                for n, v in fields
                if n.lower() == b"connection"
            )
            if method == b"HEAD" or status in (204, 304):
                if (
                    method == b"HEAD"
                    and status == 408
                    and pos < len(data)
                    and _is_error_page(fields)
                ):
                    known_issue("head-timeout-body", "a body follows the head of 408 to HEAD")
                    pos = len(data)
                body_end: int | None = pos
            elif tes:
                check(tes[0] == b"chunked", f"Transfer-Encoding: {tes[0]!r}")
                body_end = _chunked_end(data, pos)
            elif cls:
                check(cls[0].isdigit(), f"Content-Length: {cls[0]!r}")
                end = pos + int(cls[0])
                body_end = end if end <= len(data) else None
            else:
                check(close, f"a close-delimited {status} response without Connection: close")
                body_end = len(data)
            if body_end is None:
                check(self.client.closed, "a response cut short on an open connection")
                bodies.append((status, None))
                break
            body = data[pos:body_end]
            bodies.append((status, _dechunk(body) if tes and body else body))
            pos = body_end
            if close:
                check(
                    pos == len(data),
                    f"bytes after a Connection: close response: {data[pos : pos + 200]!r}",
                )
                check(self.client.closed, "Connection: close, but the connection stays open")
        self._check_bodies([b for b in bodies if b[0] != 101], methods)
        return bodies

    def _check_client_side_h11(self, bodies: list[tuple[int, bytes | None]]) -> None:
        """h11, as the client, frames what the client got as the same responses.

        The strict parser above reads tlsgate's output the way tlsgate writes it; h11 is a
        client that knows nothing of that: one more parser a response must satisfy, with
        its own reading of framing (HEAD, 1xx, 204/304, chunked, close-delimited).
        """
        data = b"".join(self.client.written)
        framed, error = _h11_responses(data, tuple(map(_h11_ask, self.client_sent.messages)))
        check(not error, f"to the client: {error}: {data[:300]!r}")
        check(
            [f.status for f in framed] == [status for status, _ in bodies],
            f"h11 frames responses {[f.status for f in framed]} to the client, "
            f"the checker {[status for status, _ in bodies]}: {data[:300]!r}",
        )
        for i, (f, (_, body)) in enumerate(zip(framed, bodies, strict=True)):
            if body is None:
                check(not f.complete, f"response {i}: cut short, but h11 reads it to its end")
            else:
                check(
                    bytes(f.body) == body,
                    f"response {i}: h11 reads the body {bytes(f.body)[:100]!r}, "
                    f"the checker {body[:100]!r}",
                )

    def _check_bodies(self, bodies: list[tuple[int, bytes | None]], methods: list[bytes]) -> None:
        """Each response relayed whole carries the body the app server sent, byte for byte.

        Responses pair up in order while their statuses agree; the first one that does
        not (an error page tlsgate answered instead) ends the comparison. Not with HEAD
        (llhttp cannot know that such a response has no body), nor once bytes reached an
        idle connection.
        """
        if b"HEAD" in methods or self.unrelated:
            return
        replies = [r for r in self.replies if r.status >= 200]
        for i, ((status, body), reply) in enumerate(zip(bodies, replies, strict=False)):
            if status != reply.status:
                return
            if body is not None and reply.complete:
                check(
                    body == bytes(reply.body),
                    f"response {i}: body {bytes(reply.body)[:100]!r} reached the client as "
                    f"{body[:100]!r}",
                )

    def _check_upstream_side(self) -> None:
        sent = [m for m in self.client_sent.messages if m.head_done]
        got = self.upstream_log
        check(
            len(got) <= len(sent),
            f"{len(got)} requests reached upstream, the client sent {len(sent)}",
        )
        for i, (u, c) in enumerate(zip(got, sent, strict=False)):
            where = f"upstream request {i}"
            check(u.head_done, f"{where}: an incomplete head was sent")
            check(u.method == c.method, f"{where}: method {c.method!r} became {u.method!r}")
            check(u.url == _origin_form(c.url), f"{where}: target {c.url!r} became {u.url!r}")
            check(u.version == "1.1", f"{where}: version {u.version}")
            hosts = [v for n, v in u.headers if n.lower() == b"host"]
            check(len(hosts) == 1, f"{where}: {len(hosts)} Host fields")
            check(
                _end_to_end(u.headers) == _end_to_end(c.headers),
                f"{where}: fields {_end_to_end(c.headers)!r} became {_end_to_end(u.headers)!r}",
            )
            if u.complete:
                check(c.complete, f"{where}: complete upstream, incomplete from the client")
                check(
                    u.body == c.body,
                    f"{where}: body {bytes(c.body)[:100]!r} became {bytes(u.body)[:100]!r}",
                )
                check(
                    _end_to_end(u.trailers) == _end_to_end(c.trailers),
                    f"{where}: trailers {c.trailers!r} became {u.trailers!r}",
                )
            else:
                check(
                    c.body.startswith(u.body), f"{where}: a body that is no prefix of the client's"
                )

    def _check_upstream_side_h11(self) -> None:
        """h11, as the app server, frames each upstream connection's bytes as llhttp did.

        llhttp is tlsgate's own parser, so the checks above agree with tlsgate's framing
        by construction; h11 frames by Content-Length and Transfer-Encoding alone, as
        nginx or an app server does. A framing tlsgate announces but does not keep (a body
        declared but not sent, bytes after a request that closes) shows up here as other
        requests, other bodies or an error -- on a pooled connection, the next client's
        request read as this one's body.
        """
        for n, up in enumerate(self.upstreams):
            if not up.transport.written:
                continue
            where = f"upstream connection {n}"
            data = b"".join(up.transport.written)
            check(up.stream.error is None, f"{where}: llhttp: {up.stream.error}: {data[:300]!r}")
            framed, error = _h11_requests(data, may_tunnel=any(r.status == 101 for r in up.sent))
            check(not error, f"{where}: {error}: {data[:300]!r}")
            parsed = [m for m in up.stream.messages if m.head_done]
            check(
                [(f.method, f.target) for f in framed] == [(m.method, m.url) for m in parsed],
                f"{where}: h11 frames requests {[(f.method, f.target) for f in framed]}, "
                f"llhttp {[(m.method, m.url) for m in parsed]}: {data[:300]!r}",
            )
            for i, (f, m) in enumerate(zip(framed, parsed, strict=True)):
                check(
                    f.body == m.body,
                    f"{where}, request {i}: h11 reads the body {bytes(f.body)[:100]!r}, "
                    f"llhttp {bytes(m.body)[:100]!r}",
                )
                check(
                    f.complete == m.complete,
                    f"{where}, request {i}: complete for "
                    f"{'h11' if f.complete else 'llhttp'} only: {data[:300]!r}",
                )
                check(
                    f.complete or not m.answered,
                    f"{where}, request {i}: the app answered it while h11 still reads it",
                )
            # back in the pool only between requests: else the next one, maybe another
            # client's, is read as the rest of this one
            ends = {0, *(f.end for f in framed if f.complete)}
            for at in up.pooled_at:
                check(
                    at in ends,
                    f"{where}: pooled after {at} bytes, inside a request for h11 (requests end "
                    f"at {sorted(ends)}): {data[:300]!r}",
                )


def _head(data: bytes, pos: int) -> tuple[int, Headers, int]:
    m = _STATUS_LINE.match(data, pos)
    check(m is not None, f"malformed status line at {pos}: {data[pos : pos + 80]!r}")
    assert m is not None
    status = int(m.group(1))
    pos = m.end()
    fields: Headers = []
    while not data.startswith(b"\r\n", pos):
        f = _FIELD_LINE.match(data, pos)
        check(f is not None, f"malformed field line at {pos}: {data[pos : pos + 80]!r}")
        assert f is not None
        fields.append((f.group(1), f.group(2)))
        pos = f.end()
    return status, fields, pos + 2


def _framing(fields: Headers) -> bool:
    return any(n.lower() in (b"content-length", b"transfer-encoding") for n, _ in fields)


def _is_error_page(fields: Headers) -> bool:
    return any(n == b"X-Request-Id" for n, _ in fields)


def _chunked_end(data: bytes, pos: int) -> int | None:
    """Where a chunked body from ``pos`` ends, None if cut short; strict: as tlsgate writes."""
    while True:
        m = _CHUNK_SIZE.match(data, pos)
        if m is None:
            check(
                len(data) - pos < 18 and re.fullmatch(rb"[0-9a-f]*\r?", data[pos:]) is not None,
                f"malformed chunk size at {pos}: {data[pos : pos + 40]!r}",
            )
            return None
        size = int(m.group(1), 16)
        pos = m.end()
        if size == 0:
            break
        if pos + size + 2 > len(data):
            return None
        check(data[pos + size : pos + size + 2] == b"\r\n", "chunk data not followed by CRLF")
        pos += size + 2
    while not data.startswith(b"\r\n", pos):
        if len(data) - pos < 2:
            return None
        f = _FIELD_LINE.match(data, pos)
        if f is None:
            check(
                b"\r\n" not in data[pos:], f"malformed trailer at {pos}: {data[pos : pos + 80]!r}"
            )
            return None
        pos = f.end()
    return pos + 2


def _dechunk(body: bytes) -> bytes:
    """The data of a chunked body _chunked_end accepted."""
    out = bytearray()
    pos = 0
    while True:
        m = _CHUNK_SIZE.match(body, pos)
        assert m is not None
        size = int(m.group(1), 16)
        if size == 0:
            return bytes(out)
        out += body[m.end() : m.end() + size]
        pos = m.end() + size + 2


def _origin_form(url: bytes) -> bytes:
    if url.startswith(b"/") or url == b"*":
        return url
    m = _ABSOLUTE.fullmatch(url)
    if m is None:
        return url
    rest = m.group(1)
    return rest if rest.startswith(b"/") else b"/" + rest


def _end_to_end(headers: Headers) -> Headers:
    """The fields tlsgate must pass on untouched: not rewritten, not named in Connection."""
    named = {
        t.strip(b" \t").lower()
        for n, v in headers
        if n.lower() == b"connection"
        for t in v.split(b",")
    }
    return [
        (n, v)
        for n, v in headers
        if (ln := n.lower()) not in _REWRITTEN
        and ln not in named
        and not ln.startswith(b"x-forwarded-")
    ]


# ---- the second parser: h11 ----------------------------------------------------------------------

# h11 holds at most this much of an unfinished head; tlsgate's own limit is 64 KiB by default
_H11_MAX_HEAD = 256 * 1024
_H11_HOST = [(b"Host", b"example.com")]
_H11_UPGRADE = [*_H11_HOST, (b"Connection", b"upgrade"), (b"Upgrade", b"websocket")]
# the fake answers of _h11_requests, made once (h11's events are immutable)
_H11_END = h11.EndOfMessage()
_H11_OK = h11.Response(status_code=200, headers=[(b"Content-Length", b"0")])
_H11_NOT_FOUND = h11.Response(status_code=404, headers=[(b"Content-Length", b"0")])


@dataclass
class _Framed:
    """One message as h11 frames it: a request (method, target) or a response (status)."""

    method: bytes = b""
    target: bytes = b""
    status: int = 0
    body: bytearray = field(default_factory=bytearray)
    complete: bool = False  # h11's EndOfMessage came
    end: int = 0  # requests: where in the bytes it ended (when complete)


# Both parses are pure functions of their arguments, and memoized: the same bytes come
# back often (a canned app response, the response target's fixed requests), and h11 is
# pure Python. Callers only read the results.
@functools.lru_cache(maxsize=1024)
def _h11_requests(data: bytes, *, may_tunnel: bool) -> tuple[tuple[_Framed, ...], str]:
    """The requests h11, as the app server, frames in what tlsgate wrote to one upstream
    connection, and why it stopped ("" for no error).

    h11 frames by Content-Length and Transfer-Encoding whatever else the head says (an
    Upgrade too), as nginx and most app servers do; llhttp ends an upgrade request at its
    head. Each request that h11 has read to its end is answered with a fake empty
    response so that h11 goes on to the next one: the framing of what tlsgate sends does
    not depend on what the app answered, except for a 101 (``may_tunnel``: the app sent
    one on this connection), after which the rest is a tunnel's and not parsed. A body
    cut short at the end of the bytes is no error (no EOF is fed: tlsgate may close in
    the middle of an exchange when its client goes away).
    """
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_H11_MAX_HEAD)
    if data:  # (b"" would be the end of the stream to h11)
        conn.receive_data(data)
    seen: list[_Framed] = []
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            return tuple(seen), f"h11: {exc} (after {len(seen)} requests)"
        if event is h11.NEED_DATA:
            return tuple(seen), ""
        if isinstance(event, h11.Request):
            seen.append(_Framed(method=event.method, target=event.target))
        elif isinstance(event, h11.Data):
            seen[-1].body += event.data
        elif isinstance(event, h11.EndOfMessage):
            seen[-1].complete = True
            seen[-1].end = len(data) - len(conn.trailing_data[0])
        elif event is h11.PAUSED:
            # paused with the client not DONE: it proposed a switch (MIGHT_SWITCH_PROTOCOL)
            if conn.their_state is not h11.DONE and may_tunnel:
                return tuple(seen), ""  # the rest may be the tunnel's
            # (a 2xx would accept a CONNECT, a 101 an upgrade: decline both)
            conn.send(_H11_NOT_FOUND if seen[-1].method == b"CONNECT" else _H11_OK)
            conn.send(_H11_END)
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                rest = conn.trailing_data[0]
                return (
                    tuple(seen),
                    f"h11: {len(rest)} bytes after a request that closes: {rest[:80]!r}",
                )


def _h11_ask(msg: _Message) -> tuple[bytes, bool]:
    """What h11 needs to know of a client's request (as llhttp saw it) to read its
    response: the method (HEAD frames a response differently) and whether it proposes
    an upgrade (a 101 is allowed then)."""
    return msg.method or b"GET", msg.version == "1.1" and _proposes_upgrade(msg.headers)


@functools.lru_cache(maxsize=64)
def _h11_fake_request(method: bytes, upgrade: bool) -> h11.Request:
    """The request h11 sends for an ask: no body (h11 would insist on sending it)."""
    return h11.Request(method=method, target=b"/", headers=_H11_UPGRADE if upgrade else _H11_HOST)


def _proposes_upgrade(headers: Headers) -> bool:
    """An Upgrade field and the "upgrade" connection option (RFC 9110 §7.8)."""
    upgrade = any(n.lower() == b"upgrade" for n, _ in headers)
    return upgrade and any(
        t.strip(b" \t").lower() == b"upgrade"
        for n, v in headers
        if n.lower() == b"connection"
        for t in v.split(b",")
    )


@functools.lru_cache(maxsize=1024)
def _h11_responses(
    data: bytes, asks: tuple[tuple[bytes, bool], ...]
) -> tuple[tuple[_Framed, ...], str]:
    """The responses h11, as the client, frames in what tlsgate wrote to the client, and
    why it stopped ("" for no error).

    Before each response h11 "sends" the request it answers -- ``asks[i]`` (see
    :func:`_h11_ask`), a GET for an error answer beyond them -- so that a response to
    HEAD has no body and a 101 is allowed only after an upgrade request; a 101 ends the
    parse (the rest is the tunnel's, not HTTP). A response cut short at the end is no
    error (no EOF is fed): the client-side checker says when that is allowed; a
    close-delimited body stays incomplete, with every byte in it.
    """
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=_H11_MAX_HEAD)
    if data:
        conn.receive_data(data)
    seen: list[_Framed] = []
    asked = False
    while True:
        if not asked:
            if not conn.trailing_data[0]:
                return tuple(seen), ""
            i = len(seen)
            conn.send(_h11_fake_request(*(asks[i] if i < len(asks) else (b"GET", False))))
            conn.send(_H11_END)
            asked = True
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            return tuple(seen), f"h11: {exc} (after {len(seen)} responses)"
        if event is h11.NEED_DATA:
            return tuple(seen), ""
        if isinstance(event, h11.InformationalResponse):
            if event.status_code == 101:
                seen.append(_Framed(status=101, complete=True))
                return tuple(seen), ""
        elif isinstance(event, h11.Response):
            seen.append(_Framed(status=event.status_code))
        elif isinstance(event, h11.Data):
            seen[-1].body += event.data
        elif isinstance(event, h11.EndOfMessage):
            seen[-1].complete = True
        elif event is h11.PAUSED:
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                rest = conn.trailing_data[0]
                return (
                    tuple(seen),
                    f"h11: {len(rest)} bytes after a response that closes: {rest[:80]!r}",
                )
            asked = False


def run(data: bytes, *, answer: bool) -> Driver:
    """Play ``data`` (see the module docstring) and check everything; returns the driver."""
    r = Reader(data)
    scenario = r.byte()
    driver = Driver(CONFIGS[scenario & 3], answer=answer, salt=scenario >> 5)
    if not answer:
        driver.client_data(REQUESTS[scenario >> 2 & 7])
    driver.play(r)
    driver.finish()
    return driver
