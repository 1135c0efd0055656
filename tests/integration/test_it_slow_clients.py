"""Slow readers and the lingering close, on real sockets (issue 8).

A client that requests a large response and reads none of it is dropped after
``send_timeout`` (here 2 s), with the reason in the access log, and the app
server is not blamed meanwhile; a client that reads slowly but steadily gets its
whole response. A request refused on plain HTTP while the client goes on
sending is answered, half-closed, and the client reads the whole answer: no
reset destroys it.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from appserver import AppServer
from harness import Tlsgate, free_port, table, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

SIZE = 64 * 1024 * 1024  # far more than the kernel's and the transport's buffers


@dataclass
class Stack:
    gate: Tlsgate
    app: AppServer
    port: int


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    app = AppServer("slow-clients").start()
    port = free_port()
    config = table(
        "listeners",
        name="web",
        bind=[f"127.0.0.1:{port}"],
        protocol="http",
        backend="app",
        send_timeout="2s",
    ) + table("backends", name="app", servers=[app.address], read_timeout="1s")
    gate = Tlsgate(tmp_path_factory.mktemp("slow-clients"), config)
    try:
        gate.start()
        yield Stack(gate, app, port)
    finally:
        gate.kill()
        app.stop()


def small_buffer_socket(port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    return s


def test_a_client_that_reads_nothing_is_dropped_after_send_timeout(stack: Stack) -> None:
    with small_buffer_socket(stack.port) as s:
        s.sendall(f"GET /length?size={SIZE} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
        started = time.monotonic()
        time.sleep(4.5)  # send_timeout (2 s) after the buffers filled, plus the wheel's slack
        # the connection was dropped: what is buffered can still be read, then it ends
        received, reset = 0, False
        while True:
            try:
                chunk = s.recv(1 << 20)
            except ConnectionResetError:
                reset = True  # aborted: what is buffered may be lost, that is the point
                break
            if not chunk:
                break
            received += len(chunk)
        assert received < SIZE
        assert reset or received < SIZE
    entry = stack.gate.wait_access_log(
        lambda e: e.get("path") == "/length" and "send_timeout" in e.get("error", ""), timeout=5
    )
    assert entry["status"] == 200
    assert entry["bytes_out"] < SIZE
    assert "(send_timeout)" in entry["error"], entry
    assert "read_timeout" not in entry["error"]  # the app server was not blamed
    assert time.monotonic() - started < 30
    log = stack.gate.error_log_text()
    assert "client took no output for 2s (send_timeout)" in log


def test_a_slow_but_steady_reader_gets_the_whole_response(stack: Stack) -> None:
    size = 3 * 1024 * 1024
    with small_buffer_socket(stack.port) as s:
        s.sendall(f"GET /length?size={size} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
        received = 0
        head_done = False
        data = b""
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            chunk = s.recv(64 * 1024)
            assert chunk, "the connection closed early"
            if not head_done:
                data += chunk
                if b"\r\n\r\n" not in data:
                    continue
                head, _, chunk = data.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200 ")
                head_done = True
            received += len(chunk)
            if received >= size:
                break
            time.sleep(0.003)  # far slower than the app server, but steady
    assert received == size


def test_a_refused_request_is_read_whole_while_the_client_goes_on_sending(stack: Stack) -> None:
    """Without a lingering close, the kernel would answer the unread bytes with a reset,
    which may destroy the 400 in the client's receive buffer before it is read."""
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n")
        time.sleep(0.2)  # the 400 and a FIN are on their way
        junk = b"x" * 65536
        for _ in range(16):  # a client that does not notice at once
            try:
                s.sendall(junk)
            except (BrokenPipeError, ConnectionResetError):
                break
        answer = b""
        while True:
            chunk = s.recv(65536)  # a reset here would raise ConnectionResetError
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer[:200]
    head, _, body = answer.partition(b"\r\n\r\n")
    length = int(head.split(b"Content-Length: ", 1)[1].split(b"\r\n", 1)[0])
    assert len(body) == length


def test_a_lingering_connection_is_closed_when_the_client_closes(stack: Stack) -> None:
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n")
        answer = s.recv(65536)
        assert answer.startswith(b"HTTP/1.1 400 ")
        assert s.recv(65536) == b""  # the FIN
    # the client closed: tlsgate closes its side at once, not after the linger time
    pids = stack.gate.worker_pids()

    def no_connection_left() -> bool:
        import psutil

        return all(
            not [c for c in psutil.Process(pid).net_connections() if c.raddr] for pid in pids
        )

    wait_until(no_connection_left, 3, 0.05, "the lingering connection to close")
