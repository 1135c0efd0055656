"""Certificate lifecycle for ``issuer = "acme"``: lock -> re-check -> issue -> store -> serve.

How this works: the manager runs in the supervisor (control plane), never in a
worker. At start it loads every managed certificate from the store; what is
missing gets a self-signed placeholder (logged) so listeners can start, and is
ordered at once. A certificate is *due* when ARI's window says so (RFC 9773)
or, without ARI, when a third of its lifetime remains (with jitter). Issuing
follows lock discipline (certmagic ``obtainCert``): take the store lock for
the certificate, re-check the store (another process may have renewed it),
order, answer each authorization with the first configured challenge that
fits, finalize with a fresh key, put chain + key (sealed) + metadata in the
store in one write (``Store.put_all``: never a new chain beside an old key),
release in ``finally``. Then ``on_change`` pushes the new bundles to every
worker. Failures back off exponentially (capped) and leave the current
certificate in service; the error is kept in the store for ``certs list``.
A failed store write (disk full, store locked) is such a failure too, and the
store watcher outlives it.

Every certificate that would go into service, whether just issued by the CA
or found in the store (at start, or put there by another node), first passes
``tlsgate.certs.bundle.servable_bundle``, the same decision ``tlsgate check``,
``serve`` and SIGHUP make: one that is expired, not yet valid, mismatched
with its key, truncated or with a broken chain is refused, logged with the
reason, and the current certificate stays in service.

Store layout (keys ending in ``.key`` are sealed by the store)::

    acme/<directory-id>/account.key       account private key (PEM)
    acme/<directory-id>/account.json      {"url": ..., "directory": ...}
    certs/<name>/<key-type>/chain.pem     leaf first
    certs/<name>/<key-type>/privkey.key
    certs/<name>/<key-type>/meta.json     dates, renew_at, last_error, failures, retry_at
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from tlsgate.acme import (
    AcmeClient,
    AcmeError,
    ari_cert_id,
    choose_renewal_time,
    default_renewal_time,
    dns01_record_name,
    dns01_txt_value,
    key_authorization,
    make_csr,
    tls_alpn01_certificate,
)
from tlsgate.acme.client import Authorization, Challenge
from tlsgate.certs.bundle import (
    CertificateBundle,
    bundle_from_pem,
    servable_bundle,
    validate_bundle,
)
from tlsgate.certs.dns01 import Rfc2136Updater
from tlsgate.config.model import AcmeConfig, CertificateConfig, Config
from tlsgate.errors import CertificateError, StoreError
from tlsgate.store.base import Store, WatchEvent, json_object

log = logging.getLogger("tlsgate.certs")

# The store renews a held lock every LOCK_TTL/3, so the TTL only bounds how long
# a holder that died (SIGKILL mid-order) blocks the next attempt, e.g. the
# restarted node's own. certmagic considers a lock stale after 10 s.
LOCK_TTL = 30.0
LOCK_WAIT_NOTICE = 1.0  # log that we wait for the lock after this many seconds
RENEW_REQUEST = "renew-request"  # certs/<name>/renew-request: {"force": bool}
BACKOFF_START = 30.0
BACKOFF_CAP = 6 * 3600.0
WATCH_RETRY = 1.0  # seconds before a failed store watch is started again

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class ChallengeSink(Protocol):
    """Where challenge responses go: the supervisor pushes them to every worker."""

    def set_http01(self, token: str, key_authorization: str | None) -> None: ...
    def set_tls_alpn01(self, name: str, cert_and_key: tuple[bytes, bytes] | None) -> None: ...
    async def challenges_published(self) -> None:
        """Return once every worker answers what was set (before the CA is told to look)."""
        ...


@dataclass
class Managed:
    """One (certificate, key type) the manager keeps valid."""

    cert: CertificateConfig
    key_type: str
    bundle: CertificateBundle | None = None
    renew_at: datetime | None = None
    failures: int = 0
    next_attempt: float = 0.0  # monotonic
    last_error: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    issuing: bool = False  # this manager is ordering it now: its own writes are not news

    @property
    def prefix(self) -> str:
        return f"certs/{self.cert.name}/{self.key_type}"


def generate_key(key_type: str) -> PrivateKey:
    if key_type == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ecdsa-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type.startswith("rsa-"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[4:]))
    raise CertificateError(f"unknown key type {key_type!r}")


def _pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def placeholder_bundle(cert: CertificateConfig) -> CertificateBundle:
    """A self-signed stand-in served until the real certificate is issued."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    names = list(cert.domains)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tlsgate placeholder")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tlsgate placeholder")]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .sign(key, hashes.SHA256())
    )
    return bundle_from_pem(
        cert.name,
        cert.domains,
        leaf.public_bytes(serialization.Encoding.PEM),
        _pem(key),
        cert_source="a placeholder",
        key_source="a placeholder",
    )


