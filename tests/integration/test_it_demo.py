"""``tlsgate demo`` as a person runs it: start it, follow the printed instructions
(the curl commands, the CA path), see round robin and the redirect, stop it."""

from __future__ import annotations

import json
import os
import re
import select
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import TLSGATE, RawConn, curl, free_port, request_bytes, wait_until

from tlsgate.demo import _prepare_files

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

SENTINEL = "Press Ctrl-C to stop."


def read_until(proc: subprocess.Popen[bytes], sentinel: str, timeout: float) -> str:
    """Everything ``proc`` printed up to and including ``sentinel``."""
    assert proc.stdout is not None
    out = b""
    deadline = time.monotonic() + timeout
    while sentinel.encode() not in out:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {sentinel!r} after {timeout}s; printed:\n{out.decode()}")
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                raise AssertionError(f"demo exited ({proc.wait()}); printed:\n{out.decode()}")
            out += chunk
    return out.decode()


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


def test_demo_end_to_end(tmp_path: Path) -> None:
    data_dir = tmp_path / "tlsgate-demo"
    https_port, http_port = free_port(), free_port()
    app_ports = [free_port() for _ in range(3)]
    proc = subprocess.Popen(
        [
            str(TLSGATE),
            "demo",
            "--data-dir",
            str(data_dir),
            "--https-port",
            str(https_port),
            "--http-port",
            str(http_port),
            "--app-ports",
            ",".join(map(str, app_ports)),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        printed = read_until(proc, SENTINEL, 60)

        # The printed round-robin command, run exactly as printed.
        commands = [
            line.strip() for line in printed.splitlines() if line.strip().startswith("curl ")
        ]
        rr = next(c for c in commands if re.fullmatch(r"curl --cacert \S+ https://\S+/", c))
        argv = shlex.split(rr)
        ca_path = Path(argv[2])
        assert ca_path == data_dir.resolve() / "ca.pem"
        assert ca_path.exists()
        assert str(ca_path) in printed
        names = []
        for _ in range(6):
            res = subprocess.run([*argv, "-sS"], capture_output=True, timeout=15, check=False)
            assert res.returncode == 0, res.stderr.decode()
            answer = json.loads(res.stdout)
            names.append(answer["app"])
            assert answer["x-forwarded-proto"] == "https"
            assert answer["x-forwarded-for"] == "127.0.0.1"
        assert set(names) == {"app-1", "app-2", "app-3"}, names

        # The printed redirect command.
        redirect = next(c for c in commands if c.startswith("curl -i "))
        url = shlex.split(redirect)[-1]
        assert url == f"http://localhost:{http_port}/x?y=1"
        redirected = curl(url)
        assert redirected.status == 308
        assert redirected.header("location") == f"https://localhost:{https_port}/x?y=1"

        # HSTS, and the access log the instructions point at.
        secure = curl("--cacert", str(ca_path), f"https://localhost:{https_port}/")
        assert secure.header("strict-transport-security") == "max-age=63072000"
        log = data_dir.resolve() / "access.log"
        assert f"tail -f {log}" in printed
        time.sleep(0.5)
        entries = [json.loads(line) for line in log.read_text().splitlines()]
        assert sum(e["status"] == 200 for e in entries) >= 7

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        for port in (https_port, http_port, *app_ports):
            assert refused(port), f"port {port} still open after the demo stopped"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()


def test_demo_reuses_its_ca(tmp_path: Path) -> None:
    """A second run keeps the CA a person may already trust."""
    data_dir = tmp_path / "demo"
    first = _prepare_files(data_dir, 8443, 8080, (9001, 9002, 9003)).read_bytes()
    second = _prepare_files(data_dir, 8443, 8080, (9001, 9002, 9003)).read_bytes()
    assert first == second
    assert oct((data_dir / "ca.key").stat().st_mode & 0o777) == "0o600"
    assert oct((data_dir / "demo-ecdsa.key").stat().st_mode & 0o777) == "0o600"
    check = subprocess.run(
        [str(TLSGATE), "check", "-c", str(data_dir / "tlsgate.toml")],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_demo_app_answers_in_order_and_rejects_garbage() -> None:
    port = free_port()
    app = subprocess.Popen(
        [sys.executable, "-m", "tlsgate.demo_app", "--port", str(port), "--name", "app-x"],
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: not refused(port), 10, what="the demo app")
        with RawConn(port) as c:
            c.send(
                request_bytes("GET", "/a?1", "localhost", [("X-Forwarded-For", "192.0.2.1")])
                + request_bytes("HEAD", "/b", "localhost")
                + request_bytes("POST", "/c", "localhost", body=b"ignored")
            )
            first = c.read_response().json()
            head = c.read_response("HEAD")
            third = c.read_response().json()
        assert (first["app"], first["path"], first["query"]) == ("app-x", "/a", "1")
        assert first["x-forwarded-for"] == "192.0.2.1"
        assert head.status == 200
        assert head.body == b""
        assert (third["method"], third["path"]) == ("POST", "/c")
        with RawConn(port) as c:
            c.send(b"NOT HTTP\r\n\r\n")
            assert c.read_response().status == 400
            assert c.closed_by_peer(3)
        app.send_signal(signal.SIGTERM)
        assert app.wait(10) == 0
    finally:
        if app.poll() is None:
            app.kill()
            app.wait(10)
