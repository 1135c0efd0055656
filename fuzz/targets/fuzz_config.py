"""Fuzz target: ``tlsgate.config.loader.parse_config`` on arbitrary and on structured TOML.

How this works: the first input byte chooses how the rest becomes a document.
Even: the bytes are the text itself (decoded as UTF-8, bad bytes replaced), so
the fuzzer works on TOML syntax, escapes and tomllib's own errors. Odd: the
bytes are choices (``_fuzzcommon.Reader``) that build a document out of the
loader's own vocabulary -- its section names and every key it knows for each
section (read from ``loader``'s tables, so the target follows the code), with
values of every TOML type drawn from a palette of valid and nearly valid ones
(addresses, durations, sizes, names that other sections refer to) or made
from the input bytes -- so most runs get past the syntax and into the
validation of each key, each reference and each cross-section rule.

The invariant is the loader's contract: a :class:`Config`, or a
:class:`ConfigError` whose every problem names the file and says something;
never another exception. A returned Config also keeps a few promises that
every consumer relies on: unique names, references that resolve, binds with
a port in 1..65535.
"""

from __future__ import annotations

import json
from pathlib import Path

from fuzz.targets._fuzzcommon import Reader, check, instrumented, main

with instrumented(__name__):
    from tlsgate.config import loader
    from tlsgate.config.loader import parse_config
    from tlsgate.errors import ConfigError

SOURCE = Path("/etc/tlsgate/fuzz.toml")

_TABLES: list[tuple[str, bool, tuple[str, ...]]] = [
    ("node", False, loader._NODE_KEYS),
    ("log", False, loader._LOG_KEYS),
    ("store", False, loader._STORE_KEYS),
    ("acme", False, loader._ACME_KEYS),
    ("acme.dns", False, loader._DNS_KEYS),
    ("certificates", True, loader._CERTIFICATE_KEYS),
    ("listeners", True, loader._LISTENER_KEYS),
    ("routes", True, loader._ROUTE_KEYS),
    ("backends", True, loader._BACKEND_KEYS),
    ("backends.health", False, loader._HEALTH_KEYS),
    ("backends.servers", True, loader._SERVER_KEYS),
    ("admin", False, ("bind",)),
    ("listeners.client_auth", False, ("ca_file",)),
]
_STRINGS = [
    "", "app", "web", "api", "www", "a", "http", "https", "tcp", "tls-passthrough",
    "127.0.0.1:8080", "0.0.0.0:443", "[::1]:443", "[::]:80", ":80", "10.0.0.1:9000",
    "app.internal:8080", "10.0.0.0/8", "10.0.0.1/8", "::/0", "127.0.0.1", "300", "1.2", "1.3",
    "5s", "1m", "250ms", "2h", "0", "-1s", "1e3s", "64KiB", "1MiB", "500B", "4GB", "/", "/api",
    "/a b", "example.com", "*.example.com", "www.example.com.", "192.0.2.1", "_dmarc.ex",
    "acme", "files", "ca", "v1", "v2", "v3", "round_robin", "least_conn", "ip_hash", "random",
    "off", "on", "verify", "insecure", "http-01", "tls-alpn-01", "dns-01", "ecdsa-p256",
    "rsa-2048", "rsa-1", "hmac-sha256", "hmac-md5", "c2VjcmV0", "a+b/", "debug", "info",
    "-", "/var/log/tlsgate.log", "/etc/tlsgate/www.pem", "www.key", "~/x", "sqlite:///var/t.db",
    "sqlite://x/y", "etcd://h:2379", "https://acme.example/dir", "http://acme.example/dir",
    "ops@example.com", "mailto:a@b", "max-age=63072000", "X-Real-IP", "CF-Connecting-IP",
    "Bad Header", "root", "nobody", "no-such-user-x", "\u00e9t\u00e9", "a\u0000b", "x" * 300,
]  # fmt: skip
_INTEGERS = [0, 1, 2, 4, 8, 80, 100, 256, 257, 443, 1024, 65535, 65536, -1, 10**18, -(2**63)]
_FLOATS = ["0.5", "1.5", "-0.0", "1e300", "inf", "-inf", "nan", "3.0"]
_DATETIMES = ["1979-05-27T07:32:00Z", "1979-05-27", "07:32:00", "1979-05-27 07:32:00.999"]


