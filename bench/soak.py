"""``make soak``: one tlsgate node under mixed traffic, reloaded and re-certified every cycle.

How it works: this process writes two CAs and the certificates, starts the
backends (two bench nginx for plain GETs, two echo app servers from
tests/integration/appserver.py for uploads and WebSockets, two TLS echo servers
from soak_backend.py behind the passthrough listener) and one ``tlsgate serve``
with 2 workers, an https listener (ECDSA + RSA certificates from files, several
names by SNI), an http listener that redirects to it and a ``tls-passthrough``
listener, every backend with two servers and active health checks. One request
of every kind primes the node, then the descriptors are counted at rest.

Then, for ``--minutes``: every traffic kind of soak_traffic.py runs in its own
process; in every ``--cycle`` the config itself is rewritten (a server weight
changes) and reloaded a quarter of the way in, and three quarters in one of the
three https certificates is replaced (new key and certificate, written
atomically to the files the config names), then SIGHUP, and the new fingerprint
is checked on a new connection to *each* worker. A sampler thread records
the RSS and descriptors of the supervisor and each worker every ``--sample``
seconds (psutil). SIGHUP is the only way tlsgate takes new files
(``issuer = "files"`` certificates are read at start and on reload, see
docs/configuration.md), so the swap is a reload too.

At the end the traffic stops, the node rests until its pools have closed, and
the descriptors are counted again. soak_report.py turns all of it into one
table and the verdicts; ``bench/results/soak-<time>.json`` gets everything,
samples included. The exit status is 1 when a verdict fails (``--judge
traffic``: only the traffic, reload and swap verdicts count; for short runs,
where an RSS slope says nothing), 2 when the soak could not run.

    .venv/bin/python bench/soak.py --quick          # 3 minutes (CI-sized)
    .venv/bin/python bench/soak.py                  # 30 minutes
    .venv/bin/python bench/soak.py --minutes 10 --cycle 30
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import platform
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import servers
import soak_report
import soak_traffic
from common import (
    RESULTS_DIR,
    BenchError,
    Proc,
    ProcessSet,
    Unavailable,
    curl_probe,
    exit_on_signals,
    free_port,
    fresh_dir,
    machine_info,
    missing_tools,
    wait_until,
)
from soak_traffic import KINDS, Target, client_context, fingerprint, tls_connection

import tlsgate
from tlsgate import keyfiles
from tlsgate.ca.local import LeafKeyType, LocalCA

BENCH_DIR = Path(__file__).resolve().parent
APPSERVER = BENCH_DIR.parent / "tests" / "integration" / "appserver.py"
SOAK_BACKEND = BENCH_DIR / "soak_backend.py"
REQUIRED = ("nginx", "curl")
RELOAD_TIMEOUT = 30.0
SWAP_PROBES = 40  # new connections at most, to reach every worker after a swap
REST_SECONDS = 6.0  # before counting at rest: > pool_idle_timeout (2 s), pools are empty
PT_SERVER_NAMES = ("pt-1", "pt-2")


# --------------------------------------------------------------------------- certificates


@dataclass
class SiteCert:
    """One ``[[certificates]]`` entry, and how a client asks for exactly this one."""

    name: str
    domains: tuple[str, ...]
    key_type: LeafKeyType
    probe_name: str  # SNI
    probe_variant: str  # soak_traffic.client_context variant that selects this key type
    cert_file: Path
    key_file: Path
    fingerprint: str = ""
    history: list[str] = field(default_factory=list)

    def issue(self, ca: LocalCA) -> str:
        """A new key and certificate, atomically over the configured files: the new fingerprint."""
        issued = ca.issue(list(self.domains), key_type=self.key_type)
        # Key first: until the reload, nothing reads them; both are complete before it.
        keyfiles.write_private(self.key_file, issued.key_pem)
        keyfiles.write_public(self.cert_file, issued.chain_pem)
        der = ssl.PEM_cert_to_DER_cert(issued.cert_pem.decode())
        self.fingerprint = fingerprint(der)
        self.history.append(self.fingerprint)
        return self.fingerprint

    def toml(self) -> str:
        domains = ", ".join(json.dumps(d) for d in self.domains)
        return (
            f'[[certificates]]\nname = "{self.name}"\ndomains = [{domains}]\nissuer = "files"\n'
            f"cert_file = {json.dumps(str(self.cert_file))}\n"
            f"key_file = {json.dumps(str(self.key_file))}\n\n"
        )


@dataclass
class Pki:
    ca: LocalCA
    pt_ca: LocalCA
    pt_ca_file: Path
    pt_cert: Path
    pt_key: Path
    sites: list[SiteCert]


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca = LocalCA.create("tlsgate soak CA")
    site = ("soak.test", "www.soak.test")
    sites = [
        SiteCert(
            "site-ecdsa",
            site,
            "ecdsa-p256",
            "www.soak.test",
            "tls12-ecdsa",
            directory / "site-ecdsa.pem",
            directory / "site-ecdsa.key",
        ),
        SiteCert(
            "site-rsa",
            site,
            "rsa-2048",
            "www.soak.test",
            "tls12-rsa",
            directory / "site-rsa.pem",
            directory / "site-rsa.key",
        ),
        SiteCert(
            "api",
            ("api.soak.test", "*.api.soak.test"),
            "ecdsa-p256",
            "api.soak.test",
            "tls13",
            directory / "api.pem",
            directory / "api.key",
        ),
    ]
    for s in sites:
        s.issue(ca)
    pt_ca = LocalCA.create("tlsgate soak passthrough CA")
    pt_ca_file = directory / "pt-ca.pem"
    keyfiles.write_public(pt_ca_file, pt_ca.cert_pem)
    pt = pt_ca.issue(["pt.soak.test", "*.pt.soak.test"])
    pt_cert, pt_key = directory / "pt.pem", directory / "pt.key"
    keyfiles.write_public(pt_cert, pt.chain_pem)
    keyfiles.write_private(pt_key, pt.key_pem)
    return Pki(ca, pt_ca, pt_ca_file, pt_cert, pt_key, sites)


# --------------------------------------------------------------------------- backends


@dataclass
class Backends:
    web: list[str]  # nginx: GET /
    app: list[str]  # appserver.py: /upload
    ws: list[str]  # appserver.py's websockets echo
    pt: list[str]  # soak_backend.py


def _tcp_probe(port: int) -> str | None:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError as exc:
        return str(exc)
    return None


def _tls_probe(port: int, ca_pem: str) -> str | None:
    try:
        with tls_connection(port, "pt.soak.test", client_context(ca_pem, alpn=False)):
            return None
    except OSError as exc:
        return str(exc)


def start_backends(ps: ProcessSet, workdir: Path, pki: Pki) -> Backends:
    big = workdir / "big.bin"
    big.write_bytes(b"")
    out = Backends([], [], [], [])
    for _ in range(2):
        b = servers.start_backend(ps, workdir, free_port(), free_port(), big, None)
        wait_until(b.proc, curl_probe(f"http://127.0.0.1:{b.http_port}/", servers.BODY), "nginx")
        out.web.append(f"127.0.0.1:{b.http_port}")
    for i in (1, 2):
        port, ws_port = free_port(), free_port()
        argv = [
            sys.executable,
            str(APPSERVER),
            "--port",
            str(port),
            "--name",
            f"app-{i}",
            "--ws-port",
            str(ws_port),
        ]
        proc = ps.start(f"app-{i}", argv)
        wait_until(proc, curl_probe(f"http://127.0.0.1:{port}/healthz", b"ok\n"), "app")
        wait_until(proc, lambda p=ws_port: _tcp_probe(p), "websocket echo")  # type: ignore[misc]
        out.app.append(f"127.0.0.1:{port}")
        out.ws.append(f"127.0.0.1:{ws_port}")
    pt_ca_pem = pki.pt_ca.cert_pem.decode()
    for name in PT_SERVER_NAMES:
        port = free_port()
        argv = [
            sys.executable,
            str(SOAK_BACKEND),
            "--port",
            str(port),
            "--name",
            name,
            "--cert",
            str(pki.pt_cert),
            "--key",
            str(pki.pt_key),
        ]
        proc = ps.start(name, argv)
        wait_until(proc, lambda p=port: _tls_probe(p, pt_ca_pem), "TLS echo")  # type: ignore[misc]
        out.pt.append(f"127.0.0.1:{port}")
    return out


def reset_app_servers(backends: Backends) -> None:
    """Empty the app servers' request records (appserver.py keeps every request it saw)."""
    for address in backends.app:
        host, _, port = address.rpartition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        try:
            conn.request("GET", "/admin/reset")
            conn.getresponse().read()
        except OSError:
            pass  # a missed reset only costs the app server memory
        finally:
            conn.close()


