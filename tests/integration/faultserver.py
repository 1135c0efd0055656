"""Fault injection for the fault suites: misbehaving servers, a CA switch, a tiny disk, a lock.

How this works:

* :class:`ScriptedServer` reads one request head per connection (optionally after a
  TLS handshake with a certificate the test chose: untrusted, for the wrong name,
  expired) and plays the script its first path segment names: bytes to send, pauses,
  an RST (``SO_LINGER`` 0), a silence that lasts until the server stops.
  :class:`SilentServer` accepts and never reads or writes.
* :class:`Switch` is a TCP relay in front of a server (Pebble): ``down()`` closes
  its listener and cuts every relayed connection (clients get "connection refused",
  as from a stopped CA), ``hold()`` accepts but relays nothing until ``up()``, which
  lets a test act while a request to the CA is in flight.
* :func:`tiny_tmpfs` mounts a small tmpfs (root only), :meth:`Tmpfs.fill` fills it to
  the last byte and :meth:`Tmpfs.free` gives the space back.
* :class:`SqliteLocker` is another process holding ``BEGIN EXCLUSIVE`` on a SQLite
  database until :meth:`SqliteLocker.release`.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import ThreadedTcpServer


class _Marker:
    """A script step that is not data: see RESET and HANG."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


RESET = _Marker("RESET")  # close with an RST (SO_LINGER 0): the peer gets ECONNRESET
HANG = _Marker("HANG")  # say nothing more until the server stops
Step = bytes | float | _Marker
Script = Sequence[Step]


