"""The worker's runtime graph: the validated config turned into live objects in one step.

How this works: ``Runtime.build`` makes listeners (with their route tables and
certificate caches), backends (with balancers, per-server state and keep-alive
pools) from a ``Config`` plus the certificate bundles the supervisor pushed.
A reload builds a whole new ``Runtime`` and the worker swaps one reference;
connections already running keep the objects they started with, so nothing in
flight sees a half-updated graph (uvicorn ``Config.load``, certmagic). Health
state carries over by (backend, server address).
"""

from __future__ import annotations

import ipaddress
import ssl
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tlsgate.certs.bundle import CertificateBundle
from tlsgate.certs.cache import CertificateCache, make_client_context
from tlsgate.config.model import BackendConfig, Config, IPNetwork, ListenerConfig
from tlsgate.errors import CertificateError
from tlsgate.routing.balance import Balancer, ServerState, make_balancer
from tlsgate.routing.hosts import RouteTable

if TYPE_CHECKING:
    from tlsgate.net.upstream import UpstreamConnection


@dataclass(eq=False)
class ServerRuntime:
    """One app server of one backend, in this worker: balancing state and idle connections."""

    state: ServerState
    backend: BackendRuntime
    idle: deque[UpstreamConnection] = field(default_factory=deque)

    @property
    def key(self) -> str:
        return self.state.key

    def take_idle(self) -> UpstreamConnection | None:
        """Most recently used first: it is the least likely to have been closed by the server."""
        while self.idle:
            conn = self.idle.pop()
            conn.cancel_idle_timer()
            if conn.usable():
                return conn
            conn.abort()
        return None

    def close_idle(self) -> None:
        while self.idle:
            self.idle.pop().abort()


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

    def pick(self, client_key: bytes, exclude: frozenset[str]) -> ServerRuntime | None:
        state = self.balancer.pick(client_key, time.monotonic(), exclude)
        return None if state is None else self.by_key[state.key]

    def retire(self) -> None:
        """This backend left the active graph: close its idle connections, pool no more."""
        self.retired = True
        for server in self.servers:
            server.close_idle()


@dataclass(eq=False)
class ListenerRuntime:
    config: ListenerConfig
    routes: RouteTable[BackendRuntime]
    certificates: CertificateCache | None
    trusted: tuple[IPNetwork, ...]
    connections: set[object] = field(default_factory=set)

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
        server = ServerRuntime(state=st, backend=backend)
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
    ) -> Runtime:
        """Make every runtime object for ``config``.

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

    def retire(self) -> None:
        for b in self.backends.values():
            b.retire()
