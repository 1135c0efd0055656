"""Challenge answers (RFC 8555 §8, RFC 8737, RFC 8738) and CSRs, computed offline."""

from __future__ import annotations

import hashlib
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtensionOID

from tlsgate.acme import (
    ID_PE_ACME_IDENTIFIER,
    dns01_record_name,
    dns01_txt_value,
    http01_response,
    key_authorization,
    make_csr,
    tls_alpn01_certificate,
    tls_alpn01_server_name,
)
from tlsgate.acme.jws import b64encode, jwk_thumbprint

TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"  # 43 base64url characters, as CAs send


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def test_key_authorization_is_token_dot_thumbprint(key: ec.EllipticCurvePrivateKey) -> None:
    ka = key_authorization(TOKEN, key)
    assert ka == f"{TOKEN}.{b64encode(jwk_thumbprint(key))}"
    assert key_authorization(TOKEN, key.public_key()) == ka


@pytest.mark.parametrize("token", ["", "a/b", "../etc", "a b", "tok=", "é"])
def test_tokens_outside_base64url_are_refused(key: ec.EllipticCurvePrivateKey, token: str) -> None:
    with pytest.raises(ValueError, match="base64url"):
        key_authorization(token, key)


def test_http01_path_and_body(key: ec.EllipticCurvePrivateKey) -> None:
    path, body = http01_response(TOKEN, key)
    assert path == f"/.well-known/acme-challenge/{TOKEN}"
    assert body == key_authorization(TOKEN, key).encode()


def test_dns01_value_and_record_name(key: ec.EllipticCurvePrivateKey) -> None:
    digest = hashlib.sha256(key_authorization(TOKEN, key).encode()).digest()
    value = dns01_txt_value(TOKEN, key)
    assert value == b64encode(digest)
    assert len(value) == 43
    assert dns01_record_name("www.example.com") == "_acme-challenge.www.example.com"
    assert dns01_record_name("*.example.com") == "_acme-challenge.example.com"
    assert dns01_record_name("example.com.") == "_acme-challenge.example.com"


def test_tls_alpn01_certificate_follows_rfc8737(key: ec.EllipticCurvePrivateKey) -> None:
    cert_pem, key_pem = tls_alpn01_certificate("www.example.com", TOKEN, key)
    cert = x509.load_pem_x509_certificate(cert_pem)
    # "MUST contain a single dNSName entry where the value is the domain name"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert list(san.value) == [x509.DNSName("www.example.com")]
    # "The acmeIdentifier extension MUST be critical" and hold the DER OCTET
    # STRING of SHA-256(key authorization).
    ext = cert.extensions.get_extension_for_oid(ID_PE_ACME_IDENTIFIER)
    assert ext.critical
    assert isinstance(ext.value, x509.UnrecognizedExtension)
    digest = hashlib.sha256(key_authorization(TOKEN, key).encode()).digest()
    assert ext.value.value == b"\x04\x20" + digest
    # self-signed, and the private key belongs to it
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)
    private = serialization.load_pem_private_key(key_pem, None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.public_numbers() == private.public_key().public_numbers()


def test_tls_alpn01_certificate_for_ip_identifier(key: ec.EllipticCurvePrivateKey) -> None:
    cert_pem, _ = tls_alpn01_certificate("2001:db8::1", TOKEN, key)
    san = x509.load_pem_x509_certificate(cert_pem).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert list(san.value) == [x509.IPAddress(ipaddress.ip_address("2001:db8::1"))]


def test_tls_alpn01_server_name() -> None:
    assert tls_alpn01_server_name("WWW.Example.com.") == "www.example.com"
    # RFC 8738 §6's reverse-mapping names
    assert tls_alpn01_server_name("127.0.0.1") == "1.0.0.127.in-addr.arpa"
    assert tls_alpn01_server_name("2001:db8::1").endswith(".8.b.d.0.1.0.0.2.ip6.arpa")


def test_make_csr_puts_every_name_in_san() -> None:
    cert_key = rsa.generate_private_key(65537, 2048)
    names = ["example.com", "*.example.com", "192.0.2.7", "::1", "example.com"]
    csr = x509.load_der_x509_csr(make_csr(names, cert_key))
    assert csr.is_signature_valid
    san = csr.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    assert isinstance(san, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.DNSName) == ["example.com", "*.example.com"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("192.0.2.7"),
        ipaddress.ip_address("::1"),
    ]
    assert len(csr.subject) == 0


def test_make_csr_needs_a_name(key: ec.EllipticCurvePrivateKey) -> None:
    with pytest.raises(ValueError, match="at least one name"):
        make_csr([], key)
