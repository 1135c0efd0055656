"""One validation for check, serve, SIGHUP and live swaps (issue 8, defect 1).

Every refusal has its own message, naming the certificate, where it came from
and exactly what is wrong. The chains are built here with ``cryptography``
(a root, an intermediate, a leaf), because ``LocalCA`` signs leaves only.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tlsgate import cli
from tlsgate.certs.bundle import (
    CertificateBundle,
    check_certificate_files,
    load_bundle,
    load_bundles,
    parse_pem_chain,
    servable_bundle,
    validate_bundle,
)
from tlsgate.certs.manager import CertificateManager, Managed
from tlsgate.config.loader import load_config
from tlsgate.config.model import (
    BindAddress,
    CertificateConfig,
    Config,
    ListenerConfig,
    LogConfig,
    NodeConfig,
    StoreConfig,
)
from tlsgate.errors import CertificateError
from tlsgate.store import SqliteStore, Store
from tlsgate.supervisor import load_everything

T = TypeVar("T")
NAMES = ["www.example.test"]
NOW = datetime.now(UTC)
LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)


# --------------------------------------------------------------------------- a small PKI


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_cert(
    cn: str,
    issuer: Issued | None = None,
    *,
    ca: bool = True,
    names: list[str] | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> Issued:
    """A CA (``ca=True``) or a leaf for ``names``, signed by ``issuer`` (None: self-signed)."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer.cert.subject if issuer else _name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - timedelta(hours=1))
        .not_valid_after(not_after or NOW + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if names:
        sans = x509.SubjectAlternativeName([x509.DNSName(n) for n in names])
        builder = builder.add_extension(sans, critical=False)
    signer = issuer.key if issuer else key
    return Issued(builder.sign(signer, hashes.SHA256()), key)


@dataclass(frozen=True)
class Pki:
    root: Issued
    intermediate: Issued
    leaf: Issued


@pytest.fixture(scope="module")
def pki() -> Pki:
    root = make_cert("Test Root")
    intermediate = make_cert("Test Intermediate", root)
    return Pki(root, intermediate, make_cert("www", intermediate, ca=False, names=NAMES))


def truncated(pem: bytes) -> bytes:
    """``pem`` cut in the middle of its base64, as by a failed copy."""
    return pem[: len(pem) // 2]


def write(tmp_path: Path, chain: bytes, key: bytes, name: str = "www") -> CertificateConfig:
    cert_file, key_file = tmp_path / f"{name}-fullchain.pem", tmp_path / f"{name}.key"
    cert_file.write_bytes(chain)
    key_file.write_bytes(key)
    return CertificateConfig(name, tuple(NAMES), "files", cert_file, key_file)


def refusal(tmp_path: Path, chain: bytes, key: bytes) -> tuple[str, Path]:
    """The message every path gives for this chain and key: they must all agree."""
    cert = write(tmp_path, chain, key)
    assert cert.cert_file is not None
    config = _config(tmp_path, [cert])
    with pytest.raises(CertificateError) as raised:
        load_bundles(config)
    message = str(raised.value)
    [problem] = check_certificate_files(config)
    assert problem.message == message
    with pytest.raises(CertificateError) as again:
        servable_bundle(
            "www",
            NAMES,
            chain,
            key,
            cert_source=str(cert.cert_file),
            key_source=str(cert.key_file),
        )
    assert str(again.value) == message
    return message, cert.cert_file


def _config(tmp_path: Path, certificates: list[CertificateConfig]) -> Config:
    return Config(
        source=tmp_path / "tlsgate.toml",
        node=NodeConfig("test", tmp_path),
        store=StoreConfig(f"sqlite:///{tmp_path}/state.db"),
        log=LogConfig(),
        certificates=tuple(certificates),
        listeners=(ListenerConfig("https", (BindAddress("127.0.0.1", 8443),), "https"),),
        routes=(),
        backends=(),
    )


# --------------------------------------------------------------------------- what passes


def test_a_complete_chain_is_servable(pki: Pki, tmp_path: Path) -> None:
    chain = pki.leaf.pem + pki.intermediate.pem
    cert = write(tmp_path, chain, pki.leaf.key_pem)
    [bundle] = load_bundles(_config(tmp_path, [cert]))
    assert bundle.chain_pem == chain
    assert bundle.source == str(cert.cert_file)
    # with the root too, and with text and the key around the blocks (a combined file)
    combined = b"subject=CN = www\n" + pki.leaf.key_pem + chain + pki.root.pem + b"\n"
    bundle = servable_bundle("www", NAMES, combined, combined)
    assert len(parse_pem_chain(bundle.chain_pem, "x")) == 3


# --------------------------------------------------------------------------- dates


def test_expired_leaf_is_refused_with_its_notafter(pki: Pki, tmp_path: Path) -> None:
    old = make_cert(
        "www",
        pki.intermediate,
        ca=False,
        names=NAMES,
        not_before=LONG_AGO,
        not_after=LONG_AGO + timedelta(days=1),
    )
    message, cert_file = refusal(tmp_path, old.pem + pki.intermediate.pem, old.key_pem)
    assert message == f"certificate 'www' in {cert_file} expired on 2020-01-02 00:00:00 UTC"


def test_not_yet_valid_leaf_is_refused_with_its_notbefore(pki: Pki, tmp_path: Path) -> None:
    start = datetime(2999, 1, 1, tzinfo=UTC)
    future = make_cert(
        "www",
        pki.intermediate,
        ca=False,
        names=NAMES,
        not_before=start,
        not_after=start + timedelta(days=1),
    )
    message, cert_file = refusal(tmp_path, future.pem + pki.intermediate.pem, future.key_pem)
    assert (
        message == f"certificate 'www' in {cert_file} is not valid before 2999-01-01 00:00:00 UTC"
    )


def test_expired_intermediate_is_refused(pki: Pki, tmp_path: Path) -> None:
    stale = make_cert(
        "Stale Intermediate",
        pki.root,
        not_before=LONG_AGO,
        not_after=LONG_AGO + timedelta(days=1),
    )
    leaf = make_cert("www", stale, ca=False, names=NAMES)
    message, cert_file = refusal(tmp_path, leaf.pem + stale.pem, leaf.key_pem)
    assert message == (
        f"certificate 'www' in {cert_file}: certificate 2 (CN=Stale Intermediate) "
        "expired on 2020-01-02 00:00:00 UTC"
    )


def test_validity_is_judged_at_the_time_given(pki: Pki) -> None:
    bundle = servable_bundle("www", NAMES, pki.leaf.pem, pki.leaf.key_pem)
    validate_bundle(bundle, now=NOW)
    with pytest.raises(CertificateError, match=r"certificate 'www' in .* expired on"):
        validate_bundle(bundle, now=NOW + timedelta(days=31))


# --------------------------------------------------------------------------- key


def test_key_of_another_certificate_is_refused(pki: Pki, tmp_path: Path) -> None:
    message, cert_file = refusal(tmp_path, pki.leaf.pem, pki.intermediate.key_pem)
    assert message == (
        f"certificate 'www': the private key in {tmp_path / 'www.key'} does not belong to "
        f"the certificate in {cert_file}"
    )


# --------------------------------------------------------------------------- PEM blocks


def test_truncated_certificate_says_truncated_not_missing(pki: Pki, tmp_path: Path) -> None:
    message, cert_file = refusal(tmp_path, truncated(pki.leaf.pem), pki.leaf.key_pem)
    assert message == (
        f"certificate 'www': certificate 1 in {cert_file} is truncated: "
        "BEGIN CERTIFICATE without END"
    )


def test_truncated_intermediate_is_not_dropped(pki: Pki, tmp_path: Path) -> None:
    message, cert_file = refusal(
        tmp_path, pki.leaf.pem + truncated(pki.intermediate.pem), pki.leaf.key_pem
    )
    assert message == (
        f"certificate 'www': certificate 2 in {cert_file} is truncated: "
        "BEGIN CERTIFICATE without END"
    )


def test_certificate_cut_before_the_key_in_a_combined_file(pki: Pki) -> None:
    data = pki.leaf.pem + truncated(pki.intermediate.pem) + pki.leaf.key_pem
    with pytest.raises(
        CertificateError,
        match=r"^certificate 'www': certificate 2 in the certificate chain is truncated: "
        r"BEGIN CERTIFICATE without END$",
    ):
        servable_bundle("www", NAMES, data, data)


def test_end_without_begin(pki: Pki, tmp_path: Path) -> None:
    tail = pki.intermediate.pem[len(pki.intermediate.pem) // 2 :]
    message, cert_file = refusal(tmp_path, pki.leaf.pem + tail, pki.leaf.key_pem)
    assert message == (
        f"certificate 'www': certificate 2 in {cert_file} is truncated: "
        "END CERTIFICATE without BEGIN"
    )


def test_corrupt_base64(pki: Pki, tmp_path: Path) -> None:
    lines = pki.intermediate.pem.splitlines(keepends=True)
    lines[2] = b"!!!!" + lines[2][4:]
    message, cert_file = refusal(tmp_path, pki.leaf.pem + b"".join(lines), pki.leaf.key_pem)
    assert (
        message == f"certificate 'www': certificate 2 in {cert_file} is corrupt: not valid base64"
    )


def test_corrupt_der(pki: Pki, tmp_path: Path) -> None:
    der = pki.intermediate.cert.public_bytes(serialization.Encoding.DER)
    body = base64.encodebytes(der[: len(der) - 20])  # valid base64, DER cut short
    block = b"-----BEGIN CERTIFICATE-----\n" + body + b"-----END CERTIFICATE-----\n"
    message, cert_file = refusal(tmp_path, pki.leaf.pem + block, pki.leaf.key_pem)
    assert message == (
        f"certificate 'www': certificate 2 in {cert_file} is corrupt: its base64 decodes to "
        f"{len(der) - 20} bytes that are not a DER X.509 certificate"
    )


def test_no_certificate_at_all_keeps_its_message(pki: Pki, tmp_path: Path) -> None:
    message, cert_file = refusal(tmp_path, pki.leaf.key_pem, pki.leaf.key_pem)
    assert message == (
        f"certificate 'www': no PEM certificate found in {cert_file} "
        "(expected '-----BEGIN CERTIFICATE-----')"
    )


# --------------------------------------------------------------------------- chain links


def test_certificate_that_did_not_issue_the_one_before(pki: Pki, tmp_path: Path) -> None:
    message, cert_file = refusal(tmp_path, pki.leaf.pem + pki.root.pem, pki.leaf.key_pem)
    assert message == (
        f"certificate 'www': certificate 2 in {cert_file} (CN=Test Root) did not issue "
        "certificate 1 (CN=www): certificate 1 names CN=Test Intermediate as its issuer; "
        "list the leaf first, then each issuer in order"
    )


def test_chain_out_of_order(pki: Pki, tmp_path: Path) -> None:
    chain = pki.leaf.pem + pki.root.pem + pki.intermediate.pem
    message, _ = refusal(tmp_path, chain, pki.leaf.key_pem)
    assert "certificate 2 in" in message
    assert "did not issue certificate 1" in message


def test_same_name_but_another_key_does_not_verify(pki: Pki, tmp_path: Path) -> None:
    impostor = make_cert("Test Intermediate", pki.root)  # same subject, another key
    message, cert_file = refusal(tmp_path, pki.leaf.pem + impostor.pem, pki.leaf.key_pem)
    assert message == (
        f"certificate 'www': certificate 2 in {cert_file} (CN=Test Intermediate) did not issue "
        "certificate 1 (CN=www): the signature of certificate 1 does not verify with the key "
        "of certificate 2 (same name, another CA key)"
    )


def test_inventory_view_still_loads_an_expired_certificate(pki: Pki, tmp_path: Path) -> None:
    """``certs list/show/export`` describe what is there; only serving refuses it."""
    old = make_cert(
        "www",
        pki.intermediate,
        ca=False,
        names=NAMES,
        not_before=LONG_AGO,
        not_after=LONG_AGO + timedelta(days=1),
    )
    cert = write(tmp_path, old.pem + pki.intermediate.pem, old.key_pem)
    assert cert.cert_file is not None
    assert cert.key_file is not None
    assert load_bundle("www", NAMES, cert.cert_file, cert.key_file).is_expired()
    cut = write(tmp_path, pki.leaf.pem + truncated(pki.intermediate.pem), pki.leaf.key_pem, "cut")
    assert cut.cert_file is not None
    assert cut.key_file is not None
    with pytest.raises(CertificateError, match=r"certificate 2 in .* is truncated"):
        load_bundle("www", NAMES, cut.cert_file, cut.key_file)


# --------------------------------------------------------------------------- serve start-up


def _toml(tmp_path: Path, cert: CertificateConfig) -> Path:
    path = tmp_path / "tlsgate.toml"
    path.write_text(
        f"""
[node]
name = "t"
data_dir = {json.dumps(str(tmp_path / "data"))}

[[certificates]]
name = "www"
domains = {json.dumps(NAMES)}
cert_file = {json.dumps(str(cert.cert_file))}
key_file = {json.dumps(str(cert.key_file))}

[[listeners]]
name = "https"
bind = ["127.0.0.1:18443"]
protocol = "https"
backend = "app"

[[backends]]
name = "app"
servers = ["127.0.0.1:9001"]
"""
    )
    return path


def test_serve_refuses_to_start_with_an_expired_certificate(
    pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = make_cert(
        "www",
        pki.intermediate,
        ca=False,
        names=NAMES,
        not_before=LONG_AGO,
        not_after=LONG_AGO + timedelta(days=1),
    )
    path = _toml(tmp_path, write(tmp_path, old.pem + pki.intermediate.pem, old.key_pem))
    with pytest.raises(CertificateError, match="expired on 2020-01-02 00:00:00 UTC"):
        load_everything(str(path))
    assert cli.main(["serve", "-c", str(path)]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "error: certificate 'www' in " in err
    assert "expired on 2020-01-02 00:00:00 UTC" in err
    assert "not started" in err


def test_serve_warns_when_a_certificate_expires_soon(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    soon = make_cert("www", pki.intermediate, ca=False, names=NAMES, not_after=NOW + timedelta(2))
    path = _toml(tmp_path, write(tmp_path, soon.pem + pki.intermediate.pem, soon.key_pem))
    with caplog.at_level(logging.WARNING, logger="tlsgate.supervisor"):
        _, [bundle] = load_everything(str(path))
    assert bundle.name == "www"
    assert "certificate www in" in caplog.text
    assert "expires soon" in caplog.text


# --------------------------------------------------------------------------- ACME live swaps


def run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(20):
            return await coro

    return asyncio.run(bounded())


class Sink:
    """A challenge sink that publishes nothing (no order reaches the CA here)."""

    def set_http01(self, token: str, key_authorization: str | None) -> None:
        pass

    def set_tls_alpn01(self, name: str, cert_and_key: tuple[bytes, bytes] | None) -> None:
        pass

    async def challenges_published(self) -> None:
        pass


@dataclass
class Acme:
    manager: CertificateManager
    store: Store
    changes: list[int]

    @property
    def managed(self) -> Managed:
        return self.manager.managed[0]

    async def put(self, chain: bytes, key: bytes) -> None:
        prefix = self.managed.prefix
        await self.store.put(f"{prefix}/chain.pem", chain)
        await self.store.put(f"{prefix}/privkey.key", key)
        await self.store.put(f"{prefix}/meta.json", b"{}")


def acme_config(tmp_path: Path) -> Config:
    path = tmp_path / "acme.toml"
    path.write_text(
        f"""
[node]
name = "t"
data_dir = {json.dumps(str(tmp_path / "data"))}

[acme]
directory = "https://acme.invalid/dir"
key_types = ["ecdsa-p256"]

[[certificates]]
name = "www"
domains = {json.dumps(NAMES)}
issuer = "acme"

[[listeners]]
name = "https"
bind = ["127.0.0.1:18443"]
protocol = "https"
backend = "app"

[[backends]]
name = "app"
servers = ["127.0.0.1:9001"]
"""
    )
    return load_config(str(path))


def make_acme(tmp_path: Path, config: Config | None = None) -> Acme:
    changes: list[int] = []
    store = SqliteStore(tmp_path / "state.db")
    manager = CertificateManager(
        config or acme_config(tmp_path), store, Sink(), lambda: changes.append(1)
    )
    return Acme(manager, store, changes)


def expired_leaf(pki: Pki) -> Issued:
    return make_cert(
        "www",
        pki.intermediate,
        ca=False,
        names=NAMES,
        not_before=LONG_AGO,
        not_after=LONG_AGO + timedelta(days=1),
    )


def test_store_update_with_a_bad_certificate_keeps_the_current_one(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old = expired_leaf(pki)
    bad = [
        (old.pem + pki.intermediate.pem, old.key_pem, "expired on 2020-01-02"),
        (pki.leaf.pem + truncated(pki.intermediate.pem), pki.leaf.key_pem, "is truncated"),
        (pki.leaf.pem + pki.intermediate.pem, pki.root.key_pem, "does not belong"),
    ]

    async def body() -> None:
        acme = make_acme(tmp_path)
        try:
            await acme.put(pki.leaf.pem + pki.intermediate.pem, pki.leaf.key_pem)
            await acme.manager.load()
            current = acme.managed.bundle
            assert current is not None
            for chain, key, reason in bad:
                caplog.clear()
                await acme.put(chain, key)
                await acme.manager._adopt_from_store("www", "ecdsa-p256")
                assert acme.managed.bundle is current
                assert acme.manager.bundles() == [current]
                assert acme.changes == []
                assert reason in caplog.text
                assert "refusing the certificate in the store" in caplog.text
                assert "the current certificate (sha256" in caplog.text
                assert "stays in service" in caplog.text
        finally:
            await acme.store.close()

    with caplog.at_level(logging.ERROR, logger="tlsgate.certs"):
        run(body())


def test_expired_certificate_in_the_store_is_not_served_at_start(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old = expired_leaf(pki)

    async def body() -> list[CertificateBundle]:
        acme = make_acme(tmp_path)
        try:
            await acme.put(old.pem + pki.intermediate.pem, old.key_pem)
            await acme.manager.load()
            assert acme.managed.bundle is None
            assert acme.manager.due(acme.managed)  # so it is ordered at once
            return acme.manager.bundles()
        finally:
            await acme.store.close()

    with caplog.at_level(logging.WARNING, logger="tlsgate.certs"):
        [served] = run(body())
    assert served.source == "a placeholder"
    assert "expired on 2020-01-02" in caplog.text
    assert "it is not served" in caplog.text


def test_issued_certificate_that_is_refused_is_not_stored_or_served(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = expired_leaf(pki)

    async def order(m: Managed, replaces: str | None) -> tuple[bytes, bytes]:
        return old.pem + pki.intermediate.pem, old.key_pem

    async def body() -> None:
        acme = make_acme(tmp_path)
        try:
            await acme.put(pki.leaf.pem + pki.intermediate.pem, pki.leaf.key_pem)
            await acme.manager.load()
            current = acme.managed.bundle
            monkeypatch.setattr(acme.manager, "_order", order)
            assert not await acme.manager.obtain(acme.managed, force=True)
            assert acme.managed.bundle == current  # re-read from the store under the lock
            stored = await acme.store.get(f"{acme.managed.prefix}/chain.pem")
            assert stored is not None
            assert stored.value == pki.leaf.pem + pki.intermediate.pem
            meta = await acme.store.get(f"{acme.managed.prefix}/meta.json")
            assert meta is not None
            assert "expired on 2020-01-02" in json.loads(meta.value)["last_error"]
            assert acme.changes == []
        finally:
            await acme.store.close()

    with caplog.at_level(logging.ERROR, logger="tlsgate.certs"):
        run(body())
    assert re.search(
        r"issuing failed \(attempt 1\): certificate 'www' in the chain issued by "
        r"https://acme\.invalid/dir expired on 2020-01-02 .*the current certificate stays in "
        r"service",
        caplog.text,
    )


def test_reload_keeps_the_certificate_in_service_when_the_store_has_a_bad_one(
    pki: Pki, tmp_path: Path
) -> None:
    old = expired_leaf(pki)

    async def body() -> None:
        first = make_acme(tmp_path)
        try:
            await first.put(pki.leaf.pem + pki.intermediate.pem, pki.leaf.key_pem)
            await first.manager.load()
            current = first.managed.bundle
            assert current is not None
            await first.put(old.pem + pki.intermediate.pem, old.key_pem)
            # a SIGHUP: the supervisor builds a new manager and lets it inherit
            second = CertificateManager(first.manager.config, first.store, Sink(), lambda: None)
            await second.load()
            assert [b.source for b in second.bundles()] == ["a placeholder"]  # refused
            second.inherit(first.manager)
            assert second.managed[0].bundle is current
            assert second.bundles() == [current]
        finally:
            await first.store.close()

    run(body())
