"""Load a tlsgate TOML file and validate it into the frozen model.

How this works: ``tomllib`` turns the text into plain dicts. One pass walks
that tree section by section with small typed readers (:class:`_Table`) that
check each key's type and range. A reader never raises: it records a
:class:`~tlsgate.errors.ConfigProblem` (file, key path, what is wrong and what
would be valid) and hands back the default, so the walk always finishes and
``tlsgate check`` can show every problem at once. Names are collected before
the walk so references (route -> backend, listener -> certificate) are checked
where they appear; checks that span sections (overlapping binds, listeners
with nowhere to send traffic, challenges nothing can answer) run at the end.
The ``[acme]`` section is read before the certificates, so that an
``issuer = "acme"`` certificate is checked against the challenge types it may
use where it is written. Only when nothing was found is a
:class:`~tlsgate.config.model.Config` returned; otherwise :class:`ConfigError`
carries all the problems. Nothing here reads certificate or key files: the
certificate code checks those. ``[node] user`` and ``group`` are looked up in
this system's user database (``pwd``/``grp``, so NSS sources count too): a
config that names an account this machine does not have fails here, in
``tlsgate check``, rather than when the node starts its workers.

Relative paths in the file resolve against the directory of the file.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import difflib
import grp
import ipaddress
import os
import pwd
import re
import socket
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal, TypeVar
from urllib.parse import urlsplit

from tlsgate.config.model import (
    BALANCE_ALGORITHMS,
    LISTENER_PROTOCOLS,
    AcmeChallenge,
    AcmeConfig,
    BackendConfig,
    BindAddress,
    CertificateConfig,
    Config,
    DnsUpdateConfig,
    HealthCheckConfig,
    IPNetwork,
    Issuer,
    KeyTypeName,
    ListenerConfig,
    ListenerLimits,
    LogConfig,
    NodeConfig,
    ProxyProtocolVersion,
    RouteConfig,
    ServerConfig,
    StoreConfig,
    TLSVersion,
    UpstreamTLS,
)
from tlsgate.config.units import parse_duration, parse_size
from tlsgate.errors import ConfigError, ConfigProblem

__all__ = ["DEFAULT_CONFIG_PATH", "default_config_path", "load_config", "parse_config"]

DEFAULT_CONFIG_PATH: str = "tlsgate.toml"
"""Where commands look for the configuration when neither -c nor $TLSGATE_CONFIG is given."""

_T = TypeVar("_T", bound=str)
_N = TypeVar("_N", CertificateConfig, ListenerConfig, BackendConfig)

# --- the accepted shape -----------------------------------------------------------

_SECTIONS = ("node", "log", "store", "acme", "certificates", "listeners", "routes", "backends")
_ARRAY_SECTIONS = frozenset({"certificates", "listeners", "routes", "backends"})
# Sections of the design that this version does not implement yet: rejected like
# any unknown key, but with a message that says why.
_UNSUPPORTED_SECTIONS = ("admin", "ca")

_NODE_KEYS = (
    "name",
    "data_dir",
    "workers",
    "shutdown_timeout",
    "ticket_key_rotation",
    "user",
    "group",
)
_LOG_KEYS = ("access", "error", "level")
_STORE_KEYS = ("url", "key_file")
_ACME_KEYS = (
    "directory",
    "email",
    "ca_file",
    "challenges",
    "key_types",
    "eab_kid",
    "eab_hmac_key",
    "renew_check_interval",
    "certificate_lifetime",
    "dns",
)
_DNS_KEYS = (
    "server",
    "zone",
    "tsig_key_name",
    "tsig_secret",
    "tsig_algorithm",
    "propagation_delay",
)
_CERTIFICATE_KEYS = ("name", "domains", "issuer", "cert_file", "key_file")
_LIMIT_KEYS = (
    "header_timeout",
    "idle_timeout",
    "tls_handshake_timeout",
    "max_header_size",
    "max_body_size",
    "body_timeout",
    "body_min_rate",
    "send_timeout",
    "max_headers",
    "max_connections",
    "max_connections_per_client",
    "max_client_hello_size",
    "connect_idle_timeout",
)
_LISTENER_KEYS = (
    "name",
    "bind",
    "protocol",
    "backend",
    "fallback_backend",
    "accept_proxy_protocol",
    "trusted_proxies",
    "client_ip_header",
    "hsts",
    "redirect_https",
    "redirect_port",
    "certificates",
    "default_certificate",
    "min_tls_version",
    *_LIMIT_KEYS,
)
_ROUTE_KEYS = ("listener", "backend", "hosts", "path_prefix")
_BACKEND_KEYS = (
    "name",
    "servers",
    "balance",
    "discover",
    "tls",
    "ca_file",
    "server_name",
    "client_cert",
    "send_proxy_protocol",
    "proxy_protocol_crc32c",
    "health",
    "connect_timeout",
    "read_timeout",
    "pool_idle_timeout",
    "fail_timeout",
    "retries",
    "max_idle_per_server",
    "max_fails",
)
_SERVER_KEYS = ("address", "weight")
_HEALTH_KEYS = (
    "path",
    "host",
    "type",
    "expect_status",
    "interval",
    "timeout",
    "rise",
    "fall",
    "tls_verify",
    "ca_file",
)

_SECTION_KEYS: dict[str, tuple[str, ...]] = {
    "node": _NODE_KEYS,
    "log": _LOG_KEYS,
    "store": _STORE_KEYS,
    "acme": _ACME_KEYS,
    "certificates": _CERTIFICATE_KEYS,
    "listeners": _LISTENER_KEYS,
    "routes": _ROUTE_KEYS,
    "backends": _BACKEND_KEYS,
}
_UNSUPPORTED_KEYS: dict[str, dict[str, str]] = {
    "listeners": {
        "client_auth": "client certificate authentication (client_auth) is not supported "
        "by this version",
    },
}

_LOG_LEVELS: tuple[Literal["debug", "info", "warning", "error"], ...] = (
    "debug",
    "info",
    "warning",
    "error",
)
_ISSUERS: tuple[Issuer, ...] = ("files", "acme")
_UNAVAILABLE_ISSUERS = ("ca",)
_ACME_CHALLENGES: tuple[AcmeChallenge, ...] = ("http-01", "tls-alpn-01", "dns-01")
_DEFAULT_CHALLENGES: tuple[AcmeChallenge, ...] = ("http-01", "tls-alpn-01")
# Which listener protocol answers each challenge that a listener answers.
_CHALLENGE_LISTENERS: dict[AcmeChallenge, str] = {"http-01": "http", "tls-alpn-01": "https"}
_KEY_TYPES: tuple[KeyTypeName, ...] = (
    "ecdsa-p256",
    "ecdsa-p384",
    "rsa-2048",
    "rsa-3072",
    "rsa-4096",
)
# The TSIG algorithms of RFC 8945 §6, which advises against using hmac-md5 and
# hmac-sha1; they stay for old servers.
_TSIG_ALGORITHMS = (
    "hmac-sha256",
    "hmac-sha512",
    "hmac-sha384",
    "hmac-sha224",
    "hmac-sha1",
    "hmac-md5",
)
_LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
_MIN_EAB_KEY = 16  # bytes; a shorter "key" is a truncated copy or the key identifier
_MIN_RENEW_CHECK = 1.0
_TLS_VERSIONS: tuple[TLSVersion, ...] = ("1.2", "1.3")
_UPSTREAM_TLS: tuple[UpstreamTLS, ...] = ("off", "insecure", "verify")
_PROXY_VERSIONS: tuple[ProxyProtocolVersion, ...] = ("", "v1", "v2")
_HEALTH_KINDS: tuple[Literal["http", "tcp", "tls"], ...] = ("http", "tcp", "tls")

_MAX_WORKERS = 1024
_MAX_WEIGHT = 256
# A ClientHello is one handshake message: 2^24-1 bytes at most in theory, a few
# hundred bytes to a few KiB in practice (more with post-quantum key shares).
# Below 512 even ordinary clients would be refused; above 1 MiB is only a memory
# cost per connection an attacker gets to choose.
_MIN_CLIENT_HELLO = 512
_MAX_CLIENT_HELLO = 1024 * 1024

_NAME = re.compile(r"[A-Za-z0-9_.-]+", re.ASCII)
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+", re.ASCII)
# RFC 9110 §5.6.2: token = 1*tchar; tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*"
#   / "+" / "-" / "." / "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", re.ASCII)
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)
_LABEL_UNDERSCORE = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?", re.ASCII)
_DIGITS = re.compile(r"[0-9]+", re.ASCII)
_STATUS_RANGE = re.compile(r"([0-9]{3})(?:-([0-9]{3}))?", re.ASCII)
# RFC 5322 §3.2.3 atext and dots, less '%' and '?', which a mailto: URI (RFC 6068)
# would need escaped: ACME CAs refuse contacts with those.
_EMAIL_LOCAL = re.compile(
    r"[A-Za-z0-9!#$&'*+/=^_`{|}~-]+(?:\.[A-Za-z0-9!#$&'*+/=^_`{|}~-]+)*", re.ASCII
)
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*", re.ASCII)


# --- public API ----------------------------------------------------------------------


def default_config_path() -> Path:
    """The configuration file commands use without ``-c``.

    Returns:
        ``$TLSGATE_CONFIG`` when it is set and not empty, else ``./tlsgate.toml``.
    """
    from_env = os.environ.get("TLSGATE_CONFIG", "")
    return Path(from_env) if from_env else Path(DEFAULT_CONFIG_PATH)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a configuration file.

    Args:
        path: the file. Relative paths inside it resolve against its directory.

    Returns:
        The validated configuration; ``Config.source`` is the file's absolute path.

    Raises:
        ConfigError: the file cannot be read, is not UTF-8 TOML, or breaks any
            rule; ``problems`` lists every problem found, each naming ``path``
            as given.
    """
    file = os.fspath(path)
    try:
        raw = Path(file).read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(
            [ConfigProblem(file, "", f"cannot read the configuration file: {reason}")]
        ) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            [
                ConfigProblem(
                    file,
                    "",
                    f"the file is not valid UTF-8 (byte 0x{raw[exc.start]:02x} on line "
                    f"{line}); TOML files must be UTF-8",
                )
            ]
        ) from exc
    return _parse(text, Path(file), file)


def parse_config(text: str, source: Path) -> Config:
    """Validate configuration text as if it had been read from ``source``.

    Args:
        text: the TOML document.
        source: the file it came from; names the file in problems, and relative
            paths in the text resolve against ``source.parent``.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: the text is not TOML (one problem, with line and column)
            or breaks any rule (every problem found).
    """
    return _parse(text, source, str(source))


