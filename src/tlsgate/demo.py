"""``tlsgate demo``: a self-contained node on this machine, and what to try with it.

How this works: ``run_demo`` prepares a data directory (a throwaway local CA,
kept and reused across runs; a fresh ECDSA and RSA certificate pair for
``localhost``, ``demo.localhost`` and ``127.0.0.1``; a ``tlsgate.toml``), starts
three demo app servers (``python -m tlsgate.demo_app``) and then the node
itself (``python -m tlsgate serve -c DIR/tlsgate.toml``), each as a child
process in its own process group. Once the HTTPS port accepts connections it
prints the commands to try and waits. Ctrl-C (SIGINT) or SIGTERM reaches only
this process, which then stops the children in order: the node first (it
drains in-flight requests), then the app servers. Everything binds to
127.0.0.1 only.
"""

from __future__ import annotations

import shlex
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from tlsgate import keyfiles
from tlsgate.ca.local import LocalCA
from tlsgate.errors import CertificateError

__all__ = ["run_demo"]

HOST = "127.0.0.1"
NAMES = ("localhost", "demo.localhost", "127.0.0.1")
SHUTDOWN_TIMEOUT = 5.0  # the node's drain deadline, seconds
START_TIMEOUT = 30.0

EXIT_OK = 0
EXIT_FAILURE = 1


def run_demo(
    data_dir: Path,
    *,
    https_port: int = 8443,
    http_port: int = 8080,
    app_ports: tuple[int, int, int] = (9001, 9002, 9003),
) -> int:
    """Run the demo until SIGINT/SIGTERM, in the foreground.

    Args:
        data_dir: where the CA (``ca.pem``/``ca.key``, reused if present), the
            certificates, ``tlsgate.toml`` and ``access.log`` go; created if missing.
        https_port: the node's HTTPS listener on 127.0.0.1.
        http_port: the node's HTTP listener (redirects to HTTPS) on 127.0.0.1.
        app_ports: the three demo app servers' ports on 127.0.0.1.

    Returns:
        0 after a requested stop; 1 if something could not start or the node
        stopped on its own (its exit status when it reported one).
    """
    data_dir = data_dir.resolve()
    try:
        ca_file = _prepare_files(data_dir, https_port, http_port, app_ports)
    except (CertificateError, OSError) as exc:
        print(f"tlsgate demo: cannot prepare {data_dir}: {exc}", file=sys.stderr)
        return EXIT_FAILURE

    with _stop_requested() as stop:
        apps: list[subprocess.Popen[bytes]] = []
        node: subprocess.Popen[bytes] | None = None
        try:
            for i, port in enumerate(app_ports, start=1):
                apps.append(
                    _spawn(
                        [
                            sys.executable,
                            "-m",
                            "tlsgate.demo_app",
                            "--host",
                            HOST,
                            "--port",
                            str(port),
                            "--name",
                            f"app-{i}",
                        ]
                    )
                )
            for i, (proc, port) in enumerate(zip(apps, app_ports, strict=True), start=1):
                if not _wait_listening(port, proc, stop):
                    return _failed(f"demo app server app-{i} did not start on {HOST}:{port}", stop)
            node = _spawn(
                [sys.executable, "-m", "tlsgate", "serve", "-c", str(data_dir / "tlsgate.toml")]
            )
            if not _wait_listening(https_port, node, stop, tls_ca=ca_file):
                return _failed("the tlsgate node did not start (see its messages above)", stop)
            _print_instructions(data_dir, ca_file, https_port, http_port, app_ports)
            while not stop and node.poll() is None:
                time.sleep(0.2)
            if not stop:
                code = node.returncode
                print(
                    f"tlsgate demo: the node stopped on its own (exit status {code})",
                    file=sys.stderr,
                )
                return code if code else EXIT_FAILURE
            print("\ntlsgate demo: stopping", flush=True)
            return EXIT_OK if _stop(node, SHUTDOWN_TIMEOUT + 5) == 0 else EXIT_FAILURE
        finally:
            if node is not None:
                _stop(node, SHUTDOWN_TIMEOUT + 5)
            for app in apps:
                _stop(app, 5)


# --------------------------------------------------------------------- files


def _prepare_files(
    data_dir: Path, https_port: int, http_port: int, app_ports: tuple[int, int, int]
) -> Path:
    """Write CA, certificates and config into ``data_dir``; return the CA file."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_file, ca_key = data_dir / "ca.pem", data_dir / "ca.key"
    if ca_file.exists() and ca_key.exists():
        # Reuse: a person who already trusts this CA keeps trusting the demo.
        ca = LocalCA.load(ca_file.read_bytes(), ca_key.read_bytes())
    else:
        ca = LocalCA.create("tlsgate demo CA (throwaway)")
        ca.write(data_dir)
    for key_type, stem in (("ecdsa-p256", "demo-ecdsa"), ("rsa-2048", "demo-rsa")):
        issued = ca.issue(list(NAMES), key_type=key_type)  # type: ignore[arg-type]
        keyfiles.write_private(data_dir / f"{stem}.key", issued.key_pem)
        keyfiles.write_public(data_dir / f"{stem}.pem", issued.chain_pem)
    (data_dir / "tlsgate.toml").write_text(_config(data_dir, https_port, http_port, app_ports))
    return ca_file


def _q(value: object) -> str:
    """A TOML basic string (the characters a path may hold, escaped)."""
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _config(data_dir: Path, https_port: int, http_port: int, app_ports: tuple[int, ...]) -> str:
    servers = ", ".join(_q(f"{HOST}:{p}") for p in app_ports)
    domains = ", ".join(_q(n) for n in NAMES)
    certificates = "".join(
        f"""
