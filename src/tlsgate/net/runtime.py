"""The worker's runtime graph: the validated config turned into live objects in one step.

How this works: ``Runtime.build`` makes listeners (with their route tables and
certificate caches), backends (with balancers, per-server state and keep-alive
pools) from a ``Config`` plus the certificate bundles the supervisor pushed.
A reload builds a whole new ``Runtime`` and the worker swaps one reference;
exchanges already running keep the objects they started with, so nothing in
flight sees a half-updated graph (uvicorn ``Config.load``, certmagic). An open
client connection moves to its listener's ``successor`` when its next request
begins, so that request is routed, limited and pooled by the new graph. Health
state carries over by (backend, server address).
"""

from __future__ import annotations

import ipaddress
import ssl
import time
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from tlsgate.certs.bundle import CertificateBundle
from tlsgate.certs.cache import CertificateCache, make_client_context
from tlsgate.certs.tickets import TicketKeys
from tlsgate.config.model import BackendConfig, Config, IPNetwork, ListenerConfig
from tlsgate.errors import CertificateError
from tlsgate.net.pool import Pool
from tlsgate.routing.balance import Balancer, ServerState, make_balancer
from tlsgate.routing.hosts import RouteTable

if TYPE_CHECKING:
    from tlsgate.net.upstream import UpstreamConnection

_NOTHING: frozenset[str] = frozenset()


class Cancellable(Protocol):
    """A connection still opening: a handshake task, a preamble reader."""

    def cancel(self) -> object: ...


class Resumable(Protocol):
    """An accept path that a full listener stopped (net.listener.Acceptor)."""

    def resume(self) -> None: ...


@dataclass(eq=False)
class ServerRuntime:
    """One app server of one backend, in this worker: balancing state and idle connections.

    It holds its backend's config, not the backend (which holds it): no reference
    cycle, so a retired graph is freed as soon as its last connection lets go.
    """

    state: ServerState
    config: BackendConfig
    pool: Pool
    retired: bool = False

    @property
    def key(self) -> str:
        return self.state.key

    def take_idle(self, now: float) -> UpstreamConnection | None:
        """A pooled keep-alive connection, most recently used first."""
        return self.pool.acquire(now)  # type: ignore[return-value]

    def close_idle(self) -> None:
        self.pool.close()


@dataclass(eq=False)
class BackendRuntime:
    config: BackendConfig
    servers: list[ServerRuntime]
    balancer: Balancer
    ssl_context: ssl.SSLContext | None
    by_key: dict[str, ServerRuntime]
    retired: bool = False

    @property
    def name(self) -> str:
        return self.config.name

    def pick(
        self, client_key: bytes, exclude: AbstractSet[str] = _NOTHING, now: float | None = None
    ) -> ServerRuntime | None:
        state = self.balancer.pick(client_key, time.monotonic() if now is None else now, exclude)
        return None if state is None else self.by_key[state.key]

    def retire(self) -> None:
        """This backend left the active graph: close its idle connections, pool no more."""
        self.retired = True
        for server in self.servers:
            server.retired = True
            server.close_idle()


@dataclass(eq=False)
class ListenerRuntime:
    config: ListenerConfig
    routes: RouteTable[BackendRuntime]
    certificates: CertificateCache | None
    trusted: tuple[IPNetwork, ...]
    connections: set[object] = field(default_factory=set)
    # accepted but not in ``connections`` yet (a TLS handshake, a PROXY header being
    # read), oldest first, with when each was accepted: they count against
    # max_connections too, and a full listener may shed the oldest (net.listener)
    opening: dict[Cancellable, float] = field(default_factory=dict)
    # the accept paths that stopped because the listener is full
    full: list[Resumable] = field(default_factory=list)
    # max_connections_per_client: connections open per client key (net.listener.client_key)
    per_client: dict[str, int] = field(default_factory=dict)
    # set when a reload retires this listener: the same-named listener of the new graph,
    # which this one's open keep-alive connections move to at their next request
    successor: ListenerRuntime | None = None

    def held(self) -> int:
        """Connections that count against ``max_connections``: open and opening."""
        return len(self.connections) + len(self.opening)

    def release(self, conn: object) -> None:
        """``conn`` closed: it leaves ``connections``, and a full listener accepts again."""
        self.connections.discard(conn)
        if self.full:
            self.resume_accepting()

    def opened(self, conn: Cancellable) -> None:
        """``conn`` is opening no more (it is in ``connections`` now, or gone)."""
        self.opening.pop(conn, None)
        if self.full:
            self.resume_accepting()

    def client_left(self, key: str) -> None:
        """A connection counted against ``max_connections_per_client`` closed."""
        n = self.per_client.get(key, 0) - 1
        if n > 0:
            self.per_client[key] = n
        else:
            self.per_client.pop(key, None)

    def resume_accepting(self) -> None:
        if self.held() < self.config.limits.max_connections:
            full, self.full = self.full, []
            for acceptor in full:
                acceptor.resume()

    @property
    def name(self) -> str:
        return self.config.name

    def is_trusted(self, ip: str) -> bool:
        if not self.trusted:
            return False
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.trusted)