def _parse(text: str, source: Path, file: str) -> Config:
    try:
        data = tomllib.loads(text)
    except RecursionError as exc:
        raise ConfigError([ConfigProblem(file, "", "invalid TOML: nested too deeply")]) from exc
    except ValueError as exc:
        # TOMLDecodeError (a ValueError) says "(at line L, column C)"; tomllib can also
        # raise a plain ValueError for an integer too long to convert.
        raise ConfigError([ConfigProblem(file, "", f"invalid TOML: {exc}")]) from exc
    return _Loader(file, source).load(data)


# --- messages ------------------------------------------------------------------------


def _show(value: str) -> str:
    """Quote user text for a message: shortened, control characters escaped."""
    if len(value) > 60:
        value = value[:60] + "..."
    return repr(value)


def _number(value: float) -> str:
    """A number for a message; TOML integers can be very long."""
    text = str(value)
    return text if len(text) <= 20 else text[:20] + "..."


def _toml_type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, datetime.datetime):
        return "datetime"
    if isinstance(value, datetime.date):
        return "date"
    if isinstance(value, datetime.time):
        return "time"
    return type(value).__name__


def _got(value: object) -> str:
    """``got <type> <value>`` for a type error."""
    kind = _toml_type(value)
    if isinstance(value, bool):
        return f"got boolean {'true' if value else 'false'}"
    if isinstance(value, str):
        return f"got string {_show(value)}"
    if isinstance(value, int | float):
        return f"got {kind} {_number(value)}"
    if isinstance(value, list):
        return "got an array"
    if isinstance(value, dict):
        return "got a table"
    return f"got a {kind}"


def _one_of(choices: Iterable[str]) -> str:
    return ", ".join(repr(c) if c == "" else c for c in choices)


def _suggest(word: str, candidates: Iterable[str]) -> str:
    """`` did you mean 'x'?`` for a close match, else ``""``."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" did you mean {close[0]!r}?" if close else ""


def _key_path(parent: str, key: str) -> str:
    shown = key if _PLAIN_KEY.fullmatch(key) else '"' + key.replace('"', '\\"') + '"'
    return f"{parent}.{shown}" if parent else shown


# --- checks on single values -----------------------------------------------------------


def _dns_name_problem(name: str, *, wildcard: bool, underscore: bool = False) -> str | None:
    """Why ``name`` (lower-cased) is not a DNS name, or None when it is one.

    RFC 1123 §2.1 host names: labels of letters, digits and hyphens, not starting or
    ending with a hyphen, at most 63 characters; at most 253 in all. RFC 3696 §2:
    "a top-level domain ... cannot be all-numeric". A wildcard is ``*`` as the whole
    first label only (RFC 6125 §6.4.3 as browsers and ACME CAs apply it).
    """
    if name == "":
        return "empty host name"
    if not name.isascii():
        try:
            a_label = name.encode("idna").decode("ascii")
        except UnicodeError:
            return f"{_show(name)} is not a valid host name"
        return f"{_show(name)} is not ASCII; write its IDNA form {_show(a_label)}"
    if name.endswith("."):
        return f"{_show(name)} ends with a dot; write {_show(name.rstrip('.'))}"
    labels = name.split(".")
    if labels[0] == "*" and len(labels) > 1:
        if not wildcard:
            return f"{_show(name)}: a wildcard is not allowed here"
        labels = labels[1:]
    if "*" in name[1:] or (name.startswith("*") and not name.startswith("*.")):
        return (
            f"{_show(name)}: a wildcard '*' is allowed only as the whole first label, "
            "as in '*.example.com'"
        )
    if len(name) > 253:
        return f"{_show(name)} is longer than 253 characters"
    pattern = _LABEL_UNDERSCORE if underscore else _LABEL
    allowed = "letters, digits, '-' and '_'" if underscore else "letters, digits and '-'"
    for label in labels:
        if not pattern.fullmatch(label):
            return (
                f"{_show(name)} is not a valid host name: each label must be 1 to 63 "
                f"{allowed}, not starting or ending with '-' (bad label {_show(label)})"
            )
    if _DIGITS.fullmatch(labels[-1]):
        return (
            f"{_show(name)} is neither an IP address nor a host name (the last label is a number)"
        )
    return None


def _normalize_host(value: str, *, wildcard: bool, underscore: bool) -> tuple[str, str | None]:
    """An IP literal or DNS name, lower-cased; returns (normalized, problem)."""
    name = value.lower()
    try:
        return str(ipaddress.ip_address(name)), None
    except ValueError:
        pass
    return name, _dns_name_problem(name, wildcard=wildcard, underscore=underscore)


def _split_host_port(text: str) -> tuple[str, str]:
    """Split ``host:port`` / ``[v6]:port``; ValueError with a message when impossible."""
    example = "'10.0.0.1:8080' or '[::1]:8080'"
    if text.startswith("["):
        end = text.find("]")
        if end == -1:
            raise ValueError(f"{_show(text)} has no closing ']'; expected {example}")
        host, rest = text[1:end], text[end + 1 :]
        if not rest.startswith(":"):
            raise ValueError(f"{_show(text)} has no port; expected {example}")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(
                f"{_show(host)} in brackets is not an IPv6 address; expected {example}"
            ) from None
        return host, rest[1:]
    host, colon, port = text.rpartition(":")
    if not colon:
        raise ValueError(f"{_show(text)} has no port; expected {example}")
    if ":" in host:
        raise ValueError(
            f"{_show(text)}: write an IPv6 address in brackets, as in '[{host}]:{port}'"
        )
    return host, port


def _parse_port(text: str, whole: str) -> int:
    if not _DIGITS.fullmatch(text) or len(text) > 5:
        raise ValueError(f"{_show(whole)} has an invalid port {_show(text)}; expected 1 to 65535")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"{_show(whole)} has port {port}; expected 1 to 65535")
    return port


def _parse_bind(text: str) -> BindAddress:
    """``host:port`` with an IP literal host, ``[v6]:port``, or ``:port`` for 0.0.0.0."""
    host, port_text = _split_host_port(text)
    port = _parse_port(port_text, text)
    if host == "":
        return BindAddress("0.0.0.0", port)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"{_show(host)} is not an IP address; a listener binds IP literals such as "
            "'0.0.0.0:443', '127.0.0.1:8080', '[::]:443' or ':443'"
        ) from None
    return BindAddress(str(address), port)


def _parse_server(text: str) -> tuple[str, int]:
    """An upstream ``host:port``: the host is an IP literal or a host name."""
    host, port_text = _split_host_port(text)
    port = _parse_port(port_text, text)
    if host == "":
        raise ValueError(f"{_show(text)} has no host; expected '10.0.0.1:8080' or 'app:8080'")
    normalized, problem = _normalize_host(host, wildcard=False, underscore=True)
    if problem is not None:
        raise ValueError(problem)
    return normalized, port


def _parse_network(text: str) -> IPNetwork:
    """A CIDR or a single address; host bits set after the prefix are an error."""
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(
                f"{_show(text)} is not an IP address or network; expected e.g. "
                "'10.0.0.0/8', '192.0.2.7' or '2001:db8::/32'"
            ) from exc
        raise ValueError(
            f"{_show(text)} has host bits set after the /{loose.prefixlen} prefix; "
            f"did you mean {str(loose)!r}?"
        ) from exc


def _hsts_problem(value: str) -> str | None:
    """RFC 6797 §6.1: Strict-Transport-Security = [ directive ] *( ";" [ directive ] );
    "The order of appearance of directives is not significant"; "directive names are
    case-insensitive"; "All directives MUST appear only once"; max-age is REQUIRED."""
    expected = "expected 'max-age=N', optionally followed by '; includeSubDomains' and '; preload'"
    seen: set[str] = set()
    for raw in value.split(";"):
        directive = raw.strip(" \t")
        if not directive:
            continue
        name, eq, argument = directive.partition("=")
        name = name.strip(" \t").lower()
        if name in seen:
            return f"directive {name!r} appears twice; {expected}"
        seen.add(name)
        if name == "max-age":
            if not eq or not _DIGITS.fullmatch(argument.strip(" \t").strip('"')):
                return f"max-age must be a number of seconds, as in 'max-age=63072000'; {expected}"
        elif name in ("includesubdomains", "preload"):
            if eq:
                return f"{name!r} takes no value; {expected}"
        else:
            return f"unknown directive {_show(directive)}; {expected}"
    if "max-age" not in seen:
        return f"max-age is required; {expected}"
    return None


def _plain_text_problem(value: str) -> str | None:
    """Text that ends up in an HTTP message must not smuggle in CR, LF or spaces."""
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        return f"{_show(value)} contains spaces or control characters"
    return None


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _account_problem(kind: Literal["user", "group"], name: str) -> str | None:
    """Why ``name`` is not a user (or group) of this system; None when it is one."""
    try:
        if kind == "user":
            pwd.getpwnam(name)
        else:
            grp.getgrnam(name)
    except KeyError:
        pass
    except (ValueError, UnicodeError):  # a NUL character, text the C library can't take
        return f"{_show(name)} is not a valid {kind} name"
    else:
        return None
    if _DIGITS.fullmatch(name):
        return f"no {kind} named {_show(name)} on this system; write the {kind}'s name, not its id"
    arg = name if _NAME.fullmatch(name) else "NAME"
    if kind == "user":
        create = f"useradd --system --home-dir /var/lib/tlsgate --shell /usr/sbin/nologin {arg}"
    else:
        create = f"groupadd --system {arg}"
    return (
        f"no {kind} named {_show(name)} on this system; create it "
        f"(e.g. '{create}') or name an existing {kind}"
    )


def _has_control(value: str) -> bool:
    return any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value)


