"""The keep-alive pool and the deadline wheel, on their own."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from tlsgate.net.deadlines import Deadlines
from tlsgate.net.pool import Pool
from tlsgate.net.testing import FakeLoop


class Conn:
    def __init__(self, name: str) -> None:
        self.name = name
        self.idle_until = 0.0
        self.alive = True
        self.pool: Pool | None = None

    def usable(self) -> bool:
        return self.alive

    def pooled(self, pool: Pool, deadline: float) -> None:
        self.pool = pool
        self.idle_until = deadline

    def unpooled(self) -> None:
        self.pool = None

    def abort(self) -> None:
        self.alive = False


def test_the_most_recently_released_connection_comes_back_first() -> None:
    pool = Pool(max_idle=4, timeout=2.0)
    a, b = Conn("a"), Conn("b")
    assert pool.release(a, 0.0)
    assert pool.release(b, 0.5)
    assert pool.acquire(1.0) is b
    assert pool.acquire(1.0) is a
    assert pool.acquire(1.0) is None


def test_expired_and_dead_connections_are_skipped_and_closed() -> None:
    pool = Pool(max_idle=4, timeout=2.0)
    old, dead, fresh = Conn("old"), Conn("dead"), Conn("fresh")
    pool.release(old, 0.0)
    pool.release(fresh, 1.5)
    pool.release(dead, 1.5)
    dead.alive = False
    assert pool.acquire(2.5) is fresh  # dead skipped; fresh idle for 1 s only
    assert pool.acquire(2.5) is None  # old was idle 2.5 s > 2 s: closed, not returned
    assert not old.alive


def test_a_full_pool_refuses_unless_dead_entries_can_go() -> None:
    pool = Pool(max_idle=2, timeout=10.0)
    a, b, c = Conn("a"), Conn("b"), Conn("c")
    assert pool.release(a, 0.0)
    assert pool.release(b, 0.0)
    assert not pool.release(c, 0.0)  # full: the caller closes c
    a.alive = False
    assert pool.release(c, 0.0)  # the dead entry was pruned to make room
    assert len(pool) == 2


def test_discard_and_close() -> None:
    pool = Pool(max_idle=4, timeout=10.0)
    conns = [Conn(str(i)) for i in range(3)]
    for c in conns:
        pool.release(c, 0.0)
    pool.discard(conns[2])
    assert len(pool) == 2
    pool.close()
    assert len(pool) == 0
    assert not any(c.alive for c in conns[:2])


class Timer:
    def __init__(self, log: list[tuple[str, float]], name: str) -> None:
        self.deadline = math.inf
        self.slot = 0
        self.log = log
        self.name = name

    def deadline_reached(self, now: float) -> None:
        self.log.append((self.name, now))


def test_a_deadline_fires_once_never_early_and_at_most_one_resolution_late() -> None:
    loop = FakeLoop()
    wheel = Deadlines(loop, resolution=0.05)  # type: ignore[arg-type]
    log: list[tuple[str, float]] = []
    t = Timer(log, "t")
    wheel.arm(t, loop.time() + 1.0)
    loop.advance(0.99)
    assert log == []
    loop.advance(0.2)
    assert len(log) == 1
    _, when = log[0]
    assert 1000.0 + 1.0 <= when <= 1000.0 + 1.0 + 0.1
    loop.advance(5)
    assert len(log) == 1


def test_moving_a_deadline_later_or_earlier_and_disarming() -> None:
    loop = FakeLoop()
    wheel = Deadlines(loop, resolution=0.05)  # type: ignore[arg-type]
    log: list[tuple[str, float]] = []
    later, earlier, off, gone = (Timer(log, n) for n in ("later", "earlier", "off", "gone"))
    now = loop.time()
    wheel.arm(later, now + 1)
    wheel.arm(later, now + 3)  # keep-alive traffic: moved on lazily
    wheel.arm(earlier, now + 3)
    wheel.arm(earlier, now + 0.5)  # moved earlier: must fire at 0.5, not 3
    wheel.arm(off, now + 1)
    Deadlines.disarm(off)
    wheel.arm(gone, now + 1)
    wheel.discard(gone)
    # later (still in its first slot), earlier, and off until its slot comes; not gone
    assert len(wheel) == 3
    loop.advance(1.0)
    assert [n for n, _ in log] == ["earlier"]
    loop.advance(2.1)
    assert [n for n, _ in log] == ["earlier", "later"]
    assert len(wheel) == 0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 9), st.floats(0.0, 5.0), st.booleans()), min_size=1, max_size=40
    )
)
def test_the_wheel_agrees_with_a_plain_model(ops: list[tuple[int, float, bool]]) -> None:
    """Whatever the arm/disarm sequence, each timer fires iff its last deadline passed."""
    loop = FakeLoop()
    wheel = Deadlines(loop, resolution=0.05)  # type: ignore[arg-type]
    log: list[tuple[str, float]] = []
    timers = [Timer(log, str(i)) for i in range(10)]
    expected: dict[str, float] = {}
    for index, delay, disarm in ops:
        t = timers[index]
        if disarm:
            Deadlines.disarm(t)
            expected.pop(t.name, None)
        else:
            wheel.arm(t, loop.time() + delay)
            expected[t.name] = loop.time() + delay
        loop.advance(0.01)
        for name, _ in log:
            expected.pop(name, None)
        log.clear()
    loop.advance(6.0)
    fired = dict(log)
    assert set(fired) == set(expected)
    for name, when in fired.items():
        assert expected[name] <= when <= expected[name] + 0.11
