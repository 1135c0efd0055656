"""The fault suite (issue 8): what tlsgate does when the world around it fails.

How this works: one tlsgate (1 worker) for the data-plane faults, with one ``http``
listener whose routes lead, by path prefix, to app servers that fail on purpose
(``faultserver.py``): a closed port, a server that resets the connection before or
in the middle of its response, one that never reads, one that stops in the middle
of a body, one that answers with something that is not HTTP, TLS servers with an
untrusted, a wrong-name and an expired certificate, a plain HTTP server behind
``tls = "verify"``, and one that never answers the ClientHello. Each case checks
three things: what the client sees (a
generic 502/504 page with a request id, or the connection closed when the head had
already gone out), the error-log line that names the cause under that request id,
and that service continues (a good request right after, and a keep-alive
"bystander" connection opened before the first fault, still answering).

The process and disk faults have their own nodes: a worker SIGKILLed under load
(2 workers); the data_dir on a tiny tmpfs that is full when the node starts (its
lock, its store key, its store) or while it runs (a renew request, an export of
certificate files, the node's own store writes), restarted once there is space;
and another process holding ``BEGIN EXCLUSIVE`` on the store. Those nodes have
``[acme]`` with a CA that is a closed port and a certificate put in the store by
the test, so what they write is their own state; the ACME cases that need a real
CA (Pebble stopped, the disk full while an issued certificate is stored) are in
``tests/peers/test_peer_faults.py``.

Figures (time to 502/504, requests lost to the SIGKILL) are printed: run with -s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest
from appserver import AppServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from faultserver import (
    HANG,
    RESET,
    Script,
    ScriptedServer,
    SilentServer,
    SqliteLocker,
    server_context,
    tiny_tmpfs,
)
from harness import (
    READY_LINE,
    TLSGATE,
    AppProcFactory,
    PeerClosed,
    Pki,
    RawConn,
    RawResponse,
    Tlsgate,
    TlsgateFailed,
    free_port,
    request_bytes,
    s_client,
    table,
    toml_str,
    wait_until,
)

from tlsgate.ca.local import LocalCA
from tlsgate.certs.inventory import list_certificates, node_store
from tlsgate.config.loader import load_config
from tlsgate.store import open_store

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

READ_TIMEOUT = 1.0
REQUEST_ID = re.compile(r"request id: ([0-9a-f]{16})\n\Z")
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
PART_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n"
SCRIPTS: dict[str, Script] = {
    "ok": [OK],
    "reset-in-head": [b"HTTP/1.1 200 OK\r\nContent-Le", 0.1, RESET],
    "reset-mid-body": [PART_HEAD + b"x" * 100, 0.2, RESET],
    "hang-mid-body": [PART_HEAD + b"x" * 100, HANG],
    "not-http": [b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n", 0.5],
    "bad-status": [b"HTTP/1.1 2OO OK\r\nContent-Length: 0\r\n\r\n"],
    "binary": [bytes(range(256)) * 4],
    # the TLS servers answer every path they are routed
    **{f"tls-{kind}": [OK] for kind in ("good", "untrusted", "wrong-name", "expired")},
}


def figure(text: str) -> None:
    """A measured figure, printed for the report (pytest -s shows it)."""
    print(f"\nFIGURE {text}")


# --------------------------------------------------------------------------- the stack


@dataclass
class Stack:
    gate: Tlsgate
    port: int
    app: AppServer
    scripted: ScriptedServer
    dead: str  # nothing listens there
    pair_dead: str  # the dead one of two servers
    bystander: RawConn  # opened before any fault, kept alive to the end


@pytest.fixture(scope="module")
def stack(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("faults")
    app = AppServer("faults-app").start()
    scripted = ScriptedServer(SCRIPTS, name="scripted")
    silent = SilentServer()
    stranger = LocalCA.create("a CA nobody trusts")
    now = datetime.now(UTC)
    tls_servers = {
        "good": pki.ca.issue(["app.test"]),
        "untrusted": stranger.issue(["app.test"]),
        "wrong-name": pki.ca.issue(["elsewhere.test"]),
        "expired": pki.ca.issue(
            ["app.test"], not_before=now - timedelta(days=30), not_after=now - timedelta(days=1)
        ),
    }
    servers: list[ScriptedServer | SilentServer] = [scripted, silent]
    for kind, issued in tls_servers.items():
        ctx = server_context(issued.chain_pem, issued.key_pem, work / f"tls-{kind}")
        servers.append(ScriptedServer(SCRIPTS, tls=ctx, name=f"tls-{kind}"))
    tls_addresses = {kind: s.address for kind, s in zip(tls_servers, servers[2:], strict=True)}
    tls_addresses["plain"] = app.address  # plain HTTP behind tls = "verify"
    tls_addresses["silent"] = silent.address  # accepts, never answers the ClientHello
    dead, pair_dead = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    port = free_port()
    quick = {"read_timeout": f"{READ_TIMEOUT:g}s", "connect_timeout": "1s"}
    config = table(
        "listeners", name="web", bind=[f"127.0.0.1:{port}"], protocol="http", backend="scripted"
    )
    routes = {"/app/": "app", "/dead/": "dead", "/pair/": "pair", "/silent/": "silent"}
    routes |= {f"/tls-{kind}/": f"tls-{kind}" for kind in tls_addresses}
    for prefix, backend in routes.items():
        config += table("routes", listener="web", path_prefix=prefix, backend=backend)
    config += (
        table("backends", name="app", servers=[app.address])
        # one connection per request: no stale pooled connection retries anything
        + table(
            "backends",
            name="scripted",
            servers=[scripted.address],
            retries=0,
            max_idle_per_server=0,
            **quick,
        )
        + table("backends", name="silent", servers=[silent.address], retries=0, **quick)
        + table("backends", name="dead", servers=[dead], retries=0, **quick)
        + table("backends", name="pair", servers=[pair_dead, app.address], retries=1, **quick)
    )
    for kind, address in tls_addresses.items():
        config += table(
            "backends",
            name=f"tls-{kind}",
            servers=[address],
            tls="verify",
            ca_file=pki.ca_file,
            server_name="app.test",
            retries=0,
            max_idle_per_server=0,
            **quick,
        )
    gate = Tlsgate(work / "gate", config)
    bystander: RawConn | None = None
    try:
        gate.start()
        bystander = RawConn(port)
        assert ask(bystander, "/app/bystander").status == 200
        yield Stack(gate, port, app, scripted, dead, pair_dead, bystander)
    finally:
        if bystander is not None:
            bystander.close()
        gate.kill()
        for s in servers:
            s.stop()
        app.stop()


def ask(conn: RawConn, path: str) -> RawResponse:
    conn.send(request_bytes("GET", path, "localhost"))
    return conn.read_response()


def unique(path: str) -> str:
    """``path`` made unique, so its access-log entry can be told apart."""
    return f"{path}/{uuid.uuid4().hex}"


def get(stack: Stack, path: str) -> tuple[RawResponse, float]:
    """One request on a new connection: the response and how long it took."""
    with RawConn(stack.port) as c:
        start = time.monotonic()
        resp = ask(c, path)
        return resp, time.monotonic() - start


def logged_path(gate: Tlsgate, path: str) -> dict[str, Any]:
    """The access-log entry of the request for ``path``."""
    return gate.wait_access_log(lambda e: e.get("path") == path)


def error_line(gate: Tlsgate, rid: str) -> str:
    """The error-log line that carries request id ``rid`` (waiting for it)."""

    def find() -> str | None:
        return next((ln for ln in gate.error_log_text().splitlines() if rid in ln), None)

    line = wait_until(find, 10, what=f"an error-log line for request {rid}")
    assert line is not None
    return line


def check_error_page(
    stack: Stack, resp: RawResponse, status: int, causes: list[str]
) -> tuple[dict[str, Any], str]:
    """``resp`` is the generic page for ``status``; both logs name ``causes`` under its id."""
    assert resp.status == status, (resp.status, resp.body)
    text = resp.body.decode()
    m = REQUEST_ID.search(text)
    assert m is not None, text
    rid = m.group(1)
    assert resp.header("x-request-id") == rid
    assert text.startswith({502: "502 Bad Gateway", 504: "504 Gateway Timeout"}[status])
    for cause in causes:
        assert cause not in text, f"{cause!r} told to the client"
    entry = stack.gate.wait_access_log(lambda e: e.get("request_id") == rid)
    line = error_line(stack.gate, rid)
    assert entry["status"] == status
    for cause in causes:
        assert cause in entry["error"], entry
        assert cause in line, line
    assert " WARNING " in line
    return entry, line


def cut_short(stack: Stack, path: str, causes: list[str]) -> str:
    """The logs of a request whose response was cut off after its head: the error line."""
    entry = logged_path(stack.gate, path)
    rid = entry["request_id"]
    assert rid, entry
    line = error_line(stack.gate, rid)
    assert "response cut short, closing the client connection" in line
    for cause in causes:
        assert cause in entry["error"], entry
        assert cause in line, line
    return line


def service_continues(stack: Stack) -> None:
    """A good request through the misbehaving server's listener, and the old bystander."""
    resp, _ = get(stack, unique("/ok"))
    assert (resp.status, resp.body) == (200, b"ok")
    resp = ask(stack.bystander, "/app/bystander")
    assert resp.status == 200
    assert resp.json()["path"] == "/app/bystander"
    assert stack.gate.proc is not None
    assert stack.gate.proc.poll() is None


