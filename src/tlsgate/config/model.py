"""The validated configuration model.

The loader (``tlsgate.config.loader``) turns a TOML file into these frozen
dataclasses after checking every key; nothing downstream ever sees raw TOML.
Objects refer to each other by name (listener -> route -> backend), the way
HAProxy frontends/backends and Traefik entryPoints/routers/services do; the
loader guarantees every name resolves. Durations are float seconds, sizes int
bytes. Everything here is picklable: the supervisor sends the model to workers.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ListenerProtocol = Literal["http", "https", "tcp", "tls-passthrough"]
BalanceAlgorithm = Literal["round_robin", "least_conn", "ip_hash", "random_two"]
UpstreamTLS = Literal["off", "insecure", "verify"]
ProxyProtocolVersion = Literal["", "v1", "v2"]
Issuer = Literal["files", "acme", "ca"]
TLSVersion = Literal["1.2", "1.3"]

LISTENER_PROTOCOLS: tuple[ListenerProtocol, ...] = ("http", "https", "tcp", "tls-passthrough")
BALANCE_ALGORITHMS: tuple[BalanceAlgorithm, ...] = (
    "round_robin",
    "least_conn",
    "ip_hash",
    "random_two",
)


@dataclass(frozen=True)
class BindAddress:
    """One ``host:port`` a listener binds. ``host`` is an IP literal ("0.0.0.0", "::1")."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class NodeConfig:
    name: str
    data_dir: Path
    workers: int = 0  # 0 = one per CPU core
    shutdown_timeout: float = 30.0  # SIGTERM: how long in-flight requests may finish
    ticket_key_rotation: float = 43200.0  # a new TLS session ticket key this often (12 h)
    # the workers' account (names checked against the user database by the loader);
    # "" = workers run as the supervisor does. group "" = the user's primary group.
    user: str = ""
    group: str = ""


@dataclass(frozen=True)
class LogConfig:
    access: str = "-"  # "-" = stdout, "" = off, otherwise a file path (JSON lines, appended)
    error: str = "-"  # "-" = stderr, otherwise a file path
    level: Literal["debug", "info", "warning", "error"] = "info"


@dataclass(frozen=True)
class StoreConfig:
    url: str  # "sqlite:///path/state.db" (default: <data_dir>/state.db)
    key_file: Path | None = None


AcmeChallenge = Literal["http-01", "tls-alpn-01", "dns-01"]
KeyTypeName = Literal["ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072", "rsa-4096"]


@dataclass(frozen=True)
class DnsUpdateConfig:
    """DNS-01 through RFC 2136 dynamic updates, signed with TSIG (RFC 8945)."""

    server: str  # "host:port" of the authoritative server that takes updates
    zone: str  # the zone updated, e.g. "example.com"
    tsig_key_name: str = ""
    tsig_secret: str = field(default="", repr=False)  # base64, as in BIND's key files
    tsig_algorithm: str = "hmac-sha256"
    propagation_delay: float = 0.0  # wait after the update before answering the challenge


@dataclass(frozen=True)
class AcmeConfig:
    directory: str  # the ACME server's directory URL
    email: str = ""
    ca_file: Path | None = None  # extra trust for the ACME server's own TLS (tests: Pebble's)
    challenges: tuple[AcmeChallenge, ...] = ("http-01", "tls-alpn-01")
    key_types: tuple[KeyTypeName, ...] = ("ecdsa-p256",)
    eab_kid: str = ""  # external account binding (RFC 8555 §7.3.4), both or neither
    eab_hmac_key: str = field(default="", repr=False)  # base64url; never in a repr (logs)
    dns: DnsUpdateConfig | None = None  # required when "dns-01" is in challenges
    renew_check_interval: float = 3600.0  # how often due dates are re-examined
    # ask the CA for this validity (the order's notAfter, RFC 8555 §7.4); 0 = the CA's
    # default. For CAs that honour it (Pebble, some private CAs); Let's Encrypt does not.
    certificate_lifetime: float = 0.0


@dataclass(frozen=True)
class CertificateConfig:
    """A certificate the node serves. With ``issuer = "files"`` it is read from disk.

    Two certificates may cover the same names with different key types (ECDSA
    and RSA): both are served, and each client gets the one it supports.
    """

    name: str
    domains: tuple[str, ...]
    issuer: Issuer = "files"
    cert_file: Path | None = None
    key_file: Path | None = None


