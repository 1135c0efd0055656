"""The certificate inventory (``tlsgate certs``) against a real sqlite store, no network.

The store is populated the way ``tlsgate.certs.manager`` writes it (sealed
private keys, ``meta.json``), the config is loaded from a TOML file, and a
"node" for ``renew`` is a task that watches the store as the manager does.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import Awaitable, Iterator
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from tlsgate import cli
from tlsgate.ca import LocalCA
from tlsgate.certs import inventory as inv
from tlsgate.certs.manager import RENEW_REQUEST
from tlsgate.config.loader import load_config
from tlsgate.config.model import Config
from tlsgate.errors import CertificateError, ConfigError, StoreError
from tlsgate.store import SealedStore, SqliteStore, Store, load_or_create_store_key

T = TypeVar("T")
DIRECTORY = "https://acme.invalid/dir"
NAMES = ("www.example.test", "example.test")
NOW = datetime.now(UTC)


def fp(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(20):
            return await coro

    return asyncio.run(bounded())


@dataclass
class Node:
    """A config file, its data dir and a PKI to fill the store with."""

    dir: Path
    config_path: Path
    config: Config
    ca: LocalCA

    @property
    def db(self) -> Path:
        return self.dir / "data" / "state.db"

    @property
    def store_key(self) -> Path:
        return self.dir / "data" / "store.key"

    def sealed_store(self) -> Store:
        return SealedStore(SqliteStore(self.db), load_or_create_store_key(self.store_key))


@pytest.fixture
def node(tmp_path: Path) -> Node:
    ca = LocalCA.create("inventory tests CA")
    files = ca.issue(["files.example.test"], key_type="ecdsa-p384")
    (tmp_path / "files.pem").write_bytes(files.chain_pem)
    (tmp_path / "files.key").write_bytes(files.key_pem)
    text = f"""
[node]
name = "t"
data_dir = "{tmp_path / "data"}"

[acme]
directory = "{DIRECTORY}"
key_types = ["ecdsa-p256", "rsa-2048"]

[[certificates]]
name = "www"
domains = {json.dumps(list(NAMES))}
issuer = "acme"

[[certificates]]
name = "later"
domains = ["later.example.test"]
issuer = "acme"

[[certificates]]
name = "files"
domains = ["files.example.test"]
cert_file = "{tmp_path / "files.pem"}"
key_file = "{tmp_path / "files.key"}"

[[listeners]]
name = "https"
bind = ["127.0.0.1:18443"]
protocol = "https"
backend = "app"

