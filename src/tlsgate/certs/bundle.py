"""Certificates as the data plane sees them: a leaf, its chain and its key.

A :class:`CertificateBundle` is plain, picklable data (PEM bytes plus the facts
the cache and the dashboard need), so the supervisor can send it to worker
processes. :func:`load_bundle` reads one from PEM files and refuses anything a
TLS server could not use: unreadable or encrypted keys, a key that belongs to
another certificate, or a certificate that does not cover every name it is
configured for. Expired certificates load (the caller decides how loudly to
warn); :func:`check_certificate_files` is the ``tlsgate check`` view, where an
expired certificate *is* reported.

Name matching follows RFC 6125 6.4.3: a ``*.`` wildcard in a subjectAltName
covers exactly one left-most label, and only subjectAltNames count (the CN is
ignored, as every current browser does, RFC 6125 6.4.4).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from tlsgate.config.model import Config
from tlsgate.errors import CertificateError, ConfigProblem

__all__ = [
    "CertificateBundle",
    "KeyType",
    "check_certificate_files",
    "key_type_of",
    "load_bundle",
    "load_bundles",
    "san_covers",
]

KeyType = Literal[
    "ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072", "rsa-4096", "ed25519", "other"
]


@dataclass(frozen=True)
class CertificateBundle:
    """One servable certificate: leaf + chain + private key, and facts about them.

    Attributes:
        name: the ``[[certificates]]`` name.
        domains: the names it is served for (from the config).
        chain_pem: the leaf first, then intermediates, as PEM.
        key_pem: the private key, PKCS#8 PEM, unencrypted (held in memory only).
        key_type: the kind of key, e.g. ``"ecdsa-p256"``.
        not_before / not_after: the leaf's validity, aware UTC datetimes.
        sans: the leaf's DNS and IP subjectAltNames, lower-case.
        fingerprint_sha256: SHA-256 of the leaf's DER, lower-case hex.
    """

    name: str
    domains: tuple[str, ...]
    chain_pem: bytes
    key_pem: bytes
    key_type: KeyType
    not_before: datetime
    not_after: datetime
    sans: tuple[str, ...]
    fingerprint_sha256: str

    def __repr__(self) -> str:
        # Never let the private key reach a log line through repr().
        return (
            f"CertificateBundle(name={self.name!r}, domains={self.domains!r}, "
            f"key_type={self.key_type!r}, not_after={self.not_after.isoformat()}, "
            f"fingerprint_sha256={self.fingerprint_sha256!r})"
        )

    def covers(self, name: str) -> bool:
        """Whether the leaf's subjectAltNames cover ``name`` (see :func:`san_covers`)."""
        return san_covers(self.sans, name)

    def is_expired(self, now: datetime | None = None) -> bool:
        return (now or datetime.now(UTC)) >= self.not_after


class _FileProblem(CertificateError):
    """A CertificateError that also says which config key it is about."""

    def __init__(self, message: str, *, field: Literal["cert_file", "key_file", "domains"]) -> None:
        super().__init__(message)
        self.field = field


def load_bundle(
    name: str, domains: Sequence[str], cert_file: Path, key_file: Path
) -> CertificateBundle:
    """Read a certificate chain and its private key from PEM files.

    Args:
        name: the ``[[certificates]]`` name, used in messages.
        domains: names the certificate will be served for; each must be covered.
        cert_file: PEM certificates, the leaf first, then intermediates.
        key_file: the leaf's private key, PEM (PKCS#8, PKCS#1 or SEC1), unencrypted.
            It may be the same file as ``cert_file``.

    Returns:
        The bundle. Expired certificates are returned too.

    Raises:
        CertificateError: a file is unreadable, holds no certificate, the key is
            unreadable or encrypted, the key does not belong to the leaf, or a
            domain is not covered by the leaf.
    """
    return bundle_from_pem(
        name,
        domains,
        _read(cert_file, "cert_file"),
        _read(key_file, "key_file"),
        cert_source=str(cert_file),
        key_source=str(key_file),
    )


