"""The TOML loader: a full valid file, every class of problem, and fuzzing.

Each problem test checks the key path and that the message says both what is
wrong and what would be valid. Most build on small valid snippets so that the
problem under test is the only one reported.
"""

from __future__ import annotations

import ipaddress
import math
import pickle
import socket
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tlsgate.config.loader import (
    DEFAULT_CONFIG_PATH,
    default_config_path,
    load_config,
    parse_config,
)
from tlsgate.config.model import (
    AcmeConfig,
    BindAddress,
    CertificateConfig,
    Config,
    DnsUpdateConfig,
    HealthCheckConfig,
    ServerConfig,
)
from tlsgate.errors import ConfigError, ConfigProblem

SOURCE = Path("/etc/tlsgate/tlsgate.toml")

# DESIGN.md §3 without [admin], [ca] and client_auth (not available in this version),
# plus an issuer = "files" certificate and the "api" backend the route refers to.
DESIGN_EXAMPLE = """
[node]
name = "lb-1"                     # default: host name
data_dir = "/var/lib/tlsgate"
workers = 0                       # 0 = one per CPU core

[store]
url = "sqlite:///var/lib/tlsgate/state.db"
key_file = "/etc/tlsgate/store.key"

[acme]
directory = "https://acme-v02.api.letsencrypt.org/directory"
email = "ops@example.com"
ca_file = ""                      # extra trust for the ACME server itself (tests: Pebble's)
challenges = ["http-01", "tls-alpn-01"]
key_types = ["ecdsa-p256"]        # add "rsa-2048" for dual certificates

[[certificates]]
name = "www"
domains = ["example.com", "www.example.com"]
issuer = "acme"                   # acme | ca | files (cert_file, key_file)

[[certificates]]
name = "legacy"
domains = ["legacy.example.com"]
issuer = "files"
cert_file = "certs/legacy.pem"
key_file = "/etc/tlsgate/keys/legacy.key"

[[listeners]]
name = "https"
bind = ["0.0.0.0:443"]
protocol = "https"                # http | https | tcp | tls-passthrough
backend = "app"                   # default backend
accept_proxy_protocol = false     # never auto-detected
trusted_proxies = []
client_ip_header = ""
hsts = "max-age=63072000"

[[listeners]]
name = "http"
bind = ["0.0.0.0:80"]
protocol = "http"
redirect_https = true             # ACME HTTP-01 is answered before any redirect

[[routes]]
listener = "https"
hosts = ["api.example.com", "*.api.example.com"]
path_prefix = "/"
backend = "api"

[[backends]]
name = "app"
balance = "round_robin"
servers = ["10.0.0.11:8080", { address = "10.0.0.12:8080", weight = 2 }]
discover = false
tls = "off"
ca_file = ""
server_name = ""
client_cert = ""
send_proxy_protocol = ""
health = { path = "/healthz", interval = "2s", timeout = "1s", rise = 2, fall = 3 }

[[backends]]
name = "api"
servers = ["10.0.0.21:8080"]
"""

BACKEND = """
[[backends]]
name = "app"
servers = ["10.0.0.11:8080"]
"""

CERTIFICATE = """
[[certificates]]
name = "www"
domains = ["example.com"]
cert_file = "www.pem"
key_file = "www.key"
"""


def listener(
    protocol: str = "http", bind: str = '"0.0.0.0:80"', name: str | None = None, **extra: str
) -> str:
    """A [[listeners]] table named ``name`` (default: the protocol); ``bind`` and
    ``extra`` values are TOML text, and ``backend = "app"`` unless "omit"ted."""
    lines = [
        "[[listeners]]",
        f'name = "{name or protocol}"',
        f"bind = {bind}",
        f'protocol = "{protocol}"',
    ]
    if "backend" not in extra:
        extra["backend"] = '"app"'
    lines += [f"{key} = {value}" for key, value in extra.items() if value != "omit"]
    return "\n" + "\n".join(lines) + "\n"


def problems_of(text: str, source: Path = SOURCE) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source)
    assert info.value.problems, "ConfigError without problems"
    return info.value.problems


def only_problem(text: str) -> ConfigProblem:
    problems = problems_of(text)
    assert len(problems) == 1, "\n".join(map(str, problems))
    assert problems[0].file == str(SOURCE)
    return problems[0]


# --- valid files ----------------------------------------------------------------------


def test_design_example_loads() -> None:
    config = parse_config(DESIGN_EXAMPLE, SOURCE)

    assert config.source == SOURCE
    assert config.node.name == "lb-1"
    assert config.node.data_dir == Path("/var/lib/tlsgate")
    assert config.node.workers == 0
    assert config.node.shutdown_timeout == 30.0
    assert config.store.url == "sqlite:///var/lib/tlsgate/state.db"
    assert config.store.key_file == Path("/etc/tlsgate/store.key")

    assert config.acme == AcmeConfig(
        directory="https://acme-v02.api.letsencrypt.org/directory",
        email="ops@example.com",
        ca_file=None,
        challenges=("http-01", "tls-alpn-01"),
        key_types=("ecdsa-p256",),
    )
    www, legacy = config.certificates
    assert www == CertificateConfig(
        name="www", domains=("example.com", "www.example.com"), issuer="acme"
    )
    assert legacy.issuer == "files"
    assert legacy.cert_file == Path("/etc/tlsgate/certs/legacy.pem")  # relative to the file
    assert legacy.key_file == Path("/etc/tlsgate/keys/legacy.key")

    https, http = config.listeners
    assert https.name == "https"
    assert https.protocol == "https"
    assert https.bind == (BindAddress("0.0.0.0", 443),)
    assert https.backend == "app"
    assert https.hsts == "max-age=63072000"
    assert https.certificates == ()
    assert http.protocol == "http"
    assert http.redirect_https is True
    assert http.redirect_port == 443
    assert http.backend is None

    (route,) = config.routes
    assert route.listener == "https"
    assert route.hosts == ("api.example.com", "*.api.example.com")
    assert route.path_prefix == "/"
    assert route.backend == "api"

    app = config.backend("app")
    assert app.servers == (ServerConfig("10.0.0.11", 8080, 1), ServerConfig("10.0.0.12", 8080, 2))
    assert app.balance == "round_robin"
    assert app.tls == "off"
    assert app.ca_file is None
    assert app.health == HealthCheckConfig(
        kind="http", path="/healthz", interval=2.0, timeout=1.0, rise=2, fall=3
    )
    assert config.backend("api").health is None


def test_defaults_of_a_minimal_file(tmp_path: Path) -> None:
    source = tmp_path / "tlsgate.toml"
    config = parse_config(BACKEND + listener("http"), source)

    assert config.source == source
    assert config.node.name == socket.gethostname()
    assert config.node.data_dir == Path("/var/lib/tlsgate")
    assert config.store.url == "sqlite:///var/lib/tlsgate/state.db"
    assert config.store.key_file is None
    assert (config.log.access, config.log.error, config.log.level) == ("-", "-", "info")
    (only,) = config.listeners
    assert only.limits.header_timeout == 10.0
    assert only.limits.max_header_size == 64 * 1024
    assert only.min_tls_version == "1.2"
    assert only.trusted_proxies == ()
    backend = config.backend("app")
    assert backend.retries == 2
    assert backend.max_fails == 1
    assert backend.health is None
    assert config.certificates == ()
    assert config.routes == ()
    assert config.acme is None


def test_relative_paths_resolve_against_the_config_directory(tmp_path: Path) -> None:
    text = f"""
    [node]
    data_dir = "state"
    [log]
    access = "logs/access.log"
    error = "../error.log"
    level = "debug"
    [store]
    key_file = "store.key"
    {CERTIFICATE}
    [[backends]]
    name = "app"
    servers = ["app.internal:8443"]
    tls = "verify"
    ca_file = "ca/upstream.pem"
    server_name = "App.Internal"
    client_cert = "www"
    """ + listener("http")
    config = parse_config(text, tmp_path / "tlsgate.toml")

    assert config.node.data_dir == tmp_path / "state"
    assert config.store.url == f"sqlite://{tmp_path}/state/state.db"
    assert config.store.key_file == tmp_path / "store.key"
    assert config.log.access == str(tmp_path / "logs" / "access.log")
    assert config.log.error == str(tmp_path.parent / "error.log")
    assert config.log.level == "debug"
    assert config.certificates[0].cert_file == tmp_path / "www.pem"
    backend = config.backend("app")
    assert backend.ca_file == tmp_path / "ca" / "upstream.pem"
    assert backend.server_name == "app.internal"
    assert backend.client_cert == "www"
    assert backend.servers == (ServerConfig("app.internal", 8443),)


def test_log_access_off_and_sqlite_url_relative(tmp_path: Path) -> None:
    text = '[log]\naccess = ""\n[store]\nurl = "sqlite://db/state.db"\n' + BACKEND + listener()
    config = parse_config(text, tmp_path / "x.toml")
    assert config.log.access == ""
    assert config.store.url == f"sqlite://{tmp_path}/db/state.db"


def test_etcd_store_url_is_kept() -> None:
    url = "etcd://10.0.0.5:2379,10.0.0.6:2379/tlsgate"
    config = parse_config(f'[store]\nurl = "{url}"\n' + BACKEND + listener(), SOURCE)
    assert config.store.url == url


def test_bind_forms() -> None:
    text = BACKEND + listener(
        "tcp", bind='[":8080", "127.0.0.1:8081", "[::1]:8082", "[0:0::0]:8083", "[::]:8084"]'
    )
    (tcp,) = parse_config(text, SOURCE).listeners
    assert tcp.bind == (
        BindAddress("0.0.0.0", 8080),
        BindAddress("127.0.0.1", 8081),
        BindAddress("::1", 8082),
        BindAddress("::", 8083),
        BindAddress("::", 8084),
    )
    single = parse_config(BACKEND + listener("tcp", bind='"127.0.0.2:9000"'), SOURCE)
    assert single.listeners[0].bind == (BindAddress("127.0.0.2", 9000),)


def test_ipv4_and_ipv6_wildcards_on_one_port_do_not_overlap() -> None:
    text = BACKEND + listener("tcp", bind='["0.0.0.0:443", "[::]:443"]')
    assert len(parse_config(text, SOURCE).listeners[0].bind) == 2


def test_redirect_port_defaults_to_first_https_bind() -> None:
    text = (
        CERTIFICATE
        + BACKEND
        + listener("http", redirect_https="true", backend="omit")
        + listener("https", bind='["127.0.0.1:8443", "127.0.0.1:9443"]')
        + listener(
            "http",
            name="other",
            bind='"127.0.0.1:81"',
            redirect_https="true",
            redirect_port="10443",
        )
    )
    http, https, other = parse_config(text, SOURCE).listeners
    assert http.redirect_port == 8443
    assert https.redirect_port == 8443
    assert other.redirect_port == 10443


def test_listener_keys_map_onto_the_model() -> None:
    text = (
        CERTIFICATE
        + """
[[certificates]]
name = "rsa"
domains = ["EXAMPLE.com", "*.example.com", "192.0.2.1", "2001:DB8::1"]
cert_file = "/x.pem"
key_file = "/x.key"
"""
        + BACKEND
        + listener(
            "https",
            bind='"0.0.0.0:443"',
            accept_proxy_protocol="true",
            trusted_proxies='["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]',
            client_ip_header='"CF-Connecting-IP"',
            hsts='"max-age=63072000; includeSubDomains; preload"',
            certificates='["www", "rsa"]',
            default_certificate='"rsa"',
            min_tls_version='"1.3"',
            header_timeout='"5s"',
            idle_timeout='"2m"',
            tls_handshake_timeout='"3s"',
            max_header_size='"32KiB"',
            max_body_size='"10MB"',
            max_headers="50",
            max_connections="1000",
            max_connections_per_client="20",
        )
    )
    config = parse_config(text, SOURCE)
    (https,) = config.listeners
    assert config.certificate("rsa").domains == (
        "example.com",
        "*.example.com",
        "192.0.2.1",
        "2001:db8::1",
    )
    assert https.accept_proxy_protocol is True
    assert https.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.0.2.7/32"),
        ipaddress.ip_network("2001:db8::/32"),
    )
    assert https.client_ip_header == "CF-Connecting-IP"
    assert https.hsts == "max-age=63072000; includeSubDomains; preload"
    assert https.certificates == ("www", "rsa")
    assert https.default_certificate == "rsa"
    assert https.min_tls_version == "1.3"
    limits = https.limits
    assert (limits.header_timeout, limits.idle_timeout, limits.tls_handshake_timeout) == (
        5.0,
        120.0,
        3.0,
    )
    assert (limits.max_header_size, limits.max_body_size) == (32 * 1024, 10_000_000)
    assert (limits.max_headers, limits.max_connections) == (50, 1000)
    assert limits.max_connections_per_client == 20


