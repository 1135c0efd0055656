"""An async RFC 8555 (ACME) client on httpx, with RFC 8737, RFC 8738 and RFC 9773 support.

How this works: :class:`AcmeClient` speaks to one ACME server (its directory
URL) as one account (its key). Every state-changing request and every read is a
POST of a JWS (``jws.sign``) carrying a fresh anti-replay nonce; reads are
POST-as-GET with an empty payload (RFC 8555 §6.3). Nonces come from the
``Replay-Nonce`` header of every response and are pooled; when the pool is
empty the client HEADs ``newNonce``. A ``badNonce`` rejection is retried once
with the nonce that came with it. Error responses are RFC 7807 problem
documents and become :class:`AcmeProblem`; transport failures become
:class:`AcmeTimeout` / :class:`AcmeConnectionError`; nothing from httpx leaks.

The issuance flow a caller drives (``tlsgate.certs`` does)::

    async with AcmeClient(directory_url, account_key) as acme:
        await acme.register(contact=["mailto:ops@example.com"])
        order = await acme.new_order(["example.com", "www.example.com"])
        for url in order.authorizations:
            authz = await acme.get_authorization(url)
            if authz.status == "valid":
                continue                               # reused (RFC 8555 §7.1.3)
            challenge = authz.challenge("http-01")     # publish http01_response(...)
            await acme.answer_challenge(challenge)
            await acme.poll_authorization(url)         # AcmeProblem if invalid
        order = await acme.finalize(order, make_csr(names, cert_key))
        chain_pem = await acme.download_certificate(order)

Polls honour Retry-After (capped, so a misbehaving server cannot park us for
hours) and stop at their deadline with :class:`AcmeTimeout`. The client knows
nothing of listeners, stores or schedules: publishing challenge answers and
deciding when to renew are the caller's.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tlsgate.acme import jws
from tlsgate.acme.ari import RenewalInfo, ari_cert_id, parse_rfc3339
from tlsgate.acme.errors import (
    AcmeConnectionError,
    AcmeError,
    AcmeProblem,
    AcmeProtocolError,
    AcmeTimeout,
    Identifier,
)

__all__ = [
    "Account",
    "AcmeClient",
    "Authorization",
    "Challenge",
    "Directory",
    "Order",
    "parse_retry_after",
]

log = logging.getLogger(__name__)

# Polling: start quickly (a CA that validates in milliseconds should not cost
# seconds), back off to a modest ceiling; a Retry-After is honoured but capped
# so a misconfigured server cannot park a poll beyond its caller's deadline.
_POLL_FIRST = 0.25
_POLL_MAX = 5.0
_RETRY_AFTER_CAP = 30.0

_JOSE_JSON = "application/jose+json"
_PEM_CHAIN = "application/pem-certificate-chain"


# --------------------------------------------------------------------------- objects


@dataclass(frozen=True)
class Directory:
    """The ACME directory (RFC 8555 §7.1.1) and its ``meta`` member.

    ``renewal_info`` is RFC 9773's ``renewalInfo`` URL, None when the CA has no ARI.
    """

    url: str
    new_nonce: str
    new_account: str
    new_order: str
    revoke_cert: str
    key_change: str | None = None
    new_authz: str | None = None
    renewal_info: str | None = None
    terms_of_service: str | None = None
    website: str | None = None
    caa_identities: tuple[str, ...] = ()
    external_account_required: bool = False
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_json(cls, obj: object, *, url: str) -> Directory:
        doc = _object(obj, "directory", url)
        meta = doc.get("meta")
        meta = meta if isinstance(meta, Mapping) else {}
        caa = meta.get("caaIdentities")
        return cls(
            url=url,
            new_nonce=_str(doc, "newNonce", "directory", url),
            new_account=_str(doc, "newAccount", "directory", url),
            new_order=_str(doc, "newOrder", "directory", url),
            revoke_cert=_str(doc, "revokeCert", "directory", url),
            key_change=_opt_str(doc, "keyChange"),
            new_authz=_opt_str(doc, "newAuthz"),
            renewal_info=_opt_str(doc, "renewalInfo"),
            terms_of_service=_opt_str(meta, "termsOfService"),
            website=_opt_str(meta, "website"),
            caa_identities=tuple(c for c in caa if isinstance(c, str))
            if isinstance(caa, list)
            else (),
            external_account_required=meta.get("externalAccountRequired") is True,
            raw=doc,
        )


@dataclass(frozen=True)
class Account:
    """An ACME account (RFC 8555 §7.1.2).

    ``created`` is True when newAccount made it (201), False when the key
    already had one (200) -- RFC 8555 §7.3.1: "If this public key is already in
    use by an existing account, the server ... MUST return a 200 (OK) response
    with a Location header field giving the URL of that account".
    """

    url: str
    status: str
    contact: tuple[str, ...]
    orders_url: str | None
    created: bool = False


@dataclass(frozen=True)
class Challenge:
    """One challenge of an authorization (RFC 8555 §7.1.5, §8).

    ``token`` is None only for challenge types that have none; ``error`` is the
    CA's reason when validation failed, already naming the identifier and type.
    """

    type: str
    url: str
    status: str
    token: str | None = None
    validated: datetime | None = None
    error: AcmeProblem | None = field(default=None, compare=False)

    @classmethod
    def from_json(cls, obj: object, *, url: str, identifier: Identifier | None) -> Challenge:
        doc = _object(obj, "challenge", url)
        ctype = _str(doc, "type", "challenge", url)
        curl = _str(doc, "url", "challenge", url)
        err = doc.get("error")
        return cls(
            type=ctype,
            url=curl,
            status=_str(doc, "status", "challenge", url),
            token=_opt_str(doc, "token"),
            validated=_opt_time(doc, "validated", url),
            error=AcmeProblem.from_document(err).in_context(
                identifier=identifier, challenge=ctype, url=curl
            )
            if isinstance(err, Mapping)
            else None,
        )


@dataclass(frozen=True)
class Authorization:
    """An authorization (RFC 8555 §7.1.4): proof of control over one identifier.

    For a wildcard order the identifier is the base domain and ``wildcard`` is True.
    """

    url: str
    status: str
    identifier: Identifier
    challenges: tuple[Challenge, ...]
    expires: datetime | None = None
    wildcard: bool = False

    def challenge(self, type: str) -> Challenge | None:
        """This authorization's challenge of ``type`` (``http-01``...), None when not offered."""
        for challenge in self.challenges:
            if challenge.type == type:
                return challenge
        return None

    @classmethod
    def from_json(cls, obj: object, *, url: str) -> Authorization:
        doc = _object(obj, "authorization", url)
        identifier = Identifier.from_json(doc.get("identifier"))
        if identifier is None:
            raise AcmeProtocolError("authorization has no valid identifier", url=url)
        raw = doc.get("challenges")
        if not isinstance(raw, list):
            raise AcmeProtocolError("authorization has no challenges list", url=url)
        return cls(
            url=url,
            status=_str(doc, "status", "authorization", url),
            identifier=identifier,
            challenges=tuple(Challenge.from_json(c, url=url, identifier=identifier) for c in raw),
            expires=_opt_time(doc, "expires", url),
            wildcard=doc.get("wildcard") is True,
        )


