"""One node per data_dir: the supervisor's flock on ``<data_dir>/tlsgate.lock``.

The lock belongs to the open file description, so two opens in one process
conflict just as two processes do; the tests use both, and a child process for
"the kernel releases it when the holder dies" and "children don't inherit it".
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tlsgate.supervisor import LOCK_FILE, NodeLock, StartupError

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from tlsgate.supervisor import NodeLock
    lock = NodeLock.acquire(Path(sys.argv[1]))
    print("locked", flush=True)
    time.sleep(60)
    """
)


def _start_holder(data_dir: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(data_dir)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "locked\n"
    return proc


def test_the_lock_creates_a_private_data_dir_and_records_the_pid(tmp_path: Path) -> None:
    data_dir = tmp_path / "state" / "node"
    lock = NodeLock.acquire(data_dir)
    try:
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        path = data_dir / LOCK_FILE
        assert lock.path == path
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_text() == f"{os.getpid()}\n"
    finally:
        lock.close()


def test_a_second_lock_is_refused_naming_the_holder(tmp_path: Path) -> None:
    first = NodeLock.acquire(tmp_path)
    try:
        with pytest.raises(StartupError) as info:
            NodeLock.acquire(tmp_path)
        message = str(info.value)
        assert f"another tlsgate node (pid {os.getpid()}) is running" in message
        assert f"data_dir {tmp_path}" in message
        assert "give this node its own [node] data_dir" in message
    finally:
        first.close()
    # released: the next one gets it, and a stale pid is replaced by its own
    (tmp_path / LOCK_FILE).write_text("999999999\n")
    NodeLock.acquire(tmp_path).close()
    assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"


def test_another_process_holding_it_is_named_and_its_death_releases_it(tmp_path: Path) -> None:
    holder = _start_holder(tmp_path)
    try:
        with pytest.raises(StartupError, match=f"pid {holder.pid}"):
            NodeLock.acquire(tmp_path)
    finally:
        holder.send_signal(signal.SIGKILL)  # no cleanup code runs: the kernel drops the lock
        holder.wait(10)
        assert holder.stdout is not None
        holder.stdout.close()
    NodeLock.acquire(tmp_path).close()


def test_children_do_not_inherit_the_lock(tmp_path: Path) -> None:
    """A worker (any child) never holds it, even started without close_fds."""
    lock = NodeLock.acquire(tmp_path)
    child = subprocess.Popen(["sleep", "30"], close_fds=False)
    try:
        lock.close()
        # the child is still running; had it inherited the descriptor, this would fail
        NodeLock.acquire(tmp_path).close()
    finally:
        child.kill()
        child.wait(10)


def test_a_holder_that_has_not_written_its_pid_yet(tmp_path: Path) -> None:
    first = NodeLock.acquire(tmp_path)
    try:
        os.truncate(tmp_path / LOCK_FILE, 0)
        start = time.monotonic()
        with pytest.raises(StartupError, match=r"its pid is not recorded yet"):
            NodeLock.acquire(tmp_path)
        assert time.monotonic() - start < 3.0
    finally:
        first.close()


def test_a_data_dir_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StartupError) as info:
        NodeLock.acquire(tmp_path / "file" / "data")
    assert f"cannot lock the data_dir {tmp_path / 'file' / 'data'}" in str(info.value)


def test_a_symlinked_lock_file_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("precious\n")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / LOCK_FILE).symlink_to(target)
    with pytest.raises(StartupError, match="cannot open"):
        NodeLock.acquire(data_dir)
    assert target.read_text() == "precious\n"