# --------------------------------------------------------------------------- refused


def test_a_refusing_server_is_a_502_at_once(stack: Stack) -> None:
    resp, elapsed = get(stack, unique("/dead"))
    check_error_page(stack, resp, 502, [f"connecting to {stack.dead} failed", "Connection refused"])
    figure(f"refused connection -> 502 in {elapsed * 1000:.1f} ms")
    assert elapsed < 0.5
    service_continues(stack)


def test_of_two_servers_the_refusing_one_is_retried_then_avoided(stack: Stack) -> None:
    paths = [unique("/pair") for _ in range(12)]
    statuses = [get(stack, p)[0].status for p in paths]
    assert statuses == [200] * len(paths)  # the refused connect was retried on the other
    entries = [logged_path(stack.gate, p) for p in paths]
    assert {e["server"] for e in entries} == {stack.app.address}
    # One refused connect ejects it (max_fails 1) for fail_timeout (10s): never tried again.
    log = stack.gate.error_log_text()
    tried = log.count(f"connecting to {stack.pair_dead} failed: Connection refused")
    assert tried == 1, log
    assert "server ejected for 10s" in log
    service_continues(stack)


# --------------------------------------------------------------------------- reset


def test_a_reset_after_the_head_and_part_of_the_body_closes_the_client(stack: Stack) -> None:
    path = unique("/reset-mid-body")
    with RawConn(stack.port) as c:
        c.send(request_bytes("GET", path, "localhost"))
        with pytest.raises(PeerClosed, match="bytes short"):
            c.read_response()  # the 200 head came, then the connection closed 900 bytes short
        assert bytes(c.buf) == b"x" * 100  # what the server sent before its reset got through
    line = cut_short(stack, path, [f"connection to server {stack.scripted.address} was lost"])
    assert "Connection reset by peer" in line
    service_continues(stack)