@dataclass(frozen=True)
class Order:
    """An order (RFC 8555 §7.1.3) and, once valid, the URL of its certificate.

    ``replaces`` is RFC 9773's certID of the predecessor, when the CA echoes it.
    """

    url: str
    status: str
    identifiers: tuple[Identifier, ...]
    authorizations: tuple[str, ...]
    finalize: str
    certificate: str | None = None
    expires: datetime | None = None
    not_before: datetime | None = None
    not_after: datetime | None = None
    error: AcmeProblem | None = field(default=None, compare=False)
    replaces: str | None = None

    @classmethod
    def from_json(cls, obj: object, *, url: str) -> Order:
        doc = _object(obj, "order", url)
        raw_ids = doc.get("identifiers")
        raw_authz = doc.get("authorizations")
        if not isinstance(raw_ids, list) or not isinstance(raw_authz, list):
            raise AcmeProtocolError("order lacks identifiers or authorizations", url=url)
        identifiers = tuple(i for i in (Identifier.from_json(x) for x in raw_ids) if i)
        err = doc.get("error")
        return cls(
            url=url,
            status=_str(doc, "status", "order", url),
            identifiers=identifiers,
            authorizations=tuple(a for a in raw_authz if isinstance(a, str)),
            finalize=_str(doc, "finalize", "order", url),
            certificate=_opt_str(doc, "certificate"),
            expires=_opt_time(doc, "expires", url),
            not_before=_opt_time(doc, "notBefore", url),
            not_after=_opt_time(doc, "notAfter", url),
            error=AcmeProblem.from_document(err, url=url) if isinstance(err, Mapping) else None,
            replaces=_opt_str(doc, "replaces"),
        )


