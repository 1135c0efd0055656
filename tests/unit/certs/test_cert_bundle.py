"""load_bundle, load_bundles and check_certificate_files."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tlsgate.ca import LocalCA
from tlsgate.certs.bundle import (
    CertificateBundle,
    check_certificate_files,
    load_bundle,
    load_bundles,
    san_covers,
)
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


@pytest.fixture(scope="module")
def ca() -> LocalCA:
    return LocalCA.create("bundle test CA")


def _write(tmp_path: Path, name: str, chain: bytes, key: bytes) -> tuple[Path, Path]:
    cert_file, key_file = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert_file.write_bytes(chain)
    key_file.write_bytes(key)
    return cert_file, key_file


def _issue_files(
    ca: LocalCA, tmp_path: Path, name: str, names: list[str], **kwargs: object
) -> tuple[Path, Path]:
    issued = ca.issue(names, **kwargs)  # type: ignore[arg-type]
    return _write(tmp_path, name, issued.chain_pem, issued.key_pem)


def test_load_bundle_success(ca: LocalCA, tmp_path: Path) -> None:
    cert_file, key_file = _issue_files(
        ca, tmp_path, "www", ["www.example.com", "*.example.net", "127.0.0.1"], key_type="rsa-2048"
    )
    bundle = load_bundle(
        "www", ["www.example.com", "a.example.net", "127.0.0.1"], cert_file, key_file
    )
    assert bundle.name == "www"
    assert bundle.domains == ("www.example.com", "a.example.net", "127.0.0.1")
    assert bundle.key_type == "rsa-2048"
    assert bundle.sans == ("www.example.com", "*.example.net", "127.0.0.1")
    assert bundle.not_before.tzinfo is not None
    assert bundle.not_after > datetime.now(UTC)
    assert len(bundle.fingerprint_sha256) == 64
    assert bundle.chain_pem.startswith(b"-----BEGIN CERTIFICATE-----")
    assert bundle.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    assert not bundle.is_expired()
    # Picklable (sent to workers), and repr never shows the key.
    assert pickle.loads(pickle.dumps(bundle)) == bundle
    assert "PRIVATE" not in repr(bundle)


@pytest.mark.parametrize(
    ("key_type", "expected"),
    [("ecdsa-p256", "ecdsa-p256"), ("ecdsa-p384", "ecdsa-p384")],
)
def test_key_types(ca: LocalCA, tmp_path: Path, key_type: str, expected: str) -> None:
    cert_file, key_file = _issue_files(ca, tmp_path, "x", ["x.example.com"], key_type=key_type)
    assert load_bundle("x", ["x.example.com"], cert_file, key_file).key_type == expected


def test_chain_with_intermediates_and_legacy_key_format(ca: LocalCA, tmp_path: Path) -> None:
    issued = ca.issue(["x.example.com"])
    # A chain file with junk text and the CA as "intermediate", and a SEC1 key.
    sec1 = serialization.load_pem_private_key(issued.key_pem, None).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    cert_file, key_file = _write(
        tmp_path, "x", b"subject=...\n" + issued.chain_pem + ca.cert_pem, sec1
    )
    bundle = load_bundle("x", ["x.example.com"], cert_file, key_file)
    assert bundle.chain_pem == issued.chain_pem + ca.cert_pem
    assert bundle.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")


def test_combined_file(ca: LocalCA, tmp_path: Path) -> None:
    issued = ca.issue(["x.example.com"])
    both = tmp_path / "both.pem"
    both.write_bytes(issued.key_pem + issued.chain_pem)
    assert load_bundle("x", ["x.example.com"], both, both).key_type == "ecdsa-p256"


def test_expired_certificate_loads(ca: LocalCA, tmp_path: Path) -> None:
    start = datetime(2020, 1, 1, tzinfo=UTC)
    cert_file, key_file = _issue_files(
        ca, tmp_path, "old", ["old.example.com"], not_before=start, not_after=start + timedelta(1)
    )
    bundle = load_bundle("old", ["old.example.com"], cert_file, key_file)
    assert bundle.is_expired()


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(CertificateError, match=r"cannot read .*missing\.pem: No such file"):
        load_bundle("x", [], missing, missing)


def test_no_certificate(ca: LocalCA, tmp_path: Path) -> None:
    issued = ca.issue(["x.example.com"])
    cert_file, key_file = _write(tmp_path, "x", issued.key_pem, issued.key_pem)
    with pytest.raises(CertificateError, match="no PEM certificate found in"):
        load_bundle("x", [], cert_file, key_file)


def test_unreadable_key(ca: LocalCA, tmp_path: Path) -> None:
    issued = ca.issue(["x.example.com"])
    cert_file, key_file = _write(tmp_path, "x", issued.chain_pem, b"not a key")
    with pytest.raises(CertificateError, match="no readable PEM private key"):
        load_bundle("x", [], cert_file, key_file)


def test_encrypted_key(ca: LocalCA, tmp_path: Path) -> None:
    issued = ca.issue(["x.example.com"])
    encrypted = serialization.load_pem_private_key(issued.key_pem, None).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    cert_file, key_file = _write(tmp_path, "x", issued.chain_pem, encrypted)
    with pytest.raises(CertificateError, match="is encrypted"):
        load_bundle("x", [], cert_file, key_file)


def test_key_of_another_certificate(ca: LocalCA, tmp_path: Path) -> None:
    one, two = ca.issue(["x.example.com"]), ca.issue(["x.example.com"])
    cert_file, key_file = _write(tmp_path, "x", one.chain_pem, two.key_pem)
    with pytest.raises(
        CertificateError,
        match=f"the private key in {key_file} does not belong to the certificate in {cert_file}$",
    ):
        load_bundle("x", [], cert_file, key_file)


def test_leaf_not_first_gets_a_hint(ca: LocalCA, tmp_path: Path) -> None:
    issued = ca.issue(["x.example.com"])
    cert_file, key_file = _write(tmp_path, "x", ca.cert_pem + issued.chain_pem, issued.key_pem)
    with pytest.raises(CertificateError, match="put the leaf first"):
        load_bundle("x", [], cert_file, key_file)


@pytest.mark.parametrize(
    "domain", ["foo.example.com", "example.net", "a.b.example.net", "10.0.0.1", "*.example.com"]
)
def test_uncovered_domain(ca: LocalCA, tmp_path: Path, domain: str) -> None:
    cert_file, key_file = _issue_files(ca, tmp_path, "www", ["www.example.com", "*.example.net"])
    with pytest.raises(
        CertificateError,
        match=rf"certificate 'www' does not cover '{domain.replace('*', '[*]')}' "
        r"\(its names: www\.example\.com, \*\.example\.net\)",
    ):
        load_bundle("www", ["www.example.com", domain], cert_file, key_file)


def test_san_covers_rules() -> None:
    sans = ("www.example.com", "*.example.net", "10.0.0.1", "2001:db8::1")
    assert san_covers(sans, "WWW.Example.com.")
    assert san_covers(sans, "a.example.net")
    assert san_covers(sans, "*.example.net")
    assert not san_covers(sans, "example.net")
    assert not san_covers(sans, "a.b.example.net")
    assert not san_covers(sans, "*.example.com")
    assert san_covers(sans, "10.0.0.1")
    assert san_covers(sans, "2001:db8:0::1")
    assert not san_covers(sans, "10.0.0.2")


# --- config-level checks -----------------------------------------------------


def _config(
    tmp_path: Path,
    certificates: list[CertificateConfig],
    listeners: list[ListenerConfig] | None = None,
) -> Config:
    if listeners is None:
        listeners = [ListenerConfig("https", (BindAddress("127.0.0.1", 8443),), "https")]
    return Config(
        source=tmp_path / "tlsgate.toml",
        node=NodeConfig("test", tmp_path),
        store=StoreConfig(f"sqlite:///{tmp_path}/state.db"),
        log=LogConfig(),
        certificates=tuple(certificates),
        listeners=tuple(listeners),
        routes=(),
        backends=(),
    )


def _files_cert(
    ca: LocalCA, tmp_path: Path, name: str, names: list[str], **kwargs: object
) -> CertificateConfig:
    cert_file, key_file = _issue_files(ca, tmp_path, name, names, **kwargs)
    return CertificateConfig(name, tuple(names), "files", cert_file, key_file)


def test_check_clean_config(ca: LocalCA, tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        [
            _files_cert(ca, tmp_path, "www-ec", ["www.example.com"]),
            _files_cert(ca, tmp_path, "www-rsa", ["www.example.com"], key_type="rsa-2048"),
            CertificateConfig("acme", ("api.example.com",), "acme"),
        ],
    )
    assert check_certificate_files(config) == []
    bundles = load_bundles(config)
    assert [b.name for b in bundles] == ["www-ec", "www-rsa"]
    assert all(isinstance(b, CertificateBundle) for b in bundles)


def test_check_maps_each_failure_to_its_key(ca: LocalCA, tmp_path: Path) -> None:
    good = _files_cert(ca, tmp_path, "good", ["good.example.com"])
    other = ca.issue(["bad-key.example.com"])
    cert_file, _ = _issue_files(ca, tmp_path, "bad-key", ["bad-key.example.com"])
    _, other_key = _write(tmp_path, "other", other.chain_pem, other.key_pem)
    narrow_files = _issue_files(ca, tmp_path, "narrow", ["narrow.example.com"])
    start = datetime(2020, 1, 1, tzinfo=UTC)
    config = _config(
        tmp_path,
        [
            good,
            CertificateConfig(
                "missing", ("m.example.com",), "files", tmp_path / "nope.pem", tmp_path / "nope.key"
            ),
            CertificateConfig("bad-key", ("bad-key.example.com",), "files", cert_file, other_key),
            CertificateConfig(
                "narrow", ("narrow.example.com", "wide.example.com"), "files", *narrow_files
            ),
            _files_cert(
                ca,
                tmp_path,
                "old",
                ["old.example.com"],
                not_before=start,
                not_after=start + timedelta(1),
            ),
            CertificateConfig("nofiles", ("n.example.com",), "files"),
        ],
    )
    problems = check_certificate_files(config)
    by_path = {p.key_path: p for p in problems}
    assert sorted(by_path) == [
        "certificates[1].cert_file",
        "certificates[2].key_file",
        "certificates[3].domains",
        "certificates[4].cert_file",
        "certificates[5].cert_file",
        "certificates[5].key_file",
    ]
    assert all(p.file == str(tmp_path / "tlsgate.toml") for p in problems)
    assert "No such file" in by_path["certificates[1].cert_file"].message
    assert "does not belong" in by_path["certificates[2].key_file"].message
    assert "does not cover 'wide.example.com'" in by_path["certificates[3].domains"].message
    assert by_path["certificates[4].cert_file"].message.endswith(
        "expired on 2020-01-02 00:00:00 UTC"
    )
    assert "required" in by_path["certificates[5].key_file"].message
    with pytest.raises(CertificateError, match="No such file"):
        load_bundles(config)


def test_not_yet_valid_is_a_problem(ca: LocalCA, tmp_path: Path) -> None:
    start = datetime.now(UTC) + timedelta(days=2)
    config = _config(
        tmp_path, [_files_cert(ca, tmp_path, "future", ["f.example.com"], not_before=start)]
    )
    [problem] = check_certificate_files(config)
    assert "is not valid before" in problem.message


def test_same_key_type_for_one_name_on_one_listener_is_ambiguous(
    ca: LocalCA, tmp_path: Path
) -> None:
    certs = [
        _files_cert(ca, tmp_path, "a", ["www.example.com", "a.example.com"]),
        _files_cert(ca, tmp_path, "b", ["www.example.com", "b.example.com"]),
        _files_cert(ca, tmp_path, "c", ["www.example.com"], key_type="rsa-2048"),
    ]
    [problem] = check_certificate_files(_config(tmp_path, certs))
    assert problem.key_path == "certificates[1].domains"
    assert "'a' and 'b' both have a ecdsa-p256 key for 'www.example.com'" in problem.message
    assert "listener(s) 'https'" in problem.message
    # Served on different listeners: no clash.
    listeners = [
        ListenerConfig("one", (BindAddress("127.0.0.1", 1),), "https", certificates=("a", "c")),
        ListenerConfig("two", (BindAddress("127.0.0.1", 2),), "https", certificates=("b",)),
        ListenerConfig("tcp", (BindAddress("127.0.0.1", 3),), "tls-passthrough"),
    ]
    assert check_certificate_files(_config(tmp_path, certs, listeners)) == []
