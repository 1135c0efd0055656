"""Give freed C heap back to the kernel after a burst of connections closes.

Why: every TLS client connection mallocs about 300 KB in a worker (uvloop's
``SSLProtocol`` a 256 KiB read buffer, OpenSSL its SSL state and two memory
BIOs), of which a few tens of KB are ever touched. 256 KiB is above glibc's initial mmap threshold,
but the first time such an mmapped chunk is freed glibc raises the threshold
past it (the "dynamic mmap threshold"), so from then on every buffer comes from
the main heap. When thousands of connections close, their chunks go back to
glibc's free lists and stay resident: glibc only returns memory from the very
top of the heap, and a few long-lived allocations above the freed ones pin it.
The next burst lays its connections out differently, touches more pages, and
the worker's RSS ratchets up from burst to burst with no live object behind it.

``malloc_trim(0)`` also hands back the whole free pages in the middle of the
heap (``MADV_DONTNEED``). Measured on a worker (closed connections freed at
once, see ``ClientConnection.connection_lost``) after four bursts of 2,000 idle
TLS connections: RSS 72, 88, 97, 105 MB without trimming; 45, 45, 46, 46 MB
with it (43 MB before the first burst).

How this works: a ``HeapTrimmer`` samples the number of live connections every
``interval`` seconds (a ``len()``, nothing else). Once that number has stopped
falling and is at least ``min_drop`` below the highest value seen since the
last trim, the memory of the connections that went away is free and unlikely to
be reused soon: it calls ``malloc_trim(0)`` once (a few milliseconds on a worker
that just closed 5,000 connections). A steady load never trims, however large
(freed chunks are reused by the next connections); a burst trims once, after
its connections are gone. Where the C library has no ``malloc_trim`` (musl,
macOS) it does nothing.

A steady load through a few connections frees large buffers too, and the worst of
them came from uvloop itself: for a plain ``asyncio.Protocol`` its TLS transport
decrypts every TLS record (16 KiB at most) into a fresh 256 KiB bytes object and
shrinks it to the record's size. Measured with memray (``--native``) on a worker
relaying 64 KiB-4 MiB uploads for 2 minutes: 26,000 such 262,177-byte allocations
(7 of the 8.6 GB allocated), and glibc's free lists filled with holes of 110-260 KiB,
each just too small for the next one; ``mallinfo2`` showed the heap growing ~1 MiB
a minute with its live bytes flat. ``ClientConnection`` is a buffered protocol
instead (uvloop decrypts into one worker-wide buffer, and the connection keeps an
exact-size copy): the same soak's heap stays flat. The trims every ``every``
seconds (60 by default) stay, for what body chunks of up to 256 KiB still leave.
:func:`fix_mmap_threshold` also flattened it (105 KiB a minute instead of 685 in
that soak), but workers do not call it: with the per-record buffers it mmapped and
unmapped every one of them (measured: +32 µs of kernel time per keep-alive
request, -28 % req/s).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import time
from collections.abc import Callable

__all__ = ["HeapTrimmer", "fix_mmap_threshold", "malloc_trim", "rss_bytes"]

log = logging.getLogger("tlsgate.memory")

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None)  # the C library this process already runs on
        fn = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    trim: Callable[[int], int] = fn
    return trim


_malloc_trim = _load_malloc_trim()


_M_MMAP_THRESHOLD = -3  # mallopt(3) parameter numbers, <malloc.h>
MMAP_THRESHOLD = 128 * 1024


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Have glibc serve every allocation of ``threshold`` bytes or more with its own mmap.

    glibc starts at 128 KiB but raises the threshold each time such a chunk is freed
    (the dynamic mmap threshold), so after the first request body or response chunk of
    256 KiB every later one comes from the heap, where they fragment it: a worker
    relaying large bodies through steady connections grew ~860 KiB a minute with no
    live object behind it, which ``malloc_trim`` cannot give back (live small objects
    pin the pages between the holes). Setting the threshold fixes it where it starts
    and turns the dynamic adjustment off. False where the C library has no ``mallopt``.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold))


def malloc_trim() -> bool:
    """Return free heap pages to the kernel; False where the C library can't (not glibc)."""
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True


def rss_bytes() -> int:
    """This process's resident set size, from ``/proc/self/statm``; 0 where there is none."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


class HeapTrimmer:
    """Calls :func:`malloc_trim` once the number of live connections has dropped.

    Args:
        loop: the worker's event loop (the sampling timer runs on it).
        live: how many connections are open now.
        interval: seconds between samples.
        min_drop: trim when ``live()`` has stopped falling at least this far
            below the highest value seen since the last trim (64 TLS
            connections are about 20 MB).
        every: trim at least this often (seconds) whatever ``live()`` does:
            buffers freed under a steady load fragment the heap too.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        live: Callable[[], int],
        *,
        interval: float = 1.0,
        min_drop: int = 64,
        every: float = 60.0,
    ) -> None:
        self.loop = loop
        self.live = live
        self.interval = interval
        self.min_drop = min_drop
        self.every_samples = max(1, round(every / interval))
        self.trims = 0
        self._samples = 0  # since the last trim
        self._peak = 0
        self._last = 0
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if _malloc_trim is None or self._timer is not None:
            return
        self._peak = self._last = self.live()
        self._timer = self.loop.call_later(self.interval, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self._timer = self.loop.call_later(self.interval, self._tick)
        self.check()

    def check(self) -> bool:
        """Sample now; trim if the live count dropped far enough. True if it trimmed."""
        now = self.live()
        falling, self._last = now < self._last, now
        self._peak = max(self._peak, now)
        closed = self._peak - now
        self._samples += 1
        if (falling or closed < self.min_drop) and self._samples < self.every_samples:
            return False
        self._peak = now
        self._samples = 0
        before = rss_bytes()
        t0 = time.perf_counter()
        if not malloc_trim():
            return False
        self.trims += 1
        log.debug(
            "malloc_trim after %d connection(s) closed: %.1f ms, RSS %.1f -> %.1f MiB",
            closed,
            (time.perf_counter() - t0) * 1000.0,
            before / 2**20,
            rss_bytes() / 2**20,
        )
        return True
