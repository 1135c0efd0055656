"""Fixtures for the peers tests: tlsgate next to real nginx and HAProxy.

How this works: the loopback harness of ``tests/integration`` (``harness.py``,
``appserver.py``) is reused as is, so this directory puts that one on
``sys.path``; the session CA and its certificates, tlsgate and app servers come
from the same factories as there. ``make_nginx`` and ``make_haproxy`` start peers
(see ``peers.py``) and stop every one of them at teardown. Every test module
here marks its tests ``peers``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

_INTEGRATION = Path(__file__).resolve().parents[1] / "integration"
if str(_INTEGRATION) not in sys.path:
    sys.path.insert(0, str(_INTEGRATION))

from appserver import AppServer  # noqa: E402
from harness import (  # noqa: E402
    TLSGATE,
    GateFactory,
    Pki,
    app_factory,
    build_pki,
    gate_factory,
)

from peers.peers import Peer, require, start_haproxy, start_nginx  # noqa: E402
from tlsgate.ca.local import LocalCA  # noqa: E402

NginxFactory = Callable[..., Peer]
HaproxyFactory = Callable[[str, str, list[int]], Peer]


@pytest.fixture(scope="session", autouse=True)
def _peers_installed() -> None:
    assert TLSGATE.exists(), f"{TLSGATE} is missing: install tlsgate into this venv"
    require("nginx")
    require("haproxy")
    require("curl")


@pytest.fixture(scope="session")
def ca() -> LocalCA:
    return LocalCA.create("tlsgate peers tests CA")


@pytest.fixture(scope="session")
def pki(ca: LocalCA, tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return build_pki(ca, tmp_path_factory.mktemp("pki"))


@pytest.fixture
def make_gate(tmp_path: Path) -> Iterator[GateFactory]:
    """``make_gate(config, workers=1, ...)``: a started ``tlsgate serve``; killed at teardown."""
    yield from gate_factory(tmp_path)


@pytest.fixture
def make_app() -> Iterator[Callable[[str], AppServer]]:
    """``make_app(name)``: a started in-process app server (``/echo`` shows the headers)."""
    yield from app_factory()


@pytest.fixture
def make_nginx(tmp_path: Path) -> Iterator[NginxFactory]:
    """``make_nginx(name, ports, http=..., stream=...)``: a started nginx, stopped at teardown."""
    started: list[Peer] = []

    def make(name: str, ports: list[int], *, http: str = "", stream: str = "") -> Peer:
        peer = start_nginx(tmp_path, name, ports, http=http, stream=stream)
        started.append(peer)
        return peer

    yield make
    for peer in started:
        peer.stop()


@pytest.fixture
def make_haproxy(tmp_path: Path) -> Iterator[HaproxyFactory]:
    """``make_haproxy(name, config, ports)``: a started HAProxy, stopped at teardown."""
    started: list[Peer] = []

    def make(name: str, config: str, ports: list[int]) -> Peer:
        peer = start_haproxy(tmp_path, name, config, ports)
        started.append(peer)
        return peer

    yield make
    for peer in started:
        peer.stop()
