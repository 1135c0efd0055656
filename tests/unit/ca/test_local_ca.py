"""LocalCA: certificates it issues verify, with a real TLS handshake over memory BIOs."""

from __future__ import annotations

import ipaddress
import ssl
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from tlsgate.ca import LocalCA
from tlsgate.errors import CertificateError


@pytest.fixture(scope="module")
def ca() -> LocalCA:
    return LocalCA.create("test CA")


def _handshake(
    client: ssl.SSLContext, server: ssl.SSLContext, server_hostname: str | None
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_side=False, server_hostname=server_hostname)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    pending = {c, s}
    for _ in range(20):
        for obj in list(pending):
            try:
                obj.do_handshake()
                pending.discard(obj)
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if not pending:
            return c, s
    raise AssertionError("handshake did not finish")


def _server_ctx(chain_pem: bytes, key_pem: bytes, tmp_path: Path) -> ssl.SSLContext:
    cert_file, key_file = tmp_path / "chain.pem", tmp_path / "key.pem"
    cert_file.write_bytes(chain_pem)
    key_file.write_bytes(key_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


def _client_ctx(ca: LocalCA) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=ca.cert_pem.decode())
    return ctx


def test_ca_certificate_profile(ca: LocalCA) -> None:
    cert = x509.load_pem_x509_certificate(ca.cert_pem)
    assert cert.subject == cert.issuer
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical
    assert bc.value.ca
    assert bc.value.path_length == 0
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert isinstance(
        serialization.load_pem_private_key(ca.key_pem, None), ec.EllipticCurvePrivateKey
    )
    assert b"BEGIN PRIVATE KEY" in ca.key_pem  # PKCS#8


@pytest.mark.parametrize("key_type", ["ecdsa-p256", "ecdsa-p384", "rsa-2048"])
def test_issued_server_certificate_verifies_in_a_handshake(
    ca: LocalCA, key_type: str, tmp_path: Path
) -> None:
    issued = ca.issue(["www.example.com", "*.api.example.com"], key_type=key_type)  # type: ignore[arg-type]
    server = _server_ctx(issued.chain_pem, issued.key_pem, tmp_path)
    for name in ("www.example.com", "v1.api.example.com"):
        client, _ = _handshake(_client_ctx(ca), server, name)
        peer = client.getpeercert()
        assert peer is not None
        assert ("DNS", "www.example.com") in peer["subjectAltName"]


def test_hostname_mismatch_fails_verification(ca: LocalCA, tmp_path: Path) -> None:
    issued = ca.issue(["www.example.com"])
    server = _server_ctx(issued.chain_pem, issued.key_pem, tmp_path)
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        _handshake(_client_ctx(ca), server, "other.example.com")


def test_another_ca_does_not_verify(ca: LocalCA, tmp_path: Path) -> None:
    issued = LocalCA.create("stranger").issue(["www.example.com"])
    server = _server_ctx(issued.chain_pem, issued.key_pem, tmp_path)
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        _handshake(_client_ctx(ca), server, "www.example.com")


def test_leaf_profile(ca: LocalCA) -> None:
    issued = ca.issue(["www.example.com", "127.0.0.1", "::1"], key_type="rsa-2048")
    assert issued.chain_pem == issued.cert_pem
    cert = x509.load_pem_x509_certificate(issued.cert_pem)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["www.example.com"]
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature
    assert ku.key_encipherment  # RSA
    assert not ku.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    ca_ski = (
        x509.load_pem_x509_certificate(ca.cert_pem)
        .extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        .value
    )
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    assert cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    key = serialization.load_pem_private_key(issued.key_pem, None)
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.key_size == 2048
    # Validity: backdated for clock skew, 90 days by default.
    now = datetime.now(UTC)
    assert cert.not_valid_before_utc < now - timedelta(minutes=30)
    assert timedelta(days=89) < cert.not_valid_after_utc - now <= timedelta(days=90)


