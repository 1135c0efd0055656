"""Load-balancing algorithms over per-worker server state.

How this works: each worker keeps one :class:`ServerState` per (backend,
server). The data plane bumps ``active`` around requests and reports connect
failures/successes (passive ejection); the supervisor pushes ``healthy`` from
active checks. A :class:`Balancer` built by :func:`make_balancer` only reads that
state to answer ``pick()``: one server that is available (healthy and not
ejected) and not in ``exclude`` (servers already tried for this request), or
None. Picks are O(number of servers) and allocate nothing, except random_two's
candidate list and ip_hash's first sight of a client (its ranking is cached).

Algorithms:

- ``round_robin``: nginx's smooth weighted round robin -- over any
  ``sum(weights)`` consecutive picks (while availability doesn't change) each
  server gets exactly ``weight``, interleaved (5,1,1 gives a a b a c a a), not in bursts.
- ``least_conn``: lowest ``active / weight``; the scan starts one server later
  on every pick, so ties rotate instead of piling onto the first server.
- ``ip_hash``: weighted rendezvous (highest-random-weight) hashing:
  ``score = -weight / ln(h)``, ``h`` in (0, 1) from a hash of the server key
  and the client key (blake2b + splitmix64) that is stable across processes
  (unlike ``hash()``, which is salted per process), so every worker sends a
  client to the same server;
  adding a server moves only the keys it now wins, about ``weight / total`` of
  them, and an unavailable server's keys fall to each key's next-best server.
- ``random_two``: the power of two choices -- two distinct random candidates,
  the one with the lower ``active / weight`` wins.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    # Type-only: importing tlsgate.config at run time would pull in its loader
    # (and socket) -- routing stays free of I/O modules.
    from tlsgate.config.model import BalanceAlgorithm

_NOTHING: frozenset[str] = frozenset()
_INV_2_53 = 1.0 / (1 << 53)


@dataclass(eq=False)
class ServerState:
    """One app server as one worker sees it. Mutable; compared by identity.

    Attributes:
        key: the ``host:port`` address string, unique within a backend.
        weight: relative share of traffic, >= 1.
        active: requests/connections in flight (maintained by the data plane).
        healthy: the active health check verdict (pushed by the supervisor).
        ejected_until: monotonic time until which passive ejection skips it.
        consecutive_failures: connect failures since the last success.
    """

    key: str
    host: str
    port: int
    weight: int = 1
    active: int = 0
    healthy: bool = True
    ejected_until: float = 0.0
    consecutive_failures: int = 0

    def __post_init__(self) -> None:
        if self.weight < 1:
            raise ValueError(f"server {self.key}: weight must be >= 1, not {self.weight}")

    def available(self, now: float) -> bool:
        """Healthy and not passively ejected at monotonic time ``now``."""
        return self.healthy and now >= self.ejected_until

    def record_failure(self, now: float, *, max_fails: int, fail_timeout: float) -> bool:
        """Count a failure; eject for ``fail_timeout`` once ``max_fails`` are consecutive.

        The count is not reset by an ejection, only by a success: a server that
        fails again right after its ejection ends is ejected again at once (it
        gets one probing request, as in nginx). ``max_fails <= 0`` disables
        ejection.

        Returns:
            True if this call ejected the server (False while already ejected).
        """
        self.consecutive_failures += 1
        if max_fails <= 0 or self.consecutive_failures < max_fails or now < self.ejected_until:
            return False
        self.ejected_until = now + fail_timeout
        return True

    def record_success(self) -> None:
        """Reset the failure streak (an ejection in progress still runs out)."""
        self.consecutive_failures = 0


class Balancer(Protocol):
    """Chooses a server for a request."""

    @property
    def servers(self) -> Sequence[ServerState]:
        """The servers this balancer chooses among, in configuration order."""
        ...

    def pick(
        self, client_key: bytes, now: float, exclude: AbstractSet[str] = _NOTHING
    ) -> ServerState | None:
        """An available server whose key is not in ``exclude``, or None.

        Args:
            client_key: identifies the client (used by ip_hash only), e.g. the
                packed client address.
            now: monotonic time, compared with ``ejected_until``.
            exclude: keys of servers not to pick (already tried).
        """
        ...


class _Base:
    def __init__(self, servers: Sequence[ServerState]) -> None:
        self._servers = tuple(servers)

    @property
    def servers(self) -> Sequence[ServerState]:
        return self._servers


class RoundRobin(_Base):
    """nginx's smooth weighted round robin (ngx_http_upstream_get_peer)."""

    def __init__(self, servers: Sequence[ServerState]) -> None:
        super().__init__(servers)
        self._current = [0] * len(self._servers)

    def pick(
        self, client_key: bytes, now: float, exclude: AbstractSet[str] = _NOTHING
    ) -> ServerState | None:
        # Every candidate gains its weight; the leader is picked and pays back
        # the total, so over sum(weights) picks each is chosen `weight` times.
        current = self._current
        best = -1
        total = 0
        for i, s in enumerate(self._servers):
            if not (s.healthy and now >= s.ejected_until) or (exclude and s.key in exclude):
                continue
            current[i] += s.weight
            total += s.weight
            if best < 0 or current[i] > current[best]:
                best = i
        if best < 0:
            return None
        current[best] -= total
        return self._servers[best]