def _kept(current: CertificateBundle | None) -> str:
    """What stays in service after a refusal, for the log line."""
    if current is None:
        return "it is not served"
    return (
        f"the current certificate (sha256 {current.fingerprint_sha256[:16]}, valid until "
        f"{current.not_after.isoformat()}) stays in service"
    )


def _stored_time(value: object) -> datetime | None:
    """A moment from ``meta.json`` (ISO 8601 with a UTC offset); None when it is missing
    or damaged (not a string, not a date, no offset), so the caller's default applies
    instead of a ValueError, or a TypeError when it is compared with an aware time."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def directory_id(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:16]


class CertificateManager:
    def __init__(
        self,
        config: Config,
        store: Store,
        challenges: ChallengeSink,
        on_change: Callable[[], None],
        *,
        rng: random.Random | None = None,
    ) -> None:
        assert config.acme is not None
        self.acme: AcmeConfig = config.acme
        self.config = config
        self.store = store
        self.challenges = challenges
        self.on_change = on_change
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not secrets
        self.managed = [
            Managed(c, kt)
            for c in config.certificates
            if c.issuer == "acme"
            for kt in self.acme.key_types
        ]
        self.placeholders: dict[str, CertificateBundle] = {}
        self._wake = asyncio.Event()
        self.has_http = any(lc.protocol == "http" for lc in config.listeners)
        self.has_https = any(lc.protocol == "https" for lc in config.listeners)
        self.dns = Rfc2136Updater(self.acme.dns) if self.acme.dns is not None else None

    # ---- what workers serve -------------------------------------------------------------------

    def bundles(self) -> list[CertificateBundle]:
        """Issued bundles, and a placeholder for a certificate that has none yet."""
        out: list[CertificateBundle] = []
        for m in self.managed:
            if m.bundle is not None:
                out.append(m.bundle)
        have = {b.name for b in out}
        for m in self.managed:
            name = m.cert.name
            if name not in have:
                if name not in self.placeholders:
                    log.warning(
                        "certificate %s: not issued yet; serving a self-signed placeholder",
                        name,
                    )
                    self.placeholders[name] = placeholder_bundle(m.cert)
                out.append(self.placeholders[name])
                have.add(name)
        return out

    # ---- loading ---------------------------------------------------------------------------------

    async def load(self) -> None:
        """Adopt what the store holds; nothing is ordered here."""
        for m in self.managed:
            await self._load_one(m)

    async def _load_one(self, m: Managed) -> bool:
        """Adopt the store's certificate for ``m`` if it may be served; True if adopted.

        A refused one (see :func:`servable_bundle`) is logged and leaves
        ``m.bundle``, the certificate in service, as it was.
        """
        chain = await self.store.get(f"{m.prefix}/chain.pem")
        key = await self.store.get(f"{m.prefix}/privkey.key")
        meta = await self.store.get(f"{m.prefix}/meta.json")
        record = json_object(meta.value) if meta else {}
        if record is None:
            log.warning(
                "certificate %s (%s): %s/meta.json in the store is unreadable; ignoring it",
                m.cert.name,
                m.key_type,
                m.prefix,
            )
        m.meta = record or {}
        m.last_error = str(m.meta.get("last_error", ""))
        if chain is None or key is None:
            return False
        try:
            bundle = servable_bundle(
                m.cert.name,
                m.cert.domains,
                chain.value,
                key.value,
                cert_source=f"store key {m.prefix}/chain.pem",
                key_source=f"store key {m.prefix}/privkey.key",
            )
        except CertificateError as exc:
            log.error(
                "certificate %s (%s): refusing the certificate in the store: %s; %s",
                m.cert.name,
                m.key_type,
                exc,
                _kept(m.bundle),
            )
            return False
        m.bundle = bundle
        m.renew_at = _stored_time(m.meta.get("renew_at")) or default_renewal_time(
            bundle.not_before, bundle.not_after, self.rng
        )
        return True

    def inherit(self, previous: CertificateManager | None) -> None:
        """Keep serving what ``previous`` (the manager a reload replaces) had in service.

        For each (certificate, key type) the store gave nothing servable for,
        the previous manager's certificate is carried over, with its renewal
        time, if the names are unchanged and it still passes
        :func:`validate_bundle`. So a bad certificate in the store does not
        replace a good one on SIGHUP either.
        """
        if previous is None:
            return
        current = {(p.cert.name, p.key_type): p for p in previous.managed if p.bundle}
        for m in self.managed:
            old = current.get((m.cert.name, m.key_type))
            if m.bundle is not None or old is None or old.bundle is None:
                continue
            if set(old.bundle.domains) != set(m.cert.domains):
                continue
            try:
                validate_bundle(old.bundle)
            except CertificateError:
                continue
            log.info(
                "certificate %s (%s): keeping the certificate in service (the store has "
                "none that can be served)",
                m.cert.name,
                m.key_type,
            )
            m.bundle, m.renew_at = old.bundle, old.renew_at

    def due(self, m: Managed, now: datetime | None = None) -> bool:
        now = now or datetime.now(UTC)
        if m.bundle is None:
            return True
        if set(m.bundle.domains) != set(m.cert.domains):
            return True  # the configured names changed
        return m.renew_at is None or now >= m.renew_at

    # ---- the loop -------------------------------------------------------------------------------

    def request_check(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Keep every managed certificate valid, until cancelled."""
        watcher = asyncio.get_running_loop().create_task(self.watch_store())
        try:
            await self._run()
        finally:
            watcher.cancel()

    async def watch_store(self) -> None:
        """React to the store: renew requests (``certs renew``), certificates put by others.

        For the manager's whole life: a reaction that fails (the disk is full, the
        store is locked) is logged and the next change is handled; a watch that
        fails is started again after ``WATCH_RETRY`` seconds, replaying from the
        first change not handled. Without that, one failed write would leave the
        node deaf to renew requests and to other nodes' certificates until a restart.
        """
        start: int | None = None  # the first revision not handled yet, once known
        catch_up = False
        while True:
            progressed = False
            try:
                events = self.store.watch("certs/", start_revision=start)
                async with contextlib.aclosing(events):
                    if catch_up:  # after the new watch started: nothing falls between
                        await self._catch_up()
                        catch_up = False
                    async for event in events:
                        start, progressed = event.revision + 1, True
                        await self._on_store_event(event)
                return  # the store was closed
            except StoreError as exc:
                log.error(
                    "certificates: watching the store failed: %s; watching again in %gs",
                    exc,
                    WATCH_RETRY,
                )
            await asyncio.sleep(WATCH_RETRY)
            if start is None or not progressed:
                # Where to replay from is unknown, or replaying from there failed at
                # once (compacted away?): watch from now on, and catch up on what the
                # store holds.
                start, catch_up = None, True

    async def _on_store_event(self, event: WatchEvent) -> None:
        if event.kind != "put":
            return
        parts = event.key.split("/")
        try:
            if len(parts) == 3 and parts[2] == RENEW_REQUEST:
                await self._renew_requested(parts[1], event.value or b"{}")
            elif len(parts) == 4 and parts[3] == "meta.json":
                # meta.json is written with (or after) the chain and key: they are complete
                await self._adopt_from_store(parts[1], parts[2])
        except StoreError as exc:
            log.error("certificate %s: could not act on %s: %s", parts[1], event.key, exc)

    async def _catch_up(self) -> None:
        """After changes may have been missed: adopt what the store holds, answer requests."""
        try:
            for m in self.managed:
                await self._adopt_from_store(m.cert.name, m.key_type)
            for entry in await self.store.list("certs/"):
                parts = entry.key.split("/")
                if len(parts) == 3 and parts[2] == RENEW_REQUEST:
                    await self._renew_requested(parts[1], entry.value)
        except StoreError as exc:
            log.error("certificates: could not read the store: %s", exc)

    async def _renew_requested(self, name: str, value: bytes) -> None:
        force = bool((json_object(value) or {}).get("force"))
        targets = [m for m in self.managed if m.cert.name == name]
        if not targets:
            log.error("renew requested for %s, which is not an ACME-managed certificate", name)
        for m in targets:
            if force or self.due(m):
                m.next_attempt = 0.0
                await self.obtain(m, force=force)
            else:
                log.info("certificate %s (%s): not due; renew with --force", name, m.key_type)
                await self._save_meta(m)  # tells the waiting CLI that the request was seen
        await self.store.delete(f"certs/{name}/{RENEW_REQUEST}")

    async def _adopt_from_store(self, name: str, key_type: str) -> None:
        for m in self.managed:
            if m.cert.name == name and m.key_type == key_type and not m.issuing:
                before = m.bundle.fingerprint_sha256 if m.bundle else None
                if await self._load_one(m) and m.bundle and m.bundle.fingerprint_sha256 != before:
                    log.info("certificate %s (%s): new certificate from the store", name, key_type)
                    self.on_change()

    async def _run(self) -> None:
        while True:
            for m in self.managed:
                if self.due(m) and time.monotonic() >= m.next_attempt:
                    await self.obtain(m)
            self._wake.clear()
            delay = self._next_delay()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    def _next_delay(self) -> float:
        delay = self.acme.renew_check_interval
        now = datetime.now(UTC)
        mono = time.monotonic()
        for m in self.managed:
            if m.next_attempt > mono:
                delay = min(delay, m.next_attempt - mono)
            elif m.renew_at is not None:
                delay = min(delay, max(1.0, (m.renew_at - now).total_seconds()))
        return max(1.0, delay)

    async def obtain(self, m: Managed, *, force: bool = False) -> bool:
        """Issue (or renew) one certificate under its lock. Returns True on success."""
        m.issuing = True
        try:
            return await self._obtain(m, force=force)
        finally:
            m.issuing = False

    async def _obtain(self, m: Managed, *, force: bool) -> bool:
        name = m.cert.name
        try:
            async with await self._lock(m):
                # another process may have issued it while we waited for the lock
                if await self._load_one(m) and not force and not self.due(m):
                    log.info("certificate %s (%s): already renewed by another", name, m.key_type)
                    self.on_change()
                    return True
                replaces = None
                if m.bundle is not None:
                    try:
                        replaces = ari_cert_id(m.bundle.chain_pem)
                    except ValueError:
                        replaces = None
                log.info(
                    "certificate %s (%s): ordering for %s%s",
                    name,
                    m.key_type,
                    ", ".join(m.cert.domains),
                    " (renewal)" if m.bundle else "",
                )
                chain, key_pem = await self._order(m, replaces)
                # checked before it is stored: a refused one must not reach other nodes
                bundle = servable_bundle(
                    name,
                    m.cert.domains,
                    chain,
                    key_pem,
                    cert_source=f"the chain issued by {self.acme.directory}",
                    key_source="the new private key",
                )
                renew_at = await self._renewal_time(bundle)
                # Chain, key and meta.json in one write: a failure part way (disk full,
                # the store locked, the process killed) must never leave the new chain
                # beside the old key, which no later start could serve.
                await self.store.put_all(
                    [
                        (f"{m.prefix}/chain.pem", chain),
                        (f"{m.prefix}/privkey.key", key_pem),
                        (
                            f"{m.prefix}/meta.json",
                            self._meta_record(m, bundle, renew_at, failures=0, error=""),
                        ),
                    ]
                )
                m.bundle = bundle
                m.renew_at = renew_at
                m.failures = 0
                m.next_attempt = 0.0
                m.last_error = ""
        except (AcmeError, CertificateError, StoreError, OSError) as exc:
            m.failures += 1
            backoff = min(BACKOFF_CAP, BACKOFF_START * 2 ** (m.failures - 1))
            backoff *= 1 + self.rng.random() * 0.1
            m.next_attempt = time.monotonic() + backoff
            m.last_error = str(exc)
            log.error(
                "certificate %s (%s): issuing failed (attempt %d): %s; next try in %ds%s",
                name,
                m.key_type,
                m.failures,
                exc,
                int(backoff),
                "; the current certificate stays in service" if m.bundle else "",
            )
            try:
                await self._save_meta(m)
            except StoreError as store_exc:
                log.error("certificate %s: could not record the failure: %s", name, store_exc)
            return False
        log.info(
            "certificate %s (%s): issued, valid until %s; renewal from %s",
            name,
            m.key_type,
            bundle.not_after.isoformat(),
            m.renew_at.isoformat() if m.renew_at else "?",
        )
        self.on_change()
        return True

    async def _lock(self, m: Managed) -> contextlib.AbstractAsyncContextManager[None]:
        """The certificate's store lock; a wait for it is logged, not silent.

        One attempt, watched rather than cancelled: the notice comes after
        ``LOCK_WAIT_NOTICE`` even while the store itself keeps the attempt waiting
        (another process holds the database), which cancelling could not interrupt.
        """
        attempt = asyncio.ensure_future(self.store.lock(m.prefix, ttl=LOCK_TTL))
        try:
            done, _ = await asyncio.wait({attempt}, timeout=LOCK_WAIT_NOTICE)
            if not done:
                log.info(
                    "certificate %s (%s): waiting for its lock: another process is issuing "
                    "it, one that died holds it (then it expires within %ds), or another "
                    "process holds the store database",
                    m.cert.name,
                    m.key_type,
                    int(LOCK_TTL),
                )
            return await attempt
        except asyncio.CancelledError:
            attempt.cancel()  # a cancelled attempt gives back a lock it was taking
            try:
                held = await attempt
            except (asyncio.CancelledError, StoreError):
                pass
            else:  # it had got the lock already
                await held.__aexit__(None, None, None)
            raise

    async def _save_meta(self, m: Managed) -> None:
        record = self._meta_record(m, m.bundle, m.renew_at, failures=m.failures, error=m.last_error)
        await self.store.put(f"{m.prefix}/meta.json", record)

    def _meta_record(
        self,
        m: Managed,
        b: CertificateBundle | None,
        renew_at: datetime | None,
        *,
        failures: int,
        error: str,
    ) -> bytes:
        """``meta.json`` for ``m`` serving ``b``: dates, renewal, the last error, the backoff."""
        now = datetime.now(UTC)
        wait = m.next_attempt - time.monotonic() if failures else 0.0  # for `certs list`
        meta = {
            "issuer": "acme",
            "directory": self.acme.directory,
            "domains": list(m.cert.domains),
            "key_type": m.key_type,
            "not_before": b.not_before.isoformat() if b else None,
            "not_after": b.not_after.isoformat() if b else None,
            "fingerprint_sha256": b.fingerprint_sha256 if b else None,
            "renew_at": renew_at.isoformat() if renew_at else None,
            "last_error": error,
            "failures": failures,
            "retry_at": (now + timedelta(seconds=wait)).isoformat() if wait > 0 else None,
            "updated": now.isoformat(),
        }
        return json.dumps(meta).encode()

    async def _renewal_time(self, bundle: CertificateBundle) -> datetime:
        try:
            async with self._client(await self._account_key()) as client:
                info = await client.renewal_info(bundle.chain_pem)
        except AcmeError as exc:
            log.info("certificate %s: no renewal information (%s)", bundle.name, exc)
            info = None
        if info is not None:
            return choose_renewal_time(info, datetime.now(UTC), self.rng)
        return default_renewal_time(bundle.not_before, bundle.not_after, self.rng)

    # ---- ACME ----------------------------------------------------------------------------------

    def _client(
        self, account_key: ec.EllipticCurvePrivateKey, url: str | None = None
    ) -> AcmeClient:
        ca = str(self.acme.ca_file) if self.acme.ca_file else None
        return AcmeClient(self.acme.directory, account_key, ca_file=ca, account_url=url)

    async def _account_key(self) -> ec.EllipticCurvePrivateKey:
        prefix = f"acme/{directory_id(self.acme.directory)}"
        entry = await self.store.get(f"{prefix}/account.key")
        if entry is not None:
            key = serialization.load_pem_private_key(entry.value, password=None)
            if isinstance(key, ec.EllipticCurvePrivateKey):
                return key
        key = ec.generate_private_key(ec.SECP256R1())
        await self.store.put(f"{prefix}/account.key", _pem(key))
        return key

    async def _account(self) -> tuple[ec.EllipticCurvePrivateKey, str | None]:
        key = await self._account_key()
        entry = await self.store.get(f"acme/{directory_id(self.acme.directory)}/account.json")
        record = json_object(entry.value) if entry else None
        url = record.get("url") if record else None
        return key, url if isinstance(url, str) else None

    async def _order(self, m: Managed, replaces: str | None) -> tuple[bytes, bytes]:
        account_key, account_url = await self._account()
        async with self._client(account_key, account_url) as client:
            if account_url is None:
                directory = await client.directory()
                if directory.terms_of_service:
                    log.info(
                        "accepting the terms of service of %s: %s",
                        self.acme.directory,
                        directory.terms_of_service,
                    )
                eab = None
                if self.acme.eab_kid:
                    pad = "=" * (-len(self.acme.eab_hmac_key) % 4)
                    eab = (
                        self.acme.eab_kid,
                        base64.urlsafe_b64decode(self.acme.eab_hmac_key + pad),
                    )
                account = await client.register(
                    contact=[f"mailto:{self.acme.email}"] if self.acme.email else [], eab=eab
                )
                await self.store.put(
                    f"acme/{directory_id(self.acme.directory)}/account.json",
                    json.dumps({"url": account.url, "directory": self.acme.directory}).encode(),
                )
                log.info("ACME account %s at %s", account.url, self.acme.directory)
            not_after = None
            if self.acme.certificate_lifetime:
                not_after = datetime.now(UTC) + timedelta(seconds=self.acme.certificate_lifetime)
            order = await client.new_order(m.cert.domains, replaces=replaces, not_after=not_after)
            published: list[Callable[[], Awaitable[None]]] = []
            try:
                for url in order.authorizations:
                    authz = await client.get_authorization(url)
                    if authz.status == "valid":
                        continue
                    challenge = self._choose(authz)
                    published.append(await self._publish(authz, challenge, account_key))
                    await client.answer_challenge(challenge)
                    await client.poll_authorization(authz.url)
            finally:
                for undo in published:
                    try:
                        await undo()
                    except CertificateError as exc:
                        log.warning("certificate %s: cleaning up a challenge: %s", m.cert.name, exc)
            key = generate_key(m.key_type)
            order = await client.finalize(order, make_csr(m.cert.domains, key))
            chain = await client.download_certificate(order)
        return chain, _pem(key)

    def _choose(self, authz: Authorization) -> Challenge:
        offered = {c.type: c for c in authz.challenges}
        for kind in self.acme.challenges:
            if kind == "http-01" and (authz.wildcard or not self.has_http):
                continue
            if kind == "tls-alpn-01" and (authz.wildcard or not self.has_https):
                continue
            if kind == "dns-01" and self.dns is None:
                continue
            if kind in offered and offered[kind].token:
                return offered[kind]
        raise CertificateError(
            f"no usable challenge for {authz.identifier.value}: the CA offers "
            f"{', '.join(sorted(offered))}; configured: {', '.join(self.acme.challenges)}"
        )

    async def _publish(
        self, authz: Authorization, challenge: Challenge, account_key: ec.EllipticCurvePrivateKey
    ) -> Callable[[], Awaitable[None]]:
        """Make the challenge answerable; returns what undoes it."""
        token = challenge.token or ""
        name = authz.identifier.value
        if challenge.type == "http-01":
            self.challenges.set_http01(token, key_authorization(token, account_key))
            await self.challenges.challenges_published()

            async def undo_http() -> None:
                self.challenges.set_http01(token, None)

            return undo_http
        if challenge.type == "dns-01":
            assert self.dns is not None
            dns = self.dns
            record = dns01_record_name(name)
            value = dns01_txt_value(token, account_key)
            await dns.add_txt(record, value)
            if self.acme.dns is not None and self.acme.dns.propagation_delay > 0:
                await asyncio.sleep(self.acme.dns.propagation_delay)

            async def undo_dns() -> None:
                await dns.remove_txt(record, value)

            return undo_dns
        self.challenges.set_tls_alpn01(name, tls_alpn01_certificate(name, token, account_key))
        await self.challenges.challenges_published()

        async def undo_tls() -> None:
            self.challenges.set_tls_alpn01(name, None)

        return undo_tls
