"""The Store contract. Every backend runs this same suite (add it to ``BACKENDS``).

A backend is a factory that opens *another client of the same store*: for
SQLite that is another connection to the same file, as another worker process
would have; for etcd it would be another client of the same cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from tlsgate.errors import StoreError
from tlsgate.store import Entry, SealedStore, SqliteStore, Store, WatchEvent

T = TypeVar("T")

POLL = 0.05  # fast polling keeps the suite quick; production default is 0.2 s


@dataclass
class Backend:
    name: str
    open: Callable[[], Store]
    holder_script: str  # python code that opens the store, takes lock argv[1], prints "locked"


def _sqlite(tmp_path: Path) -> Backend:
    db = tmp_path / "state.db"
    script = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from tlsgate.store import SqliteStore\n"
        "async def main():\n"
        f"    store = SqliteStore(Path({str(db)!r}), poll_interval={POLL})\n"
        "    await store.lock(sys.argv[1], ttl=float(sys.argv[2]))\n"
        "    print('locked', flush=True)\n"
        "    await asyncio.sleep(3600)\n"
        "asyncio.run(main())\n"
    )
    return Backend("sqlite", lambda: SqliteStore(db, poll_interval=POLL), script)


def _sqlite_sealed(tmp_path: Path) -> Backend:
    plain = _sqlite(tmp_path)
    key = os.urandom(32)
    return Backend("sqlite-sealed", lambda: SealedStore(plain.open(), key), plain.holder_script)


BACKENDS: dict[str, Callable[[Path], Backend]] = {
    "sqlite": _sqlite,
    "sqlite-sealed": _sqlite_sealed,
}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return BACKENDS[request.param](tmp_path)


def run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(20):
            return await coro

    return asyncio.run(bounded())


@asynccontextmanager
async def opened(backend: Backend) -> AsyncIterator[Store]:
    store = backend.open()
    try:
        yield store
    finally:
        await store.close()


async def next_events(
    watch: AsyncIterator[WatchEvent], n: int, timeout: float = 5
) -> list[WatchEvent]:
    events: list[WatchEvent] = []
    async with asyncio.timeout(timeout):
        while len(events) < n:
            events.append(await anext(watch))
    return events


# --- get / put / delete / list --------------------------------------------------


def test_put_get_delete_and_revisions(backend: Backend) -> None:
    async def body() -> None:
        async with opened(backend) as store:
            assert await store.get("certs/www/chain.pem") is None
            r1 = await store.put("certs/www/chain.pem", b"one")
            r2 = await store.put("certs/api/chain.pem", b"two")
            r3 = await store.put("certs/www/chain.pem", b"three")
            assert r1 < r2 < r3
            assert await store.get("certs/www/chain.pem") == Entry(
                "certs/www/chain.pem", b"three", r3
            )
            assert await store.get("certs/api/chain.pem") == Entry(
                "certs/api/chain.pem", b"two", r2
            )
            assert await store.delete("certs/www/chain.pem") is True
            assert await store.delete("certs/www/chain.pem") is False
            assert await store.get("certs/www/chain.pem") is None
            r4 = await store.put("certs/www/chain.pem", b"")
            assert r4 > r3 + 0  # the delete took a revision too
            assert await store.get("certs/www/chain.pem") == Entry("certs/www/chain.pem", b"", r4)

    run(body())


def test_list_by_prefix(backend: Backend) -> None:
    async def body() -> None:
        async with opened(backend) as store:
            for key in ["a/2", "a/1", "a/1/x", "ab", "b", "a\u00e9/1", "a/\U0001f512"]:
                await store.put(key, key.encode())
            assert [e.key for e in await store.list("a/")] == [
                "a/1",
                "a/1/x",
                "a/2",
                "a/\U0001f512",
            ]
            assert [e.key for e in await store.list("a")] == [
                "a/1",
                "a/1/x",
                "a/2",
                "a/\U0001f512",
                "ab",
                "a\u00e9/1",
            ]
            assert [e.key for e in await store.list("")] == sorted(
                ["a/2", "a/1", "a/1/x", "ab", "b", "a\u00e9/1", "a/\U0001f512"],
                key=lambda k: k.encode(),
            )
            assert await store.list("zzz") == []
            entries = await store.list("a/1")
            assert [e.value for e in entries] == [b"a/1", b"a/1/x"]

    run(body())


def test_a_second_client_sees_the_same_data(backend: Backend) -> None:
    async def body() -> None:
        async with opened(backend) as one, opened(backend) as two:
            rev = await one.put("shared/k", b"v")
            assert await two.get("shared/k") == Entry("shared/k", b"v", rev)
            assert await two.delete("shared/k")
            assert await one.get("shared/k") is None
            assert await two.put("shared/k", b"w") > rev

    run(body())


def test_invalid_arguments(backend: Backend) -> None:
    async def body() -> None:
        async with opened(backend) as store:
            with pytest.raises(ValueError):
                await store.put("", b"x")
            with pytest.raises(ValueError):
                await store.grant_lease(0)

    run(body())


def test_closed_store_refuses_calls(backend: Backend) -> None:
    async def body() -> None:
        store = backend.open()
        await store.close()
        with pytest.raises(StoreError, match="closed"):
            await store.get("k")
        await store.close()  # idempotent

    run(body())


# --- watch --------------------------------------------------------------------


def test_watch_sees_puts_and_deletes_in_order(backend: Backend) -> None:
    async def body() -> None:
        async with opened(backend) as store:
            await store.put("routes/before", b"old")
            async with aclosing(store.watch("routes/")) as watch:
                # Changes made after watch() returns are seen even though
                # iteration starts later.
                r1 = await store.put("routes/a", b"1")
                await store.put("other/x", b"ignored")
                r2 = await store.put("routes/a", b"2")
                r3 = await store.delete("routes/a") and await store.put("routes/b", b"3")
                events = await next_events(watch, 4)
            assert [(e.kind, e.key, e.value) for e in events] == [
                ("put", "routes/a", b"1"),
                ("put", "routes/a", b"2"),
                ("delete", "routes/a", None),
                ("put", "routes/b", b"3"),
            ]
            revisions = [e.revision for e in events]
            assert revisions == sorted(revisions)
            assert revisions[0] == r1
            assert revisions[1] == r2
            assert revisions[3] == r3

    run(body())


def test_watch_sees_changes_from_another_client(backend: Backend) -> None:
    async def body() -> None:
        async with opened(backend) as watcher, opened(backend) as writer:
            async with aclosing(watcher.watch("backends/app/")) as watch:
                await writer.put("backends/app/10.0.0.1:80", b"up")
                await writer.delete("backends/app/10.0.0.1:80")
                events = await next_events(watch, 2)
            assert [(e.kind, e.key) for e in events] == [
                ("put", "backends/app/10.0.0.1:80"),
                ("delete", "backends/app/10.0.0.1:80"),
            ]
            assert events[0].value == b"up"

    run(body())


def test_watch_from_a_revision_replays(backend: Backend) -> None:
    async def body() -> None:
        async with opened(backend) as store:
            await store.put("k/1", b"a")
            await store.put("k/2", b"b")
            listed = await store.list("k/")
            start = max(e.revision for e in listed)
            await store.put("k/3", b"c")  # happens "between" list and watch
            async with aclosing(store.watch("k/", start_revision=start + 1)) as watch:
                [event] = await next_events(watch, 1)
                assert (event.kind, event.key, event.value) == ("put", "k/3", b"c")
            async with aclosing(store.watch("k/", start_revision=1)) as watch:
                events = await next_events(watch, 3)
                assert [e.key for e in events] == ["k/1", "k/2", "k/3"]

    run(body())


def test_watch_ends_when_the_store_closes(backend: Backend) -> None:
    async def body() -> None:
        store = backend.open()
        watch = store.watch("x/")
        task = asyncio.ensure_future(anext(watch))
        await asyncio.sleep(2 * POLL)
        await store.close()
        with pytest.raises(StopAsyncIteration):
            async with asyncio.timeout(5):
                await task

    run(body())


# --- leases -------------------------------------------------------------------


def test_lease_expiry_deletes_keys_with_events(backend: Backend) -> None:
    async def body() -> None:
        async with opened(backend) as store, opened(backend) as other:
            lease = await store.grant_lease(0.6)
            await store.put("servers/a", b"1", lease=lease)
            await store.put("servers/b", b"2", lease=lease)
            await store.put("servers/keep", b"3")
            async with aclosing(other.watch("servers/")) as watch:
                assert len(await other.list("servers/")) == 3
                # Nobody touches the store: the watch poller expires the lease.
                events = await next_events(watch, 2)
            assert sorted((e.kind, e.key, e.value) for e in events) == [
                ("delete", "servers/a", None),
                ("delete", "servers/b", None),
            ]
            assert [e.key for e in await store.list("servers/")] == ["servers/keep"]
            with pytest.raises(StoreError, match="expired"):
                await store.keep_alive(lease)
            with pytest.raises(StoreError, match="expired"):
                await store.put("servers/c", b"x", lease=lease)

    run(body())


def test_expired_lease_keys_vanish_for_readers_at_once(backend: Backend) -> None:
    async def body() -> None:
        async with opened(backend) as store:
            lease = await store.grant_lease(0.5)
            await store.put("tmp/k", b"v", lease=lease)
            assert await store.get("tmp/k") is not None
            await asyncio.sleep(0.6)
            assert await store.get("tmp/k") is None
            assert await store.list("tmp/") == []

    run(body())


def test_keep_alive_extends_a_lease(backend: Backend) -> None:
    async def body() -> None:
        async with opened(backend) as store:
            lease = await store.grant_lease(0.5)
            await store.put("agents/a", b"1", lease=lease)
            for _ in range(7):
                await asyncio.sleep(0.1)
                await store.keep_alive(lease)
            assert await store.get("agents/a") is not None  # 0.7 s > ttl, still alive

    run(body())


def test_revoke_deletes_keys_with_events(backend: Backend) -> None:
    async def body() -> None:
        async with opened(backend) as store:
            lease = await store.grant_lease(60)
            await store.put("agents/a", b"1", lease=lease)
            async with aclosing(store.watch("agents/")) as watch:
                await store.revoke(lease)
                [event] = await next_events(watch, 1)
            assert (event.kind, event.key) == ("delete", "agents/a")
            assert await store.get("agents/a") is None
            await store.revoke(lease)  # idempotent
            # A key re-put without the lease is detached from it.
            lease2 = await store.grant_lease(60)
            await store.put("agents/b", b"1", lease=lease2)
            await store.put("agents/b", b"2")
            await store.revoke(lease2)
            entry = await store.get("agents/b")
            assert entry is not None
            assert entry.value == b"2"

    run(body())


# --- locks --------------------------------------------------------------------


def test_lock_excludes_a_second_holder_until_release(backend: Backend) -> None:
    async def body() -> None:
        async with opened(backend) as one, opened(backend) as two:
            order: list[str] = []
            held = await one.lock("issue/www", ttl=0.6)
            async with held:
                order.append("one acquired")
                waiter = asyncio.ensure_future(two.lock("issue/www", ttl=0.6))
                # Held past its ttl: renewal keeps it ours.
                await asyncio.sleep(0.9)
                assert not waiter.done()
                order.append("one releasing")
            second = await asyncio.wait_for(waiter, 5)
            order.append("two acquired")
            # Other lock names are independent.
            async with second, await one.lock("issue/api", ttl=5):
                order.append("one got another lock")
            assert order == [
                "one acquired",
                "one releasing",
                "two acquired",
                "one got another lock",
            ]

    run(body())


def test_lock_wait_can_be_bounded_and_cancelled(backend: Backend) -> None:
    async def body() -> None:
        async with opened(backend) as one, opened(backend) as two:
            async with await one.lock("l", ttl=5):
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0.3):
                        await two.lock("l", ttl=5)
            # The cancelled waiter did not leave the lock taken.
            async with asyncio.timeout(2):
                async with await two.lock("l", ttl=5):
                    pass

    run(body())


@pytest.fixture
def holder_process(backend: Backend) -> Iterator[Callable[[str, float], subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []

    def spawn(name: str, ttl: float) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", backend.holder_script, name, str(ttl)],
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        return proc

    yield spawn
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_lock_is_taken_over_after_ttl_when_the_holder_dies(
    backend: Backend, holder_process: Callable[[str, float], subprocess.Popen[str]]
) -> None:
    ttl = 0.8
    proc = holder_process("issue/www", ttl)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"

    async def body() -> float:
        async with opened(backend) as store:
            with pytest.raises(TimeoutError):  # alive and renewing: not ours
                async with asyncio.timeout(ttl * 1.25):
                    await store.lock("issue/www", ttl=ttl)
            proc.send_signal(signal.SIGKILL)  # dies without releasing
            killed = time.monotonic()
            async with asyncio.timeout(ttl * 4):
                async with await store.lock("issue/www", ttl=ttl):
                    return time.monotonic() - killed

    waited = run(body())
    assert waited <= ttl + 1.0  # generous: other test suites may share the machine
