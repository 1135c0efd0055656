"""Configurations of every server the benchmark starts: the backend and the three proxies.

How it works: each ``start_*`` function writes one configuration file into the
run's temporary directory and starts the server through a
:class:`common.ProcessSet` (own process group, pinned with ``taskset -c``).
The three proxies are configured to do the same work:

* **HTTPS** (rows 1-5, 8, 9): TLS 1.2-1.3 termination with the same
  certificate and key, ALPN ``http/1.1``, session tickets on (each server's
  default ticket keys), keep-alive to the client, HTTP/1.1 keep-alive
  connections to the backend reused across clients, ``X-Forwarded-For``,
  ``X-Forwarded-Proto``/``-Host``/``-Port`` and ``Forwarded`` added to every
  request (tlsgate always adds them), default buffer sizes, access log off
  unless a row turns it on (then one JSON line per request with the same
  fields, written to a file as each request ends).
* **TLS passthrough** (row 6): read the ClientHello, route by its SNI name,
  forward the bytes to the backend without decrypting.
* **TCP** (row 7): forward bytes; HAProxy with ``option splice-auto``, tlsgate
  splices on its own, nginx ``stream`` copies through its buffers.

:data:`KNOBS` says the same in words; the report prints it and stores it in
the JSON. The backend is one nginx (``worker_processes 1``, no access log)
that answers ``/`` with a 100-byte body, serves ``/big`` (the bulk file) with
sendfile, and -- on a second port, for row 6 -- reads a ClientHello and
answers a fixed 100-byte HTTP response, then closes.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from common import Certificate, Proc, ProcessSet, Unavailable, fd_limit, fresh_dir

BODY = b"x" * 99 + b"\n"  # every 200 response of the backend: 100 bytes
NGINX_STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
LONG_TIMEOUT_S = 600
# Rows 6-7 need few concurrent connections; HAProxy's splice pipes need descriptors too.
L4_MAXCONN = 4096  # row 8: idle connections must outlive the measurement

# The fixed response of the backend's stream port (row 6): valid HTTP, so that wrk counts it.
CANNED_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n"
    b"Connection: close\r\n\r\n" + BODY
)

KNOBS: dict[str, dict[str, str]] = {
    "backend": {
        "server": "nginx, worker_processes 1, access_log off, keepalive_requests 1000000, "
        "keepalive_timeout 75s, sendfile on; '/' returns 200 with a 100-byte body",
        "row 6 port": "nginx stream: ssl_preread on (reads the ClientHello), then returns a "
        "fixed 100-byte HTTP/1.1 response with Connection: close",
    },
    "tlsgate": {
        "https": "[node] workers = 1 (rows 5b, 9: 2); https listener, default_certificate; "
        "backend without health checks (pool: max_idle_per_server 256, the default); "
        "[log] access = '' "
        "(row 2: a file), error log to a file, level warning",
        "l4": "row 6: tls-passthrough listener with a route on SNI 'localhost'; "
        "row 7: tcp listener (splices)",
        "row 3": "[acme] directory = https://127.0.0.1:<closed port>/directory, challenges "
        "http-01 + tls-alpn-01 (defaults), no issuer = 'acme' certificate",
        "row 8": "max_connections 30000 (or half the fd limit); header/idle/handshake "
        "timeouts 600s",
    },
    "haproxy": {
        "https": "nbthread 1 (rows 5b, 9: 2), mode http, bind ssl crt alpn http/1.1, "
        "ssl-min-ver TLSv1.2, tickets on (default), tune.bufsize 16384 (default), "
        "option http-keep-alive, http-reuse safe, option forwardfor, X-Forwarded-Proto/"
        "-Host/-Port and Forwarded set; no log (row 2: log stdout, a JSON log-format with "
        "tlsgate's fields, stdout redirected to a file)",
        "l4": "mode tcp, option splice-auto; row 6: tcp-request inspect-delay 5s, "
        "req_ssl_hello_type 1, use_backend on req_ssl_sni",
        "row 8": "maxconn 30000 (or half the fd limit), timeout client / http-request / "
        "http-keep-alive 600s",
    },
    "nginx": {
        "https": "worker_processes 1 (rows 5b, 9: 2), listen ssl, ssl_protocols TLSv1.2 "
        "TLSv1.3, ssl_session_tickets on, ssl_session_cache off, http2 off, proxy_pass to "
        "an upstream with keepalive 32, proxy_http_version 1.1, Connection '', the same "
        "X-Forwarded-*/Forwarded headers, proxy_buffering on (default), access_log off "
        "(row 2: a JSON log_format with tlsgate's fields, to a file)",
        "l4": "stream: row 6: ssl_preread on + map $ssl_preread_server_name; row 7: "
        "proxy_pass (default proxy_buffer_size 16k)",
        "row 8": "worker_connections 30000 (or half the fd limit), client_header_timeout / "
        "keepalive_timeout 600s",
    },
}


def max_connections() -> int:
    """The connection limit every proxy gets: 30,000, or less if the fd limit is lower.

    HAProxy refuses to start unless RLIMIT_NOFILE covers two descriptors per
    ``maxconn`` (client and server side), so this is half the limit.
    """
    return min(30_000, (fd_limit() - 100) // 2)


@dataclass
class Backend:
    proc: Proc
    http_port: int
    stream_port: int | None  # None: libnginx-mod-stream is not installed


def stream_module_available() -> bool:
    return NGINX_STREAM_MODULE.exists()


def _nginx_main(root: Path, workers: int, *, stream: bool) -> str:
    head = f"load_module {NGINX_STREAM_MODULE};\n" if stream else ""
    if os.geteuid() == 0:
        # Workers would otherwise run as an unprivileged user that cannot read the temp dir.
        head += "user root;\n"
    return head + (
        f"worker_processes {workers};\n"
        f"worker_rlimit_nofile {fd_limit()};\n"
        f"pid {root}/nginx.pid;\n"
        f"error_log {root}/error.log warn;\n"
        f"events {{ worker_connections {max_connections()}; }}\n"
    )


def _http_common(root: Path, *, access_log: str = "off") -> str:
    # "access_log off" would cancel every other access_log of the same level.
    return f"""
    access_log {access_log};
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
"""


def _nginx_string(data: bytes) -> str:
    """``data`` as a double-quoted nginx configuration string."""
    text = data.decode("ascii")
    return (
        '"'
        + text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "\\r").replace("\n", "\\n")
        + '"'
    )


def _start_nginx(ps: ProcessSet, name: str, root: Path, conf: str, cpus: str | None) -> Proc:
    path = root / "nginx.conf"
    path.write_text(conf)
    argv = [
        "nginx",
        "-p",
        str(root),
        "-e",
        str(root / "error.log"),
        "-c",
        str(path),
        "-g",
        "daemon off;",
    ]
    return ps.start(name, argv, cpus=cpus, extra_logs=[root / "error.log"])


def start_backend(
    ps: ProcessSet, workdir: Path, port: int, stream_port: int, big: Path, cpus: str | None
) -> Backend:
    """The backend nginx: ``/`` (100 bytes), ``/big`` and, if possible, the row 6 port."""
    root = fresh_dir(workdir, "backend")
    stream = stream_module_available()
    conf = (
        _nginx_main(root, 1, stream=stream)
        + f"""
