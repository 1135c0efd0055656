"""A real HTTP/1.1 app server for the integration tests (asyncio + httptools).

How this works: each connection runs one task that *pulls* parser events. It
reads at most 64 KiB from the socket only when it needs the next event, feeds
httptools, and the parser callbacks append ``head`` / ``body`` / ``end`` events
to a deque. Requests are therefore handled strictly one after another (a
pipelined burst is answered in order), and a request body is consumed only as
fast as the handler asks for it: memory stays bounded whatever the body size,
and TCP backpressure reaches the sender. Every byte received is captured (the
first 64 KiB of each connection) and every parsed request head is recorded, so
tests can assert that something was *never* forwarded (``/admin/seen``).

Two ways to run it:

* in-process: ``AppServer(name).start()`` runs the server (and optionally a
  ``websockets`` echo server) on its own event loop in a daemon thread;
* as a subprocess: ``python appserver.py --port P --name NAME [--ws-port W]``
  prints ``READY <port> <ws_port>`` once listening and exits 0 on SIGTERM.
  Kill/restart tests need this form.

Endpoints (every one also answers HEAD, with the GET head and no body):

=============================  ===========================================================
``/echo``, ``/upload``,        read the body (streamed, hashed) and answer JSON: name,
any other path                 method, path, query, target, version, headers (pairs as
                               received), trailers, body_len, body_sha256, conn_id,
                               requests_on_conn, client_addr, sent_100
``/status/<code>[/...]``       that status; 204/304 carry no body
``/stream?size=N``             chunked body of N pattern bytes, 64 KiB pieces
``/length?size=N``             the same with Content-Length
``/close-delimited?size=N``    no length, connection closed after N bytes
                               (``&version=1.0`` answers with an HTTP/1.0 status line)
``/trailers``                  chunked body with an ``X-Checksum`` trailer (its sha256)
``/slow?delay=S``              answer after S seconds
``/drip?n=N&interval=S``       N chunks, S seconds apart (proves response streaming)
``/first-byte``                answer as soon as one body byte arrived, then close
``/early-hints``               ``103 Early Hints`` then the echo answer
``/continue``                  send ``100 Continue`` at once, then read the body
                               (``?status=C``: answer C without reading the body, close)
``/respond?status=C&h=N:V``    custom status and response header fields
``/garbage``                   something that is not HTTP, then close
``/drop``                      close without answering
``/truncated``                 Content-Length 10 but 5 bytes, then close
``/healthz``                   200, or 503 after ``/admin/health?ok=0``
``/admin/seen``                JSON: request heads and raw byte prefixes received
``/admin/reset``               forget what was seen
``/admin/stats``               JSON: connections accepted, requests handled
=============================  ===========================================================
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import json
import signal
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httptools
import websockets.asyncio.server

PIECE = 64 * 1024
# Bodies are this 64 KiB block repeated, so a receiver can check any byte range
# cheaply (PatternChecker) without ever holding the whole body.
PATTERN = bytes(range(256)) * 256
RAW_CAPTURE_PER_CONN = 64 * 1024
REASONS = {
    100: "Continue",
    103: "Early Hints",
    200: "OK",
    204: "No Content",
    304: "Not Modified",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    417: "Expectation Failed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def pattern_chunks(size: int, piece: int = PIECE) -> Iterator[bytes]:
    """Yield ``size`` pattern bytes in pieces of at most ``piece`` bytes."""
    # Long enough to slice any piece from any offset into the 64 KiB period.
    source = PATTERN * (piece // len(PATTERN) + 2)
    sent = 0
    while sent < size:
        n = min(piece, size - sent)
        start = sent % len(PATTERN)
        yield source[start : start + n]
        sent += n


class PatternChecker:
    """Check, chunk by chunk, that a received body is the pattern; constant memory."""

    def __init__(self) -> None:
        self.received = 0
        self.ok = True

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            start = self.received % len(PATTERN)
            n = min(len(view), len(PATTERN) - start)
            if view[:n] != PATTERN[start : start + n]:
                self.ok = False
            self.received += n
            view = view[n:]


@dataclass
class Request:
    method: str
    target: str
    path: str
    query: str
    version: str
    headers: list[tuple[str, str]]
    keep_alive: bool
    conn_id: int
    requests_on_conn: int
    client_addr: str
    trailers: list[tuple[str, str]] = field(default_factory=list)
    body_done: bool = False
    sent_100: bool = False

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return None

    def params(self) -> dict[str, list[str]]:
        return urllib.parse.parse_qs(self.query, keep_blank_values=True)

    def param(self, name: str, default: str) -> str:
        return self.params().get(name, [default])[0]


class ServerState:
    """What one app server remembers across connections (read by /admin endpoints)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.healthy = True
        self.conn_count = 0
        self.request_count = 0
        self.seen: list[dict[str, Any]] = []
        self.raw: dict[int, bytearray] = {}

    def reset(self) -> None:
        self.seen.clear()
        self.raw.clear()