# --------------------------------------------------------------------------- tlsgate


@dataclass
class Ports:
    https: int
    http: int
    pt: int


def _servers(addresses: list[str], weights: Sequence[int] = (1, 1)) -> str:
    return (
        "["
        + ", ".join(
            f'{{ address = "{a}", weight = {w} }}' for a, w in zip(addresses, weights, strict=True)
        )
        + "]"
    )


def render_config(run_dir: Path, pki: Pki, ports: Ports, backends: Backends, variant: int) -> str:
    """The node's whole config; ``variant`` changes one weight, so a plain reload is a change."""
    pt_ca = json.dumps(str(pki.pt_ca_file))
    certs = "".join(s.toml() for s in pki.sites)
    return f"""# written by bench/soak.py (variant {variant})
[node]
name = "soak"
data_dir = {json.dumps(str(run_dir / "data"))}
workers = 2
shutdown_timeout = "5s"

[log]
access = ""
error = {json.dumps(str(run_dir / "error.log"))}
level = "info"

{certs}
[[listeners]]
name = "https"
bind = ["127.0.0.1:{ports.https}"]
protocol = "https"
backend = "web"
default_certificate = "site-ecdsa"

[[listeners]]
name = "http"
bind = ["127.0.0.1:{ports.http}"]
protocol = "http"
redirect_https = true

[[listeners]]
name = "pt"
bind = ["127.0.0.1:{ports.pt}"]
protocol = "tls-passthrough"

[[routes]]
listener = "https"
path_prefix = "/upload"
backend = "app"

[[routes]]
listener = "https"
path_prefix = "/ws"
backend = "ws"

[[routes]]
listener = "pt"
hosts = ["pt.soak.test", "*.pt.soak.test"]
backend = "pt"

[[backends]]
name = "web"
servers = {_servers(backends.web, (1, 1 + variant % 2))}
pool_idle_timeout = "2s"
health = {{ path = "/", interval = "2s" }}

[[backends]]
name = "app"
servers = {_servers(backends.app)}
pool_idle_timeout = "2s"
health = {{ path = "/healthz", interval = "2s" }}

[[backends]]
name = "ws"
servers = {_servers(backends.ws)}
health = {{ type = "tcp", interval = "2s" }}

[[backends]]
name = "pt"
servers = {_servers(backends.pt)}
health = {{ type = "tls", host = "pt.soak.test", tls_verify = true, ca_file = {pt_ca} }}
"""