def test_backend_keys_map_onto_the_model() -> None:
    text = (
        listener("tcp", backend='"db"')
        + """
[[backends]]
name = "db"
servers = ["[2001:db8::5]:5432", { address = "db-2:5432", weight = 256 }]
balance = "least_conn"
send_proxy_protocol = "v2"
health = { type = "tcp", interval = "5s", timeout = "2s", rise = 1, fall = 1 }
connect_timeout = "500ms"
read_timeout = "1h"
pool_idle_timeout = "1s"
fail_timeout = "30s"
retries = 0
max_idle_per_server = 0
max_fails = 3

[[backends]]
name = "web"
discover = true
health = { path = "/ready", host = "web.internal", expect_status = "200-204" }

[[backends]]
name = "plain"
servers = ["10.0.0.1:80"]
health = false

[[backends]]
name = "exact"
servers = ["10.0.0.1:80"]
health = { path = "/", expect_status = 204 }
"""
    )
    config = parse_config(text, SOURCE)
    db = config.backend("db")
    assert db.servers == (ServerConfig("2001:db8::5", 5432), ServerConfig("db-2", 5432, 256))
    assert db.servers[0].address == "[2001:db8::5]:5432"
    assert db.balance == "least_conn"
    assert db.send_proxy_protocol == "v2"
    assert db.health == HealthCheckConfig(kind="tcp", interval=5.0, timeout=2.0, rise=1, fall=1)
    assert (db.connect_timeout, db.read_timeout, db.pool_idle_timeout, db.fail_timeout) == (
        0.5,
        3600.0,
        1.0,
        30.0,
    )
    assert (db.retries, db.max_idle_per_server, db.max_fails) == (0, 0, 3)
    web = config.backend("web")
    assert web.servers == ()
    assert web.discover is True
    assert web.health == HealthCheckConfig(
        kind="http", path="/ready", host="web.internal", expect_status=(200, 204)
    )
    assert config.backend("plain").health is None
    exact = config.backend("exact").health
    assert exact is not None
    assert exact.expect_status == (204, 204)


def test_health_without_path_is_a_tcp_check() -> None:
    text = listener() + BACKEND.replace("servers", 'health = { interval = "3s" }\nservers')
    health = parse_config(text, SOURCE).backend("app").health
    assert health == HealthCheckConfig(kind="tcp", interval=3.0)


def test_routes_keep_their_order_and_lower_case_hosts() -> None:
    text = (
        BACKEND
        + listener("tls-passthrough", bind='"0.0.0.0:443"', backend="omit")
        + """
[[routes]]
listener = "tls-passthrough"
hosts = ["B.Example.com"]
backend = "app"
[[routes]]
listener = "tls-passthrough"
hosts = ["*.example.com", "a.example.com"]
backend = "app"
[[routes]]
listener = "tls-passthrough"
backend = "app"
"""
    )
    routes = parse_config(text, SOURCE).routes
    assert [r.hosts for r in routes] == [
        ("b.example.com",),
        ("*.example.com", "a.example.com"),
        (),
    ]


def test_config_is_picklable() -> None:
    config = parse_config(DESIGN_EXAMPLE, SOURCE)
    assert pickle.loads(pickle.dumps(config)) == config


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "tlsgate.toml"
    path.write_text(DESIGN_EXAMPLE, encoding="utf-8")
    config = load_config(str(path))
    assert config.source == path
    assert config.certificate("legacy").cert_file == tmp_path / "certs" / "legacy.pem"


def test_load_config_relative_path_source_is_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "tlsgate.toml").write_text(BACKEND + listener(), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert load_config("tlsgate.toml").source == tmp_path / "tlsgate.toml"


def test_load_config_missing_file_names_it(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    (problem,) = info.value.problems
    assert problem.file == missing
    assert problem.key_path == ""
    assert "cannot read the configuration file: No such file or directory" in problem.message
    assert str(problem).startswith(missing + ": ")


def test_load_config_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the configuration file"):
        load_config(tmp_path)


def test_load_config_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[node]\nname = "caf\xe9"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert "not valid UTF-8 (byte 0xe9 on line 2)" in problem.message


def test_invalid_toml_reports_line_and_column() -> None:
    problem = only_problem('[node]\nname = "x"\nworkers = = 3\n')
    assert problem.key_path == ""
    assert problem.message.startswith("invalid TOML: ")
    assert "line 3, column 11" in problem.message


def test_default_config_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TLSGATE_CONFIG", raising=False)
    assert DEFAULT_CONFIG_PATH == "tlsgate.toml"
    assert default_config_path() == Path("tlsgate.toml")
    monkeypatch.setenv("TLSGATE_CONFIG", "/etc/tlsgate/prod.toml")
    assert default_config_path() == Path("/etc/tlsgate/prod.toml")
    monkeypatch.setenv("TLSGATE_CONFIG", "")
    assert default_config_path() == Path("tlsgate.toml")


# --- one test per class of problem ---------------------------------------------------------


def test_unknown_key_suggests_the_closest_valid_one() -> None:
    text = BACKEND + listener("http").replace("protocol =", "protocl =")
    problems = problems_of(text)
    unknown = [p for p in problems if p.key_path == "listeners[0].protocl"]
    assert unknown[0].message.startswith(
        "unknown key 'protocl'; did you mean 'protocol'? valid keys: accept_proxy_protocol, "
        "backend, bind,"
    )
    # ... and the now-missing protocol is reported too.
    assert any(p.key_path == "listeners[0].protocol" for p in problems)


def test_unknown_key_in_inline_tables() -> None:
    text = listener() + BACKEND.replace(
        '["10.0.0.11:8080"]', '[{ address = "10.0.0.11:8080", wieght = 2 }]'
    )
    problem = only_problem(text)
    assert problem.key_path == "backends[0].servers[0].wieght"
    assert "did you mean 'weight'? valid keys: address, weight" in problem.message


def test_unknown_and_unsupported_sections() -> None:
    text = '[ca]\nname = "Example CA"\n[admin]\nbind = "127.0.0.1:9090"\n[nodes]\nname = "a"\n'
    problems = problems_of(text + BACKEND + listener())
    by_path = {p.key_path: p.message for p in problems}
    assert by_path["ca"].startswith("the [ca] section is not supported by this version")
    assert by_path["admin"].endswith(
        "valid sections: node, log, store, acme, certificates, listeners, routes, backends"
    )
    assert "did you mean 'node'?" in by_path["nodes"]
    assert len(problems) == 3


def test_top_level_key_that_belongs_in_a_section() -> None:
    problem = only_problem("workers = 4\n" + BACKEND + listener())
    assert problem.key_path == "workers"
    assert "'workers' belongs inside a section such as [node]" in problem.message


def test_unsupported_listener_key_client_auth() -> None:
    text = BACKEND + listener(client_auth='{ ca_file = "edge.pem", required = true }')
    problem = only_problem(text)
    assert problem.key_path == "listeners[0].client_auth"
    assert "not supported by this version; valid keys:" in problem.message


@pytest.mark.parametrize(
    ("section", "key", "value", "fragment"),
    [
        ("node", "workers", '"4"', "expected an integer, got string '4'; write workers = 4"),
        ("node", "workers", "true", "expected an integer, got boolean true"),
        ("node", "name", "7", "expected a string, got integer 7"),
        (
            "node",
            "shutdown_timeout",
            "30",
            'got integer 30; for 30 seconds write shutdown_timeout = "30s"',
        ),
        (
            "log",
            "level",
            "3",
            "expected a string, one of: debug, info, warning, error; got integer 3",
        ),
        ("store", "url", "[]", "expected a string, got an array"),
    ],
)
def test_wrong_type_says_expected_and_given(
    section: str, key: str, value: str, fragment: str
) -> None:
    problem = only_problem(f"[{section}]\n{key} = {value}\n" + BACKEND + listener())
    assert problem.key_path == f"{section}.{key}"
    assert fragment in problem.message


def test_wrong_type_in_listener_and_backend() -> None:
    text = (
        CERTIFICATE
        + listener("https", accept_proxy_protocol='"true"', min_tls_version="1.2")
        + BACKEND.replace("servers", "discover = 1\nservers")
    )
    by_path = {p.key_path: p.message for p in problems_of(text)}
    assert by_path["listeners[0].accept_proxy_protocol"] == (
        "expected a boolean (true or false), got string 'true'; "
        "write accept_proxy_protocol = true without quotes"
    )
    assert 'put it in quotes: min_tls_version = "1.2"' in by_path["listeners[0].min_tls_version"]
    assert "got integer 1" in by_path["backends[0].discover"]


def test_invalid_choice_lists_valid_values() -> None:
    text = BACKEND + listener("tcpp")
    problems = problems_of(text)
    assert problems[0].key_path == "listeners[0].protocol"
    assert problems[0].message == (
        "'tcpp' is not a valid protocol; expected one of: http, https, tcp, tls-passthrough"
    )


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        (
            "balance",
            '"roundrobin"',
            "expected one of: round_robin, least_conn, ip_hash, random_two",
        ),
        ("tls", '"on"', "expected one of: off, insecure, verify"),
        ("send_proxy_protocol", '"v3"', "expected one of: '', v1, v2"),
    ],
)
def test_invalid_backend_choices(key: str, value: str, fragment: str) -> None:
    problem = only_problem(listener() + BACKEND + f"{key} = {value}\n")
    assert problem.key_path == f"backends[0].{key}"
    assert fragment in problem.message


def test_route_to_undefined_backend_lists_defined_ones() -> None:
    text = (
        BACKEND
        + BACKEND.replace('"app"', '"api"')
        + listener()
        + '[[routes]]\nlistener = "http"\nbackend = "apii"\n'
    )
    problem = only_problem(text)
    assert problem.key_path == "routes[0].backend"
    assert problem.message == (
        "route refers to backend 'apii', which is not defined; defined backends: api, app"
    )


def test_undefined_references_everywhere() -> None:
    text = (
        CERTIFICATE
        + BACKEND
        + listener("https", bind='"0.0.0.0:443"', backend='"nope"', certificates='["www", "rsa"]')
        + '[[routes]]\nlistener = "htps"\nbackend = "app"\n'
        + BACKEND.replace('"app"', '"b2"').replace(
            "servers", 'tls = "verify"\nclient_cert = "ecdsa"\nservers'
        )
    )
    by_path = {p.key_path: p.message for p in problems_of(text)}
    assert by_path["listeners[0].backend"] == (
        "listener refers to backend 'nope', which is not defined; defined backends: app, b2"
    )
    assert by_path["listeners[0].certificates[1]"] == (
        "listener refers to certificate 'rsa', which is not defined; defined certificates: www"
    )
    assert by_path["routes[0].listener"] == (
        "route refers to listener 'htps', which is not defined; defined listeners: https"
    )
    assert by_path["backends[1].client_cert"] == (
        "backend refers to certificate 'ecdsa', which is not defined; defined certificates: www"
    )
    assert len(by_path) == 4


def test_reference_when_nothing_is_defined() -> None:
    problem = problems_of(listener(backend='"app"'))[0]
    assert problem.key_path == "listeners[0].backend"
    assert problem.message.endswith("no [[backends]] are defined")


def test_duplicate_names() -> None:
    text = BACKEND + BACKEND + listener() + listener(bind='"127.0.0.1:81"')
    by_path = {p.key_path: p.message for p in problems_of(text)}
    assert by_path == {
        "backends[1].name": "duplicate name 'app'; it is already used by backends[0]",
        "listeners[1].name": "duplicate name 'http'; it is already used by listeners[0]",
    }


def test_invalid_name() -> None:
    problem = only_problem(BACKEND.replace('"app"', '"my app"') + listener(backend='"my app"'))
    assert problem.key_path == "backends[0].name"
    assert "use letters, digits, '_', '.' and '-'" in problem.message


@pytest.mark.parametrize(
    ("servers", "path", "fragment"),
    [
        ('["10.0.0.1:70000"]', "backends[0].servers[0]", "has port 70000; expected 1 to 65535"),
        ('["10.0.0.1"]', "backends[0].servers[0]", "has no port"),
        ('["10.0.0.1:http"]', "backends[0].servers[0]", "invalid port 'http'; expected 1 to 65535"),
        ('["-bad-:80"]', "backends[0].servers[0]", "is not a valid host name"),
        (
            '["::1:80"]',
            "backends[0].servers[0]",
            "write an IPv6 address in brackets, as in '[::1]:80'",
        ),
        (
            '[{ address = "10.0.0.1:80", weight = 0 }]',
            "backends[0].servers[0].weight",
            "0 is out of range; expected an integer from 1 to 256",
        ),
        (
            '[{ address = "10.0.0.1:80", weight = 257 }]',
            "backends[0].servers[0].weight",
            "257 is out of range; expected an integer from 1 to 256",
        ),
        ("[{ weight = 2 }]", "backends[0].servers[0].address", "address is required"),
        (
            "[5]",
            "backends[0].servers[0]",
            "expected a 'host:port' string or a table, got integer 5",
        ),
        ('["10.0.0.1:80", "10.0.0.1:80"]', "backends[0].servers[1]", "is listed twice"),
        ("[]", "backends[0].servers", "must list at least one server (or set discover = true)"),
        ('"10.0.0.1:80"', "backends[0].servers", "expected an array of servers, got string"),
    ],
)
def test_server_problems(servers: str, path: str, fragment: str) -> None:
    problem = only_problem(listener() + f'[[backends]]\nname = "app"\nservers = {servers}\n')
    assert problem.key_path == path
    assert fragment in problem.message


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        (
            "connect_timeout",
            '"5"',
            "has no unit; expected a duration like '2s', '500ms', '5m', '30d'",
        ),
        ("read_timeout", '"1 minute"', "is not a valid duration"),
        ("fail_timeout", '"0s"', "must be longer than zero"),
        ("retries", "-1", "-1 is out of range; expected an integer >= 0"),
        ("max_fails", "0", "0 is out of range; expected an integer >= 1"),
    ],
)
def test_out_of_range_and_bad_backend_values(key: str, value: str, fragment: str) -> None:
    problem = only_problem(listener() + BACKEND + f"{key} = {value}\n")
    assert problem.key_path == f"backends[0].{key}"
    assert fragment in problem.message


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("max_header_size", '"64k"', "unknown unit 'k'"),
        ("max_header_size", "0", "too small; expected at least 1 bytes"),
        ("max_body_size", "-5", "negative"),
        ("max_body_size", "true", "expected a size like '64KiB'"),
        ("max_headers", "0", "expected an integer >= 1"),
        ("max_connections", '"many"', "expected an integer, got string 'many'"),
        ("max_connections_per_client", "-1", "expected an integer >= 0"),
        ("idle_timeout", "60", 'write idle_timeout = "60s"'),
        (
            "max_client_hello_size",
            '"256B"',
            "256 bytes is too small; expected at least 512 bytes",
        ),
        (
            "max_client_hello_size",
            '"2MiB"',
            "2097152 bytes is too large; expected at most 1048576 bytes",
        ),
        ("max_client_hello_size", "true", "expected a size like '64KiB'"),
        ("connect_idle_timeout", '"0s"', "must be longer than zero"),
        ("connect_idle_timeout", "30", 'write connect_idle_timeout = "30s"'),
    ],
)
def test_listener_limit_problems(key: str, value: str, fragment: str) -> None:
    problem = only_problem(BACKEND + listener(**{key: value}))
    assert problem.key_path == f"listeners[0].{key}"
    assert fragment in problem.message


