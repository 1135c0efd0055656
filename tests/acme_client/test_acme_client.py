"""AcmeClient against a scripted ACME server (httpx.MockTransport): no network.

The mock plays a strict server: it checks every JWS signature (``jwk`` for
newAccount, ``kid`` after), that the ``url`` header names the request URL and
that every nonce is one it issued and not yet used -- so these tests also pin
the wire format. It serves RFC 9773's renewalInfo, which Debian's Pebble 2.4
lacks, and can be scripted to answer badNonce, rate limits, Retry-After polls,
garbage and transport failures.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from tlsgate.acme import (
    AcmeClient,
    AcmeConnectionError,
    AcmeError,
    AcmeProblem,
    AcmeProtocolError,
    AcmeTimeout,
    Identifier,
    ari_cert_id,
)
from tlsgate.acme import jws as jwslib
from tlsgate.acme.client import parse_retry_after
from tlsgate.ca.local import LocalCA

from .conftest import free_port

T = TypeVar("T")
BASE = "https://ca.test"
DIRECTORY_URL = f"{BASE}/directory"
CERT_URL = f"{BASE}/cert/1"
ORDER_URL = f"{BASE}/order/1"
AUTHZ_URL = f"{BASE}/authz/1"

Handler = Callable[[httpx.Request, Any], httpx.Response | None]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 30))


def problem(status: int, code: str, detail: str, **extra: Any) -> httpx.Response:
    doc = {"type": f"urn:ietf:params:acme:error:{code}", "detail": detail, "status": status}
    headers = {"Content-Type": "application/problem+json"}
    if "retry_after" in extra:
        headers["Retry-After"] = str(extra.pop("retry_after"))
    doc.update(extra)
    return httpx.Response(status, json=doc, headers=headers)


class MockAcme:
    """A strict, scriptable ACME server behind httpx.MockTransport."""

    def __init__(self, *, ari: bool = True) -> None:
        self.ari = ari
        self._nonce_counter = itertools.count()
        self.issued_nonces: set[str] = set()
        self.accounts: dict[str, ec.EllipticCurvePublicKey] = {}
        self.posts: list[tuple[str, dict[str, Any], Any]] = []  # (url, header, payload)
        self.gets: list[httpx.Request] = []
        self.heads = 0
        self.bad_nonces_to_send = 0
        # url -> handler(request, payload) returning a response, or None for default
        self.routes: dict[str, Handler] = {}
        self.eab_key: bytes | None = None
        self.transport = httpx.MockTransport(self.handle)

    def nonce(self) -> str:
        value = f"nonce{next(self._nonce_counter)}"
        self.issued_nonces.add(value)
        return value

    def directory(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "newNonce": f"{BASE}/new-nonce",
            "newAccount": f"{BASE}/new-acct",
            "newOrder": f"{BASE}/new-order",
            "revokeCert": f"{BASE}/revoke-cert",
            "keyChange": f"{BASE}/key-change",
            "meta": {"termsOfService": f"{BASE}/terms", "externalAccountRequired": False},
        }
        if self.ari:
            doc["renewalInfo"] = f"{BASE}/renewal-info/"
        return doc

    def handle(self, request: httpx.Request) -> httpx.Response:
        resp = self._handle(request)
        if request.method != "GET":  # like Pebble: nonces on HEAD newNonce and POSTs
            resp.headers["Replay-Nonce"] = self.nonce()
        return resp

    def _handle(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        assert request.headers["User-Agent"] == "tlsgate-test"
        if request.method == "GET":
            self.gets.append(request)
            if url == DIRECTORY_URL:
                return httpx.Response(200, json=self.directory())
            route = self.routes.get(url)
            if route is not None:
                resp = route(request, {})
                assert resp is not None
                return resp
            return problem(404, "malformed", f"no such resource {url}")
        if request.method == "HEAD":
            assert url == f"{BASE}/new-nonce"
            self.heads += 1
            return httpx.Response(200)
        assert request.method == "POST"
        assert request.headers["Content-Type"] == "application/jose+json"
        body = json.loads(request.content)
        assert set(body) == {"protected", "payload", "signature"}
        header = json.loads(jwslib.b64decode(body["protected"]))
        payload = json.loads(jwslib.b64decode(body["payload"])) if body["payload"] else None
        assert header["url"] == url, "RFC 8555 §6.4: url header must be the request URL"
        if header["nonce"] not in self.issued_nonces:
            return problem(400, "badNonce", "unknown or reused nonce")
        self.issued_nonces.discard(header["nonce"])
        if "jwk" in header:
            assert "kid" not in header
            key = jwslib.public_key_from_jwk(header["jwk"])
        else:
            key = self.accounts[header["kid"]]
        assert jwslib.verify(body, key), "bad JWS signature"
        self.posts.append((url, header, payload))
        if self.bad_nonces_to_send:
            self.bad_nonces_to_send -= 1
            return problem(400, "badNonce", "JWS has an invalid anti-replay nonce")
        route = self.routes.get(url)
        if route is not None:
            resp = route(request, payload)
            if resp is not None:
                return resp
        if url == f"{BASE}/new-acct":
            return self.new_account(header, payload, key)
        if url == f"{BASE}/new-order":
            return self.new_order(payload)
        if url == f"{BASE}/revoke-cert":
            return httpx.Response(200)
        return problem(404, "malformed", f"no route for POST {url}")

    def new_account(
        self, header: dict[str, Any], payload: Any, key: ec.EllipticCurvePublicKey
    ) -> httpx.Response:
        if self.eab_key is not None:
            eab = payload["externalAccountBinding"]
            eab_header = json.loads(jwslib.b64decode(eab["protected"]))
            assert "nonce" not in eab_header
            assert eab_header["url"] == f"{BASE}/new-acct"
            mac = hmac.new(
                self.eab_key, f"{eab['protected']}.{eab['payload']}".encode(), hashlib.sha256
            ).digest()
            if jwslib.b64decode(eab["signature"]) != mac:
                return problem(401, "unauthorized", "EAB MAC does not verify")
            assert json.loads(jwslib.b64decode(eab["payload"])) == header["jwk"]
        for url, known in self.accounts.items():
            if known.public_numbers() == key.public_numbers():
                return httpx.Response(200, json={"status": "valid"}, headers={"Location": url})
        url = f"{BASE}/acct/{len(self.accounts) + 1}"
        self.accounts[url] = key
        doc = {"status": "valid", "contact": payload.get("contact", []), "orders": f"{url}/orders"}
        return httpx.Response(201, json=doc, headers={"Location": url})

    def order_doc(self, status: str, **extra: Any) -> dict[str, Any]:
        doc = {
            "status": status,
            "expires": "2030-01-01T00:00:00Z",
            "identifiers": [{"type": "dns", "value": "example.com"}],
            "authorizations": [AUTHZ_URL],
            "finalize": f"{ORDER_URL}/finalize",
        }
        doc.update(extra)
        return doc

    def new_order(self, payload: Any) -> httpx.Response:
        doc = self.order_doc("pending", identifiers=payload["identifiers"])
        if "replaces" in payload:
            doc["replaces"] = payload["replaces"]
        return httpx.Response(201, json=doc, headers={"Location": ORDER_URL})


def make_client(server: MockAcme, key: ec.EllipticCurvePrivateKey | None = None) -> AcmeClient:
    return AcmeClient(
        DIRECTORY_URL,
        key or ec.generate_private_key(ec.SECP256R1()),
        user_agent="tlsgate-test",
        transport=server.transport,
    )


@pytest.fixture(scope="module")
def leaf_pem() -> bytes:
    ca = LocalCA.create("ARI test CA")
    return ca.issue(["example.com"]).cert_pem


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record (and skip) the client's poll sleeps."""
    recorded: list[float] = []

    async def fake_sleep(delay: float) -> None:
        recorded.append(delay)

    monkeypatch.setattr("tlsgate.acme.client.asyncio.sleep", fake_sleep)
    return recorded


