"""``make attack``: slow and resource attacks against tlsgate and HAProxy (and nginx), measured.

What it answers (issue 8): while an attacker holds or churns connections -- slowloris
heads, slow POST bodies, slow readers, 10,000 idle connections (TLS and plain TCP), a
connection flood beyond the connection limit (and the same from one other address
under a per-client limit), a TLS handshake flood, descriptor exhaustion (EMFILE) -- do
well-behaved clients keep >= 80 % of their requests/s with a p99 within 2x, does the
proxy's memory stay bounded, does it survive EMFILE?

How it works: like ``make bench`` (``bench/run.py``), this process pins itself, the good
clients, the attacker and the backend nginx to the load core and each proxy to the proxy
core. For each attack, for each proxy in turn (tlsgate, HAProxy; nginx on request), a
fresh proxy is started with the attack's limits (``bench/attack_servers.py``:
production-like timeouts, ``max_connections`` / ``maxconn``, a low RLIMIT_NOFILE for
EMFILE), then:

1. **baseline**: the good clients run for ``--baseline`` seconds -- ``wrk -t2 -c20``
   keep-alive and, at the same time, ``wrk -t1 -c4 -H 'Connection: close'`` (a new
   connection and a resumed TLS handshake per request) -- each giving req/s and p99. wrk
   opens its connections when it starts, so during an attack the good clients are new
   arrivals, and its latency counts from the request's first byte: a wait in the accept
   queue or the handshake shows in req/s, not in p99;
2. the attacker (``bench/attack_client.py``: one asyncio process on raw non-blocking
   sockets, resuming TLS sessions) starts and reaches its strength (its connections open,
   or a flood running for 2 s);
3. **attack**: the good clients run again for ``--window`` seconds, while the proxy's RSS
   and descriptors (``/proc``, its whole process group) and its established connections
   and accept queue (``ss``) are sampled twice a second, and who used the CPUs is
   counted (the proxy, the attacker, the load side, and other jobs on this machine);
4. the attacker stops; a new client's time to its first 200 is taken (curl every 0.2 s),
   then the proxy's RSS and descriptors are read again, and the good clients run once
   more (**recovery**, ``--recovery`` seconds; EMFILE only with ``--quick``). For EMFILE,
   the proxy's busiest process's CPU is also sampled while the flood holds and after it
   stopped (a worker spinning on ``accept()`` would show ~100 %).

Each (attack, proxy) is judged against the issue's targets: keep-alive and new-connection
req/s >= 0.80x their baseline, p99 <= 2.0x, no errors for good clients, RSS growth <=
max(64 MiB, connections held x the attack's per-connection budget: 64 KiB, or 512 KiB for a
slow reader, twice tlsgate's 256 KiB write-buffer mark); the flood also that the proxy holds
no more connections than its limit; EMFILE instead that the recovery meets the req/s, p99
and error targets, a new client gets a 200 within 2 s of the flood's end, no process uses
10 % of a core afterwards, and the same processes are alive. One table is printed
(``bench/report.py``'s layout), then notes, and ``bench/results/attack-<time>.json`` (every
reading) and ``.md`` are written.

    .venv/bin/python bench/attack.py --help
    .venv/bin/python bench/attack.py --quick --only slowloris,slowpost --proxies tlsgate
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import attack_servers
import clients
import report
import run
from attack_servers import COLUMN, Limits
from clients import WrkResult
from common import (
    BENCH_DIR,
    RESULTS_DIR,
    BenchError,
    Certificate,
    Proc,
    ProcessSet,
    Unavailable,
    curl_probe,
    exit_on_signals,
    free_port,
    group_cpu_by_pid,
    group_cpu_seconds,
    group_pids,
    machine_busy_seconds,
    machine_info,
    missing_tools,
    own_cpu_seconds,
    pinned_self,
    raise_nofile_limit,
    wait_until,
    write_certificate,
)
from rows import Line, RowResult
from servers import BODY, Backend, start_backend

REQUIRED = ("nginx", "curl", "wrk", "openssl", "taskset", "prlimit", "ss")
PROXIES = ("tlsgate", "haproxy", "nginx")
MIB = 1 << 20
KIB = 1 << 10
# The targets.
MIN_RPS_RATIO = 0.80
MAX_P99_RATIO = 2.0
RSS_FLOOR = 64 * MIB  # growth always allowed (allocator arenas, caches)
SPIN_CPU = 0.10  # a process above this share of a core after the flood stopped: spinning
SERVE_AGAIN_S = 2.0  # EMFILE: a new client must get a 200 this soon after the flood ends
GOOD_KEEPALIVE = (2, 20)  # wrk threads, connections
GOOD_NEWCONN = (1, 4)
WRK_TIMEOUT = "10s"  # wrk's default 2 s would turn slow answers into errors, not latency


# --------------------------------------------------------------------------- settings


@dataclass
class Settings:
    baseline_s: float
    window_s: float
    warmup_s: float
    slow_connections: int  # slowloris, slow POST
    slowread_connections: int
    idle_connections: int  # idle (TLS), idle-tcp
    flood_connections: int  # slots of the connection flood
    flood_limit: int  # max_connections / maxconn during the flood
    handshake_rate: float  # per second (0: as fast as the in-flight cap allows)
    handshake_inflight: int
    emfile_nofile: int
    emfile_connections: int
    interval_s: float  # slowloris / slow POST: seconds between trickles
    big_size: int  # the slow readers' response
    recovery_s: float  # the good clients after the attack
    settle_s: float  # from the attacker's end to the "after" reading
    sample_s: float  # EMFILE: each CPU sample (flood holding, after it)
    emfile_ramp_s: float  # EMFILE: the flood's time to pile up before measuring


def settings_for(args: argparse.Namespace) -> Settings:
    q = args.quick
    return Settings(
        baseline_s=args.baseline or (2.0 if q else 6.0),
        window_s=args.window or (2.0 if q else 6.0),
        warmup_s=args.warmup if args.warmup is not None else (0.0 if q else 1.0),
        slow_connections=args.slow_connections or (300 if q else 2000),
        slowread_connections=args.slowread_connections or (100 if q else 1000),
        idle_connections=args.idle_connections or (1000 if q else 10_000),
        flood_connections=args.flood_connections or (1500 if q else 5000),
        flood_limit=args.flood_limit or (300 if q else 1000),
        handshake_rate=args.handshake_rate if args.handshake_rate is not None else 250.0,
        handshake_inflight=64,
        emfile_nofile=args.emfile_nofile,
        emfile_connections=max(args.emfile_nofile + 500, int(args.emfile_nofile * 1.5)),
        interval_s=3.0,
        big_size=64 * MIB,
        recovery_s=args.recovery or (2.0 if q else 3.0),
        settle_s=1.0 if q else 2.0,
        sample_s=1.0 if q else 2.0,
        emfile_ramp_s=3.0 if q else 6.0,
    )


# --------------------------------------------------------------------------- attacks


@dataclass(frozen=True)
class Attack:
    key: str
    title: Callable[[Settings], str]
    limits: Callable[[Settings], Limits]
    client: Callable[[Settings], list[str]]  # attack_client.py arguments
    budget: int  # bytes a held connection may cost (the RSS bound)
    ramp_s: float = 15.0  # how long the attacker may take to reach its strength (at most)
    emfile: bool = False
    body_backend: bool = False  # the proxies' backend reads request bodies in full first
    at_limit: bool = False  # judge that the proxy holds no more than its connection limit


DEFAULT_LIMIT = 12_000  # above 10,000 idle connections + the good clients
FLOOD_PER_CLIENT = 100  # flood-client: connections one address may hold


def _default(s: Settings) -> Limits:
    return Limits(DEFAULT_LIMIT)


def _flood_args(s: Settings) -> list[str]:
    return [
        "flood",
        f"--count={s.flood_connections}",
        "--hold=1",
        "--tls-fraction=0.5",
        f"--connect-concurrency={s.flood_connections}",
    ]


ATTACKS: dict[str, Attack] = {
    a.key: a
    for a in (
        Attack(
            "slowloris",
            lambda s: (
                f"slowloris: {s.slow_connections:,} TLS connections, a header line every "
                f"~{s.interval_s:g} s, the head never ends"
            ),
            _default,
            lambda s: [
                "slowloris",
                f"--count={s.slow_connections}",
                f"--interval={s.interval_s}",
            ],
            64 * KIB,
        ),
        Attack(
            "slowpost",
            lambda s: (
                f"slow POST: {s.slow_connections:,} TLS connections, a complete head "
                f"with Content-Length 100 MB, then 1 byte every ~{s.interval_s:g} s"
            ),
            _default,
            lambda s: ["slowpost", f"--count={s.slow_connections}", f"--interval={s.interval_s}"],
            64 * KIB,
            body_backend=True,
        ),
        Attack(
            "slowread",
            lambda s: (
                f"slow readers: {s.slowread_connections:,} TLS connections GET a "
                f"{s.big_size // MIB} MiB response, SO_RCVBUF 4 KiB, reading 32 bytes a second"
            ),
            _default,
            lambda s: [
                "slowread",
                f"--count={s.slowread_connections}",
                "--interval=1",
                "--read-bytes=32",
                "--rcvbuf=4096",
                "--path=/big",
            ],
            512 * KIB,
        ),
        Attack(
            "idle",
            lambda s: (
                f"{s.idle_connections:,} idle keep-alive TLS connections (one request "
                "each, then silent), held"
            ),
            _default,
            lambda s: ["idle", f"--count={s.idle_connections}", "--connect-concurrency=128"],
            64 * KIB,
            ramp_s=60.0,
        ),
        Attack(
            "idle-tcp",
            lambda s: (
                f"{s.idle_connections:,} idle plain TCP connections (no ClientHello), "
                "reopened when the proxy closes them"
            ),
            _default,
            lambda s: ["idle-tcp", f"--count={s.idle_connections}"],
            64 * KIB,
        ),
        Attack(
            "flood",
            lambda s: (
                f"connection flood beyond the limit: max_connections / maxconn "
                f"{s.flood_limit:,}; {s.flood_connections:,} slots connect as fast as they can, "
                "hold 1 s, close, again (half complete TLS, half send nothing)"
            ),
            lambda s: Limits(s.flood_limit),
            _flood_args,
            64 * KIB,
            at_limit=True,
        ),
        Attack(
            "flood-client",
            lambda s: (
                f"the same flood from one other address (127.0.0.2), with a per-client limit "
                f"of {FLOOD_PER_CLIENT} connections (tlsgate max_connections_per_client, "
                "HAProxy stick table, nginx limit_conn) on top of the flood's limit"
            ),
            lambda s: Limits(s.flood_limit, per_client=FLOOD_PER_CLIENT),
            lambda s: [*_flood_args(s), "--source=127.0.0.2"],
            64 * KIB,
            at_limit=True,
        ),
        Attack(
            "handshake",
            lambda s: (
                "TLS handshake flood: "
                + (f"{s.handshake_rate:g}/s" if s.handshake_rate else "unpaced")
                + f", up to {s.handshake_inflight} at once: a ClientHello, the server's whole "
                "first flight read (its ECDHE and ECDSA signature done), close"
            ),
            _default,
            lambda s: [
                "handshake",
                f"--count={s.handshake_inflight}",
                f"--rate={s.handshake_rate}",
            ],
            64 * KIB,
        ),
        Attack(
            "emfile",
            lambda s: (
                f"EMFILE: the proxy started with RLIMIT_NOFILE {s.emfile_nofile:,}; "
                f"{s.emfile_connections:,} idle TLS connections flood past it (reopened when "
                "shed); then it must serve again"
            ),
            lambda s: Limits(10_000, nofile=s.emfile_nofile),
            lambda s: ["idle", f"--count={s.emfile_connections}"],
            64 * KIB,
            emfile=True,
        ),
    )
}


# --------------------------------------------------------------------------- measuring


@dataclass
class Good:
    """One run of the good clients: keep-alive and new-connection wrk side by side."""

    keepalive: WrkResult | None = None
    newconn: WrkResult | None = None
    failure: str = ""

    @property
    def errors(self) -> int:
        return sum(r.errors for r in (self.keepalive, self.newconn) if r is not None)


@dataclass
class Phase:
    """The good clients over one measured interval, and who used the CPUs meanwhile."""

    good: Good
    wall_s: float = 0.0
    proxy_cpu_s: float = 0.0
    attacker_cpu_s: float = 0.0
    load_cpu_s: float = 0.0  # this process, the wrk runs, the backend(s)
    machine_cpu_s: float = 0.0  # every CPU's busy seconds

    @property
    def others(self) -> float:
        """CPUs other jobs on the machine kept busy (a shared machine: noise)."""
        rest = self.machine_cpu_s - self.proxy_cpu_s - self.attacker_cpu_s - self.load_cpu_s
        return max(0.0, rest) / self.wall_s if self.wall_s else 0.0

    @property
    def proxy_busy(self) -> float:
        return self.proxy_cpu_s / self.wall_s if self.wall_s else 0.0

    @property
    def per_cpu_s(self) -> float | None:
        """Good requests (both clients) per CPU second of the proxy.

        On a shared machine req/s follows the CPU the proxy got from the scheduler; this
        divides that out (what an attack costs the proxy still shows: fewer good
        requests per CPU second).
        """
        done = sum(r.requests for r in (self.good.keepalive, self.good.newconn) if r)
        return done / self.proxy_cpu_s if self.proxy_cpu_s > 0.05 else None


@dataclass
class Reading:
    """The proxy's state at one moment."""

    t: float
    rss: int
    fds: int
    established: int  # TCP connections on its port, proxy side (accepted or queued)
    queued: int  # of which in the listening socket's accept queue (not accepted yet)
    syn_recv: int
    tcp_mem_pages: int  # the whole machine's TCP buffer memory (/proc/net/sockstat)