def test_node_problems() -> None:
    text = '[node]\nname = ""\ndata_dir = ""\nworkers = 5000\n' + BACKEND + listener()
    by_path = {p.key_path: p.message for p in problems_of(text)}
    assert by_path == {
        "node.name": "must not be empty; omit it to use the host name",
        "node.data_dir": "must not be empty; omit it to use /var/lib/tlsgate",
        "node.workers": "5000 is out of range; expected an integer from 0 to 1024",
    }


def test_ticket_key_rotation() -> None:
    assert parse_config(BACKEND + listener(), SOURCE).node.ticket_key_rotation == 12 * 3600.0
    text = '[node]\nticket_key_rotation = "1h"\n' + BACKEND + listener()
    assert parse_config(text, SOURCE).node.ticket_key_rotation == 3600.0
    for value, fragment in [
        ('"500ms"', "must be at least '1s'"),
        ('"0"', "must be longer than zero"),
        ("3600", 'write ticket_key_rotation = "3600s"'),
    ]:
        problem = only_problem(f"[node]\nticket_key_rotation = {value}\n" + BACKEND + listener())
        assert problem.key_path == "node.ticket_key_rotation"
        assert fragment in problem.message


@pytest.mark.parametrize(
    ("log", "path", "fragment"),
    [
        ('level = "warn"', "log.level", "expected one of: debug, info, warning, error"),
        ('error = ""', "log.error", "use '-' for standard error or a file path"),
        ('access = "~/access.log"', "log.access", "'~' is not expanded"),
    ],
)
def test_log_problems(log: str, path: str, fragment: str) -> None:
    problem = only_problem(f"[log]\n{log}\n" + BACKEND + listener())
    assert problem.key_path == path
    assert fragment in problem.message


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        (
            "postgres://db/tlsgate",
            "is not a store URL; expected 'sqlite:///var/lib/tlsgate/state.db' or",
        ),
        ("sqlite://", "has no file path"),
        ("etcd://", "has no endpoints"),
        ("etcd://10.0.0.5", "bad etcd endpoint: '10.0.0.5' has no port"),
    ],
)
def test_store_url_problems(url: str, fragment: str) -> None:
    problem = only_problem(f'[store]\nurl = "{url}"\n' + BACKEND + listener())
    assert problem.key_path == "store.url"
    assert fragment in problem.message


@pytest.mark.parametrize(
    ("bind", "path", "fragment"),
    [
        (
            '"localhost:80"',
            "listeners[0].bind",
            "'localhost' is not an IP address; a listener binds IP literals",
        ),
        (
            '["::1:80"]',
            "listeners[0].bind[0]",
            "write an IPv6 address in brackets, as in '[::1]:80'",
        ),
        ('["[::1]"]', "listeners[0].bind[0]", "has no port"),
        ('["[::1:80"]', "listeners[0].bind[0]", "has no closing ']'"),
        ('["[10.0.0.1]:80"]', "listeners[0].bind[0]", "in brackets is not an IPv6 address"),
        ('["0.0.0.0:0"]', "listeners[0].bind[0]", "has port 0; expected 1 to 65535"),
        ('["0.0.0.0:65536"]', "listeners[0].bind[0]", "has port 65536; expected 1 to 65535"),
        ("[]", "listeners[0].bind", "must list at least one address"),
        ("80", "listeners[0].bind", "expected a string or an array of strings, got integer 80"),
        ("[80]", "listeners[0].bind[0]", "expected a string, got integer 80"),
    ],
)
def test_bind_problems(bind: str, path: str, fragment: str) -> None:
    problem = only_problem(BACKEND + listener(bind=bind))
    assert problem.key_path == path
    assert fragment in problem.message


def test_missing_required_keys() -> None:
    text = "[[listeners]]\n[[backends]]\n[[routes]]\n[[certificates]]\n"
    by_path = {p.key_path: p.message for p in problems_of(text)}
    for path in (
        "certificates[0].name",
        "certificates[0].domains",
        "certificates[0].cert_file",
        "certificates[0].key_file",
        "listeners[0].name",
        "listeners[0].bind",
        "listeners[0].protocol",
        "routes[0].listener",
        "routes[0].backend",
        "backends[0].name",
        "backends[0].servers",
    ):
        assert path in by_path, path
        assert " is required" in by_path[path]
    assert "expected one of: http, https, tcp, tls-passthrough" in by_path["listeners[0].protocol"]


@pytest.mark.parametrize(
    ("binds", "path", "fragment"),
    [
        (
            ('"0.0.0.0:443"', '"0.0.0.0:443"'),
            "listeners[1].bind",
            "0.0.0.0:443 is already bound by listener 'a' (listeners[0].bind)",
        ),
        (
            ('"127.0.0.1:443"', '"0.0.0.0:443"'),
            "listeners[1].bind",
            "0.0.0.0:443 overlaps 127.0.0.1:443 of listener 'a' (listeners[0].bind): "
            "0.0.0.0:443 covers every IPv4 address on port 443",
        ),
        (
            ('"[::]:8443"', '"[::1]:8443"'),
            "listeners[1].bind",
            "[::1]:8443 overlaps [::]:8443 of listener 'a' (listeners[0].bind): "
            "[::]:8443 covers every IPv6 address on port 8443",
        ),
    ],
)
def test_overlapping_binds_between_listeners(
    binds: tuple[str, str], path: str, fragment: str
) -> None:
    text = (
        BACKEND
        + listener("tcp", name="a", bind=binds[0])
        + listener("tcp", name="b", bind=binds[1])
    )
    problem = only_problem(text)
    assert problem.key_path == path
    assert fragment in problem.message
    assert problem.message.endswith("each address and port can be bound only once")


def test_overlapping_binds_within_one_listener() -> None:
    problem = only_problem(BACKEND + listener(bind='["0.0.0.0:80", "127.0.0.1:80"]'))
    assert problem.key_path == "listeners[0].bind[1]"
    assert "of listener 'http' (listeners[0].bind[0])" in problem.message


def test_different_addresses_or_ports_do_not_overlap() -> None:
    text = BACKEND + listener(bind='["127.0.0.1:80", "127.0.0.2:80", "127.0.0.1:81", "[::1]:80"]')
    assert len(parse_config(text, SOURCE).listeners[0].bind) == 4


@pytest.mark.parametrize(
    ("proxies", "path", "fragment"),
    [
        (
            '["10.0.0.1/8"]',
            "listeners[0].trusted_proxies[0]",
            "'10.0.0.1/8' has host bits set after the /8 prefix; did you mean '10.0.0.0/8'?",
        ),
        ('["10.0.0.0/33"]', "listeners[0].trusted_proxies[0]", "is not an IP address or network"),
        ('["cloudflare"]', "listeners[0].trusted_proxies[0]", "expected e.g. '10.0.0.0/8'"),
        ('"10.0.0.0/8"', "listeners[0].trusted_proxies", "expected an array of strings"),
    ],
)
def test_trusted_proxy_problems(proxies: str, path: str, fragment: str) -> None:
    problem = only_problem(BACKEND + listener(trusted_proxies=proxies))
    assert problem.key_path == path
    assert fragment in problem.message


def test_proxy_trust_must_be_configured() -> None:
    text = BACKEND + listener(accept_proxy_protocol="true", client_ip_header='"X-Real-IP"')
    by_path = {p.key_path: p.message for p in problems_of(text)}
    assert (
        "believed only from trusted_proxies, which is empty"
        in by_path["listeners[0].accept_proxy_protocol"]
    )
    assert "believed only from trusted_proxies" in by_path["listeners[0].client_ip_header"]


def test_client_ip_header_must_be_a_token() -> None:
    text = BACKEND + listener(trusted_proxies='["10.0.0.0/8"]', client_ip_header='"X Real IP"')
    problem = only_problem(text)
    assert problem.key_path == "listeners[0].client_ip_header"
    assert "is not a header name (RFC 9110 token)" in problem.message


@pytest.mark.parametrize(
    ("hsts", "fragment"),
    [
        ('"63072000"', "unknown directive '63072000'"),
        ('"max-age=two years"', "max-age must be a number of seconds"),
        ('"includeSubDomains"', "max-age is required"),
        ('"max-age=1; max-age=2"', "appears twice"),
        ('"max-age=1; preload=yes"', "takes no value"),
    ],
)
def test_hsts_problems(hsts: str, fragment: str) -> None:
    problem = only_problem(CERTIFICATE + BACKEND + listener("https", bind='":443"', hsts=hsts))
    assert problem.key_path == "listeners[0].hsts"
    assert fragment in problem.message
    assert "expected 'max-age=N'" in problem.message or "max-age" in problem.message


@pytest.mark.parametrize(
    ("protocol", "key", "value", "fragment"),
    [
        ("http", "hsts", '"max-age=1"', "hsts is only valid on https listeners, not on http"),
        ("https", "redirect_https", "true", "redirect_https is only valid on http listeners"),
        ("tcp", "certificates", '["www"]', "certificates is only valid on https listeners"),
        ("tls-passthrough", "default_certificate", '"www"', "only valid on https listeners"),
        ("tcp", "min_tls_version", '"1.3"', "only valid on https listeners"),
        ("tcp", "client_ip_header", '"X-Real-IP"', "only valid on http and https listeners"),
        ("https", "redirect_port", "8443", "only valid on http listeners"),
        ("http", "redirect_port", "8443", "only used with redirect_https = true"),
        (
            "tcp",
            "fallback_backend",
            '"app"',
            "fallback_backend is only valid on tls-passthrough listeners, not on tcp",
        ),
        ("https", "fallback_backend", '"app"', "only valid on tls-passthrough listeners"),
        ("http", "fallback_backend", '""', "only valid on tls-passthrough listeners"),
    ],
)
def test_keys_only_valid_on_some_protocols(
    protocol: str, key: str, value: str, fragment: str
) -> None:
    text = CERTIFICATE + BACKEND + listener(protocol, bind='":443"', **{key: value})
    problem = only_problem(text)
    assert problem.key_path == f"listeners[0].{key}"
    assert fragment in problem.message


def test_https_listener_without_certificates() -> None:
    problem = only_problem(BACKEND + listener("https", bind='":443"'))
    assert problem.key_path == "listeners[0].protocol"
    assert problem.message == (
        "an https listener needs a certificate, but no [[certificates]] are defined"
    )


def test_default_certificate_must_be_among_certificates() -> None:
    text = (
        CERTIFICATE
        + CERTIFICATE.replace('"www"', '"other"')
        + BACKEND
        + listener("https", bind='":443"', certificates='["www"]', default_certificate='"other"')
    )
    problem = only_problem(text)
    assert problem.key_path == "listeners[0].default_certificate"
    assert "'other' is not in this listener's certificates (www)" in problem.message


def test_listener_with_nowhere_to_send_traffic() -> None:
    text = BACKEND + listener(backend="omit")
    problem = only_problem(text)
    assert problem.key_path == "listeners[0].backend"
    assert "no backend and no route refers to it" in problem.message
    assert "defined backends: app" in problem.message
    assert "or set redirect_https = true" in problem.message


def test_listener_served_by_routes_or_redirect_needs_no_backend() -> None:
    text = (
        BACKEND
        + listener("http", backend="omit", redirect_https="true")
        + listener("tls-passthrough", bind='":443"', backend="omit")
        + '[[routes]]\nlistener = "tls-passthrough"\nbackend = "app"\nhosts = ["a.example"]\n'
    )
    assert len(parse_config(text, SOURCE).listeners) == 2


