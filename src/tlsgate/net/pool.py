"""The keep-alive pool of one app server, in one worker.

How this works: idle connections sit on a stack, most recently used on top.
``acquire`` pops from the top (the connection least likely to have been closed
by the server), ``release`` pushes back, both O(1). A connection that dies
while idle (the server closed it) is only marked dead; ``acquire`` and the
deadline wheel skip and drop it later, so ``discard`` is O(1) too. Idle expiry
is lazy: each pooled connection's deadline is ``pool_idle_timeout`` after its
release, checked on ``acquire`` and by the worker's deadline wheel (which closes
connections nobody came back for).
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

__all__ = ["Pool", "Poolable"]


class Poolable(Protocol):
    """A connection the pool can hold."""

    idle_until: float

    def usable(self) -> bool: ...
    def pooled(self, pool: Pool, deadline: float) -> None: ...
    def unpooled(self) -> None: ...
    def abort(self) -> None: ...


class Pool:
    """Idle keep-alive connections to one server (see the module docstring)."""

    __slots__ = ("_idle", "max_idle", "timeout")

    def __init__(self, max_idle: int, timeout: float) -> None:
        self.max_idle = max_idle
        self.timeout = timeout
        self._idle: deque[Poolable] = deque()

    def __len__(self) -> int:
        return len(self._idle)

    def acquire(self, now: float) -> Poolable | None:
        """The most recently released usable connection, or None."""
        idle = self._idle
        while idle:
            conn = idle.pop()
            conn.unpooled()
            if conn.idle_until > now and conn.usable():
                return conn
            conn.abort()
        return None

    def release(self, conn: Poolable, now: float) -> bool:
        """Keep ``conn`` for the next request; False (caller closes it) when the pool is full."""
        if len(self._idle) >= self.max_idle:
            self._prune(now)  # full: make room by dropping dead and expired entries
            if len(self._idle) >= self.max_idle:
                return False
        self._idle.append(conn)
        conn.pooled(self, now + self.timeout)
        return True

    def discard(self, conn: Poolable) -> None:
        """``conn`` died or expired while pooled."""
        idle = self._idle
        if idle and idle[-1] is conn:
            idle.pop()
        elif idle and idle[0] is conn:
            idle.popleft()
        # else: left in place; acquire/_prune see it is unusable and drop it

    def _prune(self, now: float) -> None:
        kept: deque[Poolable] = deque()
        for c in self._idle:
            if c.idle_until > now and c.usable():
                kept.append(c)
            else:
                c.unpooled()
                c.abort()
        self._idle = kept

    def close(self) -> None:
        """Close every idle connection (the server went unhealthy, or the graph retired)."""
        idle, self._idle = self._idle, deque()
        for conn in idle:
            conn.unpooled()
            conn.abort()
