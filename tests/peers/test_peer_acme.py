"""ACME end to end: tlsgate gets certificates from a real Pebble, through its own listeners.

How this works: every test starts its own Pebble (``acme_pebble.run_pebble_at``)
whose HTTP-01 and TLS-ALPN-01 validations go to the ``http`` and ``https``
listeners of the tlsgate under test, then a tlsgate with ``[acme]`` and one
managed certificate ``www`` for ``www.acme.test`` and ``acme.test`` (Pebble's
DNS answers 127.0.0.1 for every name). Clients are curl and ``openssl
s_client`` connecting to 127.0.0.1 with the name as SNI (``--resolve``), and
they verify what is served against Pebble's root, fetched from its management
port. ``tlsgate certs ...`` runs as a user would run it, beside the node.
"""

from __future__ import annotations

import hashlib
import json
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from appserver import AppServer
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from harness import (
    READY_LINE,
    TLSGATE,
    RawConn,
    Tlsgate,
    curl,
    free_port,
    key_kind,
    request_bytes,
    s_client,
    table,
    toml_str,
    toml_value,
    wait_until,
)

from peers.acme_pebble import PebbleServer, run_pebble_at

pytestmark = [pytest.mark.peers, pytest.mark.timeout(90)]

NAMES = ("www.acme.test", "acme.test")
ISSUED = "issued, valid until"
ORDERING = ": ordering for "


