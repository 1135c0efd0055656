"""keyfiles: exact modes whatever the umask, atomic replacement, no temp debris."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tlsgate import keyfiles


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o022, 0o077, 0o000])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def test_write_private_is_0600(tmp_path: Path, umask: int) -> None:
    target = tmp_path / "server.key"
    keyfiles.write_private(target, b"secret")
    assert target.read_bytes() == b"secret"
    assert _mode(target) == 0o600


def test_write_public_is_0644(tmp_path: Path, umask: int) -> None:
    target = tmp_path / "chain.pem"
    keyfiles.write_public(target, b"cert")
    assert _mode(target) == 0o644


def test_replace_narrows_an_existing_wide_file(tmp_path: Path) -> None:
    target = tmp_path / "server.key"
    target.write_bytes(b"old")
    target.chmod(0o666)
    keyfiles.write_private(target, b"new")
    assert target.read_bytes() == b"new"
    assert _mode(target) == 0o600


def test_replace_is_a_new_inode_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "server.key"
    keyfiles.write_private(target, b"one")
    before = target.stat().st_ino
    # A reader holding the old file keeps seeing the old, complete content.
    with target.open("rb") as old_reader:
        keyfiles.write_private(target, b"two" * 10_000)
        assert old_reader.read() == b"one"
    assert target.stat().st_ino != before
    assert target.read_bytes() == b"two" * 10_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["server.key"]


def test_concurrent_readers_never_see_a_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "cert.pem"
    versions = [bytes([i]) * 200_000 for i in range(1, 6)]
    keyfiles.write_public(target, versions[0])
    seen: set[bytes] = set()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            seen.add(target.read_bytes())

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(5):
            for data in versions:
                keyfiles.write_public(target, data)
    finally:
        stop.set()
        thread.join()
    assert seen <= set(versions)


def test_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "server.key"
    keyfiles.write_private(target, b"old")
    with pytest.raises(TypeError):
        keyfiles.write_private(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["server.key"]


def test_missing_directory_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        keyfiles.write_private(tmp_path / "nope" / "server.key", b"x")


def test_write_private_exclusive_creates_once(tmp_path: Path) -> None:
    target = tmp_path / "store.key"
    assert keyfiles.write_private_exclusive(target, b"first") is True
    assert keyfiles.write_private_exclusive(target, b"second") is False
    assert target.read_bytes() == b"first"
    assert _mode(target) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.key"]


def test_write_private_exclusive_race_has_one_winner(tmp_path: Path) -> None:
    target = tmp_path / "store.key"
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def create(i: int) -> None:
        barrier.wait()
        results.append(keyfiles.write_private_exclusive(target, bytes([i]) * 32))

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1
    winner = target.read_bytes()
    assert len(winner) == 32
    assert len(set(winner)) == 1
