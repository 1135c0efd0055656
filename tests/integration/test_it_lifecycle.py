"""Process lifecycle: SIGHUP reload under load (config and certificates), SIGTERM
drain, shutdown deadline, and worker respawn."""

from __future__ import annotations

import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from harness import (
    AppFactory,
    GateFactory,
    PeerClosed,
    Pki,
    RawConn,
    Tlsgate,
    free_port,
    http_client,
    issue_files,
    request_bytes,
    s_client,
    table,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


@dataclass
class Load:
    """Counts from a traffic thread."""

    ok: int = 0
    ok_after_reload: int = 0
    failures: list[str] = field(default_factory=list)
    graceful_closes: int = 0


def keepalive_loop(port: int, stop: threading.Event, reloaded: threading.Event, load: Load) -> None:
    """Requests one after another on one connection; reconnect only when a response
    announced ``Connection: close``. Anything else that ends the connection is a
    dropped connection."""
    conn = RawConn(port)
    try:
        while not stop.is_set():
            try:
                conn.send(request_bytes("GET", "/echo?ka", "localhost"))
                resp = conn.read_response()
            except (PeerClosed, OSError) as exc:
                load.failures.append(f"keep-alive: {exc!r}")
                conn.close()
                conn = RawConn(port)
                continue
            if resp.status != 200:
                load.failures.append(f"keep-alive: status {resp.status}")
            else:
                load.ok += 1
                if reloaded.is_set():
                    load.ok_after_reload += 1
            if "close" in (resp.header("connection") or "").lower():
                load.graceful_closes += 1
                conn.close()
                conn = RawConn(port)
    finally:
        conn.close()


def new_connection_loop(
    port: int, stop: threading.Event, reloaded: threading.Event, load: Load
) -> None:
    while not stop.is_set():
        try:
            with http_client(timeout=5) as c:
                r = c.get(f"http://127.0.0.1:{port}/echo?new", headers={"Connection": "close"})
            if r.status_code == 200:
                load.ok += 1
                if reloaded.is_set():
                    load.ok_after_reload += 1
            else:
                load.failures.append(f"new-conn: status {r.status_code}")
        except httpx.HTTPError as exc:
            load.failures.append(f"new-conn: {exc!r}")


def config_v(port: int, old: str, new: str | None) -> str:
    routes = ""
    backends = table("backends", name="old", servers=[old])
    if new is not None:
        routes = table("routes", listener="http", path_prefix="/new", backend="new")
        backends += table("backends", name="new", servers=[new])
    return (
        table("listeners", name="http", bind=[f"127.0.0.1:{port}"], protocol="http", backend="old")
        + routes
        + backends
    )


def test_sighup_reload_under_load(make_app: AppFactory, make_gate: GateFactory) -> None:
    old, new = make_app("old"), make_app("new")
    port = free_port()
    gate = make_gate(config_v(port, old.address, None), workers=2)
    with http_client() as c:
        assert c.get(f"http://127.0.0.1:{port}/new/x").json()["name"] == "old"

    stop, reloaded = threading.Event(), threading.Event()
    loads = [Load(), Load()]
    threads = [
        threading.Thread(target=keepalive_loop, args=(port, stop, reloaded, loads[0])),
        threading.Thread(target=new_connection_loop, args=(port, stop, reloaded, loads[1])),
    ]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        gate.write_config(config_v(port, old.address, new.address))
        gate.reload()
        reloaded.set()
        time.sleep(1.5)
    finally:
        stop.set()
        for t in threads:
            t.join(10)

    for load in loads:
        assert load.failures == [], load.failures
        assert load.ok > 10
        assert load.ok_after_reload > 3
    with http_client() as c:
        assert c.get(f"http://127.0.0.1:{port}/new/x").json()["name"] == "new"
        assert c.get(f"http://127.0.0.1:{port}/other").json()["name"] == "old"


def test_a_keepalive_client_uses_the_new_graph_after_a_reload(
    make_app: AppFactory, make_gate: GateFactory
) -> None:
    """An open client connection's next request goes by the reloaded config (its routes),
    and its requests keep sharing one pooled connection to the app server, as before."""
    old, new = make_app("old"), make_app("new")
    port = free_port()
    gate = make_gate(config_v(port, old.address, None), workers=1)

    def get(conn: RawConn, path: str) -> dict[str, Any]:
        conn.send(request_bytes("GET", path, "localhost"))
        resp = conn.read_response()
        assert resp.status == 200, resp
        body: dict[str, Any] = resp.json()
        return body

    conn = RawConn(port)
    try:
        assert get(conn, "/new/x")["name"] == "old"
        get(conn, "/other")
        gate.write_config(config_v(port, old.address, new.address))
        gate.reload()
        assert get(conn, "/new/x")["name"] == "new"
        seen = [get(conn, "/other") for _ in range(3)]
    finally:
        conn.close()
    assert [s["name"] for s in seen] == ["old"] * 3
    # one upstream connection carries them all (the retired graph's pool is not used)
    assert len({s["conn_id"] for s in seen}) == 1, seen
    counts = [int(s["requests_on_conn"]) for s in seen]
    assert counts == [counts[0], counts[0] + 1, counts[0] + 2], seen


def test_sighup_reloads_certificates(
    pki: Pki, make_app: AppFactory, make_gate: GateFactory, tmp_path: Path
) -> None:
    app = make_app("app")
    port = free_port()
    first = issue_files(pki.ca, tmp_path / "v1", "rot", ("rotate.test",), "ecdsa-p256")
    config = (
        first.toml()
        + table(
            "listeners", name="https", bind=[f"127.0.0.1:{port}"], protocol="https", backend="app"
        )
        + table("backends", name="app", servers=[app.address])
    )
    gate = make_gate(config)
    probe = s_client(port, servername="rotate.test", ca_file=pki.ca_file)
    assert probe.cert is not None
    assert probe.cert.serial_number == first.certificate.serial_number

    # Renewed in place: same paths, new certificate and key.
    second = issue_files(pki.ca, tmp_path / "v2", "rot", ("rotate.test",), "ecdsa-p256")
    first.cert_file.write_bytes(second.cert_file.read_bytes())
    first.key_file.write_bytes(second.key_file.read_bytes())
    gate.reload()
    probe = s_client(port, servername="rotate.test", ca_file=pki.ca_file)
    assert probe.cert is not None
    assert probe.cert.serial_number == second.certificate.serial_number
    assert "Verify return code: 0 (ok)" in probe.output


def test_reload_with_a_broken_config_keeps_serving(
    make_app: AppFactory, make_gate: GateFactory
) -> None:
    app = make_app("app")
    port = free_port()
    gate = make_gate(config_v(port, app.address, None))
    gate.write_config(config_v(port, app.address, None) + "[[backends]]\nname = 3\n")
    gate.signal(signal.SIGHUP)
    time.sleep(1.0)
    assert gate.proc is not None
    assert gate.proc.poll() is None
    with http_client() as c:
        assert c.get(f"http://127.0.0.1:{port}/echo").status_code == 200


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


def test_sigterm_drains_in_flight_requests(make_app: AppFactory, make_gate: GateFactory) -> None:
    app = make_app("app")
    port = free_port()
    gate = make_gate(config_v(port, app.address, None), shutdown_timeout="10s")
    result: list[object] = []

    def slow() -> None:
        try:
            with http_client(timeout=15) as c:
                r = c.get(f"http://127.0.0.1:{port}/slow?delay=2")
                result.append(r.status_code)
                result.append(r.json()["path"])
        except httpx.HTTPError as exc:
            result.append(exc)

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.5)
    gate.signal(signal.SIGTERM)
    # New connections are refused while the old request is still running.
    wait_until(lambda: refused(port), 1.2, what="the listener to close after SIGTERM")
    assert t.is_alive(), "the slow request should still be in flight"
    t.join(15)
    assert result == [200, "/slow"]
    assert gate.proc is not None
    assert gate.proc.wait(10) == 0
    assert refused(port)


