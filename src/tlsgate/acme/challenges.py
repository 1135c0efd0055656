"""What a client must publish to answer ACME challenges, computed without I/O.

How this works: every challenge proves control of an identifier by publishing
the *key authorization* ``token "." base64url(JWK thumbprint of the account
key)`` (RFC 8555 §8.1) somewhere only the identifier's owner can write:

- **http-01** (RFC 8555 §8.3): the key authorization itself, as the body of
  ``http://<domain>/.well-known/acme-challenge/<token>``;
- **dns-01** (RFC 8555 §8.4): ``base64url(SHA-256(key authorization))`` as a
  TXT record at ``_acme-challenge.<domain>``;
- **tls-alpn-01** (RFC 8737): a self-signed certificate, served only to TLS
  clients offering ALPN ``acme-tls/1``, whose subjectAltName is the identifier
  and which carries the critical ``id-pe-acmeIdentifier`` extension holding
  SHA-256(key authorization).

Whoever serves these (listeners, a DNS updater) lives elsewhere; this module
only computes them. :func:`make_csr` builds the finalize request's CSR.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from tlsgate.acme.errors import Identifier
from tlsgate.acme.jws import b64encode, jwk_thumbprint

__all__ = [
    "ACME_TLS_ALPN_PROTOCOL",
    "HTTP01_PATH_PREFIX",
    "ID_PE_ACME_IDENTIFIER",
    "dns01_record_name",
    "dns01_txt_value",
    "http01_response",
    "key_authorization",
    "make_csr",
    "tls_alpn01_certificate",
    "tls_alpn01_server_name",
]

# RFC 8737 §6.2: the ALPN protocol ID "acme-tls/1".
ACME_TLS_ALPN_PROTOCOL = "acme-tls/1"
# RFC 8737 §6.1: id-pe-acmeIdentifier OBJECT IDENTIFIER ::= { id-pe 31 }
ID_PE_ACME_IDENTIFIER = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")
HTTP01_PATH_PREFIX = "/.well-known/acme-challenge/"

# RFC 8555 §8.3: the token "MUST NOT contain any characters outside the
# base64url alphabet"; checking it keeps a hostile token out of URL paths.
_TOKEN = re.compile(r"[A-Za-z0-9_-]+")

_AccountKey = ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey


def _check_token(token: str) -> None:
    if not _TOKEN.fullmatch(token):
        raise ValueError(f"ACME challenge token is not base64url: {token!r}")


def key_authorization(token: str, account_key: _AccountKey) -> str:
    """``token "." base64url(Thumbprint(accountKey))`` (RFC 8555 §8.1).

    Raises:
        ValueError: the token has characters outside the base64url alphabet.
    """
    _check_token(token)
    return f"{token}.{b64encode(jwk_thumbprint(account_key))}"


def http01_response(token: str, account_key: _AccountKey) -> tuple[str, bytes]:
    """The http-01 answer: ``(path, body)``.

    RFC 8555 §8.3: the path is "/.well-known/acme-challenge/" followed by the
    token, and the body is the key authorization; "The client's response to
    the validation request ... with Content-Type "application/octet-stream"".
    """
    return HTTP01_PATH_PREFIX + token, key_authorization(token, account_key).encode("ascii")


def dns01_txt_value(token: str, account_key: _AccountKey) -> str:
    """The dns-01 TXT value: base64url(SHA-256(key authorization)) (RFC 8555 §8.4)."""
    digest = hashlib.sha256(key_authorization(token, account_key).encode("ascii")).digest()
    return b64encode(digest)


def dns01_record_name(domain: str) -> str:
    """``_acme-challenge.<domain>`` for a name or a ``*.`` wildcard (RFC 8555 §8.4, §7.1.3).

    For a wildcard order the authorization's identifier is the base domain
    ("the "value" field ... MUST NOT contain the "*." prefix"), so the record
    for ``*.example.com`` is ``_acme-challenge.example.com``.
    """
    base = domain.removeprefix("*.").rstrip(".")
    return f"_acme-challenge.{base}"


def tls_alpn01_server_name(value: str) -> str:
    """The SNI a tls-alpn-01 validator sends for an identifier.

    A DNS name is sent as itself (RFC 8737 §3). RFC 8738 §6: for an IP
    identifier "the SNI ... MUST be set to the ASCII representation of the IP
    address in reverse mapping format", e.g. ``1.0.0.127.in-addr.arpa``.
    """
    try:
        return ipaddress.ip_address(value).reverse_pointer
    except ValueError:
        return value.lower().rstrip(".")


def tls_alpn01_certificate(
    domain: str, token: str, account_key: _AccountKey
) -> tuple[bytes, bytes]:
    """The self-signed tls-alpn-01 certificate for ``domain``: ``(cert_pem, key_pem)``.

    RFC 8737 §3: "The client prepares for validation by constructing a
    self-signed certificate that MUST contain an acmeIdentifier extension and a
    subjectAlternativeName extension [RFC5280]. The subjectAlternativeName
    extension MUST contain a single dNSName entry where the value is the domain
    name being validated. The acmeIdentifier extension MUST contain the SHA-256
    digest [FIPS180-4] of the key authorization ... The acmeIdentifier
    extension MUST be critical". The extension value is ``Authorization ::=
    OCTET STRING (SIZE (32))``, so its DER is ``04 20 || digest``. An IP
    identifier (RFC 8738 §6) gets a single iPAddress entry instead.

    The key is a fresh P-256 key used for nothing else; the certificate is
    valid from an hour ago for seven days (validators don't check validity, but
    TLS stacks may refuse to load an expired certificate).
    """
    digest = hashlib.sha256(key_authorization(token, account_key).encode("ascii")).digest()
    key = ec.generate_private_key(ec.SECP256R1())
    general_name = _general_name(domain.rstrip("."))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ACME tls-alpn-01 challenge")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([general_name]), critical=False)
        .add_extension(
            x509.UnrecognizedExtension(ID_PE_ACME_IDENTIFIER, b"\x04\x20" + digest),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def make_csr(names: Sequence[str], key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    """A DER PKCS#10 CSR for ``names`` (DNS names, ``*.`` wildcards, IP literals).

    RFC 8555 §7.4: "The CSR MUST indicate the exact same set of requested
    identifiers as the initial newOrder request. Identifiers of type "dns" MUST
    appear either in the commonName portion of the requested subject name or in
    an extensionRequest attribute [RFC2985] requesting a subjectAltName
    extension, or both." All names go in subjectAltName; the subject is empty,
    as CAs fill it themselves. Signed with SHA-256.

    Raises:
        ValueError: ``names`` is empty.
    """
    if not names:
        raise ValueError("a CSR needs at least one name")
    sans = [_general_name(n.rstrip(".")) for n in dict.fromkeys(names)]
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.DER)


def _general_name(name: str) -> x509.GeneralName:
    ident = Identifier.for_name(name)
    if ident.type == "ip":
        return x509.IPAddress(ipaddress.ip_address(ident.value))
    return x509.DNSName(ident.value)
