"""Timeouts by deadline: one coarse timer wheel per worker instead of a timer per event.

How this works: an object that can time out (a client connection waiting for a
request head, an upstream connection waiting for a response, an idle pooled
connection) keeps a ``deadline`` (loop time, ``inf`` when none) and is put in
the wheel's slot for that deadline. Moving a deadline *later*, which is what
keep-alive traffic does on every request, costs one float store: the object
stays in its earlier slot, and when that slot comes due the wheel sees the new
deadline and moves it on. Only a deadline moved *earlier* than its slot is
moved. A closed object is ``discard``-ed at once, so the wheel never keeps a
dead connection alive. One ``call_later`` ticks every ``resolution`` seconds
while anything is armed; a timeout fires up to one resolution late, never early.

This replaces ``loop.call_later`` + ``TimerHandle.cancel`` per request (each
allocates a handle and touches libuv's timer heap) with a slot lookup.
"""

from __future__ import annotations

import asyncio
import math
from typing import Protocol

__all__ = ["Deadlines", "Timed"]

INF = math.inf


class Timed(Protocol):
    """What the wheel needs of an object: its deadline, its slot, and what to do then."""

    deadline: float
    slot: int  # 0 = in no slot

    def deadline_reached(self, now: float) -> None:
        """Called once ``deadline`` has passed; the object is no longer in the wheel."""


class _Cancellable(Protocol):
    # uvloop's TimerHandle is no asyncio.TimerHandle subclass, and compiled code checks
    def cancel(self) -> None: ...


class Deadlines:
    """A hashed timer wheel with lazy re-arming (see the module docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, resolution: float = 0.05) -> None:
        self.loop = loop
        self.resolution = resolution
        # slot number -> the objects in it (a dict: O(1) removal, insertion order)
        self._slots: dict[int, dict[Timed, None]] = {}
        self._timer: _Cancellable | None = None
        self._done = int(loop.time() / resolution)  # every slot <= this has been processed

    def arm(self, obj: Timed, deadline: float) -> None:
        """Set ``obj``'s deadline; it is called back once the loop time passes it."""
        obj.deadline = deadline
        slot = max(int(deadline / self.resolution) + 1, self._done + 1)
        current = obj.slot
        if current:
            if current <= slot:
                return  # its slot comes first; it is moved on from there
            old = self._slots.get(current)
            if old is not None:
                old.pop(obj, None)
        obj.slot = slot
        bucket = self._slots.get(slot)
        if bucket is None:
            self._slots[slot] = {obj: None}
        else:
            bucket[obj] = None
        if self._timer is None:
            self._timer = self.loop.call_later(self.resolution, self._tick)

    @staticmethod
    def disarm(obj: Timed) -> None:
        """No deadline any more (the wheel drops the object when its slot comes)."""
        obj.deadline = INF

    def discard(self, obj: Timed) -> None:
        """Forget ``obj`` now (it closed): the wheel keeps no reference to it."""
        obj.deadline = INF
        if obj.slot:
            bucket = self._slots.get(obj.slot)
            if bucket is not None:
                bucket.pop(obj, None)
            obj.slot = 0

    def __len__(self) -> int:
        return sum(len(b) for b in self._slots.values())

    def _tick(self) -> None:
        self._timer = None
        now = self.loop.time()
        due = int(now / self.resolution)
        slots = self._slots
        todo: range | list[int]
        if due - self._done > len(slots):
            todo = sorted(s for s in slots if s <= due)  # a long stall: visit only real slots
        else:
            todo = range(self._done + 1, due + 1)
        self._done = due
        for s in todo:
            bucket = slots.pop(s, None)
            if bucket is None:
                continue
            for obj in bucket:
                obj.slot = 0
                deadline = obj.deadline
                if deadline == INF:
                    continue
                if deadline <= now:
                    obj.deadline = INF
                    obj.deadline_reached(now)
                else:
                    self.arm(obj, deadline)
        if slots:
            self._schedule()

    def _schedule(self) -> None:
        # a method of its own: after arm() ran, the compiled _tick must not assume that
        # self._timer is still the None it set at its start
        if self._timer is None:
            self._timer = self.loop.call_later(self.resolution, self._tick)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._slots.clear()
