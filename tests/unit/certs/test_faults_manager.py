"""Certificate manager faults (issue 8): the store fails under it, the CA is unreachable.

Regression tests for defects the fault suite found in ``CertificateManager``:

* an issued certificate was stored as three separate writes (chain, key, meta.json):
  a failure after the first (disk full, store locked, process killed) left the new
  chain beside the old key, which the next start refused, so the node fell back to
  a self-signed placeholder although a valid certificate had been in service;
* the store watcher died on the first failed write (deleting a handled renew
  request on a full disk), silently: the node ignored every later ``certs renew``
  and every certificate other nodes stored, until a restart;
* a damaged ``renew_at`` in meta.json (not a date, no UTC offset) raised out of
  ``load``, which stops a node from starting, or out of the renewal loop;
* while another process held the store database, the wait for a certificate's lock
  was silent for the store's whole ``busy_timeout`` (10 s) instead of being logged
  after ``LOCK_WAIT_NOTICE`` (1 s), and then retried from scratch.

And the backoff while the CA cannot be reached, attempt after attempt. The store is
a real ``SqliteStore`` whose failures are real SQLite failures (a trigger aborts one
write); the CA is a closed port, except where an issued chain is needed: there the
order itself is replaced by a chain from a local CA.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar, cast

import pytest

from tlsgate.ca.local import IssuedCertificate, LocalCA
from tlsgate.certs.bundle import servable_bundle
from tlsgate.certs.manager import BACKOFF_START, CertificateManager, Managed
from tlsgate.config.loader import load_config
from tlsgate.errors import StoreError
from tlsgate.store import SqliteStore, Store, WatchEvent

T = TypeVar("T")
NAMES = ["www.faults.test"]
PREFIX = "certs/www/ecdsa-p256"


def run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(30):
            return await coro

    return asyncio.run(bounded())


class Sink:
    """A challenge sink that publishes nothing (no order reaches a CA here)."""

    def set_http01(self, token: str, key_authorization: str | None) -> None:
        pass

    def set_tls_alpn01(self, name: str, cert_and_key: tuple[bytes, bytes] | None) -> None:
        pass

    async def challenges_published(self) -> None:
        pass


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Node:
    manager: CertificateManager
    store: SqliteStore
    db: Path
    changes: list[int]

    @property
    def managed(self) -> Managed:
        return self.manager.managed[0]


def make_node(tmp_path: Path) -> Node:
    path = tmp_path / "tlsgate.toml"
    path.write_text(
        f"""
[node]
name = "t"
data_dir = {json.dumps(str(tmp_path / "data"))}

[acme]
directory = "https://127.0.0.1:{closed_port()}/dir"
key_types = ["ecdsa-p256"]
challenges = ["tls-alpn-01"]

[[certificates]]
name = "www"
domains = {json.dumps(NAMES)}
issuer = "acme"

[[listeners]]
name = "https"
bind = ["127.0.0.1:18443"]
protocol = "https"
backend = "app"

[[backends]]
name = "app"
servers = ["127.0.0.1:9001"]
"""
    )
    db = tmp_path / "state.db"
    store = SqliteStore(db, poll_interval=0.05)
    changes: list[int] = []
    manager = CertificateManager(load_config(str(path)), store, Sink(), lambda: changes.append(1))
    return Node(manager, store, db, changes)


@pytest.fixture(scope="module")
def ca() -> LocalCA:
    return LocalCA.create("manager faults CA")


async def put_issued(store: Store, issued: IssuedCertificate, meta: object = None) -> None:
    """What a manager stores after issuing (``meta`` None: a valid record, not due)."""
    if meta is None:
        meta = {"renew_at": (datetime.now(UTC) + timedelta(days=30)).isoformat()}
    await store.put(f"{PREFIX}/chain.pem", issued.chain_pem)
    await store.put(f"{PREFIX}/privkey.key", issued.key_pem)
    await store.put(f"{PREFIX}/meta.json", json.dumps(meta).encode())


def sql(db: Path, statement: str) -> None:
    """Run one statement on the store's file from another connection (as another process)."""
    conn = sqlite3.connect(db)
    conn.execute(statement)
    conn.commit()
    conn.close()


def fingerprint_in_store(store: Store) -> str:
    async def read() -> str:
        chain = await store.get(f"{PREFIX}/chain.pem")
        key = await store.get(f"{PREFIX}/privkey.key")
        assert chain is not None
        assert key is not None
        return servable_bundle("www", NAMES, chain.value, key.value).fingerprint_sha256

    return run(read())


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


# --------------------------------------------------------------------------- a write that fails


