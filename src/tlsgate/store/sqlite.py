"""The embedded store: one SQLite file shared by the processes of one node.

How it works. The database runs in WAL mode, so the supervisor and every
worker can read while one of them writes; writers queue on SQLite's lock for
up to ``busy_timeout``. Blocking sqlite3 calls run in a worker thread
(``asyncio.to_thread``) so the event loop never waits on the disk.

Tables::

    meta(name, value)               'revision' (the store-wide counter), 'compacted'
    kv(key, value, revision, lease) current values; revision = last change
    changes(revision, kind, key, value)   the change log watchers read
    leases(id, ttl, expires)        expires = wall-clock deadline
    locks(name, holder, expires)

Every write is one ``BEGIN IMMEDIATE`` transaction that bumps the revision
counter, changes ``kv`` and appends to ``changes``, so revisions are gapless
and a change is visible exactly when its log entry is (``put_all`` changes
several keys in one such transaction: all or none). A failed transaction,
including a failed ``COMMIT`` (``SQLITE_FULL`` on a full disk), is rolled
back, so the shared connection goes on. Opening only reads when the schema
exists: a reader never waits for another process's write transaction.
Watchers poll the log (every ``poll_interval``; at once when this process
wrote), which works across processes without any side channel. The log keeps the last
``change_log_retention`` changes; a watcher that falls further behind gets a
StoreError, as an etcd watcher gets "required revision has been compacted".

Leases and locks hold wall-clock deadlines (``time.time()``), because several
processes compare them. Expired leases are collected lazily: by any write,
by reads that notice one, and by watch pollers; each collection deletes the
lease's keys with ``delete`` events. A lock is a row naming its holder; it is
renewed every ``ttl/3`` while held and is free once its deadline passes.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import os
import socket
import sqlite3
import stat
import threading
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from types import TracebackType
from typing import Literal, TypeVar

from tlsgate.errors import StoreError
from tlsgate.store.base import Entry, Lease, WatchEvent

__all__ = ["SqliteStore"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# One script, one transaction: several processes may create the schema at once.
# (executescript, not _transaction(): in Python 3.11 it commits any open
# transaction before running.)
_SCHEMA = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    revision INTEGER NOT NULL,
    lease INTEGER
);
CREATE INDEX IF NOT EXISTS kv_lease ON kv (lease) WHERE lease IS NOT NULL;
CREATE TABLE IF NOT EXISTS changes (
    revision INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB
);
CREATE TABLE IF NOT EXISTS leases (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ttl REAL NOT NULL,
    expires REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS leases_expires ON leases (expires);
CREATE TABLE IF NOT EXISTS locks (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires REAL NOT NULL
);
INSERT OR IGNORE INTO meta (name, value) VALUES ('revision', 0), ('compacted', 0);
COMMIT;
"""

_TABLES = ("meta", "kv", "changes", "leases", "locks")
_WATCH_BATCH = 512
_COMPACT_EVERY = 128  # revisions between change-log trims


