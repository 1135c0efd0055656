"""HTTPS keep-alive throughput: tlsgate against HAProxy, same backend, same run.

How this works: one nginx (Debian package) on a free loopback port answers
``200 hello`` and is the backend of both proxies. HAProxy (Debian package) and
tlsgate are configured the same way -- TLS termination with the same ECDSA
P-256 certificate from tlsgate's local CA, HTTP/1.1 via ALPN, keep-alive on
both sides, X-Forwarded-* and Forwarded added, no access log, W threads/workers --
and each is loaded in turn with ``wrk`` over HTTPS keep-alive connections. A
plain-HTTP run straight at nginx is the baseline (the ceiling the backend and
load generator allow on this machine). The script prints a table and
``ratio tlsgate/haproxy``, and writes the figures as JSON to
``bench/results/https-<timestamp>.json``.

Everything binds to 127.0.0.1 on free ports. Every process started is ended
(SIGTERM, then SIGKILL) and the temporary directory removed, whatever happens.

Run it with the project's virtualenv: ``make bench`` or
``.venv/bin/python bench/bench_https.py --help``. It is never part of the
test run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tlsgate import __version__ as tlsgate_version
from tlsgate.ca.local import LocalCA

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
HELLO = "hello\n"
TARGETS = ("nginx", "haproxy", "tlsgate")
STARTUP_TIMEOUT = 20.0


class BenchError(Exception):
    """The benchmark could not be run (a tool is missing, a server did not start)."""


# --------------------------------------------------------------------------- processes


@dataclass
class Managed:
    """A server started by the benchmark, with its output captured to a log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    # Log files the server writes itself (besides stdout/stderr), shown on failure.
    extra_logs: list[Path] = field(default_factory=list)

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the captured output and of each extra log."""
        parts = []
        for path in [self.log_path, *self.extra_logs]:
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            if text.strip():
                tail = "\n".join(text.splitlines()[-lines:])
                parts.append(f"--- {path.name}\n{tail}")
        return "\n".join(parts)

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left after ``grace`` seconds."""
        if self.proc.poll() is not None:
            return
        # Each server runs in its own session/process group, so a signal to the
        # group also reaches workers it forked (nginx, tlsgate), and only them.
        pgid = self.proc.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            self.proc.wait(timeout=grace)
        # The leader may exit before its children; sweep the group once more.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