http {{
{_http_common(root)}
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    sendfile on;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /big {{
            default_type application/octet-stream;
            alias {big};
        }}
        location / {{
            default_type text/plain;
            return 200 {_nginx_string(BODY)};
        }}
    }}
}}
"""
    )
    if stream:
        conf += f"""
stream {{
    server {{
        listen 127.0.0.1:{stream_port} backlog=4096;
        ssl_preread on;
        return {_nginx_string(CANNED_RESPONSE)};
    }}
}}
"""
    proc = _start_nginx(ps, "backend", root, conf, cpus)
    return Backend(proc, port, stream_port if stream else None)


# --------------------------------------------------------------------------- HTTPS


@dataclass(frozen=True)
class HttpsOptions:
    """What differs between the HTTPS rows."""

    workers: int = 1
    access_log: Path | None = None
    acme_directory: str | None = None  # tlsgate only (row 3)
    idle: bool = False  # row 8: long timeouts, many connections


# The access log fields of tlsgate (src/tlsgate/worker.py), in HAProxy and nginx syntax.
HAPROXY_LOG_FORMAT = (
    '{"time":"%tr","client_ip":"%ci","peer_ip":"%ci","listener":"%f",'
    '"sni":"%[ssl_fc_sni]","tls_version":"%sslv","method":"%HM",'
    '"host":"%[capture.req.hdr(0)]","path":"%HP","status":%ST,"bytes_in":%U,'
    '"bytes_out":%B,"backend":"%b","server":"%s","upstream_duration_ms":%Tr,'
    '"duration_ms":%Ta,"worker":%pid}'
)
NGINX_LOG_FORMAT = (
    '{"time":"$time_iso8601","client_ip":"$remote_addr","peer_ip":"$remote_addr",'
    '"listener":"https","sni":"$ssl_server_name","tls_version":"$ssl_protocol",'
    '"method":"$request_method","host":"$host","path":"$uri","status":$status,'
    '"bytes_in":$request_length,"bytes_out":$bytes_sent,"backend":"app",'
    '"server":"$upstream_addr","upstream_duration_ms":"$upstream_response_time",'
    '"duration_ms":$request_time,"worker":$pid}'
)


def start_tlsgate(
    ps: ProcessSet,
    workdir: Path,
    name: str,
    body: str,
    workers: int,
    access_log: Path | None,
    cpus: str | None,
) -> Proc:
    """``tlsgate serve`` with ``body`` (listeners, backends...) under a bench ``[node]``."""
    run_dir = fresh_dir(workdir, name)
    error_log = run_dir / "error.log"
    config = run_dir / "tlsgate.toml"
    config.write_text(
        f"""