def test_a_reset_in_the_middle_of_the_head_is_a_502(stack: Stack) -> None:
    resp, _ = get(stack, unique("/reset-in-head"))
    check_error_page(
        stack, resp, 502, [f"connection to server {stack.scripted.address} was lost", "reset"]
    )
    service_continues(stack)


# --------------------------------------------------------------------------- hang


def test_a_server_that_never_reads_is_a_504_after_read_timeout(stack: Stack) -> None:
    resp, elapsed = get(stack, unique("/silent"))
    check_error_page(stack, resp, 504, ["(backend read_timeout)"])
    figure(f"silent server -> 504 in {elapsed:.2f} s (read_timeout {READ_TIMEOUT:g}s)")
    assert READ_TIMEOUT * 0.9 <= elapsed < READ_TIMEOUT + 1.5
    service_continues(stack)


def test_a_server_that_stops_in_the_middle_of_the_body_is_cut_off(stack: Stack) -> None:
    path = unique("/hang-mid-body")
    with RawConn(stack.port) as c:
        start = time.monotonic()
        c.send(request_bytes("GET", path, "localhost"))
        assert c.read_line() == b"HTTP/1.1 200 OK"  # the head went out at once
        head_at = time.monotonic() - start
        assert dict(c.read_fields())["Content-Length"] == "1000"
        with pytest.raises(PeerClosed, match="900 bytes short"):
            c.read_exact(1000)
        elapsed = time.monotonic() - start
    figure(f"body stalled -> client closed {elapsed:.2f} s after the request")
    assert head_at < READ_TIMEOUT * 0.5
    assert READ_TIMEOUT * 0.9 <= elapsed < READ_TIMEOUT + 1.5
    cut_short(stack, path, ["(backend read_timeout)"])
    service_continues(stack)


