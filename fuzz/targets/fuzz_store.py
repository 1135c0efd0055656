"""Fuzz target: the store's records -- sealed values, SealedStore reads, key ranges.

How this works: the first input byte chooses what the rest is.

* **unseal** (0): arbitrary bytes read back as a sealed value, under the right
  key and an ``aad`` from the input. ``unseal`` returns bytes or raises
  :class:`StoreError` -- "not sealed" exactly when ``is_sealed`` says so --
  and nothing else (no ``ValueError`` from AES-GCM, no ``IndexError``).
* **seal** (1): a plaintext and ``aad`` from the input round-trip; flipping
  any one bit past the magic (the position and bit from the input),
  truncating, or changing the ``aad`` is a StoreError, never a wrong
  plaintext.
* **key** (2): a store key of the wrong length is a StoreError in ``seal``,
  ``unseal`` and ``SealedStore``, never cryptography's ``ValueError``.
* **records** (3): a :class:`SealedStore` over an in-memory store gets a
  script of puts through the wrapper, raw puts of arbitrary bytes behind its
  back (what another process, an older version or a damaged file may have
  left), gets and lists. Every read is the plaintext put through the wrapper,
  the raw bytes as they are (an unsealed name, or a sealed name whose value
  does not look sealed), or a StoreError; nothing else.
* **prefix** (4): ``sqlite._prefix_range``'s promise, for a prefix and keys
  made of arbitrary code points: ``low <= key < high`` in SQLite's order (TEXT
  as UTF-8 bytes, every TEXT before every BLOB) exactly when
  ``key.startswith(prefix)``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

from fuzz.targets._fuzzcommon import Reader, check, instrumented, main

with instrumented(__name__):
    from tlsgate.errors import StoreError
    from tlsgate.store import base
    from tlsgate.store.base import Entry, Lease, SealedStore, WatchEvent, is_sealed, seal, unseal
    from tlsgate.store.sqlite import _prefix_range

_T = TypeVar("_T")

KEY = bytes(range(32))
_NAMES = ("certs/www/ecdsa-p256/privkey.key", "certs/www/ecdsa-p256/chain.pem", "a.key", "b")


def _unsealed(sealed: bytes, aad: bytes, key: bytes = KEY) -> bytes | StoreError:
    try:
        return unseal(key, sealed, aad=aad)
    except StoreError as exc:
        return exc


class _MemoryStore:
    """Enough of a Store for SealedStore: a dict, and coroutines that never wait."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.revision = 0

    async def get(self, key: str) -> Entry | None:
        value = self.data.get(key)
        return None if value is None else Entry(key, value, self.revision)

    async def put(self, key: str, value: bytes, *, lease: Lease | None = None) -> int:
        self.revision += 1
        self.data[key] = bytes(value)
        return self.revision

    async def put_all(self, items: Sequence[tuple[str, bytes]]) -> int:
        for key, value in items:
            await self.put(key, value)
        return self.revision

    async def list(self, prefix: str) -> list[Entry]:
        return [Entry(k, v, 1) for k, v in sorted(self.data.items()) if k.startswith(prefix)]

    async def delete(self, key: str) -> bool:
        return self.data.pop(key, None) is not None

    def watch(  # pragma: no cover - not used
        self, prefix: str, *, start_revision: int | None = None
    ) -> AsyncGenerator[WatchEvent, None]:
        raise NotImplementedError

    async def lock(  # pragma: no cover - not used
        self, name: str, *, ttl: float
    ) -> AbstractAsyncContextManager[None]:
        raise NotImplementedError

    async def grant_lease(self, ttl: float) -> Lease:  # pragma: no cover - not used
        raise NotImplementedError

    async def keep_alive(self, lease: Lease) -> None:  # pragma: no cover - not used
        raise NotImplementedError

    async def revoke(self, lease: Lease) -> None:  # pragma: no cover - not used
        raise NotImplementedError

    async def close(self) -> None:
        pass