def test_sigterm_with_nothing_in_flight_exits_quickly(
    make_app: AppFactory, make_gate: GateFactory
) -> None:
    app = make_app("app")
    port = free_port()
    gate = make_gate(config_v(port, app.address, None), workers=2)
    workers = gate.worker_pids()
    assert len(workers) == 2
    # An idle keep-alive client must not hold the shutdown up.
    with RawConn(port) as idle:
        idle.send(request_bytes("GET", "/echo", "localhost"))
        assert idle.read_response().status == 200
        start = time.monotonic()
        assert gate.stop(10) == 0
        assert time.monotonic() - start < 5
    for pid in workers:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_shutdown_timeout_bounds_the_drain(make_app: AppFactory, make_gate: GateFactory) -> None:
    app = make_app("app")
    port = free_port()
    gate = make_gate(config_v(port, app.address, None), shutdown_timeout="1s")

    outcome: list[object] = []

    def slow() -> None:
        try:
            with http_client(timeout=40) as c:
                outcome.append(c.get(f"http://127.0.0.1:{port}/slow?delay=30").status_code)
        except httpx.HTTPError as exc:
            outcome.append(exc)

    t = threading.Thread(target=slow, daemon=True)
    t.start()
    time.sleep(0.5)
    start = time.monotonic()
    gate.signal(signal.SIGTERM)
    assert gate.proc is not None
    gate.proc.wait(10)
    assert time.monotonic() - start < 1.0 + 3.0
    t.join(5)
    # Cut off at the deadline: the client saw an error, not a 200 after 30 s.
    assert len(outcome) == 1
    assert outcome[0] != 200


def test_killed_worker_is_respawned(make_app: AppFactory, make_gate: GateFactory) -> None:
    app = make_app("app")
    port = free_port()
    gate = make_gate(config_v(port, app.address, None), workers=2)
    before = gate.worker_pids()
    assert len(before) == 2
    psutil.Process(before[0]).kill()

    def respawned() -> list[int] | None:
        now = gate.worker_pids()
        return now if len(now) == 2 and before[0] not in now else None

    after = wait_until(respawned, 10, what="a new worker")
    assert after is not None
    assert before[1] in after
    # The new worker serves; new connections land on both workers.
    ok = 0
    for _ in range(30):
        with http_client(timeout=5) as c:
            ok += c.get(f"http://127.0.0.1:{port}/echo").status_code == 200
    assert ok == 30
    assert gate.proc is not None
    assert gate.proc.poll() is None


def test_every_worker_listens_when_ready(make_app: AppFactory, make_gate: GateFactory) -> None:
    """``tlsgate ready`` means every worker accepts: many connections all succeed."""
    app = make_app("app")
    port = free_port()
    gate: Tlsgate = make_gate(config_v(port, app.address, None), workers=2)
    assert len(gate.worker_pids()) == 2
    statuses = []
    for _ in range(40):
        with http_client(timeout=5) as c:
            statuses.append(c.get(f"http://127.0.0.1:{port}/echo").status_code)
    assert statuses == [200] * 40
