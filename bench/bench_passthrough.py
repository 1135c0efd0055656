"""TLS passthrough: tlsgate against HAProxy ``mode tcp`` and nginx ``stream``, same run.

How this works: one nginx (Debian package) on a free loopback port terminates TLS
itself (an ECDSA P-256 certificate for ``localhost`` from tlsgate's local CA),
answers ``200 hello`` with generous keep-alive, and serves a sparse file of
``--bulk-size`` bytes at ``/big``. Three L4 proxies forward to it without
decrypting, each in turn with the machine to itself (W workers/threads each):

* tlsgate: a ``tls-passthrough`` listener (the ClientHello is peeked and
  parsed, the route picked by SNI, the bytes spliced), access log off;
* HAProxy: ``mode tcp``, ``nbthread W``, no logging;
* nginx: ``stream { server { listen ...; proxy_pass ...; } }``, ``worker_processes W``
  (the stream module is ``libnginx-mod-stream`` in Debian).

Three measurements per proxy, and straight at the backend as the baseline:

* ``keepalive``: ``wrk`` over HTTPS keep-alive connections: requests/s through
  tunnels that are already established (the forwarding path);
* ``connections``: the same with ``Connection: close``: every request is a new
  TCP connection and TLS handshake through the proxy (accept, ClientHello,
  connect, teardown): connections/s;
* ``bulk``: ``curl`` downloads of ``/big``: bytes/s through one tunnel (the
  median of ``--bulk-runs`` downloads, after one unmeasured warm-up download
  straight from the backend).

The script prints a table with ``tlsgate/haproxy`` and ``tlsgate/nginx`` ratios,
and writes the figures as JSON to ``bench/results/passthrough-<timestamp>.json``.
Everything binds to 127.0.0.1 on free ports; every process started is ended
(SIGTERM, then SIGKILL) and the temporary directory removed, whatever happens.

Run it with the project's virtualenv: ``.venv/bin/python bench/bench_passthrough.py``
(``--help`` for the options). It is never part of the test run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from bench_https import (
    BenchError,
    Managed,
    WrkResult,
    bench_main,
    free_port,
    parse_wrk,
    run_tlsgate,
    servers,
    start,
    tool_version,
    wait_ready,
)

from tlsgate import __version__ as tlsgate_version
from tlsgate.ca.local import LocalCA

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
PROXIES = ("tlsgate", "haproxy", "nginx")
TARGETS = ("direct", *PROXIES)
NGINX_STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
_SIZE_UNITS = {"": 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}


def parse_size(text: str) -> int:
    """``"1GiB"``, ``"512MiB"`` or a byte count as bytes."""
    value = text.strip().lower()
    digits = value.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = value[len(digits) :]
    if not digits.isdigit() or unit not in _SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"{text!r}: expected e.g. 1GiB, 512MiB, 1048576")
    return int(digits) * _SIZE_UNITS[unit]


# --------------------------------------------------------------------------- servers


@dataclass(frozen=True)
class Certificate:
    cert_file: Path
    key_file: Path
    ca_file: Path


def write_certificate(workdir: Path) -> Certificate:
    """An ECDSA P-256 certificate for ``localhost`` from a fresh local CA, and that CA."""
    ca = LocalCA.create("tlsgate passthrough bench CA")
    issued = ca.issue(["localhost"], key_type="ecdsa-p256")
    ca_file, _ = ca.write(workdir / "ca")
    cert_file = workdir / "backend.crt"
    key_file = workdir / "backend.key"
    cert_file.write_bytes(issued.chain_pem)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(issued.key_pem)
    return Certificate(cert_file, key_file, ca_file)


def _nginx_head(root: Path, workers: int, *, stream: bool) -> str:
    head = f"load_module {NGINX_STREAM_MODULE};\n" if stream else ""
    if os.geteuid() == 0:
        # workers would run as an unprivileged user that cannot read the 0700 temp dir
        head += "user root;\n"
    return head + (
        f"worker_processes {workers};\n"
        f"pid {root}/nginx.pid;\n"
        f"error_log {root}/error.log warn;\n"
        "events { worker_connections 4096; }\n"
    )


def _start_nginx(name: str, root: Path, conf_text: str, workdir: Path) -> Managed:
    root.mkdir()
    conf = root / "nginx.conf"
    conf.write_text(conf_text)
    server = start(
        name,
        ["nginx", "-p", str(root), "-e", str(root / "error.log"), "-c", str(conf),
         "-g", "daemon off;"],
        workdir,
    )  # fmt: skip
    server.extra_logs.append(root / "error.log")
    return server


def start_backend(workdir: Path, port: int, cert: Certificate, big: Path) -> Managed:
    """nginx terminating TLS: ``/`` answers ``hello``, ``/big`` is the bulk file."""
    root = workdir / "backend"
    conf = (
        _nginx_head(root, 1, stream=False)
        + f"""
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    server {{
        listen 127.0.0.1:{port} ssl backlog=4096;
        ssl_certificate {cert.cert_file};
        ssl_certificate_key {cert.key_file};
        ssl_session_cache off;
        ssl_session_tickets off;
        location = /big {{
            default_type application/octet-stream;
            alias {big};
        }}
        location / {{
            default_type text/plain;
            return 200 "hello\\n";
        }}
    }}
}}
"""
    )
    return _start_nginx("backend", root, conf, workdir)


def start_nginx_stream(workdir: Path, port: int, backend_port: int, workers: int) -> Managed:
    root = workdir / "nginx-stream"
    conf = (
        _nginx_head(root, workers, stream=True)
        + f"""
