"""Certificates as the data plane sees them: a leaf, its chain and its key.

A :class:`CertificateBundle` is plain, picklable data (PEM bytes plus the facts
the cache and the dashboard need), so the supervisor can send it to worker
processes.

How certificates are judged, in two layers:

* :func:`bundle_from_pem` (and :func:`load_bundle`, which reads the files)
  refuses what could never be served, whatever the date: a PEM block that is
  truncated or corrupt, unreadable or encrypted keys, a key that belongs to
  another certificate, a chain where certificate N+1 did not issue
  certificate N, or a certificate that does not cover every name it is
  configured for. ``tlsgate certs list/show/export`` stop here, so they can
  still describe an expired certificate.
* :func:`servable_bundle` adds :func:`validate_bundle`, the checks that depend
  on the clock: the leaf and every other certificate of the chain must be
  valid now (not expired, not before notBefore). It is the one decision for
  everything that puts a certificate in service: ``tlsgate check``
  (:func:`check_certificate_files`), ``tlsgate serve`` and SIGHUP
  (:func:`load_bundles`), and the ACME manager's swaps (new issues and
  certificates another node put in the store). A refused certificate never
  replaces the one in service.

Name matching follows RFC 6125 6.4.3: a ``*.`` wildcard in a subjectAltName
covers exactly one left-most label, and only subjectAltNames count (the CN is
ignored, as every current browser does, RFC 6125 6.4.4).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from tlsgate.config.model import CertificateConfig, Config
from tlsgate.errors import CertificateError, ConfigProblem

__all__ = [
    "CertificateBundle",
    "KeyType",
    "bundle_from_pem",
    "check_certificate_files",
    "key_type_of",
    "load_bundle",
    "load_bundles",
    "load_servable_bundle",
    "parse_pem_chain",
    "san_covers",
    "servable_bundle",
    "validate_bundle",
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
        source: where the chain came from (a file, a store key), for messages.
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
    source: str = ""

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
        The bundle. Expired certificates are returned too: :func:`load_servable_bundle`
        is the variant that refuses them.

    Raises:
        CertificateError: as :func:`bundle_from_pem`, or a file is unreadable.
    """
    return bundle_from_pem(
        name,
        domains,
        _read(name, cert_file, "cert_file"),
        _read(name, key_file, "key_file"),
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
    """Build a bundle from PEM bytes, refusing what no date could make servable.

    ``cert_source``/``key_source`` name where the bytes came from, for messages.
    The chain is read by :func:`parse_pem_chain`; then the key must belong to
    the leaf, each certificate must have been issued by the one after it
    (:func:`_check_links`), and the leaf must cover every name in ``domains``.
    Validity dates are not checked here: see :func:`servable_bundle`.

    Raises:
        CertificateError: no certificate, a truncated or corrupt PEM block, an
            unreadable or encrypted key, a key that does not belong to the
            leaf, a broken chain, or a domain the leaf does not cover.
    """
    cert_file, key_file = cert_source, key_source
    chain = parse_pem_chain(chain_data, cert_file, name=name)
    leaf = chain[0]

    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except TypeError as exc:
        raise _FileProblem(
            f"certificate {name!r}: the private key in {key_file} is encrypted; tlsgate needs "
            "it unencrypted (e.g. 'openssl pkey -in KEY -out KEY.plain'), kept private with "
            "mode 0600",
            field="key_file",
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise _FileProblem(
            f"certificate {name!r}: no readable PEM private key in {key_file}", field="key_file"
        ) from exc

    if _spki(key.public_key()) != _spki(leaf.public_key()):
        hint = ""
        if any(_spki(key.public_key()) == _spki(c.public_key()) for c in chain[1:]):
            hint = " (it matches a later certificate in the file: put the leaf first)"
        raise _FileProblem(
            f"certificate {name!r}: the private key in {key_file} does not belong to the "
            f"certificate in {cert_file}" + hint,
            field="key_file",
        )

    _check_links(name, chain, cert_file)

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
        source=cert_file,
    )


def validate_bundle(bundle: CertificateBundle, *, now: datetime | None = None) -> None:
    """Refuse a bundle that must not be served at ``now`` (default: now).

    The leaf must be inside its validity period, and so must every other
    certificate of the chain: a client rejects a chain with an expired
    intermediate just as it rejects an expired leaf ("certificate has
    expired"). The other checks happened when the bundle was built
    (:func:`bundle_from_pem`).

    Raises:
        CertificateError: naming the certificate, where it came from, which
            certificate of the chain is out of date and the date that is wrong.
    """
    now = now or datetime.now(UTC)
    where = f"certificate {bundle.name!r}" + (f" in {bundle.source}" if bundle.source else "")
    for i, cert in enumerate(x509.load_pem_x509_certificates(bundle.chain_pem)):
        which = where if i == 0 else f"{where}: certificate {i + 1} ({_subject(cert)})"
        if now >= cert.not_valid_after_utc:
            raise _FileProblem(
                f"{which} expired on {_date(cert.not_valid_after_utc)}", field="cert_file"
            )
        if now < cert.not_valid_before_utc:
            raise _FileProblem(
                f"{which} is not valid before {_date(cert.not_valid_before_utc)}",
                field="cert_file",
            )


def servable_bundle(
    name: str,
    domains: Sequence[str],
    chain_data: bytes,
    key_data: bytes,
    *,
    cert_source: str = "the certificate chain",
    key_source: str = "the private key",
    now: datetime | None = None,
) -> CertificateBundle:
    """The one decision on whether a certificate may be put in service.

    :func:`bundle_from_pem`, then :func:`validate_bundle` at ``now``. Every
    path that starts serving a certificate goes through here: ``tlsgate
    check``, ``tlsgate serve``, a SIGHUP reload and the ACME manager.

    Raises:
        CertificateError: as :func:`bundle_from_pem` and :func:`validate_bundle`.
    """
    bundle = bundle_from_pem(
        name, domains, chain_data, key_data, cert_source=cert_source, key_source=key_source
    )
    validate_bundle(bundle, now=now)
    return bundle


def load_servable_bundle(
    cert: CertificateConfig, *, now: datetime | None = None
) -> CertificateBundle:
    """:func:`servable_bundle` for an ``issuer = "files"`` certificate, from its files.

    Raises:
        CertificateError: ``cert_file``/``key_file`` is not set, a file is
            unreadable, or :func:`servable_bundle` refuses the certificate.
    """
    if cert.cert_file is None or cert.key_file is None:
        raise CertificateError(
            f'certificate {cert.name!r} has issuer = "files" but no cert_file/key_file'
        )
    return servable_bundle(
        cert.name,
        cert.domains,
        _read(cert.name, cert.cert_file, "cert_file"),
        _read(cert.name, cert.key_file, "key_file"),
        cert_source=str(cert.cert_file),
        key_source=str(cert.key_file),
        now=now,
    )


def load_bundles(config: Config, *, now: datetime | None = None) -> list[CertificateBundle]:
    """Load every ``issuer = "files"`` certificate of ``config``, in config order.

    Each goes through :func:`load_servable_bundle`, so ``tlsgate serve`` does
    not start, and a SIGHUP reload is refused, on the same grounds as
    ``tlsgate check`` reports.

    Raises:
        CertificateError: on the first certificate that cannot be served.
    """
    return [
        load_servable_bundle(cert, now=now)
        for cert in config.certificates
        if cert.issuer == "files"
    ]


def check_certificate_files(config: Config, *, now: datetime | None = None) -> list[ConfigProblem]:
    """Every problem with the ``issuer = "files"`` certificates, for ``tlsgate check``.

    Reports every certificate :func:`load_servable_bundle` refuses (the same
    decision ``serve`` and a reload make), and two certificates with the same
    key type that are both served for one name on one listener (a client
    would get either).

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
            loaded[i] = load_servable_bundle(cert, now=now)
        except _FileProblem as exc:
            problems.append(ConfigProblem(source, f"certificates[{i}].{exc.field}", str(exc)))
    problems.extend(_ambiguities(config, loaded))
    return problems


# PEM encapsulation boundaries (RFC 7468 section 2); the labels cryptography
# reads as certificates. Other labels (a key in a combined file) are skipped.
_PEM_BOUNDARY = re.compile(rb"-----(BEGIN|END) ([^-\r\n]*)-----")
_CERTIFICATE_LABELS = frozenset({b"CERTIFICATE", b"X509 CERTIFICATE"})


def parse_pem_chain(data: bytes, source: str, *, name: str = "") -> list[x509.Certificate]:
    """Every certificate in PEM ``data``, in file order, or an error naming the broken one.

    How this works: ``x509.load_pem_x509_certificates`` skips a block it cannot
    frame, so a chain whose intermediate was cut short would load as the leaf
    alone and be served without its intermediate. Here the BEGIN/END lines
    are walked first: every ``BEGIN CERTIFICATE`` must be closed by its
    ``END CERTIFICATE`` before any other boundary, and every complete block is
    then decoded by ``cryptography`` on its own, so a failure points at one
    certificate (counted from 1, in file order). Text outside the blocks
    (``subject=...`` lines, a private key in a combined file) is ignored.

    Args:
        source: where ``data`` came from (a file, a store key), for messages.
        name: the ``[[certificates]]`` name, for messages.

    Raises:
        CertificateError: no certificate at all, a block that is truncated
            (BEGIN without END, or END without BEGIN), or a block that is not
            valid base64 or not a DER X.509 certificate.
    """
    prefix = f"certificate {name!r}: " if name else ""
    chain: list[x509.Certificate] = []
    open_begin: re.Match[bytes] | None = None  # the BEGIN CERTIFICATE of the block we are in
    other: bytes | None = None  # the label of another block we are in, e.g. a private key
    for boundary in _PEM_BOUNDARY.finditer(data):
        kind, label = boundary.group(1), boundary.group(2)
        number = len(chain) + 1
        if open_begin is not None:
            if kind != b"END" or label != open_begin.group(2):
                raise _FileProblem(
                    f"{prefix}certificate {number} in {source} is truncated: "
                    f"BEGIN {open_begin.group(2).decode()} without END",
                    field="cert_file",
                )
            block = data[open_begin.start() : boundary.end()]
            chain.append(_decode_block(block, f"{prefix}certificate {number} in {source}"))
            open_begin = None
        elif kind == b"BEGIN":
            other = None if label in _CERTIFICATE_LABELS else label
            if other is None:
                open_begin = boundary
        elif label == other:
            other = None
        elif label in _CERTIFICATE_LABELS:
            raise _FileProblem(
                f"{prefix}certificate {number} in {source} is truncated: "
                f"END {label.decode()} without BEGIN",
                field="cert_file",
            )
    if open_begin is not None:
        raise _FileProblem(
            f"{prefix}certificate {len(chain) + 1} in {source} is truncated: "
            f"BEGIN {open_begin.group(2).decode()} without END",
            field="cert_file",
        )
    if not chain:
        raise _FileProblem(
            f"{prefix}no PEM certificate found in {source} "
            "(expected '-----BEGIN CERTIFICATE-----')",
            field="cert_file",
        )
    return chain


def _decode_block(block: bytes, which: str) -> x509.Certificate:
    """One complete PEM certificate block; ``which`` names it in the error."""
    try:
        return x509.load_pem_x509_certificate(block)
    except ValueError as exc:
        # Say which layer is broken: the base64 text, or the DER inside it.
        lines = block.splitlines()[1:-1]
        try:
            der = base64.b64decode(b"".join(line.strip() for line in lines), validate=True)
        except binascii.Error:
            reason = "not valid base64"
        else:
            reason = f"its base64 decodes to {len(der)} bytes that are not a DER X.509 certificate"
        raise _FileProblem(f"{which} is corrupt: {reason}", field="cert_file") from exc


def _check_links(name: str, chain: Sequence[x509.Certificate], source: str) -> None:
    """Each certificate of ``chain`` must have been issued by the one after it.

    ``verify_directly_issued_by`` compares certificate N's issuer with
    certificate N+1's subject and verifies N's signature with N+1's public
    key. Where ``cryptography`` cannot verify a signature algorithm, only the
    names are compared.

    Raises:
        CertificateError: naming both certificates and what does not match.
    """
    for i in range(len(chain) - 1):
        child, parent = chain[i], chain[i + 1]
        link = (
            f"certificate {name!r}: certificate {i + 2} in {source} ({_subject(parent)}) "
            f"did not issue certificate {i + 1} ({_subject(child)})"
        )
        try:
            child.verify_directly_issued_by(parent)
        except ValueError as exc:
            if child.issuer != parent.subject:
                reason = f"certificate {i + 1} names {_dn(child.issuer)} as its issuer"
            else:
                reason = str(exc)
            raise _FileProblem(
                f"{link}: {reason}; list the leaf first, then each issuer in order",
                field="cert_file",
            ) from exc
        except InvalidSignature as exc:
            raise _FileProblem(
                f"{link}: the signature of certificate {i + 1} does not verify with the key of "
                f"certificate {i + 2} (same name, another CA key)",
                field="cert_file",
            ) from exc
        except (TypeError, UnsupportedAlgorithm):
            if child.issuer != parent.subject:
                raise _FileProblem(
                    f"{link}: certificate {i + 1} names {_dn(child.issuer)} as its issuer",
                    field="cert_file",
                ) from None


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


def _read(name: str, path: Path, field: Literal["cert_file", "key_file"]) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise _FileProblem(
            f"certificate {name!r}: cannot read {path}: {reason}", field=field
        ) from exc


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


def _subject(cert: x509.Certificate) -> str:
    return _dn(cert.subject)


def _dn(name: x509.Name) -> str:
    return name.rfc4514_string() or "an empty name"


def _date(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