class Gate:
    """The running node: its config file, error log, reloads and processes."""

    def __init__(self, proc: Proc, run_dir: Path) -> None:
        self.proc = proc
        self.run_dir = run_dir
        self.config = run_dir / "tlsgate.toml"
        self.error_log = run_dir / "error.log"
        self.first_workers: list[int] = []

    @property
    def pid(self) -> int:
        return self.proc.popen.pid

    def log_text(self) -> str:
        try:
            return self.error_log.read_text(errors="replace")
        except OSError:
            return ""

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while "tlsgate ready" not in self.log_text():
            if not self.proc.alive() or time.monotonic() > deadline:
                raise BenchError(f"tlsgate did not start:\n{self.proc.log_tail(40)}")
            time.sleep(0.1)
        self.first_workers = self.worker_pids()

    def worker_pids(self) -> list[int]:
        try:
            children = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []
        return sorted(c.pid for c in children if _alive(c))

    def reload(self) -> tuple[bool, float, str]:
        """SIGHUP and wait for the outcome: (completed, seconds, the failure if any)."""
        text = self.log_text()
        done, failed = text.count("reload complete"), text.count("reload failed")
        start = time.monotonic()
        os.kill(self.pid, signal.SIGHUP)
        while time.monotonic() - start < RELOAD_TIMEOUT:
            time.sleep(0.05)
            text = self.log_text()
            if text.count("reload complete") > done:
                return True, time.monotonic() - start, ""
            if text.count("reload failed") > failed:
                lines = [ln for ln in text.splitlines() if "reload failed" in ln]
                return False, time.monotonic() - start, lines[-1][-300:]
            if not self.proc.alive():
                return False, time.monotonic() - start, "tlsgate exited"
        return False, RELOAD_TIMEOUT, f"no 'reload complete' within {RELOAD_TIMEOUT:.0f} s"


