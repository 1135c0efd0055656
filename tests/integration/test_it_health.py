"""Active health checks (rise/fall) take servers out of and back into rotation;
app servers run as subprocesses so a test can kill and restart them."""

from __future__ import annotations

import collections
import threading
import time

import pytest
from harness import AppProcFactory, GateFactory, app_admin, free_port, http_client, table

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

HEALTH = {"path": "/healthz", "interval": "200ms", "timeout": "100ms", "rise": 1, "fall": 2}
# fall 2 x interval 0.2s (+ timeouts, + scheduling): well within this.
SETTLE = 1.5


def gate_for(make_gate: GateFactory, addresses: list[str], **backend: object) -> int:
    port = free_port()
    make_gate(
        table("listeners", name="http", bind=[f"127.0.0.1:{port}"], protocol="http", backend="app")
        + table(
            "backends",
            name="app",
            servers=addresses,
            balance="round_robin",
            health=HEALTH,
            **backend,
        )
    )
    return port


def served_by(port: int, n: int) -> tuple[collections.Counter[str], collections.Counter[int]]:
    names: collections.Counter[str] = collections.Counter()
    statuses: collections.Counter[int] = collections.Counter()
    with http_client() as c:
        for _ in range(n):
            r = c.get(f"http://127.0.0.1:{port}/echo")
            statuses[r.status_code] += 1
            if r.status_code == 200:
                names[r.json()["name"]] += 1
    return names, statuses


def test_killed_server_leaves_rotation_and_comes_back(
    make_app_proc: AppProcFactory, make_gate: GateFactory
) -> None:
    apps = [make_app_proc(f"p{i}") for i in (1, 2, 3)]
    # retries = 0: a request sent to the dead server would fail, so success after
    # the fall threshold proves the health check took it out of rotation.
    port = gate_for(make_gate, [a.address for a in apps], retries=0)
    names, statuses = served_by(port, 30)
    assert statuses == {200: 30}
    assert names == {"p1": 10, "p2": 10, "p3": 10}

    apps[1].kill()
    time.sleep(SETTLE)
    names, statuses = served_by(port, 30)
    assert statuses == {200: 30}, "requests failed after the fall threshold"
    assert set(names) == {"p1", "p3"}

    apps[1].start()  # same port
    time.sleep(SETTLE)
    names, statuses = served_by(port, 30)
    assert statuses == {200: 30}
    assert names == {"p1": 10, "p2": 10, "p3": 10}


def test_failing_health_endpoint_takes_a_live_server_out(
    make_app_proc: AppProcFactory, make_gate: GateFactory
) -> None:
    """The server still answers requests: only the active check can exclude it."""
    apps = [make_app_proc(f"p{i}") for i in (1, 2)]
    port = gate_for(make_gate, [a.address for a in apps])
    app_admin(apps[0].address, "/admin/health?ok=0")
    time.sleep(SETTLE)
    names, statuses = served_by(port, 20)
    assert statuses == {200: 20}
    assert set(names) == {"p2"}
    app_admin(apps[0].address, "/admin/health?ok=1")
    time.sleep(SETTLE)
    names, _ = served_by(port, 20)
    assert names == {"p1": 10, "p2": 10}


def test_kill_under_traffic_with_retries(
    make_app_proc: AppProcFactory, make_gate: GateFactory
) -> None:
    """Continuous traffic while a server dies: once the fall threshold has passed no
    request fails, and until then only requests already sent to it may."""
    apps = [make_app_proc(f"p{i}") for i in (1, 2, 3)]
    port = gate_for(make_gate, [a.address for a in apps], retries=2)
    results: list[tuple[float, int, str]] = []
    stop = threading.Event()

    def traffic() -> None:
        with http_client(timeout=5) as c:
            while not stop.is_set():
                try:
                    r = c.get(f"http://127.0.0.1:{port}/echo")
                    name = r.json()["name"] if r.status_code == 200 else ""
                    results.append((time.monotonic(), r.status_code, name))
                except Exception as exc:  # a client-side failure is a failed request
                    results.append((time.monotonic(), 0, repr(exc)))

    t = threading.Thread(target=traffic)
    t.start()
    try:
        time.sleep(0.5)
        killed_at = time.monotonic()
        apps[1].kill()
        time.sleep(SETTLE + 1.0)
    finally:
        stop.set()
        t.join(10)
    after = [r for r in results if r[0] > killed_at + SETTLE]
    assert len(after) > 20
    assert all(status == 200 for _, status, _ in after), after
    assert "p2" not in {name for _, _, name in after}
    before_failures = [r for r in results if r[0] <= killed_at + SETTLE and r[1] != 200]
    # Connects to the dead server are retried; at most the request in flight
    # at the moment of the kill can fail.
    assert len(before_failures) <= 1, before_failures