# --------------------------------------------------------------------------- garbage


@pytest.mark.parametrize(
    ("path", "cause"),
    [
        ("/not-http", "sent a malformed response"),
        ("/bad-status", "sent a malformed response"),
        ("/binary", "sent a malformed response"),
    ],
)
def test_a_response_that_is_not_http_is_a_502(stack: Stack, path: str, cause: str) -> None:
    resp, _ = get(stack, unique(path))
    check_error_page(stack, resp, 502, [f"server {stack.scripted.address} {cause}"])
    service_continues(stack)


# --------------------------------------------------------------------------- upstream TLS


@pytest.mark.parametrize(
    ("kind", "cause"),
    [
        ("untrusted", "certificate verify failed: unable to get local issuer certificate"),
        ("wrong-name", "certificate verify failed: Hostname mismatch"),
        ("expired", "certificate verify failed: certificate has expired"),
        ("plain", "[SSL: WRONG_VERSION_NUMBER]"),
    ],
)
def test_an_upstream_tls_failure_is_a_502_naming_the_tls_error(
    stack: Stack, kind: str, cause: str
) -> None:
    resp, _ = get(stack, unique(f"/tls-{kind}"))
    _, line = check_error_page(stack, resp, 502, [cause])
    assert "connecting to 127.0.0.1:" in line
    # the same TLS setup with a good certificate works: the failure is the certificate's
    good, _ = get(stack, unique("/tls-good"))
    assert (good.status, good.body) == (200, b"ok")
    service_continues(stack)


def test_an_upstream_tls_handshake_that_hangs_is_a_504_after_connect_timeout(
    stack: Stack,
) -> None:
    resp, elapsed = get(stack, unique("/tls-silent"))
    _, line = check_error_page(stack, resp, 504, ["took longer than 1s"])
    assert "connecting to 127.0.0.1:" in line
    figure(f"TLS handshake with a silent server -> 504 in {elapsed:.2f} s (connect_timeout 1s)")
    assert 0.9 <= elapsed < 2.5
    service_continues(stack)


# --------------------------------------------------------------------------- SIGKILL


@dataclass
class Outcome:
    """One load thread's record: (monotonic time, ok?, what) per request."""

    name: str
    worker: int | None = None  # the worker pid its keep-alive connection is on
    results: list[tuple[float, bool, str]] = field(default_factory=list)
    slowest: float = 0.0  # the longest request, in seconds

    @property
    def failures(self) -> list[tuple[float, bool, str]]:
        return [r for r in self.results if not r[1]]


def worker_of(gate: Tlsgate, conn: RawConn, listen_port: int) -> int | None:
    """The pid of the worker that holds the server side of ``conn``."""
    client_port = conn.sock.getsockname()[1]
    for pid in gate.worker_pids():
        with contextlib.suppress(psutil.NoSuchProcess):
            for c in psutil.Process(pid).net_connections(kind="tcp"):
                if (
                    c.laddr
                    and c.laddr.port == listen_port
                    and c.raddr
                    and c.raddr.port == (client_port)
                ):
                    return pid
    return None


def connections_on_both(gate: Tlsgate, port: int, per_worker: int) -> list[tuple[RawConn, int]]:
    """Keep-alive connections, ``per_worker`` on each worker (SO_REUSEPORT spreads them)."""
    chosen: dict[int, list[RawConn]] = {pid: [] for pid in gate.worker_pids()}
    for _ in range(60):
        conn = RawConn(port)
        assert ask(conn, "/echo").status == 200  # served: the worker has it now
        pid = worker_of(gate, conn, port)
        if pid is not None and len(chosen.get(pid, [per_worker])) < per_worker:
            chosen[pid].append(conn)
        else:
            conn.close()
        if all(len(v) == per_worker for v in chosen.values()):
            return [(c, pid) for pid, conns in chosen.items() for c in conns]
    raise AssertionError(f"could not place {per_worker} connections on each worker: {chosen}")