class _Closed(Exception):
    """The connection is finished (peer gone or a response said close)."""


@dataclass
class _Head:
    """A request head as the parser saw it at ``on_headers_complete``: the parser
    may already be further on (pipelining) when the head is handled."""

    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    keep_alive: bool
    trailers: list[tuple[str, str]]  # filled later, when the trailer section arrives


class _Events:
    """httptools callbacks -> a deque of events (see the module docstring)."""

    def __init__(self) -> None:
        self.events: collections.deque[tuple[str, Any]] = collections.deque()
        self.parser: httptools.HttpRequestParser | None = None
        self.url = bytearray()
        self.headers: list[tuple[str, str]] = []
        self.trailers: list[tuple[str, str]] = []
        self.in_trailers = False

    def on_message_begin(self) -> None:
        self.url = bytearray()
        self.headers = []
        self.trailers = []
        self.in_trailers = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        pair = (name.decode("latin-1"), value.decode("latin-1"))
        (self.trailers if self.in_trailers else self.headers).append(pair)

    def on_headers_complete(self) -> None:
        self.in_trailers = True
        assert self.parser is not None
        head = _Head(
            method=self.parser.get_method().decode("latin-1"),
            target=self.url.decode("latin-1"),
            version=self.parser.get_http_version(),
            headers=self.headers,
            keep_alive=bool(self.parser.should_keep_alive()),
            trailers=self.trailers,
        )
        self.events.append(("head", head))

    def on_body(self, body: bytes) -> None:
        self.events.append(("body", body))

    def on_message_complete(self) -> None:
        self.events.append(("end", None))