# --------------------------------------------------------------------------- JWS on the wire


def test_requests_are_signed_jws_with_jwk_then_kid() -> None:
    server = MockAcme()
    key = ec.generate_private_key(ec.SECP256R1())

    async def body() -> None:
        async with make_client(server, key) as acme:
            account = await acme.register(contact=["ops@example.com", "tel:+1555"])
            assert account.created
            assert account.url == f"{BASE}/acct/1"
            assert account.contact == ("mailto:ops@example.com", "tel:+1555")
            assert account.orders_url == f"{BASE}/acct/1/orders"
            order = await acme.new_order(["Example.com.", "192.0.2.1", "2001:DB8::1"])
            assert order.url == ORDER_URL
            again = await acme.register()
            assert again.url == account.url
            assert not again.created

    run(body())
    (_, acct_header, acct_payload), (_, order_header, order_payload) = server.posts[:2]
    assert acct_header["jwk"] == jwslib.jwk(key)
    assert acct_payload == {
        "termsOfServiceAgreed": True,
        "contact": ["mailto:ops@example.com", "tel:+1555"],
    }
    assert order_header["kid"] == f"{BASE}/acct/1"
    assert "jwk" not in order_header
    # identifiers are normalized: lower case, no trailing dot, RFC 5952 IPv6
    assert order_payload == {
        "identifiers": [
            {"type": "dns", "value": "example.com"},
            {"type": "ip", "value": "192.0.2.1"},
            {"type": "ip", "value": "2001:db8::1"},
        ]
    }


