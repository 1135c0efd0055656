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
from harness import MAIN_NAMES, TLSGATE, GateFactory, Pki, Tlsgate, issue_files  # noqa: E402

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


@pytest.fixture
def make_app() -> Iterator[Callable[[str], AppServer]]:
    """``make_app(name)``: a started in-process app server (``/echo`` shows the headers)."""
    started: list[AppServer] = []

    def make(name: str) -> AppServer:
        app = AppServer(name).start()
        started.append(app)
        return app

    yield make
    for app in started:
        app.stop()


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
