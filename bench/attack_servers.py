"""The proxies of ``bench/attack.py``: tlsgate, HAProxy and nginx with production-like limits.

How it works: like ``bench/servers.py`` (whose :class:`common.ProcessSet`, certificate and
backend this reuses), each ``start_*`` function writes one configuration into the run's
temporary directory and starts the server pinned to the proxy core -- but with the
timeouts and connection limits a production deployment would have, not the long ones of
``make bench`` row 8, and optionally under a low ``RLIMIT_NOFILE`` (``prlimit``: the
EMFILE attack). :class:`Limits` is what an attack asks for; :data:`KNOBS` says in words
how each proxy is configured (the report prints it and stores it in the JSON).

The three are set up alike: one worker / thread / worker process; TLS 1.2-1.3 with the
same ECDSA certificate, ALPN http/1.1, session tickets on; HTTP/1.1 keep-alive to the
client and to the backend; the same X-Forwarded-*/Forwarded headers; no access log
(tlsgate: error log at level warning to a file). Timeouts: 10 s for the TLS handshake (HAProxy 2.6
has no handshake timeout of its own: ``timeout client``, 60 s, covers it) and for a
request head, 60 s between body bytes, 60 s idle keep-alive, 60 s of server silence.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import servers
from common import Certificate, Proc, ProcessSet, Unavailable, fd_limit, fresh_dir


@dataclass(frozen=True)
class Limits:
    """The connection limit and descriptor limit an attack runs the proxies with."""

    max_connections: int
    nofile: int | None = None  # RLIMIT_NOFILE (soft = hard) to start the proxy with
    # connections one client address may hold (0: no such limit): tlsgate's
    # max_connections_per_client, HAProxy's stick table, nginx's limit_conn
    per_client: int = 0


KNOBS: dict[str, str] = {
    "tlsgate": "[node] workers = 1; https listener: tls_handshake_timeout 10s, "
    "header_timeout 10s, idle_timeout 60s, body_timeout 60s, body_min_rate 500B (the "
    "defaults, set explicitly), send_timeout (its default, 60s, where the version has it), "
    "max_connections per attack; backend: connect_timeout 5s, read_timeout 60s, "
    "max_fails/fail_timeout (defaults); error log to a file at level warning, no access log",
    "haproxy": "nbthread 1; maxconn (global and defaults) per attack, with 'no strict-limits' "
    "when RLIMIT_NOFILE is below 2 x maxconn (else 2.6 refuses to start); timeout connect 5s, "
    "client 60s (also the TLS handshake: 2.6 has no 'timeout client-hs'), server 60s, "
    "http-request 10s, http-keep-alive 60s; option http-keep-alive, http-reuse safe, "
    "option forwardfor; no log",
    "nginx": "worker_processes 1; worker_connections = the attack's limit + 64 (nginx counts "
    "its upstream connections in it too); client_header_timeout 10s (also the TLS "
    "handshake), client_body_timeout 60s, client_max_body_size 0 (uploads of any size, "
    "like the other two), keepalive_timeout 60s, send_timeout 60s, "
    "keepalive_requests 1000000; upstream keepalive 32; access_log off",
    "backends": "the bench backend nginx ('/': 100 bytes, '/big': the slow readers' 64 MiB "
    "file); for slow POST the proxies' backend is an nginx in front of it that reads each "
    "request body in full before forwarding (as an upload handler would), so that the "
    "proxies' upstream connections wait for the trickling bodies",
    "limits": "max_connections / maxconn / worker_connections 12,000 (10,000 idle connections "
    "and the good clients fit), 1,000 for the floods, and for flood-client 100 per client address "
    "(tlsgate max_connections_per_client; HAProxy 'stick-table type ip store conn_cur', "
    "'tcp-request connection reject if { sc0_conn_cur gt 100 }'; nginx limit_conn, which "
    "counts a connection only once its request is read); EMFILE: 10,000 (tlsgate's default) with "
    "RLIMIT_NOFILE 1,024 (prlimit, soft = hard)",
}


def _argv(limits: Limits, argv: Sequence[str]) -> list[str]:
    """``argv``, started under ``prlimit`` if the attack asks for a descriptor limit."""
    if limits.nofile is None:
        return list(argv)
    n = limits.nofile
    return ["prlimit", f"--nofile={n}:{n}", *argv]


def start_tlsgate(
    ps: ProcessSet,
    workdir: Path,
    port: int,
    backend_port: int,
    cert: Certificate,
    limits: Limits,
    cpus: str | None,
) -> Proc:
    run_dir = fresh_dir(workdir, "tlsgate")
    error_log = run_dir / "error.log"
    config = run_dir / "tlsgate.toml"
    config.write_text(
        f"""
[node]
name = "attack"
data_dir = {json.dumps(str(run_dir / "data"))}
workers = 1

[log]
access = ""
error = {json.dumps(str(error_log))}
level = "warning"

[[certificates]]
name = "bench"
domains = ["localhost"]
issuer = "files"
cert_file = {json.dumps(str(cert.cert_file))}
key_file = {json.dumps(str(cert.key_file))}

[[listeners]]
name = "https"
bind = ["127.0.0.1:{port}"]
protocol = "https"
backend = "app"
default_certificate = "bench"
tls_handshake_timeout = "10s"
header_timeout = "10s"
idle_timeout = "60s"
body_timeout = "60s"
body_min_rate = "500B"
max_connections = {limits.max_connections}
max_connections_per_client = {limits.per_client}

