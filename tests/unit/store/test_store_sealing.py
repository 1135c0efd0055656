"""seal/unseal, the store key file, and SealedStore over a plain store."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tlsgate.errors import StoreError
from tlsgate.store import (
    SealedStore,
    SqliteStore,
    is_private_key_path,
    is_sealed,
    load_or_create_store_key,
    seal,
    unseal,
)

KEY = bytes(range(32))


@given(plaintext=st.binary(max_size=4096), aad=st.binary(max_size=64))
def test_seal_roundtrip(plaintext: bytes, aad: bytes) -> None:
    sealed = seal(KEY, plaintext, aad=aad)
    assert is_sealed(sealed)
    assert unseal(KEY, sealed, aad=aad) == plaintext
    if len(plaintext) >= 8:
        assert plaintext not in sealed


def test_sealing_is_randomized() -> None:
    assert seal(KEY, b"same") != seal(KEY, b"same")


@given(plaintext=st.binary(min_size=1, max_size=256), data=st.data())
def test_any_tampering_is_detected(plaintext: bytes, data: st.DataObject) -> None:
    sealed = bytearray(seal(KEY, plaintext, aad=b"k"))
    index = data.draw(st.integers(min_value=4, max_value=len(sealed) - 1))  # past the magic
    bit = data.draw(st.integers(min_value=0, max_value=7))
    sealed[index] ^= 1 << bit
    with pytest.raises(StoreError, match="failed authentication"):
        unseal(KEY, bytes(sealed), aad=b"k")


def test_wrong_key_aad_truncation_and_plain_values() -> None:
    sealed = seal(KEY, b"secret", aad=b"certs/www/privkey.key")
    with pytest.raises(StoreError, match="failed authentication"):
        unseal(os.urandom(32), sealed, aad=b"certs/www/privkey.key")
    with pytest.raises(StoreError, match="failed authentication"):
        unseal(KEY, sealed, aad=b"certs/evil/privkey.key")  # moved under another name
    with pytest.raises(StoreError, match="failed authentication"):
        unseal(KEY, sealed[:-1], aad=b"certs/www/privkey.key")
    with pytest.raises(StoreError, match="not sealed"):
        unseal(KEY, b"plain text", aad=b"")
    with pytest.raises(StoreError, match="32 bytes"):
        seal(b"short", b"x")


def test_load_or_create_store_key(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "tlsgate" / "store.key"
    key = load_or_create_store_key(path)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_store_key(path) == key
    path.write_bytes(b"too short")
    with pytest.raises(StoreError, match="exactly 32 random bytes"):
        load_or_create_store_key(path)
    with pytest.raises(StoreError, match="cannot read or create"):
        load_or_create_store_key(tmp_path / "etc" / "tlsgate" / "store.key" / "nested")


def test_is_private_key_path() -> None:
    assert is_private_key_path("certs/www/ecdsa-p256/privkey.key")
    assert not is_private_key_path("certs/www/ecdsa-p256/chain.pem")
    assert not is_private_key_path("certs/www.key/chain.pem")


def test_sealed_store_over_a_plain_store(tmp_path: Path) -> None:
    async def body() -> None:
        inner = SqliteStore(tmp_path / "state.db")
        store = SealedStore(inner, KEY)
        try:
            await store.put("certs/www/privkey.key", b"secret")
            await store.put("certs/www/chain.pem", b"public")
            raw = await inner.get("certs/www/privkey.key")
            assert raw is not None
            assert is_sealed(raw.value)
            assert b"secret" not in raw.value
            assert (await inner.get("certs/www/chain.pem")).value == b"public"  # type: ignore[union-attr]
            assert [e.value for e in await store.list("certs/www/")] == [b"public", b"secret"]

            # Written before encryption was configured: returned as is.
            await inner.put("certs/old/privkey.key", b"legacy plain")
            assert (await store.get("certs/old/privkey.key")).value == b"legacy plain"  # type: ignore[union-attr]

            # Copying a sealed value under another name does not decrypt.
            await inner.put("certs/evil/privkey.key", raw.value)
            with pytest.raises(StoreError, match="failed authentication"):
                await store.get("certs/evil/privkey.key")

            # Another store key cannot read it.
            other = SealedStore(inner, os.urandom(32))
            with pytest.raises(StoreError, match="failed authentication"):
                await other.get("certs/www/privkey.key")
        finally:
            await store.close()

    asyncio.run(body())


def test_sealed_store_validates_the_key() -> None:
    with pytest.raises(StoreError, match="32 bytes"):
        SealedStore(None, b"short")  # type: ignore[arg-type]
