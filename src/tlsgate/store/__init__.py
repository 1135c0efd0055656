"""The state store: one small interface (see ``base``) and its backends.

:func:`open_store` turns the ``[store] url`` into a backend and, when a key
file is configured, wraps it in :class:`SealedStore` so private keys are
encrypted at rest.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from tlsgate.errors import StoreError
from tlsgate.store.base import (
    PRIVATE_KEY_SUFFIX,
    Entry,
    Lease,
    SealedStore,
    Store,
    WatchEvent,
    is_private_key_path,
    is_sealed,
    load_or_create_store_key,
    seal,
    unseal,
)
from tlsgate.store.sqlite import SqliteStore

__all__ = [
    "PRIVATE_KEY_SUFFIX",
    "Entry",
    "Lease",
    "SealedStore",
    "SqliteStore",
    "Store",
    "WatchEvent",
    "is_private_key_path",
    "is_sealed",
    "load_or_create_store_key",
    "open_store",
    "seal",
    "unseal",
]


def open_store(url: str, *, key_file: Path | None = None) -> Store:
    """Open the store named by ``url``.

    Args:
        url: ``sqlite:///absolute/path.db`` (the embedded store). ``etcd://``
            URLs are recognised but the etcd backend is not part of this version.
        key_file: the 32-byte store key (created 0600 if missing). With it,
            values under keys ending in ``.key`` are sealed with AES-256-GCM;
            without it they are stored as given.

    Raises:
        StoreError: an unsupported or malformed URL, or the store cannot be opened.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("etcd", "etcds"):
        raise StoreError("the etcd store is not available in this version; use sqlite:///path")
    if scheme != "sqlite":
        raise StoreError(f"unsupported store URL {url!r}: use sqlite:///absolute/path/state.db")
    path = unquote(parts.path)
    if parts.netloc or not path.startswith("/") or parts.query or parts.fragment:
        raise StoreError(
            f"malformed store URL {url!r}: use sqlite:///absolute/path/state.db "
            "(three slashes, then an absolute path)"
        )
    # The key first: a key problem then leaves no database open behind it.
    key = None if key_file is None else load_or_create_store_key(key_file)
    store: Store = SqliteStore(Path(path))
    return store if key is None else SealedStore(store, key)