def test_client_certificate_authenticates_to_a_server(ca: LocalCA, tmp_path: Path) -> None:
    server_cert = ca.issue(["origin.example.com"])
    client_cert = ca.issue(["edge.example.net"], client=True)
    eku = (
        x509.load_pem_x509_certificate(client_cert.cert_pem)
        .extensions.get_extension_for_class(x509.ExtendedKeyUsage)
        .value
    )
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    server = _server_ctx(server_cert.chain_pem, server_cert.key_pem, tmp_path)
    server.verify_mode = ssl.CERT_REQUIRED
    server.load_verify_locations(cadata=ca.cert_pem.decode())
    client = _client_ctx(ca)
    (tmp_path / "c.pem").write_bytes(client_cert.chain_pem)
    (tmp_path / "c.key").write_bytes(client_cert.key_pem)
    client.load_cert_chain(tmp_path / "c.pem", tmp_path / "c.key")
    client.maximum_version = ssl.TLSVersion.TLSv1_2  # client cert checked inside the handshake
    _, s = _handshake(client, server, "origin.example.com")
    peer = s.getpeercert()
    assert peer is not None
    assert ("DNS", "edge.example.net") in peer["subjectAltName"]


def test_server_certificate_is_rejected_as_a_client_certificate(
    ca: LocalCA, tmp_path: Path
) -> None:
    server_cert = ca.issue(["origin.example.com"])
    not_a_client = ca.issue(["edge.example.net"])  # serverAuth only
    server = _server_ctx(server_cert.chain_pem, server_cert.key_pem, tmp_path)
    server.verify_mode = ssl.CERT_REQUIRED
    server.load_verify_locations(cadata=ca.cert_pem.decode())
    client = _client_ctx(ca)
    (tmp_path / "c.pem").write_bytes(not_a_client.chain_pem)
    (tmp_path / "c.key").write_bytes(not_a_client.key_pem)
    client.load_cert_chain(tmp_path / "c.pem", tmp_path / "c.key")
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError, match=r"unsupported certificate purpose|CERTIFICATE"):
        _handshake(client, server, "origin.example.com")


def test_explicit_validity_and_clamping(ca: LocalCA) -> None:
    start = datetime(2020, 1, 1, tzinfo=UTC)
    issued = ca.issue(["old.example.com"], not_before=start, not_after=start + timedelta(days=1))
    cert = x509.load_pem_x509_certificate(issued.cert_pem)
    assert cert.not_valid_before_utc == start
    assert cert.not_valid_after_utc == start + timedelta(days=1)
    long = ca.issue(["long.example.com"], valid_days=100_000)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    assert (
        x509.load_pem_x509_certificate(long.cert_pem).not_valid_after_utc
        == ca_cert.not_valid_after_utc
    )


@pytest.mark.parametrize("bad", [[], ["bad name.example.com"], ["a..b"], ["-x.example.com"], ["*"]])
def test_invalid_names_are_refused(ca: LocalCA, bad: list[str]) -> None:
    with pytest.raises(CertificateError):
        ca.issue(bad)


def test_empty_validity_is_refused(ca: LocalCA) -> None:
    now = datetime.now(UTC)
    with pytest.raises(CertificateError, match="empty validity"):
        ca.issue(["x.example.com"], not_before=now, not_after=now - timedelta(days=1))


def test_rsa_ca_roundtrips_through_write_and_load(tmp_path: Path) -> None:
    original = LocalCA.create("rsa CA", key_type="rsa-2048", valid_days=30)
    cert_path, key_path = original.write(tmp_path / "ca")
    assert cert_path.name == "ca.pem"
    assert key_path.name == "ca.key"
    assert stat.S_IMODE(cert_path.stat().st_mode) == 0o644
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "ca").stat().st_mode) == 0o700
    loaded = LocalCA.load(cert_path.read_bytes(), key_path.read_bytes())
    assert loaded.cert_pem == original.cert_pem
    issued = loaded.issue(["www.example.com"])
    server = _server_ctx(issued.chain_pem, issued.key_pem, tmp_path)
    _handshake(_client_ctx(original), server, "www.example.com")


def test_load_refuses_mismatched_key_and_non_ca(ca: LocalCA) -> None:
    other = LocalCA.create("other")
    with pytest.raises(CertificateError, match="does not belong"):
        LocalCA.load(ca.cert_pem, other.key_pem)
    leaf = ca.issue(["x.example.com"])
    with pytest.raises(CertificateError, match="not a CA certificate"):
        LocalCA.load(leaf.cert_pem, leaf.key_pem)
    with pytest.raises(CertificateError, match="not a readable PEM"):
        LocalCA.load(b"garbage", ca.key_pem)
    with pytest.raises(CertificateError, match="unreadable or encrypted"):
        LocalCA.load(ca.cert_pem, b"garbage")