class SqliteStore:
    """A :class:`~tlsgate.store.base.Store` in one SQLite file.

    Opening is synchronous (it creates the file 0600 and the schema), so open
    stores at startup, not on a hot path. Several ``SqliteStore`` objects, in
    one or many processes, may share a file.

    Args:
        path: the database file; its directory is created (0700) if missing.
        poll_interval: seconds between watch polls of the change log.
        busy_timeout: seconds a write waits for another process's write.
        change_log_retention: how many past changes watchers can replay.

    Raises:
        StoreError: the file cannot be created or opened as a database.
    """

    def __init__(
        self,
        path: Path,
        *,
        poll_interval: float = 0.2,
        busy_timeout: float = 10.0,
        change_log_retention: int = 1_000,
    ) -> None:
        self.path = path
        self._poll_interval = poll_interval
        self._busy_timeout = busy_timeout
        self._retention = change_log_retention
        self._closed = False
        self._db_lock = threading.Lock()  # one sqlite3 connection, used by one thread at a time
        self._watchers: set[asyncio.Event] = set()
        self._held_locks: dict[str, _HeldLock] = {}  # holder id -> lock
        self._holder_prefix = f"{socket.gethostname()}:{os.getpid()}:"
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Create the file ourselves so it is 0600 from its first moment;
            # SQLite gives its -wal and -shm files the database file's mode.
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            mode = os.fstat(fd).st_mode
            os.close(fd)
        except OSError as exc:
            raise StoreError(
                f"cannot create the store database {path}: {exc.strerror or exc}"
            ) from exc
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("the store database %s is accessible by group/others; chmod 600 it", path)
        try:
            conn = self._connect()
            try:
                # Only a database without the schema needs the write lock: a reader
                # (``certs list``, a node starting) must not wait for, or fail on, a
                # writer that holds the database (another process's long transaction).
                if not _has_schema(conn):
                    conn.executescript(_SCHEMA)
            except sqlite3.Error:
                conn.close()
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the store database {path}: {exc}") from exc
        self._conn = conn

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    # --- plumbing -----------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout,
            isolation_level=None,  # we issue BEGIN/COMMIT ourselves
            check_same_thread=False,  # used from asyncio.to_thread's pool, never concurrently
        )
        try:
            self._set_wal(conn)
            # FULL: a committed certificate or lease survives a power cut too;
            # writes are rare (issuance, registration), so the fsync is cheap.
            conn.execute("PRAGMA synchronous = FULL")
        except sqlite3.Error:
            conn.close()
            raise
        return conn

    def _set_wal(self, conn: sqlite3.Connection) -> None:
        """``PRAGMA journal_mode = WAL``, waiting like every other statement does.

        Switching a fresh database file to WAL takes an exclusive lock, and SQLite
        answers "database is locked" at once, without the busy handler, when another
        connection is opening the same file at that moment (two processes starting
        together). Retried here for up to the busy timeout.
        """
        deadline = time.monotonic() + self._busy_timeout
        delay = 0.005
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                busy = "locked" in str(exc) or "busy" in str(exc)
                if not busy or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    async def _run(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``fn(conn)`` on the shared connection in a worker thread."""
        if self._closed:
            raise StoreError("the store is closed")
        return await asyncio.to_thread(self._run_sync, fn)

    def _run_sync(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._db_lock:
            if self._closed:
                raise StoreError("the store is closed")
            try:
                return fn(self._conn)
            except sqlite3.Error as exc:
                raise StoreError(f"store database {self.path}: {exc}") from exc

    def _notify(self) -> None:
        """Wake this process's watchers after our own write (others find it by polling)."""
        for event in self._watchers:
            event.set()

    # --- key/value ----------------------------------------------------------

    async def get(self, key: str) -> Entry | None:
        _check_key(key)

        def op(conn: sqlite3.Connection) -> Entry | None:
            now = time.time()
            if _has_expired_leases(conn, now):
                with _transaction(conn, write=True):
                    _collect_expired(conn, now)
            row = conn.execute(
                "SELECT kv.value, kv.revision FROM kv LEFT JOIN leases ON kv.lease = leases.id"
                " WHERE kv.key = ? AND (kv.lease IS NULL OR leases.expires > ?)",
                (key, now),
            ).fetchone()
            return None if row is None else Entry(key, bytes(row[0]), row[1])

        return await self._run(op)

    async def put(self, key: str, value: bytes, *, lease: Lease | None = None) -> int:
        _check_key(key)
        if not isinstance(value, bytes | bytearray | memoryview):
            raise TypeError(f"store values are bytes, not {type(value).__name__}")
        data = bytes(value)

        def op(conn: sqlite3.Connection) -> int:
            now = time.time()
            with _transaction(conn, write=True):
                _collect_expired(conn, now)
                if lease is not None:
                    found = conn.execute("SELECT 1 FROM leases WHERE id = ?", (lease.id,))
                    if found.fetchone() is None:
                        raise StoreError(f"lease {lease.id} has expired or was revoked")
                revision = _next_revision(conn)
                conn.execute(
                    "INSERT OR REPLACE INTO kv (key, value, revision, lease) VALUES (?, ?, ?, ?)",
                    (key, data, revision, None if lease is None else lease.id),
                )
                _log_change(conn, revision, "put", key, data)
                self._maybe_compact(conn, revision)
            return revision

        revision = await self._run(op)
        self._notify()
        return revision

    async def put_all(self, items: Sequence[tuple[str, bytes]]) -> int:
        """See :meth:`tlsgate.store.base.Store.put_all`: one write transaction."""
        if not items:
            raise StoreError("put_all needs at least one item")
        data: builtins.list[tuple[str, bytes]] = []
        for key, value in items:
            _check_key(key)
            if not isinstance(value, bytes | bytearray | memoryview):
                raise TypeError(f"store values are bytes, not {type(value).__name__}")
            data.append((key, bytes(value)))

        def op(conn: sqlite3.Connection) -> int:
            revision = 0
            with _transaction(conn, write=True):
                _collect_expired(conn, time.time())
                for key, value in data:
                    revision = _next_revision(conn)
                    conn.execute(
                        "INSERT OR REPLACE INTO kv (key, value, revision, lease)"
                        " VALUES (?, ?, ?, NULL)",
                        (key, value, revision),
                    )
                    _log_change(conn, revision, "put", key, value)
                    self._maybe_compact(conn, revision)
            return revision

        revision = await self._run(op)
        self._notify()
        return revision

    async def delete(self, key: str) -> bool:
        _check_key(key)

        def op(conn: sqlite3.Connection) -> bool:
            with _transaction(conn, write=True):
                _collect_expired(conn, time.time())
                if conn.execute("DELETE FROM kv WHERE key = ?", (key,)).rowcount == 0:
                    return False
                revision = _next_revision(conn)
                _log_change(conn, revision, "delete", key, None)
                self._maybe_compact(conn, revision)
            return True

        existed = await self._run(op)
        self._notify()
        return existed

    async def list(self, prefix: str) -> list[Entry]:
        low, high = _prefix_range(prefix)

        def op(conn: sqlite3.Connection) -> list[Entry]:
            now = time.time()
            if _has_expired_leases(conn, now):
                with _transaction(conn, write=True):
                    _collect_expired(conn, now)
            rows = conn.execute(
                "SELECT kv.key, kv.value, kv.revision FROM kv"
                " LEFT JOIN leases ON kv.lease = leases.id"
                " WHERE kv.key >= ? AND kv.key < ? AND (kv.lease IS NULL OR leases.expires > ?)"
                " ORDER BY kv.key",
                (low, high, now),
            ).fetchall()
            return [Entry(k, bytes(v), r) for k, v, r in rows]

        return await self._run(op)

    def _maybe_compact(self, conn: sqlite3.Connection, revision: int) -> None:
        if revision % _COMPACT_EVERY or revision <= self._retention:
            return
        horizon = revision - self._retention
        conn.execute("DELETE FROM changes WHERE revision <= ?", (horizon,))
        conn.execute("UPDATE meta SET value = max(value, ?) WHERE name = 'compacted'", (horizon,))

    # --- watch --------------------------------------------------------------

    def watch(
        self, prefix: str, *, start_revision: int | None = None
    ) -> AsyncGenerator[WatchEvent, None]:
        """See :meth:`tlsgate.store.base.Store.watch`.

        With ``start_revision=None`` the current revision is read right here
        (one short, non-blocking WAL read), so a change made after this call
        returns is never missed, even if iteration starts later.
        """
        if self._closed:
            raise StoreError("the store is closed")
        if start_revision is None:
            try:
                conn = self._connect()
                try:
                    next_revision = _current_revision(conn) + 1
                finally:
                    conn.close()
            except sqlite3.Error as exc:
                raise StoreError(f"store database {self.path}: {exc}") from exc
        else:
            if start_revision < 1:
                raise ValueError(f"start_revision must be >= 1, not {start_revision}")
            next_revision = start_revision
        return self._watch(prefix, next_revision)

    async def _watch(self, prefix: str, next_revision: int) -> AsyncGenerator[WatchEvent, None]:
        low, high = _prefix_range(prefix)
        wake = asyncio.Event()
        self._watchers.add(wake)
        conn: sqlite3.Connection | None = None
        try:
            conn = await asyncio.to_thread(self._connect_mapped)
            while not self._closed:
                events, next_revision = await asyncio.to_thread(
                    self._poll, conn, low, high, next_revision
                )
                for event in events:
                    yield event
                if len(events) == _WATCH_BATCH:
                    continue  # more are waiting; do not sleep
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll_interval):
                        await wake.wait()
                wake.clear()
        finally:
            self._watchers.discard(wake)
            if conn is not None:
                conn.close()

    def _connect_mapped(self) -> sqlite3.Connection:
        try:
            return self._connect()
        except sqlite3.Error as exc:
            raise StoreError(f"store database {self.path}: {exc}") from exc

    def _poll(
        self, conn: sqlite3.Connection, low: str, high: str | bytes, next_revision: int
    ) -> tuple[builtins.list[WatchEvent], int]:  # `list` is a method here
        """Read the changes to keys in [low, high) from ``next_revision`` on."""
        try:
            now = time.time()
            if _has_expired_leases(conn, now):
                with _transaction(conn, write=True):
                    _collect_expired(conn, now)
            with _transaction(conn):  # one snapshot for the counter and the log
                current = _current_revision(conn)
                compacted = _meta(conn, "compacted")
                if next_revision <= compacted:
                    raise StoreError(
                        f"the watch fell behind: revision {next_revision} has been compacted "
                        f"(changes up to {compacted} are gone); list again and re-watch"
                    )
                rows = conn.execute(
                    "SELECT revision, kind, key, value FROM changes"
                    " WHERE revision >= ? AND revision <= ? AND key >= ? AND key < ?"
                    " ORDER BY revision LIMIT ?",
                    (next_revision, current, low, high, _WATCH_BATCH),
                ).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"store database {self.path}: {exc}") from exc
        events = [
            WatchEvent(kind, key, None if value is None else bytes(value), revision)
            for revision, kind, key, value in rows
        ]
        if len(rows) == _WATCH_BATCH:
            return events, rows[-1][0] + 1
        # Everything up to `current` has been seen, matching or not.
        return events, max(next_revision, current + 1)

    # --- leases -------------------------------------------------------------

    async def grant_lease(self, ttl: float) -> Lease:
        _check_ttl(ttl)

        def op(conn: sqlite3.Connection) -> Lease:
            with _transaction(conn, write=True):
                cursor = conn.execute(
                    "INSERT INTO leases (ttl, expires) VALUES (?, ?)", (ttl, time.time() + ttl)
                )
                assert cursor.lastrowid is not None
                return Lease(cursor.lastrowid, ttl)

        return await self._run(op)

    async def keep_alive(self, lease: Lease) -> None:
        def op(conn: sqlite3.Connection) -> None:
            now = time.time()
            with _transaction(conn, write=True):
                _collect_expired(conn, now)
                updated = conn.execute(
                    "UPDATE leases SET expires = ? + ttl WHERE id = ?", (now, lease.id)
                ).rowcount
            if not updated:
                raise StoreError(f"lease {lease.id} has expired or was revoked; its keys are gone")

        await self._run(op)
        self._notify()  # collecting may have deleted keys

    async def revoke(self, lease: Lease) -> None:
        def op(conn: sqlite3.Connection) -> None:
            with _transaction(conn, write=True):
                _collect_expired(conn, time.time())
                _end_leases(conn, [lease.id])

        await self._run(op)
        self._notify()

    # --- locks --------------------------------------------------------------

    async def lock(self, name: str, *, ttl: float) -> AbstractAsyncContextManager[None]:
        """See :meth:`tlsgate.store.base.Store.lock`. Waiters poll every ``poll_interval``."""
        _check_key(name)
        _check_ttl(ttl)
        holder = self._holder_prefix + uuid.uuid4().hex
        while True:
            attempt = asyncio.ensure_future(self._run(lambda c: _try_lock(c, name, holder, ttl)))
            try:
                # Shielded: if we are cancelled while the attempt runs in its
                # thread, we still learn whether it took the lock, and give it back.
                acquired = await asyncio.shield(attempt)
            except asyncio.CancelledError:
                with contextlib.suppress(StoreError, asyncio.CancelledError):
                    if await attempt:
                        await self._run(lambda c: _unlock(c, name, holder))
                raise
            if acquired:
                break
            await asyncio.sleep(self._poll_interval)
        held = _HeldLock(self, name, holder, ttl)
        self._held_locks[holder] = held
        return held

    async def _renew_lock(self, name: str, holder: str, ttl: float) -> bool:
        return await self._run(lambda c: _renew(c, name, holder, ttl))

    async def _release_lock(self, name: str, holder: str) -> None:
        self._held_locks.pop(holder, None)
        await self._run(lambda c: _unlock(c, name, holder))

    # --- lifecycle ----------------------------------------------------------

    async def close(self) -> None:
        """Close the store: watches end, held locks are released, further calls fail."""
        if self._closed:
            return
        for held in list(self._held_locks.values()):
            await held.release()
        self._closed = True
        self._notify()

        def shut() -> None:
            with self._db_lock:
                self._conn.close()

        await asyncio.to_thread(shut)


