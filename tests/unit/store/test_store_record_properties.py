"""Store records under arbitrary bytes and keys: only the documented answers and errors.

The fuzz target ``fuzz/targets/fuzz_store.py`` runs the same properties under
coverage guidance; these run them on every test run against the real
SQLite store: sealed values of any shape, SealedStore reads of records other
writers left (plain, sealed, damaged), keys of any code points through
``put``/``get``/``list`` (whose prefix ranges must match ``str.startswith``
in SQLite's own order), and the JSON records the certificate code keeps in
the store, read back by ``tlsgate certs list``.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tlsgate.certs import inventory
from tlsgate.config.loader import parse_config
from tlsgate.errors import StoreError
from tlsgate.store import Entry, SealedStore, SqliteStore, is_sealed, seal, unseal
from tlsgate.store.sqlite import _prefix_range

T = TypeVar("T")
KEY = bytes(range(32))
MAGIC = b"tgs1"

# text SQLite can store: no surrogates (not UTF-8 encodable), no NUL in keys
key_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=12)
keys = key_text.filter(bool)
sealed_names = st.sampled_from(["a.key", "certs/www/ecdsa-p256/privkey.key", "x/.key"])
names = sealed_names | keys


def run(coro: Awaitable[T]) -> T:
    async def body() -> T:
        return await coro

    return asyncio.run(body())


# --- seal / unseal ----------------------------------------------------------------------------


@given(
    value=st.binary(max_size=200) | st.binary(max_size=100).map(lambda b: MAGIC + b),
    aad=st.binary(max_size=16),
)
def test_unseal_of_any_bytes_is_bytes_or_a_store_error(value: bytes, aad: bytes) -> None:
    with pytest.raises(StoreError) as caught:  # forging AES-GCM by chance is not an option
        unseal(KEY, value, aad=aad)
    assert ("not sealed" in str(caught.value)) == (not is_sealed(value))


@given(
    plaintext=st.binary(max_size=300),
    aad=st.binary(max_size=16),
    cut=st.integers(min_value=0, max_value=1000),
)
def test_a_truncated_sealed_value_never_unseals(plaintext: bytes, aad: bytes, cut: int) -> None:
    sealed = seal(KEY, plaintext, aad=aad)
    with pytest.raises(StoreError):
        unseal(KEY, sealed[: cut % len(sealed)], aad=aad)


@given(key=st.binary(max_size=64).filter(lambda k: len(k) != 32))
def test_a_store_key_of_the_wrong_size_is_a_store_error(key: bytes) -> None:
    with pytest.raises(StoreError, match="32 bytes"):
        seal(key, b"x")
    with pytest.raises(StoreError, match="32 bytes"):
        unseal(key, seal(KEY, b"x"))


# --- the SQLite store: records and key ranges -------------------------------------------------


@st.composite
def scripts(draw: st.DrawFn) -> list[tuple[str, str, bytes]]:
    """Puts through the sealing wrapper ("sealed") and behind its back ("raw")."""
    ops = st.tuples(st.sampled_from(["sealed", "raw", "raw-magic"]), names, st.binary(max_size=64))
    return draw(st.lists(ops, min_size=1, max_size=8))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=scripts(), prefix=key_text)
def test_sealed_store_reads_are_what_was_put_or_a_store_error(
    script: list[tuple[str, str, bytes]], prefix: str
) -> None:
    async def body(directory: str) -> None:
        inner = SqliteStore(Path(directory) / "state.db")
        store = SealedStore(inner, KEY)
        expected: dict[str, bytes | None] = {}  # None: unreadable or sealed by someone else
        try:
            for how, name, value in script:
                if how == "sealed":
                    await store.put(name, value)
                    expected[name] = value
                else:
                    raw = MAGIC + value if how == "raw-magic" else value
                    await inner.put(name, raw)
                    looks_sealed = name.endswith(".key") and is_sealed(raw)
                    expected[name] = None if looks_sealed else raw
            for name, want in expected.items():
                try:
                    entry = await store.get(name)
                except StoreError:
                    assert want is None, f"{name}: a StoreError for a readable record"
                    continue
                assert entry is not None
                assert want is None or entry.value == want
            listed = await inner.list(prefix)
            assert [e.key for e in listed] == sorted(k for k in expected if k.startswith(prefix))
        finally:
            await store.close()

    with tempfile.TemporaryDirectory() as directory:
        run(body(directory))


@given(prefix=key_text, key=key_text)
def test_prefix_ranges_match_startswith(prefix: str, key: str) -> None:
    """SQLite compares TEXT as UTF-8 bytes and sorts every TEXT before any BLOB."""
    low, high = _prefix_range(prefix)
    for k in (key, prefix + key, prefix[:-1] + key):
        inside = k.encode() >= low.encode() and (
            isinstance(high, bytes) or k.encode() < high.encode()
        )
        assert inside == k.startswith(prefix), (prefix, k, high)


# --- JSON records of the certificate code, as `tlsgate certs list` reads them ------------------

ACME = """
[node]
name = "t"
data_dir = "/var/lib/tlsgate"

[acme]
directory = "https://acme.invalid/dir"
key_types = ["ecdsa-p256"]

[[certificates]]
name = "www"
domains = ["www.example.com"]
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
CONFIG = parse_config(ACME, Path("/etc/tlsgate/t.toml"))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(["renew_at", "last_error", "failures", "retry_at", "updated", "x"]),
            children,
            max_size=5,
        )
    ),
    max_leaves=10,
)
meta_records = json_values.map(lambda v: json.dumps(v).encode()) | st.binary(max_size=64)


class _Records:
    def __init__(self, meta: bytes) -> None:
        self.meta = meta

    async def get(self, key: str) -> Entry | None:
        return Entry(key, self.meta, 1) if key.endswith("/meta.json") else None


@given(meta=meta_records)
def test_certs_list_reads_any_meta_json(meta: bytes) -> None:
    """A meta.json the manager did not write (damaged, foreign, older) is "no metadata"."""
    infos = run(inventory.list_certificates(CONFIG, _Records(meta)))  # type: ignore[arg-type]
    (state,) = infos[0].keys
    assert state.status == "not issued"
    assert isinstance(state.last_error, str)
    assert isinstance(state.failures, int)
