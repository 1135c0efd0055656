"""A small local certificate authority.

``LocalCA.create()`` makes a self-signed root (BasicConstraints ``ca=True,
path_length=0``, so it can only sign leaves); ``issue()`` signs server or
client leaf certificates for DNS names, ``*.`` wildcards and IP addresses.
``tlsgate demo`` and the tests use it to get real, verifiable certificates
without any network; the private Origin CA grows out of it.

Leaves follow the CA/Browser Forum baseline profile closely enough for
OpenSSL, browsers and curl to accept them: names only in subjectAltName (the
CN repeats the first one for humans), SKI/AKI, KeyUsage and ExtendedKeyUsage
set, random 159-bit serials, and validity backdated one hour to tolerate
clock skew. A leaf never outlives its CA: its notAfter is clamped.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tlsgate import keyfiles
from tlsgate.errors import CertificateError

__all__ = ["CAKeyType", "IssuedCertificate", "LeafKeyType", "LocalCA"]

CAKeyType = Literal["ecdsa-p256", "rsa-2048"]
LeafKeyType = Literal["ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072"]

# Keys a CA can sign with (x509.CertificateBuilder.sign accepts these).
_SigningKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)
_LeafKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

# Clients reject certificates whose notBefore is a few seconds in their future;
# backdating by an hour absorbs ordinary clock skew between machines.
_BACKDATE = timedelta(hours=1)


@dataclass(frozen=True)
class IssuedCertificate:
    """A freshly issued leaf.

    ``chain_pem`` is what a server presents: the leaf followed by intermediates
    (there are none: this CA signs leaves directly, so it equals ``cert_pem``).
    ``key_pem`` is the leaf's private key, PKCS#8 PEM, unencrypted.
    """

    cert_pem: bytes
    key_pem: bytes
    chain_pem: bytes


class LocalCA:
    """A root CA held in memory. Build one with :meth:`create` or :meth:`load`."""

    def __init__(self, cert: x509.Certificate, key: _SigningKey) -> None:
        self._cert = cert
        self._key = key
        self.cert_pem: bytes = cert.public_bytes(serialization.Encoding.PEM)
        self.key_pem: bytes = _pkcs8_pem(key)

    @property
    def certificate(self) -> x509.Certificate:
        """The CA certificate (trust anchor for everything it issues)."""
        return self._cert

    @classmethod
    def create(
        cls,
        common_name: str = "tlsgate local CA",
        *,
        key_type: CAKeyType = "ecdsa-p256",
        valid_days: int = 3650,
    ) -> LocalCA:
        """Create a new self-signed root CA with a fresh key.

        Raises:
            CertificateError: ``common_name`` is empty or ``valid_days`` < 1.
        """
        if not common_name:
            raise CertificateError("the CA needs a non-empty common name")
        if valid_days < 1:
            raise CertificateError(f"valid_days must be at least 1, not {valid_days}")
        key = _generate_key(key_type)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = datetime.now(UTC)
        public = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(_serial())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + timedelta(days=valid_days))
            # Only leaves below this root: path_length=0 forbids intermediates.
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False
            )
            .sign(key, _hash_for(key))
        )
        return cls(cert, key)

    @classmethod
    def load(cls, cert_pem: bytes, key_pem: bytes) -> LocalCA:
        """Load an existing CA from its certificate and (unencrypted) private key.

        Raises:
            CertificateError: unreadable PEM, a key that does not belong to the
                certificate, or a certificate that is not a CA.
        """
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
        except ValueError as exc:
            raise CertificateError(f"the CA certificate is not a readable PEM: {exc}") from exc
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise CertificateError(f"the CA private key is unreadable or encrypted: {exc}") from exc
        if not isinstance(
            key,
            rsa.RSAPrivateKey
            | ec.EllipticCurvePrivateKey
            | ed25519.Ed25519PrivateKey
            | ed448.Ed448PrivateKey,
        ):
            raise CertificateError(f"a CA key of type {type(key).__name__} cannot sign")
        if _spki(key.public_key()) != _spki(cert.public_key()):
            raise CertificateError("the CA private key does not belong to the CA certificate")
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise CertificateError(
                f"{cert.subject.rfc4514_string()} is not a CA certificate "
                "(BasicConstraints ca=TRUE is missing)"
            )
        return cls(cert, key)

    def issue(
        self,
        names: Sequence[str],
        *,
        key_type: LeafKeyType = "ecdsa-p256",
        valid_days: int = 90,
        client: bool = False,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
    ) -> IssuedCertificate:
        """Issue a leaf certificate with a fresh key.

        Args:
            names: DNS names, ``*.`` wildcards or IP literals; all become
                subjectAltNames, the first is also the CN.
            key_type: the leaf's key.
            valid_days: lifetime when ``not_after`` is not given.
            client: issue a client certificate (EKU clientAuth) instead of a
                server one (EKU serverAuth).
            not_before / not_after: explicit validity (aware datetimes), e.g.
                to make an already expired certificate in tests. ``not_after``
                is clamped to the CA's own notAfter.

        Raises:
            CertificateError: no names, an invalid name, or an empty validity.
        """
        if not names:
            raise CertificateError("a certificate needs at least one name")
        sans = [_general_name(n) for n in names]
        now = datetime.now(UTC)
        start = _aware(not_before) if not_before is not None else now - _BACKDATE
        end = _aware(not_after) if not_after is not None else now + timedelta(days=valid_days)
        end = min(end, self._cert.not_valid_after_utc)
        if end <= start:
            raise CertificateError(f"empty validity: notAfter {end} is not after {start}")
        key = _generate_key(key_type)
        public = key.public_key()
        # RFC 5280 4.2.1.3: keyEncipherment only makes sense for RSA key transport.
        is_rsa = isinstance(key, rsa.RSAPrivateKey)
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _common_name(names[0]))])
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._cert.subject)
            .public_key(public)
            .serial_number(_serial())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=is_rsa,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(self._authority_key_identifier(), critical=False)
            .sign(self._key, _hash_for(self._key))
        )
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        return IssuedCertificate(cert_pem=cert_pem, key_pem=_pkcs8_pem(key), chain_pem=cert_pem)

    def write(self, directory: Path) -> tuple[Path, Path]:
        """Write ``ca.pem`` (0644) and ``ca.key`` (0600) into ``directory``, atomically.

        The directory is created (0700) if missing.

        Returns:
            (certificate path, key path).

        Raises:
            CertificateError: the files could not be written.
        """
        cert_path = directory / "ca.pem"
        key_path = directory / "ca.key"
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            keyfiles.write_private(key_path, self.key_pem)
            keyfiles.write_public(cert_path, self.cert_pem)
        except OSError as exc:
            raise CertificateError(
                f"cannot write the CA into {directory}: {exc.strerror or exc}"
            ) from exc
        return cert_path, key_path

    def _authority_key_identifier(self) -> x509.AuthorityKeyIdentifier:
        # RFC 5280 4.2.1.1: the AKI of a leaf is the SKI of the issuing CA.
        try:
            ski = self._cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        except x509.ExtensionNotFound:
            return x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key())
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _generate_key(key_type: str) -> _LeafKey:
    if key_type == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ecdsa-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type in ("rsa-2048", "rsa-3072"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[4:]))
    raise CertificateError(f"unsupported key type {key_type!r}")


def _hash_for(key: _SigningKey) -> hashes.SHA256 | hashes.SHA384 | None:
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None  # EdDSA signs the message itself; no separate digest
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    host = name.lower().rstrip(".")
    labels = host.split(".")
    body = labels[1:] if labels[0] == "*" else labels
    if not host or len(host) > 253 or not body or any(not _is_ldh_label(label) for label in body):
        raise CertificateError(
            f"{name!r} is not a valid DNS name, '*.' wildcard or IP address "
            "(internationalized names must be given in their xn-- form)"
        )
    return x509.DNSName(host)


def _is_ldh_label(label: str) -> bool:
    # RFC 1123 2.1 host names: letters, digits and hyphens, not at either end.
    return (
        0 < len(label) <= 63
        and label.isascii()
        and all(c.isalnum() or c == "-" for c in label)
        and not label.startswith("-")
        and not label.endswith("-")
    )


def _common_name(name: str) -> str:
    # The CN attribute is limited to 64 characters (RFC 5280 ub-common-name);
    # it is informational only, the SANs carry the names.
    return name[:64]


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _serial() -> int:
    # CA/B Forum BR 7.1: at least 64 bits of CSPRNG output, positive, < 2**159.
    return int.from_bytes(os.urandom(20), "big") >> 1 or 1


def _spki(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _pkcs8_pem(key: _SigningKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