def keepalive_load(conn: RawConn, port: int, out: Outcome, stop: threading.Event) -> None:
    """Requests back to back on one connection; after a failure, a new connection."""
    try:
        while not stop.is_set():
            try:
                resp = ask(conn, "/echo?ka")
                ok, what = resp.status == 200, str(resp.status)
            except (PeerClosed, OSError) as exc:
                ok, what = False, repr(exc)
            out.results.append((time.monotonic(), ok, what))
            if not ok:
                conn.close()
                conn = RawConn(port)
    finally:
        conn.close()


def fresh_load(port: int, out: Outcome, stop: threading.Event) -> None:
    """One new connection per request (``Connection: close``)."""
    while not stop.is_set():
        start = time.monotonic()
        try:
            with RawConn(port, timeout=10) as c:
                c.send(request_bytes("GET", "/echo?new", "localhost", [("Connection", "close")]))
                resp = c.read_response()
            ok, what = resp.status == 200, str(resp.status)
        except (PeerClosed, OSError) as exc:
            ok, what = False, repr(exc)
        now = time.monotonic()
        out.results.append((now, ok, what))
        out.slowest = max(out.slowest, now - start)


def test_a_worker_sigkilled_under_load_is_restarted_and_only_its_requests_fail(
    make_app_proc: AppProcFactory, tmp_path: Path
) -> None:
    app = make_app_proc("kill-app")
    port = free_port()
    config = table(
        "listeners", name="http", bind=[f"127.0.0.1:{port}"], protocol="http", backend="app"
    ) + table("backends", name="app", servers=[app.address])
    with Tlsgate(tmp_path / "gate", config, workers=2) as gate:
        victim, survivor = gate.worker_pids()
        placed = connections_on_both(gate, port, per_worker=3)
        stop = threading.Event()
        outcomes: list[Outcome] = []
        threads: list[threading.Thread] = []
        for i, (conn, pid) in enumerate(placed):
            out = Outcome(f"keep-alive {i}", pid)
            outcomes.append(out)
            threads.append(threading.Thread(target=keepalive_load, args=(conn, port, out, stop)))
        for i in range(2):
            out = Outcome(f"new-connection {i}")
            outcomes.append(out)
            threads.append(threading.Thread(target=fresh_load, args=(port, out, stop)))
        for t in threads:
            t.start()
        try:
            time.sleep(0.7)
            killed_at = time.monotonic()
            psutil.Process(victim).kill()
            restarted = wait_until(
                lambda: [p for p in gate.worker_pids() if p not in (victim, survivor)],
                10,
                what="a new worker",
            )
            respawn = time.monotonic() - killed_at
            time.sleep(1.0)  # load on the new worker too
        finally:
            stop.set()
            for t in threads:
                t.join(15)
        (new_pid,) = restarted
        assert sorted(gate.worker_pids()) == sorted([survivor, new_pid])
        log = gate.error_log_text()
        assert re.search(rf"worker \d \(pid {victim}\) exited with status -9; restarting", log)
        assert re.search(rf"worker \d started \(pid {new_pid}\)", log)

        total = sum(len(o.results) for o in outcomes)
        failed = [(o.name, f) for o in outcomes for f in o.failures]
        on_victim = sum(len(o.failures) for o in outcomes if o.worker == victim)
        slowest = max(o.slowest for o in outcomes if o.worker is None)
        figure(
            f"SIGKILL of 1 of 2 workers under load: {len(failed)} of {total} requests failed "
            f"({on_victim} on the killed worker's keep-alive connections, "
            f"{len(failed) - on_victim} new connections in flight); new worker process after "
            f"{respawn:.2f} s; slowest new-connection request {slowest:.2f} s"
        )
        for o in outcomes:
            after = [r for r in o.results if r[0] > killed_at + respawn + 0.2]
            assert after, f"{o.name}: nothing after the restart"
            assert all(ok for _, ok, _ in after), (o.name, after[:3])
            if o.worker == survivor:
                # the other worker's connections never noticed
                assert not o.failures, (o.name, o.failures)
                during = [r for r in o.results if killed_at < r[0] < killed_at + respawn]
                assert during, f"{o.name} made no progress while the worker was down"
            else:
                # at most the one request in flight (or sent next) on the dead worker's
                # connection, and only at the moment of the kill
                assert len(o.failures) <= 1, (o.name, o.failures)
                for at, _, _ in o.failures:
                    assert killed_at <= at < killed_at + respawn + 1.0, (o.name, o.failures)
        victims = [o for o in outcomes if o.worker == victim]
        assert sum(len(o.failures) for o in victims) == len(victims)  # each lost exactly one
        # The new worker serves: a new connection that lands on it gets an answer.
        for _ in range(40):
            with RawConn(port) as c:
                assert ask(c, "/echo").status == 200
                if worker_of(gate, c, port) == new_pid:
                    break
        else:
            raise AssertionError(f"no connection reached the new worker {new_pid}")