def _alive(p: psutil.Process) -> bool:
    try:
        return bool(p.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def start_gate(ps: ProcessSet, workdir: Path, pki: Pki, ports: Ports, backends: Backends) -> Gate:
    exe = Path(sys.executable).parent / "tlsgate"
    if not exe.exists():
        raise Unavailable(f"{exe} not found: run with the project's .venv (make venv)")
    run_dir = fresh_dir(workdir, "tlsgate")
    keyfiles.write_public(
        run_dir / "tlsgate.toml", render_config(run_dir, pki, ports, backends, 0).encode()
    )
    proc = ps.start(
        "tlsgate",
        [str(exe), "serve", "-c", str(run_dir / "tlsgate.toml")],
        extra_logs=[run_dir / "error.log"],
    )
    gate = Gate(proc, run_dir)
    gate.wait_ready()
    return gate


# --------------------------------------------------------------------------- sampling


class Sampler(threading.Thread):
    """RSS and descriptors of the supervisor and every worker, every ``interval`` s."""

    def __init__(self, gate: Gate, t0: float, interval: float) -> None:
        super().__init__(daemon=True, name="sampler")
        self.gate = gate
        self.t0 = t0
        self.interval = interval
        self.samples: list[dict[str, Any]] = []
        self.halt = threading.Event()

    def take(self) -> dict[str, Any]:
        procs: dict[str, dict[str, int]] = {}
        for pid in [self.gate.pid, *self.gate.worker_pids()]:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied, OSError):
                rss = int(psutil.Process(pid).memory_info().rss)
                procs[str(pid)] = {"rss": rss, **descriptors(pid)}
        return {"t": round(time.monotonic() - self.t0, 2), "procs": procs}

    def run(self) -> None:
        next_t = time.monotonic()
        while not self.halt.is_set():
            self.samples.append(self.take())
            next_t += self.interval
            self.halt.wait(max(0.0, next_t - time.monotonic()))


def descriptors(pid: int) -> dict[str, int]:
    """Open descriptors of ``pid``: all of them, and how many are pipes.

    Pipes are counted apart because a worker keeps emptied splice pipes for its next
    L4 connection (net/l4.py ``_PIPES``, at most 256 pairs): at rest it holds as many
    as its passthrough sessions ever had open at once, which is no leak.

    Raises:
        OSError: the process is gone.
    """
    fds = pipes = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        fds += 1
        with contextlib.suppress(OSError):
            pipes += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("pipe:")
    return {"fds": fds, "pipes": pipes}


def fds_at_rest(gate: Gate, rest: float) -> dict[str, dict[str, int]]:
    """Wait ``rest`` s in all; each process's fewest descriptors over the last third of it.

    The first two thirds let the pools' idle connections time out (``pool_idle_timeout``
    is 2 s); the minimum over the last third leaves out health checks in flight.
    """
    time.sleep(rest * 2 / 3)
    seconds = rest / 3
    low: dict[str, dict[str, int]] = {}
    deadline = time.monotonic() + seconds
    while True:
        for pid in [gate.pid, *gate.worker_pids()]:
            with contextlib.suppress(OSError):
                now = descriptors(pid)
                if str(pid) not in low or now["fds"] < low[str(pid)]["fds"]:
                    low[str(pid)] = now
        if time.monotonic() >= deadline:
            return low
        time.sleep(0.2)


def pipe_allowance() -> int:
    """How many more pipe fds a worker may hold at rest after the run than before it.

    2 pipes (4 fds) per L4 session open at once, and a session may still be closing
    while its client thread's next one opens: so 2 sessions per passthrough client
    thread, plus one for the priming and swap probes. A leak of one pipe per
    thousand sessions exceeds this within a 30-minute run (~18,000 sessions).
    """
    threads = KINDS["passthrough"].threads + KINDS["passthrough-long"].threads
    return 4 * (2 * threads + 1)


# --------------------------------------------------------------------------- swaps


