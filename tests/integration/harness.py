"""Loopback harness: run a real ``tlsgate serve`` and talk to it as clients would.

How this works: ``Tlsgate`` writes a config (a ``[node]`` and ``[log]`` header
it owns, plus the listeners/certificates/routes/backends a test gives it) into
a work directory, starts ``<venv>/bin/tlsgate serve -c FILE`` in its own
session, and waits for ``tlsgate ready`` in the error log. It knows where the
error and access logs are, sends SIGHUP/SIGTERM, lists the worker processes,
and kills the whole process group at teardown whatever happened. The rest are
clients: ``RawConn`` (a socket, optionally TLS, optionally from a chosen source
address, that reads HTTP/1.1 responses byte-exactly, for pipelining, smuggling
and framing tests), ``s_client`` (``openssl s_client`` and what it reports),
``curl``, and small helpers around httpx. App servers come from
``appserver.py``, in-process (``AppServer``) or as a subprocess (``AppProcess``).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx
import psutil
from appserver import AppServer
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tlsgate.ca.local import IssuedCertificate, LocalCA
from tlsgate.net import ports

free_port = ports.free_port  # the tests take it from here

TLSGATE = Path(sys.executable).parent / "tlsgate"
APPSERVER = Path(__file__).with_name("appserver.py")
READY_LINE = "tlsgate ready"
RELOADED_LINE = "reload complete"
MiB = 1024 * 1024

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T], timeout: float, interval: float = 0.05, what: str = "condition"
) -> T:
    """Poll ``predicate`` until it returns something truthy; return that.

    Raises:
        TimeoutError: it stayed falsy for ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def toml_str(value: str | Path) -> str:
    """A TOML basic string (json.dumps escapes are a subset TOML accepts)."""
    return json.dumps(str(value))


def toml_value(value: object) -> str:
    """A Python value as a TOML value (inline tables for dicts)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return toml_str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {value!r}")


def table(section: str, **values: object) -> str:
    """One ``[[section]]`` table; keys with a ``None`` value are left out.

    >>> table("routes", listener="https", backend="api", hosts=["a.test"])
    '[[routes]]\nlistener = "https"\nbackend = "api"\nhosts = ["a.test"]\n\n'
    """
    lines = [f"[[{section}]]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in values.items() if v is not None]
    return "\n".join(lines) + "\n\n"


# --------------------------------------------------------------------------- PKI


@dataclass(frozen=True)
class CertFiles:
    """One issued certificate written to disk for ``issuer = "files"``."""

    name: str
    domains: tuple[str, ...]
    cert_file: Path
    key_file: Path
    cert_pem: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    def toml(self) -> str:
        """This certificate as a ``[[certificates]]`` table."""
        domains = ", ".join(toml_str(d) for d in self.domains)
        return (
            "[[certificates]]\n"
            f"name = {toml_str(self.name)}\n"
            f"domains = [{domains}]\n"
            'issuer = "files"\n'
            f"cert_file = {toml_str(self.cert_file)}\n"
            f"key_file = {toml_str(self.key_file)}\n\n"
        )


def write_issued(
    issued: IssuedCertificate, directory: Path, name: str, domains: tuple[str, ...]
) -> CertFiles:
    """Write a leaf (chain) and its key as ``NAME.pem`` / ``NAME.key`` in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_file = directory / f"{name}.pem"
    key_file = directory / f"{name}.key"
    cert_file.write_bytes(issued.chain_pem)
    key_file.write_bytes(issued.key_pem)
    key_file.chmod(0o600)
    return CertFiles(name, domains, cert_file, key_file, issued.cert_pem)


def issue_files(
    ca: LocalCA, directory: Path, name: str, domains: tuple[str, ...], key_type: str
) -> CertFiles:
    issued = ca.issue(list(domains), key_type=key_type)  # type: ignore[arg-type]
    return write_issued(issued, directory, name, domains)


def key_kind(cert: x509.Certificate) -> str:
    """The key type: "ecdsa", "rsa", or the key class name for anything else."""
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "ecdsa"
    if isinstance(key, rsa.RSAPublicKey):
        return "rsa"
    return type(key).__name__


