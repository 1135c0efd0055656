"""Store faults (issue 8): another process holding the database, writes that fail half way.

Regression tests for three defects the fault suite found in ``SqliteStore``:

* opening a store ran the schema script in a write transaction, so a reader
  (``tlsgate certs list``, a node starting) waited ``busy_timeout`` for, then failed
  on, any other process's write transaction;
* there was no way to write records that belong together (a chain and its key) at
  once, so a failure between two ``put`` calls left a new chain beside an old key;
* a failed ``COMMIT`` left the transaction open, and every later statement on the
  shared connection failed ("cannot start a transaction within a transaction").

Failures are real SQLite failures: another process's ``BEGIN EXCLUSIVE``, a trigger
that aborts one insert, a deferred foreign key that fails at ``COMMIT``.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Iterator
from contextlib import aclosing, contextmanager
from pathlib import Path
from typing import TypeVar

import pytest

from tlsgate.errors import StoreError
from tlsgate.store import SealedStore, SqliteStore, WatchEvent, is_sealed
from tlsgate.store.sqlite import _transaction

T = TypeVar("T")

LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
conn.execute("BEGIN EXCLUSIVE")
conn.execute("UPDATE meta SET value = value WHERE name = 'revision'")
print("LOCKED", flush=True)
sys.stdin.read()
conn.execute("ROLLBACK")
"""


def run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(30):
            return await coro

    return asyncio.run(bounded())


@contextmanager
def locked(db: Path) -> Iterator[None]:
    """Another process holds ``BEGIN EXCLUSIVE`` (with a pending write) on ``db``."""
    proc = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == b"LOCKED"
        yield
    finally:
        proc.stdin.close()
        proc.wait(10)
        proc.stdout.close()


def make_store(db: Path) -> SqliteStore:
    async def create() -> SqliteStore:
        store = SqliteStore(db, poll_interval=0.05)
        await store.put("certs/www/chain.pem", b"chain v1")
        await store.close()
        return store

    return run(create())


# --------------------------------------------------------------------------- another writer


def test_a_reader_opens_and_reads_while_another_process_holds_the_database(
    tmp_path: Path,
) -> None:
    db = tmp_path / "state.db"
    make_store(db)

    async def body() -> None:
        start = time.monotonic()
        store = SqliteStore(db, busy_timeout=0.5)  # before the fix: "database is locked"
        try:
            assert time.monotonic() - start < 0.4
            entry = await store.get("certs/www/chain.pem")
            assert entry is not None
            assert entry.value == b"chain v1"
            assert [e.key for e in await store.list("certs/")] == ["certs/www/chain.pem"]
            # A write waits busy_timeout, then fails clearly; nothing hangs.
            start = time.monotonic()
            with pytest.raises(StoreError, match="database is locked"):
                await store.put("certs/www/chain.pem", b"chain v2")
            assert 0.4 < time.monotonic() - start < 3.0
        finally:
            await store.close()

    with locked(db):
        run(body())

    async def after() -> None:
        store = SqliteStore(db)
        try:
            await store.put("certs/www/chain.pem", b"chain v2")
            entry = await store.get("certs/www/chain.pem")
            assert entry is not None
            assert entry.value == b"chain v2"
        finally:
            await store.close()

    run(after())


def test_a_new_database_still_gets_its_schema(tmp_path: Path) -> None:
    async def body() -> None:
        store = SqliteStore(tmp_path / "fresh.db")
        try:
            assert await store.put("a", b"1") == 1
        finally:
            await store.close()

    run(body())


# --------------------------------------------------------------------------- put_all


def fail_on(db: Path, key: str) -> None:
    """Make every insert of ``key`` into the store fail inside its transaction."""
    conn = sqlite3.connect(db)
    conn.execute(
        "CREATE TRIGGER fail_one BEFORE INSERT ON kv WHEN NEW.key = ?1 "
        "BEGIN SELECT RAISE(ABORT, 'injected failure'); END".replace("?1", f"'{key}'")
    )
    conn.commit()
    conn.close()


def test_put_all_writes_every_record_or_none(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    make_store(db)
    fail_on(db, "certs/www/privkey.key")

    async def body() -> None:
        store = SqliteStore(db, poll_interval=0.05)
        try:
            before = await store.list("certs/")
            with pytest.raises(StoreError, match="injected failure"):
                await store.put_all(
                    [
                        ("certs/www/chain.pem", b"chain v2"),
                        ("certs/www/privkey.key", b"key v2"),
                        ("certs/www/meta.json", b"{}"),
                    ]
                )
            assert await store.list("certs/") == before  # the chain too is the old one
            # The connection is usable at once, and a batch without the failing key lands.
            events = store.watch("certs/")
            revision = await store.put_all(
                [("certs/www/chain.pem", b"chain v3"), ("certs/www/meta.json", b"{}")]
            )
            assert revision == before[0].revision + 2  # one revision each, gapless
            async with aclosing(events) as stream:
                seen: list[WatchEvent] = []
                async for event in stream:
                    seen.append(event)
                    if len(seen) == 2:
                        break
            assert [(e.key, e.revision) for e in seen] == [
                ("certs/www/chain.pem", revision - 1),
                ("certs/www/meta.json", revision),
            ]
            with pytest.raises(StoreError, match="at least one"):
                await store.put_all([])
            with pytest.raises(ValueError):
                await store.put_all([("ok", b"1"), ("", b"2")])
            entry = await store.get("ok")
            assert entry is None  # validated before anything was written
        finally:
            await store.close()

    run(body())


def test_put_all_seals_private_keys(tmp_path: Path) -> None:
    async def body() -> None:
        inner = SqliteStore(tmp_path / "state.db")
        store = SealedStore(inner, os.urandom(32))
        try:
            await store.put_all(
                [("certs/www/chain.pem", b"chain"), ("certs/www/privkey.key", b"k")]
            )
            raw = await inner.get("certs/www/privkey.key")
            assert raw is not None
            assert is_sealed(raw.value)
            plain = await inner.get("certs/www/chain.pem")
            assert plain is not None
            assert plain.value == b"chain"
            opened = await store.get("certs/www/privkey.key")
            assert opened is not None
            assert opened.value == b"k"
        finally:
            await store.close()

    run(body())


# --------------------------------------------------------------------------- a failed COMMIT


def test_a_failed_commit_is_rolled_back_and_the_connection_goes_on(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "fk.db", isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    conn.execute(
        "CREATE TABLE child (p INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)"
    )
    # A deferred foreign key is checked at COMMIT, which then fails and leaves the
    # transaction open (SQLite does not roll it back by itself for this error).
    with pytest.raises(sqlite3.IntegrityError), _transaction(conn, write=True):
        conn.execute("INSERT INTO child (p) VALUES (42)")
    assert not conn.in_transaction
    with _transaction(conn, write=True):  # before the fix: "within a transaction"
        conn.execute("INSERT INTO parent (id) VALUES (1)")
    assert conn.execute("SELECT count(*) FROM child").fetchone() == (0,)
    conn.close()