# --------------------------------------------------------------------------- the store
#
# A node with [acme] keeps its state in <data_dir>: tlsgate.lock (its pid), store.key
# (the key that seals private keys) and the SQLite store state.db (WAL). Its CA here
# is a closed port: no certificate is issued, so what the node writes is its own
# state (the lock, the store key, the schema, certificate locks, failure records).

WWW = ("www.acme.test", "acme.test")


def acme_node(https: int, app: AppServer, certs: dict[str, tuple[str, ...]]) -> str:
    dead_ca = f"https://127.0.0.1:{free_port()}/dir"
    return (
        "[acme]\n"
        f"directory = {toml_str(dead_ca)}\n"
        'challenges = ["tls-alpn-01"]\n\n'
        + "".join(
            table("certificates", name=name, domains=list(domains), issuer="acme")
            for name, domains in certs.items()
        )
        + table(
            "listeners",
            name="https",
            bind=[f"127.0.0.1:{https}"],
            protocol="https",
            backend="app",
        )
        + table("backends", name="app", servers=[app.address])
    )


def seed_store(data_dir: Path, ca: LocalCA, name: str, domains: tuple[str, ...]) -> str:
    """Put an issued certificate for ``name`` in the store, as the node's manager does
    (renewal due in 60 days); returns its fingerprint."""
    issued = ca.issue(list(domains))
    now = datetime.now(UTC)

    async def put() -> None:
        store = open_store(f"sqlite://{data_dir}/state.db", key_file=data_dir / "store.key")
        try:
            prefix = f"certs/{name}/ecdsa-p256"
            meta = {"renew_at": (now + timedelta(days=60)).isoformat(), "last_error": ""}
            await store.put_all(
                [
                    (f"{prefix}/chain.pem", issued.chain_pem),
                    (f"{prefix}/privkey.key", issued.key_pem),
                    (f"{prefix}/meta.json", json.dumps(meta).encode()),
                ]
            )
        finally:
            await store.close()

    asyncio.run(put())
    return x509.load_pem_x509_certificate(issued.cert_pem).fingerprint(hashes.SHA256()).hex()


def served(port: int, name: str, ca_file: Path | None = None) -> tuple[str, str]:
    """(sha256 fingerprint, subject) of the certificate a new handshake for ``name`` gets."""
    probe = s_client(port, servername=name, ca_file=ca_file)
    assert probe.cert is not None, probe.output
    if ca_file is not None:
        assert probe.handshake_ok, probe.output
    return probe.cert.fingerprint(hashes.SHA256()).hex(), probe.cert.subject.rfc4514_string()


