"""The in-memory certificate cache the TLS handshake reads, and TLS context policy.

How it works: every certificate is loaded into an ``ssl.SSLContext`` up front,
in the control plane. Python's ``ssl`` only loads certificates and keys from
files, so the PEM bytes go into an anonymous ``memfd`` and OpenSSL reads them
through ``/proc/self/fd/N``; the key never touches a disk. For each distinct
set of certificates that serve a name there is one context, holding all of
them at once (say an ECDSA and an RSA certificate for the same names), so
OpenSSL picks per client, as nginx does with two ``ssl_certificate`` lines.

During a handshake the SNI callback only does a dictionary lookup (a
``NameMap``: exact name, then a one-label ``*.`` wildcard) and switches the
connection to that context; no I/O, no locks, nothing that can block
(certmagic: the lookup "must be very fast and not block"). Names nobody
serves, and clients that send no SNI, get the default certificate.

A new set of certificates means a new ``CertificateCache``; callers swap the
whole object, never mutate one in place.
"""

from __future__ import annotations

import logging
import os
import ssl
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from tlsgate.certs.bundle import CertificateBundle
from tlsgate.certs.tickets import set_key_exchange_groups, set_ticket_key
from tlsgate.errors import CertificateError
from tlsgate.routing.hosts import NameMap

__all__ = [
    "TLS12_CIPHERS",
    "CertificateCache",
    "make_client_context",
    "make_server_context",
]

log = logging.getLogger(__name__)

# Mozilla "intermediate" TLS 1.2 suites minus the DHE ones: forward secrecy
# through ECDHE, AEAD ciphers only. ECDSA first so that, with server
# preference on, a client that can do both gets the smaller, faster ECDSA
# certificate. TLS 1.3 suites are all AEAD already and keep OpenSSL's defaults.
TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)

_TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class _DirectSSLObject(ssl.SSLObject):
    """An ``ssl.SSLObject`` whose ``read``/``write``/``pending`` are the C methods themselves.

    ``SSLObject.read`` and friends are Python functions that only forward to the
    ``_ssl`` object underneath; uvloop's TLS transport looks them up once per
    connection and calls them for every record, so binding the C methods on the
    instance removes a Python frame from every read and write (measured: the two
    wrappers were about 12 % of a busy worker's samples). Same arguments, same
    return values, same exceptions; everything else is the stock ``SSLObject``.
    """

    @classmethod
    def _create(cls, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        # SSLContext.wrap_bio's way in; the arguments go through untouched
        self = super()._create(*args, **kwargs)  # type: ignore[misc]
        raw = self._sslobj
        self.read = raw.read
        self.write = raw.write
        self.pending = raw.pending
        return self  # type: ignore[no-any-return]


def make_server_context(
    bundles: Sequence[CertificateBundle],
    *,
    min_version: Literal["1.2", "1.3"] = "1.2",
    alpn: Sequence[str] = ("http/1.1",),
    ticket_key: bytes | None = None,
) -> ssl.SSLContext:
    """A server context serving every bundle in ``bundles`` (e.g. ECDSA + RSA).

    OpenSSL holds one certificate per key algorithm; if two bundles have the
    same key type the first one is served and later ones are skipped.

    Policy: TLS 1.2 or 1.3 only; TLS 1.2 suites are :data:`TLS12_CIPHERS`;
    server cipher preference; no compression (CRIME); no renegotiation;
    session tickets on (TLS 1.2 and 1.3; OpenSSL's default of two tickets
    per TLS 1.3 handshake, lifetime 2 h), encrypted with ``ticket_key`` (80
    bytes, see :mod:`tlsgate.certs.tickets`) so that every worker holding the
    same key resumes them; without one, or where the key cannot be set, with
    OpenSSL's random key for this context alone. Key exchange groups are
    :data:`~tlsgate.certs.tickets.SERVER_GROUPS` (X25519, P-256, X448, P-521,
    P-384: OpenSSL 3's defaults without the finite-field groups, which would let
    a client make every handshake expensive), set through libssl since Python's
    ``ssl`` can set one curve only.

    Raises:
        CertificateError: a bundle's PEM could not be loaded by OpenSSL.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.sslobject_class = _DirectSSLObject
    ctx.minimum_version = _TLS_VERSIONS[min_version]
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.options &= ~ssl.OP_NO_TICKET
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    seen: set[str] = set()
    for bundle in bundles:
        if bundle.key_type in seen and bundle.key_type != "other":
            continue
        seen.add(bundle.key_type)
        _load_bundle_into(ctx, bundle)
    set_key_exchange_groups(ctx)
    if ticket_key is not None:
        set_ticket_key(ctx, ticket_key)
    return ctx


def make_client_context(
    *,
    verify: bool,
    ca_file: Path | None,
    alpn: Sequence[str] = ("http/1.1",),
    client_certificate: CertificateBundle | None = None,
) -> ssl.SSLContext:
    """A context for connecting to app servers (backends with ``tls`` on).

    Args:
        verify: check the server's chain and name (``tls = "verify"``, Cloudflare
            "Full (strict)"); False accepts any certificate (``tls = "insecure"``,
            "Full": encrypted but not authenticated).
        ca_file: trust anchors for ``verify``; None = the system store.
        alpn: protocols offered.
        client_certificate: presented when the server asks (mTLS).

    Raises:
        CertificateError: ``ca_file`` or the client certificate cannot be loaded.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.sslobject_class = _DirectSSLObject
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    if verify:
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            if ca_file is None:
                ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
            else:
                ctx.load_verify_locations(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise CertificateError(f"cannot load CA certificates from {ca_file}: {exc}") from exc
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if client_certificate is not None:
        _load_bundle_into(ctx, client_certificate)
    return ctx


class CertificateCache:
    """SNI -> ``SSLContext``, built once, read without blocking during handshakes.

    Args:
        bundles: every certificate to serve. A name served by several bundles
            (different key types) gets one context holding all of them.
        default: the bundle name served when the SNI matches nothing or is
            absent; None = the first bundle.
        min_version / alpn / ticket_key: see :func:`make_server_context`; the
            ticket key is set on every context the SNI callback can switch to.

    Raises:
        CertificateError: ``bundles`` is empty, ``default`` names no bundle, or
            a bundle cannot be loaded.
    """

    def __init__(
        self,
        bundles: Sequence[CertificateBundle],
        *,
        default: str | None,
        min_version: Literal["1.2", "1.3"] = "1.2",
        alpn: Sequence[str] = ("http/1.1",),
        ticket_key: bytes | None = None,
    ) -> None:
        if not bundles:
            raise CertificateError("no certificates to serve")
        default_bundle = bundles[0]
        if default is not None:
            matches = [b for b in bundles if b.name == default]
            if not matches:
                known = ", ".join(repr(b.name) for b in bundles)
                raise CertificateError(
                    f"the default certificate {default!r} is not among those served ({known})"
                )
            default_bundle = matches[0]

        # Which bundles serve each name, in bundle order. Grouping per name
        # (not per whole domain list) means that an RSA certificate for just
        # "www" still pairs with an ECDSA one for "www" + "api".
        servers: dict[str, list[CertificateBundle]] = {}
        for bundle in bundles:
            for domain in bundle.domains:
                owners = servers.setdefault(_normalize(domain), [])
                if bundle not in owners:
                    owners.append(bundle)

        contexts: dict[tuple[str, ...], ssl.SSLContext] = {}

        def context_for(group: Sequence[CertificateBundle]) -> ssl.SSLContext:
            key = tuple(b.name for b in group)
            if key not in contexts:
                contexts[key] = make_server_context(
                    group, min_version=min_version, alpn=alpn, ticket_key=ticket_key
                )
            return contexts[key]

        self._names: NameMap[ssl.SSLContext] = NameMap()
        for name, owners in servers.items():
            try:
                self._names.add(name, context_for(owners))
            except ValueError as exc:
                raise CertificateError(
                    f"certificate {owners[0].name!r} is configured for an invalid name: {exc}"
                ) from exc

        # The default serves its own names' group when it has names, so a
        # no-SNI client gets the same dual-certificate choice as one that sent SNI.
        default_domains = [_normalize(d) for d in default_bundle.domains]
        if default_domains:
            self._default = context_for(servers[default_domains[0]])
        else:
            self._default = context_for([default_bundle])
        self._default.sni_callback = _weak_sni_callback(weakref.ref(self))
        self._contexts = tuple(contexts.values())
        self._sni: weakref.WeakKeyDictionary[ssl.SSLObject | ssl.SSLSocket, str] = (
            weakref.WeakKeyDictionary()
        )

    @property
    def base_context(self) -> ssl.SSLContext:
        """The context to hand to ``create_server(ssl=...)``; SNI switching is installed."""
        return self._default

    def set_ticket_key(self, ticket_key: bytes) -> None:
        """Encrypt session tickets with a new key from now on (a rotation), on every context."""
        for ctx in self._contexts:
            set_ticket_key(ctx, ticket_key)

    def lookup(self, server_name: str | None) -> ssl.SSLContext:
        """The context serving ``server_name``; the default for None or unknown names."""
        if not server_name:
            return self._default
        found = self._names.lookup(_normalize(server_name))
        return self._default if found is None else found

    def sni_of(self, ssl_object: ssl.SSLObject | ssl.SSLSocket) -> str | None:
        """The server name the client sent in its ClientHello, if any."""
        return self._sni.get(ssl_object)

    def _sni_callback(
        self,
        ssl_object: ssl.SSLObject | ssl.SSLSocket,
        server_name: str | None,
        _ctx: ssl.SSLContext,
    ) -> int | None:
        # Runs inside OpenSSL's ClientHello processing. An exception here would
        # be printed as "unraisable" and the handshake aborted with an opaque
        # alert; instead a bug is logged and answered with internal_error.
        try:
            if server_name:
                self._sni[ssl_object] = server_name
            chosen = self.lookup(server_name)
            if chosen is not ssl_object.context:
                ssl_object.context = chosen
        except Exception:
            log.exception("bug in the SNI callback (server_name=%r)", server_name)
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
        return None


def _weak_sni_callback(
    ref: weakref.ReferenceType[CertificateCache],
) -> Callable[[ssl.SSLObject | ssl.SSLSocket, str | None, ssl.SSLContext], int | None]:
    """The base context's SNI callback, holding its cache weakly.

    A bound method would make a cycle (cache -> context -> callback -> cache) that
    only the cycle collector frees: every reload would leave a whole graph's
    contexts, certificates and keys in memory until a collection happened to run.
    The cache's owner (a listener, which every connection holds) keeps it alive; a
    handshake on a context whose cache is gone gets the default certificate.
    """

    def callback(
        ssl_object: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, ctx: ssl.SSLContext
    ) -> int | None:
        cache = ref()
        if cache is None:
            return None
        return cache._sni_callback(ssl_object, server_name, ctx)

    return callback


def _load_bundle_into(ctx: ssl.SSLContext, bundle: CertificateBundle) -> None:
    """``ctx.load_cert_chain`` from PEM bytes, without writing them to a disk."""
    try:
        with _memfile(bundle.chain_pem) as chain_path, _memfile(bundle.key_pem) as key_path:
            ctx.load_cert_chain(chain_path, key_path)
    except (OSError, ssl.SSLError) as exc:
        raise CertificateError(f"OpenSSL cannot load certificate {bundle.name!r}: {exc}") from exc


@contextmanager
def _memfile(data: bytes) -> Iterator[str]:
    """A path OpenSSL can open that reads ``data`` from an anonymous in-memory file.

    ``memfd_create(2)`` files live in RAM, have no name in any directory and
    vanish with their last descriptor; ``/proc/self/fd/N`` reopens one.
    """
    fd = os.memfd_create("tlsgate-pem", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def _normalize(name: str) -> str:
    return name.lower().rstrip(".")
