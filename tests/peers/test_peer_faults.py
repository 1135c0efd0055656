"""The fault suite's ACME cases (issue 8): the CA goes away, the disk fills up mid-issuance.

How this works: one Pebble for the module (``acme_pebble.run_pebble_at``), reached
through a :class:`faultserver.Switch`, a TCP relay that can refuse connections
(``down``: the CA is stopped, as far as tlsgate can tell, while Pebble keeps its
accounts and orders) or hold them (``hold``: requests to the CA wait, so the test can
act in the middle of an order). Pebble validates on two fixed ports, so every node of
the module listens on those two and nodes run one after another. Each test asserts
what clients get (the certificate a verified handshake sees), what the logs and
``tlsgate certs`` say, and that service continues.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from appserver import AppServer
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from faultserver import Switch, tiny_tmpfs
from harness import (
    READY_LINE,
    TLSGATE,
    Tlsgate,
    curl,
    free_port,
    s_client,
    table,
    toml_str,
    wait_until,
)

from peers.acme_pebble import PebbleServer, run_pebble_at
from tlsgate.certs.inventory import (
    RenewalResult,
    list_certificates,
    node_store,
    request_renewal,
)
from tlsgate.config.loader import load_config

pytestmark = [pytest.mark.peers, pytest.mark.timeout(90)]

WWW = ("www.acme.test", "acme.test")
NEW = ("new.acme.test",)
ISSUED = "issued, valid until"


@dataclass
class Ca:
    """The module's Pebble, the switch in front of it, and the ports it validates on."""

    pebble: PebbleServer
    switch: Switch
    http_port: int
    https_port: int
    root: Path

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.switch.port}/dir"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ca]:
    work = tmp_path_factory.mktemp("faults-ca")
    http_port, https_port = free_port(), free_port()
    with run_pebble_at(work / "pebble", http_port=http_port, tls_port=https_port) as pebble:
        acme_port = urlsplit(pebble.directory_url).port
        assert acme_port is not None
        switch = Switch(acme_port)
        try:
            root = pebble.write_root(work / "pebble-root.pem")
            yield Ca(pebble, switch, http_port, https_port, root)
        finally:
            switch.down()


@pytest.fixture
def app() -> Iterator[AppServer]:
    server = AppServer("faults-app").start()
    yield server
    server.stop()


def node_config(ca: Ca, app: AppServer, certs: dict[str, tuple[str, ...]]) -> str:
    return (
        "[acme]\n"
        f"directory = {toml_str(ca.directory)}\n"
        f"ca_file = {toml_str(ca.pebble.ca_file)}\n"
        'challenges = ["http-01"]\n\n'
        + "".join(
            table("certificates", name=name, domains=list(domains), issuer="acme")
            for name, domains in certs.items()
        )
        + table(
            "listeners",
            name="https",
            bind=[f"127.0.0.1:{ca.https_port}"],
            protocol="https",
            backend="app",
        )
        + table(
            "listeners",
            name="http",
            bind=[f"127.0.0.1:{ca.http_port}"],
            protocol="http",
            redirect_https=True,
            redirect_port=ca.https_port,
        )
        + table("backends", name="app", servers=[app.address])
    )


