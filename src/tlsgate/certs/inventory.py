"""The certificate inventory behind ``tlsgate certs list / show / renew / revoke / export``.

How this works: the CLI runs beside a node (or without one) and shares only
the config file and the store with it. Certificates with ``issuer = "files"``
are read from their files; ``issuer = "acme"`` ones from the store, in the
layout ``tlsgate.certs.manager`` writes (``certs/<name>/<key-type>/chain.pem``,
``privkey.key`` sealed with the store key, ``meta.json`` with renew_at,
last_error and failures). Listing and showing read chains and metadata only:
private keys are never unsealed for them, so they work without the store key.

``renew`` does not order anything itself: the node's listeners must answer the
challenges, so the request goes through the store. It puts
``certs/<name>/renew-request`` = ``{"force": bool}``; the running node's
manager watches for it, renews, records the outcome in ``meta.json`` and then
deletes the request. The CLI waits for that delete and reports the metadata.
No delete within the wait means no running node picked the request up.

``revoke`` signs with the stored ACME account key and ``export`` writes the
stored (unsealed) private key, so both need the store key file; a missing key
file is an error here, never created (a new key could not unseal anything).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tlsgate import keyfiles
from tlsgate.acme import AcmeClient, AcmeError
from tlsgate.certs.bundle import (
    CertificateBundle,
    bundle_from_pem,
    key_type_of,
    load_bundle,
    parse_pem_chain,
)
from tlsgate.certs.manager import RENEW_REQUEST, directory_id
from tlsgate.config.model import CertificateConfig, Config
from tlsgate.errors import CertificateError, ConfigError, ConfigProblem, StoreError
from tlsgate.store import Store, open_store
from tlsgate.store.base import json_object

__all__ = [
    "REVOCATION_REASONS",
    "CertificateInfo",
    "ExportedFiles",
    "KeyState",
    "RenewalResult",
    "RevocationResult",
    "describe_certificate",
    "export_certificate",
    "find_certificate",
    "format_details",
    "format_table",
    "list_certificates",
    "node_store",
    "request_renewal",
    "require_acme",
    "revoke_certificate",
]

log = logging.getLogger("tlsgate.certs")

# RFC 5280 5.3.1 CRLReason codes; RFC 8555 7.6: "reason (optional, int): One of
# the revocation reasonCodes defined in Section 5.3.1 of [RFC5280] to be used
# when generating OCSP responses and CRLs."
REVOCATION_REASONS: dict[str, int] = {
    "unspecified": 0,
    "keyCompromise": 1,
    "superseded": 4,
    "cessationOfOperation": 5,
}

Status = Literal["valid", "expired", "not yet valid", "not issued", "unusable"]


@dataclass(frozen=True)
class KeyState:
    """One key type of one certificate: what is issued and how its lifecycle goes.

    Times are aware UTC datetimes; None when unknown (nothing issued, no metadata).
    ``last_error`` is the manager's last failure (with the CA's detail), "" when the
    last attempt succeeded; for ``issuer = "files"`` it is why the files are unusable.
    ``failures`` counts consecutive failed attempts and ``retry_at`` is when the
    manager's backoff allows the next one.
    """

    key_type: str
    status: Status
    not_before: datetime | None = None
    not_after: datetime | None = None
    renew_at: datetime | None = None
    last_error: str = ""
    failures: int = 0
    retry_at: datetime | None = None
    updated: datetime | None = None
    fingerprint_sha256: str = ""
    serial: str = ""
    subject: str = ""
    issuer_dn: str = ""
    sans: tuple[str, ...] = ()
    chain_subjects: tuple[str, ...] = ()
    source: str = ""

    def days_left(self, now: datetime | None = None) -> float | None:
        """Days until notAfter (negative once expired), None when nothing is issued."""
        if self.not_after is None:
            return None
        return (self.not_after - (now or datetime.now(UTC))).total_seconds() / 86400

    def to_json(self, now: datetime | None = None) -> dict[str, Any]:
        days = self.days_left(now)
        return {
            "key_type": self.key_type,
            "status": self.status,
            "not_before": _iso(self.not_before),
            "not_after": _iso(self.not_after),
            "days_left": None if days is None else round(days, 2),
            "renew_at": _iso(self.renew_at),
            "last_error": self.last_error,
            "failures": self.failures,
            "retry_at": _iso(self.retry_at),
            "updated": _iso(self.updated),
            "fingerprint_sha256": self.fingerprint_sha256,
            "serial": self.serial,
            "subject": self.subject,
            "issuer": self.issuer_dn,
            "sans": list(self.sans),
            "chain": list(self.chain_subjects),
            "source": self.source,
        }


@dataclass(frozen=True)
class CertificateInfo:
    """One ``[[certificates]]`` entry and the state of each of its key types."""

    name: str
    issuer: str
    domains: tuple[str, ...]
    keys: tuple[KeyState, ...]

    def to_json(self, now: datetime | None = None) -> dict[str, Any]:
        return {
            "name": self.name,
            "issuer": self.issuer,
            "domains": list(self.domains),
            "key_types": [k.key_type for k in self.keys],
            "keys": [k.to_json(now) for k in self.keys],
        }


@dataclass(frozen=True)
class RenewalResult:
    """What ``request_renewal`` saw.

    Attributes:
        picked_up: a node processed the request (deleted it) within the wait.
        before / after: the state before the request and after it was processed
            (``after`` equals ``before`` when it was not picked up).
    """

    name: str
    picked_up: bool
    waited: float
    before: tuple[KeyState, ...]
    after: tuple[KeyState, ...]

    @property
    def ok(self) -> bool:
        """Picked up, and no key type reports an error."""
        return self.picked_up and not any(k.last_error for k in self.after)

    def renewed(self) -> list[str]:
        """Key types whose certificate changed."""
        old = {k.key_type: k.fingerprint_sha256 for k in self.before}
        return [
            k.key_type
            for k in self.after
            if k.fingerprint_sha256 and k.fingerprint_sha256 != old.get(k.key_type)
        ]


@dataclass(frozen=True)
class RevocationResult:
    """One revocation attempt: the certificate (by key type and serial) and any error."""

    key_type: str
    serial: str
    error: str = ""


@dataclass(frozen=True)
class ExportedFiles:
    key_type: str
    fullchain: Path
    privkey: Path
    not_after: datetime
    fingerprint_sha256: str


# --------------------------------------------------------------------------- the store


@contextlib.asynccontextmanager
async def node_store(config: Config, *, unseal: bool) -> AsyncIterator[Store | None]:
    """The node's store, as ``tlsgate serve`` opens it; closed on exit.

    Args:
        unseal: also open the store key (``[store] key_file``, default
            ``<data_dir>/store.key``) so private keys read in clear. The key file
            must exist: creating one here could never unseal what the node stored.

    Yields:
        The store, or None when its sqlite database does not exist yet (no node
        has run with this config), which nothing here should create.

    Raises:
        StoreError: the store cannot be opened, or ``unseal`` and the key file is missing.
    """
    path = _sqlite_path(config.store.url)
    if path is not None and not path.exists():
        yield None
        return
    key_file = None
    if unseal:
        key_file = config.store.key_file or config.node.data_dir / "store.key"
        if not key_file.exists():
            raise StoreError(
                f"the store key {key_file} does not exist: private keys in the store are "
                "sealed with the key the node created there (run this on the node, as its "
                "user, with the node's config)"
            )
    store = open_store(config.store.url, key_file=key_file)
    try:
        yield store
    finally:
        await store.close()


def _sqlite_path(url: str) -> Path | None:
    parts = urlsplit(url)
    if parts.scheme.lower() != "sqlite":
        return None
    return Path(unquote(parts.path))


# --------------------------------------------------------------------------- list / show


def find_certificate(config: Config, name: str) -> tuple[int, CertificateConfig]:
    """The certificate named ``name``.

    Raises:
        ConfigError: there is none (a usage error: the CLI exits 2).
    """
    for i, cert in enumerate(config.certificates):
        if cert.name == name:
            return i, cert
    known = ", ".join(repr(c.name) for c in config.certificates) or "none"
    raise ConfigError(
        [
            ConfigProblem(
                str(config.source),
                "certificates",
                f"no certificate named {name!r} (configured: {known})",
            )
        ]
    )


def _key_types(config: Config, cert: CertificateConfig) -> tuple[str, ...]:
    if cert.issuer == "acme" and config.acme is not None:
        return tuple(config.acme.key_types)
    return ()


async def list_certificates(
    config: Config, store: Store | None, *, now: datetime | None = None
) -> list[CertificateInfo]:
    """Every ``[[certificates]]`` of ``config``, in config order.

    Args:
        store: the node's store (need not unseal); None when it does not exist yet.

    Raises:
        StoreError: the store cannot be read.
    """
    return [await _info(config, cert, store, now) for cert in config.certificates]


async def describe_certificate(
    config: Config, name: str, store: Store | None, *, now: datetime | None = None
) -> CertificateInfo:
    """The certificate named ``name``.

    Raises:
        ConfigError: no certificate has that name.
        StoreError: the store cannot be read.
    """
    _, cert = find_certificate(config, name)
    return await _info(config, cert, store, now)


async def _info(
    config: Config, cert: CertificateConfig, store: Store | None, now: datetime | None
) -> CertificateInfo:
    if cert.issuer == "files":
        keys: tuple[KeyState, ...] = (_from_files(cert, now),)
    elif cert.issuer == "acme":
        keys = tuple([await _from_store(cert, kt, store, now) for kt in _key_types(config, cert)])
    else:
        keys = ()
    return CertificateInfo(cert.name, cert.issuer, tuple(cert.domains), keys)


def _from_files(cert: CertificateConfig, now: datetime | None) -> KeyState:
    if cert.cert_file is None or cert.key_file is None:
        return KeyState("?", "unusable", last_error="cert_file and key_file are required")
    source = str(cert.cert_file)
    try:
        bundle = load_bundle(cert.name, cert.domains, cert.cert_file, cert.key_file)
    except CertificateError as exc:
        return KeyState("?", "unusable", last_error=str(exc), source=source)
    return _describe_chain(bundle.key_type, bundle.chain_pem, source=source, now=now)


async def _from_store(
    cert: CertificateConfig, key_type: str, store: Store | None, now: datetime | None
) -> KeyState:
    if store is None:
        return KeyState(key_type, "not issued", source="(no store yet)")
    prefix = f"certs/{cert.name}/{key_type}"
    chain = await store.get(f"{prefix}/chain.pem")
    meta_entry = await store.get(f"{prefix}/meta.json")
    meta: dict[str, Any] = (json_object(meta_entry.value) if meta_entry else None) or {}
    extra: dict[str, Any] = {
        "renew_at": _parse_time(meta.get("renew_at")),
        "last_error": str(meta.get("last_error") or ""),
        "failures": _int(meta.get("failures")),
        "retry_at": _parse_time(meta.get("retry_at")),
        "updated": _parse_time(meta.get("updated")),
    }
    source = f"store key {prefix}/chain.pem"
    if chain is None:
        return KeyState(key_type, "not issued", source=source, **extra)
    try:
        return _describe_chain(key_type, chain.value, source=source, now=now, **extra)
    except CertificateError as exc:
        error = extra.pop("last_error") or str(exc)
        return KeyState(key_type, "unusable", source=source, last_error=error, **extra)


def _describe_chain(
    key_type: str, chain_pem: bytes, *, source: str, now: datetime | None, **extra: Any
) -> KeyState:
    try:
        # the parser serve uses: a truncated intermediate is an error, not skipped
        chain = parse_pem_chain(chain_pem, source)
    except CertificateError as exc:
        raise CertificateError(f"no readable certificate chain: {exc}") from exc
    leaf = chain[0]
    moment = now or datetime.now(UTC)
    status: Status = "valid"
    if moment >= leaf.not_valid_after_utc:
        status = "expired"
    elif moment < leaf.not_valid_before_utc:
        status = "not yet valid"
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = tuple(
            [str(n) for n in san.get_values_for_type(x509.DNSName)]
            + [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
        )
    except x509.ExtensionNotFound:
        sans = ()
    actual = key_type_of(leaf.public_key())
    return KeyState(
        key_type=actual if actual != "other" else key_type,
        status=status,
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        fingerprint_sha256=leaf.fingerprint(hashes.SHA256()).hex(),
        serial=f"{leaf.serial_number:x}",
        subject=leaf.subject.rfc4514_string(),
        issuer_dn=leaf.issuer.rfc4514_string(),
        sans=sans,
        chain_subjects=tuple(c.subject.rfc4514_string() for c in chain),
        source=source,
        **extra,
    )


# --------------------------------------------------------------------------- renew


def require_acme(config: Config, name: str, what: str) -> CertificateConfig:
    """The ``issuer = "acme"`` certificate named ``name``, for the command ``what``.

    Raises:
        ConfigError: there is none, or it has another issuer (a usage error).
    """
    i, cert = find_certificate(config, name)
    if cert.issuer != "acme":
        raise ConfigError(
            [
                ConfigProblem(
                    str(config.source),
                    f"certificates[{i}].issuer",
                    f"certificate {name!r} has issuer = {cert.issuer!r}; {what} works only "
                    'for issuer = "acme" certificates',
                )
            ]
        )
    return cert


async def request_renewal(
    config: Config,
    name: str,
    store: Store,
    *,
    force: bool = False,
    wait: float = 120.0,
) -> RenewalResult:
    """Ask the running node to renew ``name`` and wait for the outcome.

    Puts ``certs/<name>/renew-request`` = ``{"force": force}`` and waits until the
    node deletes it (it does so after renewing and recording the result in
    ``meta.json``). If nobody deletes it within ``wait`` seconds the request is
    withdrawn, so a node started later does not act on a stale one.

    Returns:
        The state before and after; ``picked_up`` is False on timeout.

    Raises:
        ConfigError: no such certificate, or it is not an ACME one.
        StoreError: the store failed.
    """
    cert = require_acme(config, name, "renew")
    key_types = _key_types(config, cert)
    before = tuple([await _from_store(cert, kt, store, None) for kt in key_types])
    key = f"certs/{name}/{RENEW_REQUEST}"
    start = asyncio.get_running_loop().time()
    revision = await store.put(key, json.dumps({"force": force}).encode())
    picked_up = False
    try:
        async with asyncio.timeout(wait):
            picked_up = await _wait_deleted(store, key, revision + 1)
    except TimeoutError:
        picked_up = False
    waited = asyncio.get_running_loop().time() - start
    if not picked_up:
        # Withdraw it; if a node deletes it first, that is fine too.
        await store.delete(key)
        return RenewalResult(name, False, waited, before, before)
    after = tuple([await _from_store(cert, kt, store, None) for kt in key_types])
    return RenewalResult(name, True, waited, before, after)


async def _wait_deleted(store: Store, key: str, start_revision: int) -> bool:
    async with contextlib.aclosing(store.watch(key, start_revision=start_revision)) as events:
        async for event in events:
            if event.key == key and event.kind == "delete":
                return True
    return False  # the store closed


# --------------------------------------------------------------------------- revoke


async def revoke_certificate(
    config: Config, name: str, store: Store, *, reason: str = "unspecified"
) -> list[RevocationResult]:
    """Revoke the issued certificate(s) of ``name`` at the CA, signed by the stored account.

    RFC 8555 7.6: "The server MUST consider at least the following accounts
    authorized for a given certificate: the account that issued the certificate"
    -- so the account key the node ordered with signs the request.

    Args:
        store: the node's store, opened with the store key (the account key is sealed).
        reason: a key of :data:`REVOCATION_REASONS`.

    Returns:
        One result per issued key type; an ``error`` says why the CA refused.

    Raises:
        ConfigError: no such certificate, not an ACME one, or an unknown reason.
        CertificateError: nothing is issued for it.
        StoreError: the store failed or holds no ACME account for the directory.
    """
    cert = require_acme(config, name, "revoke")
    if reason not in REVOCATION_REASONS:
        raise ConfigError(
            [
                ConfigProblem(
                    "command line",
                    "--reason",
                    f"{reason!r} is not a revocation reason; expected one of: "
                    + ", ".join(REVOCATION_REASONS),
                )
            ]
        )
    acme = config.acme
    assert acme is not None  # the loader requires [acme] for issuer = "acme"
    chains: list[tuple[str, bytes]] = []
    for kt in _key_types(config, cert):
        entry = await store.get(f"certs/{name}/{kt}/chain.pem")
        if entry is not None:
            chains.append((kt, entry.value))
    if not chains:
        raise CertificateError(f"certificate {name!r} has not been issued: nothing to revoke")
    account_key, account_url = await _account(store, acme.directory)
    results: list[RevocationResult] = []
    ca = str(acme.ca_file) if acme.ca_file else None
    async with AcmeClient(
        acme.directory, account_key, ca_file=ca, account_url=account_url
    ) as client:
        for kt, chain in chains:
            serial = f"{x509.load_pem_x509_certificates(chain)[0].serial_number:x}"
            try:
                await client.revoke(chain, reason=REVOCATION_REASONS[reason])
            except AcmeError as exc:
                results.append(RevocationResult(kt, serial, str(exc)))
                continue
            log.info("certificate %s (%s): revoked serial %s (%s)", name, kt, serial, reason)
            results.append(RevocationResult(kt, serial))
    return results


async def _account(store: Store, directory: str) -> tuple[ec.EllipticCurvePrivateKey, str]:
    prefix = f"acme/{directory_id(directory)}"
    key_entry = await store.get(f"{prefix}/account.key")
    info_entry = await store.get(f"{prefix}/account.json")
    if key_entry is None or info_entry is None:
        raise StoreError(f"the store holds no ACME account for {directory}")
    try:
        key = serialization.load_pem_private_key(key_entry.value, password=None)
        url = (json_object(info_entry.value) or {})["url"]
    except (ValueError, TypeError, KeyError) as exc:
        raise StoreError(f"the ACME account for {directory} in the store is unreadable") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(url, str):
        raise StoreError(f"the ACME account for {directory} in the store is unreadable")
    return key, url


# --------------------------------------------------------------------------- export


async def export_certificate(
    config: Config, name: str, store: Store | None, out: Path
) -> list[ExportedFiles]:
    """Write ``fullchain.pem`` (0644) and ``privkey.pem`` (0600) for each key type.

    With one key type the files go into ``out``; with several into
    ``out/<key-type>/``. Missing directories are created with default
    permissions: the certificate is meant to be readable (by a web server's
    workers), the key is protected by its own mode. Each file is replaced
    atomically (``tlsgate.keyfiles``).

    Args:
        store: for ``issuer = "acme"``, the node's store opened with the store key
            (the private keys are sealed); unused for ``issuer = "files"``.

    Raises:
        ConfigError: no such certificate.
        CertificateError: nothing issued, files unusable, a stored key that does not
            match its certificate, or the files cannot be written.
        StoreError: the store failed or the key does not unseal.
    """
    _, cert = find_certificate(config, name)
    bundles: list[CertificateBundle] = []
    if cert.issuer == "files":
        if cert.cert_file is None or cert.key_file is None:
            raise CertificateError(f"certificate {name!r} has no cert_file/key_file")
        bundles.append(load_bundle(cert.name, cert.domains, cert.cert_file, cert.key_file))
    elif cert.issuer == "acme" and store is not None:
        for kt in _key_types(config, cert):
            prefix = f"certs/{name}/{kt}"
            chain = await store.get(f"{prefix}/chain.pem")
            key = await store.get(f"{prefix}/privkey.key")
            if chain is None or key is None:
                continue
            bundles.append(
                bundle_from_pem(
                    name,
                    cert.domains,
                    chain.value,
                    key.value,
                    cert_source=f"store key {prefix}/chain.pem",
                    key_source=f"store key {prefix}/privkey.key",
                )
            )
    if not bundles:
        raise CertificateError(f"certificate {name!r} has not been issued yet: nothing to export")
    written: list[ExportedFiles] = []
    for bundle in bundles:
        directory = out / bundle.key_type if len(bundles) > 1 else out
        fullchain, privkey = directory / "fullchain.pem", directory / "privkey.pem"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            keyfiles.write_public(fullchain, bundle.chain_pem)
            keyfiles.write_private(privkey, bundle.key_pem)
        except OSError as exc:
            raise CertificateError(
                f"cannot export {name!r} to {directory}: {exc.strerror or exc}"
            ) from exc
        written.append(
            ExportedFiles(
                bundle.key_type, fullchain, privkey, bundle.not_after, bundle.fingerprint_sha256
            )
        )
    return written


# --------------------------------------------------------------------------- formatting


def format_table(infos: Sequence[CertificateInfo], now: datetime | None = None) -> str:
    """One row per (certificate, key type), for people; errors in full in the last column."""
    moment = now or datetime.now(UTC)
    header = (
        "NAME",
        "ISSUER",
        "KEY",
        "STATUS",
        "DOMAINS",
        "NOT AFTER",
        "DAYS",
        "RENEW AT",
        "FINGERPRINT",
        "LAST ERROR",
    )
    rows: list[tuple[str, ...]] = [header]
    for info in infos:
        keys = info.keys or (KeyState("-", "not issued"),)
        for k in keys:
            days = k.days_left(moment)
            rows.append(
                (
                    info.name,
                    info.issuer,
                    k.key_type,
                    k.status,
                    ",".join(info.domains),
                    _short_time(k.not_after),
                    "-" if days is None else f"{days:.0f}" if days >= 1 else f"{days:.1f}",
                    _short_time(k.renew_at),
                    k.fingerprint_sha256[:16] or "-",
                    _error_cell(k),
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
        for r in rows
    ]
    return "\n".join(lines)


def format_details(info: CertificateInfo, now: datetime | None = None) -> str:
    """Everything about one certificate, for people."""
    moment = now or datetime.now(UTC)
    lines = [
        f"certificate {info.name} (issuer {info.issuer})",
        f"  domains: {', '.join(info.domains)}",
    ]
    if not info.keys:
        lines.append(f"  nothing issued: issuer {info.issuer!r} is not managed here")
    for k in info.keys:
        days = k.days_left(moment)
        left = "" if days is None else f" ({days:.1f} days left)"
        fields = [
            ("status", k.status),
            ("subject", k.subject),
            ("issuer", k.issuer_dn),
            ("serial", k.serial and f"0x{k.serial}"),
            ("names (SANs)", ", ".join(k.sans)),
            ("not before", _long_time(k.not_before)),
            ("not after", _long_time(k.not_after) + left if k.not_after else ""),
            ("renewal from", _long_time(k.renew_at)),
            ("fingerprint", k.fingerprint_sha256 and f"sha256 {k.fingerprint_sha256}"),
            ("chain", " <- ".join(k.chain_subjects)),
            ("last error", _one_line(k.last_error)),
            ("failures", str(k.failures) if k.failures else ""),
            ("next attempt", _long_time(k.retry_at) if k.last_error else ""),
            ("updated", _long_time(k.updated)),
            ("source", k.source),
        ]
        lines.append(f"  {k.key_type}:")
        lines += [f"    {label + ':':<14}{value}" for label, value in fields if value]
    return "\n".join(lines)


# --------------------------------------------------------------------------- helpers


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _short_time(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%MZ")


def _long_time(moment: datetime | None) -> str:
    return "" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _error_cell(k: KeyState) -> str:
    if not k.last_error:
        return "-"
    if not k.failures:
        return _one_line(k.last_error)
    backoff = f"[{k.failures} failure(s)"
    if k.retry_at is not None:
        backoff += f", next attempt {_short_time(k.retry_at)}"
    return f"{backoff}] {_one_line(k.last_error)}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