def _directory_problem(url: str) -> str | None:
    """Why ``url`` cannot be an ACME directory URL, or None when it can.

    RFC 8555 §6.1: "Each ACME function is accomplished by the client sending a
    sequence of HTTPS requests to the server ... Use of HTTPS is REQUIRED." So the
    directory, the one URL a client is configured with, must be an https URL.
    """
    example = f"expected the ACME server's directory URL, e.g. {_LETS_ENCRYPT!r}"
    if _has_control(url):
        return f"{_show(url)} contains spaces or control characters; {example}"
    scheme, sep, rest = url.partition("://")
    if not sep:
        return f"{_show(url)} is not a URL; {example}"
    if scheme.lower() == "http":
        return (
            f'{_show(url)}: ACME requires HTTPS (RFC 8555 §6.1: "Use of HTTPS is REQUIRED"); '
            f"write {_show('https://' + rest)}"
        )
    if scheme.lower() != "https":
        return f"{_show(url)}: the scheme must be https; {example}"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return f"{_show(url)} has an invalid host or port; {example}"
    if "@" in parts.netloc:
        return f"{_show(url)} must not carry a user name or password; {example}"
    if port == 0:
        return f"{_show(url)} has port 0; expected 1 to 65535"
    host = parts.hostname or ""
    if not host:
        return f"{_show(url)} has no host; {example}"
    _, problem = _normalize_host(host, wildcard=False, underscore=False)
    if problem is not None:
        return f"{_show(url)}: {problem}"
    if parts.fragment or url.endswith("#"):
        return f"{_show(url)} must not have a fragment ('#...'); {example}"
    return None


def _email_problem(value: str) -> str | None:
    """Why ``value`` is not a plausible contact address, or None.

    RFC 8555 §7.3: the account's "contact" holds "mailto:" URLs; tlsgate adds the
    scheme. The check is a plausibility test, not RFC 5322 in full: CAs refuse
    quoted local parts, '?' (mailto: header fields) and domains without a dot.
    """
    example = "expected an address such as 'ops@example.com'"
    if value[:7].lower() == "mailto:":
        return (
            f"{_show(value)}: write the address without 'mailto:' ({_show(value[7:])}); "
            "tlsgate sends it to the CA as a mailto: contact"
        )
    local, at, domain = value.rpartition("@")
    if not at or not local or not domain:
        return f"{_show(value)} is not an email address; {example}"
    if not _EMAIL_LOCAL.fullmatch(local):
        return (
            f"{_show(value)} is not a plausible email address: the part before '@' may hold "
            "letters, digits, single dots between them and !#$&'*+/=^_`{|}~-; " + example
        )
    problem = _dns_name_problem(domain.lower(), wildcard=False)
    if problem is not None:
        return f"{_show(value)} has an invalid domain: {problem}; {example}"
    if "." not in domain:
        return (
            f"{_show(value)}: the domain {_show(domain)} has no dot, and CAs refuse addresses "
            f"that are not in a public domain; {example}"
        )
    return None


def _parse_dns_server(text: str) -> str:
    """The ``server`` of ``[acme.dns]``: ``host:port``, ``[v6]:port``, or a host alone.

    Returns:
        ``host:port`` (``[v6]:port``), with port 53 when none was written: RFC 1035
        §4.2.2 "Messages sent over TCP connections use server port 53 (decimal)",
        and §4.2.1 says the same of UDP.

    Raises:
        ValueError: with a message saying what would be valid.
    """
    example = (
        "expected 'HOST:PORT' or 'HOST' (port 53), e.g. '10.0.0.53:53', 'ns1.example.com' "
        "or '[2001:db8::53]:53'"
    )
    port = 53
    try:
        host = str(ipaddress.ip_address(text))  # a bare IPv4 or IPv6 address
    except ValueError:
        if text.startswith("[") and text.endswith("]"):
            host = text[1:-1]
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError(
                    f"{_show(host)} in brackets is not an IPv6 address; {example}"
                ) from None
        elif ":" in text:
            host, port_text = _split_host_port(text)
            port = _parse_port(port_text, text)
        else:
            host = text
    if host == "":
        raise ValueError(f"{_show(text)} has no host; {example}")
    normalized, problem = _normalize_host(host, wildcard=False, underscore=False)
    if problem is not None:
        raise ValueError(f"{problem}; {example}")
    return f"[{normalized}]:{port}" if ":" in normalized else f"{normalized}:{port}"