def _now(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run a coroutine that never suspends (the memory store's), without an event loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("the memory store suspended")


def _unseal_any(r: Reader) -> None:
    aad = r.chunk(64)
    sealed = r.rest()
    result = _unsealed(sealed, aad)
    if isinstance(result, StoreError):
        not_sealed = "not sealed" in str(result)
        check(not_sealed == (not is_sealed(sealed)), f"{result} for is_sealed={is_sealed(sealed)}")


def _seal_round_trip(r: Reader) -> None:
    aad = r.chunk(64)
    where, bit = r.int_below(1 << 16), r.byte() & 7
    plaintext = r.rest()
    sealed = seal(KEY, plaintext, aad=aad)
    check(is_sealed(sealed), "seal's output is not is_sealed")
    check(_unsealed(sealed, aad) == plaintext, "seal/unseal lost the plaintext")
    index = 4 + where % (len(sealed) - 4)  # past the magic, which only says "sealed"
    tampered = bytearray(sealed)
    tampered[index] ^= 1 << bit
    for bad, what in (
        (bytes(tampered), f"bit {bit} of byte {index} flipped"),
        (sealed[:index], f"truncated to {index} bytes"),
    ):
        check(isinstance(_unsealed(bad, aad), StoreError), f"{what}: still unseals")
    check(isinstance(_unsealed(sealed, aad + b"x"), StoreError), "another aad unseals")


def _wrong_key(r: Reader) -> None:
    key = r.chunk(64)
    if len(key) == 32:
        key = key[:31]
    for attempt in (
        lambda: seal(key, b"x"),
        lambda: unseal(key, seal(KEY, b"x")),
        lambda: SealedStore(_MemoryStore(), key),
    ):
        try:
            attempt()
        except StoreError:
            continue
        check(False, f"a {len(key)}-byte store key was accepted")


def _records(r: Reader) -> None:
    inner = _MemoryStore()
    store = SealedStore(inner, KEY)
    through: dict[str, bytes] = {}  # what was put through the wrapper, by name
    while r.remaining:
        op = r.byte() % 4
        name = r.pick(_NAMES) if r.flag() else r.chunk(16).decode("utf-8", "replace") or "k"
        if op == 0:
            value = r.chunk()
            _now(store.put(name, value))
            through[name] = value
        elif op == 1:
            raw = r.chunk()
            if r.flag() and name in inner.data:  # a damaged copy of what is there
                raw = inner.data[name][: len(raw)] + raw[len(inner.data[name]) :]
            _now(inner.put(name, raw))
            through.pop(name, None)
        else:
            prefix = name[: r.int_below(len(name) + 1)] if op == 3 else name
            try:
                entries = (
                    _now(store.list(prefix))
                    if op == 3
                    else [e for e in [_now(store.get(name))] if e]
                )
            except StoreError:
                continue
            for entry in entries:
                raw = inner.data[entry.key]
                if entry.key in through:
                    check(entry.value == through[entry.key], f"{entry.key}: not what was put")
                elif not (base.is_private_key_path(entry.key) and is_sealed(raw)):
                    check(entry.value == raw, f"{entry.key}: plain bytes changed on the way")


def _prefixes(r: Reader) -> None:
    def text(count: int) -> str:
        chars = []
        for _ in range(count):
            cp = int.from_bytes(r.take(3), "big") % 0x110000 if r.flag() else 0x61 + r.byte() % 4
            chars.append(chr(0xE000 if 0xD800 <= cp <= 0xDFFF else cp))
        return "".join(chars)

    prefix = text(r.int_below(6))
    low, high = _prefix_range(prefix)
    keys = [text(r.int_below(8)) for _ in range(8)]
    keys += [prefix, prefix + "\U0010ffff", prefix[:-1]]
    for key in keys:
        inside = key >= low and (isinstance(high, bytes) or key < high)
        check(inside == key.startswith(prefix), f"prefix {prefix!r}: key {key!r} inside={inside}")


def test_one_input(data: bytes) -> None:
    r = Reader(data)
    mode = r.byte() % 5
    (_unseal_any, _seal_round_trip, _wrong_key, _records, _prefixes)[mode](r)


if __name__ == "__main__":
    main(test_one_input)
