"""Host and SNI name matching with O(1) lookups.

How this works: names are normalized (lower-case, one trailing dot removed)
and kept in two dicts -- exact names, and ``*.parent`` wildcards keyed by
``parent``. A lookup tries the exact dict, then the wildcard dict under the
name's parent (the name minus its first label). So a wildcard matches exactly
one extra label, as RFC 6125 §6.4.3 wildcards do: ``*.example.com`` matches
``a.example.com`` but neither ``example.com`` nor ``a.b.example.com``.

:class:`RouteTable` adds path prefixes on top (for Host routing);
:class:`NameMap` is the plain name -> value map used for SNI certificate lookup.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


def normalize_host(host: str) -> str:
    """Lower-case ``host`` and strip one trailing dot (``Example.COM.`` -> ``example.com``)."""
    host = host.lower()
    return host[:-1] if host.endswith(".") else host


def _parent(host: str) -> str | None:
    """The name minus its first label, or None for a single-label name."""
    _, dot, parent = host.partition(".")
    return parent if dot and parent else None


def _split_pattern(pattern: str) -> tuple[bool, str]:
    """``(is_wildcard, key)`` for an exact name or a ``*.parent`` pattern.

    Raises:
        ValueError: a ``*`` anywhere but as the whole first label.
    """
    name = normalize_host(pattern)
    if name.startswith("*."):
        parent = name[2:]
        if not parent or "*" in parent:
            raise ValueError(f"invalid wildcard host pattern {pattern!r}")
        return True, parent
    if "*" in name or not name:
        raise ValueError(f"invalid host pattern {pattern!r}: use a name or '*.parent'")
    return False, name


def prefix_matches(prefix: str, path: str) -> bool:
    """Whether route ``prefix`` covers ``path``, segment-aware.

    ``/api`` matches ``/api`` and ``/api/x`` but not ``/apix``: a prefix that
    does not end in ``/`` must end at a segment boundary, since ``/apix`` is a
    different resource, not a sub-resource. A prefix ending in ``/`` (``/``,
    ``/api/``) matches every path starting with it.
    """
    if not path.startswith(prefix):
        return False
    return prefix.endswith("/") or len(path) == len(prefix) or path[len(prefix)] == "/"


class RouteTable(Generic[T]):
    """Pick a route value for (host, path).

    Precedence: an exact host beats a ``*.parent`` wildcard, which beats the
    routes without hosts, which beat ``default``. Within one of those buckets
    the longest matching path prefix wins (see :func:`prefix_matches`), ties go
    to the first declared; when no prefix of a bucket matches, the next bucket
    is tried. Paths are compared as received (percent-encoding is not decoded).

    Args:
        routes: ``(hosts, path_prefix, value)`` triples in declaration order;
            ``hosts == ()`` means any host. An empty prefix means ``/``.
        default: returned when no route matches.

    Raises:
        ValueError: a host pattern is malformed (``*`` not as a whole first label).
    """

    def __init__(
        self, routes: Iterable[tuple[Sequence[str], str, T]], default: T | None = None
    ) -> None:
        self._default = default
        exact: dict[str, list[tuple[int, int, str, T]]] = {}
        wildcard: dict[str, list[tuple[int, int, str, T]]] = {}
        anyhost: list[tuple[int, int, str, T]] = []
        for order, (hosts, prefix, value) in enumerate(routes):
            entry = (-len(prefix or "/"), order, prefix or "/", value)
            if not hosts:
                anyhost.append(entry)
            for pattern in hosts:
                is_wild, key = _split_pattern(pattern)
                (wildcard if is_wild else exact).setdefault(key, []).append(entry)

        # Longest prefix first, then declaration order: the first match wins.
        def bucket(entries: list[tuple[int, int, str, T]]) -> tuple[tuple[str, T], ...]:
            ranked = sorted(entries, key=lambda e: (e[0], e[1]))
            return tuple((prefix, value) for _, _, prefix, value in ranked)

        self._exact = {k: bucket(v) for k, v in exact.items()}
        self._wildcard = {k: bucket(v) for k, v in wildcard.items()}
        self._any = bucket(anyhost)

    @staticmethod
    def _first(entries: tuple[tuple[str, T], ...], path: str) -> tuple[bool, T | None]:
        for prefix, value in entries:
            if prefix_matches(prefix, path):
                return True, value
        return False, None

    def match(self, host: str, path: str) -> T | None:
        """The value of the best route for ``host`` and ``path``, else the default."""
        if not self._exact and not self._wildcard and not self._any:
            return self._default  # a listener with only a default backend: no lookup at all
        name = normalize_host(host)
        entries = self._exact.get(name)
        if entries:
            found, value = self._first(entries, path)
            if found:
                return value
        parent = _parent(name) if self._wildcard else None
        if parent is not None:
            entries = self._wildcard.get(parent)
            if entries:
                found, value = self._first(entries, path)
                if found:
                    return value
        found, value = self._first(self._any, path)
        return value if found else self._default


class NameMap(Generic[T]):
    """Exact and ``*.parent`` names -> values, for SNI certificate lookup.

    ``lookup`` does two dict probes at most and never raises, so it is safe
    inside a TLS handshake callback.
    """

    def __init__(self) -> None:
        self._exact: dict[str, T] = {}
        self._wildcard: dict[str, T] = {}

    def add(self, name: str, value: T) -> None:
        """Register ``name`` (exact or ``*.parent``); the first value added for a name wins.

        Raises:
            ValueError: ``name`` is malformed.
        """
        is_wild, key = _split_pattern(name)
        (self._wildcard if is_wild else self._exact).setdefault(key, value)

    def lookup(self, name: str) -> T | None:
        """The value for ``name``: an exact entry first, then the wildcard of its parent."""
        key = normalize_host(name)
        if key in self._exact:
            return self._exact[key]
        parent = _parent(key)
        return None if parent is None else self._wildcard.get(parent)

    def __len__(self) -> int:
        return len(self._exact) + len(self._wildcard)