[[backends]]
name = "app"
servers = ["127.0.0.1:{backend_port}"]
"""
    )
    exe = Path(sys.executable).parent / "tlsgate"
    if not exe.exists():
        raise Unavailable(f"{exe} not found: run with the project's .venv (make venv)")
    argv = _argv(limits, [str(exe), "serve", "-c", str(config)])
    return ps.start("tlsgate", argv, cpus=cpus, extra_logs=[error_log])


def start_haproxy(
    ps: ProcessSet,
    workdir: Path,
    port: int,
    backend_port: int,
    cert: Certificate,
    limits: Limits,
    cpus: str | None,
) -> Proc:
    n = limits.max_connections
    # HAProxy refuses to start unless RLIMIT_NOFILE covers two descriptors per maxconn
    # (client and server side). Idle and attack connections have no server side, and
    # the EMFILE attack wants the limit to bite: let it start and warn instead.
    nofile = limits.nofile if limits.nofile is not None else fd_limit()
    strict = "" if 2 * n + 100 <= nofile else "    no strict-limits\n"
    per_client = (
        "    stick-table type ip size 100k store conn_cur\n"
        "    tcp-request connection track-sc0 src\n"
        f"    tcp-request connection reject if {{ sc0_conn_cur gt {limits.per_client} }}\n"
        if limits.per_client
        else ""
    )
    cfg = fresh_dir(workdir, "haproxy") / "haproxy.cfg"
    cfg.write_text(
        f"""
global
{strict}    nbthread 1
    maxconn {n}
    ssl-default-bind-options ssl-min-ver TLSv1.2

defaults
    mode http
    maxconn {n}
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    timeout http-keep-alive 60s
    option http-keep-alive
    option forwardfor

frontend https
    bind 127.0.0.1:{port} ssl crt {cert.combined} alpn http/1.1
{per_client}    http-request set-header X-Forwarded-Proto https
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request set-header X-Forwarded-Port %[dst_port]
    http-request set-header Forwarded "for=%[src];host=\\"%[req.hdr(host)]\\";proto=https"
    default_backend app

backend app
    http-reuse safe
    server s1 127.0.0.1:{backend_port}
"""
    )
    return ps.start("haproxy", _argv(limits, ["haproxy", "-f", str(cfg), "-db"]), cpus=cpus)


def start_nginx(
    ps: ProcessSet,
    workdir: Path,
    port: int,
    backend_port: int,
    cert: Certificate,
    limits: Limits,
    cpus: str | None,
) -> Proc:
    root = fresh_dir(workdir, "nginx")
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must read the temp dir
    # nginx counts a client's connections once its request is read (after the handshake)
    zone = "    limit_conn_zone $binary_remote_addr zone=perip:10m;\n" if limits.per_client else ""
    limit_conn = f"        limit_conn perip {limits.per_client};\n" if limits.per_client else ""
    conf = f"""{user}worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections {limits.max_connections + 64}; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    client_header_timeout 10s;
    client_body_timeout 60s;
    client_max_body_size 0;
    send_timeout 60s;
{zone}    upstream app {{
        server 127.0.0.1:{backend_port};
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port} ssl backlog=4096;
        ssl_certificate {cert.cert_file};
        ssl_certificate_key {cert.key_file};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_tickets on;
        ssl_session_cache off;
{limit_conn}        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto https;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Forwarded-Port $server_port;
            proxy_set_header Forwarded "for=$remote_addr;host=\\"$host\\";proto=https";
        }}
    }}
}}
"""
    path = root / "nginx.conf"
    path.write_text(conf)
    argv = ["nginx", "-p", str(root), "-e", str(root / "error.log"), "-c", str(path)]
    argv += ["-g", "daemon off;"]
    return ps.start("nginx", _argv(limits, argv), cpus=cpus, extra_logs=[root / "error.log"])


def start_body_backend(
    ps: ProcessSet, workdir: Path, port: int, upstream_port: int, cpus: str | None
) -> Proc:
    """An nginx in front of the bench backend that reads each request body in full first.

    The bench backend answers ``/`` at once, whatever the body (nginx's ``return``
    discards it), so a slow POST would end at the first byte. An upload handler reads
    the body before it answers: this nginx does (``proxy_request_buffering on``, the
    default), so during the slow POST attack each proxy's connection to it stays open,
    waiting for the body, as it would in front of a real application.
    """
    root = fresh_dir(workdir, "body-backend")
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = f"""{user}worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
worker_rlimit_nofile {fd_limit()};
events {{ worker_connections {max(1024, (fd_limit() - 100) // 2)}; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_max_body_size 0;
    client_body_timeout 600s;
    client_header_timeout 600s;
    upstream app {{
        server 127.0.0.1:{upstream_port};
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""
    path = root / "nginx.conf"
    path.write_text(conf)
    argv = ["nginx", "-p", str(root), "-e", str(root / "error.log"), "-c", str(path)]
    argv += ["-g", "daemon off;"]
    return ps.start("body-backend", argv, cpus=cpus, extra_logs=[root / "error.log"])


STARTERS = {"tlsgate": start_tlsgate, "haproxy": start_haproxy, "nginx": start_nginx}
TOOLS = {"tlsgate": "tlsgate", "haproxy": "haproxy", "nginx": "nginx"}
# The table's column for each proxy (bench/rows.py's COLUMNS).
COLUMN = {"tlsgate": "tlsgate", "haproxy": "HAProxy", "nginx": "nginx"}
BODY = servers.BODY
