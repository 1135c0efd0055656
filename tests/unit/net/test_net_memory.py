"""What keeps a worker's memory from ratcheting up after bursts of connections.

Two things, both needed (tests/integration/test_it_memory_bursts.py measures
them together on a real worker): a closed connection must be freed by reference
counting alone, the moment it closes, not by a later full collection of the
cyclic GC; and ``HeapTrimmer`` must hand the freed C heap back to the kernel
once, after the connections are gone, and never under a steady load.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from typing import cast

import pytest

from tlsgate.net import memory
from tlsgate.net.memory import HeapTrimmer, malloc_trim, rss_bytes
from tlsgate.net.testing import FakeLoop, Harness

CONFIG = """
[[listeners]]
name = "web"
bind = ["127.0.0.1:8080"]
protocol = "http"
backend = "app"
header_timeout = "5s"

[[backends]]
name = "app"
servers = ["127.0.0.1:9000"]
"""

GET = b"GET /a HTTP/1.1\r\nHost: example.com\r\n\r\n"


class Watch:
    """Which of the watched objects only the cyclic GC could free.

    The GC is off while a test runs, so only reference counting frees anything. Objects
    are watched by id, not by weakref (mypyc-compiled classes need not support weakrefs),
    and garbage that other tests left behind is not counted.
    """

    def __init__(self) -> None:
        self.watched: dict[int, str] = {}

    def __call__(self, *objects: object) -> None:
        for obj in objects:
            self.watched[id(obj)] = type(obj).__qualname__

    def left_for_gc(self) -> list[str]:
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            gc.collect()
            return sorted(
                name
                for o in gc.garbage
                if (name := self.watched.get(id(o))) == type(o).__qualname__
            )
        finally:
            gc.set_debug(0)
            gc.garbage.clear()


@pytest.fixture
def watch() -> Iterator[Watch]:
    gc.collect()
    gc.disable()
    try:
        yield Watch()
    finally:
        gc.enable()
        gc.collect()


# ---- closed connections are freed at once ---------------------------------------------------


def test_a_closed_idle_client_connection_is_freed_without_the_cyclic_gc(
    h: Harness, watch: Watch
) -> None:
    conn, _transport = h.client()
    watch(conn, conn.parser)
    conn.connection_lost(None)
    del conn
    assert watch.left_for_gc() == []


def test_a_client_connection_closed_mid_request_body_is_freed_without_the_cyclic_gc(
    h: Harness, watch: Watch
) -> None:
    up = h.pooled_upstream()
    conn, _transport = h.client()
    conn.data_received(b"POST /upload HTTP/1.1\r\nHost: example.com\r\nContent-Length: 100\r\n\r\n")
    conn.data_received(b"x" * 10)  # a slow POST: the body never ends
    upstream = h.upstream_of(up)
    assert conn.receiving is not None
    watch(conn, conn.receiving, upstream)
    conn.connection_lost(ConnectionResetError())
    upstream.connection_lost(None)  # the exchange closed it (it can't be reused)
    h.upstreams.clear()
    del conn, upstream
    assert watch.left_for_gc() == []


def test_a_closed_upstream_connection_is_freed_without_the_cyclic_gc(
    h: Harness, watch: Watch
) -> None:
    up = h.pooled_upstream()
    conn, client = h.client()
    conn.data_received(GET)
    upstream = h.upstream_of(up)
    upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert client.data().endswith(b"ok")
    watch(upstream)
    upstream.connection_lost(None)  # the server closed the pooled connection
    h.upstreams.clear()
    del upstream
    assert watch.left_for_gc() == []


# ---- HeapTrimmer --------------------------------------------------------------------------


class Live:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> int:
        return self.n


@pytest.fixture
def trims(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []

    def fake() -> bool:
        calls.append(1)
        return True

    monkeypatch.setattr(memory, "malloc_trim", fake)
    return calls


def trimmer(live: Live, loop: FakeLoop | None = None) -> HeapTrimmer:
    return HeapTrimmer(cast(asyncio.AbstractEventLoop, loop or FakeLoop()), live, min_drop=64)


def test_a_growing_or_steady_load_never_trims(trims: list[int]) -> None:
    live = Live()
    t = trimmer(live)
    for n in (0, 500, 5000, 5000, 4990, 5000, 5010, 4980):
        live.n = n
        assert not t.check()
    assert trims == []


def test_a_burst_that_ends_trims_once_after_the_count_stops_falling(trims: list[int]) -> None:
    live = Live()
    t = trimmer(live)
    for n in (2000, 5000, 3000, 800):  # closing: still falling, nothing yet
        live.n = n
        assert not t.check()
    live.n = 0
    assert not t.check()  # fell again since the last sample
    assert t.check()  # stopped falling, 5000 below the peak: trim
    assert not t.check()  # and only once
    assert trims == [1]
    assert t.trims == 1


def test_a_small_drop_does_not_trim(trims: list[int]) -> None:
    live = Live()
    t = trimmer(live)
    live.n = 100
    t.check()
    live.n = 40
    t.check()
    t.check()
    assert trims == []


def test_the_next_burst_is_measured_from_the_count_after_the_trim(trims: list[int]) -> None:
    live = Live()
    t = trimmer(live)
    for n in (1000, 0, 0):
        live.n = n
        t.check()
    assert trims == [1]
    for n in (50, 0, 0):  # a burst smaller than min_drop
        live.n = n
        t.check()
    assert trims == [1]


def test_a_steady_load_is_trimmed_once_a_minute(trims: list[int]) -> None:
    """Bodies relayed through a few steady connections fragment the heap too."""
    live = Live()
    live.n = 10
    t = trimmer(live)  # interval 1 s, every 60 s
    for _ in range(59):
        assert not t.check()
    assert t.check()  # the 60th sample: a minute without a trim
    for _ in range(59):
        assert not t.check()
    assert t.check()
    assert trims == [1, 1]


def test_a_burst_trim_starts_the_minute_over(trims: list[int]) -> None:
    live = Live()
    t = trimmer(live)
    for _ in range(30):
        t.check()
    for n in (1000, 0, 0):
        live.n = n
        t.check()
    assert trims == [1]
    for _ in range(59):
        assert not t.check()
    assert t.check()  # a minute after the burst's trim, not after the start
    assert trims == [1, 1]


@pytest.mark.skipif(memory._malloc_trim is None, reason="no malloc_trim: start() does nothing")
def test_start_samples_every_interval_and_stop_ends_it(trims: list[int]) -> None:
    live, loop = Live(), FakeLoop()
    t = trimmer(live, loop)  # interval 1 s
    live.n = 1000
    t.start()
    loop.advance(3.0)
    live.n = 0
    loop.advance(1.0)  # falling
    assert trims == []
    loop.advance(1.0)  # stopped falling
    assert trims == [1]
    t.stop()
    live.n = 1000
    loop.advance(1.0)
    live.n = 0
    loop.advance(5.0)
    assert trims == [1]  # stopped: no more samples


def test_malloc_trim_and_rss_work_on_this_system() -> None:
    assert rss_bytes() > 0
    assert malloc_trim() == (memory._malloc_trim is not None)


def test_the_mmap_threshold_can_be_fixed_on_this_system() -> None:
    # glibc (Debian): large buffers get their own mappings from then on
    assert memory.fix_mmap_threshold() == (memory._malloc_trim is not None)