[node]
name = "bench"
data_dir = {json.dumps(str(run_dir / "data"))}
workers = {workers}

[log]
access = {json.dumps(str(access_log) if access_log else "")}
error = {json.dumps(str(error_log))}
level = "warning"
"""
        + body
    )
    # The tlsgate of the interpreter running the benchmark (the project's .venv).
    exe = Path(sys.executable).parent / "tlsgate"
    if not exe.exists():
        raise Unavailable(f"{exe} not found: run with the project's .venv (make venv)")
    return ps.start(name, [str(exe), "serve", "-c", str(config)], cpus=cpus, extra_logs=[error_log])


def start_tlsgate_https(
    ps: ProcessSet,
    workdir: Path,
    port: int,
    backend_port: int,
    cert: Certificate,
    opts: HttpsOptions,
    cpus: str | None,
) -> Proc:
    acme = ""
    if opts.acme_directory is not None:
        acme = f"""
[acme]
directory = {json.dumps(opts.acme_directory)}
"""
    idle = ""
    if opts.idle:
        t = f'"{LONG_TIMEOUT_S}s"'
        idle = (
            f"max_connections = {max_connections()}\nheader_timeout = {t}\n"
            f"idle_timeout = {t}\ntls_handshake_timeout = {t}\n"
        )
    body = f"""{acme}
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
default_certificate = "bench"   # clients connect to 127.0.0.1: no SNI name matches
{idle}
[[backends]]
name = "app"
servers = ["127.0.0.1:{backend_port}"]
"""
    return start_tlsgate(ps, workdir, "tlsgate", body, opts.workers, opts.access_log, cpus)


def _haproxy_global(threads: int, *, log: bool, maxconn: int | None = None) -> str:
    text = f"""
global
    nbthread {threads}
    maxconn {maxconn or max_connections()}
    ssl-default-bind-options ssl-min-ver TLSv1.2
"""
    if log:
        text += "    log stdout format raw local0 info\n"
    return text


def start_haproxy_https(
    ps: ProcessSet,
    workdir: Path,
    port: int,
    backend_port: int,
    cert: Certificate,
    opts: HttpsOptions,
    cpus: str | None,
) -> Proc:
    logging = opts.access_log is not None
    timeout = f"{LONG_TIMEOUT_S}s" if opts.idle else "60s"
    log_lines = ""
    if logging:
        escaped = HAPROXY_LOG_FORMAT.replace('"', '\\"')
        log_lines = f'    log global\n    log-format "{escaped}"\n'
    cfg = fresh_dir(workdir, "haproxy") / "haproxy.cfg"
    cfg.write_text(
        _haproxy_global(opts.workers, log=logging)
        + f"""
defaults
    mode http
    maxconn {max_connections()}
    timeout connect 5s
    timeout client {timeout}
    timeout server 60s
    timeout http-request {"600s" if opts.idle else "10s"}
    timeout http-keep-alive {timeout}
    option http-keep-alive
    option forwardfor
{log_lines}
frontend https
    bind 127.0.0.1:{port} ssl crt {cert.combined} alpn http/1.1
    http-request capture req.hdr(host) len 64
    http-request set-header X-Forwarded-Proto https
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request set-header X-Forwarded-Port %[dst_port]
    http-request set-header Forwarded "for=%[src];host=\\"%[req.hdr(host)]\\";proto=https"
    default_backend app