def verify_swap(gate: Gate, port: int, cert: SiteCert, ca_pem: str) -> dict[str, Any]:
    """New connections until every worker has served one: each must show the new certificate.

    The worker that accepted a connection is found by its socket (psutil): the
    server side whose peer is this connection's local address.
    """
    ctx = client_context(ca_pem, cert.probe_variant)
    workers = gate.worker_pids()
    seen: dict[str, str] = {}  # worker pid -> "new" / "old: <fp>" / "other: <fp>"
    stale: list[str] = []
    errors: list[str] = []
    probes = 0
    while probes < SWAP_PROBES and len(seen) < len(workers):
        probes += 1
        try:
            with tls_connection(port, cert.probe_name, ctx) as s:
                fp = fingerprint(s.getpeercert(binary_form=True) or b"")
                worker = _serving_worker(workers, port, s.getsockname()[:2])
        except OSError as exc:
            errors.append(soak_traffic.describe(exc))
            continue
        verdict = "new" if fp == cert.fingerprint else ("old" if fp in cert.history else "other")
        if verdict != "new":
            stale.append(f"worker {worker}: {verdict} certificate {fp[:16]}")
        if worker is not None:
            seen.setdefault(str(worker), verdict)
            if verdict != "new":
                seen[str(worker)] = verdict
    return {
        "certificate": cert.name,
        "fingerprint": cert.fingerprint,
        "probes": probes,
        "workers": {str(w): seen.get(str(w), "not reached") for w in workers},
        "stale": stale,
        "errors": errors,
        "verified": len(seen) == len(workers)
        and not stale
        and all(v == "new" for v in seen.values()),
    }


def _serving_worker(workers: list[int], port: int, local: tuple[str, int]) -> int | None:
    for pid in workers:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            for c in psutil.Process(pid).net_connections(kind="tcp4"):
                if c.laddr and c.laddr.port == port and c.raddr and tuple(c.raddr) == local:
                    return pid
    return None


# --------------------------------------------------------------------------- traffic


