"""SIGHUP on a node with ACME certificates, and certificates put in its store (issue 8).

A reload builds a new certificate manager from the store before anything in
service changes; the issued certificate must stay in service (no placeholder,
no new order). A certificate in the store that cannot be served (an expired
one another node put there, say) must not replace it, neither live nor on the
next SIGHUP.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from peers.test_peer_acme import NAMES, MakeNode, fingerprint, is_pebble, make_node
from tlsgate.certs.inventory import node_store
from tlsgate.config.loader import load_config

__all__ = ["make_node"]  # the fixture, shared with test_peer_acme


def expired_certificate() -> tuple[bytes, bytes]:
    """A self-signed certificate for NAMES that expired in 2020, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAMES[0])])
    start = datetime(2020, 1, 1, tzinfo=UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in NAMES]), False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


async def put_in_store(config_path: str, chain: bytes, key: bytes) -> None:
    """What another node's manager writes after issuing: chain, sealed key, meta.json last."""
    config = load_config(config_path)
    async with node_store(config, unseal=True) as store:
        assert store is not None
        prefix = "certs/www/ecdsa-p256"
        await store.put(f"{prefix}/chain.pem", chain)
        await store.put(f"{prefix}/privkey.key", key)
        await store.put(f"{prefix}/meta.json", json.dumps({"last_error": ""}).encode())


def test_reload_and_store_updates_keep_the_issued_certificate(make_node: MakeNode) -> None:
    node = make_node()
    node.wait_issued()
    node.wait_served(is_pebble, "the Pebble certificate to be served")
    issued = fingerprint(node.served())
    orders = node.pebble.orders()

    node.gate.reload()
    assert fingerprint(node.served()) == issued
    assert node.pebble.orders() == orders

    asyncio.run(put_in_store(str(node.gate.config_path), *expired_certificate()))
    node.gate.wait_for_log("refusing the certificate in the store", 1, 20)
    log = node.gate.error_log_text()
    assert "expired on 2020-01-02 00:00:00 UTC" in log
    assert "stays in service" in log
    assert fingerprint(node.served()) == issued

    node.gate.reload()
    assert "keeping the certificate in service" in node.gate.error_log_text()
    assert fingerprint(node.served()) == issued
    assert node.pebble.orders() == orders
