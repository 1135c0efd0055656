"""Load balancing: weighted round robin (exact counts), least_conn, ip_hash,
random_two; and passive retry past a dead server. One worker, so the counts
are one balancer's."""

from __future__ import annotations

import collections
import itertools
import threading
import time

import httpx
import pytest
from harness import AppFactory, GateFactory, free_port, http_client, table

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def gate_for(make_gate: GateFactory, servers: list[object], balance: str, **backend: object) -> int:
    port = free_port()
    make_gate(
        table("listeners", name="http", bind=[f"127.0.0.1:{port}"], protocol="http", backend="app")
        + table("backends", name="app", servers=servers, balance=balance, **backend)
    )
    return port


def names(port: int, n: int, *, new_connections: bool, source: str | None = None) -> list[str]:
    url = f"http://127.0.0.1:{port}/echo"
    out = []
    if new_connections:
        for _ in range(n):
            with http_client(local_address=source) as c:
                r = c.get(url)
                assert r.status_code == 200
                out.append(r.json()["name"])
    else:
        with http_client(local_address=source) as c:
            for _ in range(n):
                r = c.get(url)
                assert r.status_code == 200
                out.append(r.json()["name"])
    return out


@pytest.mark.parametrize("new_connections", [False, True], ids=["keep-alive", "new-conns"])
def test_weighted_round_robin_exact_counts(
    make_app: AppFactory, make_gate: GateFactory, new_connections: bool
) -> None:
    a, b, c = make_app("a"), make_app("b"), make_app("c")
    port = gate_for(
        make_gate,
        [a.address, {"address": b.address, "weight": 2}, {"address": c.address, "weight": 3}],
        "round_robin",
    )
    # The weights sum to 6, so any 30 consecutive picks hold each server exactly
    # 5 x its weight times, wherever the rotation started.
    counts = collections.Counter(names(port, 30, new_connections=new_connections))
    assert counts == {"a": 5, "b": 10, "c": 15}


def test_round_robin_interleaves(make_app: AppFactory, make_gate: GateFactory) -> None:
    a, b = make_app("a"), make_app("b")
    port = gate_for(make_gate, [a.address, b.address], "round_robin")
    seq = names(port, 10, new_connections=False)
    assert all(x != y for x, y in itertools.pairwise(seq)), seq


def test_least_conn_avoids_the_busy_server(make_app: AppFactory, make_gate: GateFactory) -> None:
    a, b = make_app("a"), make_app("b")
    port = gate_for(make_gate, [a.address, b.address], "least_conn")
    slow: list[str] = []

    def hold() -> None:
        with http_client(timeout=20) as c:
            slow.append(c.get(f"http://127.0.0.1:{port}/slow?delay=3").json()["name"])

    t = threading.Thread(target=hold)
    t.start()
    time.sleep(0.7)  # the slow request is in flight on one server
    quick = names(port, 8, new_connections=True)
    t.join(10)
    assert len(slow) == 1
    busy = slow[0]
    assert set(quick) == ({"a", "b"} - {busy}), (busy, quick)


def test_ip_hash_is_sticky_per_client_address(make_app: AppFactory, make_gate: GateFactory) -> None:
    apps = [make_app(n) for n in ("a", "b", "c")]
    port = gate_for(make_gate, [x.address for x in apps], "ip_hash")
    chosen = {}
    for i in range(10, 26):
        source = f"127.0.0.{i}"
        got = set(names(port, 4, new_connections=True, source=source))
        assert len(got) == 1, f"{source} was sent to {got}"
        chosen[source] = got.pop()
    # 16 addresses over 3 servers: a hash that spreads at all uses more than one.
    assert len(set(chosen.values())) >= 2, chosen


def test_random_two_uses_every_server(make_app: AppFactory, make_gate: GateFactory) -> None:
    apps = [make_app(n) for n in ("a", "b", "c")]
    port = gate_for(make_gate, [x.address for x in apps], "random_two")
    counts = collections.Counter(names(port, 60, new_connections=False))
    assert set(counts) == {"a", "b", "c"}, counts


def test_random_two_prefers_the_idle_server(make_app: AppFactory, make_gate: GateFactory) -> None:
    """With two servers both are always the two choices: the less loaded one wins."""
    a, b = make_app("a"), make_app("b")
    port = gate_for(make_gate, [a.address, b.address], "random_two")
    slow: list[str] = []

    def hold() -> None:
        with http_client(timeout=20) as c:
            slow.append(c.get(f"http://127.0.0.1:{port}/slow?delay=3").json()["name"])

    t = threading.Thread(target=hold)
    t.start()
    time.sleep(0.7)
    quick = names(port, 8, new_connections=True)
    t.join(10)
    assert set(quick) == ({"a", "b"} - set(slow)), (slow, quick)


def test_retry_past_a_dead_server(make_app: AppFactory, make_gate: GateFactory) -> None:
    """No health checks: the dead server is only found by connecting, and the connect
    is retried on another server, so no request fails, not even the first ones."""
    a, b = make_app("a"), make_app("b")
    dead = f"127.0.0.1:{free_port()}"
    port = gate_for(make_gate, [dead, a.address, b.address], "round_robin", retries=2)
    with http_client() as c:
        statuses: collections.Counter[int] = collections.Counter()
        served: collections.Counter[str] = collections.Counter()
        for _ in range(30):
            r = c.get(f"http://127.0.0.1:{port}/echo")
            statuses[r.status_code] += 1
            if r.status_code == 200:
                served[r.json()["name"]] += 1
    assert statuses == {200: 30}
    assert set(served) == {"a", "b"}


def test_all_servers_dead_without_health_checks_is_502(
    make_gate: GateFactory,
) -> None:
    port = gate_for(
        make_gate, [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"], "round_robin"
    )
    with httpx.Client(timeout=10) as c:
        r = c.get(f"http://127.0.0.1:{port}/")
    assert r.status_code in (502, 503)