def test_calls_before_register_are_refused() -> None:
    async def body() -> None:
        async with make_client(MockAcme()) as acme:
            with pytest.raises(AcmeError, match=r"call register\(\) first"):
                await acme.get_order(ORDER_URL)

    run(body())


def test_account_url_skips_registration() -> None:
    server = MockAcme()
    key = ec.generate_private_key(ec.SECP256R1())

    async def body() -> None:
        async with make_client(server, key) as acme:
            url = (await acme.register()).url
        async with AcmeClient(
            DIRECTORY_URL,
            key,
            user_agent="tlsgate-test",
            account_url=url,
            transport=server.transport,
        ) as acme:
            order = await acme.new_order(["example.com"])
            assert order.status == "pending"

    run(body())
    assert [u for u, _, _ in server.posts] == [f"{BASE}/new-acct", f"{BASE}/new-order"]


def test_bad_nonce_is_retried_once() -> None:
    server = MockAcme()

    async def body() -> None:
        async with make_client(server) as acme:
            await acme.register()
            server.bad_nonces_to_send = 1
            await acme.new_order(["example.com"])
            assert sum(1 for u, _, _ in server.posts if u.endswith("/new-order")) == 2
            # nonces come from responses (the badNonce one included): one HEAD ever
            assert server.heads == 1
            server.bad_nonces_to_send = 2
            with pytest.raises(AcmeProblem) as info:
                await acme.new_order(["example.com"])
            assert info.value.is_type("badNonce")

    run(body())


def test_external_account_binding_is_verified_by_the_server() -> None:
    server = MockAcme()
    server.eab_key = b"secret-mac-key-from-the-ca"

    async def body() -> None:
        async with make_client(server) as acme:
            with pytest.raises(AcmeProblem) as info:
                await acme.register(eab=("kid-9", b"wrong"))
            assert info.value.is_type("unauthorized")
            account = await acme.register(eab=("kid-9", b"secret-mac-key-from-the-ca"))
            assert account.created

    run(body())


# --------------------------------------------------------------------------- ARI


def test_renewal_info_exchange(leaf_pem: bytes) -> None:
    server = MockAcme()
    cert_id = ari_cert_id(leaf_pem)
    window = {"start": "2030-01-02T04:00:00Z", "end": "2030-01-03T04:00:00Z"}

    def serve(request: httpx.Request, _: dict[str, Any]) -> httpx.Response:
        assert "Content-Type" not in request.headers  # a plain, unauthenticated GET
        return httpx.Response(
            200,
            json={"suggestedWindow": window, "explanationURL": "https://ca.test/docs/ari"},
            headers={"Retry-After": "21600"},
        )

    server.routes[f"{BASE}/renewal-info/{cert_id}"] = serve

    async def body() -> None:
        async with make_client(server) as acme:
            info = await acme.renewal_info(leaf_pem)
            assert info is not None
            assert info.start.isoformat() == "2030-01-02T04:00:00+00:00"
            assert info.end.isoformat() == "2030-01-03T04:00:00+00:00"
            assert info.explanation_url == "https://ca.test/docs/ari"
            assert info.retry_after == 21600

    run(body())
    assert [str(r.url) for r in server.gets][-1] == f"{BASE}/renewal-info/{cert_id}"
    assert not server.posts  # no JWS, no account needed


def test_renewal_info_errors(leaf_pem: bytes) -> None:
    server = MockAcme()
    url = f"{BASE}/renewal-info/{ari_cert_id(leaf_pem)}"

    async def body() -> None:
        async with make_client(server) as acme:
            with pytest.raises(AcmeProblem) as missing:
                await acme.renewal_info(leaf_pem)  # no route: 404 problem
            assert missing.value.status == 404
            assert missing.value.url == url
            server.routes[url] = lambda r, p: httpx.Response(
                200,
                json={
                    "suggestedWindow": {
                        "start": "2030-01-03T00:00:00Z",
                        "end": "2030-01-02T00:00:00Z",
                    }
                },
            )
            with pytest.raises(AcmeProtocolError, match="no later than it starts"):
                await acme.renewal_info(leaf_pem)

    run(body())


