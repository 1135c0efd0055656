"""AcmeClient end to end against a real Pebble: real validation, real issuance.

Every challenge is answered for real -- http-01 by an HTTP server, tls-alpn-01
by a TLS server negotiating ``acme-tls/1``, dns-01 through the DNS server
Pebble resolves with -- and every issued chain is verified against Pebble's
root with cryptography's X.509 path validation.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.verification import PolicyBuilder, Store

from tlsgate.acme import (
    ACME_TLS_ALPN_PROTOCOL,
    AcmeClient,
    AcmeConnectionError,
    AcmeProblem,
    Authorization,
    Identifier,
    Order,
    ari_cert_id,
    dns01_record_name,
    dns01_txt_value,
    http01_response,
    make_csr,
    tls_alpn01_certificate,
    tls_alpn01_server_name,
)

from .conftest import EAB_HMAC_B64, EAB_KID, Pebble

pytestmark = pytest.mark.peers

T = TypeVar("T")
Solver = Callable[[AcmeClient, Authorization], Awaitable[None]]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 60))


def client(pebble: Pebble, key: ec.EllipticCurvePrivateKey) -> AcmeClient:
    return AcmeClient(pebble.directory_url, key, ca_file=pebble.ca_file, timeout=10)


# --------------------------------------------------------------------------- solvers


def http01_solver(pebble: Pebble) -> Solver:
    async def solve(acme: AcmeClient, authz: Authorization) -> None:
        challenge = authz.challenge("http-01")
        assert challenge is not None
        assert challenge.token is not None
        path, body = http01_response(challenge.token, acme.account_key)
        pebble.http01.responses[path] = body
        await acme.answer_challenge(challenge)

    return solve


def tls_alpn01_solver(pebble: Pebble) -> Solver:
    async def solve(acme: AcmeClient, authz: Authorization) -> None:
        challenge = authz.challenge("tls-alpn-01")
        assert challenge is not None
        assert challenge.token is not None
        name = authz.identifier.value
        cert_pem, key_pem = tls_alpn01_certificate(name, challenge.token, acme.account_key)
        pebble.tls_alpn.serve(tls_alpn01_server_name(name), cert_pem, key_pem)
        await acme.answer_challenge(challenge)

    return solve


def dns01_solver(pebble: Pebble) -> Solver:
    async def solve(acme: AcmeClient, authz: Authorization) -> None:
        challenge = authz.challenge("dns-01")
        assert challenge is not None
        assert challenge.token is not None
        record = dns01_record_name(authz.identifier.value)
        pebble.set_txt(record, dns01_txt_value(challenge.token, acme.account_key))
        await acme.answer_challenge(challenge)

    return solve


async def authorize(acme: AcmeClient, order: Order, solve: Solver) -> None:
    for url in order.authorizations:
        authz = await acme.get_authorization(url)
        assert authz.status == "pending"
        await solve(acme, authz)
        done = await acme.poll_authorization(url, timeout=30)
        assert done.status == "valid"


async def issue(
    acme: AcmeClient, names: list[str], solve: Solver
) -> tuple[Order, bytes, ec.EllipticCurvePrivateKey]:
    order = await acme.new_order(names)
    assert order.status == "pending"
    assert {i.value for i in order.identifiers} == set(names)
    await authorize(acme, order, solve)
    cert_key = ec.generate_private_key(ec.SECP256R1())
    valid = await acme.finalize(order, make_csr(names, cert_key), timeout=30)
    assert valid.status == "valid"
    assert valid.certificate
    chain = await acme.download_certificate(valid)
    return valid, chain, cert_key


def verify_chain(pebble: Pebble, chain_pem: bytes, names: list[str]) -> x509.Certificate:
    """Path-validate ``chain_pem`` to Pebble's root for every name; return the leaf."""
    certs = x509.load_pem_x509_certificates(chain_pem)
    assert len(certs) >= 2, "leaf first, then Pebble's intermediate"
    root = x509.load_pem_x509_certificate(pebble.root_pem())
    leaf = certs[0]
    for name in names:
        subject = name.replace("*", "x", 1)  # a wildcard covers any one label
        verifier = PolicyBuilder().store(Store([root])).build_server_verifier(x509.DNSName(subject))
        verifier.verify(leaf, certs[1:])
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == set(names)
    return leaf


# --------------------------------------------------------------------------- tests


def test_directory_and_register_same_key_same_account(
    pebble: Pebble, account_key: ec.EllipticCurvePrivateKey
) -> None:
    async def body() -> None:
        async with client(pebble, account_key) as acme:
            directory = await acme.directory()
            assert directory.new_order.startswith("https://127.0.0.1:")
            assert directory.terms_of_service  # Pebble's data: URL
            assert directory.renewal_info is None  # Pebble 2.4 has no ARI
            first = await acme.register(contact=["ops@example.com"])
            assert first.created
            assert first.status == "valid"
            assert first.contact == ("mailto:ops@example.com",)
            assert acme.account_url == first.url
        # A new client (a restart) with the same key finds the same account.
        async with client(pebble, account_key) as acme:
            again = await acme.register(contact=["ops@example.com"])
            assert again.url == first.url
            assert not again.created

    run(body())