@dataclass
class Node:
    ca: Ca
    gate: Tlsgate

    def certs(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(TLSGATE), "certs", *args, "-c", str(self.gate.config_path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def certs_async(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(TLSGATE), "certs", *args, "-c", str(self.gate.config_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def key(self, name: str) -> dict[str, Any]:
        """What ``certs list --json`` shows for the (only) key type of certificate ``name``
        (read in this process, with the code the command runs: no interpreter start)."""

        async def listing() -> list[dict[str, Any]]:
            config = load_config(str(self.gate.config_path))
            async with node_store(config, unseal=False) as store:
                return [i.to_json() for i in await list_certificates(config, store)]

        (entry,) = [c for c in asyncio.run(listing()) if c["name"] == name]
        (key,) = entry["keys"]
        return dict(key)

    def renew(self, name: str, *, wait: float) -> RenewalResult:
        """What ``certs renew NAME --wait WAIT`` does, in this process (same code)."""

        async def request() -> RenewalResult:
            config = load_config(str(self.gate.config_path))
            async with node_store(config, unseal=False) as store:
                assert store is not None
                return await request_renewal(config, name, store, wait=wait)

        return asyncio.run(request())

    def served(self, name: str, *, verified: bool = True) -> x509.Certificate:
        """The leaf a new handshake for ``name`` gets (verified against Pebble's root)."""
        probe = s_client(
            self.ca.https_port, servername=name, ca_file=self.ca.root if verified else None
        )
        assert probe.cert is not None, probe.output
        if verified:
            assert probe.handshake_ok, probe.output
        return probe.cert

    def restart(self) -> None:
        ready = self.gate.error_log_text().count(READY_LINE)
        assert self.gate.stop() == 0, self.gate.diagnostics()
        self.gate.start()
        self.gate.wait_for_log(READY_LINE, ready + 1, 20)

    def request_ok(self, name: str = "www.acme.test") -> None:
        """A verified HTTPS request through the node."""
        port = self.ca.https_port
        res = curl(
            "--cacert",
            str(self.ca.root),
            "--resolve",
            f"{name}:{port}:127.0.0.1",
            f"https://{name}:{port}/echo",
        )
        assert res.returncode == 0, res.stderr
        assert res.status == 200
        assert json.loads(res.body)["path"] == "/echo"


def fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def is_pebble(cert: x509.Certificate) -> bool:
    return "Pebble" in cert.issuer.rfc4514_string()


def seconds_until(moment: str) -> float:
    return (datetime.fromisoformat(moment) - datetime.now(UTC)).total_seconds()


def figure(text: str) -> None:
    print(f"\nFIGURE {text}")


# --------------------------------------------------------------------------- the CA is down


def test_ca_down_at_start_serves_the_store_and_new_names_wait_for_the_ca(
    ca: Ca, app: AppServer, tmp_path: Path
) -> None:
    ca.switch.up()
    gate = Tlsgate(tmp_path / "gate", node_config(ca, app, {"www": WWW}))
    node = Node(ca, gate)
    try:
        gate.start()
        gate.wait_for_log(ISSUED, 1, 45)
        wait_until(lambda: is_pebble(node.served("www.acme.test", verified=False)), 20, 0.1)
        issued = fingerprint(node.served("www.acme.test"))

        # The CA goes away; the node restarts with one more name to order.
        ca.switch.down()
        gate.write_config(node_config(ca, app, {"www": WWW, "new": NEW}))
        node.restart()
        assert fingerprint(node.served("www.acme.test")) == issued  # from the store, at once
        node.request_ok()
        assert (
            "placeholder" in node.served("new.acme.test", verified=False).subject.rfc4514_string()
        )
        gate.wait_for_log("certificate new (ecdsa-p256): issuing failed (attempt 1)", 1, 20)
        log = gate.error_log_text()
        first = re.search(
            r"certificate new \(ecdsa-p256\): issuing failed \(attempt 1\): (.*)", log
        )
        assert first is not None
        assert "cannot reach the ACME server" in first.group(1)
        assert f"127.0.0.1:{ca.switch.port}" in first.group(1) or "Connection refused" in log
        assert re.search(r"next try in 3[0-3]s", first.group(1)), first.group(1)
        failed_at = time.monotonic()
        new = node.key("new")
        assert (new["status"], new["failures"]) == ("not issued", 1)
        assert "cannot reach the ACME server" in new["last_error"]
        assert 25 < seconds_until(new["retry_at"]) <= 34, new["retry_at"]
        www = node.key("www")
        assert (www["status"], www["fingerprint_sha256"], www["failures"]) == ("valid", issued, 0)
        # Backoff, not a hot loop: no second attempt on its own for now.
        time.sleep(max(0.0, failed_at + 1.5 - time.monotonic()))
        assert gate.error_log_text().count("certificate new (ecdsa-p256): issuing failed") == 1

        # Asked again while the CA is still down: a clear error, and the backoff doubles.
        res = node.certs("renew", "new", "--wait", "20")
        assert res.returncode == 1, res.stdout + res.stderr
        assert "renewal failed" in res.stderr
        assert "cannot reach the ACME server" in res.stderr
        new = node.key("new")
        assert new["failures"] == 2
        assert 55 < seconds_until(new["retry_at"]) <= 67, new["retry_at"]
        assert fingerprint(node.served("www.acme.test")) == issued

        # The CA is back: the new name is issued; the other name never changed.
        ca.switch.up()
        start = time.monotonic()
        result = node.renew("new", wait=60)
        figure(f"CA back: new name issued in {time.monotonic() - start:.2f} s")
        assert result.ok, result
        assert result.renewed() == ["ecdsa-p256"]
        wait_until(lambda: is_pebble(node.served("new.acme.test", verified=False)), 20, 0.1)
        node.request_ok("new.acme.test")
        new = node.key("new")
        assert (new["status"], new["failures"], new["last_error"]) == ("valid", 0, "")
        assert fingerprint(node.served("www.acme.test")) == issued
    finally:
        gate.kill()
        ca.switch.up()


# --------------------------------------------------------------------------- the disk fills up


def test_disk_full_while_storing_a_renewed_certificate_keeps_the_old_one(
    ca: Ca, app: AppServer, tmp_path: Path
) -> None:
    ca.switch.up()
    gate = Tlsgate(tmp_path / "gate", node_config(ca, app, {"www": WWW}))
    node = Node(ca, gate)
    data = gate.data_dir
    try:
        with tiny_tmpfs(data, "2m") as disk:
            gate.start()
            gate.wait_for_log(ISSUED, 1, 45)
            wait_until(lambda: is_pebble(node.served("www.acme.test", verified=False)), 20, 0.1)
            old = node.served("www.acme.test")
            orders = ca.pebble.orders()

            # A renewal whose requests to the CA wait at the switch: the disk fills up
            # while the CA issues, so the node has a new certificate it cannot store.
            ca.switch.hold()
            renew = node.certs_async("renew", "www", "--force", "--wait", "3")
            gate.wait_for_log("certificate www (ecdsa-p256): ordering for", 2, 20)
            disk.fill()
            ca.switch.up()
            gate.wait_for_log("certificate www (ecdsa-p256): issuing failed", 1, 30)
            assert ca.pebble.orders() == orders + 1
            assert "Issued certificate" in ca.pebble.log_text()
            log = gate.error_log_text()
            failure = re.search(r"issuing failed \(attempt 1\): (.*)", log)
            assert failure is not None
            assert "database or disk is full" in failure.group(1), failure.group(1)
            assert "the current certificate stays in service" in failure.group(1)
            # The old certificate is still served, and requests flow.
            assert fingerprint(node.served("www.acme.test")) == fingerprint(old)
            node.request_ok()
            assert gate.proc is not None
            assert gate.proc.poll() is None
            # The operator's command says so too (it cannot even withdraw its request).
            _, err = renew.communicate(timeout=30)
            assert renew.returncode == 1
            assert "database or disk is full" in err, err

            # Space again: the running node answers through its store again (before the
            # fix its store watcher had died: "no running node picked up the request"),
            # and records the failure it could not record while the disk was full.
            disk.free()
            result = node.renew("www", wait=10)
            assert result.picked_up, result
            (after,) = result.after
            assert "disk is full" in after.last_error, after
            key = node.key("www")
            assert (key["status"], key["fingerprint_sha256"]) == ("valid", fingerprint(old))
            assert key["failures"] == 1
            assert "disk is full" in key["last_error"]
            # A restart loads what the store holds: the old certificate, whole (a
            # verified handshake), with its own key.
            node.restart()
            served = node.served("www.acme.test")
            assert fingerprint(served) == fingerprint(old)
            node.request_ok()
            key = node.key("www")
            assert (key["status"], key["fingerprint_sha256"]) == ("valid", fingerprint(old))
            assert served.not_valid_after_utc > datetime.now(UTC) + timedelta(days=1)
            empty = [p.name for p in data.iterdir() if p.stat().st_size == 0]
            assert set(empty) <= {"state.db-wal", ".filler"}, empty
            assert not [p.name for p in data.iterdir() if p.name.endswith(".tmp")]
            gate.kill()
    finally:
        gate.kill()
        ca.switch.up()
