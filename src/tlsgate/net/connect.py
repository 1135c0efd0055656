"""Connecting to a server of a backend: pick, connect, retry elsewhere, eject.

One loop serves HTTP upstreams and L4 sessions alike. A server that fails to
connect is recorded (passive ejection after ``max_fails`` consecutive
failures, for ``fail_timeout``) and excluded, and another is picked, up to
``retries`` times; nothing has been sent yet, so retrying is always safe. A
connect that fails in tlsgate itself (no file descriptor or memory left, as in
a connection flood) is not the server's fault: it is neither recorded nor
retried, and the request gets a 503.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from tlsgate.errors import (
    LocalResourceError,
    NoServerAvailable,
    UpstreamConnectError,
    UpstreamError,
    UpstreamTimeout,
)

if TYPE_CHECKING:
    from tlsgate.net.runtime import BackendRuntime, ServerRuntime

log = logging.getLogger("tlsgate.connect")

T = TypeVar("T")

# A connect that fails with one of these failed in this process, not at the server.
_LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def _reason(exc: OSError) -> str:
    """The errno's own words ("Connection refused"), not asyncio's "Connect call failed"."""
    if isinstance(exc, ssl.SSLError) or not exc.errno:
        return str(exc)
    return os.strerror(exc.errno)


async def connect_to_backend(
    backend: BackendRuntime,
    client_key: bytes,
    tried: set[str],
    connect: Callable[[ServerRuntime], Awaitable[T]],
    *,
    first: ServerRuntime | None = None,
    reuse: Callable[[ServerRuntime], T | None] | None = None,
) -> tuple[ServerRuntime, T, bool]:
    """Connect to some server of ``backend``; returns (server, connection, reused).

    Args:
        client_key: what ip_hash hashes (the client address).
        tried: servers already tried for this request; updated in place.
        connect: opens a new connection to one server; may raise OSError/ssl.SSLError
            and must clean up after itself when cancelled (the timeout cancels it).
        first: a server already picked (no idle connection was available for it).
        reuse: returns an idle connection to a server, if it has one.

    Raises:
        NoServerAvailable: no server of the backend is available.
        UpstreamTimeout, UpstreamConnectError: the last failure, once retries are spent.
    """
    cfg = backend.config
    last: UpstreamError | None = None
    server = first
    while True:
        if server is None:
            server = backend.pick(client_key, frozenset(tried))
            if server is None:
                raise last or NoServerAvailable(
                    f"no server of backend {backend.name!r} is available"
                )
            if reuse is not None and (idle := reuse(server)) is not None:
                return server, idle, True
        server.state.active += 1
        try:
            async with asyncio.timeout(cfg.connect_timeout):
                conn = await connect(server)
        except TimeoutError:
            last = connect_timeout(server, cfg.connect_timeout)
        except (OSError, ssl.SSLError) as exc:
            last = connect_error(server, exc)
        except asyncio.CancelledError:  # the request went away
            server.state.active -= 1
            raise
        else:
            server.state.active -= 1
            server.state.record_success()
            return server, conn, False
        server.state.active -= 1
        if not connect_failed(backend, server, last, asyncio.get_running_loop().time(), tried):
            raise last
        server = None


def connect_failed(
    backend: BackendRuntime,
    server: ServerRuntime,
    error: UpstreamError,
    now: float,
    tried: set[str],
) -> bool:
    """Record a failed connect to ``server`` (passive ejection), log it, and say
    whether another server may be tried (``retries`` not yet spent)."""
    cfg = backend.config
    if isinstance(error, LocalResourceError):
        log.warning("backend %s: %s; the server is not blamed", backend.name, error)
        return False
    ejected = server.state.record_failure(
        now, max_fails=cfg.max_fails, fail_timeout=cfg.fail_timeout
    )
    log.warning(
        "backend %s: %s%s",
        backend.name,
        error,
        f"; server ejected for {cfg.fail_timeout:g}s" if ejected else "",
    )
    tried.add(server.key)
    return len(tried) <= cfg.retries


def connect_error(server: ServerRuntime, exc: OSError) -> UpstreamConnectError:
    """The error for a connect to ``server`` that failed with ``exc``."""
    if exc.errno in _LOCAL_ERRNOS and not isinstance(exc, ssl.SSLError):
        return LocalResourceError(
            f"connecting to {server.key} failed in tlsgate itself: {_reason(exc)}"
        )
    return UpstreamConnectError(f"connecting to {server.key} failed: {_reason(exc)}")


def connect_timeout(server: ServerRuntime, timeout: float) -> UpstreamTimeout:
    """The error for a connect to ``server`` that took longer than ``timeout``."""
    return UpstreamTimeout(f"connecting to {server.key} took longer than {timeout:g}s")