def dns_names(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(n) for n in san.get_values_for_type(x509.DNSName)]


def client_context(ca_pem: bytes) -> ssl.SSLContext:
    """A client context that trusts only ``ca_pem`` and verifies host names."""
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


MAIN_NAMES = ("localhost", "example.test", "*.example.test")


@dataclass(frozen=True)
class Pki:
    """The session's CA and the certificates written from it."""

    ca: LocalCA
    ca_file: Path
    ecdsa: CertFiles  # MAIN_NAMES, ECDSA P-256, certificate name "main-ecdsa"
    rsa: CertFiles  # MAIN_NAMES, RSA 2048, certificate name "main-rsa"
    other: CertFiles  # other.test, certificate name "other"
    fallback: CertFiles  # fallback.test, certificate name "fallback"

    @property
    def ca_pem(self) -> bytes:
        return self.ca.cert_pem

    def toml(self) -> str:
        """All four certificates as ``[[certificates]]`` tables."""
        return "".join(c.toml() for c in (self.ecdsa, self.rsa, self.other, self.fallback))


# ---------------------------------------------------------------------- tlsgate


class TlsgateFailed(AssertionError):
    """tlsgate did not do what the harness waited for; carries its logs."""


class Tlsgate:
    """One ``tlsgate serve`` process (supervisor + workers) in ``workdir``.

    Args:
        workdir: created if missing; holds tlsgate.toml, error.log, access.log,
            stdout.log and the node's data_dir.
        config: TOML for everything but ``[node]`` and ``[log]`` (certificates,
            listeners, routes, backends), with the test's values already filled.
        workers: ``node.workers``.
        shutdown_timeout: ``node.shutdown_timeout`` as a duration string.
        ready_timeout: how long ``start()`` waits for the ready line.
    """

    def __init__(
        self,
        workdir: Path,
        config: str,
        *,
        workers: int = 1,
        shutdown_timeout: str = "10s",
        log_level: str = "info",
        ready_timeout: float = 20.0,
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "tlsgate.toml"
        self.error_log = workdir / "error.log"
        self.access_log = workdir / "access.log"
        self.stdout_log = workdir / "stdout.log"
        self.data_dir = workdir / "data"
        self.workers = workers
        self.shutdown_timeout = shutdown_timeout
        self.log_level = log_level
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.write_config(config)

    # -- config --------------------------------------------------------------

    def render(self, config: str) -> str:
        head = (
            "[node]\n"
            'name = "it"\n'
            f"data_dir = {toml_str(self.data_dir)}\n"
            f"workers = {self.workers}\n"
            f"shutdown_timeout = {toml_str(self.shutdown_timeout)}\n\n"
            "[log]\n"
            f"access = {toml_str(self.access_log)}\n"
            f"error = {toml_str(self.error_log)}\n"
            f"level = {toml_str(self.log_level)}\n\n"
        )
        return head + config

    def write_config(self, config: str) -> None:
        """Replace the config file atomically (a reload never reads half a file)."""
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(self.render(config))
        tmp.replace(self.config_path)

    # -- process -------------------------------------------------------------

    def start(self) -> Tlsgate:
        """Start and wait until every worker listens.

        Raises:
            TlsgateFailed: it exited or did not log ``tlsgate ready`` in time.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.stdout_log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(TLSGATE), "serve", "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # one process group to kill at teardown
                cwd=self.workdir,
            )
        self.wait_for_log(READY_LINE, 1, self.ready_timeout)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def worker_pids(self) -> list[int]:
        """The supervisor's live child processes (the workers)."""
        try:
            children = psutil.Process(self.pid).children(recursive=False)
        except psutil.NoSuchProcess:
            return []
        pids = []
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                if child.status() != psutil.STATUS_ZOMBIE:
                    pids.append(child.pid)
        return sorted(pids)

    def signal(self, sig: signal.Signals) -> None:
        os.kill(self.pid, sig)

    def reload(self, timeout: float = 20.0) -> None:
        """SIGHUP, then wait for one more ``reload complete`` line in the error log."""
        before = self.error_log_text().count(RELOADED_LINE)
        self.signal(signal.SIGHUP)
        self.wait_for_log(RELOADED_LINE, before + 1, timeout)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait for the exit, return the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TlsgateFailed(
                f"tlsgate did not exit within {timeout}s of SIGTERM\n{self.diagnostics()}"
            ) from None

    def kill(self) -> None:
        """SIGKILL our process group (supervisor and workers); never raises."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)

    def __enter__(self) -> Tlsgate:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()

    # -- logs ----------------------------------------------------------------

    def error_log_text(self) -> str:
        try:
            return self.error_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def diagnostics(self) -> str:
        def tail(path: Path) -> str:
            try:
                return path.read_text(errors="replace")[-4000:]
            except FileNotFoundError:
                return "(missing)"

        code = None if self.proc is None else self.proc.poll()
        return (
            f"exit status: {code}\n--- error log ({self.error_log}) ---\n{tail(self.error_log)}"
            f"\n--- stdout/stderr ---\n{tail(self.stdout_log)}"
        )

    def wait_for_log(self, text: str, count: int, timeout: float) -> None:
        """Wait until the error log holds ``text`` at least ``count`` times.

        Raises:
            TlsgateFailed: the process exited first, or the timeout passed.
        """
        deadline = time.monotonic() + timeout
        while self.error_log_text().count(text) < count:
            if self.proc is not None and self.proc.poll() is not None:
                raise TlsgateFailed(f"tlsgate exited waiting for {text!r}\n{self.diagnostics()}")
            if time.monotonic() > deadline:
                raise TlsgateFailed(
                    f"no {text!r} (x{count}) in the error log after {timeout}s\n"
                    f"{self.diagnostics()}"
                )
            time.sleep(0.05)

    def access_log_lines(self) -> list[dict[str, Any]]:
        """Every complete JSON line of the access log so far."""
        try:
            data = self.access_log.read_text()
        except FileNotFoundError:
            return []
        lines = data.split("\n")
        # The last element is "" or a line still being written.
        return [json.loads(line) for line in lines[:-1] if line.strip()]

    def wait_access_log(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> dict[str, Any]:
        """The first access-log entry matching ``predicate`` (waiting for it to be written)."""

        def find() -> dict[str, Any] | None:
            return next((e for e in self.access_log_lines() if predicate(e)), None)

        found = wait_until(find, timeout, what="an access log entry")
        assert found is not None
        return found


class ThreadedTcpServer:
    """A TCP server on 127.0.0.1 that serves each connection in its own thread.

    Subclasses implement ``handle(sock, peer)``: it runs in that thread and owns the
    socket (record what it saw, close it). ``stop()`` closes the listener and every
    accepted socket, so no handler thread outlives the test.
    """

    def __init__(self, *, name: str = "server", conn_timeout: float = 10.0) -> None:
        self.name = name
        self._conn_timeout = conn_timeout
        self._accepted: list[socket.socket] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.05)
        self.port: int = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True, name=name)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, peer = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(self._conn_timeout)
            self._accepted.append(sock)
            threading.Thread(target=self.handle, args=(sock, peer), daemon=True).start()

    def handle(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()
        for sock in self._accepted:
            with contextlib.suppress(OSError):
                sock.close()


class RssSampler(threading.Thread):
    """Sample the resident memory of a tlsgate's workers every ``interval`` s.

    ``max_rss`` is the largest single-worker RSS seen; ``samples`` how many were taken.
    """

    def __init__(self, gate: Tlsgate, interval: float = 0.1) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.gate = gate
        self.interval = interval
        self.max_rss = 0
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            for pid in self.gate.worker_pids():
                with contextlib.suppress(psutil.NoSuchProcess):
                    rss: int = psutil.Process(pid).memory_info().rss
                    self.max_rss = max(self.max_rss, rss)
                    self.samples += 1
            self._halt.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._halt.set()
        self.join(5)


# ------------------------------------------------------------------ app servers


class AppProcess:
    """``appserver.py`` as a subprocess, so a test can kill and restart it.

    ``port`` 0 lets the first start pick one; restarts reuse it.
    """

    def __init__(
        self,
        name: str,
        port: int = 0,
        *,
        ws: bool = False,
        host: str = "127.0.0.1",
        log_dir: Path | None = None,
    ) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.ws = ws
        self.ws_port = 0
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> AppProcess:
        cmd = [
            sys.executable,
            str(APPSERVER),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--name",
            self.name,
        ]
        if self.ws:
            cmd += ["--ws-port", str(self.ws_port)]
        with contextlib.ExitStack() as files:
            err: int | IO[bytes] = subprocess.DEVNULL
            if self.log_dir is not None:
                self.log_dir.mkdir(parents=True, exist_ok=True)
                err = files.enter_context((self.log_dir / f"app-{self.name}.log").open("ab"))
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err
            )
        assert self.proc.stdout is not None
        line = b""
        deadline = time.monotonic() + timeout
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(left, 0))
            if not ready:
                self.kill()
                raise RuntimeError(f"app {self.name} did not start within {timeout}s")
            chunk = os.read(self.proc.stdout.fileno(), 256)
            if not chunk:
                raise RuntimeError(f"app {self.name} exited: {self.proc.wait()}")
            line += chunk
        _, port, ws_port = line.decode().split()
        self.port, self.ws_port = int(port), int(ws_port)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close()

    def kill(self) -> None:
        """SIGKILL: the app dies without closing anything gracefully."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._close()

    def _close(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> AppProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def app_admin(address: str, path: str, timeout: float = 5.0) -> Any:
    """GET an app server's own endpoint directly (not through tlsgate); JSON result."""
    host, _, port = address.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200, (path, resp.status, body)
        return json.loads(body)
    finally:
        conn.close()


def app_saw(address: str, marker: str) -> bool:
    """Did the app server receive ``marker`` anywhere: in a request head or raw bytes?"""
    seen = app_admin(address, "/admin/seen")
    if any(marker in json.dumps(r) for r in seen["requests"]):
        return True
    return any(marker in raw for raw in seen["raw"].values())


# ---------------------------------------------------------------------- clients


@dataclass
class RawResponse:
    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    trailers: list[tuple[str, str]] = field(default_factory=list)
    interim: list[tuple[int, list[tuple[str, str]]]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        """All values of ``name`` joined with ", ", or None."""
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(values) if values else None

    def json(self) -> Any:
        return json.loads(self.body)


class PeerClosed(Exception):
    """The server closed the connection before a whole response arrived."""


class RawConn:
    """A client socket that speaks HTTP/1.1 by hand.

    Args:
        port: the tlsgate listener port on ``host``.
        tls: a client SSL context for https listeners (None: plain TCP).
        server_hostname: SNI / name to verify; None with ``tls`` sends no SNI
            (and then hostname checking must be off in ``tls``).
        source: bind the client socket to this address (e.g. "127.0.0.2").
    """

    def __init__(
        self,
        port: int,
        *,
        host: str = "127.0.0.1",
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        source: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        sock = socket.create_connection(
            (host, port), timeout=timeout, source_address=(source, 0) if source else None
        )
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname=server_hostname)
        self.sock = sock
        self.buf = bytearray()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_more(self) -> bool:
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            return False
        self.buf += data
        return True

    def read_line(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[: i + 2]
                return line
            if not self.recv_more():
                raise PeerClosed(f"connection closed; unparsed: {bytes(self.buf)[:200]!r}")

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self.recv_more():
                raise PeerClosed(f"connection closed {n - len(self.buf)} bytes short")
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def read_fields(self) -> list[tuple[str, str]]:
        fields = []
        while line := self.read_line():
            name, _, value = line.decode("latin-1").partition(":")
            fields.append((name, value.strip()))
        return fields

    def read_response(self, method: str = "GET") -> RawResponse:
        """Read one final response (collecting any 1xx before it) and its body.

        Raises:
            PeerClosed: the connection ended first.
        """
        interim = []
        while True:
            status_line = self.read_line().decode("latin-1")
            version, _, rest = status_line.partition(" ")
            code, _, reason = rest.partition(" ")
            headers = self.read_fields()
            status = int(code)
            if 100 <= status < 200 and status != 101:
                interim.append((status, headers))
                continue
            break
        resp = RawResponse(version, status, reason, headers, interim=interim)
        if method == "HEAD" or status in (101, 204, 304):
            return resp
        te = (resp.header("transfer-encoding") or "").lower()
        if te.split(",")[-1].strip() == "chunked":
            body = bytearray()
            while True:
                size_line = self.read_line().split(b";")[0]
                size = int(size_line, 16)
                if size == 0:
                    resp.trailers = self.read_fields()
                    break
                body += self.read_exact(size)
                if self.read_exact(2) != b"\r\n":
                    raise AssertionError("chunk not followed by CRLF")
            resp.body = bytes(body)
        elif (length := resp.header("content-length")) is not None:
            resp.body = self.read_exact(int(length))
        else:
            resp.body = self.read_to_close()
        return resp

    def read_to_close(self) -> bytes:
        while self.recv_more():
            pass
        data = bytes(self.buf)
        self.buf.clear()
        return data

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True if the server closes the connection (EOF/RST) within ``timeout``,
        with no further bytes; False if it stays open (or sends more)."""
        if self.buf:
            return False
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        except (ConnectionResetError, ssl.SSLError):
            return True
        if data:
            self.buf += data
            return False
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> RawConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def request_bytes(
    method: str,
    target: str,
    host: str,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
) -> bytes:
    """A well-formed HTTP/1.1 request (Content-Length added when there is a body)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    fields = list(headers or [])
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in fields):
        fields.append(("Content-Length", str(len(body))))
    lines += [f"{k}: {v}" for k, v in fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class TLSProbe:
    """What ``openssl s_client`` reported about one handshake."""

    returncode: int
    output: str
    cert: x509.Certificate | None
    protocol: str | None
    alpn: str | None
    peer_signature_type: str | None

    @property
    def handshake_ok(self) -> bool:
        return self.cert is not None and self.protocol is not None

    @property
    def key_kind(self) -> str | None:
        return None if self.cert is None else key_kind(self.cert)


def s_client(
    port: int,
    *args: str,
    servername: str | None = None,
    ca_file: Path | None = None,
    host: str = "127.0.0.1",
    timeout: float = 15.0,
    openssl_conf: Path | None = None,
) -> TLSProbe:
    """Run ``openssl s_client`` against ``host:port`` and parse what it printed.

    Args:
        args: extra s_client options ("-tls1_2", "-cipher", ...).
        servername: SNI to send; None sends none (``-noservername``).
        openssl_conf: use this OPENSSL_CONF (e.g. an empty file to drop the
            distribution's MinProtocol/SECLEVEL so an old-TLS offer is real).
    """
    cmd = ["openssl", "s_client", "-connect", f"{host}:{port}"]
    cmd += ["-servername", servername] if servername else ["-noservername"]
    if ca_file is not None:
        cmd += ["-CAfile", str(ca_file), "-verify_return_error"]
    cmd += list(args)
    env = dict(os.environ)
    if openssl_conf is not None:
        env["OPENSSL_CONF"] = str(openssl_conf)
    proc = subprocess.run(
        cmd, input=b"", capture_output=True, timeout=timeout, env=env, check=False
    )
    out = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
    cert = None
    m = re.search(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", out, re.S)
    if m:
        cert = x509.load_pem_x509_certificate(m.group(0).encode())
    # "New, <version>, Cipher is X" names the version that introduced the cipher, not
    # the protocol; the SSL-Session block's "Protocol :" line names the protocol but
    # is printed even after a failed handshake (so it counts only with a cipher), and
    # is missing for TLS 1.3 when no session ticket arrived before s_client quit;
    # then the TLS_* cipher (TLS 1.3 only) tells.
    established = re.search(r"^New, \S+, Cipher is (?!\(NONE\))(\S+)", out, re.M)
    protocol = None
    if established:
        line = re.search(r"^\s*Protocol\s*: (\S+)", out, re.M)
        if line:
            protocol = line.group(1)
        elif established.group(1).startswith("TLS_"):
            protocol = "TLSv1.3"
    alpn = re.search(r"^ALPN protocol: (\S+)", out, re.M)
    sig = re.search(r"^Peer signature type: (\S+)", out, re.M)
    return TLSProbe(
        proc.returncode,
        out,
        cert,
        protocol,
        alpn.group(1) if alpn else None,
        sig.group(1) if sig else None,
    )


@dataclass
class CurlResult:
    returncode: int
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    stderr: str

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(values) if values else None


def curl(*args: str, timeout: float = 15.0) -> CurlResult:
    """Run ``curl -sS -i --ipv4 ARGS``; split the (last) response head from the body."""
    proc = subprocess.run(
        # --ipv4: tlsgate binds 127.0.0.1 in tests; "localhost" may resolve to ::1 first.
        ["curl", "-sS", "-i", "--ipv4", "--max-time", str(int(timeout)), *args],
        capture_output=True,
        timeout=timeout + 5,
        check=False,
    )
    data = proc.stdout
    status = 0
    headers: list[tuple[str, str]] = []
    # With -i, interim (1xx) heads come first, and with -L every redirect's head
    # (curl drops redirect bodies): the last head is the final response's.
    while data.startswith(b"HTTP/"):
        head, _, data = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = [(k, v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
    return CurlResult(proc.returncode, status, headers, data, proc.stderr.decode(errors="replace"))


def https_client(
    ca_pem: bytes, *, local_address: str | None = None, timeout: float = 10.0
) -> httpx.Client:
    """An httpx client trusting ``ca_pem``, optionally bound to a source address."""
    ctx = client_context(ca_pem)
    transport = httpx.HTTPTransport(verify=ctx, local_address=local_address)
    return httpx.Client(transport=transport, timeout=timeout)


def http_client(*, local_address: str | None = None, timeout: float = 10.0) -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=local_address)
    return httpx.Client(transport=transport, timeout=timeout)


def sni_get(
    client: httpx.Client, port: int, name: str, path: str = "/echo", **kw: Any
) -> httpx.Response:
    """GET https://NAME:PORT/PATH while connecting to 127.0.0.1 (SNI and Host = NAME).

    Use one client per name: httpx pools connections by the URL's origin, not by SNI.
    """
    return client.get(
        f"https://127.0.0.1:{port}{path}",
        headers={"Host": f"{name}:{port}", **kw.pop("headers", {})},
        extensions={"sni_hostname": name},
        **kw,
    )


# Fixture factories (see conftest.py).
AppFactory = Callable[..., AppServer]
AppProcFactory = Callable[..., AppProcess]
GateFactory = Callable[..., Tlsgate]


# The bodies of the fixtures that tests/integration and tests/peers both offer.


def build_pki(ca: LocalCA, directory: Path) -> Pki:
    """The CA file and the standard certificates, written into ``directory``."""
    ca_file, _ = ca.write(directory)
    return Pki(
        ca=ca,
        ca_file=ca_file,
        ecdsa=issue_files(ca, directory, "main-ecdsa", MAIN_NAMES, "ecdsa-p256"),
        rsa=issue_files(ca, directory, "main-rsa", MAIN_NAMES, "rsa-2048"),
        other=issue_files(ca, directory, "other", ("other.test",), "ecdsa-p256"),
        fallback=issue_files(ca, directory, "fallback", ("fallback.test",), "ecdsa-p256"),
    )


def gate_factory(workdir: Path) -> Iterator[GateFactory]:
    """Yields ``make_gate(config, workers=1, ...)``; every gate it started is killed after."""
    started: list[Tlsgate] = []

    def make(config: str, **kw: object) -> Tlsgate:
        gate = Tlsgate(workdir / f"gate{len(started)}", config, **kw)  # type: ignore[arg-type]
        started.append(gate)
        return gate.start()

    yield make
    for gate in started:
        gate.kill()


def app_factory() -> Iterator[AppFactory]:
    """Yields ``make_app(name, ws=False, host=...)``; every app it started is stopped after."""
    started: list[AppServer] = []

    def make(name: str, *, ws: bool = False, host: str = "127.0.0.1") -> AppServer:
        app = AppServer(name, host, ws=ws).start()
        started.append(app)
        return app

    yield make
    for app in started:
        app.stop()