def test_tcp_listener_needs_a_backend_and_cannot_route() -> None:
    text = (
        BACKEND
        + listener("tcp", backend="omit")
        + '[[routes]]\nlistener = "tcp"\nbackend = "app"\n'
    )
    by_path = {p.key_path: p.message for p in problems_of(text)}
    assert by_path["listeners[0].backend"].startswith("a tcp listener needs a backend")
    assert "is a tcp listener, which cannot route" in by_path["routes[0].listener"]
    assert 'protocol = "tls-passthrough"' in by_path["routes[0].listener"]


def test_passthrough_routes_cannot_match_paths() -> None:
    text = (
        BACKEND
        + listener("tls-passthrough", bind='":443"')
        + '[[routes]]\nlistener = "tls-passthrough"\nbackend = "app"\npath_prefix = "/api"\n'
    )
    problem = only_problem(text)
    assert problem.key_path == "routes[0].path_prefix"
    assert "matches the SNI name only" in problem.message
    assert "path_prefix must be '/'" in problem.message


@pytest.mark.parametrize(
    ("route", "path", "fragment"),
    [
        ('path_prefix = "api"', "routes[0].path_prefix", "must start with '/', as in '/api/'"),
        ('path_prefix = "/a b"', "routes[0].path_prefix", "contains spaces or control characters"),
        ('path_prefix = "/a?b"', "routes[0].path_prefix", "cannot contain '?' or '#'"),
        ('hosts = ["*"]', "routes[0].hosts[0]", "omit hosts to match every host"),
        ('hosts = ["a.*.example.com"]', "routes[0].hosts[0]", "only as the whole first label"),
        ('hosts = ["example.com:8443"]', "routes[0].hosts[0]", "write 'example.com'"),
        ('hosts = ["a.com", "A.com"]', "routes[0].hosts[1]", "'a.com' is listed twice"),
        ('hosts = "a.com"', "routes[0].hosts", "expected an array of strings, got string"),
    ],
)
def test_route_problems(route: str, path: str, fragment: str) -> None:
    text = BACKEND + listener() + f'[[routes]]\nlistener = "http"\nbackend = "app"\n{route}\n'
    problem = only_problem(text)
    assert problem.key_path == path
    assert fragment in problem.message


def test_route_shadowed_by_an_earlier_route() -> None:
    route = '[[routes]]\nlistener = "http"\nbackend = "app"\nhosts = ["a.example"]\n'
    problem = only_problem(BACKEND + listener() + route + route)
    assert problem.key_path == "routes[1]"
    assert "this route can never match: routes[0] already matches host 'a.example'" in (
        problem.message
    )


def test_issuer_ca_is_not_available() -> None:
    text = CERTIFICATE.replace("cert_file", 'issuer = "ca"\ncert_file') + BACKEND + listener()
    problem = only_problem(text)
    assert problem.key_path == "certificates[0].issuer"
    assert problem.message == (
        "issuer 'ca' is not available in this version; use issuer = \"acme\" (with an [acme] "
        'section) or issuer = "files" with cert_file and key_file'
    )


def test_invalid_issuer_is_the_only_problem() -> None:
    """An unknown issuer is reported alone: the keys each issuer needs are not judged
    against a guess."""
    text = '[[certificates]]\nname = "c"\ndomains = ["a.example"]\nissuer = "letsencrypt"\n'
    problem = only_problem(text + BACKEND + listener())
    assert problem.key_path == "certificates[0].issuer"
    assert problem.message == "'letsencrypt' is not a valid issuer; expected one of: files, acme"


@pytest.mark.parametrize(
    ("domains", "path", "fragment"),
    [
        ("[]", "certificates[0].domains", "must list at least one DNS name or IP address"),
        (
            '["a.*.example.com"]',
            "certificates[0].domains[0]",
            "allowed only as the whole first label",
        ),
        ('["*example.com"]', "certificates[0].domains[0]", "allowed only as the whole first label"),
        ('["example.com."]', "certificates[0].domains[0]", "ends with a dot; write 'example.com'"),
        ('["under_score.example"]', "certificates[0].domains[0]", "is not a valid host name"),
        ('["-a.example"]', "certificates[0].domains[0]", "not starting or ending with '-'"),
        ('["10.0.0"]', "certificates[0].domains[0]", "the last label is a number"),
        (
            '["bücher.example"]',
            "certificates[0].domains[0]",
            "write its IDNA form 'xn--bcher-kva.example'",
        ),
        ('["a..b"]', "certificates[0].domains[0]", "is not a valid host name"),
        (f'["{"a" * 64}.example"]', "certificates[0].domains[0]", "1 to 63"),
        ('["a.example", "A.EXAMPLE"]', "certificates[0].domains[1]", "'a.example' is listed twice"),
        ('"example.com"', "certificates[0].domains", "expected an array of strings, got string"),
    ],
)
def test_certificate_domain_problems(domains: str, path: str, fragment: str) -> None:
    text = (
        f'[[certificates]]\nname = "c"\ndomains = {domains}\ncert_file = "c.pem"\n'
        'key_file = "c.key"\n' + BACKEND + listener()
    )
    problem = only_problem(text)
    assert problem.key_path == path
    assert fragment in problem.message


def test_certificate_files_are_required_and_not_empty() -> None:
    text = (
        '[[certificates]]\nname = "c"\ndomains = ["a.example"]\ncert_file = ""\n'
        + BACKEND
        + listener()
    )
    by_path = {p.key_path: p.message for p in problems_of(text)}
    assert by_path == {
        "certificates[0].cert_file": (
            'cert_file is required: issuer "files" reads the certificate chain from it'
        ),
        "certificates[0].key_file": (
            'key_file is required: issuer "files" reads the private key from it'
        ),
    }


@pytest.mark.parametrize(
    ("health", "path", "fragment"),
    [
        (
            '{ interval = "1s", timeout = "1s" }',
            "timeout",
            "timeout (1s) must be shorter than interval (1s)",
        ),
        ('{ path = "/", expect_status = 700 }', "expect_status", "700 is out of range"),
        (
            '{ path = "/", expect_status = "399-200" }',
            "expect_status",
            'the range is backwards; write "200-399"',
        ),
        ('{ path = "/", expect_status = "2xx" }', "expect_status", 'a range like "200-399"'),
        ('{ path = "healthz" }', "path", "must start with '/', as in '/healthz'"),
        ('{ path = "/a b" }', "path", "contains spaces or control characters"),
        ('{ path = "/", host = "a\\r\\nX: y" }', "host", "contains spaces or control characters"),
        ('{ type = "tcp", path = "/" }', "path", "only used by http checks"),
        ('{ type = "tcp", host = "a.example" }', "host", "only used by http and tls checks"),
        ('{ type = "udp" }', "type", "expected one of: http, tcp, tls"),
        (
            '{ type = "tls", path = "/" }',
            "path",
            "path is only used by http checks; a tls check completes a TLS handshake and "
            "sends no request",
        ),
        ('{ type = "tls", expect_status = 200 }', "expect_status", "only used by http checks"),
        (
            '{ type = "tls", host = "example.com:443" }',
            "host",
            "is not a valid host name",
        ),
        ('{ type = "tls", host = "a b" }', "host", "a tls check sends host as the SNI name"),
        (
            '{ type = "tcp", tls_verify = true }',
            "tls_verify",
            'a tcp check makes no TLS handshake, so there is nothing to verify; use type = "tls"',
        ),
        (
            '{ path = "/", tls_verify = false }',
            "tls_verify",
            'the backend has tls = "off", so its http checks make no TLS handshake',
        ),
        ('{ type = "tls", tls_verify = "true" }', "tls_verify", "write tls_verify = true"),
        (
            '{ type = "tls", ca_file = "ca.pem" }',
            "ca_file",
            "ca_file is only used with tls_verify = true",
        ),
        (
            '{ type = "tls", tls_verify = false, ca_file = "ca.pem" }',
            "ca_file",
            "only used with tls_verify = true",
        ),
        ("{ rise = 0 }", "rise", "expected an integer >= 1"),
        ('{ fall = "3" }', "fall", "write fall = 3 without quotes"),
        ('{ intervall = "2s" }', "intervall", "did you mean 'interval'?"),
    ],
)
def test_health_problems(health: str, path: str, fragment: str) -> None:
    problem = only_problem(listener() + BACKEND + f"health = {health}\n")
    assert problem.key_path == f"backends[0].health.{path}"
    assert fragment in problem.message


def test_health_true_is_not_a_check() -> None:
    problem = only_problem(listener() + BACKEND + "health = true\n")
    assert problem.key_path == "backends[0].health"
    assert "or false, got boolean true" in problem.message


@pytest.mark.parametrize(
    ("extra", "path", "fragment"),
    [
        ('ca_file = "ca.pem"', "ca_file", 'only used with tls = "verify"'),
        (
            'server_name = "app.internal"',
            "server_name",
            'only used with tls = "insecure" or "verify"',
        ),
        ('tls = "verify"\nserver_name = "not valid"', "server_name", "is not a valid host name"),
    ],
)
def test_upstream_tls_problems(extra: str, path: str, fragment: str) -> None:
    problem = only_problem(listener() + BACKEND + extra + "\n")
    assert problem.key_path == f"backends[0].{path}"
    assert fragment in problem.message


@pytest.mark.parametrize(
    ("text", "path", "fragment"),
    [
        ('[listeners]\nname = "a"\n', "listeners", "write [[listeners]] (double brackets)"),
        ('[[node]]\nname = "a"\n', "node", "write [node] (single brackets)"),
        ("backends = [1]\n", "backends[0]", "expected a table, got integer 1"),
        ('log = "-"\n', "log", "expected a table, got string '-'"),
    ],
)
def test_section_shape_problems(text: str, path: str, fragment: str) -> None:
    problems = problems_of(text)
    assert problems[0].key_path == path
    assert fragment in problems[0].message


def test_quoted_keys_are_shown_quoted() -> None:
    problem = only_problem('[node]\n"na me" = "x"\n' + BACKEND + listener())
    assert problem.key_path == 'node."na me"'


def test_several_problems_are_all_reported() -> None:
    text = """
[node]
workers = -1

[[listeners]]
name = "web"
bind = ["0.0.0.0:80", "localhost:81"]
protocol = "htttp"
backend = "apps"
redirect_https = "yes"

[[routes]]
listener = "web"
backend = "app"
path_prefix = "api"

[[backends]]
name = "app"
servers = ["10.0.0.1:80", { address = "10.0.0.2:80", weight = 1000 }]
health = { path = "/", interval = "1s", timeout = "2s" }
retries = "2"
"""
    problems = problems_of(text, Path("conf/tlsgate.toml"))
    assert {p.file for p in problems} == {"conf/tlsgate.toml"}
    assert [p.key_path for p in problems] == [
        "node.workers",
        "listeners[0].bind[1]",
        "listeners[0].protocol",
        "listeners[0].backend",
        "listeners[0].redirect_https",
        "routes[0].path_prefix",
        "backends[0].servers[1].weight",
        "backends[0].health.timeout",
        "backends[0].retries",
    ]
    rendered = str(ConfigError(problems))
    assert rendered.startswith("9 problem(s) in the configuration:\n")
    assert "conf/tlsgate.toml: routes[0].path_prefix: 'api' must start with '/'" in rendered


# --- tcp, tls-passthrough and the PROXY protocol ----------------------------------------


def test_passthrough_listener_keys_map_onto_the_model() -> None:
    text = (
        BACKEND
        + BACKEND.replace('"app"', '"legacy"')
        + listener(
            "tls-passthrough",
            bind='":443"',
            fallback_backend='"legacy"',
            accept_proxy_protocol="true",
            trusted_proxies='["10.0.0.0/8"]',
            max_client_hello_size='"4KiB"',
            connect_idle_timeout='"10m"',
        )
        + listener("tcp", bind='":5432"', connect_idle_timeout='"2h"')
    )
    passthrough, tcp = parse_config(text, SOURCE).listeners
    assert passthrough.backend == "app"
    assert passthrough.fallback_backend == "legacy"
    assert passthrough.accept_proxy_protocol is True
    assert passthrough.limits.max_client_hello_size == 4096
    assert passthrough.limits.connect_idle_timeout == 600.0
    assert tcp.fallback_backend is None
    assert tcp.limits.connect_idle_timeout == 7200.0
    assert tcp.limits.max_client_hello_size == 16 * 1024


def test_l4_defaults() -> None:
    (passthrough,) = parse_config(
        BACKEND + listener("tls-passthrough", bind='":443"'), SOURCE
    ).listeners
    assert passthrough.fallback_backend is None
    assert passthrough.limits.max_client_hello_size == 16 * 1024
    assert passthrough.limits.connect_idle_timeout == 3600.0


@pytest.mark.parametrize(("value", "expected"), [('"512B"', 512), ('"1MiB"', 1024 * 1024)])
def test_max_client_hello_size_bounds_are_inclusive(value: str, expected: int) -> None:
    text = BACKEND + listener("tls-passthrough", bind='":443"', max_client_hello_size=value)
    assert parse_config(text, SOURCE).listeners[0].limits.max_client_hello_size == expected


def test_fallback_backend_empty_means_none() -> None:
    text = BACKEND + listener("tls-passthrough", bind='":443"', fallback_backend='""')
    assert parse_config(text, SOURCE).listeners[0].fallback_backend is None


