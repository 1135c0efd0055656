"""TLS session resumption across worker processes, reloads and key rotations.

Every worker encrypts session tickets with the node's key, so a ticket from
one worker resumes on any other, and on the workers of the next generation
after a SIGHUP. Which worker served a connection is read from the access log
(``worker``), by a path unique to that connection. The kernel spreads
connections over the workers' SO_REUSEPORT sockets by a hash of the client
port, so a test opens enough connections to see both workers issue tickets
and to see tickets from one worker resume on the other.

Clients: Python's ``ssl`` (``session=`` / ``session_reused``) for the counts,
and ``openssl s_client -sess_out`` / ``-sess_in`` as a user would.
"""

from __future__ import annotations

import itertools
import re
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from appserver import AppServer
from harness import (
    AppFactory,
    GateFactory,
    Pki,
    Tlsgate,
    client_context,
    free_port,
    table,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

VERSIONS = {"tls1.2": ssl.TLSVersion.TLSv1_2, "tls1.3": ssl.TLSVersion.TLSv1_3}
RESUMPTIONS = 20
ROTATED_LINE = "TLS session ticket key rotated"
_tags = itertools.count()


def node_config(pki: Pki, port: int, app: AppServer) -> str:
    return (
        pki.toml()
        + table(
            "listeners",
            name="https",
            bind=[f"127.0.0.1:{port}"],
            protocol="https",
            backend="app",
            default_certificate="main-ecdsa",
        )
        + table("backends", name="app", servers=[app.address])
    )


def worker_of(gate: Tlsgate, path: str) -> int:
    """The worker that served the (one) request for ``path``, from the access log."""
    return int(gate.wait_access_log(lambda e: e.get("path") == path)["worker"])


@dataclass
class Visit:
    """One HTTPS request on a new connection."""

    worker: int
    reused: bool
    version: str | None
    session: ssl.SSLSession


class Client:
    """A Python ``ssl`` client that remembers nothing itself: sessions are passed in."""

    def __init__(self, gate: Tlsgate, port: int, pki: Pki, version: ssl.TLSVersion) -> None:
        self.gate = gate
        self.port = port
        self.ctx = client_context(pki.ca_pem)
        self.ctx.minimum_version = self.ctx.maximum_version = version

    def visit(self, session: ssl.SSLSession | None = None) -> Visit:
        path = f"/resumption/{next(_tags)}"
        with (
            socket.create_connection(("127.0.0.1", self.port), timeout=10) as raw,
            self.ctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls,
        ):
            tls.sendall(
                f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
            )
            response = b""
            while chunk := tls.recv(65536):
                response += chunk
            assert response.startswith(b"HTTP/1.1 200 "), response[:200]
            # read after the response: TLS 1.3 tickets arrive after the handshake
            new_session = tls.session
            assert new_session is not None
            reused, version = bool(tls.session_reused), tls.version()
        return Visit(worker_of(self.gate, path), reused, version, new_session)

    def tickets_from_every_worker(self, workers: int, count: int) -> list[Visit]:
        """``count`` fresh sessions (full handshakes), at least one issued by each worker."""
        visits: list[Visit] = []
        for _ in range(200):
            visit = self.visit()
            assert not visit.reused
            assert visit.session.has_ticket, "no session ticket issued"
            visits.append(visit)
            if len(visits) >= count and {v.worker for v in visits} == set(range(workers)):
                break
        else:
            raise AssertionError(
                f"tickets came only from workers {sorted({v.worker for v in visits})}"
            )
        # alternate issuers, so that about half the resumptions change worker
        by_worker = [[v for v in visits if v.worker == w] for w in range(workers)]
        mixed = [v for group in itertools.zip_longest(*by_worker) for v in group if v is not None]
        return mixed[:count]

    def resume_all(self, tickets: list[Visit], *, min_cross: int = 3) -> list[tuple[Visit, Visit]]:
        """Resume each ticket once; go round again until ``min_cross`` changed worker."""
        pairs: list[tuple[Visit, Visit]] = []
        for ticket in itertools.islice(itertools.cycle(tickets), 10 * len(tickets)):
            pairs.append((ticket, self.visit(ticket.session)))
            cross = sum(a.worker != b.worker for a, b in pairs)
            if len(pairs) >= len(tickets) and cross >= min_cross:
                break
        return pairs


@pytest.fixture
def app(make_app: AppFactory) -> AppServer:
    return make_app("app")


def _summary(pairs: list[tuple[Visit, Visit]]) -> str:
    reused = sum(b.reused for _, b in pairs)
    cross = [(a.worker, b.worker, b.reused) for a, b in pairs if a.worker != b.worker]
    return (
        f"{reused}/{len(pairs)} resumed; {len(cross)} on another worker than the issuer, "
        f"{sum(r for *_, r in cross)} of them resumed"
    )


@pytest.mark.parametrize("version", VERSIONS.values(), ids=VERSIONS.keys())
def test_tickets_resume_on_any_worker(
    pki: Pki, app: AppServer, make_gate: GateFactory, version: ssl.TLSVersion
) -> None:
    port = free_port()
    gate = make_gate(node_config(pki, port, app), workers=2)
    client = Client(gate, port, pki, version)
    tickets = client.tickets_from_every_worker(2, RESUMPTIONS)
    assert {t.version for t in tickets} == {version.name.replace("_", ".")}

    pairs = client.resume_all(tickets)
    print(f"{version.name}: {_summary(pairs)}")
    assert all(b.reused for _, b in pairs), _summary(pairs)
    assert len(pairs) >= RESUMPTIONS
    assert {b.worker for _, b in pairs} == {0, 1}
    assert sum(a.worker != b.worker for a, b in pairs) >= 3, _summary(pairs)


@pytest.mark.parametrize("version", VERSIONS.values(), ids=VERSIONS.keys())
def test_tickets_from_before_a_reload_still_resume(
    pki: Pki, app: AppServer, make_gate: GateFactory, version: ssl.TLSVersion
) -> None:
    port = free_port()
    gate = make_gate(node_config(pki, port, app), workers=2)
    client = Client(gate, port, pki, version)
    tickets = client.tickets_from_every_worker(2, RESUMPTIONS)
    pids = gate.worker_pids()

    # same workers, new generation: every context is built anew
    gate.reload()
    assert gate.worker_pids() == pids
    pairs = client.resume_all(tickets)
    print(f"{version.name} after SIGHUP: {_summary(pairs)}")
    assert all(b.reused for _, b in pairs), _summary(pairs)

    # a reload that adds a worker: the new process resumes the old tickets too
    gate.workers = 3
    gate.write_config(node_config(pki, port, app))
    gate.reload()
    seen: list[Visit] = []
    for ticket in itertools.islice(itertools.cycle(tickets), 200):
        seen.append(client.visit(ticket.session))
        if len(seen) >= RESUMPTIONS and any(v.worker == 2 for v in seen):
            break
    assert all(v.reused for v in seen), [(v.worker, v.reused) for v in seen]
    assert any(v.worker == 2 for v in seen)


def test_a_respawned_worker_resumes_existing_tickets(
    pki: Pki, app: AppServer, make_gate: GateFactory
) -> None:
    port = free_port()
    gate = make_gate(node_config(pki, port, app), workers=2)
    client = Client(gate, port, pki, ssl.TLSVersion.TLSv1_3)
    tickets = client.tickets_from_every_worker(2, 10)
    before = gate.worker_pids()
    psutil.Process(before[0]).kill()

    def respawned() -> bool:
        now = gate.worker_pids()
        return len(now) == 2 and before[0] not in now

    wait_until(respawned, 10, what="a new worker")
    visits = [client.visit(t.session) for t in tickets * 2]
    assert all(v.reused for v in visits), [(v.worker, v.reused) for v in visits]
    assert {v.worker for v in visits} == {0, 1}


# ---------------------------------------------------------------- openssl s_client


def s_client_get(port: int, pki: Pki, path: str, *args: str) -> str:
    """``openssl s_client`` sending one request and waiting for the server to close."""
    request = f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    proc = subprocess.run(
        [
            "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
            "-CAfile", str(pki.ca_file), "-verify_return_error", "-ign_eof", *args,
        ],
        input=request.encode(),
        capture_output=True,
        timeout=20,
        check=False,
    )  # fmt: skip
    out = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, out
    assert "HTTP/1.1 200 " in out, out
    return out


@pytest.mark.parametrize("flag", ["-tls1_2", "-tls1_3"])
def test_openssl_s_client_resumes_on_every_worker(
    pki: Pki, app: AppServer, make_gate: GateFactory, tmp_path: Path, flag: str
) -> None:
    port = free_port()
    gate = make_gate(node_config(pki, port, app), workers=2)
    session_file = tmp_path / "session.pem"
    first = s_client_get(port, pki, "/s_client/first", flag, "-sess_out", str(session_file))
    assert re.search(r"^New, ", first, re.M), first
    issuer = worker_of(gate, "/s_client/first")

    workers: dict[int, list[bool]] = {0: [], 1: []}
    for i in range(60):
        out = s_client_get(port, pki, f"/s_client/{i}", flag, "-sess_in", str(session_file))
        reused = bool(re.search(r"^Reused, ", out, re.M))
        workers[worker_of(gate, f"/s_client/{i}")].append(reused)
        if i >= 9 and all(workers.values()):
            break
    assert all(all(r) for r in workers.values()), workers
    assert workers[1 - issuer], f"no resumption on the other worker: {workers}"


# ---------------------------------------------------------------- rotation


class RotatingGate(Tlsgate):
    """A gate whose ``[node]`` rotates the ticket key every ``rotation``."""

    def __init__(self, *args: object, rotation: str, **kw: object) -> None:
        self.rotation = rotation
        super().__init__(*args, **kw)  # type: ignore[arg-type]

    def render(self, config: str) -> str:
        head, sep, rest = super().render(config).partition("[log]\n")
        return f'{head.rstrip()}\nticket_key_rotation = "{self.rotation}"\n\n{sep}{rest}'


@pytest.fixture
def rotating(pki: Pki, app: AppServer, tmp_path: Path) -> Iterator[tuple[RotatingGate, int]]:
    port = free_port()
    gate = RotatingGate(tmp_path / "gate", node_config(pki, port, app), workers=2, rotation="4s")
    try:
        gate.start()
        yield gate, port
    finally:
        gate.kill()


def test_rotation_reaches_every_worker(pki: Pki, rotating: tuple[RotatingGate, int]) -> None:
    gate, port = rotating
    client = Client(gate, port, pki, ssl.TLSVersion.TLSv1_3)

    def rotations() -> int:
        return gate.error_log_text().count(ROTATED_LINE)

    def just_rotated(after: int) -> None:
        wait_until(lambda: rotations() > after, 15, what="a ticket key rotation")
        time.sleep(0.3)  # the workers apply it as the message arrives

    # a ticket issued after the first rotation resumes on both workers ...
    just_rotated(0)
    count = rotations()
    tickets = client.tickets_from_every_worker(2, 4)
    resumed = client.resume_all(tickets, min_cross=1)
    assert rotations() == count, "rotated during the check; the rotation period is too short"
    assert all(b.reused for _, b in resumed), _summary(resumed)

    # ... and, one key per context, not after the next rotation: a full handshake
    # and a new ticket, which again resumes everywhere
    just_rotated(count)
    stale = [client.visit(t.session) for t in tickets]
    assert not any(v.reused for v in stale), [(v.worker, v.reused) for v in stale]
    fresh = client.resume_all(stale, min_cross=1)
    assert all(b.reused for _, b in fresh), _summary(fresh)