class _HeldLock:
    """A lock this process holds: renewed in the background until released."""

    def __init__(self, store: SqliteStore, name: str, holder: str, ttl: float) -> None:
        self._store = store
        self._name = name
        self._holder = holder
        self._ttl = ttl
        self._released = False
        self._renewer = asyncio.create_task(self._renew_forever(), name=f"lock renewal {name}")

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self._ttl / 3)
            try:
                still_ours = await self._store._renew_lock(self._name, self._holder, self._ttl)
            except StoreError as exc:
                log.warning("could not renew the lock %r: %s (retrying)", self._name, exc)
                continue
            if not still_ours:
                # We stalled past the TTL and someone else took over; renewing
                # would steal it back. The holder finds out on release.
                log.error("lost the lock %r: it expired and was taken over", self._name)
                return

    async def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._renewer
        try:
            await self._store._release_lock(self._name, self._holder)
        except StoreError as exc:
            # Not raised: it would hide the exception that may be ending the
            # `async with` body. The lock expires by itself after its TTL.
            log.warning("could not release the lock %r (it expires by itself): %s", self._name, exc)

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.release()


# --- SQL helpers (run in a worker thread, on a connection nobody else is using) ---


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection, *, write: bool = False) -> Iterator[None]:
    # IMMEDIATE takes the write lock up front (waiting up to busy_timeout), so
    # two writers never deadlock upgrading read locks.
    conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
    try:
        yield
        conn.execute("COMMIT")  # a failed COMMIT (SQLITE_FULL, ...) is rolled back too
    except BaseException:
        _rollback(conn)
        raise