def test_renewal_info_is_none_without_the_directory_entry(leaf_pem: bytes) -> None:
    async def body() -> None:
        async with make_client(MockAcme(ari=False)) as acme:
            assert await acme.renewal_info(leaf_pem) is None

    run(body())


@pytest.mark.parametrize("ari", [True, False])
def test_replaces_is_sent_only_to_an_ari_server(ari: bool, leaf_pem: bytes) -> None:
    server = MockAcme(ari=ari)
    cert_id = ari_cert_id(leaf_pem)

    async def body() -> None:
        async with make_client(server) as acme:
            await acme.register()
            order = await acme.new_order(["example.com"], replaces=cert_id)
            assert order.replaces == (cert_id if ari else None)

    run(body())
    payload = server.posts[-1][2]
    assert ("replaces" in payload) is ari
    if ari:
        assert payload["replaces"] == cert_id


# --------------------------------------------------------------------------- problems


def test_rate_limit_problem_with_retry_after() -> None:
    server = MockAcme()
    server.routes[f"{BASE}/new-order"] = lambda r, p: problem(
        429,
        "rateLimited",
        "too many certificates already issued for exact set of domains",
        retry_after=3600,
        identifier={"type": "dns", "value": "example.com"},
    )

    async def body() -> None:
        async with make_client(server) as acme:
            await acme.register()
            with pytest.raises(AcmeProblem) as info:
                await acme.new_order(["example.com"])
            p = info.value
            assert p.code == "rateLimited"
            assert p.status == 429
            assert p.retry_after == 3600
            assert p.identifier == Identifier("dns", "example.com")
            assert str(p) == (
                "rateLimited for example.com: too many certificates already issued for exact "
                f"set of domains [HTTP 429] ({BASE}/new-order)"
            )

    run(body())


def test_subproblems_are_parsed() -> None:
    server = MockAcme()
    server.routes[f"{BASE}/new-order"] = lambda r, p: problem(
        403,
        "rejectedIdentifier",
        "Some of the identifiers requested were rejected",
        subproblems=[
            {
                "type": "urn:ietf:params:acme:error:malformed",
                "detail": "Invalid underscore in DNS name",
                "identifier": {"type": "dns", "value": "_example.org"},
            },
            {
                "type": "urn:ietf:params:acme:error:rejectedIdentifier",
                "detail": "This CA will not issue for example.net",
                "identifier": {"type": "dns", "value": "example.net"},
            },
        ],
    )

    async def body() -> None:
        async with make_client(server) as acme:
            await acme.register()
            with pytest.raises(AcmeProblem) as info:
                await acme.new_order(["_example.org", "example.net"])
            p = info.value
            assert [s.code for s in p.subproblems] == ["malformed", "rejectedIdentifier"]
            assert [s.identifier for s in p.subproblems] == [
                Identifier("dns", "_example.org"),
                Identifier("dns", "example.net"),
            ]
            assert "malformed for _example.org: Invalid underscore in DNS name" in str(p)
            assert "rejectedIdentifier for example.net: This CA will not issue" in str(p)

    run(body())


def test_error_without_problem_document() -> None:
    server = MockAcme()
    server.routes[f"{BASE}/new-order"] = lambda r, p: httpx.Response(
        502, text="<html><body>Bad Gateway</body></html>"
    )

    async def body() -> None:
        async with make_client(server) as acme:
            await acme.register()
            with pytest.raises(AcmeProblem) as info:
                await acme.new_order(["example.com"])
            assert info.value.type == "about:blank"
            assert info.value.status == 502
            assert "Bad Gateway" in info.value.detail

    run(body())


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (httpx.Response(201, text="{not json", headers={"Location": ORDER_URL}), "invalid JSON"),
        (httpx.Response(201, json={"status": "pending"}), "no Location"),
        (
            httpx.Response(201, json={"status": "pending"}, headers={"Location": ORDER_URL}),
            "lacks identifiers",
        ),
    ],
)
def test_malformed_answers_are_protocol_errors(response: httpx.Response, message: str) -> None:
    server = MockAcme()
    server.routes[f"{BASE}/new-order"] = lambda r, p: response

    async def body() -> None:
        async with make_client(server) as acme:
            await acme.register()
            with pytest.raises(AcmeProtocolError, match=message):
                await acme.new_order(["example.com"])

    run(body())


