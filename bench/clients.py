"""The load generators: wrk, openssl s_time, and three small Python clients.

How it works:

* :func:`run_wrk` runs ``wrk --latency`` and parses requests/s, p50/p99 and
  errors (socket errors plus non-2xx/3xx responses). With a Lua script that
  sends :func:`client_hello` bytes as the "request" over plain TCP, wrk is
  also the connection-rate client of row 6: the backend's stream port reads
  the ClientHello and answers a fixed HTTP response with ``Connection:
  close``, so wrk opens one TCP connection per exchange, at C speed, and the
  proxy in between parses a real ClientHello and routes it by SNI.
* :func:`run_s_time` runs several ``openssl s_time`` processes side by side
  (each one is sequential): ``-new`` makes a full TLS 1.3 handshake per
  connection and ``-reuse`` resumes with the session ticket of the previous
  connection; both fetch ``/`` once per connection (HTTP/1.0) and let the
  server close. s_time prints one character per connection, ``r`` for a
  resumed session, which is how the resumption rate is counted.
  (``wrk -H 'Connection: close'`` is no full-handshake client: it resumes
  every session after the first, which HAProxy's ``show info`` confirms with
  ``SslFrontendSessionReuse_pct: 100``.)
* :func:`download` fetches the bulk file over a raw socket into a reused
  buffer: one copy out of the kernel, no parsing beyond the response head.
* :class:`IdleConnections` opens many TLS connections with non-blocking
  sockets and a selector (bounded concurrency), completes the handshakes and
  keeps the connections idle until :meth:`IdleConnections.close`. After one
  full handshake it resumes with that session's ticket, so that the client
  (on one core, in Python) costs less CPU per connection than the server.
"""

from __future__ import annotations

import contextlib
import errno
import re
import selectors
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import BenchError

# --------------------------------------------------------------------------- wrk


@dataclass
class WrkResult:
    requests_per_sec: float
    requests: int
    p50_ms: float
    p99_ms: float
    socket_errors: dict[str, int] = field(default_factory=dict)
    non_2xx_3xx: int = 0

    @property
    def errors(self) -> int:
        return sum(self.socket_errors.values()) + self.non_2xx_3xx


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _latency_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if m is None:
        raise BenchError(f"unexpected wrk latency {text!r}")
    return float(m.group(1)) * _UNITS_MS[m.group(2)]


def parse_wrk(output: str) -> WrkResult:
    """Parse what ``wrk --latency`` prints.

    Raises:
        BenchError: a figure the benchmark needs is missing from the output.
    """
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    total = re.search(r"^\s*(\d+) requests in ", output, re.MULTILINE)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE)
    if rps is None or total is None or p50 is None or p99 is None:
        raise BenchError(f"could not parse wrk output:\n{output}")
    socket_errors: dict[str, int] = {}
    errs = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if errs is not None:
        names = ("connect", "read", "write", "timeout")
        socket_errors = dict(zip(names, map(int, errs.groups()), strict=True))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return WrkResult(
        requests_per_sec=float(rps.group(1)),
        requests=int(total.group(1)),
        p50_ms=_latency_ms(p50.group(1)),
        p99_ms=_latency_ms(p99.group(1)),
        socket_errors=socket_errors,
        non_2xx_3xx=int(non2xx.group(1)) if non2xx else 0,
    )


def wrk_argv(
    url: str, seconds: float, *, threads: int, connections: int, script: Path | None = None
) -> list[str]:
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
    if script is not None:
        argv += ["-s", str(script)]
    return [*argv, url]


def run_wrk(argv: list[str]) -> WrkResult:
    out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=3600)
    if out.returncode != 0:
        raise BenchError(f"{' '.join(argv)} failed ({out.returncode}): {out.stderr}")
    return parse_wrk(out.stdout)


