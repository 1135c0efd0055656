"""CertificateCache and TLS context policy, with real handshakes over memory BIOs."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import ssl
import warnings
import weakref
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tlsgate.ca import LocalCA
from tlsgate.certs.bundle import CertificateBundle, load_bundle
from tlsgate.certs.cache import CertificateCache, make_client_context, make_server_context
from tlsgate.certs.tickets import set_key_exchange_groups
from tlsgate.errors import CertificateError


@pytest.fixture(scope="module")
def ca() -> LocalCA:
    return LocalCA.create("cache test CA")


@pytest.fixture(scope="module")
def bundles(ca: LocalCA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, CertificateBundle]:
    tmp = tmp_path_factory.mktemp("certs")

    def make(name: str, domains: list[str], key_type: str = "ecdsa-p256") -> CertificateBundle:
        issued = ca.issue(domains, key_type=key_type)  # type: ignore[arg-type]
        (tmp / f"{name}.pem").write_bytes(issued.chain_pem)
        (tmp / f"{name}.key").write_bytes(issued.key_pem)
        return load_bundle(name, domains, tmp / f"{name}.pem", tmp / f"{name}.key")

    return {
        "www-ec": make("www-ec", ["www.example.com", "example.com"]),
        "www-rsa": make("www-rsa", ["www.example.com", "example.com"], "rsa-2048"),
        "api": make("api", ["*.api.example.com"]),
        "fallback": make("fallback", ["fallback.example.com"]),
    }


def _handshake(
    client: ssl.SSLContext, server: ssl.SSLContext, server_hostname: str | None
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_side=False, server_hostname=server_hostname)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    pending = {c, s}
    for _ in range(20):
        for obj in list(pending):
            try:
                obj.do_handshake()
                pending.discard(obj)
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if not pending:
            return c, s
    raise AssertionError("handshake did not finish")


def _client(
    ca: LocalCA, *, ciphers: str | None = None, check_hostname: bool = True
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=ca.cert_pem.decode())
    ctx.check_hostname = check_hostname
    if ciphers is not None:
        # TLS 1.2 picks the certificate by the cipher suite's authentication.
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(ciphers)
    return ctx


def _peer(client: ssl.SSLObject) -> x509.Certificate:
    der = client.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def _peer_names(client: ssl.SSLObject) -> list[str]:
    ext = _peer(client).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return ext.value.get_values_for_type(x509.DNSName)


def test_dual_context_serves_ecdsa_or_rsa_per_client(
    ca: LocalCA, bundles: dict[str, CertificateBundle]
) -> None:
    server = make_server_context([bundles["www-ec"], bundles["www-rsa"]])
    ecdsa_only = _client(ca, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256")
    rsa_only = _client(ca, ciphers="ECDHE-RSA-AES128-GCM-SHA256")

    c, _ = _handshake(ecdsa_only, server, "www.example.com")
    assert isinstance(_peer(c).public_key(), ec.EllipticCurvePublicKey)
    assert c.cipher() is not None
    assert c.cipher()[0] == "ECDHE-ECDSA-AES128-GCM-SHA256"  # type: ignore[index]

    c, _ = _handshake(rsa_only, server, "www.example.com")
    assert isinstance(_peer(c).public_key(), rsa.RSAPublicKey)
    assert c.cipher()[0] == "ECDHE-RSA-AES128-GCM-SHA256"  # type: ignore[index]

    # A modern client that can do both gets ECDSA (server preference).
    c, _ = _handshake(_client(ca), server, "www.example.com")
    assert c.version() == "TLSv1.3"
    assert isinstance(_peer(c).public_key(), ec.EllipticCurvePublicKey)


def test_server_policy(bundles: dict[str, CertificateBundle], ca: LocalCA) -> None:
    server = make_server_context([bundles["www-ec"]], alpn=("h2", "http/1.1"))
    assert server.minimum_version == ssl.TLSVersion.TLSv1_2
    for flag in (ssl.OP_NO_COMPRESSION, ssl.OP_NO_RENEGOTIATION, ssl.OP_CIPHER_SERVER_PREFERENCE):
        assert server.options & flag
    assert not server.options & ssl.OP_NO_TICKET
    tls12 = {c["name"] for c in server.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12
    assert all(name.startswith("ECDHE-") for name in tls12)
    assert all("GCM" in name or "CHACHA20" in name for name in tls12)

    old = _client(ca)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1 is deprecated: the point
        old.minimum_version = ssl.TLSVersion.TLSv1_1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError):
        _handshake(old, server, "www.example.com")

    cbc_only = _client(ca, ciphers="ECDHE-ECDSA-AES128-SHA256")
    with pytest.raises(ssl.SSLError):
        _handshake(cbc_only, server, "www.example.com")

    alpn_client = _client(ca)
    alpn_client.set_alpn_protocols(["h2"])
    c, s = _handshake(alpn_client, server, "www.example.com")
    assert c.selected_alpn_protocol() == "h2"
    assert s.selected_alpn_protocol() == "h2"

    tls13_only = make_server_context([bundles["www-ec"]], min_version="1.3")
    assert tls13_only.minimum_version == ssl.TLSVersion.TLSv1_3
    with pytest.raises(ssl.SSLError):
        _handshake(
            _client(ca, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256"), tls13_only, "www.example.com"
        )


def test_tls12_session_ticket_resumption(
    ca: LocalCA, bundles: dict[str, CertificateBundle]
) -> None:
    server = make_server_context([bundles["www-ec"]])
    client = _client(ca, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256")
    first, _ = _handshake(client, server, "www.example.com")
    assert not first.session_reused
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    again = client.wrap_bio(c_in, c_out, server_hostname="www.example.com", session=first.session)
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for obj in (again, srv):
            with contextlib.suppress(ssl.SSLWantReadError):
                obj.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    assert again.session_reused


def test_cache_selects_by_sni(ca: LocalCA, bundles: dict[str, CertificateBundle]) -> None:
    cache = CertificateCache(list(bundles.values()), default="fallback")
    server = cache.base_context
    cases = {
        "www.example.com": "www.example.com",
        "EXAMPLE.com": "www.example.com",
        "v1.api.example.com": "v1.api.example.com",  # wildcard, one label
        "unknown.example.org": "fallback.example.com",  # default
        "a.b.api.example.com": "fallback.example.com",  # wildcard does not span labels
    }
    for sni, expected_name in cases.items():
        c, s = _handshake(_client(ca, check_hostname=False), server, sni)
        names = _peer_names(c)
        if expected_name == "v1.api.example.com":
            assert names == ["*.api.example.com"]
        else:
            assert expected_name in names, (sni, names)
        assert cache.sni_of(s) == sni

    # No SNI at all: the default, and sni_of says None.
    c, s = _handshake(_client(ca, check_hostname=False), server, None)
    assert _peer_names(c) == ["fallback.example.com"]
    assert cache.sni_of(s) is None


def test_cache_dual_certificates_through_sni(
    ca: LocalCA, bundles: dict[str, CertificateBundle]
) -> None:
    cache = CertificateCache(list(bundles.values()), default="fallback")
    c, _ = _handshake(
        _client(ca, ciphers="ECDHE-RSA-AES128-GCM-SHA256"), cache.base_context, "www.example.com"
    )
    assert isinstance(_peer(c).public_key(), rsa.RSAPublicKey)
    c, _ = _handshake(
        _client(ca, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256"), cache.base_context, "example.com"
    )
    assert isinstance(_peer(c).public_key(), ec.EllipticCurvePublicKey)


def test_lookup_is_pure(bundles: dict[str, CertificateBundle]) -> None:
    cache = CertificateCache(list(bundles.values()), default=None)
    www = cache.lookup("www.example.com")
    assert cache.lookup("example.com") is www  # one context per group of names
    assert cache.lookup("www.example.com.") is www
    assert cache.lookup("x.api.example.com") is cache.lookup("y.api.example.com")
    assert cache.lookup("x.api.example.com") is not www
    # default=None: the first bundle's group, and the base context is it.
    assert cache.lookup(None) is www
    assert cache.lookup("nothing.invalid") is www
    assert cache.base_context is www
    assert www.sni_callback is not None


def test_rsa_only_name_pairs_with_wider_ecdsa(ca: LocalCA, tmp_path: Path) -> None:
    def make(name: str, domains: list[str], key_type: str) -> CertificateBundle:
        issued = ca.issue(domains, key_type=key_type)  # type: ignore[arg-type]
        (tmp_path / f"{name}.pem").write_bytes(issued.chain_pem)
        (tmp_path / f"{name}.key").write_bytes(issued.key_pem)
        return load_bundle(name, domains, tmp_path / f"{name}.pem", tmp_path / f"{name}.key")

    ec_cert = make("ec", ["a.example.com", "b.example.com"], "ecdsa-p256")
    rsa_cert = make("rsa", ["a.example.com"], "rsa-2048")
    cache = CertificateCache([ec_cert, rsa_cert], default=None)
    assert cache.lookup("a.example.com") is not cache.lookup("b.example.com")
    rsa_client = _client(ca, ciphers="ECDHE-RSA-AES128-GCM-SHA256")
    c, _ = _handshake(rsa_client, cache.base_context, "a.example.com")
    assert isinstance(_peer(c).public_key(), rsa.RSAPublicKey)
    with pytest.raises(ssl.SSLError):  # b has no RSA certificate
        _handshake(rsa_client, cache.base_context, "b.example.com")


def test_sni_records_do_not_keep_connections_alive(
    ca: LocalCA, bundles: dict[str, CertificateBundle]
) -> None:
    cache = CertificateCache(list(bundles.values()), default="fallback")
    _, s = _handshake(_client(ca), cache.base_context, "www.example.com")
    assert cache.sni_of(s) == "www.example.com"
    del s
    gc.collect()
    assert len(cache._sni) == 0


def test_a_cache_nobody_holds_is_freed_at_once(
    ca: LocalCA, bundles: dict[str, CertificateBundle]
) -> None:
    # a reload drops the old graph's caches: freed by reference counting, not left
    # (contexts, certificates, keys) until the cycle collector runs
    cache = CertificateCache(list(bundles.values()), default="fallback")
    _handshake(_client(ca), cache.base_context, "www.example.com")
    ref = weakref.ref(cache)
    gc.disable()
    try:
        del cache
        assert ref() is None
    finally:
        gc.enable()


def test_a_context_outliving_its_cache_serves_the_default(
    ca: LocalCA, bundles: dict[str, CertificateBundle]
) -> None:
    cache = CertificateCache(list(bundles.values()), default="fallback")
    base = cache.base_context
    del cache
    gc.collect()
    c, _ = _handshake(_client(ca, check_hostname=False), base, "www.example.com")
    assert ("DNS", "fallback.example.com") in (c.getpeercert() or {})["subjectAltName"]


def test_sni_callback_bug_becomes_internal_error(
    ca: LocalCA, bundles: dict[str, CertificateBundle], caplog: pytest.LogCaptureFixture
) -> None:
    cache = CertificateCache(list(bundles.values()), default="fallback")

    def broken(server_name: str | None) -> ssl.SSLContext:
        raise RuntimeError("boom")

    cache.lookup = broken  # type: ignore[method-assign]
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = _client(ca).wrap_bio(c_in, c_out, server_hostname="www.example.com")
    server = cache.base_context.wrap_bio(s_in, s_out, server_side=True)
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    s_in.write(c_out.read())
    with pytest.raises(ssl.SSLError, match="CALLBACK_FAILED"):
        server.do_handshake()
    c_in.write(s_out.read())
    with pytest.raises(ssl.SSLError, match="TLSV1_ALERT_INTERNAL_ERROR"):
        client.do_handshake()
    assert "bug in the SNI callback" in caplog.text


def test_cache_errors(bundles: dict[str, CertificateBundle]) -> None:
    with pytest.raises(CertificateError, match="no certificates"):
        CertificateCache([], default=None)
    with pytest.raises(CertificateError, match="'nope' is not among"):
        CertificateCache([bundles["api"]], default="nope")
    bad_name = dataclasses.replace(bundles["api"], domains=("x.*.example.com",))
    with pytest.raises(CertificateError, match="configured for an invalid name"):
        CertificateCache([bad_name], default=None)
    broken = CertificateBundle(
        name="broken",
        domains=("x.example.com",),
        chain_pem=bundles["api"].chain_pem,
        key_pem=bundles["www-ec"].key_pem,  # the wrong key
        key_type="ecdsa-p256",
        not_before=bundles["api"].not_before,
        not_after=bundles["api"].not_after,
        sans=bundles["api"].sans,
        fingerprint_sha256=bundles["api"].fingerprint_sha256,
    )
    with pytest.raises(CertificateError, match="OpenSSL cannot load certificate 'broken'"):
        make_server_context([broken])


def test_client_context_verify(
    ca: LocalCA, bundles: dict[str, CertificateBundle], tmp_path: Path
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.cert_pem)
    server = make_server_context([bundles["www-ec"]])
    verifying = make_client_context(verify=True, ca_file=ca_file)
    c, _ = _handshake(verifying, server, "www.example.com")
    assert c.version() == "TLSv1.3"
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(verifying, server, "other.example.com")

    stranger = tmp_path / "stranger.pem"
    stranger.write_bytes(LocalCA.create("stranger").cert_pem)
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(make_client_context(verify=True, ca_file=stranger), server, "www.example.com")

    insecure = make_client_context(verify=False, ca_file=None)
    c, _ = _handshake(insecure, server, "anything.invalid")
    assert c.getpeercert(binary_form=True) is not None

    with pytest.raises(CertificateError, match="cannot load CA certificates"):
        make_client_context(verify=True, ca_file=tmp_path / "missing.pem")


def test_client_context_presents_client_certificate(
    ca: LocalCA, bundles: dict[str, CertificateBundle], tmp_path: Path
) -> None:
    issued = ca.issue(["lb.example.com"], client=True)
    (tmp_path / "c.pem").write_bytes(issued.chain_pem)
    (tmp_path / "c.key").write_bytes(issued.key_pem)
    client_bundle = load_bundle("lb", [], tmp_path / "c.pem", tmp_path / "c.key")
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.cert_pem)
    server = make_server_context([bundles["www-ec"]])
    server.verify_mode = ssl.CERT_REQUIRED
    server.load_verify_locations(cafile=ca_file)
    client = make_client_context(verify=True, ca_file=ca_file, client_certificate=client_bundle)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    _, s = _handshake(client, server, "www.example.com")
    peer = s.getpeercert()
    assert peer is not None
    assert ("DNS", "lb.example.com") in peer["subjectAltName"]


def test_finite_field_groups_are_not_offered(
    bundles: dict[str, CertificateBundle], ca: LocalCA
) -> None:
    """A client that offers only ffdhe8192 (about 80 times the CPU of X25519 per
    handshake, for the server too) is refused; the elliptic curves all work."""
    server = make_server_context([bundles["www-ec"]])

    def client(groups: str, version: ssl.TLSVersion) -> ssl.SSLContext:
        ctx = _client(ca)
        ctx.minimum_version = ctx.maximum_version = version
        assert set_key_exchange_groups(ctx, groups)
        return ctx

    for group in ("X25519", "P-256", "P-384", "P-521", "X448"):
        _handshake(client(group, ssl.TLSVersion.TLSv1_3), server, "www.example.com")
    # TLS 1.2: the list also names the curves an ECDSA certificate may use (P-256 here)
    _handshake(client("X25519:P-256", ssl.TLSVersion.TLSv1_2), server, "www.example.com")
    for group in ("ffdhe2048", "ffdhe8192"):
        with pytest.raises(ssl.SSLError):
            _handshake(client(group, ssl.TLSVersion.TLSv1_3), server, "www.example.com")


def test_an_unknown_group_list_is_refused_and_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with caplog.at_level("WARNING", logger="tlsgate.certs.tickets"):
        assert not set_key_exchange_groups(ctx, "no-such-group")