def test_http01_issuance_for_two_names(
    pebble: Pebble, account_key: ec.EllipticCurvePrivateKey, unique_name: Callable[[str], str]
) -> None:
    names = [unique_name("www"), unique_name("api")]

    async def body() -> None:
        async with client(pebble, account_key) as acme:
            await acme.register()
            order, chain, cert_key = await issue(acme, names, http01_solver(pebble))
            leaf = verify_chain(pebble, chain, names)
            leaf_key = leaf.public_key()
            assert isinstance(leaf_key, ec.EllipticCurvePublicKey)
            assert leaf_key.public_numbers() == cert_key.public_key().public_numbers()
            assert (await acme.get_order(order.url)).status == "valid"
        # Pebble really fetched the answers over HTTP, with the name in Host.
        hosts = {h.split(":")[0] for h, path in pebble.http01.requests}
        assert set(names) <= hosts

    run(body())


def test_tls_alpn01_issuance(
    pebble: Pebble, account_key: ec.EllipticCurvePrivateKey, unique_name: Callable[[str], str]
) -> None:
    names = [unique_name("alpn")]

    async def body() -> None:
        async with client(pebble, account_key) as acme:
            await acme.register()
            _, chain, _ = await issue(acme, names, tls_alpn01_solver(pebble))
            verify_chain(pebble, chain, names)

    run(body())
    seen = [h for h in pebble.tls_alpn.handshakes if h.server_name == names[0]]
    assert seen, "Pebble never completed a handshake for the name"
    assert all(h.alpn == ACME_TLS_ALPN_PROTOCOL for h in seen)


def test_dns01_wildcard_issuance(
    pebble: Pebble, account_key: ec.EllipticCurvePrivateKey, unique_name: Callable[[str], str]
) -> None:
    base = unique_name("wild")
    names = [f"*.{base}", base]

    async def body() -> None:
        async with client(pebble, account_key) as acme:
            await acme.register()
            order = await acme.new_order(names)
            authzs = [await acme.get_authorization(u) for u in order.authorizations]
            # RFC 8555 §7.1.3: the wildcard's authorization names the base domain.
            assert sorted(a.wildcard for a in authzs) == [False, True]
            assert {a.identifier.value for a in authzs} == {base}
            wildcard = next(a for a in authzs if a.wildcard)
            assert wildcard.challenge("http-01") is None  # wildcards: dns-01 only
            await authorize(acme, order, dns01_solver(pebble))
            valid = await acme.finalize(
                order, make_csr(names, ec.generate_private_key(ec.SECP256R1()))
            )
            chain = await acme.download_certificate(valid)
            verify_chain(pebble, chain, names)

    try:
        run(body())
    finally:
        pebble.clear_txt(dns01_record_name(base))


def test_failing_challenge_raises_problem_naming_the_identifier(
    pebble: Pebble, account_key: ec.EllipticCurvePrivateKey, unique_name: Callable[[str], str]
) -> None:
    name = unique_name("wrong")

    async def body() -> None:
        async with client(pebble, account_key) as acme:
            await acme.register()
            order = await acme.new_order([name])
            authz = await acme.get_authorization(order.authorizations[0])
            challenge = authz.challenge("http-01")
            assert challenge is not None
            assert challenge.token is not None
            path, _ = http01_response(challenge.token, acme.account_key)
            pebble.http01.responses[path] = b"not-the-key-authorization"
            await acme.answer_challenge(challenge)
            with pytest.raises(AcmeProblem) as info:
                await acme.poll_authorization(authz.url, timeout=30)
            problem = info.value
            assert problem.is_type("unauthorized"), problem
            assert problem.identifier == Identifier("dns", name)
            assert problem.challenge == "http-01"
            assert "not-the-key-authorization" in problem.detail
            assert str(problem).startswith(f"unauthorized for {name} (http-01): ")
            assert problem.url == challenge.url
            # The order is dead too: finalizing it is refused with a problem.
            with pytest.raises(AcmeProblem) as refused:
                await acme.finalize(
                    order, make_csr([name], ec.generate_private_key(ec.SECP256R1())), timeout=5
                )
            assert refused.value.status is not None
            assert refused.value.status >= 400

    run(body())


def test_invalid_identifier_gives_problem_with_type_and_detail(
    pebble: Pebble, account_key: ec.EllipticCurvePrivateKey
) -> None:
    async def body() -> None:
        async with client(pebble, account_key) as acme:
            await acme.register()
            with pytest.raises(AcmeProblem) as info:
                await acme.new_order(["under_score.acme.test"])
            problem = info.value
            assert problem.type == "urn:ietf:params:acme:error:malformed"
            assert problem.code == "malformed"
            assert problem.status == 400
            assert "illegal character" in problem.detail
            assert problem.url == (await acme.directory()).new_order
            assert str(problem).startswith("malformed: Order included DNS identifier")

    run(body())