def _string(text: str) -> str:
    # a JSON string is a TOML basic string, once DEL is escaped too
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _value(r: Reader, depth: int = 0) -> str:
    kind = r.byte() % 12
    if kind <= 3:
        return _string(r.pick(_STRINGS))
    if kind == 4:
        return _string(r.chunk(40).decode("utf-8", "replace"))
    if kind == 5:
        return str(r.pick(_INTEGERS))
    if kind == 6:
        return str(int.from_bytes(r.take(3), "big") - 2**23)
    if kind == 7:
        return r.pick(_FLOATS)
    if kind == 8:
        return r.pick(["true", "false"])
    if kind == 9:
        return r.pick(_DATETIMES)
    if depth >= 2:
        return _string(r.pick(_STRINGS))
    count = r.int_below(4)
    if kind == 10:
        return "[" + ", ".join(_value(r, depth + 1) for _ in range(count)) + "]"
    pairs = (
        f"{_key(r, ('address', 'weight', 'path', 'type'))} = {_value(r, depth + 1)}"
        for _ in range(count)
    )
    return "{" + ", ".join(pairs) + "}"


def _key(r: Reader, known: tuple[str, ...]) -> str:
    if r.byte() % 16 == 0:
        return _string(r.chunk(12).decode("utf-8", "replace"))  # an unknown key
    return r.pick(known)


def structured(r: Reader) -> str:
    """A TOML document made of the loader's own sections and keys (see the docstring)."""
    lines: list[str] = []
    for _ in range(1 + r.int_below(10)):
        name, array, keys = r.pick(_TABLES)
        if r.byte() % 8 == 0:
            array = not array  # a table where an array of tables belongs, and the reverse
        lines.append(f"[[{name}]]" if array else f"[{name}]")
        for _ in range(r.int_below(8)):
            lines.append(f"{_key(r, keys)} = {_value(r)}")
    return "\n".join(lines) + "\n"


def test_one_input(data: bytes) -> None:
    r = Reader(data)
    text = structured(r) if r.byte() & 1 else r.rest().decode("utf-8", "replace")
    try:
        config = parse_config(text, SOURCE)
    except ConfigError as exc:
        check(bool(exc.problems), "a ConfigError without problems")
        for problem in exc.problems:
            check(problem.file == str(SOURCE), f"a problem in another file: {problem}")
            check(bool(problem.message), f"a problem without a message: {problem!r}")
        check(str(exc) != "", "an empty ConfigError")
        return
    backends = [b.name for b in config.backends]
    listeners = [lc.name for lc in config.listeners]
    certificates = [c.name for c in config.certificates]
    for names in (backends, listeners, certificates):
        check(len(names) == len(set(names)), f"duplicate names {names}")
    for lc in config.listeners:
        check(bool(lc.bind) and all(1 <= b.port <= 65535 for b in lc.bind), f"binds {lc.bind}")
        for ref in (lc.backend, lc.fallback_backend):
            check(ref is None or ref in backends, f"listener {lc.name} -> {ref!r}")
        check(set(lc.certificates) <= set(certificates), f"listener {lc.name} certificates")
    for route in config.routes:
        check(route.backend in backends and route.listener in listeners, f"route {route}")
        check(route.path_prefix.startswith("/"), f"route path_prefix {route.path_prefix!r}")
    for backend in config.backends:
        check(bool(backend.servers) or backend.discover, f"backend {backend.name} has no servers")


if __name__ == "__main__":
    main(test_one_input)
