"""TLS termination as real clients see it: SNI certificate selection (exact,
wildcard, default), ECDSA vs RSA for the same name, protocol versions, ALPN.

Clients: ``openssl s_client`` (what certificate and protocol it got), curl
(full verification against the test CA), and Python's ssl module.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from appserver import AppServer
from harness import (
    Pki,
    RawConn,
    Tlsgate,
    client_context,
    curl,
    dns_names,
    free_port,
    https_client,
    request_bytes,
    s_client,
    sni_get,
    table,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@dataclass
class TLSStack:
    gate: Tlsgate
    port: int  # all four certificates, default "fallback"
    port13: int  # min_tls_version = "1.3"
    pki: Pki


@pytest.fixture(scope="module")
def tls(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSStack]:
    app = AppServer("tls").start()
    port, port13 = free_port(), free_port()
    config = (
        pki.toml()
        + table(
            "listeners",
            name="https",
            bind=[f"127.0.0.1:{port}"],
            protocol="https",
            backend="app",
            default_certificate="fallback",
        )
        + table(
            "listeners",
            name="https13",
            bind=[f"127.0.0.1:{port13}"],
            protocol="https",
            backend="app",
            default_certificate="main-ecdsa",
            min_tls_version="1.3",
        )
        + table("backends", name="app", servers=[app.address])
    )
    gate = Tlsgate(tmp_path_factory.mktemp("tls"), config)
    try:
        gate.start()
        yield TLSStack(gate, port, port13, pki)
    finally:
        gate.kill()
        app.stop()


# ------------------------------------------------------------------ SNI


@pytest.mark.parametrize(
    ("sni", "expected"),
    [
        ("localhost", "localhost"),  # exact
        ("example.test", "localhost"),  # exact, second name of the same certificate
        ("other.test", "other.test"),  # exact, another certificate
        ("api.example.test", "localhost"),  # *.example.test
        ("deep.api.example.test", "fallback.test"),  # a wildcard covers one label only
        ("nothing.test", "fallback.test"),  # no match: the default certificate
        (None, "fallback.test"),  # no SNI: the default certificate
    ],
)
def test_sni_selects_the_certificate(tls: TLSStack, sni: str | None, expected: str) -> None:
    probe = s_client(tls.port, servername=sni)
    assert probe.handshake_ok, probe.output
    assert probe.cert is not None
    assert dns_names(probe.cert)[0] == expected


def test_sni_certificates_verify_with_curl(tls: TLSStack) -> None:
    for name in ("localhost", "api.example.test", "other.test"):
        res = curl(
            "--cacert",
            str(tls.pki.ca_file),
            "--resolve",
            f"{name}:{tls.port}:127.0.0.1",
            f"https://{name}:{tls.port}/echo",
        )
        assert res.returncode == 0, res.stderr
        assert res.status == 200


def test_python_client_verifies_and_gets_http11(tls: TLSStack) -> None:
    with https_client(tls.pki.ca_pem) as client:
        resp = sni_get(client, tls.port, "api.example.test")
    assert resp.status_code == 200
    assert resp.http_version == "HTTP/1.1"
    echo = resp.json()
    assert echo["path"] == "/echo"


# -------------------------------------------------------- ECDSA and RSA


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_ecdsa_capable_client_gets_ecdsa(tls: TLSStack, version: str) -> None:
    probe = s_client(tls.port, version, servername="localhost", ca_file=tls.pki.ca_file)
    assert probe.handshake_ok, probe.output
    assert probe.key_kind == "ecdsa"
    assert probe.peer_signature_type == "ECDSA"
    assert probe.cert is not None
    assert probe.cert.serial_number == tls.pki.ecdsa.certificate.serial_number


@pytest.mark.parametrize(
    "args",
    [
        ("-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"),
        ("-tls1_3", "-sigalgs", "RSA-PSS+SHA256:RSA+SHA256"),
        ("-tls1_2", "-sigalgs", "RSA-PSS+SHA256:RSA+SHA256"),
    ],
    ids=["tls12-rsa-cipher", "tls13-rsa-sigalgs", "tls12-rsa-sigalgs"],
)
def test_rsa_only_client_gets_rsa(tls: TLSStack, args: tuple[str, ...]) -> None:
    probe = s_client(tls.port, *args, servername="localhost", ca_file=tls.pki.ca_file)
    assert probe.handshake_ok, probe.output
    assert probe.key_kind == "rsa"
    assert probe.peer_signature_type in ("RSA", "RSA-PSS")
    assert probe.cert is not None
    assert probe.cert.serial_number == tls.pki.rsa.certificate.serial_number


def test_rsa_only_curl_verifies(tls: TLSStack) -> None:
    res = curl(
        "--cacert",
        str(tls.pki.ca_file),
        "--tls-max",
        "1.2",
        "--ciphers",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "--resolve",
        f"localhost:{tls.port}:127.0.0.1",
        f"https://localhost:{tls.port}/echo",
    )
    assert res.returncode == 0, res.stderr
    assert res.status == 200


# ------------------------------------------------------------ versions


@pytest.fixture(scope="module")
def legacy_openssl_conf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty OPENSSL_CONF: Debian's MinProtocol=TLSv1.2 would otherwise stop the
    *client* from offering TLS 1.0/1.1 and the test would prove nothing."""
    path = tmp_path_factory.mktemp("openssl") / "empty.cnf"
    path.write_text("")
    return path