def test_an_issued_certificate_is_stored_whole_or_not_at_all(
    ca: LocalCA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    old, new = ca.issue(NAMES), ca.issue(NAMES)
    node = make_node(tmp_path)

    async def order(m: Managed, replaces: str | None) -> tuple[bytes, bytes]:
        return new.chain_pem, new.key_pem  # what the CA would have issued

    monkeypatch.setattr(node.manager, "_order", order)

    async def body() -> None:
        await put_issued(node.store, old)
        await node.manager.load()
        current = node.managed.bundle
        assert current is not None
        # The store fails on the private key, after the chain was accepted.
        sql(
            node.db,
            "CREATE TRIGGER fail_key BEFORE INSERT ON kv "
            f"WHEN NEW.key = '{PREFIX}/privkey.key' "
            "BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
        )
        assert not await node.manager.obtain(node.managed, force=True)
        assert "issuing failed (attempt 1)" in caplog.text
        assert "injected failure" in caplog.text
        assert node.managed.bundle is not None
        assert node.managed.bundle.fingerprint_sha256 == current.fingerprint_sha256
        assert node.changes == []

    with caplog.at_level(logging.INFO, logger="tlsgate.certs"):
        run(body())
    old_fp = servable_bundle("www", NAMES, old.chain_pem, old.key_pem).fingerprint_sha256
    # Before the fix: the new chain with the old key, refused at the next start.
    assert fingerprint_in_store(node.store) == old_fp
    restarted = make_node(tmp_path)
    run(restarted.manager.load())
    assert restarted.managed.bundle is not None
    assert restarted.managed.bundle.fingerprint_sha256 == old_fp

    # The store works again: the next attempt stores all of it.
    sql(node.db, "DROP TRIGGER fail_key")
    assert run(node.manager.obtain(node.managed, force=True))
    new_fp = servable_bundle("www", NAMES, new.chain_pem, new.key_pem).fingerprint_sha256
    assert fingerprint_in_store(node.store) == new_fp
    meta = run(node.store.get(f"{PREFIX}/meta.json"))
    assert meta is not None
    record = json.loads(meta.value)
    assert (record["fingerprint_sha256"], record["failures"], record["last_error"]) == (
        new_fp,
        0,
        "",
    )
    assert record["retry_at"] is None
    assert node.changes == [1]
    run(node.store.close())
    run(restarted.store.close())


def test_the_store_watch_outlives_a_failed_write(
    ca: LocalCA, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = make_node(tmp_path)
    request = "certs/www/renew-request"

    async def body() -> None:
        await put_issued(node.store, ca.issue(NAMES))
        await node.manager.load()
        watcher = asyncio.get_running_loop().create_task(node.manager.watch_store())
        cli = SqliteStore(node.db, poll_interval=0.05)  # the operator's `certs renew`
        try:
            await asyncio.sleep(0.2)  # the watch has started
            # Deleting the handled request fails (as on a full disk).
            sql(
                node.db,
                "CREATE TRIGGER fail_delete BEFORE DELETE ON kv "
                f"WHEN OLD.key = '{request}' "
                "BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
            )
            await cli.put(request, b'{"force": false}')

            async def seen() -> bool:
                return "not due" in caplog.text

            await wait_for(seen, 10, "the first renew request to be seen")
            await asyncio.sleep(0.2)
            assert await cli.get(request) is not None  # it could not be deleted
            # The next request is handled: before the fix the watcher was dead.
            sql(node.db, "DROP TRIGGER fail_delete")
            await cli.put(request, b'{"force": false}')

            async def handled() -> bool:
                return await cli.get(request) is None

            await wait_for(handled, 10, "the second renew request to be handled")
            assert "not due" in caplog.text
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            await cli.close()
            await node.store.close()

    with caplog.at_level(logging.INFO, logger="tlsgate.certs"):
        run(body())
    assert f"certificate www: could not act on {request}" in caplog.text
    assert "injected failure" in caplog.text


class WatchFailsOnce:
    """The real store, except that its first watch fails before it yields anything
    (as a watch whose poll hits a store error, or whose revision was compacted)."""

    def __init__(self, inner: SqliteStore) -> None:
        self.inner = inner
        self.failed = False

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def watch(
        self, prefix: str, *, start_revision: int | None = None
    ) -> AsyncGenerator[WatchEvent, None]:
        if not self.failed:
            self.failed = True
            return self._fail()
        return self.inner.watch(prefix, start_revision=start_revision)

    async def _fail(self) -> AsyncGenerator[WatchEvent, None]:
        await asyncio.sleep(0.1)
        if self.failed:  # always: set before this generator runs
            raise StoreError("injected watch failure")
        yield WatchEvent("put", "never", b"", 0)


def test_a_failed_watch_is_started_again_and_catches_up(
    ca: LocalCA, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = make_node(tmp_path)
    flaky = WatchFailsOnce(node.store)
    node.manager.store = cast(Store, flaky)
    request = "certs/www/renew-request"

    async def body() -> None:
        await put_issued(node.store, ca.issue(NAMES))
        await node.manager.load()
        watcher = asyncio.get_running_loop().create_task(node.manager.watch_store())
        cli = SqliteStore(node.db, poll_interval=0.05)
        try:
            await asyncio.sleep(0.05)
            await cli.put(request, b'{"force": false}')  # while the watch is failing

            async def handled() -> bool:
                return await cli.get(request) is None

            await wait_for(handled, 10, "the request made during the failure to be handled")
            assert flaky.failed
            assert not watcher.done()
            await cli.put(request, b'{"force": false}')  # and the new watch works
            await wait_for(handled, 10, "a request after the new watch started")
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            await cli.close()
            await node.store.close()

    with caplog.at_level(logging.INFO, logger="tlsgate.certs"):
        run(body())
    assert "watching the store failed: injected watch failure; watching again in 1s" in caplog.text
    assert caplog.text.count("not due") == 2


LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
conn.execute("BEGIN EXCLUSIVE")
conn.execute("UPDATE meta SET value = value WHERE name = 'revision'")
print("LOCKED", flush=True)
sys.stdin.read()
"""


def test_a_store_held_by_another_process_is_waited_for_and_said_at_once(
    ca: LocalCA, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = make_node(tmp_path)
    run(put_issued(node.store, ca.issue(NAMES)))
    run(node.store.close())
    node.store = SqliteStore(node.db, poll_interval=0.05, busy_timeout=2.0)
    node.manager.store = node.store
    locker = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(node.db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert locker.stdout is not None
    assert locker.stdin is not None
    stdin = locker.stdin

    async def body() -> None:
        await node.manager.load()  # reads go on
        task = asyncio.get_running_loop().create_task(node.manager.obtain(node.managed, force=True))

        async def noticed() -> bool:
            return "waiting for its lock" in caplog.text

        start = time.monotonic()
        await wait_for(noticed, 5, "the notice that it waits")
        noticed_after = time.monotonic() - start
        assert not task.done()
        stdin.close()  # the other process lets go: the wait ends, the attempt goes on
        assert not await task
        # LOCK_WAIT_NOTICE (1 s), not the store's busy_timeout (2 s) as before the fix
        assert 0.8 < noticed_after < 1.8, noticed_after

    try:
        assert locker.stdout.readline().strip() == b"LOCKED"
        with caplog.at_level(logging.INFO, logger="tlsgate.certs"):
            run(body())
    finally:
        if not stdin.closed:
            stdin.close()
        locker.wait(10)
        locker.stdout.close()
        run(node.store.close())
    assert "or another process holds the store database" in caplog.text
    # the wait was bounded by the other process; then the (unreachable) CA was asked
    assert re.search(r"issuing failed \(attempt 1\): cannot reach the ACME server", caplog.text)
    assert "database is locked" not in caplog.text


@pytest.mark.parametrize(
    "renew_at", ["not a date", "2030-01-01T00:00:00", 12], ids=["garbage", "naive", "number"]
)
def test_a_damaged_renew_at_falls_back_to_the_default(
    ca: LocalCA, tmp_path: Path, renew_at: object
) -> None:
    node = make_node(tmp_path)
    issued = ca.issue(NAMES)

    async def body() -> None:
        try:
            await put_issued(node.store, issued, {"renew_at": renew_at})
            await node.manager.load()  # before the fix: ValueError (a node did not start)
            m = node.managed
            assert m.bundle is not None
            assert m.renew_at is not None
            assert m.bundle.not_before < m.renew_at < m.bundle.not_after
            assert not node.manager.due(m)  # before the fix, "naive": TypeError
        finally:
            await node.store.close()

    run(body())


# --------------------------------------------------------------------------- the CA is unreachable


def test_the_backoff_doubles_while_the_ca_cannot_be_reached(
    ca: LocalCA, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = make_node(tmp_path)
    issued = ca.issue(NAMES)

    async def body() -> None:
        try:
            await put_issued(node.store, issued)
            await node.manager.load()
            current = node.managed.bundle
            for attempt in (1, 2, 3):
                assert not await node.manager.obtain(node.managed, force=True)
                m = node.managed
                wait = m.next_attempt - time.monotonic()
                expected = BACKOFF_START * 2 ** (attempt - 1)
                assert expected * 0.98 <= wait <= expected * 1.1 + 1, (attempt, wait)
                assert m.failures == attempt
                assert "cannot reach the ACME server" in m.last_error
                # the current certificate stays in service
                assert m.bundle is not None
                assert current is not None
                assert m.bundle.fingerprint_sha256 == current.fingerprint_sha256
                assert f"issuing failed (attempt {attempt})" in caplog.text
            meta = await node.store.get(f"{PREFIX}/meta.json")
            assert meta is not None
            record = json.loads(meta.value)
            assert record["failures"] == 3
            assert "cannot reach the ACME server" in record["last_error"]
            retry_in = datetime.fromisoformat(record["retry_at"]) - datetime.now(UTC)
            assert 110 < retry_in.total_seconds() <= 133
            assert record["fingerprint_sha256"] == current.fingerprint_sha256 if current else False
            assert node.changes == []
        finally:
            await node.store.close()

    with caplog.at_level(logging.INFO, logger="tlsgate.certs"):
        run(body())
    assert "the current certificate stays in service" in caplog.text
