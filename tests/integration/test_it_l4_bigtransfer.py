"""A big transfer both ways at once through a ``tcp`` listener, in bounded memory.

The size is ``$TLSGATE_BIG_TRANSFER`` bytes each way (default 1 GiB; e.g.
``TLSGATE_BIG_TRANSFER=256MiB`` for a quicker run). One connection carries it in
both directions at the same time: the client and the server each send the size in
pattern bytes from one thread and read (checking every byte against the pattern)
from another, then FIN. A sampler thread reads the worker's RSS throughout.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
from collections.abc import Callable

import pytest
from appserver import PatternChecker, pattern_chunks
from harness import GateFactory, RssSampler, free_port, table

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

MiB = 1024 * 1024
RSS_LIMIT = 150 * MiB
_UNITS = {"": 1, "b": 1, "kib": 1024, "mib": MiB, "gib": 1024 * MiB}


def big_size() -> int:
    """``$TLSGATE_BIG_TRANSFER`` as bytes: "1073741824", "512MiB", "1GiB"..."""
    text = os.environ.get("TLSGATE_BIG_TRANSFER", "1GiB").strip().lower()
    m = re.fullmatch(r"(\d+)\s*([a-z]*)", text)
    if not m or m.group(2) not in _UNITS:
        raise ValueError(f"TLSGATE_BIG_TRANSFER={text!r}: expected e.g. 1073741824, 512MiB, 1GiB")
    return int(m.group(1)) * _UNITS[m.group(2)]


def send_then_fin(sock: socket.socket, size: int) -> None:
    for piece in pattern_chunks(size, MiB):
        sock.sendall(piece)
    sock.shutdown(socket.SHUT_WR)


def check_to_eof(sock: socket.socket, checker: PatternChecker) -> None:
    while data := sock.recv(1 << 20):
        checker.feed(data)


def both_ways(sock: socket.socket, size: int, checker: PatternChecker) -> list[BaseException]:
    """Send ``size`` bytes while reading to EOF; the exceptions either side raised."""
    errors: list[BaseException] = []

    def guarded(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # reported by the caller, not lost in a thread
                errors.append(exc)

        return run

    sender = threading.Thread(target=guarded(lambda: send_then_fin(sock, size)), daemon=True)
    sender.start()
    guarded(lambda: check_to_eof(sock, checker))()
    sender.join(600)
    return errors


def test_big_transfer_both_ways_in_bounded_memory(make_gate: GateFactory) -> None:
    size = big_size()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    server_port = listener.getsockname()[1]
    server_checker = PatternChecker()
    server_errors: list[BaseException] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(120)
            server_errors.extend(both_ways(conn, size, server_checker))

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    port = free_port()
    gate = make_gate(
        table("listeners", name="tcp", bind=[f"127.0.0.1:{port}"], protocol="tcp", backend="svc")
        + table("backends", name="svc", servers=[f"127.0.0.1:{server_port}"])
    )
    client_checker = PatternChecker()
    try:
        with (
            RssSampler(gate) as rss,
            socket.create_connection(("127.0.0.1", port), timeout=120) as sock,
        ):
            client_errors = both_ways(sock, size, client_checker)
        server.join(600)
    finally:
        with contextlib.suppress(OSError):
            listener.close()
    assert not client_errors, client_errors
    assert not server_errors, server_errors
    assert client_checker.received == size, "the client got less than the server sent"
    assert server_checker.received == size, "the server got less than the client sent"
    assert client_checker.ok, "bytes to the client differ from what the server sent"
    assert server_checker.ok, "bytes to the server differ from what the client sent"
    assert rss.samples > 0
    assert rss.max_rss < RSS_LIMIT, f"worker RSS reached {rss.max_rss / MiB:.0f} MiB"
    entry = gate.wait_access_log(lambda e: e.get("listener") == "tcp")
    assert (entry["bytes_in"], entry["bytes_out"]) == (size, size)