def _eab_key(value: str) -> tuple[str, str | None]:
    """An external account binding MAC key: (the key as unpadded base64url, problem).

    RFC 8555 §7.3.4: "the CA operating the ACME server needs to provide the ACME
    client with a MAC key and a key identifier"; CAs hand the key out base64url
    encoded (RFC 4648 §5), some with '=' padding, which is dropped here so that
    the key decodes as the JWS base64url of RFC 7515 §2. Messages never show the key.
    """
    text = value.rstrip("=")
    if "+" in text or "/" in text:
        return "", (
            "the key contains '+' or '/', so it is standard base64; an EAB MAC key is "
            "base64url (RFC 4648 §5, with '-' and '_' instead): copy it exactly as the CA "
            "shows it"
        )
    if not _BASE64URL.fullmatch(text) or len(text) % 4 == 1:
        return "", (
            "the key is not base64url (RFC 4648 §5): letters, digits, '-' and '_', "
            "optionally '=' padding at the end"
        )
    size = len(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    if size < _MIN_EAB_KEY:
        return "", (
            f"the key decodes to {size} bytes; an EAB MAC key is at least {_MIN_EAB_KEY} "
            "bytes, so copy the whole key the CA gave you"
        )
    return text, None


def _tsig_secret_problem(value: str) -> str | None:
    """Why ``value`` is not a TSIG secret (RFC 8945), or None. Never shows the secret."""
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return (
            "the secret is not base64 (RFC 4648 §4); copy the secret line of the BIND "
            "key file (tsig-keygen) or knot key (keymgr -t) as it is"
        )
    if not decoded:
        return "the secret is empty"
    return None


# --- typed readers -----------------------------------------------------------------------


class _Problems:
    def __init__(self, file: str) -> None:
        self.file = file
        self.items: list[ConfigProblem] = []

    def add(self, key_path: str, message: str) -> None:
        self.items.append(ConfigProblem(self.file, key_path, message))


class _Table:
    """One TOML table at ``path``; unknown keys are reported on construction."""

    def __init__(
        self,
        problems: _Problems,
        data: Mapping[str, object],
        path: str,
        keys: tuple[str, ...],
        unsupported: Mapping[str, str] | None = None,
    ) -> None:
        self.problems = problems
        self.data = data
        self.path = path
        for key in data:
            if key in keys:
                continue
            valid = ", ".join(sorted(keys))
            if unsupported and key in unsupported:
                message = f"{unsupported[key]}; valid keys: {valid}"
            else:
                message = f"unknown key {_show(key)};{_suggest(key, keys)} valid keys: {valid}"
            problems.add(self.key(key), message)

    def key(self, name: str) -> str:
        return _key_path(self.path, name)

    def has(self, name: str) -> bool:
        return name in self.data

    def add(self, name: str, message: str) -> None:
        self.problems.add(self.key(name), message)

    def text(self, name: str) -> str | None:
        """The string at ``name``; None when absent or not a string (reported)."""
        if name not in self.data:
            return None
        value = self.data[name]
        if isinstance(value, str):
            return value
        hint = ""
        if isinstance(value, int | float) and not isinstance(value, bool):
            hint = f'; put it in quotes: {name} = "{_number(value)}"'
        self.add(name, f"expected a string, {_got(value)}{hint}")
        return None

    def string(self, name: str, default: str) -> str:
        value = self.text(name)
        return default if value is None else value

    def required_text(self, name: str, what: str) -> str | None:
        if name not in self.data:
            self.problems.add(self.key(name), f"{name} is required: {what}")
            return None
        return self.text(name)

    def boolean(self, name: str, default: bool) -> bool:
        if name not in self.data:
            return default
        value = self.data[name]
        if isinstance(value, bool):
            return value
        hint = ""
        if isinstance(value, str) and value.lower() in ("true", "false"):
            hint = f"; write {name} = {value.lower()} without quotes"
        self.add(name, f"expected a boolean (true or false), {_got(value)}{hint}")
        return default

    def integer(
        self, name: str, default: int, *, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        if name not in self.data:
            return default
        value = self.data[name]
        if isinstance(value, bool) or not isinstance(value, int):
            hint = ""
            if isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
                hint = f"; write {name} = {value.strip()} without quotes"
            self.add(name, f"expected an integer, {_got(value)}{hint}")
            return default
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            self.add(
                name, f"{_number(value)} is out of range; expected {_range_text(minimum, maximum)}"
            )
            return default
        return value

    def duration(self, name: str, default: float, *, allow_zero: bool = False) -> float:
        if name not in self.data:
            return default
        value = self.data[name]
        if not isinstance(value, str):
            hint = ""
            if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1e9:
                hint = f'; for {value} seconds write {name} = "{value}s"'
            self.add(
                name,
                f"expected a duration string like '2s', '500ms', '5m', '30d', {_got(value)}{hint}",
            )
            return default
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            self.add(name, str(exc))
            return default
        if seconds == 0 and not allow_zero:
            self.add(name, "must be longer than zero; expected a duration like '2s' or '500ms'")
            return default
        return seconds

    def size(self, name: str, default: int, *, minimum: int = 0, maximum: int | None = None) -> int:
        if name not in self.data:
            return default
        value = self.data[name]
        if isinstance(value, bool) or not isinstance(value, str | int):
            self.add(
                name,
                f"expected a size like '64KiB' or '1MiB' or a number of bytes, {_got(value)}",
            )
            return default
        try:
            size = parse_size(value)
        except ValueError as exc:
            self.add(name, str(exc))
            return default
        if size < minimum:
            self.add(name, f"{size} bytes is too small; expected at least {minimum} bytes")
            return default
        if maximum is not None and size > maximum:
            self.add(name, f"{_number(size)} bytes is too large; expected at most {maximum} bytes")
            return default
        return size

    def choice(self, name: str, choices: tuple[_T, ...], default: _T, what: str) -> _T:
        """One of ``choices``; ``what`` names the kind of value ("protocol")."""
        if name not in self.data:
            return default
        return self.choice_of(name, self.data[name], choices, default, what)

    def choice_of(
        self, name: str, value: object, choices: tuple[_T, ...], default: _T, what: str
    ) -> _T:
        if not isinstance(value, str):
            hint = ""
            if isinstance(value, int | float) and not isinstance(value, bool):
                hint = f'; put it in quotes: {name} = "{_number(value)}"'
            self.add(name, f"expected a string, one of: {_one_of(choices)}; {_got(value)}{hint}")
            return default
        for choice in choices:
            if choice == value:
                return choice
        self.add(name, f"{_show(value)} is not a valid {what}; expected one of: {_one_of(choices)}")
        return default

    def choice_list(
        self, name: str, choices: tuple[_T, ...], default: tuple[_T, ...], what: str
    ) -> tuple[tuple[_T, ...], bool]:
        """The array at ``name``: at least one of ``choices``, none of them twice.

        Returns:
            The values and whether the array was valid. Absent: ``default`` and True.
            After a problem (reported): the valid entries, or ``default`` when none
            was, and False, so that rules depending on the array can stay quiet.
        """
        if name not in self.data:
            return default, True
        value = self.data[name]
        valid = _one_of(choices)
        if not isinstance(value, list):
            hint = ""
            if isinstance(value, str) and value in choices:
                hint = f'; write {name} = ["{value}"]'
            self.add(name, f"expected an array of strings, some of: {valid}; {_got(value)}{hint}")
            return default, False
        if not value:
            self.add(name, f"must list at least one {what}; expected some of: {valid}")
            return default, False
        out: list[_T] = []
        ok = True
        for i, item in enumerate(value):
            path = f"{self.key(name)}[{i}]"
            if not isinstance(item, str):
                self.problems.add(path, f"expected a string, one of: {valid}; {_got(item)}")
                ok = False
                continue
            match = next((c for c in choices if c == item), None)
            if match is None:
                self.problems.add(
                    path,
                    f"{_show(item)} is not a valid {what};{_suggest(item, choices)} "
                    f"expected one of: {valid}",
                )
                ok = False
            elif match in out:
                self.problems.add(path, f"{_show(item)} is listed twice")
                ok = False
            else:
                out.append(match)
        return (tuple(out) if out else default), ok

    def secret(self, name: str) -> str:
        """The string at ``name`` ("" when absent). A value of the wrong type is
        reported without showing it: it may be key material."""
        if name not in self.data:
            return ""
        value = self.data[name]
        if isinstance(value, str):
            return value
        self.add(name, f"expected a string, got {_toml_type(value)} (not shown: it is a secret)")
        return ""

    def given(self, name: str) -> bool:
        """``name`` is set to something other than "" (which means "not set")."""
        return name in self.data and self.data[name] != ""

    def strings(self, name: str) -> list[tuple[str, str]] | None:
        """Each string of the array at ``name`` with its key path; None when absent or
        not an array. Elements that are not strings are reported and skipped."""
        if name not in self.data:
            return None
        value = self.data[name]
        if not isinstance(value, list):
            self.add(name, f"expected an array of strings, {_got(value)}")
            return None
        out: list[tuple[str, str]] = []
        for i, item in enumerate(value):
            path = f"{self.key(name)}[{i}]"
            if isinstance(item, str):
                out.append((item, path))
            else:
                self.problems.add(path, f"expected a string, {_got(item)}")
        return out


def _range_text(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"an integer from {minimum} to {maximum}"
    if minimum is not None:
        return f"an integer >= {minimum}"
    return f"an integer <= {maximum}"


# --- the loader --------------------------------------------------------------------------


@dataclasses.dataclass
class _ListenerDraft:
    """A listener read from the file, before cross-listener defaults are applied."""

    config: ListenerConfig
    path: str
    binds: list[tuple[BindAddress, str]]
    redirect_port_set: bool
    protocol_known: bool  # False when the protocol was missing or invalid (reported)


class _Loader:
    def __init__(self, file: str, source: Path) -> None:
        self.problems = _Problems(file)
        self.source = Path(os.path.abspath(source))
        self.base = self.source.parent
        self.certificate_names: list[str] = []
        self.backend_names: list[str] = []
        self.listener_names: list[str] = []
        self.listener_protocols: dict[str, str] = {}
        # [acme]: whether the file has the section at all, and its challenge types
        # (None when there is no usable list, so that rules built on it stay quiet).
        self.acme_present = False
        self.acme_challenges: tuple[AcmeChallenge, ...] | None = None

    # The whole document.

    def load(self, data: Mapping[str, object]) -> Config:
        self._check_top_level(data)
        sections = {name: data.get(name) for name in _SECTIONS}
        certificates_raw = self._array("certificates", sections["certificates"])
        listeners_raw = self._array("listeners", sections["listeners"])
        routes_raw = self._array("routes", sections["routes"])
        backends_raw = self._array("backends", sections["backends"])

        # Names first, so that a reference is checked where it is written.
        self.certificate_names = _declared_names(certificates_raw)
        self.backend_names = _declared_names(backends_raw)
        self.listener_names = _declared_names(listeners_raw)
        for _, raw in listeners_raw:
            name, protocol = raw.get("name"), raw.get("protocol")
            if isinstance(name, str) and isinstance(protocol, str):
                self.listener_protocols.setdefault(name, protocol)

        node = self._node(self._section_table("node", sections["node"]))
        log = self._log(self._section_table("log", sections["log"]))
        store = self._store(self._section_table("store", sections["store"]), node)
        acme = self._acme(sections["acme"])
        certificates = self._unique(
            [self._certificate(path, raw) for path, raw in certificates_raw]
        )
        drafts = [self._listener(path, raw) for path, raw in listeners_raw]
        routes = [self._route(path, raw) for path, raw in routes_raw]
        backends = self._unique([self._backend(path, raw) for path, raw in backends_raw])
        listeners = self._finish_listeners(drafts, routes_raw)
        self._check_routes_unique(routes)
        self._check_challenges_answered(certificates, drafts)

        if self.problems.items:
            raise ConfigError(_in_file_order(self.problems.items, list(data)))
        return Config(
            source=self.source,
            node=node,
            store=store,
            log=log,
            certificates=tuple(c for c, _ in certificates),
            listeners=listeners,
            routes=tuple(r for r, _ in routes),
            backends=tuple(b for b, _ in backends),
            acme=acme,
        )

    def _check_top_level(self, data: Mapping[str, object]) -> None:
        valid = ", ".join(_SECTIONS)
        for key, value in data.items():
            if key in _SECTIONS:
                continue
            if key in _UNSUPPORTED_SECTIONS:
                message = (
                    f"the [{key}] section is not supported by this version; valid sections: {valid}"
                )
            else:
                kind = "section" if isinstance(value, dict | list) else "top-level key"
                owners = [s for s in _SECTIONS if key in _SECTION_KEYS[s]]
                if owners:
                    owner = f"[[{owners[0]}]]" if owners[0] in _ARRAY_SECTIONS else f"[{owners[0]}]"
                    hint = f" {key!r} belongs inside a section such as {owner};"
                else:
                    hint = _suggest(key, _SECTIONS)
                message = f"unknown {kind} {_show(key)};{hint} valid sections: {valid}"
            self.problems.add(_key_path("", key), message)

    def _section_table(self, name: str, value: object) -> _Table:
        if value is None:
            return _Table(self.problems, {}, name, _SECTION_KEYS[name])
        if isinstance(value, dict):
            return _Table(self.problems, value, name, _SECTION_KEYS[name])
        hint = f"; write [{name}] (single brackets)" if isinstance(value, list) else ""
        self.problems.add(name, f"expected a table, {_got(value)}{hint}")
        return _Table(self.problems, {}, name, _SECTION_KEYS[name])

    def _array(self, name: str, value: object) -> list[tuple[str, Mapping[str, object]]]:
        if value is None:
            return []
        if not isinstance(value, list):
            hint = ""
            if isinstance(value, dict):
                hint = f"; write [[{name}]] (double brackets) for each entry"
            self.problems.add(name, f"expected an array of tables, {_got(value)}{hint}")
            return []
        out: list[tuple[str, Mapping[str, object]]] = []
        for i, item in enumerate(value):
            path = f"{name}[{i}]"
            if isinstance(item, dict):
                out.append((path, item))
            else:
                self.problems.add(path, f"expected a table, {_got(item)}")
        return out

    def _unique(self, items: list[tuple[_N, str]]) -> list[tuple[_N, str]]:
        """Report names used twice in one array section."""
        seen: dict[str, str] = {}
        for item, path in items:
            if not item.name:
                continue  # a missing name was already reported
            if item.name in seen:
                self.problems.add(
                    f"{path}.name",
                    f"duplicate name {_show(item.name)}; it is already used by {seen[item.name]}",
                )
            else:
                seen[item.name] = path
        return items

    # Shared helpers.

    def _name(self, table: _Table, what: str) -> str:
        value = table.required_text("name", f"every {what} needs a unique name")
        if value is None:
            return ""
        if not _NAME.fullmatch(value):
            table.add(
                "name",
                f"{_show(value)} is not a valid name; use letters, digits, '_', '.' and '-'",
            )
        return value

    def _path(self, table: _Table, name: str, *, required: str | None = None) -> Path | None:
        """A file path; relative paths resolve against the config file's directory.
        An empty string means "not set"."""
        value = table.text(name)
        if value is None or value == "":
            # A value of the wrong type was reported by text(); absent or "" is reported here.
            if required is not None and (not table.has(name) or value == ""):
                table.add(name, f"{name} is required: {required}")
            return None
        return self._resolve(table, name, value)

    def _resolve(self, table: _Table, name: str, value: str) -> Path | None:
        if "\0" in value:
            table.add(name, f"{_show(value)} contains a NUL character")
            return None
        if value.startswith("~"):
            table.add(
                name,
                f"{_show(value)}: '~' is not expanded; write an absolute path or one "
                "relative to the config file's directory",
            )
            return None
        return Path(os.path.normpath(self.base / value))

    def _reference(
        self,
        table: _Table,
        key: str,
        value: str,
        *,
        referrer: str,
        kind: str,
        section: str,
        defined: list[str],
    ) -> None:
        if value in defined:
            return
        if defined:
            names = ", ".join(sorted(set(defined)))
            listed = f"defined {section}: {names}"
        else:
            listed = f"no [[{section}]] are defined"
        table.add(
            key, f"{referrer} refers to {kind} {_show(value)}, which is not defined; {listed}"
        )

    # [node], [log], [store]

    def _node(self, table: _Table) -> NodeConfig:
        name = table.text("name")
        if name is not None and not name.strip():
            table.add("name", "must not be empty; omit it to use the host name")
        if name is None or not name.strip():
            name = socket.gethostname()
        if table.data.get("data_dir") == "":
            table.add("data_dir", "must not be empty; omit it to use /var/lib/tlsgate")
        data_dir = self._path(table, "data_dir") or Path("/var/lib/tlsgate")
        workers = table.integer("workers", 0, minimum=0, maximum=_MAX_WORKERS)
        shutdown_timeout = table.duration("shutdown_timeout", 30.0, allow_zero=True)
        ticket_key_rotation = table.duration("ticket_key_rotation", 43200.0)
        if 0 < ticket_key_rotation < 1.0:
            table.add("ticket_key_rotation", "must be at least '1s'; the default is '12h'")
            ticket_key_rotation = 43200.0
        user = self._account(table, "user")
        group = self._account(table, "group")
        if table.given("group") and not table.given("user"):
            table.add(
                "group",
                "group is the workers' group when they run as node.user; set user too "
                '(e.g. user = "tlsgate"), or remove group',
            )
        return NodeConfig(
            name=name,
            data_dir=data_dir,
            workers=workers,
            shutdown_timeout=shutdown_timeout,
            ticket_key_rotation=ticket_key_rotation,
            user=user,
            group=group,
        )

    def _account(self, table: _Table, kind: Literal["user", "group"]) -> str:
        """``[node] user`` or ``group``: a name this system knows; "" when not set."""
        value = table.text(kind)
        if not value:
            return ""
        problem = _account_problem(kind, value)
        if problem is not None:
            table.add(kind, problem)
            return ""
        return value

    def _log(self, table: _Table) -> LogConfig:
        access = table.string("access", "-")
        if access not in ("-", ""):
            resolved = self._resolve(table, "access", access)
            access = str(resolved) if resolved else "-"
        error = table.string("error", "-")
        if error == "":
            table.add("error", "must not be empty; use '-' for standard error or a file path")
        elif error != "-":
            resolved = self._resolve(table, "error", error)
            error = str(resolved) if resolved else "-"
        level = table.choice("level", _LOG_LEVELS, "info", "log level")
        return LogConfig(access=access, error=error, level=level)

    def _store(self, table: _Table, node: NodeConfig) -> StoreConfig:
        url = f"sqlite://{node.data_dir / 'state.db'}"
        given = table.text("url")
        if given is not None:
            url = self._store_url(table, given) or url
        key_file = self._path(table, "key_file")
        return StoreConfig(url=url, key_file=key_file)

    def _store_url(self, table: _Table, url: str) -> str | None:
        examples = (
            "'sqlite:///var/lib/tlsgate/state.db' or 'etcd://10.0.0.5:2379,10.0.0.6:2379/tlsgate'"
        )
        if url.startswith("sqlite://"):
            path = url[len("sqlite://") :]
            if path == "":
                table.add("url", f"the sqlite URL has no file path; expected e.g. {examples}")
                return None
            resolved = self._resolve(table, "url", path)
            return f"sqlite://{resolved}" if resolved else None
        if url.startswith("etcd://"):
            endpoints, _, _prefix = url[len("etcd://") :].partition("/")
            if endpoints == "":
                table.add("url", f"the etcd URL has no endpoints; expected e.g. {examples}")
                return None
            for endpoint in endpoints.split(","):
                try:
                    _parse_server(endpoint)
                except ValueError as exc:
                    table.add("url", f"bad etcd endpoint: {exc}")
                    return None
            return url
        table.add("url", f"{_show(url)} is not a store URL; expected {examples}")
        return None

    # [acme]

    def _acme(self, value: object) -> AcmeConfig | None:
        """The ``[acme]`` section; None when the file has none (or it is not a table)."""
        if value is None:
            return None
        self.acme_present = True
        table = self._section_table("acme", value)
        if not isinstance(value, dict):
            return None
        directory = table.required_text(
            "directory", f'the ACME server\'s directory URL, e.g. directory = "{_LETS_ENCRYPT}"'
        )
        if directory is not None and (problem := _directory_problem(directory)) is not None:
            table.add("directory", problem)
        email = table.string("email", "")
        if email and (problem := _email_problem(email)) is not None:
            table.add("email", problem)
        ca_file = self._path(table, "ca_file")
        challenges, challenges_ok = table.choice_list(
            "challenges", _ACME_CHALLENGES, _DEFAULT_CHALLENGES, "challenge type"
        )
        if challenges_ok:
            self.acme_challenges = challenges
        key_types, _ = table.choice_list("key_types", _KEY_TYPES, ("ecdsa-p256",), "key type")
        eab_kid, eab_hmac_key = self._eab(table)
        renew_check_interval = table.duration("renew_check_interval", 3600.0)
        if renew_check_interval < _MIN_RENEW_CHECK:
            table.add(
                "renew_check_interval",
                f"{_show(str(value.get('renew_check_interval')))} is shorter than 1s; expected a "
                "duration of at least '1s', e.g. '1h'",
            )
            renew_check_interval = 3600.0
        lifetime = table.duration("certificate_lifetime", 0.0)
        if lifetime and lifetime < 60.0:
            table.add(
                "certificate_lifetime",
                f"{_show(str(value.get('certificate_lifetime')))} is shorter than 60s; expected "
                "a duration of at least '60s' (or '0s' for the CA's default), e.g. '7d'",
            )
            lifetime = 0.0
        dns = self._dns(table, challenges if challenges_ok else None)
        return AcmeConfig(
            directory=directory or "",
            email=email,
            ca_file=ca_file,
            challenges=challenges,
            key_types=key_types,
            eab_kid=eab_kid,
            eab_hmac_key=eab_hmac_key,
            dns=dns,
            renew_check_interval=renew_check_interval,
            certificate_lifetime=lifetime,
        )

    def _eab(self, table: _Table) -> tuple[str, str]:
        """``eab_kid`` and ``eab_hmac_key`` (unpadded base64url): both or neither."""
        eab_kid = table.string("eab_kid", "")
        # RFC 8555 §7.3.4: "The key identifier MUST be an ASCII string."
        if eab_kid and (not eab_kid.isascii() or _has_control(eab_kid)):
            table.add(
                "eab_kid",
                f"{_show(eab_kid)}: the key identifier must be ASCII without spaces or control "
                "characters (RFC 8555 §7.3.4), as the CA gave it",
            )
        eab_hmac_key = table.secret("eab_hmac_key")
        if eab_hmac_key:
            eab_hmac_key, problem = _eab_key(eab_hmac_key)
            if problem is not None:
                table.add("eab_hmac_key", problem)
        why = (
            "external account binding (RFC 8555 §7.3.4) needs both the key identifier and "
            "the MAC key that the CA gave you"
        )
        if table.given("eab_kid") and not table.given("eab_hmac_key"):
            table.add("eab_hmac_key", f"eab_hmac_key is required with eab_kid: {why}")
        elif table.given("eab_hmac_key") and not table.given("eab_kid"):
            table.add("eab_kid", f"eab_kid is required with eab_hmac_key: {why}")
        return eab_kid, eab_hmac_key

    def _dns(
        self, acme: _Table, challenges: tuple[AcmeChallenge, ...] | None
    ) -> DnsUpdateConfig | None:
        """``[acme.dns]``, for the dns-01 challenge (``challenges`` None: the list was
        invalid and reported, so whether dns belongs here is not judged)."""
        example = (
            'e.g. dns = { server = "10.0.0.53:53", zone = "example.com", '
            'tsig_key_name = "tlsgate", tsig_secret = "<base64>" }'
        )
        if not acme.has("dns"):
            if challenges is not None and "dns-01" in challenges:
                acme.add(
                    "dns",
                    "dns is required with the dns-01 challenge: the DNS server that takes "
                    f"RFC 2136 updates for the _acme-challenge records, {example}",
                )
            return None
        if challenges is not None and "dns-01" not in challenges:
            acme.add(
                "dns",
                'dns is only used by the dns-01 challenge; add "dns-01" to challenges, '
                "or remove dns",
            )
            return None
        value = acme.data["dns"]
        if not isinstance(value, dict):
            acme.add("dns", f"expected a table, {_got(value)}; {example}")
            return None
        table = _Table(self.problems, value, acme.key("dns"), _DNS_KEYS)
        server = ""
        server_text = table.required_text(
            "server",
            "the 'host:port' of the DNS server that takes the updates (port 53 if left out)",
        )
        if server_text is not None:
            try:
                server = _parse_dns_server(server_text)
            except ValueError as exc:
                table.add("server", str(exc))
        zone = table.required_text("zone", 'the zone that is updated, e.g. zone = "example.com"')
        if zone is not None:
            zone = zone.lower()
            # Underscores allowed: the zone may be a delegated "_acme-challenge.example.com".
            problem = _dns_name_problem(zone, wildcard=False, underscore=True)
            if problem is not None:
                table.add("zone", problem)
        key_name = table.string("tsig_key_name", "").lower()
        if key_name and (problem := _dns_name_problem(key_name, wildcard=False, underscore=True)):
            table.add("tsig_key_name", f"a TSIG key name is a domain name: {problem}")
        secret = table.secret("tsig_secret")
        if secret and (problem := _tsig_secret_problem(secret)) is not None:
            table.add("tsig_secret", problem)
        # RFC 8945 §4.2: a signed message carries the key's name and the MAC made with
        # its secret; one without the other cannot sign anything.
        why = "a TSIG key (RFC 8945) is a name and a secret, as in the server's key file"
        if table.given("tsig_key_name") and not table.given("tsig_secret"):
            table.add("tsig_secret", f"tsig_secret is required with tsig_key_name: {why}")
        elif table.given("tsig_secret") and not table.given("tsig_key_name"):
            table.add("tsig_key_name", f"tsig_key_name is required with tsig_secret: {why}")
        algorithm = table.choice(
            "tsig_algorithm", _TSIG_ALGORITHMS, "hmac-sha256", "TSIG algorithm"
        )
        if (
            table.has("tsig_algorithm")
            and not table.given("tsig_key_name")
            and not table.given("tsig_secret")
        ):
            table.add(
                "tsig_algorithm",
                "tsig_algorithm is only used with tsig_key_name and tsig_secret; add the key "
                "or remove tsig_algorithm",
            )
        return DnsUpdateConfig(
            server=server,
            zone=zone or "",
            tsig_key_name=key_name,
            tsig_secret=secret,
            tsig_algorithm=algorithm,
            propagation_delay=table.duration("propagation_delay", 0.0, allow_zero=True),
        )

    def _check_challenges_answered(
        self,
        certificates: list[tuple[CertificateConfig, str]],
        drafts: list[_ListenerDraft],
    ) -> None:
        """Some enabled challenge must be one that this node can answer.

        http-01 is answered by http listeners and tls-alpn-01 by https listeners
        (their ports are not checked: the CA validates on 80 and 443, but tests and
        port-forwarding setups use others). dns-01 needs no listener. Only judged
        when certificates are ordered at all and every listener's protocol is known.
        """
        challenges = self.acme_challenges
        if challenges is None or "dns-01" in challenges:
            return
        if not any(c.issuer == "acme" for c, _ in certificates):
            return
        if any(not d.protocol_known for d in drafts):
            return
        protocols = {d.config.protocol for d in drafts}
        if any(_CHALLENGE_LISTENERS[c] in protocols for c in challenges):
            return
        if challenges == ("http-01",):
            message = (
                "http-01 is answered by http listeners, and there is none; add one "
                'or enable tls-alpn-01 (challenges = ["http-01", "tls-alpn-01"])'
            )
        elif challenges == ("tls-alpn-01",):
            message = (
                "tls-alpn-01 is answered by https listeners, and there is none; add one "
                'or enable http-01 (challenges = ["http-01", "tls-alpn-01"])'
            )
        else:
            message = (
                "http-01 is answered by http listeners and tls-alpn-01 by https listeners, "
                "and there are neither; add one, or enable dns-01"
            )
        self.problems.add("acme.challenges", message)

    # [[certificates]]

    def _certificate(self, path: str, raw: Mapping[str, object]) -> tuple[CertificateConfig, str]:
        table = _Table(self.problems, raw, path, _CERTIFICATE_KEYS)
        name = self._name(table, "certificate")
        domains: list[str] = []
        domain_paths: list[tuple[str, str]] = []
        given = table.strings("domains")
        if given is None and not table.has("domains"):
            table.add("domains", "domains is required: the DNS names (or IP addresses) it covers")
        elif table.data.get("domains") == []:
            table.add("domains", "must list at least one DNS name or IP address")
        for value, key_path in given or []:
            domain, problem = _normalize_host(value, wildcard=True, underscore=False)
            if problem is not None:
                self.problems.add(key_path, problem)
            elif domain in domains:
                self.problems.add(key_path, f"{_show(domain)} is listed twice")
            else:
                domains.append(domain)
                domain_paths.append((domain, key_path))
        issuer = self._issuer(table)
        cert_file = key_file = None
        if issuer == "acme":
            self._acme_certificate(table, domain_paths)
        elif issuer == "files":
            cert_file = self._path(
                table, "cert_file", required='issuer "files" reads the certificate chain from it'
            )
            key_file = self._path(
                table, "key_file", required='issuer "files" reads the private key from it'
            )
        return (
            CertificateConfig(
                name=name,
                domains=tuple(domains),
                issuer=issuer or "files",
                cert_file=cert_file,
                key_file=key_file,
            ),
            path,
        )

    def _issuer(self, table: _Table) -> Issuer | None:
        """The issuer; None when it was invalid (reported), so that the keys each
        issuer needs are not judged against a guess."""
        value = table.text("issuer")
        if value is None:
            return None if table.has("issuer") else "files"
        for issuer in _ISSUERS:
            if issuer == value:
                return issuer
        if value in _UNAVAILABLE_ISSUERS:
            table.add(
                "issuer",
                f'issuer {value!r} is not available in this version; use issuer = "acme" '
                '(with an [acme] section) or issuer = "files" with cert_file and key_file',
            )
        else:
            table.add(
                "issuer",
                f"{_show(value)} is not a valid issuer; expected one of: {_one_of(_ISSUERS)}",
            )
        return None

    def _acme_certificate(self, table: _Table, domains: list[tuple[str, str]]) -> None:
        """The rules for an ``issuer = "acme"`` certificate with ``domains`` (each with
        its key path)."""
        for key in ("cert_file", "key_file"):
            if table.has(key):
                table.add(
                    key,
                    f'{key} is not used with issuer = "acme": tlsgate obtains the certificate '
                    f"and its key from the ACME server and keeps them in the store; remove {key} "
                    '(or use issuer = "files")',
                )
        if not self.acme_present:
            table.add(
                "issuer",
                'issuer = "acme" needs an [acme] section with the ACME server\'s directory URL; '
                f'add one, e.g. [acme] directory = "{_LETS_ENCRYPT}"',
            )
            return
        challenges = self.acme_challenges
        if challenges is None:
            return  # the [acme] challenges were invalid, and reported there
        for domain, key_path in domains:
            if domain.startswith("*.") and "dns-01" not in challenges:
                # CA/Browser Forum Baseline Requirements §3.2.2.4.19 (http-01) and
                # §3.2.2.4.20 (tls-alpn-01): "This method is NOT suitable for validating
                # Wildcard Domain Names"; Let's Encrypt CPS §3.2.2: "Validation for
                # Wildcard Domain Names must be completed using the DNS Change method."
                self.problems.add(
                    key_path,
                    f"{_show(domain)}: a wildcard name can only be validated with the dns-01 "
                    'challenge, which [acme] challenges does not list; add "dns-01" to '
                    "challenges (with an [acme.dns] table), or list the names without a wildcard",
                )
            elif _is_ip(domain) and not {"http-01", "tls-alpn-01"} & set(challenges):
                # RFC 8738 §7: "The existing "dns-01" challenge MUST NOT be used to
                # validate IP identifiers."
                self.problems.add(
                    key_path,
                    f"{_show(domain)}: an IP address cannot be validated with dns-01 "
                    '(RFC 8738 §7), the only challenge in [acme] challenges; add "http-01" '
                    'or "tls-alpn-01" to challenges',
                )

    # [[listeners]]

    def _listener(self, path: str, raw: Mapping[str, object]) -> _ListenerDraft:
        table = _Table(self.problems, raw, path, _LISTENER_KEYS, _UNSUPPORTED_KEYS["listeners"])
        name = self._name(table, "listener")
        binds = self._binds(table)
        if not table.has("protocol"):
            table.add(
                "protocol",
                f"protocol is required; expected one of: {_one_of(LISTENER_PROTOCOLS)}",
            )
        protocol = table.choice("protocol", LISTENER_PROTOCOLS, "http", "protocol")
        protocol_known = table.has("protocol") and raw.get("protocol") in LISTENER_PROTOCOLS

        def only_on(key: str, allowed: tuple[str, ...]) -> bool:
            """Report ``key`` set on a listener whose protocol does not use it."""
            if table.has(key) and protocol_known and protocol not in allowed:
                kinds = " and ".join(allowed)
                table.add(key, f"{key} is only valid on {kinds} listeners, not on {protocol}")
                return False
            return True

        backend = table.text("backend") or None  # "" means no default backend
        if backend is not None:
            self._reference(
                table,
                "backend",
                backend,
                referrer="listener",
                kind="backend",
                section="backends",
                defined=self.backend_names,
            )
        fallback_backend: str | None = None
        if only_on("fallback_backend", ("tls-passthrough",)):
            # Where connections go that carry no usable SNI (no SNI, not TLS, a malformed
            # or oversized ClientHello); "" or absent closes them.
            fallback_backend = table.text("fallback_backend") or None
            if fallback_backend is not None:
                self._reference(
                    table,
                    "fallback_backend",
                    fallback_backend,
                    referrer="listener",
                    kind="backend",
                    section="backends",
                    defined=self.backend_names,
                )

        accept_proxy_protocol = table.boolean("accept_proxy_protocol", False)
        trusted = self._trusted_proxies(table)
        # Entries that were given but invalid are reported on their own; only a list
        # that is absent or empty is reported here.
        no_proxies = raw.get("trusted_proxies") in (None, [])
        if accept_proxy_protocol and no_proxies:
            table.add(
                "accept_proxy_protocol",
                "a PROXY header is believed only from trusted_proxies, which is empty; list the "
                "addresses of the proxies in front of this listener, e.g. "
                'trusted_proxies = ["10.0.0.0/8"]',
            )

        client_ip_header = ""
        if only_on("client_ip_header", ("http", "https")):
            client_ip_header = table.string("client_ip_header", "")
            if client_ip_header and not _TOKEN.fullmatch(client_ip_header):
                table.add(
                    "client_ip_header",
                    f"{_show(client_ip_header)} is not a header name (RFC 9110 token); "
                    "e.g. 'CF-Connecting-IP' or 'X-Real-IP'",
                )
            elif client_ip_header and no_proxies:
                table.add(
                    "client_ip_header",
                    "the header is believed only from trusted_proxies, which is empty; list the "
                    "addresses of the proxies that set it",
                )

        hsts = ""
        if only_on("hsts", ("https",)):
            hsts = table.string("hsts", "")
            problem = _hsts_problem(hsts) if hsts else None
            if problem is not None:
                table.add("hsts", f"{_show(hsts)}: {problem}")

        redirect_https = False
        if only_on("redirect_https", ("http",)):
            redirect_https = table.boolean("redirect_https", False)
        redirect_port = 443
        if only_on("redirect_port", ("http",)):
            redirect_port = table.integer("redirect_port", 443, minimum=1, maximum=65535)
            if table.has("redirect_port") and protocol_known and not redirect_https:
                table.add("redirect_port", "redirect_port is only used with redirect_https = true")

        certificates: list[str] = []
        if only_on("certificates", ("https",)):
            for value, key_path in table.strings("certificates") or []:
                if value in certificates:
                    self.problems.add(key_path, f"{_show(value)} is listed twice")
                    continue
                certificates.append(value)
                if value not in self.certificate_names:
                    self.problems.add(key_path, self._undefined_certificate(value, "listener"))
        default_certificate: str | None = None
        if only_on("default_certificate", ("https",)):
            default_certificate = table.text("default_certificate") or None
            if default_certificate is not None:
                if default_certificate not in self.certificate_names:
                    table.add(
                        "default_certificate",
                        self._undefined_certificate(default_certificate, "listener"),
                    )
                elif certificates and default_certificate not in certificates:
                    table.add(
                        "default_certificate",
                        f"{_show(default_certificate)} is not in this listener's certificates "
                        f"({', '.join(certificates)}); add it there or pick one of them",
                    )
        min_tls_version: TLSVersion = "1.2"
        if only_on("min_tls_version", ("https",)):
            min_tls_version = table.choice("min_tls_version", _TLS_VERSIONS, "1.2", "TLS version")

        if protocol_known and protocol == "https" and not self.certificate_names:
            table.add(
                "protocol",
                "an https listener needs a certificate, but no [[certificates]] are defined",
            )

        limits = ListenerLimits(
            header_timeout=table.duration("header_timeout", 10.0),
            idle_timeout=table.duration("idle_timeout", 60.0),
            tls_handshake_timeout=table.duration("tls_handshake_timeout", 10.0),
            max_header_size=table.size("max_header_size", 64 * 1024, minimum=1),
            max_body_size=table.size("max_body_size", 0),
            body_timeout=table.duration("body_timeout", 60.0),
            body_min_rate=table.size("body_min_rate", 500),
            send_timeout=table.duration("send_timeout", 60.0),
            max_headers=table.integer("max_headers", 100, minimum=1),
            max_connections=table.integer("max_connections", 10_000, minimum=1),
            max_connections_per_client=table.integer("max_connections_per_client", 0, minimum=0),
            max_client_hello_size=table.size(
                "max_client_hello_size",
                16 * 1024,
                minimum=_MIN_CLIENT_HELLO,
                maximum=_MAX_CLIENT_HELLO,
            ),
            connect_idle_timeout=table.duration("connect_idle_timeout", 3600.0),
        )
        config = ListenerConfig(
            name=name,
            bind=tuple(b for b, _ in binds),
            protocol=protocol,
            backend=backend,
            fallback_backend=fallback_backend,
            accept_proxy_protocol=accept_proxy_protocol,
            trusted_proxies=tuple(trusted),
            client_ip_header=client_ip_header,
            hsts=hsts,
            redirect_https=redirect_https,
            redirect_port=redirect_port,
            certificates=tuple(certificates),
            default_certificate=default_certificate,
            min_tls_version=min_tls_version,
            limits=limits,
        )
        return _ListenerDraft(config, path, binds, table.has("redirect_port"), protocol_known)

    def _undefined_certificate(self, name: str, referrer: str) -> str:
        if self.certificate_names:
            names = ", ".join(sorted(set(self.certificate_names)))
            listed = f"defined certificates: {names}"
        else:
            listed = "no [[certificates]] are defined"
        return f"{referrer} refers to certificate {_show(name)}, which is not defined; {listed}"

    def _binds(self, table: _Table) -> list[tuple[BindAddress, str]]:
        example = 'e.g. bind = ["0.0.0.0:443", "[::]:443"]'
        if not table.has("bind"):
            table.add("bind", f"bind is required: the addresses to listen on, {example}")
            return []
        value = table.data["bind"]
        items: list[tuple[str, str]]
        if isinstance(value, str):
            items = [(value, table.key("bind"))]
        elif isinstance(value, list):
            items = table.strings("bind") or []
            if not value:
                table.add("bind", f"must list at least one address, {example}")
        else:
            table.add("bind", f"expected a string or an array of strings, {_got(value)}")
            return []
        binds: list[tuple[BindAddress, str]] = []
        for text, key_path in items:
            try:
                binds.append((_parse_bind(text), key_path))
            except ValueError as exc:
                self.problems.add(key_path, str(exc))
        return binds

    def _trusted_proxies(self, table: _Table) -> list[IPNetwork]:
        networks: list[IPNetwork] = []
        for text, key_path in table.strings("trusted_proxies") or []:
            try:
                networks.append(_parse_network(text))
            except ValueError as exc:
                self.problems.add(key_path, str(exc))
        return networks

    def _finish_listeners(
        self,
        drafts: list[_ListenerDraft],
        routes_raw: list[tuple[str, Mapping[str, object]]],
    ) -> tuple[ListenerConfig, ...]:
        """Cross-listener rules: duplicate names, overlapping binds, where traffic goes,
        and the default redirect port."""
        self._unique([(d.config, d.path) for d in drafts])
        self._check_overlaps(drafts)

        routed = {name for _, raw in routes_raw if isinstance(name := raw.get("listener"), str)}
        backends = ", ".join(sorted(set(self.backend_names))) or "none are defined"
        for draft in drafts:
            listener = draft.config
            if listener.backend is not None or not draft.protocol_known:
                continue
            where = f"{draft.path}.backend"
            if listener.protocol == "tcp":
                self.problems.add(
                    where,
                    "a tcp listener needs a backend to forward connections to; "
                    f"defined backends: {backends}",
                )
            elif listener.name not in routed and not (
                listener.protocol == "http" and listener.redirect_https
            ):
                also = " or set redirect_https = true" if listener.protocol == "http" else ""
                self.problems.add(
                    where,
                    "this listener has no backend and no route refers to it, so it has "
                    f"nowhere to send traffic; set backend (defined backends: {backends}), "
                    f"add a [[routes]] entry with listener = {listener.name!r}{also}",
                )

        https_port = 443
        for draft in drafts:
            if draft.config.protocol == "https" and draft.binds:
                https_port = draft.binds[0][0].port
                break
        return tuple(
            draft.config
            if draft.redirect_port_set
            else dataclasses.replace(draft.config, redirect_port=https_port)
            for draft in drafts
        )

    def _check_overlaps(self, drafts: list[_ListenerDraft]) -> None:
        """Two sockets cannot own the same address and port, and 0.0.0.0:P (or [::]:P)
        already owns every address of its family on port P."""
        seen: list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, BindAddress, str, str]] = []
        for draft in drafts:
            for bind, key_path in draft.binds:
                address = ipaddress.ip_address(bind.host)
                for other_address, other, other_path, other_name in seen:
                    if other.port != bind.port or other_address.version != address.version:
                        continue
                    owner = f"listener {other_name!r}" if other_name else "another listener"
                    if other_address == address:
                        message = f"{bind} is already bound by {owner} ({other_path})"
                    elif other_address.is_unspecified or address.is_unspecified:
                        wildcard = other if other_address.is_unspecified else bind
                        message = (
                            f"{bind} overlaps {other} of {owner} ({other_path}): {wildcard} "
                            f"covers every IPv{address.version} address on port {bind.port}"
                        )
                    else:
                        continue
                    self.problems.add(
                        key_path, f"{message}; each address and port can be bound only once"
                    )
                    break
                seen.append((address, bind, key_path, draft.config.name))

    # [[routes]]

    def _route(self, path: str, raw: Mapping[str, object]) -> tuple[RouteConfig, str]:
        table = _Table(self.problems, raw, path, _ROUTE_KEYS)
        listener = table.required_text("listener", "the name of the listener this route is on")
        protocol: str | None = None
        if listener is not None:
            if listener in self.listener_names:
                protocol = self.listener_protocols.get(listener)
            else:
                self._reference(
                    table,
                    "listener",
                    listener,
                    referrer="route",
                    kind="listener",
                    section="listeners",
                    defined=self.listener_names,
                )
        if protocol == "tcp":
            table.add(
                "listener",
                f"listener {listener!r} is a tcp listener, which cannot route (a tcp "
                "connection carries no host name); give the listener a backend, or use "
                'protocol = "tls-passthrough" to route by SNI',
            )
        backend = table.required_text("backend", "the name of the backend to send requests to")
        if backend is not None:
            self._reference(
                table,
                "backend",
                backend,
                referrer="route",
                kind="backend",
                section="backends",
                defined=self.backend_names,
            )
        hosts: list[str] = []
        for value, key_path in table.strings("hosts") or []:
            if value == "*":
                self.problems.add(
                    key_path, "'*' alone is not a host; omit hosts to match every host"
                )
                continue
            if value.count(":") == 1:
                host = value.partition(":")[0].lower()
                problem: str | None = (
                    f"{_show(value)}: hosts are matched without a port; write {host!r}"
                )
            else:
                host, problem = _normalize_host(value, wildcard=True, underscore=True)
            if problem is not None:
                self.problems.add(key_path, problem)
            elif host in hosts:
                self.problems.add(key_path, f"{_show(host)} is listed twice")
            else:
                hosts.append(host)
        path_prefix = table.string("path_prefix", "/")
        if not path_prefix.startswith("/"):
            table.add("path_prefix", f"{_show(path_prefix)} must start with '/', as in '/api/'")
            path_prefix = "/"
        elif (problem := _plain_text_problem(path_prefix)) is not None or any(
            c in path_prefix for c in "?#"
        ):
            table.add(
                "path_prefix",
                problem or f"{_show(path_prefix)}: a path prefix cannot contain '?' or '#'",
            )
            path_prefix = "/"
        elif protocol == "tls-passthrough" and path_prefix != "/":
            table.add(
                "path_prefix",
                "a route on a tls-passthrough listener matches the SNI name only (the request "
                "is encrypted); path_prefix must be '/'",
            )
        route = RouteConfig(
            listener=listener or "",
            backend=backend or "",
            hosts=tuple(hosts),
            path_prefix=path_prefix,
        )
        return route, path

    def _check_routes_unique(self, routes: list[tuple[RouteConfig, str]]) -> None:
        """A route that matches exactly what an earlier one matches can never be used."""
        seen: dict[tuple[str, str, str], str] = {}
        for route, path in routes:
            if not route.listener or not route.backend:
                continue  # already reported; a comparison would only add noise
            for host in route.hosts or ("",):
                key = (route.listener, host, route.path_prefix)
                if key in seen and seen[key] != path:
                    shown = f"host {host!r} with " if host else ""
                    self.problems.add(
                        path,
                        f"this route can never match: {seen[key]} already matches "
                        f"{shown}path_prefix {route.path_prefix!r} on listener {route.listener!r}",
                    )
                    break
                seen.setdefault(key, path)

    # [[backends]]

    def _backend(self, path: str, raw: Mapping[str, object]) -> tuple[BackendConfig, str]:
        table = _Table(self.problems, raw, path, _BACKEND_KEYS)
        name = self._name(table, "backend")
        discover = table.boolean("discover", False)
        servers = self._servers(table, discover)
        balance = table.choice("balance", BALANCE_ALGORITHMS, "round_robin", "balance algorithm")
        tls = table.choice("tls", _UPSTREAM_TLS, "off", "tls mode")
        tls_known = not table.has("tls") or raw.get("tls") in _UPSTREAM_TLS
        ca_file = self._path(table, "ca_file")
        if ca_file is not None and tls_known and tls != "verify":
            table.add("ca_file", f'ca_file is only used with tls = "verify" (tls is "{tls}")')
        server_name = table.string("server_name", "")
        if server_name:
            normalized, problem = _normalize_host(server_name, wildcard=False, underscore=True)
            if problem is not None:
                table.add("server_name", problem)
            else:
                server_name = normalized
            if tls_known and tls == "off":
                table.add(
                    "server_name", 'server_name is only used with tls = "insecure" or "verify"'
                )
        client_cert = table.string("client_cert", "")
        if client_cert:
            if client_cert not in self.certificate_names:
                table.add("client_cert", self._undefined_certificate(client_cert, "backend"))
            if tls_known and tls == "off":
                table.add(
                    "client_cert", 'client_cert is only used with tls = "insecure" or "verify"'
                )
        send_proxy_protocol = table.choice(
            "send_proxy_protocol", _PROXY_VERSIONS, "", "PROXY protocol version"
        )
        proxy_known = (
            not table.has("send_proxy_protocol")
            or raw.get("send_proxy_protocol") in _PROXY_VERSIONS
        )
        proxy_protocol_crc32c = table.boolean("proxy_protocol_crc32c", False)
        if proxy_protocol_crc32c and proxy_known and send_proxy_protocol != "v2":
            # PP2_TYPE_CRC32C is a TLV of the binary v2 header (PROXY protocol spec §2.2);
            # a v1 line has nowhere to put a checksum.
            now = f'is "{send_proxy_protocol}"' if send_proxy_protocol else "is not set"
            table.add(
                "proxy_protocol_crc32c",
                "a CRC32C checksum exists only in PROXY protocol v2 headers; set "
                f'send_proxy_protocol = "v2" (send_proxy_protocol {now}) or remove it',
            )
        health = self._health(table, tls if tls_known else None)
        backend = BackendConfig(
            name=name,
            servers=servers,
            balance=balance,
            discover=discover,
            tls=tls,
            ca_file=ca_file,
            server_name=server_name,
            client_cert=client_cert,
            send_proxy_protocol=send_proxy_protocol,
            proxy_protocol_crc32c=proxy_protocol_crc32c,
            health=health,
            connect_timeout=table.duration("connect_timeout", 5.0),
            read_timeout=table.duration("read_timeout", 60.0),
            pool_idle_timeout=table.duration("pool_idle_timeout", 2.0),
            fail_timeout=table.duration("fail_timeout", 10.0),
            retries=table.integer("retries", 2, minimum=0),
            max_idle_per_server=table.integer("max_idle_per_server", 256, minimum=0),
            max_fails=table.integer("max_fails", 1, minimum=1),
        )
        return backend, path

    def _servers(self, table: _Table, discover: bool) -> tuple[ServerConfig, ...]:
        example = 'e.g. servers = ["10.0.0.11:8080", { address = "10.0.0.12:8080", weight = 2 }]'
        if not table.has("servers"):
            if not discover:
                table.add(
                    "servers",
                    f"servers is required (or discover = true), {example}",
                )
            return ()
        value = table.data["servers"]
        if not isinstance(value, list):
            table.add("servers", f"expected an array of servers, {_got(value)}; {example}")
            return ()
        if not value and not discover:
            table.add(
                "servers", f"must list at least one server (or set discover = true), {example}"
            )
        servers: list[ServerConfig] = []
        seen: dict[tuple[str, int], str] = {}
        for i, item in enumerate(value):
            key_path = f"{table.key('servers')}[{i}]"
            server = self._server(item, key_path, example)
            if server is None:
                continue
            ident = (server.host, server.port)
            if ident in seen:
                self.problems.add(
                    key_path, f"{server.address} is listed twice (also {seen[ident]})"
                )
                continue
            seen[ident] = key_path
            servers.append(server)
        return tuple(servers)

    def _server(self, item: object, key_path: str, example: str) -> ServerConfig | None:
        if isinstance(item, str):
            try:
                host, port = _parse_server(item)
            except ValueError as exc:
                self.problems.add(key_path, str(exc))
                return None
            return ServerConfig(host=host, port=port)
        if not isinstance(item, dict):
            self.problems.add(
                key_path, f"expected a 'host:port' string or a table, {_got(item)}; {example}"
            )
            return None
        entry = _Table(self.problems, item, key_path, _SERVER_KEYS)
        address = entry.required_text("address", "the server's 'host:port'")
        weight = entry.integer("weight", 1, minimum=1, maximum=_MAX_WEIGHT)
        if address is None:
            return None
        try:
            host, port = _parse_server(address)
        except ValueError as exc:
            entry.add("address", str(exc))
            return None
        return ServerConfig(host=host, port=port, weight=weight)

    def _health(self, backend: _Table, tls: UpstreamTLS | None) -> HealthCheckConfig | None:
        """The ``health`` table of a backend whose ``tls`` mode is ``tls`` (None when that
        mode was invalid and already reported)."""
        if not backend.has("health"):
            return None
        value = backend.data["health"]
        if value is False:
            return None
        if not isinstance(value, dict):
            backend.add(
                "health",
                'expected a table such as { path = "/healthz", interval = "2s" } or false, '
                f"{_got(value)}",
            )
            return None
        table = _Table(self.problems, value, backend.key("health"), _HEALTH_KEYS)
        path = table.text("path")
        default_kind: Literal["http", "tcp"] = "http" if path is not None else "tcp"
        kind = table.choice("type", _HEALTH_KINDS, default_kind, "health check type")
        kind_known = not table.has("type") or value.get("type") in _HEALTH_KINDS
        if kind_known and kind != "http":
            for key in ("path", "host", "expect_status"):
                if not table.has(key) or (key == "host" and kind == "tls"):
                    continue
                if kind == "tls":
                    message = (
                        f"{key} is only used by http checks; a tls check completes a TLS "
                        "handshake and sends no request, so remove it"
                    )
                else:
                    users = "http and tls checks" if key == "host" else "http checks"
                    message = (
                        f'{key} is only used by {users}; set path (and type = "http") or remove it'
                    )
                table.add(key, message)
        if path is None:
            path = "/"
        elif not path.startswith("/"):
            table.add("path", f"{_show(path)} must start with '/', as in '/healthz'")
        elif (problem := _plain_text_problem(path)) is not None:
            table.add("path", problem)
        host = table.string("host", "")
        if host and kind == "tls":
            # A tls check sends host as the SNI name and verifies the certificate against
            # it, so it must be a name a certificate can hold: no port, no spaces.
            normalized, problem = _normalize_host(host, wildcard=False, underscore=True)
            if problem is not None:
                table.add("host", f"{problem}; a tls check sends host as the SNI name")
            else:
                host = normalized
        elif host and (problem := _plain_text_problem(host)) is not None:
            table.add("host", problem)
        tls_verify, ca_file = self._health_tls(table, kind if kind_known else None, tls)
        expect_status = self._expect_status(table)
        interval = table.duration("interval", 2.0)
        timeout = table.duration("timeout", 1.0)
        if timeout >= interval:
            table.add(
                "timeout",
                f"timeout ({timeout:g}s) must be shorter than interval ({interval:g}s)",
            )
        return HealthCheckConfig(
            kind=kind,
            path=path,
            host=host,
            expect_status=expect_status,
            interval=interval,
            timeout=timeout,
            rise=table.integer("rise", 2, minimum=1),
            fall=table.integer("fall", 3, minimum=1),
            tls_verify=tls_verify,
            ca_file=ca_file,
        )

    def _health_tls(
        self, table: _Table, kind: str | None, tls: UpstreamTLS | None
    ) -> tuple[bool, Path | None]:
        """``tls_verify`` and ``ca_file`` of a health check of ``kind`` on a backend with
        ``tls`` (either None when invalid, so that nothing is reported twice).

        A check makes a TLS handshake when it is a tls check, or an http check of a
        backend with tls on. Health checks never verify less than requests do: a check
        of a ``tls = "verify"`` backend verifies whatever tls_verify says, so an explicit
        ``tls_verify = false`` there would be silently overruled and is refused.
        """
        tls_verify = table.boolean("tls_verify", False)
        handshakes = kind == "tls" or (kind == "http" and tls in ("insecure", "verify"))
        if table.has("tls_verify") and kind is not None:
            if kind == "tcp":
                table.add(
                    "tls_verify",
                    "a tcp check makes no TLS handshake, so there is nothing to verify; "
                    'use type = "tls" to check a server that speaks TLS, or remove tls_verify',
                )
            elif kind == "http" and tls == "off":
                table.add(
                    "tls_verify",
                    'the backend has tls = "off", so its http checks make no TLS handshake and '
                    'there is nothing to verify; use type = "tls" to check a server that '
                    "terminates TLS itself, or remove tls_verify",
                )
            elif handshakes and tls == "verify" and table.data["tls_verify"] is False:
                table.add(
                    "tls_verify",
                    'checks of a tls = "verify" backend always verify the certificate, as '
                    'requests do; remove tls_verify = false (or use tls = "insecure")',
                )
        ca_file = self._path(table, "ca_file")
        if ca_file is not None and table.data.get("tls_verify") is not True:
            table.add(
                "ca_file",
                "ca_file is only used with tls_verify = true: it holds the CA certificates "
                "the check verifies the server's certificate against",
            )
        return tls_verify, ca_file

    def _expect_status(self, table: _Table) -> tuple[int, int]:
        default = (200, 399)
        expected = 'expected a status code like 200 or a range like "200-399" (100 to 599)'
        if not table.has("expect_status"):
            return default
        value = table.data["expect_status"]
        if isinstance(value, int) and not isinstance(value, bool):
            low = high = value
        elif isinstance(value, str) and (match := _STATUS_RANGE.fullmatch(value.strip())):
            low = int(match.group(1))
            high = int(match.group(2) or low)
        else:
            shown = _show(value) if isinstance(value, str) else _got(value)
            table.add("expect_status", f"{shown}: {expected}")
            return default
        if not (100 <= low <= 599 and 100 <= high <= 599):
            shown = _number(value) if isinstance(value, int) else _show(value)
            table.add("expect_status", f"{shown} is out of range; {expected}")
            return default
        if low > high:
            table.add("expect_status", f'{value!r}: the range is backwards; write "{high}-{low}"')
            return default
        return (low, high)


_PATH_HEAD = re.compile(r"([A-Za-z0-9_-]+)(?:\[([0-9]+)\])?")


def _in_file_order(problems: list[ConfigProblem], top_level: list[str]) -> list[ConfigProblem]:
    """Sort problems by where their section (and array entry) appears in the file, so
    that checks which ran late, such as overlapping binds, are listed in place."""
    rank = {key: i for i, key in enumerate(top_level)}

    def position(problem: ConfigProblem) -> tuple[int, int]:
        match = _PATH_HEAD.match(problem.key_path)
        if match is None:
            return (-1, 0)  # whole-file problems and quoted top-level keys first
        index = match.group(2)
        return (rank.get(match.group(1), len(rank)), int(index) if index else -1)

    return sorted(problems, key=position)  # stable: order within an entry is kept


def _declared_names(entries: list[tuple[str, Mapping[str, object]]]) -> list[str]:
    return [name for _, raw in entries if isinstance(name := raw.get("name"), str)]