def test_fallback_backend_must_be_defined() -> None:
    text = BACKEND + listener("tls-passthrough", bind='":443"', fallback_backend='"old"')
    problem = only_problem(text)
    assert problem.key_path == "listeners[0].fallback_backend"
    assert problem.message == (
        "listener refers to backend 'old', which is not defined; defined backends: app"
    )


def test_fallback_backend_alone_is_not_somewhere_to_send_traffic() -> None:
    """Connections with an SNI still need a default backend or a route."""
    text = BACKEND + listener(
        "tls-passthrough", bind='":443"', backend="omit", fallback_backend='"app"'
    )
    problem = only_problem(text)
    assert problem.key_path == "listeners[0].backend"
    assert "no backend and no route refers to it" in problem.message


def test_tcp_listener_with_backend_and_proxy_protocol_is_valid() -> None:
    text = (
        listener(
            "tcp",
            bind='":5432"',
            accept_proxy_protocol="true",
            trusted_proxies='["192.0.2.0/24"]',
        )
        + BACKEND
        + 'send_proxy_protocol = "v1"\n'
    )
    config = parse_config(text, SOURCE)
    assert config.listeners[0].accept_proxy_protocol is True
    assert config.backend("app").send_proxy_protocol == "v1"


def test_proxy_protocol_crc32c_with_v2() -> None:
    text = listener() + BACKEND + 'send_proxy_protocol = "v2"\nproxy_protocol_crc32c = true\n'
    backend = parse_config(text, SOURCE).backend("app")
    assert (backend.send_proxy_protocol, backend.proxy_protocol_crc32c) == ("v2", True)
    assert parse_config(listener() + BACKEND, SOURCE).backend("app").proxy_protocol_crc32c is False


@pytest.mark.parametrize(
    ("extra", "path", "message"),
    [
        (
            "proxy_protocol_crc32c = true",
            "proxy_protocol_crc32c",
            "a CRC32C checksum exists only in PROXY protocol v2 headers; set "
            'send_proxy_protocol = "v2" (send_proxy_protocol is not set) or remove it',
        ),
        (
            'send_proxy_protocol = "v1"\nproxy_protocol_crc32c = true',
            "proxy_protocol_crc32c",
            "a CRC32C checksum exists only in PROXY protocol v2 headers; set "
            'send_proxy_protocol = "v2" (send_proxy_protocol is "v1") or remove it',
        ),
        (
            # the invalid version is the only problem reported
            'send_proxy_protocol = "v3"\nproxy_protocol_crc32c = true',
            "send_proxy_protocol",
            "'v3' is not a valid PROXY protocol version; expected one of: '', v1, v2",
        ),
        (
            'send_proxy_protocol = "v2"\nproxy_protocol_crc32c = "true"',
            "proxy_protocol_crc32c",
            "expected a boolean (true or false), got string 'true'; "
            "write proxy_protocol_crc32c = true without quotes",
        ),
    ],
)
def test_proxy_protocol_crc32c_problems(extra: str, path: str, message: str) -> None:
    problem = only_problem(listener() + BACKEND + extra + "\n")
    assert problem.key_path == f"backends[0].{path}"
    assert problem.message == message


def test_tls_health_check_maps_onto_the_model(tmp_path: Path) -> None:
    source = tmp_path / "tlsgate.toml"
    text = (
        listener("tls-passthrough", bind='":443"')
        + BACKEND
        + 'health = { type = "tls", host = "App.Example", tls_verify = true, '
        'ca_file = "certs/ca.pem", interval = "5s" }\n'
    )
    health = parse_config(text, source).backend("app").health
    assert health == HealthCheckConfig(
        kind="tls",
        host="app.example",
        tls_verify=True,
        ca_file=tmp_path / "certs" / "ca.pem",
        interval=5.0,
    )
    plain = parse_config(listener() + BACKEND + 'health = { type = "tls" }\n', SOURCE).backend(
        "app"
    )
    assert plain.health == HealthCheckConfig(kind="tls")


def test_http_check_of_a_tls_backend_may_verify() -> None:
    text = (
        listener()
        + BACKEND
        + 'tls = "insecure"\n'
        + 'health = { path = "/healthz", tls_verify = true, ca_file = "/etc/ca.pem" }\n'
    )
    health = parse_config(text, SOURCE).backend("app").health
    assert health is not None
    assert (health.kind, health.tls_verify, health.ca_file) == (
        "http",
        True,
        Path("/etc/ca.pem"),
    )


@pytest.mark.parametrize("kind", ['type = "tls"', 'path = "/"'])
def test_checks_of_a_verifying_backend_cannot_skip_verification(kind: str) -> None:
    text = listener() + BACKEND + f'tls = "verify"\nhealth = {{ {kind}, tls_verify = false }}\n'
    problem = only_problem(text)
    assert problem.key_path == "backends[0].health.tls_verify"
    assert problem.message.startswith(
        'checks of a tls = "verify" backend always verify the certificate, as requests do; '
        "remove tls_verify = false"
    )


def test_tls_verify_is_not_reported_twice_when_the_type_is_invalid() -> None:
    problem = only_problem(listener() + BACKEND + 'health = { type = "ssl", tls_verify = true }\n')
    assert problem.key_path == "backends[0].health.type"


# --- [acme] and issuer = "acme" --------------------------------------------------------------

ACME = '[acme]\ndirectory = "https://acme.example/dir"\n'
ACME_CERTIFICATE = """
[[certificates]]
name = "site"
domains = ["example.com"]
issuer = "acme"
"""
# Base64url of 32 bytes, as CAs hand out EAB MAC keys; TSIG secret as tsig-keygen writes it.
EAB_KEY = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wE"
TSIG_SECRET = "2vgzVKXy5vUkrFBUEMRtAZjfFfsRSXkCHXlVI1lXvQU="


def acme_only_problem(acme_lines: str, rest: str = "") -> ConfigProblem:
    """The only problem of an [acme] section made of ``acme_lines`` in a valid file."""
    return only_problem("[acme]\n" + acme_lines + "\n" + rest + BACKEND + listener())


def test_acme_section_maps_onto_the_model(tmp_path: Path) -> None:
    text = f"""
[acme]
directory = "https://127.0.0.1:14000/dir"
email = "ops+lb@Example.com"
ca_file = "pebble/root.pem"
challenges = ["dns-01", "http-01"]
key_types = ["ecdsa-p256", "rsa-2048"]
eab_kid = "kid-1"
eab_hmac_key = "{EAB_KEY}"
renew_check_interval = "10m"

[acme.dns]
server = "127.0.0.1:5353"
zone = "Example.com"
tsig_key_name = "tlsgate-key"
tsig_secret = "{TSIG_SECRET}"
tsig_algorithm = "hmac-sha512"
propagation_delay = "2s"
"""
    config = parse_config(text + ACME_CERTIFICATE + BACKEND + listener(), tmp_path / "t.toml")
    assert config.acme == AcmeConfig(
        directory="https://127.0.0.1:14000/dir",
        email="ops+lb@Example.com",
        ca_file=tmp_path / "pebble" / "root.pem",
        challenges=("dns-01", "http-01"),
        key_types=("ecdsa-p256", "rsa-2048"),
        eab_kid="kid-1",
        eab_hmac_key=EAB_KEY,
        dns=DnsUpdateConfig(
            server="127.0.0.1:5353",
            zone="example.com",
            tsig_key_name="tlsgate-key",
            tsig_secret=TSIG_SECRET,
            tsig_algorithm="hmac-sha512",
            propagation_delay=2.0,
        ),
        renew_check_interval=600.0,
    )
    assert config.certificate("site") == CertificateConfig(
        name="site", domains=("example.com",), issuer="acme"
    )
    # the secrets never reach a log line through a repr of the config
    assert EAB_KEY not in repr(config)
    assert TSIG_SECRET not in repr(config)


def test_acme_defaults() -> None:
    config = parse_config(ACME + BACKEND + listener(), SOURCE)
    assert config.acme == AcmeConfig(directory="https://acme.example/dir")
    assert config.acme.challenges == ("http-01", "tls-alpn-01")
    assert config.acme.key_types == ("ecdsa-p256",)
    assert config.acme.renew_check_interval == 3600.0
    assert config.acme.certificate_lifetime == 0.0
    assert (config.acme.email, config.acme.ca_file, config.acme.dns) == ("", None, None)


def test_acme_dns_as_an_inline_table_without_tsig() -> None:
    text = ACME + 'challenges = ["dns-01"]\ndns = { server = "10.0.0.53", zone = "example.com" }\n'
    config = parse_config(text + BACKEND + listener(), SOURCE)
    assert config.acme is not None
    assert config.acme.dns == DnsUpdateConfig(server="10.0.0.53:53", zone="example.com")


@pytest.mark.parametrize(
    ("server", "normalized"),
    [
        ("10.0.0.53", "10.0.0.53:53"),
        ("10.0.0.53:5353", "10.0.0.53:5353"),
        ("NS1.Example.com", "ns1.example.com:53"),
        ("ns1.example.com:53", "ns1.example.com:53"),
        ("2001:db8::53", "[2001:db8::53]:53"),
        ("[2001:db8::53]", "[2001:db8::53]:53"),
        ("[2001:db8::53]:5353", "[2001:db8::53]:5353"),
    ],
)
def test_acme_dns_server_forms(server: str, normalized: str) -> None:
    text = (
        ACME + f'challenges = ["dns-01"]\ndns = {{ server = "{server}", zone = "example.com" }}\n'
    )
    config = parse_config(text + BACKEND + listener(), SOURCE)
    assert config.acme is not None
    assert config.acme.dns is not None
    assert config.acme.dns.server == normalized


def test_acme_eab_key_padding_is_dropped() -> None:
    padded = "c2VjcmV0c2VjcmV0c2VjcmV0"[:-2] + "=="  # base64url with '=' padding
    config = parse_config(
        ACME + f'eab_kid = "k"\neab_hmac_key = "{padded}"\n' + BACKEND + listener(), SOURCE
    )
    assert config.acme is not None
    assert config.acme.eab_hmac_key == padded.rstrip("=")


def test_https_listener_serving_only_acme_certificates_is_valid() -> None:
    """The certificates appear once issued; tls-alpn-01 is answered on the listener."""
    text = (
        ACME
        + 'challenges = ["tls-alpn-01"]\n'
        + ACME_CERTIFICATE
        + BACKEND
        + listener("https", bind='"127.0.0.1:8443"', certificates='["site"]')
    )
    config = parse_config(text, SOURCE)
    assert config.listeners[0].certificates == ("site",)
    assert config.certificate("site").cert_file is None


@pytest.mark.parametrize(
    ("challenges", "listeners"),
    [
        ('["http-01"]', listener("http", bind='"127.0.0.1:5002"')),
        ('["tls-alpn-01"]', listener("https", bind='"127.0.0.1:5001"')),
        ('["http-01", "tls-alpn-01"]', listener("https", bind='"127.0.0.1:5001"')),
        ('["http-01", "tls-alpn-01"]', listener("http", bind='"127.0.0.1:5002"')),
    ],
)
def test_challenges_answered_by_listeners_on_any_port(challenges: str, listeners: str) -> None:
    """http-01 is validated on port 80 in production, but tests (Pebble's httpPort and
    tlsPort) and port forwarding use other ports: only the protocol is checked."""
    text = ACME + f"challenges = {challenges}\n" + ACME_CERTIFICATE + BACKEND + listeners
    assert parse_config(text, SOURCE).acme is not None


def test_dns01_needs_no_listener() -> None:
    text = (
        ACME
        + 'challenges = ["dns-01"]\ndns = { server = "10.0.0.53", zone = "example.com" }\n'
        + ACME_CERTIFICATE.replace('["example.com"]', '["example.com", "*.example.com"]')
    )
    config = parse_config(text, SOURCE)
    assert config.listeners == ()
    assert config.certificate("site").domains == ("example.com", "*.example.com")


def test_acme_section_without_acme_certificates_needs_no_listener() -> None:
    """Nothing is ordered, so nothing has to answer a challenge."""
    config = parse_config(ACME + 'challenges = ["http-01"]\n', SOURCE)
    assert config.acme is not None
    assert config.listeners == ()


def test_ip_address_certificate_with_http01() -> None:
    """RFC 8738: IP identifiers are validated with http-01 or tls-alpn-01."""
    text = ACME + ACME_CERTIFICATE.replace('"example.com"', '"192.0.2.10"') + BACKEND + listener()
    assert parse_config(text, SOURCE).certificate("site").domains == ("192.0.2.10",)