def _read_head(sock: socket.socket) -> bytes | None:
    """Bytes up to the end of the first request head; None if the peer closed first."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            return None
        buf += data
    return buf


def reset(sock: socket.socket) -> None:
    """Close ``sock`` so that the kernel sends an RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class ScriptedServer(ThreadedTcpServer):
    """Answers each request by the script of its first path segment (``/NAME/...``).

    Args:
        scripts: segment name -> steps; an unknown name is answered 404.
        tls: a server context to handshake with first (None: plain TCP).
    """

    def __init__(
        self, scripts: Mapping[str, Script], *, tls: ssl.SSLContext | None = None, name: str
    ) -> None:
        self.scripts = scripts
        self.tls = tls
        self.halt = threading.Event()
        self.handshake_errors: list[str] = []
        self.requests = 0
        super().__init__(name=name)

    def handle(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        with contextlib.suppress(OSError):
            if self.tls is not None:
                try:
                    sock = self.tls.wrap_socket(sock, server_side=True)
                except (ssl.SSLError, OSError) as exc:
                    self.handshake_errors.append(repr(exc))  # the client refused us
                    sock.close()
                    return
            head = _read_head(sock)
            if head is None:
                sock.close()
                return
            self.requests += 1
            segment = head.split(b" ", 2)[1].decode("latin-1").split("/")[1]
            self.play(sock, self.scripts.get(segment, [NOT_FOUND]))

    def play(self, sock: socket.socket, script: Script) -> None:
        for step in script:
            if step is RESET:
                reset(sock)
                return
            if step is HANG:
                self.halt.wait(30)
            elif isinstance(step, float):
                time.sleep(step)
            else:
                assert isinstance(step, bytes)
                sock.sendall(step)
        time.sleep(0.2)  # let the peer read before the FIN
        sock.close()

    def stop(self) -> None:
        self.halt.set()
        super().stop()


NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class SilentServer(ThreadedTcpServer):
    """Accepts connections and never reads or writes a byte (a hung process)."""

    def __init__(self, *, name: str = "silent") -> None:
        self.halt = threading.Event()
        self.accepted = 0
        super().__init__(name=name)

    def handle(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        self.accepted += 1
        self.halt.wait(30)
        with contextlib.suppress(OSError):
            sock.close()

    def stop(self) -> None:
        self.halt.set()
        super().stop()


def server_context(chain_pem: bytes, key_pem: bytes, directory: Path) -> ssl.SSLContext:
    """A TLS server context for a chain and key (written to ``directory``)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = directory / "chain.pem", directory / "key.pem"
    cert_file.write_bytes(chain_pem)
    key_file.write_bytes(key_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


# ------------------------------------------------------------------------- the CA switch


class Switch:
    """A TCP relay on a fixed port of 127.0.0.1 to ``target_port``; up, held or down."""

    def __init__(self, target_port: int, *, port: int = 0) -> None:
        self.target_port = target_port
        self.port = port
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._released = threading.Event()
        self._released.set()
        self._thread: threading.Thread | None = None
        self.up()

    def up(self) -> None:
        """Listen (if down) and relay (releasing held connections)."""
        with self._lock:
            if self._listener is None:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("127.0.0.1", self.port))
                sock.listen(64)
                self.port = sock.getsockname()[1]
                self._listener = sock
                self._thread = threading.Thread(target=self._accept, args=(sock,), daemon=True)
                self._thread.start()
        self._released.set()

    def hold(self) -> None:
        """Keep accepting, but relay nothing until :meth:`up`."""
        self._released.clear()

    def down(self) -> None:
        """Stop listening and cut every relayed connection: clients are refused."""
        with self._lock:
            listener, self._listener = self._listener, None
            open_now, self._open = self._open, set()
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for sock in open_now:
            with contextlib.suppress(OSError):
                sock.close()
        if self._thread is not None:
            self._thread.join(5)
        self._released.set()  # held relays end (their sockets are closed)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    return
                self._open.add(client)
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        self._released.wait(60)
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
        except OSError:
            client.close()
            return
        with self._lock:
            self._open.add(upstream)
        socks = [client, upstream]
        try:
            while True:
                readable, _, _ = select.select(socks, [], [], 1.0)
                for s in readable:
                    data = s.recv(65536)
                    if not data:
                        return
                    (upstream if s is client else client).sendall(data)
        except (OSError, ValueError):  # closed by down(); ValueError: fd -1 in select
            return
        finally:
            for s in socks:
                with contextlib.suppress(OSError):
                    s.close()
            with self._lock:
                self._open.discard(client)
                self._open.discard(upstream)


# ------------------------------------------------------------------------- a tiny disk


@dataclass
class Tmpfs:
    """A mounted tmpfs and the file that fills it."""

    path: Path
    filler: Path

    def fill(self) -> int:
        """Write into the filler until the file system has no byte left; bytes written."""
        written = 0
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (1 << 16, 4096, 512, 1):  # big pieces, then the last scraps
                block = b"\0" * size
                with contextlib.suppress(OSError):
                    while True:
                        written += os.write(fd, block)
        finally:
            os.close(fd)
        assert os.statvfs(self.path).f_bavail == 0, "the tmpfs is not full"
        return written

    def free(self) -> None:
        """Give the filled space back."""
        with contextlib.suppress(FileNotFoundError):
            self.filler.unlink()

    def available(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize


@contextlib.contextmanager
def tiny_tmpfs(path: Path, size: str = "2m") -> Iterator[Tmpfs]:
    """Mount a tmpfs of ``size`` on ``path`` (created) for the ``with`` body; unmount after.

    Whatever runs on it must be stopped before the body ends (an open file keeps
    the mount busy; then it is detached lazily so nothing is left mounted).
    """
    if os.geteuid() != 0:
        pytest.fail(
            "the disk-full tests mount a tmpfs and must run as root (CI does); "
            f"this is uid {os.geteuid()}"
        )
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs on {path}: {mounted.stderr.strip()}")
    try:
        # the filler lives beside the mount's other content, not in a sub-directory
        yield Tmpfs(path, path / ".filler")
    finally:
        done = subprocess.run(["umount", str(path)], capture_output=True, check=False)
        if done.returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


# ------------------------------------------------------------------------- a locked SQLite

_LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
conn.execute("BEGIN EXCLUSIVE")
conn.execute("UPDATE meta SET value = value WHERE name = 'revision'")
print("LOCKED", flush=True)
sys.stdin.read()
conn.execute("ROLLBACK")
conn.close()
"""


class SqliteLocker:
    """Another process that holds ``BEGIN EXCLUSIVE`` (with a pending write) on ``db``."""

    def __init__(self, db: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _LOCKER, str(db)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != b"LOCKED":
            err = self.proc.stderr.read() if self.proc.stderr else b""
            self.proc.kill()
            raise RuntimeError(f"the locker did not lock {db}: {line!r} {err!r}")
        self.locked_at = time.monotonic()

    def release(self) -> float:
        """Roll back and exit; returns how long the lock was held."""
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        return time.monotonic() - self.locked_at

    def __enter__(self) -> SqliteLocker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