class LeastConn(_Base):
    """Lowest active/weight; ties rotate."""

    def __init__(self, servers: Sequence[ServerState]) -> None:
        super().__init__(servers)
        self._start = 0

    def pick(
        self, client_key: bytes, now: float, exclude: AbstractSet[str] = _NOTHING
    ) -> ServerState | None:
        servers = self._servers
        n = len(servers)
        if n == 0:
            return None
        start = self._start
        self._start = (start + 1) % n
        best: ServerState | None = None
        for j in range(n):
            s = servers[(start + j) % n]
            if not (s.healthy and now >= s.ejected_until) or (exclude and s.key in exclude):
                continue
            # a.active/a.weight < b.active/b.weight, without floats
            if best is None or s.active * best.weight < best.active * s.weight:
                best = s
        return best


_MASK64 = (1 << 64) - 1


def _stable_hash64(data: bytes) -> int:
    """A 64-bit hash that every process computes alike (unlike the salted ``hash()``)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class IpHash(_Base):
    """Weighted rendezvous hashing of the client key.

    The per-(client, server) value is splitmix64's finalizer applied to
    ``blake2b(client) XOR blake2b(server key)``: one blake2b per client instead
    of one per server, and the finalizer's avalanche makes the servers' values
    independent enough for HRW. A client's full ranking of the servers is
    computed once and cached (bounded); a pick walks it to the first available
    server, which is also what makes a down server's clients fall to their
    next-best choice. Weights are read when a ranking is computed: change a
    weight by building a new balancer.
    """

    _CACHE_SIZE = 4096

    def __init__(self, servers: Sequence[ServerState]) -> None:
        super().__init__(servers)
        self._seeds = [_stable_hash64(s.key.encode("utf-8")) for s in self._servers]
        self._rankings: dict[bytes, tuple[ServerState, ...]] = {}

    def _ranking(self, client_key: bytes) -> tuple[ServerState, ...]:
        client = _stable_hash64(client_key)
        log = math.log
        scored: list[tuple[float, int]] = []
        for i, (s, seed) in enumerate(zip(self._servers, self._seeds, strict=True)):
            # splitmix64 finalizer (Steele, Lea & Flood 2014)
            z = ((client ^ seed) + 0x9E3779B97F4A7C15) & _MASK64
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
            z ^= z >> 31
            # top 53 bits -> h in (0, 1) exactly, never 0 or 1, so ln(h) < 0
            scored.append((-s.weight / log(((z >> 11) + 0.5) * _INV_2_53), -i))
        scored.sort(reverse=True)  # best score first; (impossible) ties: first server
        return tuple(self._servers[-i] for _, i in scored)

    def pick(
        self, client_key: bytes, now: float, exclude: AbstractSet[str] = _NOTHING
    ) -> ServerState | None:
        ranking = self._rankings.get(client_key)
        if ranking is None:
            if len(self._rankings) >= self._CACHE_SIZE:
                self._rankings.clear()  # crude but O(1) amortized; misses are cheap enough
            ranking = self._rankings[client_key] = self._ranking(client_key)
        for s in ranking:
            if s.healthy and now >= s.ejected_until and not (exclude and s.key in exclude):
                return s
        return None


class RandomTwo(_Base):
    """Power of two random choices by active/weight."""

    def __init__(self, servers: Sequence[ServerState], rng: random.Random) -> None:
        super().__init__(servers)
        self._rng = rng

    def pick(
        self, client_key: bytes, now: float, exclude: AbstractSet[str] = _NOTHING
    ) -> ServerState | None:
        candidates = [
            s
            for s in self._servers
            if s.healthy and now >= s.ejected_until and not (exclude and s.key in exclude)
        ]
        if len(candidates) <= 1:
            return candidates[0] if candidates else None
        a, b = self._rng.sample(candidates, 2)
        return a if a.active * b.weight <= b.active * a.weight else b


def make_balancer(
    algorithm: BalanceAlgorithm,
    servers: Sequence[ServerState],
    *,
    rng: random.Random | None = None,
) -> Balancer:
    """Build the balancer for ``algorithm`` over ``servers``.

    Args:
        algorithm: one of ``BALANCE_ALGORITHMS``.
        servers: the backend's servers; their keys must be unique.
        rng: randomness for ``random_two`` (tests pass a seeded one).

    Raises:
        ValueError: unknown algorithm or duplicate server keys.
    """
    keys = [s.key for s in servers]
    if len(set(keys)) != len(keys):
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"duplicate server keys: {', '.join(dupes)}")
    if algorithm == "round_robin":
        return RoundRobin(servers)
    if algorithm == "least_conn":
        return LeastConn(servers)
    if algorithm == "ip_hash":
        return IpHash(servers)
    if algorithm == "random_two":
        # Not security-sensitive: spreading load only.
        return RandomTwo(servers, rng if rng is not None else random.Random())  # noqa: S311
    raise ValueError(f"unknown balance algorithm {algorithm!r}")