def start(name: str, argv: Sequence[str], workdir: Path) -> Managed:
    """Start ``argv`` in a new session with stdout+stderr to ``workdir/<name>.log``."""
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Managed(name=name, proc=proc, log_path=log_path)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_ready(server: Managed, port: int, url: str, *, insecure_tls: bool) -> None:
    """Wait until ``port`` accepts connections and ``url`` answers ``hello``.

    Raises:
        BenchError: the process exited, or it was not ready within STARTUP_TIMEOUT.
    """
    deadline = time.monotonic() + STARTUP_TIMEOUT
    last = "port not accepting yet"
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise BenchError(
                f"{server.name} exited with status {server.proc.returncode}:\n{server.log_tail()}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                pass
        except OSError as exc:
            last = f"connect: {exc}"
            time.sleep(0.1)
            continue
        curl = ["curl", "-s", "--max-time", "5", "--http1.1"]
        if insecure_tls:
            curl.append("-k")
        result = subprocess.run([*curl, url], capture_output=True, text=True, check=False)
        if result.returncode == 0 and result.stdout == HELLO:
            return
        last = f"curl exit {result.returncode}, body {result.stdout[:80]!r} {result.stderr[:200]}"
        time.sleep(0.2)
    raise BenchError(
        f"{server.name} not ready after {STARTUP_TIMEOUT}s ({last}):\n{server.log_tail()}"
    )


def tool_version(argv: Sequence[str]) -> str:
    """First line a tool prints about its version (stdout or stderr), or ``"?"``."""
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (out.stdout + out.stderr).strip()
    return text.splitlines()[0] if text else "?"


# --------------------------------------------------------------------------- servers


def start_nginx(workdir: Path, port: int) -> Managed:
    """nginx serving ``200 hello`` with generous keep-alive, one worker process."""
    root = workdir / "nginx"
    root.mkdir()
    conf = root / "nginx.conf"
    # All paths nginx would otherwise take from its compiled-in defaults
    # (/run, /var/log, /var/lib) point into the temp dir.
    conf.write_text(
        f"""
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 4096; }}
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
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            default_type text/plain;
            return 200 "hello\\n";
        }}
    }}
}}
"""
    )
    server = start(
        "nginx",
        ["nginx", "-p", str(root), "-e", str(root / "error.log"), "-c", str(conf),
         "-g", "daemon off;"],
        workdir,
    )  # fmt: skip
    server.extra_logs.append(root / "error.log")
    return server


def write_certificate(workdir: Path) -> tuple[Path, Path, Path]:
    """Issue an ECDSA P-256 certificate for localhost/127.0.0.1 from tlsgate's local CA.

    Returns:
        (chain file, key file, combined chain+key file for HAProxy).
    """
    ca = LocalCA.create()
    issued = ca.issue(["localhost", "127.0.0.1"], key_type="ecdsa-p256")
    chain, key = issued.chain_pem, issued.key_pem
    cert_file = workdir / "bench.crt"
    key_file = workdir / "bench.key"
    combined = workdir / "bench-combined.pem"
    cert_file.write_bytes(chain)
    for path, data in ((key_file, key), (combined, chain.rstrip(b"\n") + b"\n" + key)):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    return cert_file, key_file, combined


def start_haproxy(
    workdir: Path, port: int, backend_port: int, combined_pem: Path, threads: int
) -> Managed:
    """HAProxy terminating TLS and balancing HTTP/1.1 to nginx, reusing server connections."""
    cfg = workdir / "haproxy.cfg"
    cfg.write_text(
        f"""
global
    nbthread {threads}
    maxconn 4096

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    timeout http-keep-alive 60s
    option http-keep-alive
    option forwardfor

frontend https
    bind 127.0.0.1:{port} ssl crt {combined_pem} alpn http/1.1
    # tlsgate sets these on every request it forwards; do the same work here.
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
    return start("haproxy", ["haproxy", "-f", str(cfg), "-db"], workdir)


def run_tlsgate(workdir: Path, workers: int, body: str) -> Managed:
    """``tlsgate serve`` with ``body`` (certificates, listeners, backends) under a node
    with ``workers`` workers, the access log off and errors to a file in ``workdir``."""
    data_dir = workdir / "tlsgate-data"
    data_dir.mkdir()
    error_log = workdir / "tlsgate-error.log"
    config = workdir / "tlsgate.toml"
    config.write_text(
        f"""
[node]
name = "bench"
data_dir = {json.dumps(str(data_dir))}
workers = {workers}

[log]
access = ""
error = {json.dumps(str(error_log))}
level = "warning"
"""
        + body
    )
    # The tlsgate console script of the interpreter running this benchmark
    # (the project's .venv), not whatever is first on PATH.
    exe = Path(sys.executable).parent / "tlsgate"
    if not exe.exists():
        raise BenchError(
            f"{exe} not found: install the project (make venv) and run with its python"
        )
    server = start("tlsgate", [str(exe), "serve", "-c", str(config)], workdir)
    server.extra_logs.append(error_log)
    return server


def start_tlsgate(
    workdir: Path,
    port: int,
    backend_port: int,
    cert_file: Path,
    key_file: Path,
    workers: int,
) -> Managed:
    """``tlsgate serve`` with one https listener in front of nginx; access log off."""
    return run_tlsgate(
        workdir,
        workers,
        f"""
[[certificates]]
name = "bench"
domains = ["localhost"]
issuer = "files"
cert_file = {json.dumps(str(cert_file))}
key_file = {json.dumps(str(key_file))}

[[listeners]]
name = "https"
bind = ["127.0.0.1:{port}"]
protocol = "https"
backend = "nginx"
# wrk connects to 127.0.0.1 and sends that as SNI, which names no certificate.
default_certificate = "bench"

[[backends]]
name = "nginx"
servers = ["127.0.0.1:{backend_port}"]
""",
    )


# --------------------------------------------------------------------------- wrk


@dataclass
class WrkResult:
    """What one wrk run measured. Latencies in milliseconds."""

    name: str
    url: str
    requests_per_sec: float
    requests: int
    latency_p50_ms: float
    latency_p99_ms: float
    socket_errors: dict[str, int] = field(default_factory=dict)
    non_2xx_3xx: int = 0

    @property
    def errors(self) -> int:
        return sum(self.socket_errors.values()) + self.non_2xx_3xx


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _latency_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if m is None:
        raise BenchError(f"unexpected wrk latency {text!r}")
    return float(m.group(1)) * _UNITS_MS[m.group(2)]


def parse_wrk(name: str, url: str, output: str) -> WrkResult:
    """Parse the text ``wrk --latency`` prints.

    Raises:
        BenchError: a figure the benchmark needs is missing from the output.
    """
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    total = re.search(r"^\s*(\d+) requests in ", output, re.MULTILINE)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE)
    if rps is None or total is None or p50 is None or p99 is None:
        raise BenchError(f"could not parse wrk output for {name}:\n{output}")
    socket_errors: dict[str, int] = {}
    errs = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if errs is not None:
        socket_errors = dict(
            zip(("connect", "read", "write", "timeout"), map(int, errs.groups()), strict=True)
        )
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return WrkResult(
        name=name,
        url=url,
        requests_per_sec=float(rps.group(1)),
        requests=int(total.group(1)),
        latency_p50_ms=_latency_ms(p50.group(1)),
        latency_p99_ms=_latency_ms(p99.group(1)),
        socket_errors=socket_errors,
        non_2xx_3xx=int(non2xx.group(1)) if non2xx else 0,
    )


def run_wrk(name: str, url: str, args: argparse.Namespace) -> WrkResult:
    """Warm up (if asked), then measure ``url`` with wrk."""
    base = ["wrk", f"-t{args.threads}", f"-c{args.connections}"]
    if args.warmup > 0:
        subprocess.run(
            [*base, f"-d{args.warmup}s", url], capture_output=True, check=False, timeout=300
        )
    print(f"  measuring {name}: {url} ({args.duration}) ...", flush=True)
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


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="HTTPS keep-alive requests/s through tlsgate and HAProxy to one nginx."
    )
    p.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    p.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    p.add_argument("--duration", default="10s", help="wrk duration per run (default 10s)")
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        help="tlsgate workers = HAProxy nbthread (default 2)",
    )
    p.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load first")
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
    return args


def check_tools(targets: Sequence[str]) -> None:
    needed = ["nginx", "wrk", "curl"] + (["haproxy"] if "haproxy" in targets else [])
    missing = [t for t in needed if shutil.which(t) is None]
    if missing:
        raise BenchError(f"missing tools: {', '.join(missing)} (run: make system-deps)")


def print_table(results: Sequence[WrkResult], ratio: float | None) -> None:
    header = f"{'target':<10} {'requests/s':>12} {'p50 ms':>9} {'p99 ms':>9} {'errors':>8}  url"
    print()
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.name:<10} {r.requests_per_sec:>12.0f} {r.latency_p50_ms:>9.2f} "
            f"{r.latency_p99_ms:>9.2f} {r.errors:>8}  {r.url}"
        )
    if ratio is not None:
        print(f"\nratio tlsgate/haproxy = {ratio:.2f}")


@contextlib.contextmanager
def servers() -> Iterator[list[Managed]]:
    """Collects started servers and stops all of them, newest first, on the way out."""
    started: list[Managed] = []
    try:
        yield started
    finally:
        for server in reversed(started):
            server.stop()


def run(args: argparse.Namespace) -> dict[str, object]:
    """Start the servers, measure, and return the JSON-ready report."""
    check_tools(args.targets)
    results: list[WrkResult] = []
    with tempfile.TemporaryDirectory(prefix="tlsgate-bench-") as tmp, servers() as started:
        workdir = Path(tmp)
        nginx_port = free_port()
        nginx = start_nginx(workdir, nginx_port)
        started.append(nginx)
        nginx_url = f"http://127.0.0.1:{nginx_port}/"
        wait_ready(nginx, nginx_port, nginx_url, insecure_tls=False)

        cert_file, key_file, combined = write_certificate(workdir)

        if "nginx" in args.targets:
            results.append(run_wrk("nginx", nginx_url, args))

        if "haproxy" in args.targets:
            port = free_port()
            haproxy = start_haproxy(workdir, port, nginx_port, combined, args.workers)
            started.append(haproxy)
            url = f"https://127.0.0.1:{port}/"
            wait_ready(haproxy, port, url, insecure_tls=True)
            results.append(run_wrk("haproxy", url, args))
            haproxy.stop()  # one proxy at a time: each gets the whole machine

        if "tlsgate" in args.targets:
            port = free_port()
            tlsgate = start_tlsgate(workdir, port, nginx_port, cert_file, key_file, args.workers)
            started.append(tlsgate)
            url = f"https://127.0.0.1:{port}/"
            wait_ready(tlsgate, port, url, insecure_tls=True)
            results.append(run_wrk("tlsgate", url, args))
            tlsgate.stop()

    by_name = {r.name: r for r in results}
    ratio = None
    if "tlsgate" in by_name and "haproxy" in by_name and by_name["haproxy"].requests_per_sec:
        ratio = by_name["tlsgate"].requests_per_sec / by_name["haproxy"].requests_per_sec
    print_table(results, ratio)
    return {
        "benchmark": "https-keepalive",
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
        },
        "parameters": {
            "threads": args.threads,
            "connections": args.connections,
            "duration": args.duration,
            "warmup_s": args.warmup,
            "workers": args.workers,
            "targets": args.targets,
        },
        "results": [{**asdict(r), "errors": r.errors} for r in results],
        "ratio_tlsgate_haproxy": ratio,
    }


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # SystemExit unwinds through the finally blocks that stop the servers.
    sys.exit(128 + signum)


def bench_main(
    prog: str,
    prefix: str,
    args: argparse.Namespace,
    run: Callable[[argparse.Namespace], dict[str, Any]],
) -> int:
    """Run a benchmark, write its JSON report to ``<output_dir>/<prefix>-<time>.json``."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        report = run(args)
    except BenchError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    args.output_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.output_dir / f"{prefix}-{stamp}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results written to {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return bench_main("bench_https", "https", parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
