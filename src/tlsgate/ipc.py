"""Supervisor <-> worker messages over an inherited UNIX socketpair.

How this works: each message is a pickled dataclass framed by an 8-byte header
(payload length, number of file descriptors). Descriptors (listening sockets)
travel as SCM_RIGHTS ancillary data on the first ``sendmsg`` of their message;
the receiver collects every descriptor it gets into a FIFO and hands each
message the count its header names, which is safe because the kernel delivers
ancillary data no later than the bytes it was sent with. Pickle is acceptable
here because both ends are the same program and the socketpair is private to
the parent and its child.

Reading is driven by ``loop.add_reader`` (asyncio protocols can't see
ancillary data); writing is synchronous on a blocking socket because messages
are small and rare (config pushes, health changes).
"""

from __future__ import annotations

import array
import asyncio
import os
import pickle
import socket
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tlsgate.certs.bundle import CertificateBundle
from tlsgate.certs.tickets import TicketKeys
from tlsgate.config.model import BindAddress, Config

_HEADER = struct.Struct("!II")
_MAX_FDS_PER_SEND = 200


# ---- messages, supervisor -> worker ---------------------------------------------------------


@dataclass(frozen=True)
class Configure:
    """Build a runtime from ``config`` and serve on the sockets that come with this message.

    ``binds`` names, in order, the listening sockets attached as descriptors.
    ``ticket_keys``: the node's session ticket secret, the same for every worker
    and every generation until a :class:`RotateTicketKeys` replaces it.
    """

    generation: int
    config: Config
    bundles: tuple[CertificateBundle, ...]
    binds: tuple[BindAddress, ...]
    health: dict[tuple[str, str], bool] = field(default_factory=dict)
    ticket_keys: TicketKeys | None = None


@dataclass(frozen=True)
class HealthUpdate:
    """Active health checking changed a server's state."""

    backend: str
    server: str
    healthy: bool


@dataclass(frozen=True)
class Challenges:
    """ACME challenge responses every worker must answer (the whole current set).

    ``http01``: token -> key authorization; ``tls_alpn01``: name -> (cert PEM, key PEM).
    """

    http01: dict[str, str]
    tls_alpn01: dict[str, tuple[bytes, bytes]]
    serial: int = 0  # answered with ChallengesApplied(serial) once the worker serves them


@dataclass(frozen=True)
class RotateTicketKeys:
    """Encrypt session tickets with ``keys`` from now on, on every current and future context."""

    keys: TicketKeys


@dataclass(frozen=True)
class Stop:
    """Stop accepting, finish in-flight work within ``timeout`` seconds, exit."""

    timeout: float


# ---- messages, worker -> supervisor ---------------------------------------------------------


@dataclass(frozen=True)
class Configured:
    """The worker serves ``generation`` now (or failed to build it: ``error``)."""

    slot: int
    generation: int
    error: str = ""


@dataclass(frozen=True)
class ChallengesApplied:
    """The worker answers the challenges of ``serial`` (its accept paths are switched)."""

    slot: int
    serial: int


Message = (
    Configure | HealthUpdate | Challenges | RotateTicketKeys | Stop | Configured | ChallengesApplied
)


class Channel:
    """One end of the socketpair.

    Args:
        sock: a connected AF_UNIX SOCK_STREAM socket.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = bytearray()
        self._fds: deque[int] = deque()
        self._closed = False

    def send(self, message: Message, fds: list[int] | None = None) -> None:
        """Send one message (blocking). Raises OSError if the peer is gone."""
        payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        fds = fds or []
        data = _HEADER.pack(len(payload), len(fds)) + payload
        self.sock.setblocking(True)
        try:
            view = memoryview(data)
            pending = list(fds)
            while True:
                batch, pending = pending[:_MAX_FDS_PER_SEND], pending[_MAX_FDS_PER_SEND:]
                anc = []
                if batch:
                    anc = [
                        (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", batch).tobytes())
                    ]
                # each sendmsg with descriptors carries at least one byte, so they are delivered
                chunk = view[:1] if pending else view
                if not chunk:
                    raise ValueError("too many descriptors for one message")
                sent = self.sock.sendmsg([chunk], anc)
                view = view[sent:]
                if not pending and not view:
                    break
        finally:
            self.sock.setblocking(False)

    def receive_available(self) -> list[tuple[Message, list[int]]]:
        """Read what is available without blocking; return complete messages with their fds.

        Raises EOFError when the peer closed the channel.
        """
        out: list[tuple[Message, list[int]]] = []
        while True:
            try:
                data, ancdata, _flags, _addr = self.sock.recvmsg(
                    1 << 16, socket.CMSG_SPACE(_MAX_FDS_PER_SEND * 4)
                )
            except (BlockingIOError, InterruptedError):
                break
            for level, kind, cdata in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(cdata[: len(cdata) - (len(cdata) % fds.itemsize)])
                    self._fds.extend(fds)
            if not data:
                self._closed = True
                break
            self._buf += data
        while len(self._buf) >= _HEADER.size:
            length, nfds = _HEADER.unpack_from(self._buf)
            if len(self._buf) < _HEADER.size + length:
                break
            payload = bytes(self._buf[_HEADER.size : _HEADER.size + length])
            del self._buf[: _HEADER.size + length]
            msg_fds = [self._fds.popleft() for _ in range(min(nfds, len(self._fds)))]
            message: Any = pickle.loads(payload)  # noqa: S301 - private socketpair, same program
            out.append((message, msg_fds))
        if self._closed and not out:
            raise EOFError("channel closed by peer")
        return out

    def attach(
        self,
        loop: asyncio.AbstractEventLoop,
        on_message: Callable[[Message, list[int]], None],
        on_eof: Callable[[], None],
    ) -> None:
        """Deliver incoming messages to ``on_message`` from the event loop."""
        self.sock.setblocking(False)

        def readable() -> None:
            try:
                messages = self.receive_available()
            except (EOFError, ConnectionError):
                loop.remove_reader(self.sock.fileno())
                on_eof()
                return
            for message, fds in messages:
                on_message(message, fds)
            if self._closed:
                loop.remove_reader(self.sock.fileno())
                on_eof()

        loop.add_reader(self.sock.fileno(), readable)

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
        self.sock.close()