[[certificates]]
name = "{stem}"
domains = [{domains}]
issuer = "files"
cert_file = {_q(data_dir / f"{stem}.pem")}
key_file = {_q(data_dir / f"{stem}.key")}
"""
        for stem in ("demo-ecdsa", "demo-rsa")
    )
    return f"""# Written by `tlsgate demo` on every start; edit a copy, not this file.

[node]
name = "demo"
data_dir = {_q(data_dir / "node")}
workers = 1                       # one worker: round robin is easy to watch
shutdown_timeout = "{int(SHUTDOWN_TIMEOUT)}s"

[log]
access = {_q(data_dir / "access.log")}
error = "-"
{certificates}
[[listeners]]
name = "https"
bind = ["{HOST}:{https_port}"]
protocol = "https"
backend = "apps"
default_certificate = "demo-ecdsa"
hsts = "max-age=63072000"

[[listeners]]
name = "http"
bind = ["{HOST}:{http_port}"]
protocol = "http"
redirect_https = true
redirect_port = {https_port}

[[backends]]
name = "apps"
balance = "round_robin"
servers = [{servers}]
health = {{ path = "/healthz", interval = "2s", timeout = "1s", rise = 1, fall = 2 }}
"""


# ------------------------------------------------------------------ processes


def _spawn(cmd: list[str]) -> subprocess.Popen[bytes]:
    # Its own process group: Ctrl-C in the terminal reaches only this process,
    # which stops the children in order (node first, so requests drain).
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, process_group=0)


def _wait_listening(
    port: int, proc: subprocess.Popen[bytes], stop: list[bool], *, tls_ca: Path | None = None
) -> bool:
    """Wait until 127.0.0.1:port serves; False if ``proc`` exits, a stop is requested
    or START_TIMEOUT passes.

    With ``tls_ca`` a TLS handshake (verified against that CA) must complete: the
    node's supervisor binds its ports before its workers accept on them.
    """
    context = None
    if tls_ca is not None:
        context = ssl.create_default_context(cafile=str(tls_ca))
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and not stop and proc.poll() is None:
        try:
            with socket.create_connection((HOST, port), timeout=2) as sock:
                if context is not None:
                    with context.wrap_socket(sock, server_hostname=NAMES[0]):
                        pass
                return True
        except (OSError, ssl.SSLError):
            time.sleep(0.1)
    return False


def _stop(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM, wait up to ``timeout``, then SIGKILL; the exit status."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def _failed(message: str, stop: list[bool]) -> int:
    if stop:  # interrupted while starting: a requested stop, not a failure
        return EXIT_OK
    print(f"tlsgate demo: {message}", file=sys.stderr)
    return EXIT_FAILURE


@contextmanager
def _stop_requested() -> Iterator[list[bool]]:
    """A list that becomes truthy on SIGINT/SIGTERM; old handlers restored on exit."""
    stop: list[bool] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.append(True)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# ---------------------------------------------------------------------- output


def _print_instructions(
    data_dir: Path, ca_file: Path, https_port: int, http_port: int, app_ports: tuple[int, ...]
) -> None:
    ca = shlex.quote(str(ca_file))
    url = f"https://localhost:{https_port}/"
    apps = ", ".join(f"app-{i} {HOST}:{p}" for i, p in enumerate(app_ports, start=1))
    print(
        f"""
tlsgate demo is running.

  https          {url}
  http           http://localhost:{http_port}/  (redirects to https)
  app servers    {apps}
  CA certificate {ca_file}
  configuration  {data_dir / "tlsgate.toml"}
  access log     {data_dir / "access.log"}

Try these:

  # run it a few times: app-1, app-2 and app-3 take turns (round robin)
  curl --cacert {ca} {url}

  # plain http is redirected (308) to https, path and query kept
  curl -i 'http://localhost:{http_port}/x?y=1'

  # HSTS, and the RSA certificate for a client that cannot do ECDSA
  curl --cacert {ca} -sI {url}
  curl --cacert {ca} --tls-max 1.2 --ciphers ECDHE-RSA-AES128-GCM-SHA256 -v {url}

  # one JSON line per request
  tail -f {shlex.quote(str(data_dir / "access.log"))}

Trust {ca_file} only for this demo: its key is in the same directory.
Press Ctrl-C to stop.
""",
        flush=True,
    )
