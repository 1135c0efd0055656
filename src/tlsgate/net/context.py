"""What the data plane needs from the process that runs it.

``net`` sits below the worker in the layering: its connections never import
``tlsgate.worker``. They are handed a :class:`ServeContext` instead -- the
loop, the deadline wheel, the epoll set of raw sockets, the access log, the
connection registry used for draining, the ACME challenge answers -- which
``Worker`` implements and a unit test can fake in a few lines.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Coroutine, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from tlsgate.logs import AccessLog
from tlsgate.net.deadlines import Deadlines
from tlsgate.net.poller import Poller

if TYPE_CHECKING:
    from tlsgate.net.runtime import Runtime


class Drainable(Protocol):
    """A connection the worker can drain (graceful shutdown) or abort."""

    def drain(self) -> None: ...
    def abort(self) -> None: ...


class ServeContext(Protocol):
    """The services a worker gives its connections."""

    loop: asyncio.AbstractEventLoop
    slot: int
    draining: bool
    deadlines: Deadlines
    poller: Poller
    access: AccessLog
    connections: set[Drainable]

    @property
    def acme_http01(self) -> Mapping[str, str]:
        """RFC 8555 §8.3 key authorizations by token, pushed by the supervisor."""
        ...

    @property
    def runtime(self) -> Runtime | None:
        """The current runtime graph (for fallback backends looked up by name)."""
        ...

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a task that is kept referenced until it ends."""
        ...

    def acme_tls_alpn01_context(self, name: str) -> ssl.SSLContext | None:
        """The RFC 8737 challenge context for ``name``, while one is pending."""
        ...

    def connection_closed(self) -> None:
        """A connection left ``connections`` (the worker may finish draining)."""
        ...