class Traffic:
    """The client processes (``soak_traffic.py KIND``, one per kind) and their latest counts.

    Each prints JSON lines (ready, snapshots, final); a thread per process reads them.
    Closing a process's standard input stops it; so does this process's death.
    """

    def __init__(self, target: Target, kinds: Sequence[str], load: float, logs: Path) -> None:
        self.target = target
        self.kinds = list(kinds)
        self.load = load
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.readers: list[threading.Thread] = []
        self.latest: dict[str, dict[str, Any]] = {}
        self.ready: set[str] = set()
        self._lock = threading.Lock()

    def start(self, deadline: float, timeout: float = 60.0) -> None:
        """Start every kind and wait until each one's threads run.

        Raises:
            BenchError: a client process exited or was not ready within ``timeout``.
        """
        script = str(BENCH_DIR / "soak_traffic.py")
        target = soak_traffic.target_json(self.target)
        for kind in self.kinds:
            with (self.logs / f"traffic-{kind}.log").open("wb") as err:
                proc = subprocess.Popen(
                    [sys.executable, script, kind, target, str(self.load), str(deadline)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=err,
                )
            self.procs[kind] = proc
            reader = threading.Thread(target=self._read, args=(kind, proc), daemon=True)
            reader.start()
            self.readers.append(reader)
        limit = time.monotonic() + timeout
        while len(self.ready) < len(self.kinds):
            dead = [
                k for k, p in self.procs.items() if p.poll() is not None and k not in self.ready
            ]
            if dead or time.monotonic() > limit:
                raise BenchError(
                    f"traffic clients not ready: {dead or sorted(set(self.kinds) - self.ready)}"
                )
            time.sleep(0.05)

    def _read(self, kind: str, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            msg = json.loads(line)
            with self._lock:
                if msg.get("ready"):
                    self.ready.add(kind)
                else:
                    self.latest[kind] = msg

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {k: self.latest[k] for k in self.kinds if k in self.latest}

    def finish(self, timeout: float) -> list[str]:
        """Stop the clients and collect their final counts: the kinds that sent none."""
        for proc in self.procs.values():
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                proc.stdin.close()
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for reader in self.readers:
            reader.join(5)
        final = self.snapshot()
        return [k for k in self.kinds if not final.get(k, {}).get("final")]


# --------------------------------------------------------------------------- the run


@dataclass
class Plan:
    seconds: float
    cycle: float
    sample: float
    load: float
    judge: str
    kinds: list[str]
    rest: float


def run(plan: Plan, seed: int) -> dict[str, Any]:
    """Set everything up, soak, rest, and return the raw results for soak_report."""
    missing = missing_tools(REQUIRED)
    if missing:
        raise Unavailable(f"missing tools: {', '.join(missing)} (run: make system-deps)")
    if soak_traffic.BODY != servers.BODY:
        raise BenchError("soak_traffic.BODY no longer matches servers.BODY")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tlsgate-soak-") as tmp, ProcessSet(Path(tmp)) as ps:
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)
        pki = make_pki(workdir / "pki")
        backends = start_backends(ps, workdir, pki)
        ports = Ports(free_port(), free_port(), free_port())
        gate = start_gate(ps, workdir, pki, ports, backends)
        target = Target(
            https_port=ports.https,
            http_port=ports.http,
            pt_port=ports.pt,
            ca_pem=pki.ca.cert_pem.decode(),
            pt_ca_pem=pki.pt_ca.cert_pem.decode(),
            pt_servers=PT_SERVER_NAMES,
            seed=seed,
        )
        problems = soak_traffic.prime(target)
        if problems:
            raise BenchError(
                "priming failed: " + "; ".join(problems) + "\n" + gate.proc.log_tail(40)
            )
        setup_s = time.monotonic() - started
        rest_before = fds_at_rest(gate, plan.rest)
        config_text = gate.config.read_text()
        soaked = soak(plan, gate, pki, ports, backends, target, workdir)
        rest_after = fds_at_rest(gate, plan.rest)
        log = gate.log_text()
        return {
            **soaked,
            "rest_before": rest_before,
            "rest_after": rest_after,
            "pipe_allowance": pipe_allowance(),
            "supervisor": gate.pid,
            "first_workers": gate.first_workers,
            "last_workers": gate.worker_pids(),
            "alive_at_end": gate.proc.alive(),
            "error_log": soak_report.log_problems(log),
            "config": config_text,
            "setup_s": round(setup_s, 1),
            "until_rest_after_s": round(time.monotonic() - started, 1),
        }


def soak(
    plan: Plan,
    gate: Gate,
    pki: Pki,
    ports: Ports,
    backends: Backends,
    target: Target,
    workdir: Path,
) -> dict[str, Any]:
    """The soak itself: traffic, and a reload and a swap every cycle; returns what happened.

    The clock starts once every client process runs (their start-up, a second or
    more each on a busy machine, is not part of the first cycle).
    """
    traffic = Traffic(target, plan.kinds, plan.load, workdir)
    sampler: Sampler | None = None
    events: list[dict[str, Any]] = []
    swaps: list[dict[str, Any]] = []
    try:
        starting = time.monotonic()
        traffic.start(deadline=time.time() + plan.seconds + 180)
        t0, wall0 = time.monotonic(), time.time()
        end = t0 + plan.seconds
        sampler = Sampler(gate, t0, plan.sample)
        sampler.start()
        # In every cycle: the config reload a quarter in, the swap three quarters in, so
        # that a run of N cycles has N of each and the last one has a quarter cycle to show.
        next_reload, next_swap = t0 + plan.cycle / 4, t0 + plan.cycle * 3 / 4
        n_reload = n_swap = 0
        while (now := time.monotonic()) < end and gate.proc.alive():
            if now >= next_swap:
                n_swap += 1
                swaps.append(swap(gate, pki, ports, target, n_swap, t0, wall0, events))
                reset_app_servers(backends)
                next_swap += plan.cycle
            elif now >= next_reload:
                n_reload += 1
                text = render_config(gate.run_dir, pki, ports, backends, n_reload)
                keyfiles.write_public(gate.config, text.encode())
                events.append(_reload(gate, "config", t0, wall0, variant=n_reload))
                next_reload += plan.cycle
            time.sleep(max(0.0, min(next_swap, next_reload, end) - time.monotonic()))
        seconds = time.monotonic() - t0
    finally:
        stopping = time.monotonic()
        missing = traffic.finish(timeout=soak_traffic.UPLOAD_TIMEOUT + 30)
        finish_s = time.monotonic() - stopping
        if sampler is not None:
            sampler.halt.set()
            sampler.join(10)
    assert sampler is not None
    return {
        "seconds": round(seconds, 1),
        "wall_start": wall0,
        "events": events,
        "swaps": swaps,
        "samples": sampler.samples,
        "traffic": traffic.snapshot(),
        "kinds_unreported": missing,
        "traffic_start_s": round(t0 - starting, 1),
        "traffic_stop_s": round(finish_s, 1),
        "traffic_logs": {k: _tail(workdir / f"traffic-{k}.log") for k in missing},
    }


def swap(
    gate: Gate,
    pki: Pki,
    ports: Ports,
    target: Target,
    n: int,
    t0: float,
    wall0: float,
    events: list[dict[str, Any]],
) -> dict[str, Any]:
    """Swap certificate ``n`` (in turn), reload, and check every worker serves the new one."""
    cert = pki.sites[(n - 1) % len(pki.sites)]
    old = cert.fingerprint
    new = cert.issue(pki.ca)
    event = _reload(gate, "swap", t0, wall0, certificate=cert.name)
    events.append(event)
    if event["completed"]:
        check = verify_swap(gate, ports.https, cert, target.ca_pem)
    else:
        check = {"certificate": cert.name, "verified": False, "skipped": "reload failed"}
    return {**check, "old": old, "new": new, "t": event["t"]}


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _reload(gate: Gate, what: str, t0: float, wall0: float, **info: Any) -> dict[str, Any]:
    t = time.monotonic() - t0
    completed, seconds, error = gate.reload()
    return {
        "what": what,
        "t": round(t, 2),
        "wall": wall0 + t,
        "completed": completed,
        "seconds": round(seconds, 3),
        "error": error,
        **info,
    }


# --------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/soak.py",
        description="Soak one tlsgate node: mixed traffic, a reload and a certificate swap "
        "every cycle; verdicts on failures, RSS and descriptors.",
    )
    p.add_argument("--minutes", type=float, default=30.0, help="soak length (default 30)")
    p.add_argument("--quick", action="store_true", help="the CI-sized run: --minutes 3")
    p.add_argument(
        "--cycle",
        type=float,
        default=60.0,
        help="seconds per cycle: one config reload and one certificate swap (default 60)",
    )
    p.add_argument("--sample", type=float, default=2.0, help="seconds between RSS/fd samples")
    p.add_argument("--load", type=float, default=1.0, help="traffic rate multiplier (default 1)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: from the time)")
    p.add_argument(
        "--judge",
        choices=("all", "traffic"),
        default="all",
        help="'traffic': RSS/fd verdicts are reported, not judged (short runs)",
    )
    p.add_argument(
        "--output-dir",
        type=Path,
        default=RESULTS_DIR,
        help="where soak-<time>.json goes (default bench/results)",
    )
    p.add_argument(
        "--rest",
        type=float,
        default=REST_SECONDS,
        help=f"seconds at rest before and after the traffic, >= 3 (default {REST_SECONDS:g})",
    )
    p.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help="comma-separated traffic kinds (default: all): " + ", ".join(KINDS),
    )
    args = p.parse_args(argv)
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in args.kinds if k not in KINDS]
    if unknown or not args.kinds:
        p.error(f"unknown traffic kinds {unknown}; choose from {', '.join(KINDS)}")
    if args.quick:
        args.minutes = 3.0
    if args.minutes <= 0 or args.cycle < 4 or args.sample <= 0 or args.load <= 0:
        p.error("need --minutes > 0, --cycle >= 4, --sample > 0, --load > 0")
    if args.rest < 3:
        p.error("need --rest >= 3: the pools' idle connections need 2 s to close")
    if args.seed is None:
        args.seed = int(time.time()) % 100_000
    return args


def versions() -> dict[str, str]:
    compiled = getattr(tlsgate, "COMPILED", None)
    build = {True: " (mypyc-compiled)", False: " (pure Python)", None: ""}[compiled]
    return {
        "tlsgate": tlsgate.__version__ + build,
        "Python": platform.python_version(),
        "OpenSSL": ssl.OPENSSL_VERSION,
        "kernel": os.uname().release,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_signals()
    plan = Plan(
        args.minutes * 60, args.cycle, args.sample, args.load, args.judge, args.kinds, args.rest
    )
    meta = {
        "command": "bench/soak.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "machine": machine_info(),
        "versions": versions(),
        "plan": vars(plan),
        "seed": args.seed,
        "kinds": {k: v.what for k, v in KINDS.items()},
    }
    try:
        raw = run(plan, args.seed)
    except BenchError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nsoak: interrupted, every server stopped", file=sys.stderr)
        return 130
    result = soak_report.analyse(raw, plan.cycle, plan.judge)
    print(soak_report.text(result, meta))
    args.output_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.output_dir / f"soak-{stamp}.json"
    out.write_text(json.dumps({**meta, **result, "raw": raw}, indent=2, default=str) + "\n")
    print(f"results: {out}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