# --------------------------------------------------------------------------- polling


def authz_doc(status: str, error: dict[str, Any] | None = None) -> dict[str, Any]:
    challenge: dict[str, Any] = {
        "type": "http-01",
        "url": f"{BASE}/chall/1",
        "status": "invalid" if error else status,
        "token": "tok",
    }
    if error:
        challenge["error"] = error
    return {
        "status": status,
        "identifier": {"type": "dns", "value": "example.com"},
        "challenges": [challenge],
        "expires": "2030-01-01T00:00:00Z",
    }


def scripted(*responses: httpx.Response) -> Handler:
    queue = list(responses)
    return lambda r, p: queue.pop(0) if len(queue) > 1 else queue[0]


def test_poll_authorization_honours_retry_after_with_a_cap(sleeps: list[float]) -> None:
    server = MockAcme()
    server.routes[AUTHZ_URL] = scripted(
        httpx.Response(200, json=authz_doc("pending"), headers={"Retry-After": "7"}),
        httpx.Response(200, json=authz_doc("pending"), headers={"Retry-After": "86400"}),
        httpx.Response(200, json=authz_doc("pending")),
        httpx.Response(200, json=authz_doc("pending")),
        httpx.Response(200, json=authz_doc("valid")),
    )

    async def body() -> None:
        async with make_client(server) as acme:
            await acme.register()
            authz = await acme.poll_authorization(AUTHZ_URL, timeout=120)
            assert authz.status == "valid"

    run(body())
    # 7 s as asked, one day capped to 30 s, then the client's own back-off
    assert sleeps == [7, 30, 1.0, 2.0]


def test_poll_authorization_invalid_raises_the_challenge_error(sleeps: list[float]) -> None:
    server = MockAcme()
    error = {
        "type": "urn:ietf:params:acme:error:connection",
        "detail": "Connection refused",
        "status": 400,
    }
    server.routes[AUTHZ_URL] = scripted(httpx.Response(200, json=authz_doc("invalid", error)))

    async def body() -> None:
        async with make_client(server) as acme:
            await acme.register()
            with pytest.raises(AcmeProblem) as info:
                await acme.poll_authorization(AUTHZ_URL)
            p = info.value
            assert p.code == "connection"
            assert p.identifier == Identifier("dns", "example.com")
            assert p.challenge == "http-01"
            assert str(p).startswith("connection for example.com (http-01): Connection refused")

    run(body())
    assert sleeps == []


def test_poll_authorization_times_out() -> None:
    server = MockAcme()
    server.routes[AUTHZ_URL] = scripted(httpx.Response(200, json=authz_doc("pending")))

    async def body() -> None:
        async with make_client(server) as acme:
            await acme.register()
            with pytest.raises(AcmeTimeout, match=r"example\.com still pending") as info:
                await acme.poll_authorization(AUTHZ_URL, timeout=0.3)
            assert info.value.url == AUTHZ_URL

    run(body())


def test_poll_authorization_other_final_states(sleeps: list[float]) -> None:
    server = MockAcme()
    server.routes[AUTHZ_URL] = scripted(httpx.Response(200, json=authz_doc("deactivated")))

    async def body() -> None:
        async with make_client(server) as acme:
            await acme.register()
            with pytest.raises(AcmeError, match=r"authorization for example\.com is deactivated"):
                await acme.poll_authorization(AUTHZ_URL)

    run(body())


def test_finalize_polls_processing_then_downloads(sleeps: list[float]) -> None:
    server = MockAcme()
    chain = LocalCA.create("x").issue(["example.com"]).chain_pem
    finalize_payloads: list[Any] = []

    def finalize(request: httpx.Request, payload: Any) -> httpx.Response:
        finalize_payloads.append(payload)
        return httpx.Response(
            200, json=server.order_doc("processing"), headers={"Retry-After": "2"}
        )

    server.routes[f"{ORDER_URL}/finalize"] = finalize
    server.routes[ORDER_URL] = scripted(
        httpx.Response(200, json=server.order_doc("processing")),
        httpx.Response(200, json=server.order_doc("valid", certificate=CERT_URL)),
    )

    def certificate(request: httpx.Request, payload: Any) -> httpx.Response:
        assert request.headers["Accept"] == "application/pem-certificate-chain"
        return httpx.Response(200, content=chain)

    server.routes[CERT_URL] = certificate

    async def body() -> None:
        async with make_client(server) as acme:
            await acme.register()
            order = await acme.new_order(["example.com"])
            valid = await acme.finalize(order, b"\x30\x03csr")
            assert valid.certificate == CERT_URL
            assert await acme.download_certificate(valid) == chain

    run(body())
    assert finalize_payloads == [{"csr": jwslib.b64encode(b"\x30\x03csr")}]
    assert sleeps == [2, 0.5]