def https_status(port: int, ca_file: Path, name: str = "www.acme.test") -> int:
    """The status of one verified HTTPS request for ``name`` on a new connection."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    with RawConn(port, tls=ctx, server_hostname=name) as c:
        return ask(c, "/echo").status


def certs_cli(gate: Tlsgate, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TLSGATE), "certs", *args, "-c", str(gate.config_path)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def certs_cli_async(gate: Tlsgate, *args: str) -> subprocess.Popen[str]:
    cmd = [str(TLSGATE), "certs", *args, "-c", str(gate.config_path)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def restart(gate: Tlsgate) -> None:
    """SIGTERM (exit 0), then start again and wait for a new ready line."""
    ready = gate.error_log_text().count(READY_LINE)
    assert gate.stop() == 0, gate.diagnostics()
    gate.start()
    gate.wait_for_log(READY_LINE, ready + 1, 20)


def listed(gate: Tlsgate, name: str) -> dict[str, Any]:
    """What ``certs list --json`` shows for ``name``, read in this process (same code)."""

    async def listing() -> list[dict[str, Any]]:
        config = load_config(str(gate.config_path))
        async with node_store(config, unseal=False) as store:
            return [i.to_json() for i in await list_certificates(config, store)]

    (entry,) = [c for c in asyncio.run(listing()) if c["name"] == name]
    return entry


def failed_start(gate: Tlsgate) -> str:
    """Start ``gate``, which must exit 1 before it is ready; what it printed."""
    gate.stdout_log.write_text("")
    with pytest.raises(TlsgateFailed):
        gate.start()
    assert gate.proc is not None
    assert gate.proc.wait(10) == 1, gate.diagnostics()
    return gate.stdout_log.read_text()


def leftovers(directory: Path) -> list[str]:
    """Temp files and empty files in ``directory`` (what a failed write may leave); an
    empty SQLite WAL is no leftover (a checkpoint truncates it)."""
    return sorted(
        p.name
        for p in directory.iterdir()
        if p.name not in (".filler", "state.db-wal")
        and (p.name.endswith(".tmp") or p.stat().st_size == 0)
    )


def test_a_full_data_dir_at_start_is_a_clear_error_and_leaves_no_empty_key(
    pki: Pki, tmp_path: Path
) -> None:
    app = AppServer("full-start").start()
    https = free_port()
    gate = Tlsgate(tmp_path / "gate", acme_node(https, app, {"www": WWW}))
    data = gate.data_dir
    try:
        with tiny_tmpfs(data, "1m") as disk:
            disk.fill()
            # 1. the node lock's pid
            out = failed_start(gate)
            assert f"cannot write {data}/tlsgate.lock: No space left on device" in out, out
            # 2. the store key: the lock file keeps its page, the key has none
            disk.free()
            (data / "tlsgate.lock").write_text("0\n")
            disk.fill()
            out = failed_start(gate)
            assert (
                f"cannot read or create the store key {data}/store.key: No space left on device"
            ) in out, out
            assert not (data / "store.key").exists()  # no empty or short key
            assert leftovers(data) == [], leftovers(data)
            # 3. the SQLite store (the key is there now)
            disk.free()
            (data / "store.key").write_bytes(b"k" * 32)
            (data / "store.key").chmod(0o600)
            disk.fill()
            out = failed_start(gate)
            assert f"cannot open the store database {data}/state.db" in out, out
            assert "database or disk is full" in out, out
            # 4. space again: the node starts on what the failed starts left, and serves
            disk.free()
            gate.start()
            _, subject = served(https, "www.acme.test")
            assert "placeholder" in subject  # its CA is down: nothing issued yet
            gate.wait_for_log("cannot reach the ACME server", 1, 10)
            gate.kill()
    finally:
        gate.kill()
        app.stop()


def test_a_disk_that_fills_up_under_a_running_node_keeps_what_it_serves(
    pki: Pki, tmp_path: Path
) -> None:
    app = AppServer("full-run").start()
    https = free_port()
    gate = Tlsgate(tmp_path / "gate", acme_node(https, app, {"www": WWW}))
    data = gate.data_dir
    try:
        with tiny_tmpfs(data, "2m") as disk:
            seeded = seed_store(data, pki.ca, "www", WWW)
            gate.start()
            assert served(https, "www.acme.test", pki.ca_file)[0] == seeded
            filled = disk.fill()
            figure(f"disk full: {filled} bytes written to fill the 2 MiB tmpfs")
            # A write the operator asks for: a clear error, nothing changes.
            res = certs_cli(gate, "renew", "www", "--force", "--wait", "5")
            assert res.returncode == 1, res.stdout + res.stderr
            assert "database or disk is full" in res.stderr, res.stderr
            # Certificate files written for another server: a clear error, no part of one.
            out = data / "export"
            res = certs_cli(gate, "export", "www", "--out", str(out))
            assert res.returncode == 1, res.stdout + res.stderr
            assert f"cannot export 'www' to {out}: No space left on device" in res.stderr
            assert not out.exists() or list(out.iterdir()) == []
            # Writes the node makes: a reload brings a certificate it must order.
            gate.write_config(acme_node(https, app, {"www": WWW, "new": ("new.acme.test",)}))
            gate.reload()
            gate.wait_for_log("issuing failed", 1, 10)
            log = gate.error_log_text()
            assert re.search(r"certificate new \(ecdsa-p256\): issuing failed .*disk is full", log)
            assert "certificate new: could not record the failure" in log, log
            # What it had stays in service; the new name gets a placeholder; requests flow.
            assert served(https, "www.acme.test", pki.ca_file)[0] == seeded
            assert "placeholder" in served(https, "new.acme.test")[1]
            assert https_status(https, pki.ca_file) == 200
            assert leftovers(data) == [], leftovers(data)
            # Space again; a restart loads what the store holds: the seeded certificate,
            # whole, and nothing the failed writes left.
            disk.free()
            restart(gate)
            assert served(https, "www.acme.test", pki.ca_file)[0] == seeded
            (www,) = listed(gate, "www")["keys"]
            assert (www["status"], www["fingerprint_sha256"]) == ("valid", seeded)
            gate.kill()
    finally:
        gate.kill()
        app.stop()


@dataclass
class HttpsLoad:
    """New TLS connections, one request each, back to back: (latency, status) per request."""

    port: int
    ca_file: Path
    results: list[tuple[float, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            start = time.monotonic()
            try:
                status = https_status(self.port, self.ca_file)
            except (PeerClosed, OSError) as exc:
                self.errors.append(repr(exc))
                continue
            self.results.append((time.monotonic() - start, status))
            time.sleep(0.02)

    @contextlib.contextmanager
    def running(self) -> Iterator[HttpsLoad]:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.stop.set()
            thread.join(10)


def test_a_locked_store_delays_writes_and_never_the_data_plane(pki: Pki, tmp_path: Path) -> None:
    app = AppServer("locked").start()
    https = free_port()
    gate = Tlsgate(tmp_path / "gate", acme_node(https, app, {"www": WWW}))
    try:
        seeded = seed_store(gate.data_dir, pki.ca, "www", WWW)
        gate.start()
        load = HttpsLoad(https, pki.ca_file)
        with load.running(), SqliteLocker(gate.data_dir / "state.db") as locker:
            # Reads go on: the operator's listing (before the fix it waited 10 s for the
            # lock, then failed), and a reload (which reads the store).
            start = time.monotonic()
            (www,) = listed(gate, "www")["keys"]
            read_time = time.monotonic() - start
            assert www["fingerprint_sha256"] == seeded
            listing = certs_cli(gate, "list")
            assert listing.returncode == 0, listing.stderr
            (row,) = [ln.split() for ln in listing.stdout.splitlines() if ln.startswith("www ")]
            assert (row[3], row[-2], row[-1]) == ("valid", seeded[:16], "-")
            # Writes wait: a reload that brings a new name (the node must lock and
            # record it), and the operator's renew request.
            gate.write_config(acme_node(https, app, {"www": WWW, "new": ("new.acme.test",)}))
            gate.reload()
            renew = certs_cli_async(gate, "renew", "www", "--force", "--wait", "20")
            # The node says that it waits (before the fix: silent until the release).
            gate.wait_for_log("certificate new (ecdsa-p256): waiting for its lock", 1, 10)
            time.sleep(max(0.0, 2.0 - (time.monotonic() - start)))
            assert renew.poll() is None  # waiting for the lock, not failed
            assert "issuing failed" not in gate.error_log_text()
            held = locker.release()
            released_at = time.monotonic()
        out, err = renew.communicate(timeout=30)
        figure(
            f"store locked {held:.1f} s: a listing read it in {read_time:.3f} s; the renew "
            f"request had its answer {time.monotonic() - released_at:.2f} s after the release"
        )
        assert read_time < 2.0  # it did not wait for the lock (busy_timeout is 10 s)
        # Once the lock was gone, both went on to the (unreachable) CA and said so.
        assert renew.returncode == 1, out + err
        assert "renewal failed" in err, err
        assert "cannot reach the ACME server" in err, err
        gate.wait_for_log("certificate new (ecdsa-p256): issuing failed", 1, 10)
        assert "database is locked" not in gate.error_log_text()
        # The data plane never waited: every handshake and request of the load succeeded.
        assert not load.errors, load.errors[:3]
        assert len(load.results) > 20
        assert {status for _, status in load.results} == {200}
        slowest = max(latency for latency, _ in load.results)
        figure(
            f"{len(load.results)} HTTPS requests during the lock and after: slowest {slowest:.3f} s"
        )
        assert slowest < 1.0
        assert served(https, "www.acme.test", pki.ca_file)[0] == seeded
    finally:
        gate.kill()
        app.stop()
