"""One edge-triggered epoll set for the sockets the L4 data plane drives itself.

How this works: L4 sessions move bytes with ``splice`` on raw descriptors, so
they need readiness, not transports. The event loop's ``add_reader`` gives it,
but uvloop creates a libuv poll handle per descriptor and closes it when the
last callback is removed; a passthrough connection went through four of them
(ClientHello, connect, two spliced sockets), about 24 ``epoll_ctl`` and 6
``ioctl`` calls per connection, measured with ``strace -c``. Here each socket
is registered once, edge-triggered, for input, output and the peer's FIN, and
stays registered until it is closed (closing a descriptor removes it from the
set): two ``epoll_ctl`` per connection. The set's own descriptor is one reader
of the event loop; when it is readable, :meth:`Poller._ready` collects the
events and calls each socket's :class:`PollTarget`.

Edge-triggered means an event is reported once per change (new bytes, space
to write, FIN, error), so a target records what each event says and keeps
going until the kernel says ``EAGAIN``; an event it cannot use yet (bytes
that arrive while the server is still being connected) is remembered, not
re-reported. A target may get an event that no longer applies (it already
read the bytes): every read and write handles ``EAGAIN``.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
from typing import Protocol

__all__ = ["EPOLLERR", "EPOLLHUP", "EPOLLIN", "EPOLLOUT", "EPOLLRDHUP", "PollTarget", "Poller"]

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLLRDHUP = select.EPOLLRDHUP
EPOLLERR = select.EPOLLERR
EPOLLHUP = select.EPOLLHUP
_EVENTS = EPOLLIN | EPOLLOUT | EPOLLRDHUP | select.EPOLLET
_BATCH = 512  # events taken per wake-up; more stay ready for the next one


class PollTarget(Protocol):
    """What owns a registered socket: told what each event on ``fd`` says."""

    def on_events(self, fd: int, events: int) -> None: ...


class Poller:
    """The worker's epoll set for raw sockets (see the module docstring).

    The set is created, and made a reader of ``loop``, on the first :meth:`add`.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._epoll: select.epoll | None = None
        self._targets: dict[int, PollTarget] = {}

    def add(self, fd: int, target: PollTarget) -> None:
        """Watch ``fd`` for everything, edge-triggered, on behalf of ``target``."""
        epoll = self._epoll
        if epoll is None:
            epoll = self._open()
        epoll.register(fd, _EVENTS)
        self._targets[fd] = target

    def retarget(self, fd: int, target: PollTarget) -> None:
        """Send ``fd``'s events to another owner from now on (no system call)."""
        self._targets[fd] = target

    def forget(self, fd: int) -> None:
        """``fd`` is about to be closed, which takes it out of the set by itself."""
        self._targets.pop(fd, None)

    def remove(self, fd: int) -> None:
        """Stop watching ``fd``, which lives on (handed to the event loop's transports)."""
        if self._targets.pop(fd, None) is not None and self._epoll is not None:
            with contextlib.suppress(OSError):  # already closed
                self._epoll.unregister(fd)

    def __len__(self) -> int:
        return len(self._targets)

    def _open(self) -> select.epoll:
        epoll = select.epoll()
        self._epoll = epoll
        self.loop.add_reader(epoll.fileno(), self._ready)
        return epoll

    def _ready(self) -> None:
        epoll = self._epoll
        if epoll is None:
            return
        targets = self._targets
        for fd, events in epoll.poll(0, _BATCH):
            target = targets.get(fd)
            if target is not None:
                target.on_events(fd, events)

    def close(self) -> None:
        epoll = self._epoll
        if epoll is not None:
            self._epoll = None
            with contextlib.suppress(ValueError, OSError, RuntimeError):  # the loop is closed
                self.loop.remove_reader(epoll.fileno())
            epoll.close()
        self._targets.clear()