@dataclass(frozen=True)
class ListenerLimits:
    header_timeout: float = 10.0  # whole request head must arrive within this (slowloris)
    idle_timeout: float = 60.0  # keep-alive: time allowed between requests
    max_header_size: int = 64 * 1024  # request line + all headers, bytes
    max_headers: int = 100
    max_body_size: int = 0  # 0 = unlimited
    # request body (slow POST): the longest wait for its next bytes, and after that much
    # time the least average rate in bytes per second (0 = no rate)
    body_timeout: float = 60.0
    body_min_rate: int = 500
    # a client that takes no output: the longest it may leave tlsgate's write buffer
    # for it full (slow readers), and after a close the time it has to take the rest
    send_timeout: float = 60.0
    max_connections: int = 10_000  # per listener, per worker
    # per listener, per worker, per client address (IPv6: per /64); 0 = no limit
    max_connections_per_client: int = 0
    tls_handshake_timeout: float = 10.0
    # tcp / tls-passthrough listeners (and the PROXY header on any listener)
    max_client_hello_size: int = 16 * 1024  # tls-passthrough: larger ClientHellos are refused
    connect_idle_timeout: float = 3600.0  # tcp / tls-passthrough: no byte either way for this long


@dataclass(frozen=True)
class ListenerConfig:
    name: str
    bind: tuple[BindAddress, ...]
    protocol: ListenerProtocol
    backend: str | None = None  # default backend when no route matches
    # tls-passthrough: where connections go that can't be routed by SNI (no SNI, not TLS,
    # a malformed or oversized ClientHello); None = close them
    fallback_backend: str | None = None
    accept_proxy_protocol: bool = False
    trusted_proxies: tuple[IPNetwork, ...] = ()
    client_ip_header: str = ""  # e.g. "CF-Connecting-IP"; read only from trusted_proxies
    hsts: str = ""  # Strict-Transport-Security value on https responses, "" = none
    redirect_https: bool = False  # http listeners: 308 to https (same host, path, query)
    redirect_port: int = 443  # the https port a redirect points at (omitted when 443)
    certificates: tuple[str, ...] = ()  # names of [[certificates]] served; () = all
    default_certificate: str | None = None  # served when SNI matches nothing / is absent
    min_tls_version: TLSVersion = "1.2"
    limits: ListenerLimits = field(default_factory=ListenerLimits)


@dataclass(frozen=True)
class RouteConfig:
    """Send requests for ``hosts`` (and ``path_prefix``) on ``listener`` to ``backend``.

    Matching: an exact host beats a ``*.`` wildcard (one label), which beats a
    route with no hosts; among equals the longest ``path_prefix`` wins, then
    the first declared.
    """

    listener: str
    backend: str
    hosts: tuple[str, ...] = ()  # lower-case; "*.example.com" matches one label
    path_prefix: str = "/"


@dataclass(frozen=True)
class ServerConfig:
    host: str
    port: int
    weight: int = 1  # 1..256

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class HealthCheckConfig:
    kind: Literal["http", "tcp", "tls"] = "http"  # "http" when a path is given, else "tcp"
    path: str = "/"
    host: str = ""  # Host header for http checks; "" = the server address
    expect_status: tuple[int, int] = (200, 399)  # inclusive range
    interval: float = 2.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3
    # "tls" checks (and "http" checks of tls backends): verify the server's certificate
    # against ca_file (None = the system store) for `host` or the backend's server_name
    tls_verify: bool = False
    ca_file: Path | None = None


@dataclass(frozen=True)
class BackendConfig:
    name: str
    servers: tuple[ServerConfig, ...]
    balance: BalanceAlgorithm = "round_robin"
    discover: bool = False
    tls: UpstreamTLS = "off"
    ca_file: Path | None = None
    server_name: str = ""
    client_cert: str = ""
    send_proxy_protocol: ProxyProtocolVersion = ""
    proxy_protocol_crc32c: bool = False  # v2 only: append a CRC32C TLV
    health: HealthCheckConfig | None = None  # None = no active checks
    connect_timeout: float = 5.0
    read_timeout: float = 60.0  # max server silence after the request body / reading a response
    retries: int = 2  # other servers tried when a connect fails and nothing was sent
    max_idle_per_server: int = 256  # keep-alive pool size per server, per worker
    pool_idle_timeout: float = 2.0  # pooled connections idle longer than this are closed
    fail_timeout: float = 10.0  # passive ejection: how long a failing server is skipped
    max_fails: int = 1  # passive ejection: consecutive connect failures before ejection


@dataclass(frozen=True)
class Config:
    """A whole validated configuration. ``source`` is the file it came from."""

    source: Path
    node: NodeConfig
    store: StoreConfig
    log: LogConfig
    certificates: tuple[CertificateConfig, ...]
    listeners: tuple[ListenerConfig, ...]
    routes: tuple[RouteConfig, ...]
    backends: tuple[BackendConfig, ...]
    acme: AcmeConfig | None = None

    def backend(self, name: str) -> BackendConfig:
        for b in self.backends:
            if b.name == name:
                return b
        raise KeyError(name)

    def certificate(self, name: str) -> CertificateConfig:
        for c in self.certificates:
            if c.name == name:
                return c
        raise KeyError(name)