def client_hello(server_name: str = "localhost") -> bytes:
    """The first flight of a real TLS client (Python's ssl) for ``server_name``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def write_hello_script(path: Path) -> Path:
    """A wrk Lua script whose every request is :func:`client_hello`'s bytes.

    wrk calls ``request`` once in each thread to check that it returns HTTP, and
    sends what the later calls return: so the first call returns a GET.
    """
    literal = "".join(f"\\{b:03d}" for b in client_hello())
    path.write_text(
        "-- Written by bench/clients.py: send a TLS ClientHello (SNI localhost) as the\n"
        "-- request; the backend answers a fixed HTTP response and closes.\n"
        f'local hello = "{literal}"\n'
        'local check = "GET / HTTP/1.1\\r\\nHost: localhost\\r\\n\\r\\n"\n'
        "local calls = 0\n"
        "function request()\n"
        "  calls = calls + 1\n"
        "  if calls == 1 then return check end  -- wrk's check, never sent\n"
        "  return hello\n"
        "end\n"
    )
    return path


# --------------------------------------------------------------------------- s_time


@dataclass
class HandshakeResult:
    connections: int
    resumed: int
    wall_s: float

    @property
    def per_sec(self) -> float:
        return self.connections / self.wall_s if self.wall_s > 0 else 0.0


_S_TIME_COUNT = re.compile(r"^(\d+) connections in [\d.]+s;", re.MULTILINE)
_PROGRESS = re.compile(r"^[*r123t]+$", re.MULTILINE)


def run_s_time(port: int, seconds: float, *, procs: int, reuse: bool) -> HandshakeResult:
    """``procs`` parallel ``openssl s_time`` clients for ``seconds`` (whole seconds).

    Raises:
        BenchError: a client failed or printed no count.
    """
    argv = [
        "openssl",
        "s_time",
        "-connect",
        f"127.0.0.1:{port}",
        "-tls1_3",
        "-time",
        str(max(1, round(seconds))),
        "-www",
        "/",
        # Without these, OpenSSL 3 reads the system CA directory on every connection.
        "-no-CApath",
        "-no-CAfile",
        "-no-CAstore",
        "-reuse" if reuse else "-new",
    ]
    start = time.monotonic()
    running = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(procs)
    ]
    outputs = [p.communicate(timeout=seconds + 120) for p in running]
    wall = time.monotonic() - start
    connections = resumed = 0
    for proc, (stdout, stderr) in zip(running, outputs, strict=True):
        counts = _S_TIME_COUNT.findall(stdout)
        if proc.returncode != 0 or not counts:
            raise BenchError(f"openssl s_time failed ({proc.returncode}): {stderr[-500:]}")
        connections += int(counts[-1])
        # Before the summary, one character per connection: 'r' resumed, '*' a full one.
        resumed += sum(line.count("r") for line in _PROGRESS.findall(stdout))
    return HandshakeResult(connections, resumed, wall)


# --------------------------------------------------------------------------- bulk


def download(port: int, path: str, expect_body: int) -> tuple[int, float]:
    """GET ``path`` over plain TCP; (body bytes, seconds from connect to EOF).

    Raises:
        BenchError: the response is not a 200 or its body has the wrong size.
    """
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
        head = b""
        received = 0
        while True:
            n = s.recv_into(buf)
            if n == 0:
                break
            if not head:
                end = bytes(view[: min(n, 4096)]).find(b"\r\n\r\n")
                if end < 0:
                    raise BenchError("bulk download: no response head in the first read")
                head = bytes(view[:end])
                received += n - end - 4
            else:
                received += n
    seconds = time.monotonic() - start
    if not head.startswith(b"HTTP/1.1 200") or received != expect_body:
        raise BenchError(f"bulk download: {head[:40]!r}, {received} of {expect_body} bytes")
    return received, seconds


# --------------------------------------------------------------------------- idle TLS


def _client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class IdleConnections:
    """Many open, idle TLS connections to one port. Call :meth:`close` when done."""

    def __init__(self) -> None:
        self.sockets: list[ssl.SSLSocket] = []
        self.resumed = 0
        self.failed = 0

    def open(self, port: int, count: int, *, concurrency: int = 64, timeout: float = 120.0) -> None:
        """Open ``count`` connections; each completes its handshake, then stays idle.

        Connections that fail are counted in :attr:`failed`.

        Raises:
            BenchError: more than 1 % failed, or ``timeout`` passed.
        """
        ctx = _client_context()
        session = self._seed_session(ctx, port)
        sel = selectors.DefaultSelector()
        started = 0
        deadline = time.monotonic() + timeout
        try:
            while len(self.sockets) + self.failed < count:
                if time.monotonic() > deadline or self.failed > count // 100:
                    raise BenchError(
                        f"opened {len(self.sockets)} of {count} TLS connections "
                        f"({self.failed} failed)"
                    )
                done = len(self.sockets) + self.failed
                while started - done < concurrency and started < count:
                    self._connect(sel, port)
                    started += 1
                for key, _ in sel.select(timeout=1.0):
                    self._step(sel, key, ctx, session)
        finally:
            for key in list(sel.get_map().values()):
                sel.unregister(key.fileobj)
                key.fileobj.close()  # type: ignore[union-attr]
            sel.close()

    @staticmethod
    def _seed_session(ctx: ssl.SSLContext, port: int) -> ssl.SSLSession | None:
        """One full handshake and request, so that the TLS 1.3 ticket has arrived."""
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost") as s,
        ):
            s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            s.recv(65536)
            return s.session

    @staticmethod
    def _connect(sel: selectors.BaseSelector, port: int) -> None:
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.setblocking(False)
        rc = raw.connect_ex(("127.0.0.1", port))
        if rc not in (0, errno.EINPROGRESS):
            raw.close()
            raise BenchError(f"connect: {errno.errorcode.get(rc, rc)}")
        sel.register(raw, selectors.EVENT_WRITE, "connect")

    def _step(
        self,
        sel: selectors.BaseSelector,
        key: selectors.SelectorKey,
        ctx: ssl.SSLContext,
        session: ssl.SSLSession | None,
    ) -> None:
        sock = key.fileobj
        assert isinstance(sock, socket.socket)
        if key.data == "connect":
            sel.unregister(sock)
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
                sock.close()
                self.failed += 1
                return
            sock = ctx.wrap_socket(
                sock, server_hostname="localhost", do_handshake_on_connect=False, session=session
            )
            sel.register(sock, selectors.EVENT_WRITE, "handshake")
            return
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            sel.modify(sock, selectors.EVENT_READ, "handshake")
        except ssl.SSLWantWriteError:
            sel.modify(sock, selectors.EVENT_WRITE, "handshake")
        except OSError:
            sel.unregister(sock)
            sock.close()
            self.failed += 1
        else:
            sel.unregister(sock)
            self.sockets.append(sock)
            self.resumed += bool(sock.session_reused)

    def close(self) -> None:
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.close()
        self.sockets.clear()