@pytest.mark.parametrize(
    ("lines", "path", "message"),
    [
        (
            'email = "ops@example.com"',
            "acme.directory",
            "directory is required: the ACME server's directory URL, e.g. directory = "
            '"https://acme-v02.api.letsencrypt.org/directory"',
        ),
        (
            'directory = "http://127.0.0.1:14000/dir"',
            "acme.directory",
            "'http://127.0.0.1:14000/dir': ACME requires HTTPS (RFC 8555 §6.1: \"Use of HTTPS "
            "is REQUIRED\"); write 'https://127.0.0.1:14000/dir'",
        ),
        (
            'directory = "acme-v02.api.letsencrypt.org/directory"',
            "acme.directory",
            "'acme-v02.api.letsencrypt.org/directory' is not a URL; expected the ACME server's "
            "directory URL, e.g. 'https://acme-v02.api.letsencrypt.org/directory'",
        ),
        (
            'directory = "ftp://acme.example/dir"',
            "acme.directory",
            "'ftp://acme.example/dir': the scheme must be https; expected the ACME server's "
            "directory URL, e.g. 'https://acme-v02.api.letsencrypt.org/directory'",
        ),
        (
            "directory = 5",
            "acme.directory",
            'expected a string, got integer 5; put it in quotes: directory = "5"',
        ),
    ],
)
def test_acme_directory_problems(lines: str, path: str, message: str) -> None:
    problem = acme_only_problem(lines)
    assert problem.key_path == path
    assert problem.message == message


@pytest.mark.parametrize(
    ("directory", "fragment"),
    [
        ("https://user:pw@acme.example/dir", "must not carry a user name or password"),
        ("https:///dir", "has no host"),
        ("https://acme.example:0/dir", "has port 0; expected 1 to 65535"),
        ("https://acme.example:99999/dir", "has an invalid host or port"),
        ("https://[::1/dir", "has an invalid host or port"),
        ("https://acme_ca.example/dir", "is not a valid host name"),
        ("https://acme.example/dir#x", "must not have a fragment"),
        ("https://acme.example/a dir", "contains spaces or control characters"),
    ],
)
def test_acme_directory_url_shape(directory: str, fragment: str) -> None:
    problem = acme_only_problem(f'directory = "{directory}"')
    assert problem.key_path == "acme.directory"
    assert fragment in problem.message


@pytest.mark.parametrize(
    ("email", "fragment"),
    [
        ("ops", "'ops' is not an email address; expected an address such as 'ops@example.com'"),
        ("@example.com", "is not an email address"),
        (
            "mailto:ops@example.com",
            "write the address without 'mailto:' ('ops@example.com'); tlsgate sends it to the "
            "CA as a mailto: contact",
        ),
        ("o ps@example.com", "the part before '@' may hold letters, digits, single dots"),
        ("ops..x@example.com", "the part before '@' may hold"),
        ("ops?cc=x@example.com", "the part before '@' may hold"),
        ("ops@-example.com", "has an invalid domain: '-example.com' is not a valid host name"),
        (
            "ops@localhost",
            "the domain 'localhost' has no dot, and CAs refuse addresses that are not in a "
            "public domain",
        ),
    ],
)
def test_acme_email_problems(email: str, fragment: str) -> None:
    problem = acme_only_problem(f'directory = "https://acme.example/dir"\nemail = "{email}"')
    assert problem.key_path == "acme.email"
    assert fragment in problem.message


@pytest.mark.parametrize(
    ("lines", "path", "message"),
    [
        (
            "challenges = []",
            "acme.challenges",
            "must list at least one challenge type; expected some of: http-01, tls-alpn-01, dns-01",
        ),
        (
            'challenges = "http-01"',
            "acme.challenges",
            "expected an array of strings, some of: http-01, tls-alpn-01, dns-01; got string "
            "'http-01'; write challenges = [\"http-01\"]",
        ),
        (
            'challenges = ["http01"]',
            "acme.challenges[0]",
            "'http01' is not a valid challenge type; did you mean 'http-01'? expected one of: "
            "http-01, tls-alpn-01, dns-01",
        ),
        (
            'challenges = ["http-01", "http-01"]',
            "acme.challenges[1]",
            "'http-01' is listed twice",
        ),
        (
            "challenges = [1]",
            "acme.challenges[0]",
            "expected a string, one of: http-01, tls-alpn-01, dns-01; got integer 1",
        ),
        (
            'key_types = ["ecdsa256"]',
            "acme.key_types[0]",
            "'ecdsa256' is not a valid key type; did you mean 'ecdsa-p256'? expected one of: "
            "ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096",
        ),
        (
            'key_types = ["ecdsa-p256", "rsa-2048", "ecdsa-p256"]',
            "acme.key_types[2]",
            "'ecdsa-p256' is listed twice",
        ),
        (
            "key_types = []",
            "acme.key_types",
            "must list at least one key type; expected some of: ecdsa-p256, ecdsa-p384, "
            "rsa-2048, rsa-3072, rsa-4096",
        ),
        (
            'renew_check_interval = "500ms"',
            "acme.renew_check_interval",
            "'500ms' is shorter than 1s; expected a duration of at least '1s', e.g. '1h'",
        ),
        (
            "renew_check_interval = 60",
            "acme.renew_check_interval",
            "expected a duration string like '2s', '500ms', '5m', '30d', got integer 60; "
            'for 60 seconds write renew_check_interval = "60s"',
        ),
        (
            'ca_file = "~/pebble.pem"',
            "acme.ca_file",
            "'~/pebble.pem': '~' is not expanded; write an absolute path or one relative to "
            "the config file's directory",
        ),
        (
            'contact = "ops@example.com"',
            "acme.contact",
            "unknown key 'contact'; valid keys: ca_file, certificate_lifetime, challenges, "
            "directory, dns, eab_hmac_key, eab_kid, email, key_types, renew_check_interval",
        ),
        (
            'certificate_lifetime = "30s"',
            "acme.certificate_lifetime",
            "'30s' is shorter than 60s; expected a duration of at least '60s' (or '0s' for the "
            "CA's default), e.g. '7d'",
        ),
    ],
)
def test_acme_key_problems(lines: str, path: str, message: str) -> None:
    problem = acme_only_problem(f'directory = "https://acme.example/dir"\n{lines}')
    assert problem.key_path == path
    assert problem.message == message


EAB_WHY = (
    "external account binding (RFC 8555 §7.3.4) needs both the key identifier and the MAC "
    "key that the CA gave you"
)


@pytest.mark.parametrize(
    ("lines", "path", "message"),
    [
        (
            'eab_kid = "kid-1"',
            "acme.eab_hmac_key",
            f"eab_hmac_key is required with eab_kid: {EAB_WHY}",
        ),
        (
            f'eab_hmac_key = "{EAB_KEY}"',
            "acme.eab_kid",
            f"eab_kid is required with eab_hmac_key: {EAB_WHY}",
        ),
        (
            'eab_kid = "kid-1"\neab_hmac_key = ""\n',
            "acme.eab_hmac_key",
            f"eab_hmac_key is required with eab_kid: {EAB_WHY}",
        ),
        (
            'eab_kid = "kid-1"\neab_hmac_key = "c2VjcmV0+c2VjcmV0/c2VjcmV0"',
            "acme.eab_hmac_key",
            "the key contains '+' or '/', so it is standard base64; an EAB MAC key is "
            "base64url (RFC 4648 §5, with '-' and '_' instead): copy it exactly as the CA "
            "shows it",
        ),
        (
            'eab_kid = "kid-1"\neab_hmac_key = "c2VjcmV0.c2VjcmV0"',
            "acme.eab_hmac_key",
            "the key is not base64url (RFC 4648 §5): letters, digits, '-' and '_', "
            "optionally '=' padding at the end",
        ),
        (
            'eab_kid = "kid-1"\neab_hmac_key = "c2VjcmV0c2VjcmV0"',
            "acme.eab_hmac_key",
            "the key decodes to 12 bytes; an EAB MAC key is at least 16 bytes, so copy the "
            "whole key the CA gave you",
        ),
        (
            f'eab_kid = "kid 1"\neab_hmac_key = "{EAB_KEY}"',
            "acme.eab_kid",
            "'kid 1': the key identifier must be ASCII without spaces or control characters "
            "(RFC 8555 §7.3.4), as the CA gave it",
        ),
        (
            'eab_kid = "kid-1"\neab_hmac_key = 1234567890',
            "acme.eab_hmac_key",
            "expected a string, got integer (not shown: it is a secret)",
        ),
    ],
)
def test_acme_external_account_binding_problems(lines: str, path: str, message: str) -> None:
    problem = acme_only_problem(f'directory = "https://acme.example/dir"\n{lines}')
    assert problem.key_path == path
    assert problem.message == message
    assert "1234567890" not in problem.message


DNS_EXAMPLE = (
    'e.g. dns = { server = "10.0.0.53:53", zone = "example.com", tsig_key_name = "tlsgate", '
    'tsig_secret = "<base64>" }'
)
TSIG_WHY = "a TSIG key (RFC 8945) is a name and a secret, as in the server's key file"


@pytest.mark.parametrize(
    ("lines", "path", "message"),
    [
        (
            'challenges = ["dns-01"]',
            "acme.dns",
            "dns is required with the dns-01 challenge: the DNS server that takes RFC 2136 "
            f"updates for the _acme-challenge records, {DNS_EXAMPLE}",
        ),
        (
            'dns = { server = "10.0.0.53", zone = "example.com" }',
            "acme.dns",
            'dns is only used by the dns-01 challenge; add "dns-01" to challenges, or remove dns',
        ),
        (
            'challenges = ["dns-01"]\ndns = "10.0.0.53"',
            "acme.dns",
            f"expected a table, got string '10.0.0.53'; {DNS_EXAMPLE}",
        ),
        (
            'challenges = ["dns-01"]\ndns = { zone = "example.com" }',
            "acme.dns.server",
            "server is required: the 'host:port' of the DNS server that takes the updates "
            "(port 53 if left out)",
        ),
        (
            'challenges = ["dns-01"]\ndns = { server = "10.0.0.53:0", zone = "example.com" }',
            "acme.dns.server",
            "'10.0.0.53:0' has port 0; expected 1 to 65535",
        ),
        (
            'challenges = ["dns-01"]\ndns = { server = "ns_1.example:53", zone = "example.com" }',
            "acme.dns.server",
            "'ns_1.example' is not a valid host name: each label must be 1 to 63 letters, "
            "digits and '-', not starting or ending with '-' (bad label 'ns_1'); expected "
            "'HOST:PORT' or 'HOST' (port 53), e.g. '10.0.0.53:53', 'ns1.example.com' or "
            "'[2001:db8::53]:53'",
        ),
        (
            'challenges = ["dns-01"]\ndns = { server = "10.0.0.53" }',
            "acme.dns.zone",
            'zone is required: the zone that is updated, e.g. zone = "example.com"',
        ),
        (
            'challenges = ["dns-01"]\ndns = { server = "10.0.0.53", zone = "example.com." }',
            "acme.dns.zone",
            "'example.com.' ends with a dot; write 'example.com'",
        ),
        (
            'challenges = ["dns-01"]\n'
            'dns = { server = "10.0.0.53", zone = "example.com", tsig_key_name = "k" }',
            "acme.dns.tsig_secret",
            f"tsig_secret is required with tsig_key_name: {TSIG_WHY}",
        ),
        (
            'challenges = ["dns-01"]\ndns = { server = "10.0.0.53", zone = "example.com", '
            f'tsig_secret = "{TSIG_SECRET}" }}',
            "acme.dns.tsig_key_name",
            f"tsig_key_name is required with tsig_secret: {TSIG_WHY}",
        ),
        (
            'challenges = ["dns-01"]\ndns = { server = "10.0.0.53", zone = "example.com", '
            'tsig_key_name = "k", tsig_secret = "not base64!" }',
            "acme.dns.tsig_secret",
            "the secret is not base64 (RFC 4648 §4); copy the secret line of the BIND key file "
            "(tsig-keygen) or knot key (keymgr -t) as it is",
        ),
        (
            'challenges = ["dns-01"]\ndns = { server = "10.0.0.53", zone = "example.com", '
            f'tsig_key_name = "k", tsig_secret = "{TSIG_SECRET}", tsig_algorithm = "sha256" }}',
            "acme.dns.tsig_algorithm",
            "'sha256' is not a valid TSIG algorithm; expected one of: hmac-sha256, "
            "hmac-sha512, hmac-sha384, hmac-sha224, hmac-sha1, hmac-md5",
        ),
        (
            'challenges = ["dns-01"]\ndns = { server = "10.0.0.53", zone = "example.com", '
            'tsig_algorithm = "hmac-sha512" }',
            "acme.dns.tsig_algorithm",
            "tsig_algorithm is only used with tsig_key_name and tsig_secret; add the key or "
            "remove tsig_algorithm",
        ),
        (
            'challenges = ["dns-01"]\ndns = { server = "10.0.0.53", zone = "example.com", '
            "propagation_delay = 5 }",
            "acme.dns.propagation_delay",
            "expected a duration string like '2s', '500ms', '5m', '30d', got integer 5; "
            'for 5 seconds write propagation_delay = "5s"',
        ),
        (
            'challenges = ["dns-01"]\n'
            'dns = { server = "10.0.0.53", zone = "example.com", port = 53 }',
            "acme.dns.port",
            "unknown key 'port'; valid keys: propagation_delay, server, tsig_algorithm, "
            "tsig_key_name, tsig_secret, zone",
        ),
    ],
)
def test_acme_dns_problems(lines: str, path: str, message: str) -> None:
    problem = acme_only_problem(f'directory = "https://acme.example/dir"\n{lines}')
    assert problem.key_path == path
    assert problem.message == message