def _rollback(conn: sqlite3.Connection) -> None:
    """End the failed transaction, so the connection can start the next one.

    SQLite may have rolled back by itself (it does on SQLITE_FULL, IOERR, NOMEM,
    BUSY); then there is nothing to do. A ROLLBACK that fails must not hide the
    error that led to it.
    """
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _has_schema(conn: sqlite3.Connection) -> bool:
    """Whether every table of ``_SCHEMA`` exists (one read, no lock beyond a WAL snapshot).

    The schema script creates them and the meta rows in one transaction, so when
    the tables are there the rows are too.
    """
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return set(_TABLES) <= {row[0] for row in rows}


def _meta(conn: sqlite3.Connection, name: str) -> int:
    row = conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
    return 0 if row is None else int(row[0])


def _current_revision(conn: sqlite3.Connection) -> int:
    return _meta(conn, "revision")


def _next_revision(conn: sqlite3.Connection) -> int:
    row = conn.execute(
        "UPDATE meta SET value = value + 1 WHERE name = 'revision' RETURNING value"
    ).fetchone()
    return int(row[0])


def _log_change(
    conn: sqlite3.Connection,
    revision: int,
    kind: Literal["put", "delete"],
    key: str,
    value: bytes | None,
) -> None:
    conn.execute(
        "INSERT INTO changes (revision, kind, key, value) VALUES (?, ?, ?, ?)",
        (revision, kind, key, value),
    )