def test_finalize_invalid_order_raises_its_error(sleeps: list[float]) -> None:
    server = MockAcme()
    error = {"type": "urn:ietf:params:acme:error:badCSR", "detail": "CSR has no names"}
    server.routes[f"{ORDER_URL}/finalize"] = lambda r, p: httpx.Response(
        200, json=server.order_doc("invalid", error=error)
    )

    async def body() -> None:
        async with make_client(server) as acme:
            await acme.register()
            order = await acme.new_order(["example.com"])
            with pytest.raises(AcmeProblem, match="badCSR: CSR has no names"):
                await acme.finalize(order, b"csr")

    run(body())


def test_download_refuses_what_is_not_a_pem_chain() -> None:
    server = MockAcme()
    server.routes[f"{ORDER_URL}/finalize"] = lambda r, p: httpx.Response(
        200, json=server.order_doc("valid", certificate=CERT_URL)
    )
    server.routes[CERT_URL] = lambda r, p: httpx.Response(200, content=b"<html>oops</html>")

    async def body() -> None:
        async with make_client(server) as acme:
            await acme.register()
            order = await acme.finalize(await acme.new_order(["example.com"]), b"csr")
            with pytest.raises(AcmeProtocolError, match="not a PEM chain"):
                await acme.download_certificate(order)
            pending = await acme.new_order(["example.com"])
            with pytest.raises(AcmeError, match="no certificate yet"):
                await acme.download_certificate(pending)

    run(body())


def test_revoke_sends_der_and_reason(leaf_pem: bytes) -> None:
    server = MockAcme()

    async def body() -> None:
        async with make_client(server) as acme:
            await acme.register()
            await acme.revoke(leaf_pem, reason=1)
            await acme.revoke(leaf_pem)

    run(body())
    der = x509.load_pem_x509_certificate(leaf_pem).public_bytes(Encoding.DER)
    assert server.posts[-2][2] == {"certificate": jwslib.b64encode(der), "reason": 1}
    assert server.posts[-1][2] == {"certificate": jwslib.b64encode(der)}


# --------------------------------------------------------------------------- transport


@pytest.mark.parametrize(
    ("exc", "expected", "message"),
    [
        (httpx.ConnectError("connection refused"), AcmeConnectionError, "cannot reach"),
        (httpx.ReadTimeout("timed out"), AcmeTimeout, "did not answer GET within 30s"),
        (httpx.RemoteProtocolError("peer closed"), AcmeConnectionError, "peer closed"),
    ],
)
def test_transport_failures_are_mapped(
    exc: Exception, expected: type[AcmeError], message: str
) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise exc

    async def body() -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        async with AcmeClient(DIRECTORY_URL, key, transport=httpx.MockTransport(fail)) as acme:
            with pytest.raises(expected, match=message) as info:
                await acme.directory()
            assert info.value.url == DIRECTORY_URL
            assert info.value.__cause__ is exc

    run(body())


def test_closed_port_is_a_connection_error() -> None:
    url = f"https://127.0.0.1:{free_port()}/dir"

    async def body() -> None:
        async with AcmeClient(url, ec.generate_private_key(ec.SECP256R1())) as acme:
            with pytest.raises(AcmeConnectionError, match="cannot reach the ACME server") as info:
                await acme.register()
            assert info.value.url == url

    run(body())


def test_construction_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="P-256 or P-384"):
        AcmeClient(DIRECTORY_URL, ec.generate_private_key(ec.SECP521R1()))
    with pytest.raises(AcmeError, match="cannot load ca_file"):
        AcmeClient(
            DIRECTORY_URL,
            ec.generate_private_key(ec.SECP256R1()),
            ca_file=str(tmp_path / "missing.pem"),
        )


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("120", 120.0), (" 5 ", 5.0), ("Wed, 21 Oct 2015 07:28:00 GMT", 60.0), ("soon", None)],
)
def test_parse_retry_after(value: str, seconds: float | None) -> None:
    now = datetime(2015, 10, 21, 7, 27, tzinfo=UTC)
    assert parse_retry_after({"Retry-After": value}, now=now) == seconds
    assert parse_retry_after({}) is None