@dataclass
class AcmeNode:
    """A Pebble and the tlsgate that gets certificates from it."""

    pebble: PebbleServer
    gate: Tlsgate
    https_port: int
    http_port: int
    root: Path  # Pebble's issuing root, PEM

    def certs(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        """``tlsgate certs ARGS -c <the node's config>``."""
        return subprocess.run(
            [str(TLSGATE), "certs", *args, "-c", str(self.gate.config_path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def listing(self) -> dict[str, Any]:
        """``certs list --json``, the entry for ``www``."""
        res = self.certs("list", "--json")
        assert res.returncode == 0, res.stdout + res.stderr
        entries = json.loads(res.stdout)["certificates"]
        (www,) = [e for e in entries if e["name"] == "www"]
        return dict(www)

    def served(self, name: str = "www.acme.test", *args: str) -> x509.Certificate:
        """The leaf a new handshake gets (not verified: the placeholder counts too)."""
        probe = s_client(self.https_port, *args, servername=name)
        assert probe.cert is not None, probe.output
        return probe.cert

    def wait_issued(self, count: int = 1, timeout: float = 45) -> None:
        self.gate.wait_for_log(ISSUED, count, timeout)

    def wait_served(self, predicate: Callable[[x509.Certificate], bool], what: str) -> None:
        """Until a new handshake gets a certificate ``predicate`` accepts (workers updated)."""
        wait_until(lambda: predicate(self.served()), 20, 0.1, what)

    def restart(self, *, kill: bool = False) -> None:
        """Stop (SIGTERM, or SIGKILL the whole group) and start again on the same store."""
        ready = self.gate.error_log_text().count(READY_LINE)
        if kill:
            self.gate.kill()
        else:
            assert self.gate.stop() == 0, self.gate.diagnostics()
        self.gate.start()  # its own wait sees the earlier ready line
        self.gate.wait_for_log(READY_LINE, ready + 1, 20)


def fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def is_pebble(cert: x509.Certificate) -> bool:
    return "Pebble" in cert.issuer.rfc4514_string()


def acme_config(
    pebble: PebbleServer,
    *,
    https_port: int,
    http_port: int | None,
    app: AppServer,
    challenges: tuple[str, ...],
    key_types: tuple[str, ...],
    lifetime: str = "",
) -> str:
    head = (
        "[acme]\n"
        f"directory = {toml_str(pebble.directory_url)}\n"
        'email = "ops@example.com"\n'
        f"ca_file = {toml_str(pebble.ca_file)}\n"
        f"challenges = {toml_value(list(challenges))}\n"
        f"key_types = {toml_value(list(key_types))}\n"
        + (f"certificate_lifetime = {toml_str(lifetime)}\n" if lifetime else "")
        + "\n"
    )
    body = table("certificates", name="www", domains=list(NAMES), issuer="acme")
    body += table(
        "listeners",
        name="https",
        bind=[f"127.0.0.1:{https_port}"],
        protocol="https",
        backend="app",
    )
    if http_port is not None:
        body += table(
            "listeners",
            name="http",
            bind=[f"127.0.0.1:{http_port}"],
            protocol="http",
            redirect_https=True,
            redirect_port=https_port,
        )
    body += table("backends", name="app", servers=[app.address])
    return head + body


MakeNode = Callable[..., AcmeNode]


@pytest.fixture
def make_node(tmp_path: Path, make_app: Callable[[str], AppServer]) -> Iterator[MakeNode]:
    """``make_node(challenges=..., key_types=..., pebble_http_port=...)``: Pebble + tlsgate.

    ``pebble_http_port`` sends Pebble's HTTP-01 validations elsewhere than
    tlsgate's http listener (a closed port, to make them fail);
    ``http_listener=False`` leaves the http listener out.
    """
    stack: list[tuple[Tlsgate, Any]] = []

    def make(
        *,
        challenges: tuple[str, ...] = ("http-01",),
        key_types: tuple[str, ...] = ("ecdsa-p256",),
        pebble_http_port: int | None = None,
        http_listener: bool = True,
        workers: int = 1,
        lifetime: str = "",
    ) -> AcmeNode:
        n = len(stack)
        https_port, http_port = free_port(), free_port()
        pebble_cm = run_pebble_at(
            tmp_path / f"pebble{n}",
            http_port=pebble_http_port or http_port,
            tls_port=https_port,
        )
        pebble = pebble_cm.__enter__()
        app = make_app(f"app{n}")
        config = acme_config(
            pebble,
            https_port=https_port,
            http_port=http_port if http_listener else None,
            app=app,
            challenges=challenges,
            key_types=key_types,
            lifetime=lifetime,
        )
        gate = Tlsgate(tmp_path / f"gate{n}", config, workers=workers)
        stack.append((gate, pebble_cm))
        gate.start()
        root = pebble.write_root(tmp_path / f"pebble-root{n}.pem")
        return AcmeNode(pebble, gate, https_port, http_port, root)

    yield make
    for gate, pebble_cm in reversed(stack):
        gate.kill()
        pebble_cm.__exit__(None, None, None)


def curl_verified(node: AcmeNode, name: str = "www.acme.test", path: str = "/echo") -> Any:
    """curl https://NAME:PORT/PATH resolved to 127.0.0.1, verified against Pebble's root."""
    return curl(
        "--cacert",
        str(node.root),
        "--resolve",
        f"{name}:{node.https_port}:127.0.0.1",
        f"https://{name}:{node.https_port}{path}",
    )


# --------------------------------------------------------------------------- issuance


def test_http01_issuance_through_tlsgates_own_http_listener(make_node: MakeNode) -> None:
    node = make_node(challenges=("http-01",))
    node.wait_issued()
    node.wait_served(is_pebble, "the Pebble certificate to be served")
    for name in NAMES:
        res = curl_verified(node, name)
        assert res.returncode == 0, res.stderr
        assert res.status == 200
        assert json.loads(res.body)["path"] == "/echo"
    # Pebble really validated over HTTP-01, at tlsgate's http listener.
    log = node.pebble.log_text()
    assert f"Attempting to validate w/ HTTP: http://www.acme.test:{node.http_port}/" in log
    assert "TLS-ALPN-01" not in log
    # ... and the listener still redirects everything else to https.
    plain = curl("--resolve", f"www.acme.test:{node.http_port}:127.0.0.1",
                 f"http://www.acme.test:{node.http_port}/x")  # fmt: skip
    assert plain.status == 308
    assert plain.header("location") == f"https://www.acme.test:{node.https_port}/x"

    entry = node.listing()
    assert entry["issuer"] == "acme"
    assert entry["domains"] == list(NAMES)
    (key,) = entry["keys"]
    served = node.served()
    assert key["key_type"] == "ecdsa-p256"
    assert key["status"] == "valid"
    assert key["fingerprint_sha256"] == fingerprint(served)
    assert key["last_error"] == ""
    assert key["days_left"] > 1
    assert key["renew_at"] is not None
    assert key["not_after"] == served.not_valid_after_utc.isoformat()

    shown = node.certs("show", "www")
    assert shown.returncode == 0, shown.stderr
    assert "Pebble Intermediate CA" in shown.stdout
    assert "www.acme.test, acme.test" in shown.stdout or "acme.test, www.acme.test" in shown.stdout
    assert f"0x{served.serial_number:x}" in shown.stdout
    assert node.certs("show", "nope").returncode == 2


def test_tls_alpn01_only(make_node: MakeNode) -> None:
    # No http listener at all: port 80 closed, as on platforms that need TLS-ALPN-01.
    node = make_node(challenges=("tls-alpn-01",), http_listener=False)
    node.wait_issued()
    node.wait_served(is_pebble, "the Pebble certificate to be served")
    res = curl_verified(node, "acme.test")
    assert res.returncode == 0, res.stderr
    assert res.status == 200
    log = node.pebble.log_text()
    assert "Attempting to validate w/ HTTP" not in log
    assert "VALID by completed challenge" in log


RSA_ONLY = ("-sigalgs", "RSA-PSS+SHA256:RSA+SHA256")


def dual_node(make_node: MakeNode) -> AcmeNode:
    node = make_node(key_types=("ecdsa-p256", "rsa-2048"))
    node.wait_issued(2)
    wait_until(
        lambda: is_pebble(node.served()) and is_pebble(node.served("www.acme.test", *RSA_ONLY)),
        20,
        0.1,
        "both Pebble certificates to be served",
    )
    return node


def test_dual_certificates_rsa_only_client_gets_rsa(make_node: MakeNode) -> None:
    node = dual_node(make_node)
    for args in (("-tls1_3", *RSA_ONLY), ("-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256")):
        probe = s_client(node.https_port, *args, servername="acme.test", ca_file=node.root)
        assert probe.handshake_ok, probe.output
        assert probe.key_kind == "rsa", args
    keys = {k["key_type"]: k for k in node.listing()["keys"]}
    assert set(keys) == {"ecdsa-p256", "rsa-2048"}
    assert all(k["status"] == "valid" and not k["last_error"] for k in keys.values())
    table_out = node.certs("list")
    assert table_out.returncode == 0
    rows = [line.split() for line in table_out.stdout.splitlines() if line.startswith("www ")]
    assert sorted(row[2] for row in rows) == ["ecdsa-p256", "rsa-2048"]


def test_dual_certificates_default_client_gets_ecdsa(make_node: MakeNode) -> None:
    node = dual_node(make_node)
    for args in ((), ("-tls1_2",)):
        probe = s_client(node.https_port, *args, servername="www.acme.test", ca_file=node.root)
        assert probe.handshake_ok, probe.output
        assert probe.key_kind == "ecdsa", args


def test_restart_with_valid_certificates_orders_nothing(make_node: MakeNode) -> None:
    node = make_node()
    node.wait_issued()
    node.wait_served(is_pebble, "the Pebble certificate to be served")
    before = fingerprint(node.served())
    orders = node.pebble.orders()
    assert orders == 1
    ordering_lines = node.gate.error_log_text().count(ORDERING)
    node.restart()
    # Served at once from the store: no placeholder in between.
    assert fingerprint(node.served()) == before
    time.sleep(1.5)  # give a (wrong) order time to show up
    assert node.pebble.orders() == orders
    assert node.gate.error_log_text().count(ORDERING) == ordering_lines
    assert node.gate.error_log_text().count(ISSUED) == 1


# --------------------------------------------------------------------------- live swap


def test_forced_renewal_swaps_live_and_keeps_open_connections(make_node: MakeNode) -> None:
    node = make_node(workers=2)
    node.wait_issued()
    node.wait_served(is_pebble, "the Pebble certificate to be served")
    old = fingerprint(node.served())

    ctx = ssl.create_default_context(cafile=str(node.root))
    conn = RawConn(node.https_port, tls=ctx, server_hostname="www.acme.test")
    assert isinstance(conn.sock, ssl.SSLSocket)
    der = conn.sock.getpeercert(binary_form=True)
    assert der is not None
    assert hashlib.sha256(der).hexdigest() == old
    request = request_bytes("GET", "/echo", "www.acme.test")
    conn.send(request)
    assert conn.read_response().status == 200

    # Keep the connection busy while the renewal and the swap happen.
    statuses: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def keep_using() -> None:
        try:
            while not stop.is_set():
                conn.send(request)
                statuses.append(conn.read_response().status)
                time.sleep(0.05)
        except (OSError, AssertionError) as exc:
            errors.append(exc)

    user = threading.Thread(target=keep_using, daemon=True)
    user.start()
    try:
        res = node.certs("renew", "www", "--force", "--wait", "60")
    finally:
        time.sleep(0.3)
        stop.set()
        user.join(10)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "renewed" in res.stdout
    assert not errors, errors
    assert len(statuses) >= 3
    assert set(statuses) == {200}

    new = fingerprint(node.served())
    wait_until(lambda: fingerprint(node.served()) != old, 20, 0.1, "the new certificate")
    new = fingerprint(node.served())
    # Every worker serves it (SO_REUSEPORT spreads these over both).
    for _ in range(8):
        probe = s_client(node.https_port, servername="www.acme.test", ca_file=node.root)
        assert probe.handshake_ok, probe.output
        assert probe.cert is not None
        assert fingerprint(probe.cert) == new
    # The connection from before the swap still works, on its old certificate.
    conn.send(request)
    assert conn.read_response().status == 200
    der = conn.sock.getpeercert(binary_form=True)
    assert der is not None
    assert hashlib.sha256(der).hexdigest() == old
    conn.close()

    assert node.listing()["keys"][0]["fingerprint_sha256"] == new
    assert node.pebble.orders() == 2


def test_short_lived_certificate_renews_itself_when_due(make_node: MakeNode) -> None:
    # 60s certificates (Pebble honours the order's notAfter): due when a third is left,
    # so the node must renew on its own after ~40s, while a connection from before stays up.
    node = make_node(lifetime="60s")
    node.wait_issued()
    node.wait_served(is_pebble, "the Pebble certificate to be served")
    first = node.served()
    lifetime = first.not_valid_after_utc - first.not_valid_before_utc
    assert lifetime.total_seconds() <= 61
    ctx = ssl.create_default_context(cafile=str(node.root))
    conn = RawConn(node.https_port, tls=ctx, server_hostname="www.acme.test")
    request = request_bytes("GET", "/echo", "www.acme.test")
    conn.send(request)
    assert conn.read_response().status == 200

    wait_until(
        lambda: fingerprint(node.served()) != fingerprint(first), 60, 0.5, "a renewed certificate"
    )
    renewed = node.served()
    assert renewed.not_valid_after_utc > first.not_valid_after_utc
    # renewed inside the last third of the old certificate's life, not earlier
    assert renewed.not_valid_before_utc >= first.not_valid_before_utc + lifetime * 0.6
    conn.send(request)
    assert conn.read_response().status == 200
    conn.close()
    assert node.pebble.orders() == 2


def test_renew_not_due_without_force_changes_nothing(make_node: MakeNode) -> None:
    node = make_node()
    node.wait_issued()
    before = node.listing()["keys"][0]["fingerprint_sha256"]
    res = node.certs("renew", "www", "--wait", "30")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "not due" in res.stdout
    assert node.listing()["keys"][0]["fingerprint_sha256"] == before
    assert node.pebble.orders() == 1


# --------------------------------------------------------------------------- failures


def test_failing_challenge_is_reported_and_placeholder_served(make_node: MakeNode) -> None:
    closed = free_port()  # nothing listens here: every HTTP-01 validation is refused
    node = make_node(challenges=("http-01",), pebble_http_port=closed)
    node.gate.wait_for_log("issuing failed", 1, 45)

    key = node.listing()["keys"][0]
    assert key["status"] == "not issued"
    assert key["failures"] >= 1
    assert key["retry_at"] is not None  # the backoff is visible
    error = key["last_error"]
    # the failing name, the challenge and the CA's own detail
    assert "connection" in error, error
    assert "http-01" in error, error
    assert "acme.test" in error, error
    assert str(closed) in error, error
    # Meanwhile the placeholder is served, and the node is alive.
    cert = node.served()
    assert not is_pebble(cert)
    assert "placeholder" in cert.subject.rfc4514_string()
    assert node.gate.proc is not None
    assert node.gate.proc.poll() is None
    assert "serving a self-signed placeholder" in node.gate.error_log_text()
    # The human view shows the error too.
    table_out = node.certs("list")
    assert table_out.returncode == 0
    assert str(closed) in table_out.stdout


def test_ca_outage_during_forced_renewal_keeps_the_old_certificate(make_node: MakeNode) -> None:
    node = make_node()
    node.wait_issued()
    node.wait_served(is_pebble, "the Pebble certificate to be served")
    old = fingerprint(node.served())
    node.pebble.stop_acme()

    res = node.certs("renew", "www", "--force", "--wait", "60")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "renewal failed" in res.stderr
    assert "cannot reach the ACME server" in res.stderr

    key = node.listing()["keys"][0]
    assert key["status"] == "valid"
    assert key["fingerprint_sha256"] == old
    assert key["failures"] == 1
    assert "cannot reach the ACME server" in key["last_error"]
    assert key["retry_at"] is not None
    table_out = node.certs("list")
    assert "[1 failure(s), next attempt" in table_out.stdout
    assert fingerprint(node.served()) == old
    probe = s_client(node.https_port, servername="www.acme.test", ca_file=node.root)
    assert probe.handshake_ok, probe.output
    assert "the current certificate stays in service" in node.gate.error_log_text()


def test_renew_without_a_running_node_times_out(make_node: MakeNode) -> None:
    node = make_node()
    node.wait_issued()
    assert node.gate.stop() == 0
    res = node.certs("renew", "www", "--force", "--wait", "1.5")
    assert res.returncode == 1
    assert "no running node picked up" in res.stderr


def test_killed_mid_order_issues_cleanly_on_restart(make_node: MakeNode) -> None:
    node = make_node(key_types=("ecdsa-p256", "rsa-2048"))
    # SIGKILL the whole node the moment Pebble has its first order: its
    # authorizations are still pending (tlsgate polls them after 0.25 s at the earliest).
    wait_until(lambda: node.pebble.orders() >= 1, 30, 0.005, "an order at Pebble")
    node.gate.kill()
    assert ISSUED not in node.gate.error_log_text()
    assert "Issued certificate" not in node.pebble.log_text()

    node.restart(kill=True)
    # The dead process's lock on the certificate expires (manager.LOCK_TTL = 30 s).
    node.gate.wait_for_log("waiting for its lock", 1, 20)
    node.wait_issued(2, timeout=60)
    wait_until(
        lambda: is_pebble(node.served()) and is_pebble(node.served("www.acme.test", *RSA_ONLY)),
        20,
        0.1,
        "both certificates to be served",
    )
    res = curl_verified(node)
    assert res.returncode == 0, res.stderr
    keys = node.listing()["keys"]
    assert [k["status"] for k in keys] == ["valid", "valid"]
    assert all(not k["last_error"] for k in keys)


# --------------------------------------------------------------------------- export, revoke


def test_export_writes_matching_private_files(make_node: MakeNode, tmp_path: Path) -> None:
    node = make_node(key_types=("ecdsa-p256", "rsa-2048"))
    node.wait_issued(2)
    out = tmp_path / "export"
    res = node.certs("export", "www", "--out", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    keys = {k["key_type"]: k for k in node.listing()["keys"]}
    for key_type, kind in (("ecdsa-p256", "ecdsa"), ("rsa-2048", "rsa")):
        fullchain, privkey = out / key_type / "fullchain.pem", out / key_type / "privkey.pem"
        assert fullchain.stat().st_mode & 0o777 == 0o644
        assert privkey.stat().st_mode & 0o777 == 0o600
        chain = x509.load_pem_x509_certificates(fullchain.read_bytes())
        assert len(chain) >= 2  # leaf + Pebble's intermediate
        leaf = chain[0]
        assert key_kind(leaf) == kind
        assert fingerprint(leaf) == keys[key_type]["fingerprint_sha256"]
        key = serialization.load_pem_private_key(privkey.read_bytes(), password=None)
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        der = serialization.Encoding.DER
        assert key.public_key().public_bytes(der, spki) == leaf.public_key().public_bytes(der, spki)
        # openssl agrees that key and certificate belong together
        pub_key = subprocess.run(
            ["openssl", "pkey", "-in", str(privkey), "-pubout"],
            capture_output=True, check=True,
        ).stdout  # fmt: skip
        pub_cert = subprocess.run(
            ["openssl", "x509", "-in", str(fullchain), "-noout", "-pubkey"],
            capture_output=True, check=True,
        ).stdout  # fmt: skip
        assert pub_key == pub_cert
    assert node.certs("export", "nope", "--out", str(out)).returncode == 2


def test_revoke_at_the_ca(make_node: MakeNode) -> None:
    node = make_node()
    node.wait_issued()
    serial = node.listing()["keys"][0]["serial"]
    res = node.certs("revoke", "www", "--reason", "superseded")
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"revoked serial 0x{serial}" in res.stdout
    status = node.pebble.get(f"/cert-status-by-serial/{serial}").json()
    assert status["Status"] == "Revoked"
    # A second revocation is refused by the CA, and said so.
    again = node.certs("revoke", "www")
    assert again.returncode == 1
    assert "alreadyRevoked" in again.stderr