def _has_expired_leases(conn: sqlite3.Connection, now: float) -> bool:
    found = conn.execute("SELECT 1 FROM leases WHERE expires <= ? LIMIT 1", (now,))
    return found.fetchone() is not None


def _collect_expired(conn: sqlite3.Connection, now: float) -> None:
    """Inside a write transaction: end every lease past its deadline."""
    ids = [row[0] for row in conn.execute("SELECT id FROM leases WHERE expires <= ?", (now,))]
    if ids:
        _end_leases(conn, ids)


def _end_leases(conn: sqlite3.Connection, ids: list[int]) -> None:
    """Inside a write transaction: delete the leases and their keys, logging deletes."""
    for lease_id in ids:
        keys = [
            row[0]
            for row in conn.execute("SELECT key FROM kv WHERE lease = ? ORDER BY key", (lease_id,))
        ]
        for key in keys:
            conn.execute("DELETE FROM kv WHERE key = ?", (key,))
            _log_change(conn, _next_revision(conn), "delete", key, None)
        conn.execute("DELETE FROM leases WHERE id = ?", (lease_id,))


def _try_lock(conn: sqlite3.Connection, name: str, holder: str, ttl: float) -> bool:
    now = time.time()
    # A plain read first: waiters polling a held lock do not queue for the write lock.
    row = conn.execute("SELECT expires FROM locks WHERE name = ?", (name,)).fetchone()
    if row is not None and row[0] > now:
        return False
    with _transaction(conn, write=True):
        row = conn.execute("SELECT expires FROM locks WHERE name = ?", (name,)).fetchone()
        if row is not None and row[0] > now:
            return False
        conn.execute(
            "INSERT OR REPLACE INTO locks (name, holder, expires) VALUES (?, ?, ?)",
            (name, holder, now + ttl),
        )
    return True