stream {{
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        proxy_pass 127.0.0.1:{backend_port};
    }}
}}
"""
    )
    return _start_nginx("nginx", root, conf, workdir)


def start_haproxy(workdir: Path, port: int, backend_port: int, threads: int) -> Managed:
    cfg = workdir / "haproxy.cfg"
    cfg.write_text(
        f"""
global
    nbthread {threads}
    maxconn 8192

defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s

frontend passthrough
    bind 127.0.0.1:{port}
    default_backend tls

backend tls
    server s1 127.0.0.1:{backend_port}
"""
    )
    return start("haproxy", ["haproxy", "-f", str(cfg), "-db"], workdir)


def start_tlsgate(workdir: Path, port: int, backend_port: int, workers: int) -> Managed:
    return run_tlsgate(
        workdir,
        workers,
        f"""
[[listeners]]
name = "passthrough"
bind = ["127.0.0.1:{port}"]
protocol = "tls-passthrough"
backend = "tls"

[[routes]]
listener = "passthrough"
hosts = ["localhost"]
backend = "tls"

[[backends]]
name = "tls"
servers = ["127.0.0.1:{backend_port}"]
""",
    )


# --------------------------------------------------------------------------- measuring


@dataclass
class TargetResult:
    """Everything measured through one target."""

    name: str
    keepalive: WrkResult
    connections: WrkResult
    bulk_bytes_per_sec: float

    @property
    def errors(self) -> int:
        return self.keepalive.errors + self.connections.errors


def wrk(name: str, url: str, args: argparse.Namespace, *extra: str) -> WrkResult:
    base = ["wrk", f"-t{args.threads}", f"-c{args.connections}", *extra]
    if args.warmup > 0:
        subprocess.run(
            [*base, f"-d{args.warmup}s", url], capture_output=True, check=False, timeout=300
        )
    out = subprocess.run(
        [*base, f"-d{args.duration}", "--latency", url],
        capture_output=True,
        text=True,
        check=False,
        timeout=3600,
    )
    if out.returncode != 0:
        raise BenchError(f"wrk against {name} failed ({out.returncode}): {out.stderr}")
    return parse_wrk(name, url, out.stdout)


def bulk(name: str, url: str, ca_file: Path, size: int) -> float:
    """Download ``url`` once; bytes/s as curl measured it.

    Raises:
        BenchError: curl failed or got a different number of bytes.
    """
    out = subprocess.run(
        ["curl", "-sS", "--http1.1", "--cacert", str(ca_file), "-o", "/dev/null",
         "-w", "%{size_download} %{speed_download}", url],
        capture_output=True,
        text=True,
        check=False,
        timeout=3600,
    )  # fmt: skip
    if out.returncode != 0:
        raise BenchError(f"bulk download through {name} failed: {out.stderr}")
    got, speed = out.stdout.split()
    if int(float(got)) != size:
        raise BenchError(f"bulk download through {name}: {got} bytes, expected {size}")
    return float(speed)


def measure(name: str, port: int, args: argparse.Namespace, ca_file: Path) -> TargetResult:
    url = f"https://localhost:{port}/"
    print(f"  {name}: keep-alive ...", flush=True)
    keepalive = wrk(name, url, args)
    print(f"  {name}: new connection per request ...", flush=True)
    connections = wrk(name, url, args, "-H", "Connection: close")
    print(f"  {name}: {args.bulk_runs} bulk downloads of {args.bulk_size} bytes ...", flush=True)
    speeds = [bulk(name, f"{url}big", ca_file, args.bulk_size) for _ in range(args.bulk_runs)]
    return TargetResult(name, keepalive, connections, statistics.median(speeds))


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="TLS passthrough through tlsgate, HAProxy mode tcp and nginx stream."
    )
    p.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    p.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    p.add_argument("--duration", default="10s", help="wrk duration per run (default 10s)")
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        help="tlsgate workers = HAProxy nbthread = nginx worker_processes (default 2)",
    )
    p.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load first")
    p.add_argument(
        "--bulk-size", type=parse_size, default=1 << 30, help="bulk download size (default 1GiB)"
    )
    p.add_argument(
        "--bulk-runs", type=int, default=3, help="bulk downloads per target; the median counts"
    )
    p.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help=f"comma-separated subset of {','.join(TARGETS)} (default: all)",
    )
    p.add_argument(
        "--output-dir", type=Path, default=RESULTS_DIR, help="where the JSON result goes"
    )
    args = p.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown or not targets:
        p.error(f"--targets: unknown {unknown}; choose from {', '.join(TARGETS)}")
    args.targets = targets
    if args.threads < 1 or args.connections < args.threads or args.workers < 1:
        p.error("need threads >= 1, connections >= threads, workers >= 1")
    if args.bulk_runs < 1:
        p.error("need --bulk-runs >= 1")
    return args


def check_tools(targets: Sequence[str]) -> None:
    needed = ["nginx", "wrk", "curl"] + (["haproxy"] if "haproxy" in targets else [])
    missing = [t for t in needed if shutil.which(t) is None]
    if missing:
        raise BenchError(f"missing tools: {', '.join(missing)} (run: make system-deps)")
    if "nginx" in targets and not NGINX_STREAM_MODULE.exists():
        raise BenchError(f"{NGINX_STREAM_MODULE} missing: install libnginx-mod-stream")


def ratios(by_name: dict[str, TargetResult]) -> dict[str, dict[str, float]]:
    """tlsgate's figures divided by each other proxy's, per measurement."""
    out: dict[str, dict[str, float]] = {}
    me = by_name.get("tlsgate")
    if me is None:
        return out
    for other in ("haproxy", "nginx"):
        them = by_name.get(other)
        if them is None:
            continue
        out[f"tlsgate/{other}"] = {
            "keepalive": me.keepalive.requests_per_sec / them.keepalive.requests_per_sec,
            "connections": me.connections.requests_per_sec / them.connections.requests_per_sec,
            "bulk": me.bulk_bytes_per_sec / them.bulk_bytes_per_sec,
        }
    return out


def print_table(results: Sequence[TargetResult], rat: dict[str, dict[str, float]]) -> None:
    header = (
        f"{'target':<10} {'keep-alive req/s':>17} {'p99 ms':>8} {'new conn/s':>11} "
        f"{'p99 ms':>8} {'bulk MiB/s':>11} {'errors':>7}"
    )
    print()
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.name:<10} {r.keepalive.requests_per_sec:>17.0f} "
            f"{r.keepalive.latency_p99_ms:>8.2f} {r.connections.requests_per_sec:>11.0f} "
            f"{r.connections.latency_p99_ms:>8.2f} {r.bulk_bytes_per_sec / (1 << 20):>11.0f} "
            f"{r.errors:>7}"
        )
    for name, values in rat.items():
        print(
            f"{name:<16} keep-alive {values['keepalive']:.2f}   new connections "
            f"{values['connections']:.2f}   bulk {values['bulk']:.2f}"
        )


def run(args: argparse.Namespace) -> dict[str, object]:
    """Start the servers, measure every target, and return the JSON-ready report."""
    check_tools(args.targets)
    results: list[TargetResult] = []
    with tempfile.TemporaryDirectory(prefix="tlsgate-bench-pt-") as tmp, servers() as started:
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)
        big = workdir / "big.bin"
        with big.open("wb") as f:
            f.truncate(args.bulk_size)  # sparse: nginx reads zeros from the page cache
        cert = write_certificate(workdir)
        backend_port = free_port()
        backend = start_backend(workdir, backend_port, cert, big)
        started.append(backend)
        wait_ready(backend, backend_port, f"https://localhost:{backend_port}/", insecure_tls=True)
        bulk("backend", f"https://localhost:{backend_port}/big", cert.ca_file, args.bulk_size)

        if "direct" in args.targets:
            results.append(measure("direct", backend_port, args, cert.ca_file))
        starters: dict[str, Callable[[int], Managed]] = {
            "tlsgate": lambda p: start_tlsgate(workdir, p, backend_port, args.workers),
            "haproxy": lambda p: start_haproxy(workdir, p, backend_port, args.workers),
            "nginx": lambda p: start_nginx_stream(workdir, p, backend_port, args.workers),
        }
        for name in PROXIES:
            if name not in args.targets:
                continue
            port = free_port()
            proxy = starters[name](port)
            started.append(proxy)
            wait_ready(proxy, port, f"https://localhost:{port}/", insecure_tls=True)
            results.append(measure(name, port, args, cert.ca_file))
            proxy.stop()  # one proxy at a time: each gets the whole machine

    by_name = {r.name: r for r in results}
    rat = ratios(by_name)
    print_table(results, rat)
    return {
        "benchmark": "tls-passthrough",
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "versions": {
            "tlsgate": tlsgate_version,
            "haproxy": tool_version(["haproxy", "-v"]),
            "nginx": tool_version(["nginx", "-v"]),
            "wrk": tool_version(["wrk", "--version"]),
            "curl": tool_version(["curl", "--version"]),
        },
        "parameters": {
            "threads": args.threads,
            "connections": args.connections,
            "duration": args.duration,
            "warmup_s": args.warmup,
            "workers": args.workers,
            "bulk_size": args.bulk_size,
            "bulk_runs": args.bulk_runs,
            "targets": args.targets,
        },
        "results": [
            {
                "name": r.name,
                "keepalive": {**asdict(r.keepalive), "errors": r.keepalive.errors},
                "connections": {**asdict(r.connections), "errors": r.connections.errors},
                "bulk_bytes_per_sec": r.bulk_bytes_per_sec,
            }
            for r in results
        ],
        "ratios": rat,
    }


def main(argv: Sequence[str] | None = None) -> int:
    return bench_main("bench_passthrough", "passthrough", parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