def test_acme_dns_as_its_own_table_reports_its_key_paths() -> None:
    text = (
        ACME + 'challenges = ["dns-01"]\n[acme.dns]\nserver = "10.0.0.53"\nzone = "ex ample.com"\n'
    )
    problem = only_problem(text + BACKEND + listener())
    assert problem.key_path == "acme.dns.zone"
    assert "is not a valid host name" in problem.message


def test_secrets_are_never_shown_in_messages() -> None:
    secret = "hunter2-very-secret"
    text = (
        ACME
        + f'challenges = ["dns-01"]\neab_kid = "k"\neab_hmac_key = "{secret}!"\n'
        + f'dns = {{ server = "10.0.0.53", zone = "example.com", tsig_key_name = "k", '
        f'tsig_secret = "{secret}" }}\n'
    )
    problems = problems_of(text + BACKEND + listener())
    assert {p.key_path for p in problems} == {"acme.eab_hmac_key", "acme.dns.tsig_secret"}
    assert all(secret not in p.message for p in problems)


def test_acme_section_must_be_a_table() -> None:
    problem = only_problem(
        '[[acme]]\ndirectory = "https://acme.example/dir"\n' + BACKEND + listener()
    )
    assert problem.key_path == "acme"
    assert problem.message == "expected a table, got an array; write [acme] (single brackets)"


def test_acme_key_at_top_level_points_at_the_section() -> None:
    problem = only_problem('directory = "https://acme.example/dir"\n' + BACKEND + listener())
    assert problem.key_path == "directory"
    assert "'directory' belongs inside a section such as [acme]" in problem.message


def test_acme_certificate_must_not_name_files() -> None:
    text = ACME + ACME_CERTIFICATE + 'cert_file = "site.pem"\nkey_file = "site.key"\n'
    by_path = {p.key_path: p.message for p in problems_of(text + BACKEND + listener())}
    assert by_path == {
        f"certificates[0].{key}": (
            f'{key} is not used with issuer = "acme": tlsgate obtains the certificate and its '
            f"key from the ACME server and keeps them in the store; remove {key} "
            '(or use issuer = "files")'
        )
        for key in ("cert_file", "key_file")
    }


def test_acme_certificate_needs_the_acme_section() -> None:
    problem = only_problem(ACME_CERTIFICATE + BACKEND + listener())
    assert problem.key_path == "certificates[0].issuer"
    assert problem.message == (
        'issuer = "acme" needs an [acme] section with the ACME server\'s directory URL; add '
        'one, e.g. [acme] directory = "https://acme-v02.api.letsencrypt.org/directory"'
    )


def test_acme_certificate_domains_are_required() -> None:
    text = ACME + ACME_CERTIFICATE.replace('domains = ["example.com"]\n', "")
    problem = only_problem(text + BACKEND + listener())
    assert problem.key_path == "certificates[0].domains"
    assert problem.message.startswith("domains is required")


def test_wildcard_needs_dns01() -> None:
    text = ACME + ACME_CERTIFICATE.replace('["example.com"]', '["example.com", "*.example.com"]')
    problem = only_problem(text + BACKEND + listener())
    assert problem.key_path == "certificates[0].domains[1]"
    assert problem.message == (
        "'*.example.com': a wildcard name can only be validated with the dns-01 challenge, "
        'which [acme] challenges does not list; add "dns-01" to challenges (with an '
        "[acme.dns] table), or list the names without a wildcard"
    )


def test_wildcard_with_dns01_among_other_challenges() -> None:
    text = (
        ACME
        + 'challenges = ["http-01", "dns-01"]\n'
        + 'dns = { server = "10.0.0.53", zone = "example.com" }\n'
        + ACME_CERTIFICATE.replace('["example.com"]', '["*.example.com"]')
    )
    config = parse_config(text + BACKEND + listener(), SOURCE)
    assert config.certificate("site").domains == ("*.example.com",)


def test_ip_address_cannot_use_dns01() -> None:
    text = (
        ACME
        + 'challenges = ["dns-01"]\ndns = { server = "10.0.0.53", zone = "example.com" }\n'
        + ACME_CERTIFICATE.replace('["example.com"]', '["example.com", "192.0.2.10"]')
    )
    problem = only_problem(text + BACKEND + listener())
    assert problem.key_path == "certificates[0].domains[1]"
    assert problem.message == (
        "'192.0.2.10': an IP address cannot be validated with dns-01 (RFC 8738 §7), the only "
        'challenge in [acme] challenges; add "http-01" or "tls-alpn-01" to challenges'
    )


def test_invalid_challenges_are_reported_once() -> None:
    """With a broken challenge list, wildcards and listeners are not judged against it."""
    text = (
        ACME
        + 'challenges = ["dns01"]\n'
        + ACME_CERTIFICATE.replace('["example.com"]', '["*.example.com"]')
    )
    problem = only_problem(text + BACKEND + listener("tcp", bind='"127.0.0.1:9000"'))
    assert problem.key_path == "acme.challenges[0]"
    assert "did you mean 'dns-01'?" in problem.message


@pytest.mark.parametrize(
    ("challenges", "message"),
    [
        (
            '["http-01"]',
            "http-01 is answered by http listeners, and there is none; add one or enable "
            'tls-alpn-01 (challenges = ["http-01", "tls-alpn-01"])',
        ),
        (
            '["tls-alpn-01"]',
            "tls-alpn-01 is answered by https listeners, and there is none; add one or enable "
            'http-01 (challenges = ["http-01", "tls-alpn-01"])',
        ),
        (
            '["http-01", "tls-alpn-01"]',
            "http-01 is answered by http listeners and tls-alpn-01 by https listeners, and "
            "there are neither; add one, or enable dns-01",
        ),
    ],
)
def test_challenges_nothing_can_answer(challenges: str, message: str) -> None:
    text = (
        ACME
        + f"challenges = {challenges}\n"
        + ACME_CERTIFICATE
        + BACKEND
        + listener("tcp", bind='"127.0.0.1:9000"')
    )
    problem = only_problem(text)
    assert problem.key_path == "acme.challenges"
    assert problem.message == message


def test_http01_only_with_only_an_https_listener() -> None:
    text = (
        ACME
        + 'challenges = ["http-01"]\n'
        + ACME_CERTIFICATE
        + BACKEND
        + listener("https", bind='"127.0.0.1:8443"')
    )
    problem = only_problem(text)
    assert problem.key_path == "acme.challenges"
    assert problem.message.startswith("http-01 is answered by http listeners, and there is none")


def test_challenge_listeners_not_judged_when_a_protocol_is_invalid() -> None:
    text = ACME + 'challenges = ["http-01"]\n' + ACME_CERTIFICATE + BACKEND + listener("htp")
    problem = only_problem(text)
    assert problem.key_path == "listeners[0].protocol"


def _documented_example(heading: str) -> str:
    docs = Path(__file__).resolve().parents[3] / "docs" / "configuration.md"
    section = docs.read_text(encoding="utf-8").split(heading, 1)[1]
    return section.split("```toml\n", 1)[1].split("```", 1)[0]


def test_documented_lets_encrypt_example_is_valid() -> None:
    config = parse_config(
        _documented_example("### Example: Let's Encrypt"), Path("/etc/tlsgate/tlsgate.toml")
    )
    assert config.acme is not None
    assert config.acme.directory == "https://acme-v02.api.letsencrypt.org/directory"
    assert config.acme.key_types == ("ecdsa-p256", "rsa-2048")
    assert [c.issuer for c in config.certificates] == ["acme"]
    assert {lst.protocol for lst in config.listeners} == {"http", "https"}


def test_documented_pebble_example_is_valid(tmp_path: Path) -> None:
    config = parse_config(
        _documented_example("### Example: testing with Pebble"), tmp_path / "t.toml"
    )
    assert config.acme is not None
    assert config.acme.directory == "https://127.0.0.1:14000/dir"
    assert config.acme.ca_file == tmp_path / "pebble" / "ca.pem"
    assert config.acme.renew_check_interval == 10.0
    assert [lst.bind[0].port for lst in config.listeners] == [5001, 5002]


def test_documented_dns01_example_is_valid() -> None:
    config = parse_config(
        _documented_example("### Example: a wildcard certificate over DNS-01"), SOURCE
    )
    assert config.acme is not None
    assert config.acme.dns is not None
    assert config.acme.challenges == ("dns-01", "http-01")
    assert config.acme.dns.server == "10.0.0.53:53"
    assert config.acme.dns.tsig_algorithm == "hmac-sha256"
    assert config.certificate("wildcard").domains == ("example.com", "*.example.com")


# --- fuzzing ---------------------------------------------------------------------------------