def test_finalize_with_csr_for_other_names_is_refused(
    pebble: Pebble, account_key: ec.EllipticCurvePrivateKey, unique_name: Callable[[str], str]
) -> None:
    name = unique_name("csr")

    async def body() -> None:
        async with client(pebble, account_key) as acme:
            await acme.register()
            order = await acme.new_order([name])
            await authorize(acme, order, http01_solver(pebble))
            other = make_csr([name, unique_name("extra")], ec.generate_private_key(ec.SECP256R1()))
            with pytest.raises(AcmeProblem) as info:
                await acme.finalize(order, other, timeout=10)
            assert info.value.status == 403 or info.value.is_type("badCSR"), info.value
            assert info.value.detail

    run(body())


def test_revoke(
    pebble: Pebble, account_key: ec.EllipticCurvePrivateKey, unique_name: Callable[[str], str]
) -> None:
    names = [unique_name("revoke")]

    async def body() -> bytes:
        async with client(pebble, account_key) as acme:
            await acme.register()
            _, chain, _ = await issue(acme, names, http01_solver(pebble))
            await acme.revoke(chain, reason=4)  # superseded
            with pytest.raises(AcmeProblem) as info:
                await acme.revoke(chain)
            assert info.value.is_type("alreadyRevoked"), info.value
            return chain

    chain = run(body())
    serial = f"{x509.load_pem_x509_certificate(chain).serial_number:x}"
    status = pebble.get(f"{pebble.management_url}/cert-status-by-serial/{serial}").json()
    assert status["Status"] == "Revoked"
    assert status["Reason"] == 4


def test_renewal_info_is_none_without_ari_and_replaces_is_not_sent(
    pebble: Pebble, account_key: ec.EllipticCurvePrivateKey, unique_name: Callable[[str], str]
) -> None:
    names = [unique_name("ari")]

    async def body() -> None:
        async with client(pebble, account_key) as acme:
            await acme.register()
            _, chain, _ = await issue(acme, names, http01_solver(pebble))
            assert await acme.renewal_info(chain) is None
            # A renewal order naming its predecessor still works on a CA
            # without ARI (the field is left out).
            renewal = await acme.new_order(names, replaces=ari_cert_id(chain))
            # "ready" too: Pebble 2.4 reuses a valid authorization 1 % of the
            # time even with PEBBLE_AUTHZREUSE=0 (`rand.Intn(100) > percent`).
            assert renewal.status in ("pending", "ready")
            assert renewal.replaces is None

    run(body())


def test_not_after_is_requested(
    pebble: Pebble, account_key: ec.EllipticCurvePrivateKey, unique_name: Callable[[str], str]
) -> None:
    """Pebble honours notAfter: how short-lived certificates are made in tests."""
    names = [unique_name("short")]
    wanted = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)

    async def body() -> None:
        async with client(pebble, account_key) as acme:
            await acme.register()
            order = await acme.new_order(names, not_after=wanted)
            assert order.not_after == wanted
            await authorize(acme, order, http01_solver(pebble))
            valid = await acme.finalize(
                order, make_csr(names, ec.generate_private_key(ec.SECP256R1()))
            )
            leaf = x509.load_pem_x509_certificate(await acme.download_certificate(valid))
            assert abs(leaf.not_valid_after_utc - wanted) <= timedelta(seconds=1)

    run(body())


def test_external_account_binding(
    pebble_eab: Pebble, account_key: ec.EllipticCurvePrivateKey
) -> None:
    hmac_key = base64.urlsafe_b64decode(EAB_HMAC_B64 + "=" * (-len(EAB_HMAC_B64) % 4))

    async def body() -> None:
        async with client(pebble_eab, account_key) as acme:
            assert (await acme.directory()).external_account_required
            with pytest.raises(AcmeProblem) as missing:
                await acme.register()
            assert missing.value.is_type("externalAccountRequired"), missing.value
            with pytest.raises(AcmeProblem) as wrong:
                await acme.register(eab=(EAB_KID, b"not the key"))
            assert wrong.value.status is not None
            assert wrong.value.status >= 400
            account = await acme.register(eab=(EAB_KID, hmac_key))
            assert account.created
            assert account.status == "valid"

    run(body())


def test_untrusted_server_certificate_is_a_connection_error(
    pebble: Pebble, account_key: ec.EllipticCurvePrivateKey
) -> None:
    async def body() -> None:
        # No ca_file: Pebble's listener certificate is not trusted by the system.
        async with AcmeClient(pebble.directory_url, account_key) as acme:
            with pytest.raises(AcmeConnectionError) as info:
                await acme.directory()
            assert info.value.url == pebble.directory_url
            assert "certificate" in str(info.value).lower()

    run(body())
