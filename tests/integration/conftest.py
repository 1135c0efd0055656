"""Fixtures for the loopback integration tests.

How this works: one throwaway CA per session (``tlsgate.ca.local.LocalCA``)
issues the certificates every test serves: an ECDSA and an RSA certificate for
the same names (``localhost``, ``example.test``, ``*.example.test``), one for
``other.test`` and a fallback for ``fallback.test``. Factories start app servers
(in-process or as subprocesses) and ``tlsgate serve`` processes and always
stop/kill them at teardown, so a failing test leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from appserver import AppServer
from harness import (
    MAIN_NAMES,
    TLSGATE,
    AppFactory,
    AppProcess,
    AppProcFactory,
    GateFactory,
    Pki,
    Tlsgate,
    issue_files,
)

from tlsgate.ca.local import LocalCA


@pytest.fixture(scope="session")
def ca() -> LocalCA:
    return LocalCA.create("tlsgate integration tests CA")


@pytest.fixture(scope="session")
def pki(ca: LocalCA, tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca_file, _ = ca.write(d)
    return Pki(
        ca=ca,
        ca_file=ca_file,
        ecdsa=issue_files(ca, d, "main-ecdsa", MAIN_NAMES, "ecdsa-p256"),
        rsa=issue_files(ca, d, "main-rsa", MAIN_NAMES, "rsa-2048"),
        other=issue_files(ca, d, "other", ("other.test",), "ecdsa-p256"),
        fallback=issue_files(ca, d, "fallback", ("fallback.test",), "ecdsa-p256"),
    )


@pytest.fixture(scope="session", autouse=True)
def _tlsgate_installed() -> None:
    assert TLSGATE.exists(), f"{TLSGATE} is missing: install tlsgate into this venv"


@pytest.fixture
def make_app() -> Iterator[AppFactory]:
    """``make_app(name, ws=False)``: a started in-process app server."""
    started: list[AppServer] = []

    def make(name: str, *, ws: bool = False, host: str = "127.0.0.1") -> AppServer:
        app = AppServer(name, host, ws=ws).start()
        started.append(app)
        return app

    yield make
    for app in started:
        app.stop()


@pytest.fixture
def make_app_proc(tmp_path: Path) -> Iterator[AppProcFactory]:
    """``make_app_proc(name, port=0)``: a started app server subprocess."""
    started: list[AppProcess] = []

    def make(name: str, port: int = 0, *, ws: bool = False) -> AppProcess:
        app = AppProcess(name, port, ws=ws, log_dir=tmp_path / "apps")
        started.append(app)  # before start(): a half-started one is stopped too
        return app.start()

    yield make
    for app in started:
        app.stop()


@pytest.fixture
def make_gate(tmp_path: Path) -> Iterator[GateFactory]:
    """``make_gate(config, workers=1, ...)``: a started ``tlsgate serve``; killed at teardown."""
    started: list[Tlsgate] = []

    def make(config: str, **kw: object) -> Tlsgate:
        gate = Tlsgate(tmp_path / f"gate{len(started)}", config, **kw)  # type: ignore[arg-type]
        started.append(gate)
        return gate.start()

    yield make
    for gate in started:
        gate.kill()
