"""Real third-party servers for the peers tests: nginx and HAProxy from Debian packages.

How this works: each peer is one process started in its own session with a
config file written into the test's temp directory, every path it would take
from its compiled-in defaults (pid file, logs, temp dirs) pointing there too, and
listening only on free 127.0.0.1 ports. ``start`` waits until each of those ports
accepts a connection (or the process dies, in which case its logs are in the
exception). ``Peer.stop`` ends the whole process group (master and workers):
SIGTERM, then SIGKILL after a grace period. The fixtures in ``conftest.py`` call
it at teardown whatever happened.

``nginx_conf`` builds a whole nginx.conf from an ``http {}`` and/or a
``stream {}`` body; the stream module is a dynamic module in Debian (package
``libnginx-mod-stream``) and is loaded by path when a stream body is given.
HAProxy configs are written by the tests themselves (they are short); ``haproxy_stat``
reads server states from the runtime API socket a config may open.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

NGINX_STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")


class PeerFailed(AssertionError):
    """A peer did not start; carries its logs."""


@dataclass
class Peer:
    """One started nginx or HAProxy process (and the group it leads)."""

    name: str
    proc: subprocess.Popen[bytes]
    workdir: Path
    logs: list[Path] = field(default_factory=list)

    def log_text(self) -> str:
        parts = []
        for path in self.logs:
            with contextlib.suppress(OSError):
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the process group, SIGKILL whatever is left after ``grace`` s."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(grace)
        # workers may outlive a master that exited first
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def require(tool: str) -> str:
    """The path of ``tool``; raises PeerFailed naming the package script when missing."""
    path = shutil.which(tool)
    if path is None:
        raise PeerFailed(f"{tool} is not installed: run `make system-deps`")
    return path


def wait_ports(peer: Peer, ports: list[int], timeout: float = 15.0) -> None:
    """Wait until every port in ``ports`` accepts on 127.0.0.1.

    Raises:
        PeerFailed: the process exited, or a port stayed closed for ``timeout`` s.
    """
    deadline = time.monotonic() + timeout
    for port in ports:
        while True:
            if peer.proc.poll() is not None:
                raise PeerFailed(
                    f"{peer.name} exited with status {peer.proc.returncode}\n{peer.log_text()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise PeerFailed(
                        f"{peer.name} not listening on {port} after {timeout}s\n{peer.log_text()}"
                    ) from None
                time.sleep(0.05)


def _spawn(name: str, argv: list[str], workdir: Path, logs: list[Path]) -> Peer:
    out = workdir / f"{name}.out"
    with out.open("wb") as f:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # one process group: master and workers
            cwd=workdir,
        )
    return Peer(name, proc, workdir, [out, *logs])


def nginx_conf(root: Path, *, http: str = "", stream: str = "") -> str:
    """A complete nginx.conf whose every path lies under ``root``.

    ``http`` / ``stream`` are the bodies of the ``http {}`` / ``stream {}`` blocks.
    """
    head = ""
    if stream:
        if not NGINX_STREAM_MODULE.exists():
            raise PeerFailed(
                f"{NGINX_STREAM_MODULE} is missing: install libnginx-mod-stream (make system-deps)"
            )
        head = f"load_module {NGINX_STREAM_MODULE};\n"
    # as root, nginx would run its workers as an unprivileged user that cannot
    # read the 0700 temp directories holding the test's files
    if os.geteuid() == 0:
        head += "user root;\n"
    conf = (
        head
        + f"""
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{ worker_connections 1024; }}
"""
    )
    if http:
        conf += f"""