[[backends]]
name = "app"
servers = ["127.0.0.1:9001"]
"""
    path = tmp_path / "tlsgate.toml"
    path.write_text(text)
    return Node(tmp_path, path, load_config(str(path)), ca)


@dataclass
class Stored:
    chain_pem: bytes
    key_pem: bytes
    renew_at: datetime

    @property
    def leaf(self) -> x509.Certificate:
        return x509.load_pem_x509_certificates(self.chain_pem)[0]


async def put_issued(
    store: Store,
    ca: LocalCA,
    name: str,
    key_type: str,
    *,
    last_error: str = "",
    failures: int = 0,
    valid_days: int = 90,
) -> Stored:
    """What the manager stores after issuing: chain (leaf + CA), sealed key, meta.json."""
    issued = ca.issue(list(NAMES), key_type=key_type, valid_days=valid_days)  # type: ignore[arg-type]
    chain = issued.cert_pem + ca.cert_pem
    prefix = f"certs/{name}/{key_type}"
    await store.put(f"{prefix}/chain.pem", chain)
    await store.put(f"{prefix}/privkey.key", issued.key_pem)
    renew_at = NOW + timedelta(days=60)
    await put_meta(store, prefix, renew_at=renew_at, last_error=last_error, failures=failures)
    return Stored(chain, issued.key_pem, renew_at)


async def put_meta(
    store: Store,
    prefix: str,
    *,
    renew_at: datetime | None = None,
    last_error: str = "",
    failures: int = 0,
    retry_at: datetime | None = None,
) -> None:
    meta = {
        "renew_at": renew_at.isoformat() if renew_at else None,
        "last_error": last_error,
        "failures": failures,
        "retry_at": retry_at.isoformat() if retry_at else None,
        "updated": datetime.now(UTC).isoformat(),
    }
    await store.put(f"{prefix}/meta.json", json.dumps(meta).encode())


def populate(node: Node) -> dict[str, Stored]:
    """www issued (both key types); later failing, never issued."""

    async def body() -> dict[str, Stored]:
        store = node.sealed_store()
        try:
            out = {
                kt: await put_issued(store, node.ca, "www", kt) for kt in ("ecdsa-p256", "rsa-2048")
            }
            for kt in ("ecdsa-p256", "rsa-2048"):
                await put_meta(
                    store,
                    f"certs/later/{kt}",
                    last_error="unauthorized for later.example.test (http-01): 404",
                    failures=3,
                    retry_at=NOW + timedelta(minutes=4),
                )
            return out
        finally:
            await store.close()

    return run(body())


async def listing(node: Node) -> list[inv.CertificateInfo]:
    async with inv.node_store(node.config, unseal=False) as store:
        return await inv.list_certificates(node.config, store, now=NOW)


# --------------------------------------------------------------------------- list / show


def test_list_reads_store_and_files(node: Node) -> None:
    stored = populate(node)
    infos = run(listing(node))
    assert [i.name for i in infos] == ["www", "later", "files"]
    www, later, files = infos

    assert www.issuer == "acme"
    assert www.domains == NAMES
    assert [k.key_type for k in www.keys] == ["ecdsa-p256", "rsa-2048"]
    for k in www.keys:
        leaf = stored[k.key_type].leaf
        assert k.status == "valid"
        assert k.not_after == leaf.not_valid_after_utc
        assert k.renew_at == stored[k.key_type].renew_at
        assert k.fingerprint_sha256 == fp(leaf)
        assert k.serial == f"{leaf.serial_number:x}"
        assert k.sans == NAMES
        assert k.issuer_dn == "CN=inventory tests CA"
        assert k.chain_subjects == ("CN=www.example.test", "CN=inventory tests CA")
        assert k.last_error == ""
        days = k.days_left(NOW)
        assert days is not None
        assert 89.9 < days < 90.1  # NOW is taken at import, before the issue

    assert [k.status for k in later.keys] == ["not issued", "not issued"]
    assert all(k.failures == 3 and "unauthorized" in k.last_error for k in later.keys)
    assert all(k.retry_at == NOW + timedelta(minutes=4) for k in later.keys)
    assert later.keys[0].days_left() is None

    (fk,) = files.keys
    assert files.issuer == "files"
    assert fk.key_type == "ecdsa-p384"
    assert fk.status == "valid"
    assert fk.source.endswith("files.pem")


def test_list_never_needs_the_store_key(node: Node) -> None:
    populate(node)
    node.store_key.unlink()
    infos = run(listing(node))
    assert infos[0].keys[0].status == "valid"
    assert not node.store_key.exists()


def test_list_without_a_store_creates_nothing(node: Node) -> None:
    infos = run(listing(node))
    assert [k.status for k in infos[0].keys] == ["not issued", "not issued"]
    assert not node.db.exists()
    assert not node.store_key.exists()


def test_list_expired_and_unusable(node: Node) -> None:
    async def body() -> None:
        store = node.sealed_store()
        try:
            await put_issued(store, node.ca, "www", "ecdsa-p256", valid_days=1)
            await store.put("certs/www/rsa-2048/chain.pem", b"not a certificate")
        finally:
            await store.close()

    run(body())

    async def later() -> list[inv.CertificateInfo]:
        async with inv.node_store(node.config, unseal=False) as store:
            return await inv.list_certificates(node.config, store, now=NOW + timedelta(days=2))

    www = run(later())[0]
    assert www.keys[0].status == "expired"
    days = www.keys[0].days_left(NOW + timedelta(days=2))
    assert days is not None
    assert days < 0
    assert www.keys[1].status == "unusable"
    assert "no readable certificate" in www.keys[1].last_error


def test_json_shape(node: Node) -> None:
    populate(node)
    doc = [i.to_json(NOW) for i in run(listing(node))]
    json.dumps(doc)  # serializable
    www = doc[0]
    assert www["key_types"] == ["ecdsa-p256", "rsa-2048"]
    key = www["keys"][0]
    for field in (
        "status",
        "not_after",
        "days_left",
        "renew_at",
        "last_error",
        "failures",
        "retry_at",
        "fingerprint_sha256",
        "serial",
        "issuer",
        "sans",
        "chain",
    ):
        assert field in key
    assert doc[1]["keys"][0]["failures"] == 3


def test_describe_unknown_name_is_a_config_error(node: Node) -> None:
    with pytest.raises(ConfigError) as info:
        run(inv.describe_certificate(node.config, "nope", None))
    assert "no certificate named 'nope'" in str(info.value)
    assert "'www'" in str(info.value)


def test_table_and_details(node: Node) -> None:
    stored = populate(node)
    infos = run(listing(node))
    table = inv.format_table(infos, NOW).splitlines()
    assert table[0].split()[:4] == ["NAME", "ISSUER", "KEY", "STATUS"]
    rows = [line.split() for line in table[1:]]
    assert [(r[0], r[2], r[3]) for r in rows[:2]] == [
        ("www", "ecdsa-p256", "valid"),
        ("www", "rsa-2048", "valid"),
    ]
    leaf = stored["ecdsa-p256"].leaf
    assert fp(leaf)[:16] in table[1]
    assert "[3 failure(s), next attempt" in table[3]
    assert "unauthorized for later.example.test" in table[3]
    assert table[5].startswith("files ")

    text = inv.format_details(infos[0], NOW)
    assert "CN=www.example.test <- CN=inventory tests CA" in text
    assert f"0x{leaf.serial_number:x}" in text
    assert "www.example.test, example.test" in text
    failing = inv.format_details(infos[1], NOW)
    assert "last error:" in failing
    assert "next attempt:" in failing


# --------------------------------------------------------------------------- renew


async def fake_node(store: Store, ca: LocalCA, *, fail: str = "") -> dict[str, Any]:
    """Answer one renew request the way the manager does; returns the request."""
    seen: dict[str, Any] = {}
    async with aclosing(store.watch("certs/")) as events:
        async for event in events:
            if event.kind == "put" and event.key.endswith("/" + RENEW_REQUEST):
                seen.update(json.loads(event.value or b"{}"))
                name = event.key.split("/")[1]
                for kt in ("ecdsa-p256", "rsa-2048"):
                    if fail:
                        await put_meta(store, f"certs/{name}/{kt}", last_error=fail, failures=1)
                    else:
                        await put_issued(store, ca, name, kt)
                await store.delete(event.key)
                return seen
    return seen


def test_renew_waits_for_the_node_and_reports_the_new_certificate(node: Node) -> None:
    before = populate(node)

    async def body() -> tuple[inv.RenewalResult, dict[str, Any]]:
        async with inv.node_store(node.config, unseal=False) as store:
            assert store is not None
            other = node.sealed_store()  # the node has its own connection
            try:
                answering = asyncio.create_task(fake_node(other, node.ca))
                await asyncio.sleep(0.05)
                result = await inv.request_renewal(node.config, "www", store, force=True, wait=10)
                return result, await answering
            finally:
                await other.close()

    result, request = run(body())
    assert request == {"force": True}
    assert result.picked_up
    assert result.ok
    assert result.renewed() == ["ecdsa-p256", "rsa-2048"]
    old = fp(before["ecdsa-p256"].leaf)
    assert result.before[0].fingerprint_sha256 == old
    assert result.after[0].fingerprint_sha256 != old


def test_renew_reports_the_nodes_error(node: Node) -> None:
    populate(node)

    async def body() -> inv.RenewalResult:
        async with inv.node_store(node.config, unseal=False) as store:
            assert store is not None
            answering = asyncio.create_task(
                fake_node(store, node.ca, fail="rateLimited: too many certificates")
            )
            await asyncio.sleep(0.05)
            result = await inv.request_renewal(node.config, "www", store, wait=10)
            await answering
            return result

    result = run(body())
    assert result.picked_up
    assert not result.ok
    assert result.renewed() == []
    assert all("rateLimited" in k.last_error for k in result.after)


def test_renew_without_a_node_times_out_and_withdraws_the_request(node: Node) -> None:
    populate(node)

    async def body() -> tuple[inv.RenewalResult, bool]:
        async with inv.node_store(node.config, unseal=False) as store:
            assert store is not None
            result = await inv.request_renewal(node.config, "www", store, wait=0.5)
            left = await store.get(f"certs/www/{RENEW_REQUEST}")
            return result, left is not None

    result, left = run(body())
    assert not result.picked_up
    assert not result.ok
    assert result.waited >= 0.5
    assert not left


def test_renew_is_for_acme_certificates_only(node: Node) -> None:
    populate(node)

    async def body() -> None:
        async with inv.node_store(node.config, unseal=False) as store:
            assert store is not None
            await inv.request_renewal(node.config, "files", store, wait=1)

    with pytest.raises(ConfigError) as info:
        run(body())
    assert 'issuer = "acme"' in str(info.value)
    assert "certificates[2].issuer" in str(info.value)


# --------------------------------------------------------------------------- revoke


def test_revoke_checks_before_talking_to_the_ca(node: Node) -> None:
    async def attempt(name: str, reason: str = "unspecified") -> None:
        store = node.sealed_store()
        try:
            await inv.revoke_certificate(node.config, name, store, reason=reason)
        finally:
            await store.close()

    with pytest.raises(ConfigError, match="only"):
        run(attempt("files"))
    with pytest.raises(ConfigError, match="not a revocation reason"):
        run(attempt("www", "because"))
    with pytest.raises(CertificateError, match="has not been issued"):
        run(attempt("www"))
    populate(node)
    with pytest.raises(StoreError, match="no ACME account"):
        run(attempt("www"))


def test_revocation_reasons_match_rfc5280_and_the_cli() -> None:
    assert inv.REVOCATION_REASONS == {
        "unspecified": 0,
        "keyCompromise": 1,
        "superseded": 4,
        "cessationOfOperation": 5,
    }
    assert tuple(inv.REVOCATION_REASONS) == cli._REVOCATION_REASONS


# --------------------------------------------------------------------------- export


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _public(pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(pem, password=None)
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture
def loose_umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def export(node: Node, name: str, out: Path) -> list[inv.ExportedFiles]:
    async def body() -> list[inv.ExportedFiles]:
        async with inv.node_store(node.config, unseal=True) as store:
            return await inv.export_certificate(node.config, name, store, out)

    return run(body())


def test_export_acme_unseals_one_directory_per_key_type(
    node: Node, tmp_path: Path, loose_umask: None
) -> None:
    stored = populate(node)
    out = tmp_path / "out"
    written = export(node, "www", out)
    assert [w.key_type for w in written] == ["ecdsa-p256", "rsa-2048"]
    for kt, s in stored.items():
        fullchain, privkey = out / kt / "fullchain.pem", out / kt / "privkey.pem"
        assert fullchain.read_bytes() == s.chain_pem
        assert _mode(fullchain) == 0o644
        assert _mode(privkey) == 0o600
        assert _public(privkey.read_bytes()) == s.leaf.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    assert not (out / "fullchain.pem").exists()


def test_export_files_certificate_goes_straight_into_out(node: Node, tmp_path: Path) -> None:
    out = tmp_path / "files-out"
    (written,) = export(node, "files", out)
    assert written.key_type == "ecdsa-p384"
    assert (out / "fullchain.pem").read_bytes() == (node.dir / "files.pem").read_bytes()
    assert _public((out / "privkey.pem").read_bytes()) == _public(
        (node.dir / "files.key").read_bytes()
    )
    assert _mode(out / "privkey.pem") == 0o600


def test_export_refuses_what_it_cannot_do(node: Node, tmp_path: Path) -> None:
    populate(node)
    with pytest.raises(CertificateError, match="not been issued"):
        export(node, "later", tmp_path / "x")
    with pytest.raises(ConfigError):
        export(node, "nope", tmp_path / "x")
    node.store_key.unlink()
    with pytest.raises(StoreError, match="does not exist"):
        export(node, "www", tmp_path / "x")
    assert not node.store_key.exists()  # never created by the CLI


def test_export_with_the_wrong_store_key_fails_cleanly(node: Node, tmp_path: Path) -> None:
    populate(node)
    node.store_key.write_bytes(os.urandom(32))
    with pytest.raises(StoreError, match="failed authentication"):
        export(node, "www", tmp_path / "x")


# --------------------------------------------------------------------------- the CLI


def test_cli_list_json_and_table(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    populate(node)
    assert cli.main(["certs", "list", "-c", str(node.config_path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in doc["certificates"]] == ["www", "later", "files"]
    assert cli.main(["certs", "list", "-c", str(node.config_path)]) == 0
    assert capsys.readouterr().out.startswith("NAME")
    assert cli.main(["certs", "show", "www", "-c", str(node.config_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "www"


def test_cli_exit_codes(node: Node, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    populate(node)
    c = ["-c", str(node.config_path)]
    assert cli.main(["certs", "show", "nope", *c]) == 2
    assert "no certificate named 'nope'" in capsys.readouterr().err
    assert cli.main(["certs", "renew", "files", *c]) == 2
    assert cli.main(["certs", "revoke", "files", *c]) == 2
    assert cli.main(["certs", "list", "-c", str(tmp_path / "missing.toml")]) == 2
    capsys.readouterr()
    assert cli.main(["certs", "renew", "www", "--wait", "0.3", *c]) == 1
    assert "no running node picked up" in capsys.readouterr().err
    assert cli.main(["certs", "export", "later", "--out", str(tmp_path / "o"), *c]) == 1
    assert "not been issued" in capsys.readouterr().err
    assert cli.main(["certs", "export", "www", "--out", str(tmp_path / "o"), *c]) == 0
    assert (tmp_path / "o" / "rsa-2048" / "privkey.pem").exists()
    with pytest.raises(SystemExit) as exc:
        cli.main(["certs", "renew", "www", "--wait", "-1", *c])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        cli.main(["certs", "revoke", "www", "--reason", "because", *c])
    assert exc.value.code == 2


def test_cli_checks_the_name_before_the_store(node: Node, tmp_path: Path) -> None:
    c = ["-c", str(node.config_path)]
    assert cli.main(["certs", "renew", "nope", *c]) == 2  # no store yet
    populate(node)
    node.store_key.unlink()
    assert cli.main(["certs", "revoke", "nope", *c]) == 2  # no store key
    assert cli.main(["certs", "export", "nope", "--out", str(tmp_path / "o"), *c]) == 2
    assert cli.main(["certs", "export", "www", "--out", str(tmp_path / "o"), *c]) == 1