backend app
    http-reuse safe
    server s1 127.0.0.1:{backend_port}
"""
    )
    return ps.start(
        "haproxy", ["haproxy", "-f", str(cfg), "-db"], cpus=cpus, stdout=opts.access_log
    )


def start_nginx_https(
    ps: ProcessSet,
    workdir: Path,
    port: int,
    backend_port: int,
    cert: Certificate,
    opts: HttpsOptions,
    cpus: str | None,
) -> Proc:
    root = fresh_dir(workdir, "nginx")
    log_format = ""
    access_log = "off"
    if opts.access_log is not None:
        log_format = f"    log_format bench escape=json '{NGINX_LOG_FORMAT}';\n"
        access_log = f"{opts.access_log} bench"
    timeout = f"{LONG_TIMEOUT_S}s" if opts.idle else "75s"
    conf = (
        _nginx_main(root, opts.workers, stream=False)
        + f"""
http {{
{log_format}{_http_common(root, access_log=access_log)}
    keepalive_requests 1000000;
    keepalive_timeout {timeout};
    client_header_timeout {timeout if opts.idle else "10s"};
    upstream app {{
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
        location / {{
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
    )
    return _start_nginx(ps, "nginx", root, conf, cpus)


# --------------------------------------------------------------------------- L4

L4Mode = Literal["tcp", "tls-passthrough"]


def start_tlsgate_l4(
    ps: ProcessSet, workdir: Path, port: int, backend_port: int, mode: L4Mode, cpus: str | None
) -> Proc:
    route = ""
    if mode == "tls-passthrough":
        route = '\n[[routes]]\nlistener = "l4"\nhosts = ["localhost"]\nbackend = "app"\n'
    body = f"""
[[listeners]]
name = "l4"
bind = ["127.0.0.1:{port}"]
protocol = "{mode}"
backend = "app"
{route}
[[backends]]
name = "app"
servers = ["127.0.0.1:{backend_port}"]
"""
    return start_tlsgate(ps, workdir, "tlsgate", body, 1, None, cpus)


def start_haproxy_l4(
    ps: ProcessSet, workdir: Path, port: int, backend_port: int, mode: L4Mode, cpus: str | None
) -> Proc:
    sni = ""
    if mode == "tls-passthrough":
        sni = """    tcp-request inspect-delay 5s
    tcp-request content accept if { req_ssl_hello_type 1 }
    use_backend app if { req_ssl_sni -i localhost }
"""
    cfg = fresh_dir(workdir, "haproxy") / "haproxy.cfg"
    cfg.write_text(
        _haproxy_global(1, log=False, maxconn=L4_MAXCONN)
        + f"""
defaults
    mode tcp
    maxconn {L4_MAXCONN}
    option splice-auto
    timeout connect 5s
    timeout client 60s
    timeout server 60s

frontend l4
    bind 127.0.0.1:{port}
{sni}    default_backend app

backend app
    server s1 127.0.0.1:{backend_port}
"""
    )
    return ps.start("haproxy", ["haproxy", "-f", str(cfg), "-db"], cpus=cpus)


def start_nginx_l4(
    ps: ProcessSet, workdir: Path, port: int, backend_port: int, mode: L4Mode, cpus: str | None
) -> Proc:
    if not stream_module_available():
        raise Unavailable(f"{NGINX_STREAM_MODULE} missing: install libnginx-mod-stream")
    root = fresh_dir(workdir, "nginx")
    if mode == "tls-passthrough":
        server = """
    map $ssl_preread_server_name $upstream {
        localhost app;
        default app;
    }
    server {
        listen 127.0.0.1:PORT backlog=4096;
        ssl_preread on;
        proxy_pass $upstream;
    }"""
    else:
        server = """
    server {
        listen 127.0.0.1:PORT backlog=4096;
        proxy_pass app;
    }"""
    conf = (
        _nginx_main(root, 1, stream=True)
        + f"""
stream {{
    upstream app {{
        server 127.0.0.1:{backend_port};
    }}
{server.replace("PORT", str(port))}
}}
"""
    )
    return _start_nginx(ps, "nginx", root, conf, cpus)