class Connection:
    """One accepted connection: pull events, handle requests in order."""

    def __init__(
        self,
        state: ServerState,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.state = state
        self.reader = reader
        self.writer = writer
        state.conn_count += 1
        self.conn_id = state.conn_count
        self.requests = 0
        self.raw = bytearray()
        state.raw[self.conn_id] = self.raw
        peer = writer.get_extra_info("peername")
        self.client_addr = f"{peer[0]}:{peer[1]}" if peer else ""
        self.cb = _Events()
        self.parser = self._new_parser()
        self.eof = False

    def _new_parser(self) -> httptools.HttpRequestParser:
        parser = httptools.HttpRequestParser(self.cb)
        self.cb.parser = parser
        return parser

    # -- input ---------------------------------------------------------------

    async def _fill(self) -> None:
        """Read once and feed the parser; sets ``eof`` when the peer is done."""
        data = await self.reader.read(PIECE)
        if not data:
            self.eof = True
            return
        room = RAW_CAPTURE_PER_CONN - len(self.raw)
        if room > 0:
            self.raw += data[:room]
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # We never accept an upgrade (the WebSocket server is separate); RFC 9110
            # 7.8: a server MAY ignore a received Upgrade header field. The request
            # itself was delivered; parse what follows with a fresh parser.
            offset = int(exc.args[0]) if exc.args else len(data)
            self.parser = self._new_parser()
            if data[offset:]:
                self.parser.feed_data(data[offset:])

    async def next_event(self) -> tuple[str, Any]:
        while not self.cb.events:
            if self.eof:
                raise _Closed
            await self._fill()
        return self.cb.events.popleft()

    async def next_chunk(self, req: Request, *, send_100: bool = True) -> bytes | None:
        """The next piece of the request body as it arrives, ``None`` at its end.

        Sends ``100 Continue`` first when the client asked for it (RFC 9110 10.1.1:
        "an origin server MUST ... send a 100 (Continue) response if it receives
        a request message with the 100-continue expectation" and intends to read
        the content).
        """
        if req.body_done:
            return None
        if send_100:
            await self.send_100_if_expected(req)
        while True:
            kind, value = await self.next_event()
            if kind == "body":
                return bytes(value)
            if kind == "end":
                req.body_done = True
                return None

    @staticmethod
    def expects_100(req: Request) -> bool:
        expect = req.header("expect")
        return expect is not None and expect.lower() == "100-continue"

    async def send_100_if_expected(self, req: Request) -> None:
        if self.expects_100(req) and not req.sent_100:
            req.sent_100 = True
            self.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await self.writer.drain()

    # -- output --------------------------------------------------------------

    async def send(
        self,
        req: Request,
        status: int,
        headers: list[tuple[str, str]],
        body: bytes | None = b"",
        *,
        close: bool = False,
        version: str = "1.1",
    ) -> None:
        """Send a whole response. ``body=None`` means: caller streams it itself."""
        lines = [f"HTTP/{version} {status} {REASONS.get(status, 'Status')}"]
        names = {k.lower() for k, _ in headers}
        if body is not None and status not in (204, 304) and "content-length" not in names:
            headers = [*headers, ("Content-Length", str(len(body)))]
        if close and "connection" not in names:
            headers = [*headers, ("Connection", "close")]
        lines += [f"{k}: {v}" for k, v in headers]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.writer.write(head)
        if body and req.method != "HEAD" and status not in (204, 304):
            self.writer.write(body)
        await self.writer.drain()
        if close:
            raise _Closed

    async def send_json(self, req: Request, obj: Any, status: int = 200) -> None:
        body = json.dumps(obj).encode()
        await self.send(req, status, [("Content-Type", "application/json")], body)

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    # -- the loop ------------------------------------------------------------

    async def run(self) -> None:
        try:
            while True:
                try:
                    kind, head = await self.next_event()
                except httptools.HttpParserError:
                    await self.send_error_400()
                    return
                if kind != "head":  # a body event with no head cannot happen
                    return
                req = self.make_request(head)
                try:
                    await self.dispatch(req)
                    if not req.body_done and self.expects_100(req) and not req.sent_100:
                        # Answered without asking for the body: the client may never
                        # send it, so the connection cannot be reused.
                        return
                    while await self.next_chunk(req, send_100=False) is not None:
                        pass  # drain what the handler left unread
                except httptools.HttpParserError:
                    await self.send_error_400()
                    return
                if not req.keep_alive:
                    return
        except (_Closed, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.writer.close()

    async def send_error_400(self) -> None:
        self.writer.write(
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        await self.writer.drain()

    def make_request(self, head: _Head) -> Request:
        self.requests += 1
        self.state.request_count += 1
        path, _, query = head.target.partition("?")
        req = Request(
            method=head.method,
            target=head.target,
            path=path,
            query=query,
            version=head.version,
            headers=head.headers,
            keep_alive=head.keep_alive,
            conn_id=self.conn_id,
            requests_on_conn=self.requests,
            client_addr=self.client_addr,
            trailers=head.trailers,
        )
        if not path.startswith("/admin/"):
            self.state.seen.append(
                {
                    "method": req.method,
                    "target": req.target,
                    "version": req.version,
                    "headers": req.headers,
                    "conn_id": req.conn_id,
                }
            )
        return req

    async def dispatch(self, req: Request) -> None:
        path = req.path
        if path in ("/", "/echo", "/upload"):
            await self.echo(req)
        elif path.startswith("/status/"):
            code = int(path.split("/")[2])  # /status/<code>[/anything]
            body = b"" if code in (204, 304) else f"status {code}\n".encode()
            await self.send(req, code, [("X-App", self.state.name)], body)
        elif path in ("/stream", "/length"):
            await self.body_of_size(req, chunked=path == "/stream")
        elif path == "/close-delimited":
            await self.close_delimited(req)
        elif path == "/trailers":
            await self.trailers(req)
        elif path == "/slow":
            await asyncio.sleep(float(req.param("delay", "1")))
            await self.echo(req)
        elif path == "/drip":
            await self.drip(req)
        elif path == "/first-byte":
            await self.first_byte(req)
        elif path == "/early-hints":
            await self.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
            await self.echo(req)
        elif path == "/continue":
            await self.continue_(req)
        elif path == "/respond":
            await self.respond(req)
        elif path == "/garbage":
            await self.write(b"THIS IS NOT HTTP AT ALL\r\n\r\n")
            raise _Closed
        elif path == "/drop":
            raise _Closed
        elif path == "/truncated":
            await self.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabcde")
            raise _Closed
        elif path == "/healthz":
            ok = self.state.healthy
            await self.send(req, 200 if ok else 503, [], b"ok\n" if ok else b"down\n")
        elif path.startswith("/admin/"):
            await self.admin(req)
        else:
            await self.echo(req)

    # -- handlers ------------------------------------------------------------

    async def echo(self, req: Request) -> None:
        digest = hashlib.sha256()
        n = 0
        while (chunk := await self.next_chunk(req)) is not None:
            digest.update(chunk)
            n += len(chunk)
        await self.send_json(
            req,
            {
                "name": self.state.name,
                "method": req.method,
                "path": req.path,
                "query": req.query,
                "target": req.target,
                "version": req.version,
                "headers": req.headers,
                "trailers": req.trailers,
                "body_len": n,
                "body_sha256": digest.hexdigest(),
                "conn_id": req.conn_id,
                "requests_on_conn": req.requests_on_conn,
                "client_addr": req.client_addr,
                "sent_100": req.sent_100,
            },
        )

    async def body_of_size(self, req: Request, *, chunked: bool) -> None:
        size = int(req.param("size", "0"))
        headers = [("Content-Type", "application/octet-stream"), ("X-App", self.state.name)]
        if chunked:
            headers.append(("Transfer-Encoding", "chunked"))
        else:
            headers.append(("Content-Length", str(size)))
        await self.send(req, 200, headers, None)
        if req.method == "HEAD":
            return
        for piece in pattern_chunks(size):
            if chunked:
                await self.write(b"%x\r\n%b\r\n" % (len(piece), piece))
            else:
                await self.write(piece)
        if chunked:
            await self.write(b"0\r\n\r\n")

    async def close_delimited(self, req: Request) -> None:
        size = int(req.param("size", "0"))
        version = req.param("version", "1.1")
        headers = [("Content-Type", "application/octet-stream"), ("X-App", self.state.name)]
        if version == "1.1":
            headers.append(("Connection", "close"))
        await self.send(req, 200, headers, None, version=version)
        if req.method != "HEAD":
            for piece in pattern_chunks(size):
                await self.write(piece)
        raise _Closed

    async def trailers(self, req: Request) -> None:
        body = b"hello trailers\n" * 100
        checksum = hashlib.sha256(body).hexdigest()
        headers = [("Transfer-Encoding", "chunked"), ("Trailer", "X-Checksum")]
        await self.send(req, 200, headers, None)
        if req.method == "HEAD":
            return
        for i in range(0, len(body), 500):
            piece = body[i : i + 500]
            await self.write(b"%x\r\n%b\r\n" % (len(piece), piece))
        await self.write(b"0\r\nX-Checksum: " + checksum.encode() + b"\r\n\r\n")

    async def drip(self, req: Request) -> None:
        n = int(req.param("n", "3"))
        interval = float(req.param("interval", "0.5"))
        await self.send(req, 200, [("Transfer-Encoding", "chunked")], None)
        if req.method == "HEAD":
            return
        for i in range(n):
            if i:
                await asyncio.sleep(interval)
            piece = f"drip {i}\n".encode()
            await self.write(b"%x\r\n%b\r\n" % (len(piece), piece))
        await self.write(b"0\r\n\r\n")

    async def first_byte(self, req: Request) -> None:
        while (chunk := await self.next_chunk(req)) is not None:
            if chunk:
                break
        await self.send(req, 200, [], b"got the first byte\n", close=True)

    async def continue_(self, req: Request) -> None:
        status = req.param("status", "")
        if status:
            await self.send(req, int(status), [], b"rejected before the body\n", close=True)
        await self.send_100_if_expected(req)
        await self.echo(req)

    async def respond(self, req: Request) -> None:
        status = int(req.param("status", "200"))
        headers: list[tuple[str, str]] = []
        for h in req.params().get("h", []):
            name, _, value = h.partition(":")
            headers.append((name.strip(), value.strip()))
        await self.send(req, status, headers, b"custom\n")

    async def admin(self, req: Request) -> None:
        if req.path == "/admin/seen":
            raw = {str(k): bytes(v).decode("latin-1") for k, v in self.state.raw.items()}
            await self.send_json(req, {"requests": self.state.seen, "raw": raw})
        elif req.path == "/admin/reset":
            self.state.reset()
            await self.send_json(req, {"ok": True})
        elif req.path == "/admin/health":
            self.state.healthy = req.param("ok", "1") == "1"
            await self.send_json(req, {"healthy": self.state.healthy})
        elif req.path == "/admin/stats":
            await self.send_json(
                req,
                {"connections": self.state.conn_count, "requests": self.state.request_count},
            )
        else:
            await self.send(req, 404, [], b"no such admin endpoint\n")


async def _ws_echo(ws: websockets.asyncio.server.ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


class AppServer:
    """An app server (plus an optional WebSocket echo server) on a background thread.

    Args:
        name: reported in every echo answer.
        host, port: where to listen; port 0 picks a free one (see ``.port``).
        ws: also start a WebSocket echo server (``.ws_port``); any path echoes.
    """

    def __init__(self, name: str, host: str = "127.0.0.1", port: int = 0, *, ws: bool = False):
        self.name = name
        self.host = host
        self.port = port
        self.ws_port = 0
        self.want_ws = ws
        self.state = ServerState(name)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> AppServer:
        self._thread = threading.Thread(target=self._run, name=f"app-{self.name}", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"app server {self.name} did not start")
        if self._error is not None:
            raise RuntimeError(f"app server {self.name} failed") from self._error
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to start() through _error
            self._error = exc
            self._ready.set()
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with serve(self.state, self.host, self.port) as server:
            self.port = server.sockets[0].getsockname()[1]
            if self.want_ws:
                async with websockets.asyncio.server.serve(_ws_echo, self.host, 0) as wss:
                    self.ws_port = next(iter(wss.sockets)).getsockname()[1]
                    self._ready.set()
                    await self._stop.wait()
            else:
                self._ready.set()
                await self._stop.wait()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread is not None:
            stop = self._stop
            self._loop.call_soon_threadsafe(stop.set)
            self._thread.join(10)
            self._loop = None

    def __enter__(self) -> AppServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class serve:
    """``async with serve(state, host, port) as server``: listen, and on exit stop and
    cancel every connection task (so a stopped server leaves nothing running)."""

    def __init__(self, state: ServerState, host: str, port: int) -> None:
        self.state = state
        self.host = host
        self.port = port
        self.tasks: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            await Connection(self.state, reader, writer).run()
        finally:
            self.tasks.discard(task)

    async def __aenter__(self) -> asyncio.Server:
        self.server = await asyncio.start_server(
            self._on_connect, self.host, self.port, reuse_address=True, limit=PIECE
        )
        return self.server

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=5)
        await self.server.wait_closed()


async def _main_async(host: str, port: int, name: str, ws_port: int | None) -> None:
    state = ServerState(name)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    async with serve(state, host, port) as server:
        bound = server.sockets[0].getsockname()[1]
        if ws_port is None:
            print(f"READY {bound} 0", flush=True)
            await stop.wait()
            return
        async with websockets.asyncio.server.serve(_ws_echo, host, ws_port) as wss:
            ws_bound = next(iter(wss.sockets)).getsockname()[1]
            print(f"READY {bound} {ws_bound}", flush=True)
            await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="tlsgate integration-test app server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--name", default="app")
    parser.add_argument("--ws-port", type=int, default=None)
    args = parser.parse_args(argv)
    asyncio.run(_main_async(args.host, args.port, args.name, args.ws_port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