# --------------------------------------------------------------------------- client


class AcmeClient:
    """An ACME client bound to one directory URL and one account key.

    Args:
        directory_url: the CA's directory, e.g. Let's Encrypt's ``.../directory``.
        account_key: the account's ECDSA P-256 (or P-384) private key.
        ca_file: PEM file of extra roots to trust for the ACME server's own
            HTTPS (added to the system roots; tests point it at Pebble's CA).
        timeout: seconds for each HTTP request (connect, read, write, pool).
        user_agent: RFC 8555 §6.1: "ACME clients MUST send a User-Agent header field".
        account_url: the account URL from an earlier :meth:`register`, to sign
            requests without registering again.
        transport: an httpx transport to use instead of the network (tests).

    Raises:
        AcmeError: ``ca_file`` cannot be read.
        ValueError: the key is not ECDSA P-256/P-384.
    """

    def __init__(
        self,
        directory_url: str,
        account_key: ec.EllipticCurvePrivateKey,
        *,
        ca_file: str | None = None,
        timeout: float = 30.0,
        user_agent: str = "tlsgate",
        account_url: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        jws.jws_alg(account_key)  # reject unsupported keys now, not mid-order
        self.directory_url = directory_url
        self._key = account_key
        self._timeout = timeout
        self._account_url = account_url
        self._directory: Directory | None = None
        self._nonces: list[str] = []
        # the system's trust store (SSL_CERT_FILE/SSL_CERT_DIR honoured), not certifi's
        # bundle, which httpx would use by default: plus ca_file's roots if given
        verify = ssl.create_default_context()
        if ca_file:
            try:
                verify.load_verify_locations(cafile=ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise AcmeError(f"cannot load ca_file {ca_file}: {exc}") from exc
        self._http = httpx.AsyncClient(
            verify=verify,
            timeout=timeout,
            headers={"User-Agent": user_agent},
            follow_redirects=False,
            transport=transport,
        )

    async def __aenter__(self) -> AcmeClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        await self._http.aclose()

    @property
    def account_key(self) -> ec.EllipticCurvePrivateKey:
        return self._key

    @property
    def account_url(self) -> str | None:
        """The account URL (JWS ``kid``), known after :meth:`register`."""
        return self._account_url

    # ------------------------------------------------------------------ directory

    async def directory(self) -> Directory:
        """The CA's directory, fetched once (an unauthenticated GET, RFC 8555 §7.1.1)."""
        if self._directory is None:
            resp = await self._send("GET", self.directory_url)
            self._raise_for_problem(resp, self.directory_url)
            self._directory = Directory.from_json(
                self._json(resp, self.directory_url), url=self.directory_url
            )
        return self._directory

    # ------------------------------------------------------------------ account

    async def register(
        self,
        *,
        contact: Sequence[str] = (),
        agree_tos: bool = True,
        eab: tuple[str, bytes] | None = None,
    ) -> Account:
        """Create the account for this key, or find the one it already has (RFC 8555 §7.3).

        Args:
            contact: contact URLs; a bare e-mail address gets ``mailto:`` prepended.
            agree_tos: sets ``termsOfServiceAgreed`` (the terms are at
                ``(await directory()).terms_of_service``).
            eab: ``(kid, hmac_key)`` for external account binding (RFC 8555
                §7.3.4), the MAC key already decoded from the CA's base64url.

        Returns:
            The account; its URL signs every later request.

        Raises:
            AcmeProblem: e.g. ``externalAccountRequired``, ``invalidContact``.
        """
        directory = await self.directory()
        payload: dict[str, Any] = {"termsOfServiceAgreed": agree_tos}
        if contact:
            payload["contact"] = [c if ":" in c else f"mailto:{c}" for c in contact]
        if eab is not None:
            kid, hmac_key = eab
            payload["externalAccountBinding"] = jws.eab_jws(
                self._key, kid=kid, hmac_key=hmac_key, url=directory.new_account
            )
        resp = await self._post(directory.new_account, payload, use_kid=False)
        url = self._location(resp, directory.new_account)
        self._account_url = url
        body = self._json(resp, url) if resp.content else {}
        doc = body if isinstance(body, Mapping) else {}
        raw_contact = doc.get("contact")
        account = Account(
            url=url,
            status=_opt_str(doc, "status") or "valid",
            contact=tuple(c for c in raw_contact if isinstance(c, str))
            if isinstance(raw_contact, list)
            else (),
            orders_url=_opt_str(doc, "orders"),
            created=resp.status_code == 201,
        )
        log.debug("acme account %s (%s)", url, "created" if account.created else "existing")
        return account

    # ------------------------------------------------------------------ orders

    async def new_order(
        self,
        identifiers: Sequence[str],
        *,
        replaces: str | None = None,
        not_after: datetime | None = None,
    ) -> Order:
        """Ask for a certificate for ``identifiers`` (RFC 8555 §7.4).

        Args:
            identifiers: DNS names, ``*.`` wildcards or IP literals (type ``ip``,
                RFC 8738); duplicates are dropped.
            replaces: the RFC 9773 certID (:func:`ari_cert_id`) of the certificate
                this order renews. Sent only when the directory advertises
                ``renewalInfo``, i.e. the CA implements RFC 9773 -- a CA without
                it has no use for the field and a strict one could refuse it.
            not_after: the requested notAfter (many CAs, Let's Encrypt among
                them, reject this field: leave it None unless the CA wants it).

        Raises:
            ValueError: no identifiers.
            AcmeProblem: e.g. ``rejectedIdentifier``, ``malformed``, ``rateLimited``.
        """
        idents = list(dict.fromkeys(Identifier.for_name(n) for n in identifiers))
        if not idents:
            raise ValueError("an order needs at least one identifier")
        directory = await self.directory()
        payload: dict[str, Any] = {"identifiers": [i.to_json() for i in idents]}
        if replaces is not None and directory.renewal_info is not None:
            payload["replaces"] = replaces
        if not_after is not None:
            payload["notAfter"] = _rfc3339(not_after)
        resp = await self._post(directory.new_order, payload)
        url = self._location(resp, directory.new_order)
        return Order.from_json(self._json(resp, url), url=url)

    async def get_order(self, url: str) -> Order:
        """The order at ``url`` (POST-as-GET)."""
        resp = await self._post(url, None)
        return Order.from_json(self._json(resp, url), url=url)

    async def get_authorization(self, url: str) -> Authorization:
        """The authorization at ``url`` (POST-as-GET)."""
        resp = await self._post(url, None)
        return Authorization.from_json(self._json(resp, url), url=url)

    async def answer_challenge(self, challenge: Challenge) -> Challenge:
        """Tell the CA the challenge is ready to be validated (RFC 8555 §7.5.1).

        "The client indicates to the server that it is ready for the challenge
        validation by sending an empty JSON body ("{}") carried in a POST
        request to the challenge URL (not the authorization URL)."
        """
        resp = await self._post(challenge.url, {})
        return Challenge.from_json(
            self._json(resp, challenge.url), url=challenge.url, identifier=None
        )

    async def poll_authorization(self, url: str, *, timeout: float = 60.0) -> Authorization:
        """Poll the authorization at ``url`` until it is valid.

        RFC 8555 §7.5.1: "Clients SHOULD NOT respond to challenges until they
        believe that the server's queries will succeed" and then poll, honouring
        Retry-After, until "the authorization's status ... is "valid" or "invalid"".

        Raises:
            AcmeProblem: the authorization became invalid; the problem is the failed
                challenge's error, naming the identifier and challenge type.
            AcmeError: the authorization is deactivated, expired or revoked.
            AcmeTimeout: still pending after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        delay = _POLL_FIRST
        while True:
            resp = await self._post(url, None)
            authz = Authorization.from_json(self._json(resp, url), url=url)
            name = authz.identifier.value
            if authz.status == "valid":
                return authz
            if authz.status == "invalid":
                raise _authorization_problem(authz)
            if authz.status != "pending":
                raise AcmeError(f"authorization for {name} is {authz.status}", url=url)
            what = f"authorization for {name} still pending after {timeout:g}s"
            delay = await self._pause(resp, delay, deadline, what, url)

    async def finalize(self, order: Order, csr_der: bytes, *, timeout: float = 60.0) -> Order:
        """Send the CSR and poll the order until the certificate is issued (RFC 8555 §7.4).

        Args:
            order: a ``ready`` order (all authorizations valid).
            csr_der: the DER CSR (:func:`make_csr`) for exactly the order's identifiers.
            timeout: seconds to wait for the CA to issue.

        Returns:
            The ``valid`` order, whose ``certificate`` URL :meth:`download_certificate` reads.

        Raises:
            AcmeProblem: the CA refused the CSR (``badCSR``, ``orderNotReady``) or
                the order became invalid.
            AcmeTimeout: still processing after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        resp = await self._post(order.finalize, {"csr": jws.b64encode(csr_der)})
        current = Order.from_json(self._json(resp, order.url), url=order.url)
        delay = _POLL_FIRST
        while True:
            if current.status == "valid" and current.certificate:
                return current
            if current.status == "invalid":
                if current.error is not None:
                    raise current.error
                raise AcmeProblem(
                    "about:blank", "the order became invalid; the CA gave no reason", url=order.url
                )
            # "processing" (or a "valid" order whose certificate URL is not
            # there yet): RFC 8555 §7.4 "the client SHOULD poll the order".
            what = f"order still {current.status} after {timeout:g}s"
            delay = await self._pause(resp, delay, deadline, what, order.url)
            resp = await self._post(order.url, None)
            current = Order.from_json(self._json(resp, order.url), url=order.url)

    async def download_certificate(self, order: Order) -> bytes:
        """The PEM chain of a valid order: leaf first, then intermediates (RFC 8555 §7.4.2).

        Raises:
            AcmeError: the order has no certificate URL yet.
            AcmeProtocolError: the CA sent something that is not a PEM chain.
        """
        if not order.certificate:
            raise AcmeError(f"order is {order.status} and has no certificate yet", url=order.url)
        url = order.certificate
        resp = await self._post(url, None, accept=_PEM_CHAIN)
        if b"-----BEGIN CERTIFICATE-----" not in resp.content:
            raise AcmeProtocolError("certificate download is not a PEM chain", url=url)
        try:
            x509.load_pem_x509_certificates(resp.content)
        except ValueError as exc:
            raise AcmeProtocolError(
                f"certificate download is not a PEM chain: {exc}", url=url
            ) from exc
        return resp.content

    async def revoke(self, cert_pem: bytes, *, reason: int | None = None) -> None:
        """Revoke the first certificate in ``cert_pem``, signing as the account (RFC 8555 §7.6).

        Args:
            cert_pem: the certificate (a chain is fine: the leaf comes first).
            reason: an RFC 5280 CRLReason code (0 unspecified, 1 keyCompromise,
                4 superseded, 5 cessationOfOperation...), None to omit it.

        Raises:
            AcmeProblem: e.g. ``alreadyRevoked``, ``unauthorized``, ``badRevocationReason``.
        """
        cert = x509.load_pem_x509_certificate(cert_pem)
        payload: dict[str, Any] = {
            "certificate": jws.b64encode(cert.public_bytes(serialization.Encoding.DER))
        }
        if reason is not None:
            payload["reason"] = reason
        directory = await self.directory()
        await self._post(directory.revoke_cert, payload)

    # ------------------------------------------------------------------ ARI

    async def renewal_info(self, cert_pem: bytes) -> RenewalInfo | None:
        """The CA's suggested renewal window for ``cert_pem`` (RFC 9773 §4).

        RFC 9773 §4.1: the client "sends an unauthenticated GET request to a
        path under the server's renewalInfo URL".

        Returns:
            The window, or None when the directory has no ``renewalInfo`` (no ARI:
            use :func:`default_renewal_time`).

        Raises:
            ValueError: the certificate has no Authority Key Identifier.
            AcmeProblem: the CA answered an error (e.g. 404 for a certificate it
                does not know).
            AcmeProtocolError: the window is malformed (RFC 9773 §4.2: the client
                "SHOULD make its own determination of when to renew").
        """
        directory = await self.directory()
        if directory.renewal_info is None:
            return None
        url = f"{directory.renewal_info.rstrip('/')}/{ari_cert_id(cert_pem)}"
        resp = await self._send("GET", url)
        self._raise_for_problem(resp, url)
        return RenewalInfo.from_json(
            self._json(resp, url), retry_after=parse_retry_after(resp.headers), url=url
        )

    # ------------------------------------------------------------------ plumbing

    async def _send(
        self,
        method: str,
        url: str,
        *,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """One HTTP exchange; transport failures mapped; the nonce (if any) pooled."""
        try:
            resp = await self._http.request(method, url, content=content, headers=headers)
        except httpx.TimeoutException as exc:
            raise AcmeTimeout(
                f"ACME server did not answer {method} within {self._timeout:g}s", url=url
            ) from exc
        except httpx.HTTPError as exc:
            reason = str(exc) or type(exc).__name__
            raise AcmeConnectionError(f"cannot reach the ACME server: {reason}", url=url) from exc
        except httpx.InvalidURL as exc:
            raise AcmeConnectionError(f"invalid ACME URL: {exc}", url=url) from exc
        log.debug("acme %s %s -> %d", method, url, resp.status_code)
        # RFC 8555 §6.5: "The server MUST include a Replay-Nonce header field in
        # every successful response to a POST request and SHOULD provide it in
        # error responses as well."
        nonce = resp.headers.get("Replay-Nonce")
        if nonce:
            self._nonces.append(nonce)
        return resp

    async def _nonce(self) -> str:
        if self._nonces:
            return self._nonces.pop()
        directory = await self.directory()
        url = directory.new_nonce
        resp = await self._send("HEAD", url)
        self._raise_for_problem(resp, url)
        if not self._nonces:
            raise AcmeProtocolError("newNonce answered without a Replay-Nonce header", url=url)
        return self._nonces.pop()

    async def _post(
        self,
        url: str,
        payload: Mapping[str, Any] | None,
        *,
        use_kid: bool = True,
        accept: str | None = None,
    ) -> httpx.Response:
        """POST a JWS to ``url`` (payload None = POST-as-GET); raise the problem on error."""
        kid: str | None = None
        if use_kid:
            if self._account_url is None:
                raise AcmeError("no ACME account yet: call register() first", url=url)
            kid = self._account_url
        headers = {"Content-Type": _JOSE_JSON}
        if accept is not None:
            headers["Accept"] = accept
        for attempt in (1, 2):
            nonce = await self._nonce()
            body = jws.sign(self._key, url=url, nonce=nonce, payload=payload, kid=kid)
            resp = await self._send(
                "POST", url, content=json.dumps(body).encode("ascii"), headers=headers
            )
            if resp.status_code < 400:
                return resp
            problem = self._problem(resp, url)
            # RFC 8555 §6.5: "An error response with the "badNonce" error type
            # MUST include a Replay-Nonce header field with a fresh nonce that
            # the server will accept in a retry of the original query (and
            # possibly in other requests, according to the server's nonce
            # scoping policy)." One retry: a second rejection is not transient.
            if attempt == 1 and problem.is_type("badNonce"):
                log.debug("acme badNonce from %s, retrying once", url)
                continue
            raise problem
        raise AssertionError("unreachable")  # pragma: no cover

    def _raise_for_problem(self, resp: httpx.Response, url: str) -> None:
        if resp.status_code >= 400:
            raise self._problem(resp, url)

    @staticmethod
    def _problem(resp: httpx.Response, url: str) -> AcmeProblem:
        document: object = None
        try:
            document = json.loads(resp.content) if resp.content else None
        except ValueError:
            document = None
        problem = AcmeProblem.from_document(
            document,
            status=resp.status_code,
            url=url,
            retry_after=parse_retry_after(resp.headers),
        )
        if not isinstance(document, Mapping):
            # Not a problem document (a proxy's HTML page...): keep a short,
            # printable excerpt so the log still says something useful.
            excerpt = resp.text[:200].strip().replace("\n", " ")
            problem = AcmeProblem(
                "about:blank",
                f"HTTP {resp.status_code} without a problem document"
                + (f": {excerpt}" if excerpt else ""),
                status=resp.status_code,
                url=url,
                retry_after=problem.retry_after,
            )
        return problem

    @staticmethod
    def _json(resp: httpx.Response, url: str) -> Any:
        try:
            return json.loads(resp.content)
        except ValueError as exc:
            raise AcmeProtocolError(f"ACME server sent invalid JSON: {exc}", url=url) from exc

    @staticmethod
    def _location(resp: httpx.Response, url: str) -> str:
        location = resp.headers.get("Location")
        if not location:
            raise AcmeProtocolError("ACME server sent no Location header", url=url)
        return str(resp.url.join(location))

    async def _pause(
        self, resp: httpx.Response, delay: float, deadline: float, what: str, url: str
    ) -> float:
        """Sleep before the next poll; return the next back-off delay.

        RFC 8555 §7.5.1 / §7.4: the server "MAY include a Retry-After header
        field to indicate when the client should poll again". Honoured, capped
        at :data:`_RETRY_AFTER_CAP` and at the deadline.
        """
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AcmeTimeout(what, url=url)
        retry_after = parse_retry_after(resp.headers)
        wait = min(retry_after, _RETRY_AFTER_CAP) if retry_after is not None else delay
        await asyncio.sleep(min(wait, remaining))
        return min(delay * 2, _POLL_MAX)


# --------------------------------------------------------------------------- helpers


def parse_retry_after(headers: Mapping[str, str], *, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date), None when absent or bad.

    RFC 9110 §10.2.3: ``Retry-After = HTTP-date / delay-seconds``. A date in
    the past gives 0.
    """
    value = headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    return max((when - now).total_seconds(), 0.0)


def _authorization_problem(authz: Authorization) -> AcmeProblem:
    """The problem that made ``authz`` invalid, taken from its failed challenge."""
    failed = [c for c in authz.challenges if c.error is not None]
    failed.sort(key=lambda c: c.status != "invalid")  # the invalid one first
    if failed and failed[0].error is not None:
        return failed[0].error.in_context(identifier=authz.identifier, url=authz.url)
    return AcmeProblem(
        "about:blank",
        "authorization is invalid; the CA gave no reason",
        identifier=authz.identifier,
        url=authz.url,
    )


def _rfc3339(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("datetimes sent to an ACME server must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _object(obj: object, what: str, url: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise AcmeProtocolError(f"{what} is not a JSON object", url=url)
    return obj


def _str(doc: Mapping[str, Any], key: str, what: str, url: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise AcmeProtocolError(f"{what} has no {key!r} string", url=url)
    return value


def _opt_str(doc: Mapping[str, Any], key: str) -> str | None:
    value = doc.get(key)
    return value if isinstance(value, str) and value else None


def _opt_time(doc: Mapping[str, Any], key: str, url: str) -> datetime | None:
    value = doc.get(key)
    if value is None:
        return None
    try:
        return parse_rfc3339(value)
    except ValueError as exc:
        raise AcmeProtocolError(f"bad {key!r} timestamp: {exc}", url=url) from exc