def _build_backend(cfg: BackendConfig, health: dict[tuple[str, str], bool]) -> BackendRuntime:
    states = [
        ServerState(
            key=s.address,
            host=s.host,
            port=s.port,
            weight=s.weight,
            healthy=health.get((cfg.name, s.address), True),
        )
        for s in cfg.servers
    ]
    ctx: ssl.SSLContext | None = None
    if cfg.tls != "off":
        ctx = make_client_context(verify=cfg.tls == "verify", ca_file=cfg.ca_file)
    backend = BackendRuntime(
        config=cfg,
        servers=[],
        balancer=make_balancer(cfg.balance, states),
        ssl_context=ctx,
        by_key={},
    )
    for st in states:
        server = ServerRuntime(
            state=st, config=cfg, pool=Pool(cfg.max_idle_per_server, cfg.pool_idle_timeout)
        )
        backend.servers.append(server)
        backend.by_key[st.key] = server
    return backend


@dataclass(eq=False)
class Runtime:
    generation: int
    config: Config
    listeners: dict[str, ListenerRuntime]
    backends: dict[str, BackendRuntime]

    @classmethod
    def build(
        cls,
        generation: int,
        config: Config,
        bundles: tuple[CertificateBundle, ...],
        health: dict[tuple[str, str], bool],
        ticket_keys: TicketKeys | None = None,
    ) -> Runtime:
        """Make every runtime object for ``config``.

        ``ticket_keys``: the node's session ticket secret; each https listener's
        contexts get the key derived for its name (None: OpenSSL's own keys).

        Raises:
            CertificateError: an https listener has no usable certificate.
        """
        # one certificate name may have several bundles: ECDSA and RSA side by side
        by_name: dict[str, list[CertificateBundle]] = {}
        for bundle in bundles:
            by_name.setdefault(bundle.name, []).append(bundle)
        backends = {b.name: _build_backend(b, health) for b in config.backends}
        listeners: dict[str, ListenerRuntime] = {}
        for lc in config.listeners:
            entries = [
                (r.hosts, r.path_prefix, backends[r.backend])
                for r in config.routes
                if r.listener == lc.name
            ]
            default = backends[lc.backend] if lc.backend else None
            cache: CertificateCache | None = None
            if lc.protocol == "https":
                names = lc.certificates or tuple(by_name)
                served = [b for n in names for b in by_name.get(n, ())]
                if not served:
                    raise CertificateError(f"listener {lc.name!r} has no certificate to serve")
                cache = CertificateCache(
                    served,
                    default=lc.default_certificate,
                    min_version=lc.min_tls_version,
                    alpn=("http/1.1",),
                    ticket_key=ticket_keys.for_listener(lc.name) if ticket_keys else None,
                )
            listeners[lc.name] = ListenerRuntime(
                config=lc,
                routes=RouteTable(entries, default),
                certificates=cache,
                trusted=lc.trusted_proxies,
            )
        return cls(generation, config, listeners, backends)

    def set_health(self, backend: str, server: str, healthy: bool) -> None:
        b = self.backends.get(backend)
        if b is not None and (s := b.by_key.get(server)) is not None:
            s.state.healthy = healthy
            if not healthy:
                s.close_idle()

    def retire(self, successor: Runtime | None = None) -> None:
        """This graph left service: its backends pool no more, and, if ``successor``
        replaced it, each listener points to the new one of the same name and protocol
        so that its open connections' later requests use the new graph."""
        if successor is not None:
            for name, lr in self.listeners.items():
                new = successor.listeners.get(name)
                if new is not None and new.config.protocol == lr.config.protocol:
                    lr.successor = new
        for b in self.backends.values():
            b.retire()