class Watch:
    """Reads a proxy's RSS and descriptors (its process group) and its connections (``ss``)."""

    def __init__(self, proc: Proc, port: int) -> None:
        self.proc = proc
        self.port = port
        self.start = time.monotonic()

    def read(self) -> Reading:
        out = subprocess.run(
            ["ss", "-Htan", f"( sport = :{self.port} )"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        established = queued = syn_recv = 0
        for line in out.splitlines():
            fields = line.split()
            if not fields:
                continue
            if fields[0] == "ESTAB":
                established += 1
            elif fields[0] == "SYN-RECV":
                syn_recv += 1
            elif fields[0] == "LISTEN" and len(fields) > 1 and fields[1].isdigit():
                queued += int(fields[1])
        return Reading(
            t=round(time.monotonic() - self.start, 2),
            rss=self.proc.rss_bytes(),
            fds=self.proc.fd_count(),
            established=established,
            queued=queued,
            syn_recv=syn_recv,
            tcp_mem_pages=tcp_mem_pages(),
        )


def tcp_mem_pages() -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/net/sockstat").read_text().splitlines():
            if line.startswith("TCP:"):
                fields = line.split()
                return int(fields[fields.index("mem") + 1])
    return 0


def wrk_argv(url: str, seconds: float, threads: int, conns: int, *, close: bool) -> list[str]:
    argv = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--latency"]
    argv += ["--timeout", WRK_TIMEOUT]
    if close:
        argv += ["-H", "Connection: close"]
    return [*argv, url]


def good_clients(
    port: int, seconds: float, watch: Watch | None, readings: list[Reading] | None = None
) -> Good:
    """Both good clients for ``seconds``, sampling ``watch`` every half second meanwhile."""
    url = f"https://127.0.0.1:{port}/"
    argvs = [
        wrk_argv(url, seconds, *GOOD_KEEPALIVE, close=False),
        wrk_argv(url, seconds, *GOOD_NEWCONN, close=True),
    ]
    procs = [
        subprocess.Popen(a, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for a in argvs
    ]
    deadline = time.monotonic() + seconds + 30
    try:
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if watch is not None and readings is not None:
                readings.append(watch.read())
            time.sleep(0.5)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    good = Good()
    for i, p in enumerate(procs):
        stdout, stderr = p.communicate()
        try:
            result = clients.parse_wrk(stdout)
        except BenchError:
            good.failure += f"wrk {' '.join(argvs[i][1:3])}: exit {p.returncode} {stderr[-200:]}"
            continue
        if i == 0:
            good.keepalive = result
        else:
            good.newconn = result
    return good


def measured(
    env: Env,
    proc: Proc,
    port: int,
    seconds: float,
    attacker: Attacker | None = None,
    watch: Watch | None = None,
    readings: list[Reading] | None = None,
) -> Phase:
    """:func:`good_clients` under a CPU account: proxy, attacker, load side, machine."""

    def load() -> float:
        return own_cpu_seconds() + sum(p.cpu_seconds() for p in env.backends)

    def attack_cpu() -> float:
        return attacker.cpu_seconds() if attacker is not None else 0.0

    t0, p0, a0, l0 = time.monotonic(), proc.cpu_seconds(), attack_cpu(), load()
    m0 = machine_busy_seconds()
    good = good_clients(port, seconds, watch, readings)
    return Phase(
        good=good,
        wall_s=time.monotonic() - t0,
        proxy_cpu_s=proc.cpu_seconds() - p0,
        attacker_cpu_s=attack_cpu() - a0,
        load_cpu_s=load() - l0,
        machine_cpu_s=machine_busy_seconds() - m0,
    )


def busiest_cpu(pgid: int, seconds: float) -> tuple[float, dict[int, float]]:
    """The busiest process's share of a core over ``seconds``, and every process's."""
    before = group_cpu_by_pid(pgid)
    time.sleep(seconds)
    after = group_cpu_by_pid(pgid)
    shares = {pid: (cpu - before.get(pid, 0.0)) / seconds for pid, cpu in after.items()}
    return (max(shares.values()) if shares else 0.0), shares


LOG_PATTERNS = {
    "traceback": re.compile(r"Traceback"),
    "emfile": re.compile(r"Too many open files|EMFILE|FD limit|ulimit", re.IGNORECASE),
    "max_connections": re.compile(r"max_connections|maxconn", re.IGNORECASE),
    "accept_failed": re.compile(r"accept\S* failed", re.IGNORECASE),
    "server_ejected": re.compile(r"ejected|is DOWN|no server available", re.IGNORECASE),
}


# HAProxy's warning at every start with maxconn above half the fd limit ('no strict-limits').
EXPECTED_WARNINGS = re.compile(r"Cannot raise FD limit|too low for maxconn")


def log_counts(proc: Proc) -> tuple[dict[str, int], list[str]]:
    """How often each of :data:`LOG_PATTERNS` appears in the proxy's logs; first lines of each."""
    counts = dict.fromkeys(LOG_PATTERNS, 0)
    firsts: list[str] = []
    for path in [proc.log_path, *proc.extra_logs]:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            if EXPECTED_WARNINGS.search(line):
                continue
            for name, pattern in LOG_PATTERNS.items():
                if pattern.search(line):
                    text = f"{path.name}: {line.strip()[:200]}"
                    if counts[name] == 0 and text not in firsts:
                        firsts.append(text)
                    counts[name] += 1
    return counts, firsts


# --------------------------------------------------------------------------- one run


@dataclass
class Outcome:
    """One attack against one proxy: everything measured, and the verdicts."""

    attack: str
    proxy: str
    limits: dict[str, Any] = field(default_factory=dict)
    baseline: Phase | None = None
    under: Phase | None = None
    recovery: Phase | None = None  # after the attack (every attack unless --quick)
    attacker_ready: dict[str, Any] = field(default_factory=dict)  # ready.json
    attacker_end: dict[str, Any] = field(default_factory=dict)  # status.json, end of window
    attacker_final: dict[str, Any] = field(default_factory=dict)  # final.json
    before: Reading | None = None
    after: Reading | None = None
    readings: list[Reading] = field(default_factory=list)  # ramp + window
    serves_after_s: float | None = None  # from the attacker's end to a new client's 200
    codes_after: dict[str, int] = field(default_factory=dict)  # what that client got first
    phases: dict[str, float] = field(default_factory=dict)  # wall seconds of each phase
    cpu_holding: float | None = None  # EMFILE: busiest process while the flood holds
    cpu_after: float | None = None  # EMFILE: busiest process once it stopped
    pids_before: list[int] = field(default_factory=list)
    pids_after: list[int] = field(default_factory=list)
    alive_after: bool = True
    logs: dict[str, int] = field(default_factory=dict)
    log_lines: list[str] = field(default_factory=list)
    rss_bound: int = 0
    checks: dict[str, bool | None] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0

    def peak(self, get: Callable[[Reading], int]) -> int:
        return max((get(r) for r in self.readings), default=0)

    @property
    def held_peak(self) -> int:
        """Attack connections the proxy held at most (accepted, good clients' left out)."""
        good = GOOD_KEEPALIVE[1] + GOOD_NEWCONN[1]
        return max((max(0, r.established - r.queued - good) for r in self.readings), default=0)


@dataclass
class Env:
    settings: Settings
    ps: ProcessSet
    workdir: Path
    backend: Backend
    body_backend_port: int | None  # the nginx that reads bodies first (slow POST)
    backends: list[Proc]  # both backends: their CPU is the load side's
    cert: Certificate
    proxy_cpus: str | None
    recovery: bool  # measure the good clients again after every attack


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def ramp_seconds(attack: Attack, s: Settings) -> float:
    """How long the attacker may take to reach its strength (EMFILE: never does)."""
    return s.emfile_ramp_s if attack.emfile else attack.ramp_s


class Attacker:
    """``attack_client.py`` as a server of the :class:`ProcessSet`: started, awaited, stopped."""

    def __init__(self, env: Env, attack: Attack, port: int) -> None:
        self.env = env
        self.status = Path(tempfile.mkdtemp(prefix="attacker-", dir=env.workdir))
        argv = [
            sys.executable,
            str(BENCH_DIR / "attack_client.py"),
            *attack.client(env.settings),
            f"--port={port}",
            f"--status-dir={self.status}",
            f"--ramp-timeout={ramp_seconds(attack, env.settings)}",
        ]
        # no cpus: it inherits this process's pinning to the load core
        self.proc = env.ps.start("attacker", argv)

    def wait_ready(self, timeout: float, watch: Watch, readings: list[Reading]) -> dict[str, Any]:
        """Wait for ready.json, sampling the proxy meanwhile.

        Raises:
            BenchError: the attacker exited or was not ready in time.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready = read_json(self.status / "ready.json")
            if ready:
                return ready
            if not self.proc.alive():
                raise BenchError(f"the attacker exited:\n{self.proc.log_tail()}")
            readings.append(watch.read())
            time.sleep(0.5)
        raise BenchError(f"the attacker was not ready after {timeout:.0f} s")

    def now(self) -> dict[str, Any]:
        return read_json(self.status / "status.json")

    def cpu_seconds(self) -> float:
        return group_cpu_seconds(self.proc.pgid)

    def stop(self) -> dict[str, Any]:
        """SIGTERM: the attacker closes its connections and writes final.json.

        It may take a while on a loaded machine (thousands of sockets to close, little
        CPU): it gets 20 s before the process set kills it.
        """
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.popen.wait(timeout=20)
        self.env.ps.stop(self.proc)
        return read_json(self.status / "final.json")


def time_to_serve(port: int, timeout: float) -> tuple[float | None, dict[str, int]]:
    """Seconds until a new connection's ``GET /`` gets a 200 (curl every 0.2 s); codes seen."""
    url = f"https://127.0.0.1:{port}/"
    start = time.monotonic()
    seen: dict[str, int] = {}
    while time.monotonic() - start < timeout:
        out = subprocess.run(
            ["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2", url],
            capture_output=True,
            text=True,
            check=False,
        )
        code = out.stdout.strip() or "000"
        seen[code] = seen.get(code, 0) + 1
        if code == "200":
            return round(time.monotonic() - start, 2), seen
        time.sleep(0.2)
    return None, seen


class Timer:
    """Wall seconds of each phase of a run, for the JSON (where the time budget goes)."""

    def __init__(self, into: dict[str, float]) -> None:
        self.into = into
        self.last = time.monotonic()

    def mark(self, name: str) -> None:
        now = time.monotonic()
        self.into[name] = round(now - self.last, 2)
        self.last = now


def run_one(env: Env, attack: Attack, kind: str) -> Outcome:
    """Start ``kind`` with the attack's limits, measure baseline / attack / recovery, stop."""
    s = env.settings
    limits = attack.limits(s)
    out = Outcome(attack.key, kind, limits=dataclasses.asdict(limits))
    timer = Timer(out.phases)
    port = free_port()
    backend_port = env.backend.http_port
    if attack.body_backend:
        if env.body_backend_port is None:
            raise BenchError("the body-reading backend was not started")
        backend_port = env.body_backend_port
    start = attack_servers.STARTERS[kind]
    proc = start(env.ps, env.workdir, port, backend_port, env.cert, limits, env.proxy_cpus)
    try:
        wait_until(proc, curl_probe(f"https://127.0.0.1:{port}/", BODY), f"{kind} on {port}")
        timer.mark("start")
        if s.warmup_s > 0:
            good_clients(port, s.warmup_s, None)
        out.baseline = measured(env, proc, port, s.baseline_s)
        timer.mark("baseline")
        watch = Watch(proc, port)
        out.before = watch.read()
        out.pids_before = sorted(group_pids(proc.pgid))
        attacker = Attacker(env, attack, port)
        try:
            ramp = ramp_seconds(attack, s) + 30
            out.attacker_ready = attacker.wait_ready(ramp, watch, out.readings)
            timer.mark("ramp")
            if attack.emfile:
                out.cpu_holding, _ = busiest_cpu(proc.pgid, s.sample_s)
            out.under = measured(env, proc, port, s.window_s, attacker, watch, out.readings)
            out.attacker_end = attacker.now()
            timer.mark("window")
        finally:
            out.attacker_final = attacker.stop()
        timer.mark("attacker stop")
        out.serves_after_s, out.codes_after = time_to_serve(port, 20.0)
        time.sleep(max(0.0, s.settle_s - (out.serves_after_s or 0.0)))
        out.after = watch.read()
        if attack.emfile:
            out.cpu_after, _ = busiest_cpu(proc.pgid, s.sample_s)
        if attack.emfile or env.recovery:
            out.recovery = measured(env, proc, port, s.recovery_s)
        out.pids_after = sorted(group_pids(proc.pgid))
        out.alive_after = proc.alive()
        timer.mark("after")
    finally:
        env.ps.stop(proc)
        timer.mark("proxy stop")
        out.logs, out.log_lines = log_counts(proc)
    judge(out, attack)
    return out


# --------------------------------------------------------------------------- verdicts


def ratio(new: float | None, old: float | None) -> float | None:
    if new is None or old is None or old <= 0:
        return None
    return new / old


def _wrk(g: Phase | None, which: str) -> WrkResult | None:
    if g is None:
        return None
    return g.good.keepalive if which == "keepalive" else g.good.newconn


def rps(g: Phase | None, which: str) -> float | None:
    r = _wrk(g, which)
    return None if r is None else r.requests_per_sec


def p99(g: Phase | None, which: str) -> float | None:
    r = _wrk(g, which)
    return None if r is None or r.requests == 0 else r.p99_ms


def errors(g: Phase | None, which: str) -> int | None:
    r = _wrk(g, which)
    return None if r is None else r.errors


def _at_least(x: float | None, bound: float) -> bool | None:
    return None if x is None else x >= bound


def _at_most(x: float | None, bound: float) -> bool | None:
    return None if x is None else x <= bound


def client_checks(out: Outcome, g: Phase | None, prefix: str) -> dict[str, bool | None]:
    """The good clients' targets for ``g`` (the attack window, or the recovery)."""
    checks: dict[str, bool | None] = {}
    for which in ("keepalive", "newconn"):
        rate = ratio(rps(g, which), rps(out.baseline, which))
        lat = ratio(p99(g, which), p99(out.baseline, which))
        checks[f"{prefix}{which} req/s >= {MIN_RPS_RATIO:.2f}x"] = _at_least(rate, MIN_RPS_RATIO)
        checks[f"{prefix}{which} p99 <= {MAX_P99_RATIO:g}x"] = _at_most(lat, MAX_P99_RATIO)
        errs = errors(g, which)
        checks[f"{prefix}{which} no errors"] = None if errs is None else errs == 0
    return checks


def judge(out: Outcome, attack: Attack) -> None:
    out.rss_bound = max(RSS_FLOOR, out.held_peak * attack.budget)
    rss_growth = (
        out.peak(lambda r: r.rss) - out.before.rss
        if out.before is not None and out.readings
        else None
    )
    if attack.emfile:
        out.checks = client_checks(out, out.recovery, "recovery ")
        out.checks[f"serves within {SERVE_AGAIN_S:g} s of the flood's end"] = (
            out.serves_after_s is not None and out.serves_after_s <= SERVE_AGAIN_S
        )
        out.checks["no spinning after the flood"] = _at_most(out.cpu_after, SPIN_CPU)
        out.checks["same processes, alive"] = out.alive_after and out.pids_before == out.pids_after
    else:
        out.checks = client_checks(out, out.under, "")
    if attack.at_limit:
        limit = int(out.limits.get("max_connections", 0))
        out.checks["holds <= its connection limit"] = out.held_peak <= limit * 1.05 + 10
    out.checks["RSS bounded"] = _at_most(
        None if rss_growth is None else float(rss_growth), float(out.rss_bound)
    )


def met(out: Outcome | None) -> str:
    if out is None:
        return ""
    if out.error is not None:
        return "failed"
    values = list(out.checks.values())
    if any(v is False for v in values):
        return "no"
    return "n/a" if any(v is None for v in values) else "yes"


# --------------------------------------------------------------------------- the table


def _num(x: float | None, digits: int = 0) -> str:
    return "-" if x is None or x != x else f"{x:,.{digits}f}"


def _pair(old: float | None, new: float | None, digits: int) -> str:
    r = ratio(new, old)
    tail = f" ({r:.2f}x)" if r is not None else ""
    return f"{_num(old, digits)} → {_num(new, digits)}{tail}"


def _mib(x: int | None) -> str:
    return "-" if x is None else f"{x / MIB:,.0f}"


def _verdicts(outs: dict[str, Outcome], keys: Sequence[str]) -> str:
    """'tlsgate yes, HAProxy no' over the checks named ``keys`` (a prefix match)."""
    parts = []
    for kind, out in outs.items():
        if out.error is not None:
            parts.append(f"{COLUMN[kind]} failed")
            continue
        vals = [v for k, v in out.checks.items() if any(k.startswith(p) for p in keys)]
        if not vals:
            continue
        word = "no" if any(v is False for v in vals) else "n/a" if None in vals else "yes"
        parts.append(f"{COLUMN[kind]} {word}")
    return ", ".join(parts)


def _line(
    row: RowResult,
    label: str,
    outs: dict[str, Outcome],
    cell: Callable[[Outcome], str],
    target: str = "",
    checks: Sequence[str] = (),
) -> None:
    line = Line(label, target=target)
    for kind, out in outs.items():
        line.cells[COLUMN[kind]] = "failed" if out.error is not None else cell(out)
    if checks:
        line.met = _verdicts(outs, checks)
    row.lines.append(line)


def attack_row(attack: Attack, s: Settings, outs: dict[str, Outcome]) -> RowResult:
    """One attack's block of the table: a line per figure, the proxies side by side."""
    row = RowResult(attack.key, attack.title(s))
    window = "recovery" if attack.emfile else "attack"
    pre = "recovery " if attack.emfile else ""

    def good(o: Outcome) -> Phase | None:
        return o.recovery if attack.emfile else o.under

    for which, label in (("keepalive", "keep-alive"), ("newconn", "new-conn")):

        def rate_cell(o: Outcome, w: str = which) -> str:
            return _pair(rps(o.baseline, w), rps(good(o), w), 0)

        def p99_cell(o: Outcome, w: str = which) -> str:
            return _pair(p99(o.baseline, w), p99(good(o), w), 1)

        _line(
            row,
            f"{label} req/s: baseline → {window}",
            outs,
            rate_cell,
            f">= {MIN_RPS_RATIO:.2f}x",
            [f"{pre}{which} req/s"],
        )
        _line(
            row,
            f"{label} p99 ms: baseline → {window}",
            outs,
            p99_cell,
            f"<= {MAX_P99_RATIO:g}x",
            [f"{pre}{which} p99"],
        )
    _line(
        row,
        f"good-client errors ({window}): keep-alive / new-conn",
        outs,
        lambda o: f"{_num(errors(good(o), 'keepalive'))} / {_num(errors(good(o), 'newconn'))}",
        "0",
        [f"{pre}keepalive no errors", f"{pre}newconn no errors"],
    )
    if attack.emfile:
        _line(
            row,
            "under the flood: keep-alive, new-conn req/s (errors)",
            outs,
            lambda o: f"{_served(o.under, 'keepalive')}, {_served(o.under, 'newconn')}",
        )
        _line(
            row,
            "after the flood: a new client's first 200 (codes before)",
            outs,
            lambda o: (
                f"{_num(o.serves_after_s, 1)} s"
                + (f" ({_codes(o.codes_after)})" if len(o.codes_after) > 1 else "")
            ),
            f"<= {SERVE_AGAIN_S:g} s",
            ["serves within"],
        )
        _line(
            row,
            "log lines: EMFILE / backend server ejected",
            outs,
            lambda o: f"{_num(o.logs.get('emfile'))} / {_num(o.logs.get('server_ejected'))}",
        )
        _line(
            row,
            "busiest process CPU: flood holding / after it",
            outs,
            lambda o: f"{_num(_pct(o.cpu_holding))} % / {_num(_pct(o.cpu_after))} %",
            f"after < {SPIN_CPU:.0%}",
            ["no spinning"],
        )
        _line(
            row,
            "processes: same pids, alive",
            outs,
            lambda o: (
                f"{'yes' if o.pids_before == o.pids_after else 'no'}, "
                f"{'yes' if o.alive_after else 'no'}"
            ),
            "yes",
            ["same processes"],
        )
    _line(
        row,
        "attack conns: attacker open / proxy holds (peak) / queued",
        outs,
        lambda o: (
            f"{_num(o.attacker_end.get('open_now'))} / {_num(o.held_peak)} / "
            f"{_num(o.peak(lambda r: r.queued))}"
        ),
        f"holds <= limit ({_num(attack.limits(s).max_connections)})" if attack.at_limit else "",
        ["holds <="] if attack.at_limit else [],
    )
    _line(
        row,
        "proxy RSS MiB: before / peak / after",
        outs,
        lambda o: (
            f"{_mib(o.before.rss if o.before else None)} / {_mib(o.peak(lambda r: r.rss))}"
            f" / {_mib(o.after.rss if o.after else None)}"
        ),
        f"growth <= max(64 MiB, held x {attack.budget // KIB} KiB)",
        ["RSS bounded"],
    )
    _line(
        row,
        "proxy RSS growth per connection held, KiB",
        outs,
        lambda o: _num(
            (o.peak(lambda r: r.rss) - o.before.rss) / o.held_peak / KIB
            if o.before is not None and o.held_peak > 0
            else None
        ),
    )
    _line(
        row,
        "proxy fds: before / peak / after",
        outs,
        lambda o: (
            f"{_num(o.before.fds if o.before else None)} / {_num(o.peak(lambda r: r.fds))}"
            f" / {_num(o.after.fds if o.after else None)}"
        ),
    )
    if not attack.emfile and any(o.recovery is not None for o in outs.values()):
        _line(
            row,
            "after the attack: keep-alive, new-conn req/s (ratio)",
            outs,
            lambda o: (
                f"{_num(rps(o.recovery, 'keepalive'))} "
                f"({_num(ratio(rps(o.recovery, 'keepalive'), rps(o.baseline, 'keepalive')), 2)}x), "
                f"{_num(rps(o.recovery, 'newconn'))} "
                f"({_num(ratio(rps(o.recovery, 'newconn'), rps(o.baseline, 'newconn')), 2)}x)"
            ),
        )
    _line(
        row,
        f"good req per proxy CPU-s: baseline → {window}",
        outs,
        lambda o: _pair(_per_cpu(o.baseline), _per_cpu(good(o)), 0),
    )
    _line(
        row,
        "proxy busy %: baseline / attack; attacker CPU s",
        outs,
        lambda o: (
            f"{_num(_pct(o.baseline.proxy_busy if o.baseline else None))} / "
            f"{_num(_pct(o.under.proxy_busy if o.under else None))}; "
            f"{_num(o.under.attacker_cpu_s if o.under else None, 1)}"
        ),
    )
    _line(
        row,
        "other jobs' CPUs (noise): baseline / attack",
        outs,
        lambda o: (
            f"{_num(o.baseline.others if o.baseline else None, 2)} / "
            f"{_num(o.under.others if o.under else None, 2)}"
        ),
    )
    for kind, out in outs.items():
        notes_for(row, attack, kind, out)
    return row


def _per_cpu(g: Phase | None) -> float | None:
    return None if g is None else g.per_cpu_s


def _codes(codes: dict[str, int]) -> str:
    return ", ".join(f"{k} x{v}" for k, v in codes.items() if k != "200")


def _served(g: Phase | None, which: str) -> str:
    """'850 req/s (12 errors)', or 'no answer' when wrk completed no request at all."""
    r = _wrk(g, which)
    if r is None:
        return "-"
    if r.requests == 0:
        return "no answer"
    return f"{_num(r.requests_per_sec)} req/s ({r.errors:,} errors)"


def _pct(x: float | None) -> float | None:
    return None if x is None else 100 * x


def notes_for(row: RowResult, attack: Attack, kind: str, out: Outcome) -> None:
    name = COLUMN[kind]
    if out.error is not None:
        row.notes.append(f"{name}: {out.error}")
        return
    ready, final = out.attacker_ready, out.attacker_final
    if ready and not ready.get("reached", True):
        row.notes.append(
            f"{name}: the attacker reached {ready.get('open_now', 0):,} of "
            f"{ready.get('slots', 0):,} connections within {ready.get('ready_after_s', 0)} s"
        )
    if final:
        lifetimes = sorted(final.get("lifetimes", []))
        life = (
            f", median lifetime {lifetimes[len(lifetimes) // 2]:.1f} s"
            if lifetimes and final.get("closed_by_server")
            else ""
        )
        fails = ", ".join(f"{k} {v:,}" for k, v in final.get("failures", {}).items())
        statuses = ", ".join(f"{k}: {v:,}" for k, v in sorted(final.get("statuses", {}).items()))
        answered = ""
        if attack.key == "handshake" and final.get("seconds"):
            done = final.get("answered", 0)
            answered = f", {done:,} server flights read ({done / final['seconds']:.0f}/s)"
        row.notes.append(
            f"{name}: attacker {final.get('attempts', 0):,} connections started, "
            f"{final.get('tls_ok', 0):,} TLS ({final.get('resumed', 0):,} resumed){answered}, "
            f"{final.get('closed_by_server', 0):,} closed by the proxy{life}"
            + (f"; responses {statuses}" if statuses else "")
            + (f"; failed: {fails}" if fails else "")
            + f"; attacker CPU {final.get('cpu_s', 0):.1f} s in {final.get('seconds', 0):.0f} s"
        )
    noisy = [p.others for p in (out.baseline, out.under) if p is not None]
    if noisy and max(noisy) > 0.3:
        row.notes.append(
            f"{name}: other jobs on this shared machine kept {max(noisy):.1f} CPUs busy "
            "during a measurement: the ratios are noisy"
        )
    if out.logs.get("traceback"):
        row.notes.append(f"{name}: {out.logs['traceback']} Python traceback(s) in its logs")
    for text in out.log_lines[:3]:
        row.notes.append(f"{name} log: {text}")
    for g, when in ((out.baseline, "baseline"), (out.under, "attack"), (out.recovery, "recovery")):
        if g is not None and g.good.failure:
            row.notes.append(f"{name} {when}: {g.good.failure}")


# --------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/attack.py",
        description="Slow and resource attacks against tlsgate and HAProxy (nginx on request): "
        "good clients' req/s and p99 against their baseline, the proxy's memory, "
        "descriptors and connections, EMFILE survival. Attacks: " + ", ".join(ATTACKS) + ".",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run, not a result (~3 min): 2 s windows, fewer connections",
    )
    p.add_argument(
        "--only", default=",".join(ATTACKS), help="comma-separated attacks (default: all)"
    )
    p.add_argument(
        "--proxies",
        default="tlsgate,haproxy",
        help="comma-separated: tlsgate, haproxy, nginx (default tlsgate,haproxy)",
    )
    p.add_argument("--baseline", type=float, help="seconds of baseline (default 6, --quick 2)")
    p.add_argument("--window", type=float, help="seconds under attack (default 6, --quick 2)")
    p.add_argument("--warmup", type=float, help="seconds of warm-up (default 1, --quick 0)")
    p.add_argument("--recovery", type=float, help="seconds after the attack (default 3, quick 2)")
    p.add_argument("--slow-connections", type=int, help="slowloris/slowpost (2000; quick 300)")
    p.add_argument("--slowread-connections", type=int, help="slow readers (1000; quick 100)")
    p.add_argument("--idle-connections", type=int, help="idle, idle-tcp (10000; quick 1000)")
    p.add_argument("--flood-connections", type=int, help="flood slots (5000; quick 1500)")
    p.add_argument("--flood-limit", type=int, help="max_connections in the flood (1000; quick 300)")
    p.add_argument("--handshake-rate", type=float, help="handshakes/s, 0: unpaced (default 250)")
    p.add_argument("--emfile-nofile", type=int, default=1024, help="proxy RLIMIT_NOFILE (1024)")
    p.add_argument(
        "--output-dir", type=Path, default=RESULTS_DIR, help="where the JSON and Markdown go"
    )
    args = p.parse_args(argv)
    args.only = [a.strip() for a in args.only.split(",") if a.strip()]
    unknown = [a for a in args.only if a not in ATTACKS]
    if unknown or not args.only:
        p.error(f"unknown attack(s) {', '.join(unknown)}; attacks: {', '.join(ATTACKS)}")
    args.proxies = [x.strip() for x in args.proxies.split(",") if x.strip()]
    bad = [x for x in args.proxies if x not in PROXIES]
    if bad or not args.proxies:
        p.error(f"unknown proxy(s) {', '.join(bad)}; proxies: {', '.join(PROXIES)}")
    args.settings = settings_for(args)
    s = args.settings
    if s.window_s < 1 or s.baseline_s < 1 or s.emfile_nofile < 256:
        p.error("need --window >= 1, --baseline >= 1, --emfile-nofile >= 256")
    return args


def run_all(args: argparse.Namespace) -> list[tuple[Attack, dict[str, Outcome]]]:
    missing = missing_tools(
        REQUIRED + tuple(attack_servers.TOOLS[k] for k in args.proxies if k != "tlsgate")
    )
    if missing:
        raise Unavailable(f"missing tools: {', '.join(missing)} (run: make system-deps)")
    limit = raise_nofile_limit()
    if limit < 60_000:
        print(f"attack: RLIMIT_NOFILE is {limit:,}: 10,000 idle connections need ~2x on each side")
    s: Settings = args.settings
    proxy_cpus, load_cpus, _, _ = run.cpu_split()
    results: list[tuple[Attack, dict[str, Outcome]]] = []
    with (
        tempfile.TemporaryDirectory(prefix="tlsgate-attack-") as tmp,
        ProcessSet(Path(tmp)) as ps,
        pinned_self(load_cpus),
    ):
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)
        big = workdir / "big.bin"
        with big.open("wb") as f:
            f.truncate(s.big_size)  # sparse: the backend sends zeros from the page cache
        backend = start_backend(
            ps,
            workdir,
            free_port(),
            free_port(),
            big,
            ",".join(map(str, load_cpus)) if load_cpus else None,
        )
        wait_until(
            backend.proc, curl_probe(f"http://127.0.0.1:{backend.http_port}/", BODY), "backend"
        )
        body_port = None
        backends = [backend.proc]
        if any(ATTACKS[k].body_backend for k in args.only):
            body_port = free_port()
            body = attack_servers.start_body_backend(
                ps,
                workdir,
                body_port,
                backend.http_port,
                ",".join(map(str, load_cpus or ())) or None,
            )
            wait_until(body, curl_probe(f"http://127.0.0.1:{body_port}/", BODY), "body backend")
            backends.append(body)
        env = Env(
            settings=s,
            ps=ps,
            workdir=workdir,
            backend=backend,
            body_backend_port=body_port,
            backends=backends,
            cert=write_certificate(workdir, "ecdsa-p256"),
            proxy_cpus=proxy_cpus,
            recovery=not args.quick,
        )
        for key in args.only:
            attack = ATTACKS[key]
            outs: dict[str, Outcome] = {}
            for kind in args.proxies:
                print(f"{key}: {kind} ...", flush=True)
                started = time.monotonic()
                try:
                    out = run_one(env, attack, kind)
                except BenchError as exc:
                    text = " | ".join(ln for ln in str(exc).splitlines() if ln.strip())
                    out = Outcome(key, kind, error=text[:500])
                except Exception as exc:  # reported, and the other runs go on
                    traceback.print_exc()
                    out = Outcome(key, kind, error=f"{type(exc).__name__}: {exc}"[:300])
                out.seconds = round(time.monotonic() - started, 1)
                print(f"{key}: {kind}: {summary(out, attack)} ({out.seconds:.0f} s)", flush=True)
                outs[kind] = out
            results.append((attack, outs))
    return results


def summary(out: Outcome, attack: Attack) -> str:
    if out.error is not None:
        return f"failed: {out.error}"
    g = out.recovery if attack.emfile else out.under
    return (
        f"keep-alive {_pair(rps(out.baseline, 'keepalive'), rps(g, 'keepalive'), 0)} req/s, "
        f"p99 {_pair(p99(out.baseline, 'keepalive'), p99(g, 'keepalive'), 1)} ms; "
        f"new-conn {_pair(rps(out.baseline, 'newconn'), rps(g, 'newconn'), 0)} req/s; "
        f"held {out.held_peak:,}; met: {met(out)}"
    )


def markdown(table: str, notes: list[str], meta: dict[str, Any]) -> str:
    m = meta["machine"]
    lines = [
        f"# `make attack` run of {m['date']}",
        "",
        f"`{meta['command']}` on `{m['host']}`: {m['cpus']} CPUs ({m['cpu_model']}), load "
        f"average at start {', '.join(f'{x:.2f}' for x in m['load_average'])}; "
        f"{meta['cpu_split']}; {meta['seconds']:.0f} s.",
        "",
        "Versions: " + "; ".join(f"{k} `{v}`" for k, v in meta["versions"].items()) + ".",
        "",
        "```",
        table,
        "```",
        "",
    ]
    if notes:
        lines += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
    lines += ["Proxy configuration:", ""]
    lines += [f"- **{k}**: {v}" for k, v in meta["knobs"].items()]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_signals()
    started = time.monotonic()
    meta: dict[str, Any] = {
        "benchmark": "make attack",
        "command": "bench/attack.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "machine": machine_info(),
        "versions": run.versions(),
        "settings": dataclasses.asdict(args.settings),
        "attacks": args.only,
        "proxies": args.proxies,
        "cpu_split": run.cpu_split()[3] + "; the attacker on the load core too",
        "knobs": attack_servers.KNOBS,
        "targets": {
            "req/s ratio": f">= {MIN_RPS_RATIO}",
            "p99 ratio": f"<= {MAX_P99_RATIO}",
            "RSS growth": "<= max(64 MiB, connections held x the attack's per-connection budget)",
            "EMFILE": f"recovery within the same bounds, no process above {SPIN_CPU:.0%} CPU "
            "after the flood, the same processes alive",
        },
    }
    try:
        results = run_all(args)
    except Unavailable as exc:
        print(f"attack: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nattack: interrupted, every server stopped", file=sys.stderr)
        return 130
    meta["seconds"] = round(time.monotonic() - started, 1)
    rows = [attack_row(a, args.settings, outs) for a, outs in results]
    table = report.text_table(rows)
    notes = report.notes_text(rows)
    print()
    print(table)
    if notes:
        print("\nnotes:")
        for n in notes:
            print(f"  - {n}")
    print("\n" + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()))
    print(f"{meta['cpu_split']}; {meta['seconds']:.0f} s in all")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.output_dir / f"attack-{stamp}"
    data = {
        **meta,
        "results": [
            {
                "attack": a.key,
                "title": a.title(args.settings),
                "runs": {
                    k: {**dataclasses.asdict(o), "met": met(o), "held_peak": o.held_peak}
                    for k, o in outs.items()
                },
            }
            for a, outs in results
        ],
        "table": [dataclasses.asdict(r) for r in rows],
    }
    out.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(table, notes, meta))
    print(f"results: {out}.json, {out}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
