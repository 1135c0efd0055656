"""End-to-end smoke test: one real ``tlsgate serve`` on the interpreter running pytest.

``make test`` runs the whole suite on the default Python; on every other supported
Python it runs only the unit tier and this file (``make test-other-pythons``), so
this is the one place where those interpreters run the real program: the
``tlsgate`` console script of the same venv, its supervisor and two workers, an
https listener with a certificate from files, one request by curl, a SIGHUP
reload that adds a route, one more request (httpx), and a SIGTERM that must end
every process with status 0. ``PYTHONWARNINGS=default`` makes tlsgate print any
DeprecationWarning it triggers (in the server, not in pytest's process, so the
project's ``filterwarnings = error`` does not reach it), and the test fails on
one: that is where a new Python's deprecations show up first.
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from appserver import AppServer
from harness import TLSGATE, Tlsgate, build_pki, curl, free_port, https_client, sni_get, table

from tlsgate.ca.local import LocalCA

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
def apps() -> Iterator[tuple[AppServer, AppServer]]:
    first, second = AppServer("first").start(), AppServer("second").start()
    yield first, second
    first.stop()
    second.stop()


def config(pki_toml: str, port: int, first: str, second: str | None) -> str:
    text = pki_toml + table(
        "listeners",
        name="https",
        bind=[f"127.0.0.1:{port}"],
        protocol="https",
        backend="first",
        default_certificate="main-ecdsa",
    )
    text += table("backends", name="first", servers=[first])
    if second is not None:
        text += table("routes", listener="https", path_prefix="/second", backend="second")
        text += table("backends", name="second", servers=[second])
    return text


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


def test_serve_request_reload_and_stop(
    apps: tuple[AppServer, AppServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert TLSGATE.exists(), f"{TLSGATE} is missing: install tlsgate into this venv"
    first, second = apps
    pki = build_pki(LocalCA.create("tlsgate smoke test CA"), tmp_path / "pki")
    port = free_port()
    monkeypatch.setenv("PYTHONWARNINGS", "default")  # inherited by tlsgate serve
    gate = Tlsgate(tmp_path / "gate", config(pki.toml(), port, first.address, None), workers=2)
    try:
        gate.start()
        # The server runs on this very interpreter (the venv's console script).
        assert Path(psutil.Process(gate.pid).exe()).resolve() == Path(sys.executable).resolve()
        assert len(gate.worker_pids()) == 2

        url = f"https://localhost:{port}"
        resolve = f"localhost:{port}:127.0.0.1"
        r = curl("--cacert", str(pki.ca_file), "--resolve", resolve, f"{url}/echo?via=curl")
        assert r.returncode == 0, r.stderr
        assert r.status == 200
        assert json.loads(r.body)["name"] == "first"

        gate.write_config(config(pki.toml(), port, first.address, second.address))
        gate.reload()
        with https_client(pki.ca_pem) as client:
            resp = sni_get(client, port, "localhost", "/second/x")
            assert resp.status_code == 200
            assert resp.json()["name"] == "second"
            assert sni_get(client, port, "localhost", "/other").json()["name"] == "first"
        workers = gate.worker_pids()

        assert gate.stop(20) == 0, gate.diagnostics()  # SIGTERM, then the exit status
        assert refused(port)
        for pid in workers:
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == (
                psutil.STATUS_ZOMBIE
            )
        logs = gate.error_log_text() + gate.stdout_log.read_text(errors="replace")
        assert "Traceback" not in logs, gate.diagnostics()
        assert "DeprecationWarning" not in logs, gate.diagnostics()
    finally:
        gate.kill()
