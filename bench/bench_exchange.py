"""In-process microbenchmark: one keep-alive HTTP exchange through tlsgate's data plane.

How this works: ``tlsgate.net.testing.Harness`` wires a client connection and
a pooled upstream connection to fake transports, with no sockets, TLS or
event loop. Each iteration feeds a wrk-like request to the client side and an
nginx-like response (100-byte body) to the upstream side, and checks that the
client got it. What it times is tlsgate's own Python per exchange -- parsing,
validation, routing, balancing, the pool, header rewriting, framing,
timeouts, the access log -- so a regression there shows up in seconds,
without the noise of a loaded machine. It is not a throughput figure: TLS,
system calls and the event loop come on top (``make bench`` measures those).

Run it with the project's virtualenv::

    .venv/bin/python bench/bench_exchange.py            # CPU µs per exchange, best of 5
    .venv/bin/python bench/bench_exchange.py --profile  # where the time goes (cProfile)
    .venv/bin/python bench/bench_exchange.py --access-log /tmp/access.log
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence

from tlsgate.net.testing import Harness

CONFIG = """
[[listeners]]
name = "web"
bind = ["127.0.0.1:8080"]
protocol = "http"
backend = "app"

[[backends]]
name = "app"
servers = ["127.0.0.1:9000"]
"""

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8443\r\n\r\n"
BODY = b"x" * 100
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Tue, 01 Dec 2026 19:30:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 100\r\nConnection: keep-alive\r\n\r\n" + BODY
)


def run(n: int, access_log: str) -> float:
    """CPU seconds for ``n`` exchanges on one client connection and one pooled upstream."""
    h = Harness(CONFIG, access=access_log)
    try:
        up_transport = h.pooled_upstream()
        upstream = h.upstream_of(up_transport)
        conn, client_transport = h.client()
        feed_client = conn.data_received
        feed_upstream = upstream.data_received
        run_ready = h.loop.run_ready
        start = time.thread_time()  # CPU time: a loaded machine waits longer, not computes more
        for _ in range(n):
            feed_client(REQUEST)
            feed_upstream(RESPONSE)
            run_ready()
        h.loop.advance(1.0)  # the access log's batched write
        elapsed = time.thread_time() - start
        out = client_transport.data()
        if not out.endswith(BODY) or out.count(b"HTTP/1.1 200 OK") != n:
            raise SystemExit(f"unexpected output after {n} exchanges: {out[-300:]!r}")
        return elapsed
    finally:
        h.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=20000, help="exchanges per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="print a cProfile of one round")
    parser.add_argument(
        "--access-log",
        default="",
        help="write the JSON access log here ('tmp' for a temporary file; default: off)",
    )
    args = parser.parse_args(argv)
    access = args.access_log
    if access == "tmp":
        fd, access = tempfile.mkstemp(prefix="tlsgate-bench-access-")
        os.close(fd)
    run(1000, access)  # warm-up: caches, lazily built objects
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        run(args.n, access)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return 0
    times = [run(args.n, access) / args.n * 1e6 for _ in range(args.rounds)]
    print(
        f"bench_exchange: {min(times):.2f} CPU µs per keep-alive exchange "
        f"(best of {args.rounds} x {args.n}; median {statistics.median(times):.2f}; "
        f"access log {'on' if access else 'off'}; Python {sys.version.split()[0]})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