def _toml_string(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


TomlValue = str | int | float | bool | list["TomlValue"] | dict[str, "TomlValue"]


def _toml_value(value: TomlValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{_toml_string(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"


def _toml_document(data: dict[str, TomlValue]) -> str:
    return "\n".join(f"{_toml_string(k)} = {_toml_value(v)}" for k, v in data.items()) + "\n"


KNOWN_KEYS = sorted(
    {
        "node", "log", "store", "certificates", "listeners", "routes", "backends", "acme",
        "name", "data_dir", "workers", "shutdown_timeout", "ticket_key_rotation", "access",
        "error", "level", "url",
        "key_file", "domains", "issuer", "cert_file", "bind", "protocol", "backend",
        "accept_proxy_protocol", "trusted_proxies", "client_ip_header", "hsts",
        "redirect_https", "redirect_port", "default_certificate", "min_tls_version",
        "header_timeout", "idle_timeout", "tls_handshake_timeout", "max_header_size",
        "max_body_size", "max_headers", "max_connections", "listener", "hosts",
        "max_connections_per_client",
        "path_prefix", "servers", "balance", "discover", "tls", "ca_file", "server_name",
        "client_cert", "send_proxy_protocol", "health", "connect_timeout", "read_timeout",
        "pool_idle_timeout", "fail_timeout", "retries", "max_idle_per_server", "max_fails",
        "address", "weight", "path", "host", "type", "expect_status", "interval", "timeout",
        "rise", "fall", "fallback_backend", "max_client_hello_size", "connect_idle_timeout",
        "tls_verify", "proxy_protocol_crc32c", "directory", "email", "challenges",
        "key_types", "eab_kid", "eab_hmac_key", "renew_check_interval", "dns", "server",
        "zone", "tsig_key_name", "tsig_secret", "tsig_algorithm", "propagation_delay",
    }
)  # fmt: skip
INTERESTING_STRINGS = [
    "", "-", "/", "0", "2s", "0s", "1h30m", "64KiB", "-1", "app", "api", "www", "http",
    "https", "tcp", "tls-passthrough", "files", "acme", "verify", "off", "v1", "v2",
    "round_robin", "1.2", "1.3", "0.0.0.0:443", ":80", "[::]:443", "[::1]:8443",
    "127.0.0.1:80", "10.0.0.1:8080", "10.0.0.0/8", "10.0.0.1/8", "example.com",
    "*.example.com", "a.*.b", "max-age=1", "200-399", "sqlite://x.db", "etcd://h:1/p",
    "~/x", "x\x00y", "bücher.de", "[", "[::1", "::1:80", "a" * 300, "tls", "insecure",
    "512B", "1MiB", "2MiB", "16KiB", "ca", "http-01", "tls-alpn-01", "dns-01",
    "ecdsa-p256", "rsa-2048", "https://acme.example/dir", "http://acme.example/dir",
    "https://127.0.0.1:14000/dir", "ops@example.com", "mailto:a@b.c", "10.0.0.53",
    "ns1.example.com:5353", "hmac-sha256", "hmac-md5", "c2VjcmV0", "c2VjcmV0c2VjcmV0c2VjcmV0",
    "c2VjcmV0c2VjcmV0c2VjcmV0", "a+b/", "1s", "500ms",
]  # fmt: skip

keys = st.sampled_from(KNOWN_KEYS) | st.text(max_size=8)
scalars: st.SearchStrategy[TomlValue] = (
    st.sampled_from(INTERESTING_STRINGS)
    | st.text(max_size=12)
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.sampled_from([0, 1, 2, 80, 443, 65535, 65536, 256, 257, -1, 10**30])
    | st.floats(allow_nan=True)
    | st.booleans()
)
toml_values: st.SearchStrategy[TomlValue] = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
    max_leaves=12,
)
# Cheaper to generate, and deep enough for tables of tables (servers, health).
shallow_values: st.SearchStrategy[TomlValue] = (
    scalars
    | st.lists(scalars | st.dictionaries(keys, scalars, max_size=3), max_size=3)
    | st.dictionaries(keys, scalars, max_size=4)
)
entries = st.dictionaries(st.sampled_from(KNOWN_KEYS), shallow_values, max_size=8)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _check_outcome(text: str) -> None:
    """``parse_config`` returns a consistent Config or raises ConfigError; nothing else."""
    try:
        config = parse_config(text, SOURCE)
    except ConfigError as exc:
        problems = exc.problems
    else:
        _assert_consistent(config)
        return
    assert problems
    for problem in problems:
        assert problem.file == str(SOURCE)
        assert problem.message


def _assert_consistent(config: Config) -> None:
    """What the loader promises about every Config it returns."""
    backends = [b.name for b in config.backends]
    listeners = [lst.name for lst in config.listeners]
    certificates = [c.name for c in config.certificates]
    for names in (backends, listeners, certificates):
        assert len(names) == len(set(names))
    for lst in config.listeners:
        assert lst.bind
        assert lst.backend is None or lst.backend in backends
        assert set(lst.certificates) <= set(certificates)
        assert lst.default_certificate is None or lst.default_certificate in certificates
        assert all(1 <= b.port <= 65535 for b in lst.bind)
        if lst.fallback_backend is not None:
            assert lst.protocol == "tls-passthrough"
            assert lst.fallback_backend in backends
        assert 512 <= lst.limits.max_client_hello_size <= 1024 * 1024
        assert lst.limits.connect_idle_timeout > 0
    for route in config.routes:
        assert route.backend in backends
        assert route.listener in listeners
        assert route.path_prefix.startswith("/")
    acme = config.acme
    for cert in config.certificates:
        if cert.issuer == "acme":
            assert acme is not None
            assert cert.cert_file is None
            assert cert.key_file is None
            for domain in cert.domains:
                if domain.startswith("*."):
                    assert "dns-01" in acme.challenges
                if _is_ip(domain):
                    assert set(acme.challenges) & {"http-01", "tls-alpn-01"}
        else:
            assert cert.issuer == "files"
            assert cert.cert_file is not None
            assert cert.key_file is not None
    if acme is not None:
        assert acme.directory.startswith("https://")
        for values in (acme.challenges, acme.key_types):
            assert values
            assert len(values) == len(set(values))
        assert set(acme.challenges) <= {"http-01", "tls-alpn-01", "dns-01"}
        assert set(acme.key_types) <= {
            "ecdsa-p256",
            "ecdsa-p384",
            "rsa-2048",
            "rsa-3072",
            "rsa-4096",
        }
        assert (acme.eab_kid == "") == (acme.eab_hmac_key == "")
        assert "=" not in acme.eab_hmac_key
        assert acme.renew_check_interval >= 1.0
        assert (acme.dns is not None) == ("dns-01" in acme.challenges)
        if acme.dns is not None:
            assert acme.dns.server.rpartition(":")[2].isdigit()
            assert acme.dns.zone
            assert (acme.dns.tsig_key_name == "") == (acme.dns.tsig_secret == "")
            assert acme.dns.propagation_delay >= 0
        if any(c.issuer == "acme" for c in config.certificates) and "dns-01" not in (
            acme.challenges
        ):
            protocols = {lst.protocol for lst in config.listeners}
            assert any(
                {"http-01": "http", "tls-alpn-01": "https"}[c] in protocols for c in acme.challenges
            )
    for backend in config.backends:
        assert all(1 <= s.weight <= 256 for s in backend.servers)
        if backend.proxy_protocol_crc32c:
            assert backend.send_proxy_protocol == "v2"
        health = backend.health
        if health is not None:
            assert health.timeout < health.interval
            if health.ca_file is not None:
                assert health.tls_verify
            if health.tls_verify:
                assert health.kind == "tls" or (health.kind == "http" and backend.tls != "off")


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_fuzz_arbitrary_text(text: str) -> None:
    _check_outcome(text)


@settings(max_examples=300)
@given(
    st.lists(
        st.sampled_from(
            ["[node]", "[[listeners]]", "[[backends]]", "[[routes]]", "[log]", "[store]",
             "[acme]", "[acme.dns]", "[[certificates]]", 'issuer = "acme"',
             'directory = "https://a.example/d"', 'challenges = ["dns-01"]',
             "name = ", "bind = ", '"', "'", "[", "]", "{", "}", ",", "=", "\n", " ",
             "1", "true", '"x"', "1979-05-27", "07:32:00", "1e3", "0x1F", "#"]
        ),
        max_size=40,
    ).map("".join)
)  # fmt: skip
def test_fuzz_toml_shaped_text(text: str) -> None:
    _check_outcome(text)


@settings(max_examples=120, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(keys, toml_values, max_size=6))
def test_fuzz_arbitrary_documents(data: dict[str, TomlValue]) -> None:
    _check_outcome(_toml_document(data))


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(
    sections=st.fixed_dictionaries(
        {},
        optional={
            "node": entries,
            "log": entries,
            "store": entries,
            "acme": entries,
            "listeners": st.lists(entries, max_size=3),
            "routes": st.lists(entries, max_size=3),
            "backends": st.lists(entries, max_size=3),
            "certificates": st.lists(entries, max_size=2),
        },
    )
)
def test_fuzz_documents_with_valid_sections(sections: dict[str, TomlValue]) -> None:
    _check_outcome(_toml_document(sections))


def _mostly(valid: list[TomlValue], invalid: list[TomlValue]) -> st.SearchStrategy[TomlValue]:
    """Mostly one of ``valid``, now and then one of ``invalid``."""
    return st.sampled_from([*valid * 7, *invalid])


def _rarely(draw: st.DrawFn) -> bool:
    return draw(st.integers(0, 7)) == 0


@st.composite
def acme_documents(draw: st.DrawFn) -> dict[str, TomlValue]:
    """A file with [acme], certificates and listeners that is mostly coherent (dns
    exactly when dns-01 is enabled, no files for acme certificates), with a few values
    and rules broken now and then."""
    challenges: list[TomlValue] = list(
        draw(
            st.lists(
                st.sampled_from(["http-01", "tls-alpn-01", "dns-01"]),
                min_size=1,
                max_size=3,
                unique=True,
            )
        )
    )
    acme: dict[str, TomlValue] = {
        "directory": draw(_mostly(["https://acme.example/dir"], ["http://acme.example/dir", ""]))
    }
    optional: dict[str, st.SearchStrategy[TomlValue]] = {
        "email": _mostly(["ops@example.com"], ["ops", "mailto:a@b.c", ""]),
        "ca_file": _mostly(["ca.pem", ""], ["~/x"]),
        "key_types": _mostly([["ecdsa-p256"], ["ecdsa-p384", "rsa-2048"]], [[], ["rsa-1"]]),
        "renew_check_interval": _mostly(["1s", "1h"], ["500ms", "0", 5]),
    }
    for key, values in optional.items():
        if draw(st.booleans()):
            acme[key] = draw(values)
    if draw(st.booleans()) or "dns-01" in challenges:
        acme["challenges"] = (
            draw(_mostly([challenges], [[], ["http01"], ["dns-01", "dns-01"]]))
            if _rarely(draw)
            else challenges
        )
    else:
        challenges = ["http-01", "tls-alpn-01"]
    if draw(st.booleans()):
        acme["eab_kid"] = draw(_mostly(["kid"], ["", "k i d"]))
        if not _rarely(draw):
            acme["eab_hmac_key"] = draw(_mostly([EAB_KEY, EAB_KEY + "="], ["", "a+b/", "c2VjcmV0"]))
    if ("dns-01" in challenges) != _rarely(draw):
        dns: dict[str, TomlValue] = {
            "server": draw(_mostly(["10.0.0.53", "ns1.example.com:5353", "[::1]"], [":53"])),
            "zone": draw(_mostly(["example.com"], ["", "example.com."])),
            "propagation_delay": draw(_mostly(["0", "2s"], ["x"])),
        }
        if draw(st.booleans()):
            dns["tsig_key_name"] = "k"
            if not _rarely(draw):
                dns["tsig_secret"] = draw(_mostly([TSIG_SECRET], ["", "!"]))
            dns["tsig_algorithm"] = draw(_mostly(["hmac-sha256", "hmac-md5"], ["md5"]))
        acme["dns"] = dns
    certificates: list[TomlValue] = []
    for name in draw(st.lists(st.sampled_from(["a", "b"]), max_size=2, unique=True)):
        certificate: dict[str, TomlValue] = {
            "name": name,
            "domains": draw(
                st.lists(
                    _mostly(["example.com", "www.example.com"], ["*.example.com", "192.0.2.1"]),
                    min_size=1,
                    max_size=2,
                    unique=True,
                )
            ),
            "issuer": draw(_mostly(["acme"], ["files", "ca"])),
        }
        if _rarely(draw):
            certificate.update(cert_file="c.pem", key_file="c.key")
        certificates.append(certificate)
    listeners: list[TomlValue] = [
        {"name": protocol, "bind": f"127.0.0.{i + 1}:80", "protocol": protocol, "backend": "app"}
        for i, protocol in enumerate(
            draw(st.lists(st.sampled_from(["http", "https", "tcp"]), max_size=2, unique=True))
        )
    ]
    data: dict[str, TomlValue] = {
        "backends": [{"name": "app", "servers": ["10.0.0.1:80"]}],
        "certificates": certificates,
        "listeners": listeners,
    }
    if not _rarely(draw):
        data["acme"] = acme
    return data


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(acme_documents())
def test_fuzz_acme_sections(data: dict[str, TomlValue]) -> None:
    """[acme], acme certificates and listeners in mostly coherent combinations: every
    accepted file keeps the loader's promises (no wildcard without dns-01, a challenge
    that something answers, ...), every other one is reported."""
    _check_outcome(_toml_document(data))


def _design_example_data() -> dict[str, TomlValue]:
    data: dict[str, TomlValue] = tomllib.loads(DESIGN_EXAMPLE)
    return data


def _leaf_paths(
    value: TomlValue, prefix: tuple[str | int, ...] = ()
) -> list[tuple[str | int, ...]]:
    paths: list[tuple[str | int, ...]] = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            paths += _leaf_paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            paths += _leaf_paths(v, (*prefix, i))
    return paths


DESIGN_PATHS = _leaf_paths(_design_example_data())


def _child(parent: TomlValue, step: str | int) -> TomlValue | None:
    if isinstance(parent, dict) and isinstance(step, str):
        return parent.get(step)
    if isinstance(parent, list) and isinstance(step, int) and step < len(parent):
        return parent[step]
    return None


@settings(max_examples=200)
@given(
    edits=st.lists(
        st.tuples(st.sampled_from(DESIGN_PATHS), shallow_values | st.none()), min_size=1, max_size=3
    )
)
def test_fuzz_mutated_design_example(
    edits: list[tuple[tuple[str | int, ...], TomlValue | None]],
) -> None:
    """Replace (None: delete) a few values of a valid file; the loader either accepts the
    result with every promise kept, or reports problems, and never raises anything else."""
    data = _design_example_data()
    for path, new in edits:
        parent: TomlValue = data
        for step in path[:-1]:
            child = _child(parent, step)
            if child is None:
                break  # an earlier edit removed or replaced this part
            parent = child
        else:
            last = path[-1]
            if isinstance(parent, dict) and isinstance(last, str):
                if new is None:
                    parent.pop(last, None)
                else:
                    parent[last] = new
            elif isinstance(parent, list) and isinstance(last, int) and last < len(parent):
                if new is None:
                    del parent[last]
                else:
                    parent[last] = new
    _check_outcome(_toml_document(data))


def test_deeply_nested_toml_is_a_config_error() -> None:
    problem = only_problem("a = " + "[" * 5000 + "]" * 5000)
    assert problem.message.startswith("invalid TOML")


def test_huge_integer_is_a_config_error() -> None:
    problem = only_problem("[node]\nworkers = 1" + "0" * 5000)
    assert problem.message.startswith("invalid TOML")


def test_documented_example_is_valid() -> None:
    """The full example in docs/configuration.md must stay a valid file."""
    docs = Path(__file__).resolve().parents[3] / "docs" / "configuration.md"
    text = docs.read_text(encoding="utf-8")
    example = text.split("## Full example", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    config = parse_config(example, SOURCE)
    assert [lst.name for lst in config.listeners] == ["https", "http", "postgres"]
    assert config.listeners[1].redirect_port == 443
    assert config.certificates[0].cert_file == Path("/etc/tlsgate/certs/www.pem")


def test_documented_passthrough_example_is_valid() -> None:
    """The TLS passthrough + PROXY example in docs/configuration.md must stay valid."""
    docs = Path(__file__).resolve().parents[3] / "docs" / "configuration.md"
    text = docs.read_text(encoding="utf-8")
    section = text.split("## Example: TLS passthrough with the PROXY protocol", 1)[1]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    config = parse_config(example, SOURCE)
    tls, postgres = config.listeners
    assert (tls.protocol, tls.backend, tls.fallback_backend) == ("tls-passthrough", "web", "legacy")
    assert tls.accept_proxy_protocol is True
    assert tls.limits.connect_idle_timeout == 1800.0
    assert (postgres.protocol, postgres.backend) == ("tcp", "db")
    web = config.backend("web")
    assert (web.send_proxy_protocol, web.proxy_protocol_crc32c) == ("v2", True)
    assert web.health == HealthCheckConfig(
        kind="tls",
        host="www.example.com",
        tls_verify=True,
        ca_file=SOURCE.parent / "internal-ca.pem",
    )
    assert config.backend("api").send_proxy_protocol == "v1"


def test_problems_are_listed_in_file_order() -> None:
    """Checks that run last (overlapping binds) are still listed where they occur."""
    text = (
        listener("tcp", name="a", bind='["0.0.0.0:80", "127.0.0.1:80"]')
        + listener("udp", name="b", bind='"127.0.0.1:81"')
        + BACKEND
        + '[node]\nworkers = "2"\n'
    )
    assert [p.key_path for p in problems_of(text)] == [
        "listeners[0].bind[1]",
        "listeners[1].protocol",
        "node.workers",
    ]
