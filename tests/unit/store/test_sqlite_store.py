"""SQLite-specific behaviour: file modes, several processes, compaction, open_store."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Awaitable, Iterator
from contextlib import aclosing
from pathlib import Path
from typing import TypeVar

import pytest

from tlsgate.errors import StoreError
from tlsgate.store import SealedStore, SqliteStore, open_store

T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(20):
            return await coro

    return asyncio.run(bounded())


@pytest.fixture
def loose_umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_database_files_are_private(tmp_path: Path, loose_umask: None) -> None:
    db = tmp_path / "data" / "state.db"

    async def body() -> None:
        store = SqliteStore(db)
        try:
            await store.put("k", b"v")
            assert _mode(db) == 0o600
            assert _mode(db.parent) == 0o700
            for suffix in ("-wal", "-shm"):
                side = db.with_name(db.name + suffix)
                assert side.exists()
                assert _mode(side) == 0o600
        finally:
            await store.close()

    run(body())
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        conn.close()


def test_existing_wide_database_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "state.db"
    db.touch(mode=0o644)
    db.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        store = SqliteStore(db)
    run(store.close())
    assert "accessible by group/others" in caplog.text


def test_unopenable_database(tmp_path: Path) -> None:
    not_a_db = tmp_path / "state.db"
    not_a_db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot open the store database"):
        SqliteStore(not_a_db)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot create the store database"):
        SqliteStore(blocker / "state.db")


def test_concurrent_open_of_a_fresh_file(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    errors: list[BaseException] = []
    stores: list[SqliteStore] = []
    barrier = threading.Barrier(6)

    def open_one() -> None:
        barrier.wait()
        try:
            stores.append(SqliteStore(db))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []

    async def body() -> None:
        revisions = [await s.put(f"k/{i}", b"x") for i, s in enumerate(stores)]
        assert revisions == [1, 2, 3, 4, 5, 6]
        for s in stores:
            await s.close()

    run(body())


WRITER = """
import asyncio, sys
from pathlib import Path
from tlsgate.store import SqliteStore
async def main():
    store = SqliteStore(Path(sys.argv[1]))
    for i in range(int(sys.argv[3])):
        await store.put(f"w/{sys.argv[2]}/{i}", sys.argv[2].encode())
    await store.close()
asyncio.run(main())
"""


def test_processes_writing_at_once_get_gapless_revisions(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    writers, per_writer = 4, 15
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(db), str(n), str(per_writer)])
        for n in range(writers)
    ]
    assert [p.wait(timeout=30) for p in procs] == [0] * writers

    async def body() -> None:
        store = SqliteStore(db, poll_interval=0.05)
        try:
            async with aclosing(store.watch("w/", start_revision=1)) as watch:
                events = [await anext(watch) for _ in range(writers * per_writer)]
            assert [e.revision for e in events] == list(range(1, writers * per_writer + 1))
            assert len({e.key for e in events}) == writers * per_writer
            assert len(await store.list("w/")) == writers * per_writer
        finally:
            await store.close()

    run(body())


def test_watch_that_falls_behind_the_change_log_fails_loudly(tmp_path: Path) -> None:
    async def body() -> None:
        store = SqliteStore(tmp_path / "state.db", change_log_retention=20)
        try:
            for i in range(130):  # crosses a compaction point (every 128 revisions)
                await store.put(f"k/{i % 5}", b"x")
            async with aclosing(store.watch("k/", start_revision=1)) as watch:
                with pytest.raises(StoreError, match="compacted"):
                    await anext(watch)
            async with aclosing(store.watch("k/", start_revision=120)) as watch:
                assert (await anext(watch)).revision == 120
        finally:
            await store.close()

    run(body())


def test_closing_releases_held_locks(tmp_path: Path) -> None:
    async def body() -> None:
        one = SqliteStore(tmp_path / "state.db", poll_interval=0.05)
        two = SqliteStore(tmp_path / "state.db", poll_interval=0.05)
        await one.lock("l", ttl=30)
        await one.close()
        async with asyncio.timeout(2):
            async with await two.lock("l", ttl=30):
                pass
        await two.close()

    run(body())


# --- open_store ---------------------------------------------------------------


def test_open_store_sqlite_url(tmp_path: Path) -> None:
    async def body() -> None:
        store = open_store(f"sqlite://{tmp_path}/state.db")
        assert isinstance(store, SqliteStore)
        await store.put("k", b"v")
        await store.close()

    run(body())
    assert (tmp_path / "state.db").exists()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("etcd://10.0.0.5:2379/tlsgate", "the etcd store is not available in this version"),
        ("sqlite://relative.db", "malformed store URL"),
        ("sqlite:relative.db", "malformed store URL"),
        ("sqlite:///x.db?mode=ro", "malformed store URL"),
        ("redis://localhost", "unsupported store URL"),
        ("/var/lib/state.db", "unsupported store URL"),
    ],
)
def test_open_store_rejects(url: str, message: str) -> None:
    with pytest.raises(StoreError, match=message):
        open_store(url)


def test_open_store_with_key_file_seals_private_keys_at_rest(tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "store.key"
    secret = b"-----BEGIN PRIVATE KEY-----\nsecret material\n-----END PRIVATE KEY-----\n"

    async def body() -> None:
        store = open_store(f"sqlite://{tmp_path}/state.db", key_file=key_file)
        assert isinstance(store, SealedStore)
        await store.put("certs/www/ecdsa-p256/privkey.key", secret)
        await store.put("certs/www/ecdsa-p256/chain.pem", b"public chain")
        entry = await store.get("certs/www/ecdsa-p256/privkey.key")
        assert entry is not None
        assert entry.value == secret
        await store.close()

    run(body())
    assert _mode(key_file) == 0o600
    assert len(key_file.read_bytes()) == 32
    conn = sqlite3.connect(tmp_path / "state.db")
    try:
        raw = dict(conn.execute("SELECT key, value FROM kv").fetchall())
        logged = [bytes(v) for (v,) in conn.execute("SELECT value FROM changes") if v]
    finally:
        conn.close()
    assert raw["certs/www/ecdsa-p256/chain.pem"] == b"public chain"
    assert b"secret material" not in raw["certs/www/ecdsa-p256/privkey.key"]
    assert all(b"secret material" not in v for v in logged)
    # The same key file opens it again.
    store2 = open_store(f"sqlite://{tmp_path}/state.db", key_file=key_file)
    entry = run(store2.get("certs/www/ecdsa-p256/privkey.key"))
    run(store2.close())
    assert entry is not None
    assert entry.value == secret
