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
from harness import (
    TLSGATE,
    AppFactory,
    AppProcess,
    AppProcFactory,
    GateFactory,
    Pki,
    app_factory,
    build_pki,
    gate_factory,
)

from tlsgate.ca.local import LocalCA


@pytest.fixture(scope="session")
def ca() -> LocalCA:
    return LocalCA.create("tlsgate integration tests CA")


@pytest.fixture(scope="session")
def pki(ca: LocalCA, tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return build_pki(ca, tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session", autouse=True)
def _tlsgate_installed() -> None:
    assert TLSGATE.exists(), f"{TLSGATE} is missing: install tlsgate into this venv"


@pytest.fixture
def make_app() -> Iterator[AppFactory]:
    """``make_app(name, ws=False)``: a started in-process app server."""
    yield from app_factory()


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
    yield from gate_factory(tmp_path)
