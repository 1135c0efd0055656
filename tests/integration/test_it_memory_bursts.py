"""A worker's memory after bursts of idle TLS connections: it must come back down.

The defect this keeps fixed: bursts of thousands of TLS connections that finish
the handshake, send nothing and are closed by ``header_timeout`` left the worker's
RSS higher after every burst (from 42 MB: 235, 328, 433, ..., 691 MB after seven
bursts of 5,000), with no connection and no file descriptor left open. Two causes, both
measured: closed connections stayed in reference cycles (``ClientConnection`` and
its httptools parser, whose callbacks are bound methods of the connection), so
uvloop's 256 KiB SSL read buffer and OpenSSL's state behind each one waited for a
full collection of the cyclic GC; and glibc kept the freed heap resident
(``tlsgate.net.memory.HeapTrimmer`` gives it back with ``malloc_trim``).

How this works: one worker, ``header_timeout = 2s``. Each burst opens
``CONNECTIONS`` TLS connections (an asyncio client on uvloop, at most
``HANDSHAKES`` handshakes at a time), sends nothing, and waits until the server
has closed every one. Then it waits until the worker holds as many descriptors
as before the burst, and reads the worker's RSS until it stops falling. Every
burst after the first must leave RSS where the first left it (10 %, at least
``SLACK``). This is a memory assertion: the waits only let the worker finish
closing, they are not measured.
"""

from __future__ import annotations

import asyncio
import resource
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psutil
import pytest
import uvloop
from harness import GateFactory, Pki, client_context, free_port, table, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(150)]

BURSTS = 4
CONNECTIONS = 2000
HANDSHAKES = 200  # TLS handshakes in flight at once
MiB = 1024 * 1024
SLACK = 8 * MiB
# RSS has stopped falling when it moved less than this over STABLE_FOR seconds
STABLE_DELTA = 1 * MiB
STABLE_FOR = 3.0  # longer than the worker's HeapTrimmer takes to notice (2 samples, 1 s apart)
SETTLE_TIMEOUT = 15.0


@pytest.fixture
def nofile() -> Iterator[None]:
    """Room for every connection of a burst, in this process and (inherited) in tlsgate's."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = CONNECTIONS + 1024
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {wanted}")
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@dataclass
class BurstResult:
    closed_by_server: int = 0
    failed: int = 0
    open_now: int = 0
    peak_open: int = 0


class _Idle(asyncio.Protocol):
    """Says nothing; records when the server closes the connection."""

    def __init__(self, result: BurstResult, done: asyncio.Future[None]) -> None:
        self.result = result
        self.done = done

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.result.open_now += 1
        self.result.peak_open = max(self.result.peak_open, self.result.open_now)

    def connection_lost(self, exc: Exception | None) -> None:
        self.result.open_now -= 1
        if not self.done.done():
            self.done.set_result(None)


async def _one(port: int, ctx: ssl.SSLContext, gate: asyncio.Semaphore, r: BurstResult) -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    async with gate:
        try:
            transport, _ = await loop.create_connection(
                lambda: _Idle(r, done),
                "127.0.0.1",
                port,
                ssl=ctx,
                server_hostname="localhost",
                ssl_handshake_timeout=30.0,
            )
        except (OSError, ssl.SSLError, TimeoutError):
            r.failed += 1
            return
    try:
        await asyncio.wait_for(done, 30.0)  # header_timeout closes it
    except TimeoutError:
        transport.abort()
        r.failed += 1
        return
    r.closed_by_server += 1


async def _burst(port: int, ctx: ssl.SSLContext, connections: int = CONNECTIONS) -> BurstResult:
    result = BurstResult()
    gate = asyncio.Semaphore(HANDSHAKES)
    await asyncio.gather(*(_one(port, ctx, gate, result) for _ in range(connections)))
    return result


def _steady_fds(worker: psutil.Process) -> int:
    """The worker's descriptor count once it stayed the same for half a second."""
    last: int = worker.num_fds()
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now: int = worker.num_fds()
        if now == last:
            return now
        last = now
    return last


def _settled_rss(worker: psutil.Process, fds_before: int, below: float = 0.0) -> int:
    """The worker's RSS once it has closed the burst's descriptors and stopped shrinking.

    Returns early as soon as RSS is at or below ``below``.
    """
    wait_until(
        lambda: worker.num_fds() <= fds_before,
        SETTLE_TIMEOUT,
        interval=0.1,
        what=f"the worker to close the burst's descriptors (back to {fds_before})",
    )
    samples: list[tuple[float, int]] = []
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        now, rss = time.monotonic(), worker.memory_info().rss
        samples.append((now, rss))
        if rss <= below:
            return int(rss)
        window = [s for t, s in samples if t >= now - STABLE_FOR]
        stable = samples[0][0] <= now - STABLE_FOR and max(window) - min(window) < STABLE_DELTA
        if stable or now > deadline:
            return int(rss)
        time.sleep(0.25)


def test_rss_stops_growing_after_the_first_burst(
    pki: Pki, make_gate: GateFactory, nofile: None
) -> None:
    port = free_port()
    config = (
        pki.toml()
        + table(
            "listeners",
            name="https",
            bind=[f"127.0.0.1:{port}"],
            protocol="https",
            backend="app",
            default_certificate="main-ecdsa",
            header_timeout="2s",
            idle_timeout="2s",
            max_connections=CONNECTIONS * 2,
        )
        # never contacted: no request is sent
        + table("backends", name="app", servers=[f"127.0.0.1:{free_port()}"])
    )
    gate = make_gate(config, workers=1)
    (pid,) = gate.worker_pids()
    worker = psutil.Process(pid)
    ctx = client_context(pki.ca_pem)
    # one connection first: libuv opens its one reserve descriptor (for EMFILE) with the
    # worker's first stream
    warm = uvloop.run(_burst(port, ctx, 1))
    assert warm.closed_by_server == 1, warm
    fds_before = _steady_fds(worker)
    start_rss = worker.memory_info().rss

    after: list[int] = []
    limit = 0.0
    for n in range(BURSTS):
        result = uvloop.run(_burst(port, ctx))
        assert result.closed_by_server == CONNECTIONS, (result, gate.diagnostics())
        after.append(_settled_rss(worker, fds_before, below=limit))
        if n == 0:
            limit = after[0] + max(0.10 * after[0], SLACK)

    report = ", ".join(f"{r / MiB:.1f}" for r in after)
    assert all(rss <= limit for rss in after[1:]), (
        f"worker RSS after each burst of {CONNECTIONS} idle TLS connections: {report} MiB "
        f"(before: {start_rss / MiB:.1f} MiB, limit {limit / MiB:.1f} MiB)"
    )