def _renew(conn: sqlite3.Connection, name: str, holder: str, ttl: float) -> bool:
    with _transaction(conn, write=True):
        updated = conn.execute(
            "UPDATE locks SET expires = ? WHERE name = ? AND holder = ?",
            (time.time() + ttl, name, holder),
        ).rowcount
    return updated == 1


def _unlock(conn: sqlite3.Connection, name: str, holder: str) -> None:
    with _transaction(conn, write=True):
        conn.execute("DELETE FROM locks WHERE name = ? AND holder = ?", (name, holder))


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not key or "\x00" in key:
        raise ValueError(f"store keys are non-empty strings without NUL, not {key!r}")


def _check_ttl(ttl: float) -> None:
    if not ttl > 0:
        raise ValueError(f"a ttl must be positive seconds, not {ttl!r}")


def _prefix_range(prefix: str) -> tuple[str, str | bytes]:
    """(low, high) such that ``low <= key < high`` iff ``key.startswith(prefix)``.

    SQLite compares TEXT as UTF-8 bytes, and UTF-8 byte order is code point
    order, so bumping the last code point gives the exclusive upper bound
    (trailing U+10FFFF cannot be bumped and is dropped first; surrogates are
    not encodable and are skipped). With nothing left to bump the bound is a
    BLOB: SQLite sorts every TEXT value before every BLOB.
    """
    stem = prefix.rstrip("\U0010ffff")
    if not stem:
        return prefix, b""
    bumped = ord(stem[-1]) + 1
    if 0xD800 <= bumped <= 0xDFFF:
        bumped = 0xE000
    return prefix, stem[:-1] + chr(bumped)
