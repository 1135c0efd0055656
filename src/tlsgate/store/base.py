"""The state store contract, and sealing of private keys at rest.

The store is a small key-value space shared by every process of a node (and,
with etcd, by every node of a fleet), modelled on etcd and certmagic's
``Storage``/``Locker``:

* keys are ``/``-separated paths (``certs/www/ecdsa-p256/chain.pem``), values bytes;
* every change gets a store-wide, strictly increasing **revision**; ``put``
  returns it and each :class:`Entry` carries the revision of its last change;
* ``watch(prefix)`` streams :class:`WatchEvent` s in revision order, also for
  changes made by other processes; with ``start_revision`` it replays from
  there first (list, then watch from ``max(entry.revision) + 1``, misses nothing);
* a **lease** is a TTL that keys can be attached to; when it expires or is
  revoked the keys are deleted (and watchers see ``delete`` events). Agents
  register app servers this way: a dead agent's servers disappear by themselves;
* a **lock** is mutual exclusion across processes and nodes that expires
  ``ttl`` seconds after its holder stops renewing it (it crashed), so work
  follows the certmagic discipline: lock -> re-check the store -> work ->
  release in ``finally``.

Private keys are sealed before they reach the store: :class:`SealedStore`
wraps any store and encrypts values whose key ends in ``.key`` with
AES-256-GCM, binding each ciphertext to its key name (AAD) so a sealed value
copied under another name does not decrypt.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tlsgate import keyfiles
from tlsgate.errors import StoreError

__all__ = [
    "PRIVATE_KEY_SUFFIX",
    "Entry",
    "Lease",
    "SealedStore",
    "Store",
    "WatchEvent",
    "is_private_key_path",
    "json_object",
    "load_or_create_store_key",
    "seal",
    "unseal",
]

log = logging.getLogger(__name__)

PRIVATE_KEY_SUFFIX = ".key"
"""Values stored under a key ending in this are sealed by :class:`SealedStore`."""

_SEAL_MAGIC = b"tgs1"  # format tag + version: magic || nonce(12) || ciphertext || tag(16)
_NONCE_SIZE = 12
_STORE_KEY_SIZE = 32  # AES-256


@dataclass(frozen=True)
class Entry:
    """A key, its value and the revision of its last change."""

    key: str
    value: bytes
    revision: int


@dataclass(frozen=True)
class WatchEvent:
    """One change. ``value`` is None for deletes (including lease expiry)."""

    kind: Literal["put", "delete"]
    key: str
    value: bytes | None
    revision: int


@dataclass(frozen=True)
class Lease:
    """A time-to-live that keys can be attached to; see :meth:`Store.grant_lease`."""

    id: int
    ttl: float


@runtime_checkable
class Store(Protocol):
    """The state store. All methods raise :class:`~tlsgate.errors.StoreError` on failure."""

    async def get(self, key: str) -> Entry | None:
        """The entry under ``key``, or None."""
        ...

    async def put(self, key: str, value: bytes, *, lease: Lease | None = None) -> int:
        """Create or replace ``key``; attach it to ``lease`` if given.

        Returns:
            The new revision.

        Raises:
            StoreError: also when ``lease`` has expired or was revoked.
        """
        ...

    async def put_all(self, items: Sequence[tuple[str, bytes]]) -> int:
        """Create or replace every ``(key, value)`` of ``items`` at once, or none of them.

        For records that only make sense together (a certificate chain and its
        private key): a failure part way (disk full, a lock held too long, the
        process killed) must not leave a new chain beside an old key. Each key
        gets its own revision, in ``items`` order, and a watcher sees them all in
        one batch of events.

        Returns:
            The revision of the last item.

        Raises:
            StoreError: then nothing was changed. Also for an empty ``items``.
        """
        ...

    async def delete(self, key: str) -> bool:
        """Delete ``key``. Returns whether it existed."""
        ...

    async def list(self, prefix: str) -> list[Entry]:
        """Every entry whose key starts with ``prefix``, sorted by key."""
        ...

    def watch(
        self, prefix: str, *, start_revision: int | None = None
    ) -> AsyncGenerator[WatchEvent, None]:
        """Changes to keys under ``prefix``, in revision order, forever.

        Args:
            start_revision: replay changes from this revision on (inclusive);
                None = only changes made after this call.

        The generator raises StoreError if the changes it needs were compacted
        away (it fell too far behind) or the store fails, and ends when the
        store is closed. Close it when done (``async with
        contextlib.aclosing(store.watch(...)) as events:``): it holds a
        connection or a server-side watch.
        """
        ...

    async def lock(self, name: str, *, ttl: float) -> AbstractAsyncContextManager[None]:
        """Wait until the lock ``name`` is ours, then return a context manager that releases it.

        Usage: ``async with await store.lock("certs/www", ttl=60): ...``.
        While held the lock is renewed in the background; if the holder dies
        it expires ``ttl`` seconds after the last renewal and another waiter
        takes it over. Not reentrant. Bound the wait with ``asyncio.timeout``.
        """
        ...

    async def grant_lease(self, ttl: float) -> Lease:
        """A new lease expiring ``ttl`` seconds from now unless kept alive."""
        ...

    async def keep_alive(self, lease: Lease) -> None:
        """Push the lease's expiry to ``ttl`` seconds from now.

        Raises:
            StoreError: the lease already expired or was revoked (its keys are gone).
        """
        ...

    async def revoke(self, lease: Lease) -> None:
        """End the lease now, deleting its keys. Revoking an ended lease does nothing."""
        ...

    async def close(self) -> None:
        """Release resources; further calls raise StoreError."""
        ...


# --- sealing ---------------------------------------------------------------


def seal(key: bytes, plaintext: bytes, *, aad: bytes = b"") -> bytes:
    """Encrypt and authenticate ``plaintext`` with AES-256-GCM under ``key``.

    A fresh random 96-bit nonce per message (NIST SP 800-38D 8.2.2 allows 2**32
    random-nonce messages per key, far more than a certificate store writes).

    Args:
        key: 32 bytes, see :func:`load_or_create_store_key`.
        aad: data bound to the ciphertext but not encrypted (the store key name).
    """
    nonce = os.urandom(_NONCE_SIZE)
    return _SEAL_MAGIC + nonce + _aead(key).encrypt(nonce, plaintext, aad)


def unseal(key: bytes, sealed: bytes, *, aad: bytes = b"") -> bytes:
    """Reverse :func:`seal`.

    Raises:
        StoreError: not a sealed value, a different key or ``aad``, or tampered with.
    """
    if not is_sealed(sealed):
        raise StoreError("the value is not sealed (was it written without the store key?)")
    nonce = sealed[len(_SEAL_MAGIC) : len(_SEAL_MAGIC) + _NONCE_SIZE]
    body = sealed[len(_SEAL_MAGIC) + _NONCE_SIZE :]
    try:
        return _aead(key).decrypt(nonce, body, aad)
    except InvalidTag as exc:
        raise StoreError(
            "a sealed value failed authentication: it was modified, moved to another "
            "key, or sealed with a different store key"
        ) from exc


def is_sealed(value: bytes) -> bool:
    """Whether ``value`` looks like the output of :func:`seal`."""
    return value.startswith(_SEAL_MAGIC) and len(value) >= len(_SEAL_MAGIC) + _NONCE_SIZE + 16


def _aead(key: bytes) -> AESGCM:
    if len(key) != _STORE_KEY_SIZE:
        raise StoreError(f"the store key must be {_STORE_KEY_SIZE} bytes, not {len(key)}")
    return AESGCM(key)


def load_or_create_store_key(path: Path) -> bytes:
    """Read the 32-byte store key from ``path``, creating it (0600) if missing.

    Creation is race-free: several workers starting at once all end up with
    the same key. The parent directory is created (0700) if missing. A key
    file readable by group or others is used but logged as a warning.

    Raises:
        StoreError: the file cannot be read or created, or is not 32 bytes.
    """
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not path.exists():
            keyfiles.write_private_exclusive(path, os.urandom(_STORE_KEY_SIZE))
        data = path.read_bytes()
        mode = path.stat().st_mode
    except OSError as exc:
        raise StoreError(
            f"cannot read or create the store key {path}: {exc.strerror or exc}"
        ) from exc
    if len(data) != _STORE_KEY_SIZE:
        raise StoreError(
            f"the store key {path} must hold exactly {_STORE_KEY_SIZE} random bytes, "
            f"it holds {len(data)} (create one with 'head -c 32 /dev/urandom > {path}')"
        )
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("the store key %s is accessible by group/others; chmod 600 it", path)
    return data


def json_object(value: bytes) -> dict[str, Any] | None:
    """A record holding a JSON object, decoded; None when the bytes are not one (not
    UTF-8, not JSON, another JSON type, or nested too deeply to decode).

    Records such as ``meta.json`` may be damaged or written by another version; a
    reader treats None as "no record" instead of failing on it.
    """
    try:
        loaded = json.loads(value)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    return loaded if isinstance(loaded, dict) else None


def is_private_key_path(key: str) -> bool:
    """The default rule for what :class:`SealedStore` seals: names ending in ``.key``."""
    return key.endswith(PRIVATE_KEY_SUFFIX)


class SealedStore:
    """A :class:`Store` that seals some values before they reach ``inner``.

    Values under keys for which ``sealed(key)`` is true (default: ending in
    ``.key``) are encrypted on ``put`` and decrypted on ``get``/``list``/
    ``watch``; everything else passes through. Reading a sealed value that does
    not authenticate raises StoreError; reading an unsealed value under a
    sealed name (written before encryption was configured) returns it as is.
    """

    def __init__(
        self,
        inner: Store,
        key: bytes,
        *,
        sealed: Callable[[str], bool] = is_private_key_path,
    ) -> None:
        _aead(key)  # validate the length now, not on the first put
        self._inner = inner
        self._key = key
        self._sealed = sealed

    @property
    def inner(self) -> Store:
        return self._inner

    def _open(self, key: str, value: bytes) -> bytes:
        if self._sealed(key) and is_sealed(value):
            return unseal(self._key, value, aad=key.encode())
        return value

    async def get(self, key: str) -> Entry | None:
        entry = await self._inner.get(key)
        if entry is None:
            return None
        return Entry(entry.key, self._open(entry.key, entry.value), entry.revision)

    async def put(self, key: str, value: bytes, *, lease: Lease | None = None) -> int:
        if self._sealed(key):
            value = seal(self._key, value, aad=key.encode())
        return await self._inner.put(key, value, lease=lease)

    async def put_all(self, items: Sequence[tuple[str, bytes]]) -> int:
        sealed = [
            (key, seal(self._key, value, aad=key.encode()) if self._sealed(key) else value)
            for key, value in items
        ]
        return await self._inner.put_all(sealed)

    async def delete(self, key: str) -> bool:
        return await self._inner.delete(key)

    async def list(self, prefix: str) -> list[Entry]:
        return [
            Entry(e.key, self._open(e.key, e.value), e.revision)
            for e in await self._inner.list(prefix)
        ]

    def watch(
        self, prefix: str, *, start_revision: int | None = None
    ) -> AsyncGenerator[WatchEvent, None]:
        # Start the inner watch now, so "changes after this call" holds here too.
        return self._unsealed(self._inner.watch(prefix, start_revision=start_revision))

    async def _unsealed(
        self, events: AsyncGenerator[WatchEvent, None]
    ) -> AsyncGenerator[WatchEvent, None]:
        try:
            async for event in events:
                if event.value is None:
                    yield event
                else:
                    value = self._open(event.key, event.value)
                    yield WatchEvent(event.kind, event.key, value, event.revision)
        finally:
            await events.aclose()

    async def lock(self, name: str, *, ttl: float) -> AbstractAsyncContextManager[None]:
        return await self._inner.lock(name, ttl=ttl)

    async def grant_lease(self, ttl: float) -> Lease:
        return await self._inner.grant_lease(ttl)

    async def keep_alive(self, lease: Lease) -> None:
        await self._inner.keep_alive(lease)

    async def revoke(self, lease: Lease) -> None:
        await self._inner.revoke(lease)

    async def close(self) -> None:
        await self._inner.close()
