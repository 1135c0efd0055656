"""A wildcard certificate issued end to end over dns-01, through a real BIND.

``tlsgate serve`` has ``[acme] challenges = ["dns-01"]`` and ``[acme.dns]``
pointing at ``named`` (``integration/bindserver.py``) with a TSIG key; Pebble
resolves through that same ``named`` (``pebble_bind.py``), so the order for
``acme.test`` + ``*.acme.test`` succeeds only if tlsgate wrote both TXT values
at ``_acme-challenge.acme.test`` with signed RFC 2136 updates. curl, trusting
only Pebble's root (from its management port), then reaches the https listener
under several names the certificate covers, and the records are gone again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from appserver import AppServer
from bindserver import MAIN_KEY, NamedServer, run_named
from harness import (
    CurlResult,
    GateFactory,
    curl,
    dns_names,
    free_port,
    s_client,
    table,
    toml_str,
    wait_until,
)

from peers.pebble_bind import DnsPebble, run_pebble_with_dns

pytestmark = [pytest.mark.peers, pytest.mark.integration, pytest.mark.timeout(120)]

ZONE = "acme.test"
RECORD = f"_acme-challenge.{ZONE}"


@dataclass
class World:
    named: NamedServer
    pebble: DnsPebble


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with (
        run_named(tmp_path / "named", ZONE) as named,
        run_pebble_with_dns(tmp_path / "pebble", named.port) as pebble,
    ):
        yield World(named, pebble)


def gate_config(world: World, https_port: int, app: AppServer, *, secret: str | None = None) -> str:
    named = world.named
    return (
        "[acme]\n"
        f"directory = {toml_str(world.pebble.directory_url)}\n"
        f"ca_file = {toml_str(world.pebble.ca_file)}\n"
        'challenges = ["dns-01"]\n'
        'renew_check_interval = "1h"\n\n'
        "[acme.dns]\n"
        f"server = {toml_str(named.server)}\n"
        f"zone = {toml_str(ZONE)}\n"
        f"tsig_key_name = {toml_str(MAIN_KEY)}\n"
        f"tsig_secret = {toml_str(secret or named.secret)}\n"
        'tsig_algorithm = "hmac-sha256"\n\n'
        + table("certificates", name="wild", domains=[ZONE, f"*.{ZONE}"], issuer="acme")
        + table(
            "listeners",
            name="https",
            bind=[f"127.0.0.1:{https_port}"],
            protocol="https",
            backend="app",
        )
        + table("backends", name="app", servers=[app.address])
    )


def curl_as(host: str, port: int, root: Path) -> CurlResult:
    return curl(
        "--cacert", str(root),
        "--resolve", f"{host}:{port}:127.0.0.1",
        f"https://{host}:{port}/echo",
    )  # fmt: skip


def test_wildcard_certificate_over_dns01(
    world: World, make_gate: GateFactory, make_app: Callable[[str], AppServer], tmp_path: Path
) -> None:
    app = make_app("app")
    port = free_port()
    gate = make_gate(gate_config(world, port, app))
    gate.wait_for_log("certificate wild (ecdsa-p256): issued", 1, 60)
    root = world.pebble.write_root(tmp_path / "pebble-root.pem")

    # The issued certificate reaches the worker shortly after the supervisor logs it.
    def verified() -> CurlResult | None:
        result = curl_as(f"x.{ZONE}", port, root)
        return result if result.returncode == 0 else None

    first = wait_until(verified, 15, what="curl verifying the issued certificate")
    assert first is not None
    assert first.status == 200, first.stderr
    for host in (f"www.{ZONE}", ZONE):
        result = curl_as(host, port, root)
        assert result.returncode == 0, result.stderr
        assert result.status == 200
        assert json.loads(result.body)["name"] == "app"

    # a wildcard covers one label only (RFC 6125 §6.4.3): deeper names do not verify
    deep = curl_as(f"a.b.{ZONE}", port, root)
    assert deep.returncode != 0

    probe = s_client(port, servername=f"x.{ZONE}")
    assert probe.cert is not None
    assert sorted(dns_names(probe.cert)) == sorted([ZONE, f"*.{ZONE}"])

    # Both authorizations (acme.test and *.acme.test) were answered through the
    # server, with the TSIG key, and both records were removed afterwards.
    named_log = world.named.log_text()
    assert named_log.count(f"adding an RR at '{RECORD}' TXT") == 2, named_log[-3000:]
    assert named_log.count(f"deleting an RR at {RECORD} TXT") == 2, named_log[-3000:]
    assert f"/key {MAIN_KEY}: updating zone '{ZONE}/IN'" in named_log
    assert world.named.txt(RECORD) == set()
    # ... and Pebble validated both through that server
    pebble_log = world.pebble.log_text()
    assert f"Using custom DNS resolver for ACME challenges: {world.named.server}" in pebble_log
    assert pebble_log.count("set VALID by completed challenge") == 2, pebble_log[-3000:]


def test_rejected_update_is_reported_and_placeholder_served(
    world: World, make_gate: GateFactory, make_app: Callable[[str], AppServer]
) -> None:
    """A wrong TSIG secret: BIND answers NOTAUTH/BADSIG, the log says so, and the
    placeholder stays in service (no crash, no record written)."""
    wrong = "d3Jvbmcgc2VjcmV0IGZvciB0aGUgdGVzdA=="
    app = make_app("app")
    port = free_port()
    gate = make_gate(gate_config(world, port, app, secret=wrong))
    gate.wait_for_log("certificate wild (ecdsa-p256): issuing failed (attempt 1)", 1, 60)
    line = next(line for line in gate.error_log_text().splitlines() if "issuing failed" in line)
    assert world.named.server in line
    assert f"zone {ZONE}" in line
    assert "NOTAUTH" in line
    assert "BADSIG" in line
    assert wrong not in gate.error_log_text()
    assert world.named.txt(RECORD) == set()
    assert "adding an RR" not in world.named.log_text()
    probe = s_client(port, servername=f"x.{ZONE}")
    assert probe.cert is not None  # the placeholder is served meanwhile
    assert "tlsgate placeholder" in probe.cert.subject.rfc4514_string()