LEGACY = {"-tls1": "TLSv1", "-tls1_1": "TLSv1.1"}


@pytest.mark.parametrize("flag", sorted(LEGACY))
def test_legacy_client_can_do_old_tls_with_a_willing_server(
    pki: Pki, legacy_openssl_conf: Path, flag: str
) -> None:
    """Control: the same client invocation succeeds against ``openssl s_server`` that
    allows the old version, so its failure against tlsgate is tlsgate refusing."""
    port = free_port()
    server = subprocess.Popen(
        [
            "openssl",
            "s_server",
            "-accept",
            f"127.0.0.1:{port}",
            "-quiet",
            "-cert",
            str(pki.ecdsa.cert_file),
            "-key",
            str(pki.ecdsa.key_file),
            flag,
            "-cipher",
            "DEFAULT@SECLEVEL=0",
        ],
        env={"OPENSSL_CONF": str(legacy_openssl_conf), "PATH": "/usr/bin:/bin"},
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: _listening(port), 5, what="openssl s_server")
        probe = s_client(
            port, flag, "-cipher", "DEFAULT@SECLEVEL=0", openssl_conf=legacy_openssl_conf
        )
        assert probe.handshake_ok, probe.output
        assert probe.protocol == LEGACY[flag]
    finally:
        server.kill()
        server.wait(5)
        assert server.stdin is not None
        server.stdin.close()


@pytest.mark.parametrize("flag", sorted(LEGACY))
def test_tls10_and_tls11_are_refused(tls: TLSStack, legacy_openssl_conf: Path, flag: str) -> None:
    probe = s_client(
        tls.port,
        flag,
        "-cipher",
        "DEFAULT@SECLEVEL=0",
        servername="localhost",
        openssl_conf=legacy_openssl_conf,
    )
    assert not probe.handshake_ok, probe.output
    assert probe.returncode != 0


def test_min_tls_version_13(tls: TLSStack) -> None:
    refused = s_client(tls.port13, "-tls1_2", servername="localhost")
    assert not refused.handshake_ok, refused.output
    accepted = s_client(tls.port13, "-tls1_3", servername="localhost")
    assert accepted.handshake_ok, accepted.output
    assert accepted.protocol == "TLSv1.3"


@pytest.mark.parametrize("flag", ["-tls1_2", "-tls1_3"])
def test_tls12_and_tls13_are_served(tls: TLSStack, flag: str) -> None:
    probe = s_client(tls.port, flag, servername="localhost", ca_file=tls.pki.ca_file)
    assert probe.handshake_ok, probe.output
    assert probe.protocol == {"-tls1_2": "TLSv1.2", "-tls1_3": "TLSv1.3"}[flag]
    assert "Verify return code: 0 (ok)" in probe.output


# ------------------------------------------------------------------ ALPN


def test_alpn_offers_http11_only(tls: TLSStack) -> None:
    probe = s_client(tls.port, "-alpn", "h2,http/1.1", servername="localhost")
    assert probe.handshake_ok, probe.output
    assert probe.alpn == "http/1.1"


def test_alpn_negotiated_with_python_ssl(tls: TLSStack) -> None:
    ctx = client_context(tls.pki.ca_pem)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with RawConn(tls.port, tls=ctx, server_hostname="localhost") as conn:
        assert conn.sock.selected_alpn_protocol() == "http/1.1"  # type: ignore[attr-defined]
        conn.send(request_bytes("GET", "/echo", "localhost"))
        assert conn.read_response().status == 200


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