http {{
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    default_type text/plain;
{http}
}}
"""
    if stream:
        conf += f"\nstream {{\n{stream}\n}}\n"
    return conf


def start_nginx(
    workdir: Path, name: str, ports: list[int], *, http: str = "", stream: str = ""
) -> Peer:
    """Start ``nginx`` with ``nginx_conf(http=..., stream=...)`` in ``workdir/name``."""
    exe = require("nginx")
    root = workdir / name
    root.mkdir(parents=True)
    conf = root / "nginx.conf"
    conf.write_text(nginx_conf(root, http=http, stream=stream))
    argv = [exe, "-p", str(root), "-e", str(root / "error.log"), "-c", str(conf)]
    argv += ["-g", "daemon off;"]
    peer = _spawn(name, argv, root, [root / "error.log"])
    try:
        wait_ports(peer, ports)
    except BaseException:
        peer.stop()
        raise
    return peer


def start_haproxy(workdir: Path, name: str, config: str, ports: list[int]) -> Peer:
    """Start ``haproxy -db`` (foreground) with ``config`` in ``workdir/name``."""
    exe = require("haproxy")
    root = workdir / name
    root.mkdir(parents=True)
    cfg = root / "haproxy.cfg"
    cfg.write_text(config)
    check = subprocess.run([exe, "-c", "-f", str(cfg)], capture_output=True, check=False)
    if check.returncode != 0:
        raise PeerFailed(
            f"haproxy rejects its config:\n{check.stdout.decode()}{check.stderr.decode()}"
        )
    peer = _spawn(name, [exe, "-db", "-f", str(cfg)], root, [])
    try:
        wait_ports(peer, ports)
    except BaseException:
        peer.stop()
        raise
    return peer


def haproxy_stat(sock_path: Path) -> list[dict[str, str]]:
    """``show stat`` from HAProxy's runtime API socket, one dict per row."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(sock_path))
        s.sendall(b"show stat\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    text = data.decode().lstrip("# ")
    return list(csv.DictReader(io.StringIO(text)))


def server_row(sock_path: Path, backend: str, server: str) -> dict[str, str]:
    """HAProxy's ``show stat`` row for ``backend/server``: ``status`` ("UP", "DOWN"...),
    ``check_status`` ("L4OK", "L6OK", "L7OK", "L4CON"... for the last check) and so on.

    Raises:
        KeyError: no such row.
    """
    for row in haproxy_stat(sock_path):
        if row.get("pxname") == backend and row.get("svname") == server:
            return row
    raise KeyError(f"{backend}/{server} not in show stat")


def nginx_app_server(
    name: str,
    port: int,
    access_log: Path,
    *,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    proxy_protocol: bool = True,
) -> str:
    """An nginx ``server {}`` (with its ``log_format``) for an ``http {}`` body.

    It answers every request with ``"<name> <$proxy_protocol_addr> <$http_x_forwarded_for>"``
    and logs ``$proxy_protocol_addr $proxy_protocol_port $remote_addr $ssl_server_name``
    to ``access_log``: over TLS when ``cert_file``/``key_file`` are given, reading a
    PROXY header first when ``proxy_protocol``.
    """
    tls = cert_file is not None and key_file is not None
    listen = (
        f"127.0.0.1:{port}"
        + (" ssl" if tls else "")
        + (" proxy_protocol" if proxy_protocol else "")
    )
    certs = f"ssl_certificate {cert_file};\n        ssl_certificate_key {key_file};" if tls else ""
    fields = "$proxy_protocol_addr $proxy_protocol_port $remote_addr $ssl_server_name"
    return f"""
    log_format peers_{name} '{fields}';
    server {{
        listen {listen};
        {certs}
        access_log {access_log} peers_{name};
        location / {{
            return 200 "{name} $proxy_protocol_addr $http_x_forwarded_for\\n";
        }}
    }}
"""


def log_lines(path: Path) -> list[str]:
    """The lines of a log file written so far ([] before it exists)."""
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def wait_log_lines(path: Path, count: int, timeout: float = 10.0) -> list[str]:
    """The lines of ``path`` once it has at least ``count`` of them.

    Raises:
        TimeoutError: it did not within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while len(lines := log_lines(path)) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} has {len(lines)} lines, not {count}, after {timeout}s")
        time.sleep(0.05)
    return lines
