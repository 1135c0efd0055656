"""One node per data_dir (issue 8, defect 7).

Before the lock, a second ``tlsgate serve`` with the same config bound the same
ports through SO_REUSEPORT and quietly took part of the traffic. Now it exits 1
naming the running node's pid. Commands that only read still work while the
node runs, and the lock never outlives its supervisor: after a SIGKILL (its
orphaned workers still alive) a new node starts at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading

import httpx
import psutil
import pytest
from harness import (
    READY_LINE,
    TLSGATE,
    AppFactory,
    GateFactory,
    Tlsgate,
    free_port,
    http_client,
    table,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def _config(port: int, app: str) -> str:
    return table(
        "listeners", name="http", bind=[f"127.0.0.1:{port}"], protocol="http", backend="app"
    ) + table("backends", name="app", servers=[app])


def _run(gate: Tlsgate, *args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    """``tlsgate ARGS -c <gate's config>``; a command still running at ``timeout`` is killed
    (a second node that started serving would never exit on its own)."""
    proc = subprocess.Popen(
        [str(TLSGATE), *args, "-c", str(gate.config_path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"'tlsgate {' '.join(args)}' was still running after {timeout}s:\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_a_second_node_with_the_same_data_dir_exits_naming_the_first(
    make_app: AppFactory, make_gate: GateFactory
) -> None:
    app = make_app("app")
    port = free_port()
    gate = make_gate(_config(port, app.address), workers=2)
    workers = gate.worker_pids()

    second = _run(gate, "serve")

    assert second.returncode == 1, second.stderr
    assert f"another tlsgate node (pid {gate.pid}) is running" in second.stderr
    assert f"data_dir {gate.data_dir}" in second.stderr
    assert (gate.data_dir / "tlsgate.lock").read_text() == f"{gate.pid}\n"
    # the first node is untouched and still the only one serving
    assert gate.worker_pids() == workers
    assert gate.error_log_text().count(READY_LINE) == 1
    with http_client() as c:
        assert c.get(f"http://127.0.0.1:{port}/echo").json()["name"] == "app"


def test_read_only_commands_do_not_need_the_lock(
    make_app: AppFactory, make_gate: GateFactory
) -> None:
    app = make_app("app")
    gate = make_gate(_config(free_port(), app.address))
    check = _run(gate, "check")
    assert check.returncode == 0, check.stderr
    assert "configuration OK" in check.stdout
    listing = _run(gate, "certs", "list")
    assert listing.returncode == 0, listing.stderr


def test_a_killed_supervisor_leaves_no_lock_behind(
    make_app: AppFactory, make_gate: GateFactory
) -> None:
    app = make_app("app")
    port = free_port()
    config = _config(port, app.address)
    gate = make_gate(config, workers=2, shutdown_timeout="20s")
    orphans = gate.worker_pids()
    # a request in flight keeps its worker alive, draining, after the supervisor is gone
    slow: list[object] = []

    def request() -> None:
        try:
            with http_client(timeout=20) as c:
                slow.append(c.get(f"http://127.0.0.1:{port}/slow?delay=4").status_code)
        except httpx.HTTPError as exc:
            slow.append(exc)

    in_flight = threading.Thread(target=request)
    in_flight.start()
    wait_until(lambda: app.state.request_count >= 1, 5, what="the slow request to reach the app")
    os.kill(gate.pid, signal.SIGKILL)  # the supervisor alone; no cleanup code runs
    assert gate.proc is not None
    gate.proc.wait(10)

    before = gate.error_log_text().count(READY_LINE)
    again = Tlsgate(gate.workdir, config, workers=2)
    with gate.stdout_log.open("ab") as out:
        again.proc = subprocess.Popen(
            [str(TLSGATE), "serve", "-c", str(again.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=gate.workdir,
        )
    try:
        again.wait_for_log(READY_LINE, before + 1, 20.0)
        assert (gate.data_dir / "tlsgate.lock").read_text() == f"{again.pid}\n"
        draining = [p for p in orphans if _alive(p)]
        assert draining, "the old worker with the request in flight should still be draining"
        assert not set(again.worker_pids()) & set(orphans)
        with http_client() as c:
            assert c.get(f"http://127.0.0.1:{port}/echo").json()["name"] == "app"
        # a worker restart is not blocked by the lock either
        victim = again.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda: len(again.worker_pids()) == 2 and victim not in again.worker_pids(),
            10,
            what="the killed worker to be replaced",
        )
        assert again.stop() == 0
        in_flight.join(20)
        assert slow == [200]  # the orphaned worker finished it
    finally:
        again.kill()


def _alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
