"""No key material in any log, whatever happens (issue 8: "never logged").

A node runs at ``level = "debug"`` with two workers and an ACME certificate whose
CA is unreachable (so the store is opened and its orders fail, logged), serves
requests, reloads,
is refused a reload whose new key does not match its certificate, answers a
malformed request, runs ``tlsgate certs list``, and stops. Then its error log,
access log and stdout, and the CLI's output, are searched for every secret it
held: each private key (any line of its PEM body, and the PEM markers), and the
store key that seals private keys at rest.
"""

from __future__ import annotations

import base64
import signal
import ssl
import subprocess
from pathlib import Path

import pytest
from appserver import AppServer
from harness import TLSGATE, Pki, RawConn, Tlsgate, curl, free_port, table

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def secrets_of(pki: Pki, store_key: bytes, wrong_key: bytes) -> list[bytes]:
    """Every string whose presence in a log would leak a secret."""
    found = [b"PRIVATE KEY"]
    for pem in [c.key_file.read_bytes() for c in (pki.ecdsa, pki.rsa, pki.other, pki.fallback)]:
        found += [line for line in pem.splitlines() if line and not line.startswith(b"-----")]
    found += [line for line in wrong_key.splitlines() if line and not line.startswith(b"-----")]
    raw = store_key.strip()
    found += [raw, raw.hex().encode(), base64.b64encode(raw)]
    return [s for s in found if len(s) >= 16]


def test_no_log_line_holds_key_material(pki: Pki, tmp_path: Path) -> None:
    app = AppServer("secrets").start()
    port = free_port()
    # a copy of the ECDSA certificate whose key a reload will replace with a wrong one
    cert_dir = tmp_path / "certs"
    cert_dir.mkdir()
    cert_file, key_file = cert_dir / "site.pem", cert_dir / "site.key"
    cert_file.write_bytes(pki.ecdsa.cert_file.read_bytes())
    key_file.write_bytes(pki.ecdsa.key_file.read_bytes())
    key_file.chmod(0o600)
    site = (
        "[[certificates]]\n"
        'name = "site"\n'
        'domains = ["localhost"]\n'
        'issuer = "files"\n'
        f'cert_file = "{cert_file}"\n'
        f'key_file = "{key_file}"\n\n'
    )
    # an ACME certificate opens the store (its keys sealed with the store key); the CA
    # is unreachable, so the node serves a placeholder and logs its failed orders
    acme = (
        f'[acme]\ndirectory = "https://127.0.0.1:{free_port()}/dir"\n\n'
        '[[certificates]]\nname = "ordered"\ndomains = ["acme.test"]\nissuer = "acme"\n\n'
    )
    config = (
        acme
        + site
        + pki.rsa.toml()
        + table(
            "listeners",
            name="web",
            bind=[f"127.0.0.1:{port}"],
            protocol="https",
            backend="app",
            default_certificate="site",
        )
        + table("backends", name="app", servers=[app.address])
    )
    gate = Tlsgate(tmp_path / "node", config, workers=2, log_level="debug")
    wrong = pki.ca.issue(["localhost"]).key_pem
    try:
        gate.start()
        for _ in range(4):
            res = curl("--cacert", str(pki.ca_file), f"https://localhost:{port}/echo")
            assert res.status == 200
        tls = ssl.create_default_context(cafile=pki.ca_file)
        with RawConn(port, tls=tls, server_hostname="localhost") as c:
            c.send(b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n")
            assert c.read_response().status == 400
        gate.reload()
        key_file.write_bytes(wrong)  # a key that is not the certificate's
        gate.signal(signal.SIGHUP)
        gate.wait_for_log("does not belong to the", 1, 20)
        listing = subprocess.run(
            [str(TLSGATE), "certs", "list", "-c", str(gate.config_path)],
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert listing.returncode == 0, listing.stderr
        gate.stop()
    finally:
        gate.kill()
        app.stop()
    store_key_file = gate.data_dir / "store.key"
    assert store_key_file.exists(), sorted(p.name for p in gate.data_dir.iterdir())
    texts = {
        "error log": gate.error_log.read_bytes(),
        "access log": gate.access_log.read_bytes(),
        "stdout": gate.stdout_log.read_bytes(),
        "certs list": listing.stdout + listing.stderr,
    }
    log = texts["error log"].decode()
    assert "certificate ordered (ecdsa-p256): issuing failed" in log
    assert "does not belong to the" in log  # the refused reload
    for secret in secrets_of(pki, store_key_file.read_bytes(), wrong):
        for where, text in texts.items():
            assert secret not in text, f"{where} holds key material: {secret[:20]!r}..."