def bundle_from_pem(
    name: str,
    domains: Sequence[str],
    chain_data: bytes,
    key_data: bytes,
    *,
    cert_source: str = "the certificate chain",
    key_source: str = "the private key",
) -> CertificateBundle:
    """Build a bundle from PEM bytes, with the checks of :func:`load_bundle`.

    ``cert_source``/``key_source`` name where the bytes came from, for messages.

    Raises:
        CertificateError: as :func:`load_bundle`.
    """
    cert_file, key_file = cert_source, key_source
    try:
        chain = x509.load_pem_x509_certificates(chain_data)
    except ValueError as exc:
        raise _FileProblem(
            f"no PEM certificate found in {cert_file} (expected '-----BEGIN CERTIFICATE-----')",
            field="cert_file",
        ) from exc
    leaf = chain[0]

    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except TypeError as exc:
        raise _FileProblem(
            f"the private key in {key_file} is encrypted; tlsgate needs it unencrypted "
            "(e.g. 'openssl pkey -in KEY -out KEY.plain'), kept private with mode 0600",
            field="key_file",
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise _FileProblem(f"no readable PEM private key in {key_file}", field="key_file") from exc

    if _spki(key.public_key()) != _spki(leaf.public_key()):
        hint = ""
        if any(_spki(key.public_key()) == _spki(c.public_key()) for c in chain[1:]):
            hint = " (it matches a later certificate in the file: put the leaf first)"
        raise _FileProblem(
            f"the private key in {key_file} does not belong to the certificate in {cert_file}"
            + hint,
            field="key_file",
        )

    sans = _sans(leaf)
    for domain in domains:
        if not san_covers(sans, domain):
            names = ", ".join(sans) if sans else "none: it has no subjectAltName"
            raise _FileProblem(
                f"certificate {name!r} does not cover {domain!r} (its names: {names})",
                field="domains",
            )

    return CertificateBundle(
        name=name,
        domains=tuple(domains),
        chain_pem=b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        key_type=key_type_of(key),
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        sans=sans,
        fingerprint_sha256=hashlib.sha256(
            leaf.public_bytes(serialization.Encoding.DER)
        ).hexdigest(),
    )


def load_bundles(config: Config) -> list[CertificateBundle]:
    """Load every ``issuer = "files"`` certificate of ``config``, in config order.

    Raises:
        CertificateError: on the first certificate that cannot be loaded.
    """
    bundles = []
    for cert in config.certificates:
        if cert.issuer != "files":
            continue
        if cert.cert_file is None or cert.key_file is None:
            raise CertificateError(
                f'certificate {cert.name!r} has issuer = "files" but no cert_file/key_file'
            )
        bundles.append(load_bundle(cert.name, cert.domains, cert.cert_file, cert.key_file))
    return bundles


def check_certificate_files(config: Config, *, now: datetime | None = None) -> list[ConfigProblem]:
    """Every problem with the ``issuer = "files"`` certificates, for ``tlsgate check``.

    Reports unloadable certificates (see :func:`load_bundle`), expired or
    not-yet-valid ones, and two certificates with the same key type that are
    both served for one name on one listener (a client would get either).

    Args:
        config: the validated configuration.
        now: the time to check validity against (default: now).
    """
    now = now or datetime.now(UTC)
    source = str(config.source)
    problems: list[ConfigProblem] = []
    loaded: dict[int, CertificateBundle] = {}
    for i, cert in enumerate(config.certificates):
        if cert.issuer != "files":
            continue
        if cert.cert_file is None or cert.key_file is None:
            for field in ("cert_file", "key_file"):
                if getattr(cert, field) is None:
                    problems.append(
                        ConfigProblem(
                            source, f"certificates[{i}].{field}", 'required with issuer = "files"'
                        )
                    )
            continue
        try:
            bundle = load_bundle(cert.name, cert.domains, cert.cert_file, cert.key_file)
        except _FileProblem as exc:
            problems.append(ConfigProblem(source, f"certificates[{i}].{exc.field}", str(exc)))
            continue
        loaded[i] = bundle
        if now >= bundle.not_after:
            problems.append(
                ConfigProblem(
                    source,
                    f"certificates[{i}].cert_file",
                    f"certificate {cert.name!r} in {cert.cert_file} expired on "
                    f"{_date(bundle.not_after)}",
                )
            )
        elif now < bundle.not_before:
            problems.append(
                ConfigProblem(
                    source,
                    f"certificates[{i}].cert_file",
                    f"certificate {cert.name!r} in {cert.cert_file} is not valid before "
                    f"{_date(bundle.not_before)}",
                )
            )
    problems.extend(_ambiguities(config, loaded))
    return problems


def _ambiguities(config: Config, loaded: dict[int, CertificateBundle]) -> list[ConfigProblem]:
    """Same key type + same configured name + same listener = an ambiguous choice."""
    index_of = {c.name: i for i, c in enumerate(config.certificates)}
    # (first cert index, second cert index, key type) -> (names, listeners), ordered
    clashes: dict[tuple[int, int, str], tuple[list[str], list[str]]] = {}
    for listener in config.listeners:
        if listener.protocol != "https":
            continue
        served = listener.certificates or tuple(c.name for c in config.certificates)
        owners: dict[tuple[str, str], int] = {}
        for cert_name in served:
            i = index_of.get(cert_name)
            if i is None or i not in loaded:
                continue
            bundle = loaded[i]
            for domain in bundle.domains:
                slot = (bundle.key_type, _normalize(domain))
                first = owners.setdefault(slot, i)
                if first == i:
                    continue
                names, listeners = clashes.setdefault((first, i, bundle.key_type), ([], []))
                if slot[1] not in names:
                    names.append(slot[1])
                if listener.name not in listeners:
                    listeners.append(listener.name)
    problems = []
    for (first, second, key_type), (names, listeners) in clashes.items():
        problems.append(
            ConfigProblem(
                str(config.source),
                f"certificates[{second}].domains",
                f"certificates {config.certificates[first].name!r} and "
                f"{config.certificates[second].name!r} both have a {key_type} key for "
                f"{', '.join(repr(n) for n in names)} on listener(s) "
                f"{', '.join(repr(n) for n in listeners)}; a client could get either "
                "(serve each name from one certificate per key type)",
            )
        )
    return problems


def san_covers(sans: Sequence[str], name: str) -> bool:
    """Whether subjectAltNames ``sans`` cover the host ``name``.

    RFC 6125 6.4.3: "the client SHOULD NOT attempt to match a presented
    identifier where the wildcard character is embedded within an A-label or
    U-label" and a wildcard matches one label only, so ``*.example.com``
    covers ``a.example.com`` but neither ``example.com`` nor ``a.b.example.com``.
    A configured wildcard name (``*.example.com``) is covered only by the same
    wildcard SAN. IP addresses compare as addresses.
    """
    host = _normalize(name)
    ip = _ip(host)
    if ip is not None:
        return any(_ip(san) == ip for san in sans)
    for san in sans:
        if san == host:
            return True
        if san.startswith("*.") and not host.startswith("*."):
            label, sep, parent = host.partition(".")
            if sep and label and parent == san[2:]:
                return True
    return False


def key_type_of(key: PrivateKeyTypes | PublicKeyTypes) -> KeyType:
    """Name a key the way the config does (``ecdsa-p256``, ``rsa-2048``, ...)."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if key.curve.name == "secp256r1":
            return "ecdsa-p256"
        if key.curve.name == "secp384r1":
            return "ecdsa-p384"
    elif isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        if key.key_size == 2048:
            return "rsa-2048"
        if key.key_size == 3072:
            return "rsa-3072"
        if key.key_size == 4096:
            return "rsa-4096"
    elif isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "ed25519"
    return "other"


def _read(path: Path, field: Literal["cert_file", "key_file"]) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise _FileProblem(f"cannot read {path}: {reason}", field=field) from exc


def _sans(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    dns = [n.lower().rstrip(".") for n in ext.get_values_for_type(x509.DNSName)]
    ips = [str(ip) for ip in ext.get_values_for_type(x509.IPAddress)]
    return tuple(dns + ips)


def _spki(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _normalize(name: str) -> str:
    return name.lower().rstrip(".")


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def _date(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
