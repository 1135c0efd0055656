"""Atomic, private file writes for key material and certificates.

A reader (nginx, an app server, another tlsgate worker) must never see a
half-written key, and a key must never exist on disk, even for a moment, with
permissions wider than intended. So every write goes to a fresh temporary file
in the destination directory, created with ``O_EXCL`` and the final mode
already set, then is flushed with ``fsync``, renamed over the destination
(``rename(2)`` is atomic within one file system) and the directory is synced so
the rename itself survives a crash.

``OSError`` is deliberately not mapped here: the caller knows whether a failed
write is a certificate problem, a store problem or a CLI error.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

__all__ = ["write_private", "write_private_exclusive", "write_public"]


def write_private(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Atomically replace ``path`` with ``data``, readable only by its owner.

    Args:
        path: destination; its directory must exist.
        data: the whole new content.
        mode: permission bits of the new file (exactly these, whatever the umask).

    Raises:
        OSError: the directory is missing or not writable, the disk is full, ...
            ``path`` is then left as it was.
    """
    tmp = _write_temp(path, data, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    _fsync_dir(path.parent)


def write_public(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``, mode 0644 (certificates, CA bundles).

    Raises:
        OSError: as for :func:`write_private`.
    """
    write_private(path, data, mode=0o644)


def write_private_exclusive(path: Path, data: bytes, *, mode: int = 0o600) -> bool:
    """Create ``path`` with ``data`` only if it does not exist yet, atomically.

    Several processes may race to create the same file (e.g. workers creating
    the store encryption key on first start); exactly one wins and the others
    see the winner's complete content. ``link(2)`` gives the create-if-absent
    step; the content is complete and synced before the name appears.

    Returns:
        True if this call created the file, False if it already existed (it is
        then left untouched).

    Raises:
        OSError: as for :func:`write_private`.
    """
    tmp = _write_temp(path, data, mode)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        _unlink_quietly(tmp)
    _fsync_dir(path.parent)
    return True


def _write_temp(path: Path, data: bytes, mode: int) -> Path:
    """Write ``data`` to a new synced temp file beside ``path``; return its path."""
    directory = path.parent
    tmp = directory / f".{path.name}.{secrets.token_hex(8)}.tmp"
    # O_EXCL: never follow or reuse a file an attacker planted under this name.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags, mode & 0o600)  # never wider than owner-only while being written
    try:
        # The umask may have narrowed the mode further; set exactly what was asked.
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(tmp)
        raise
    os.close(fd)
    return tmp


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
