"""The rows of ``make bench``: what each one starts, measures and judges.

How it works: an :class:`Env` holds what every row shares -- the backend
nginx, the certificates, the CPU split (the proxy on one core, the backend,
the clients and this process on another) and the settings. A row is a
function ``Env -> RowResult``. Most rows call :func:`interleave`: for each
round, each target in turn is started on a free port (pinned to the proxy
core), probed until it answers, warmed up, measured under a
:class:`common.CpuMeter`, and stopped, so only one proxy runs at a time and
the targets alternate (A B C A B C ...). Each measurement is a
:class:`Sample`: the row's figure, the units of work done (requests,
handshakes, connections, gigabytes) for the CPU-per-unit figure, the proxy's
and the load side's CPU seconds, latency percentiles when the client gives
them.

A row then reduces its samples to medians (over rounds) and ratios (the
median of the per-round ratios, since each round measures the targets back
to back), and turns them into :class:`Line` s for the table and
:class:`Check` s against the targets of the issue. A check is ``met`` True
or False, or None when it cannot be judged here (a peer is missing, one
burst only, too few cores).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import clients
import servers
from common import (
    BenchError,
    Certificate,
    CpuMeter,
    CpuReading,
    KeyType,
    Proc,
    ProcessSet,
    Unavailable,
    curl_probe,
    fd_limit,
    free_port,
    median,
    missing_tools,
    pinned_self,
    wait_until,
)
from servers import BODY, Backend, HttpsOptions

# --------------------------------------------------------------------------- data


@dataclass
class Settings:
    rounds: int
    duration_s: float  # one measured run
    warmup_s: float  # unmeasured load before it (0: none)
    wrk_connections: int
    handshake_clients: int  # parallel s_time processes
    idle_connections: int  # row 8, per burst
    bursts: int  # row 8
    bulk_size: int  # row 7, bytes


@dataclass
class Sample:
    """One measurement of one target in one round."""

    value: float  # the row's figure: req/s, conn/s, handshakes/s, MB/s, bytes/connection
    work: float  # units of work, to divide the proxy's CPU seconds by
    cpu: CpuReading
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def cpu_per_unit(self) -> float:
        return self.cpu.proxy_s / self.work if self.work else float("nan")

    @property
    def sys_per_unit(self) -> float:
        """The kernel's part of :attr:`cpu_per_unit` (the proxy's system time)."""
        return self.cpu.proxy_sys_s / self.work if self.work else float("nan")

    @property
    def proxy_busy(self) -> float:
        return self.cpu.proxy_s / self.cpu.wall_s if self.cpu.wall_s else float("nan")

    @property
    def load_busy(self) -> float:
        return self.cpu.load_s / self.cpu.wall_s if self.cpu.wall_s else float("nan")


@dataclass
class Check:
    what: str  # e.g. "req/s >= 0.9x HAProxy"
    value: float | None  # the measured ratio or figure
    met: bool | None  # None: cannot be judged here


@dataclass
class Line:
    """One line of the table. ``cells`` keys are the column names in :data:`COLUMNS`."""

    measure: str
    cells: dict[str, str] = field(default_factory=dict)
    ratio: str = ""
    target: str = ""
    met: str = ""


COLUMNS = ("tlsgate", "HAProxy", "nginx")


@dataclass
class RowResult:
    key: str
    title: str
    lines: list[Line] = field(default_factory=list)
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None  # the row could not run: why
    failed: dict[str, str] = field(default_factory=dict)  # target key -> why it failed
    seconds: float = 0.0


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    """Something to measure: a proxy with one configuration."""

    key: str  # "tlsgate", "haproxy", "nginx", "tlsgate+acme", "tlsgate w2", ...
    tool: str  # the executable it needs ("tlsgate" is always there)
    start: Callable[[Env, int, str | None], Proc]  # (env, port, cpus) -> server
    probe: Callable[[int], Callable[[], str | None]]  # port -> readiness probe
    spread: bool = False  # row 9: the proxy gets two cores (see Env.serve)
    needs_stream: bool = False  # nginx as an L4 proxy: needs libnginx-mod-stream

    def missing(self) -> str | None:
        """Why this target cannot run here, or None."""
        if self.tool != "tlsgate" and missing_tools([self.tool]):
            return f"`{self.tool}` is not installed (make system-deps)"
        if self.needs_stream and not servers.stream_module_available():
            return f"{servers.NGINX_STREAM_MODULE} is missing (libnginx-mod-stream)"
        return None


def https_probe(port: int) -> Callable[[], str | None]:
    return curl_probe(f"https://127.0.0.1:{port}/", BODY)


def http_probe(port: int) -> Callable[[], str | None]:
    return curl_probe(f"http://127.0.0.1:{port}/", BODY)


def hello_probe(port: int) -> Callable[[], str | None]:
    """Row 6: a ClientHello through the proxy must come back as the canned response."""
    hello = clients.client_hello()

    def probe() -> str | None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(hello)
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
        except OSError as exc:
            return f"{exc}"
        return None if data == servers.CANNED_RESPONSE else f"answer {data[:40]!r}"

    return probe


# Rows that log give this as HttpsOptions.access_log; each run then logs to its own file.
ACCESS_LOG_ON = Path("<one file per run>")


def access_log_path(env: Env, kind: str, port: int) -> Path:
    return env.workdir / f"access-{kind}-{port}.log"


def https_target(
    key: str,
    kind: str,
    opts: HttpsOptions,
    key_type: KeyType = "ecdsa-p256",
    *,
    spread: bool = False,
) -> Target:
    """An HTTPS-terminating ``kind`` (tlsgate, haproxy, nginx) in front of the backend."""
    starters = {
        "tlsgate": servers.start_tlsgate_https,
        "haproxy": servers.start_haproxy_https,
        "nginx": servers.start_nginx_https,
    }
    start_fn = starters[kind]

    def start(env: Env, port: int, cpus: str | None) -> Proc:
        log = opts.access_log
        if log is not None:  # a fresh file for every run
            log = access_log_path(env, kind, port)
        run_opts = HttpsOptions(opts.workers, log, opts.acme_directory, opts.idle)
        return start_fn(
            env.ps, env.workdir, port, env.backend.http_port, env.certs[key_type], run_opts, cpus
        )

    return Target(key, kind, start, https_probe, spread)


def l4_target(kind: str, mode: servers.L4Mode) -> Target:
    starters = {
        "tlsgate": servers.start_tlsgate_l4,
        "haproxy": servers.start_haproxy_l4,
        "nginx": servers.start_nginx_l4,
    }
    start_fn = starters[kind]

    def start(env: Env, port: int, cpus: str | None) -> Proc:
        if mode == "tls-passthrough":
            if env.backend.stream_port is None:
                raise Unavailable(f"{servers.NGINX_STREAM_MODULE} missing (libnginx-mod-stream)")
            backend_port = env.backend.stream_port
        else:
            backend_port = env.backend.http_port
        return start_fn(env.ps, env.workdir, port, backend_port, mode, cpus)

    probe = hello_probe if mode == "tls-passthrough" else http_probe
    return Target(kind, kind, start, probe, needs_stream=kind == "nginx")


# --------------------------------------------------------------------------- env


@dataclass
class Env:
    settings: Settings
    ps: ProcessSet
    workdir: Path
    backend: Backend
    certs: dict[KeyType, Certificate]
    proxy_cpus: str | None  # taskset list for the proxies, e.g. "0"; None: not pinned
    load_cpus: set[int] | None  # this process, its clients and the backend
    all_cpus: set[int]
    hello_script: Path  # row 6's wrk script (clients.write_hello_script)

    @contextlib.contextmanager
    def serve(self, target: Target) -> Iterator[tuple[Proc, int]]:
        """Start ``target`` on a free port, wait until it answers, stop it afterwards.

        A ``spread`` target (row 9) runs on two cores: with four or more CPUs the
        proxy gets the first two and the load the rest; with fewer, the proxy,
        the backend and the clients all float over every CPU (approximate).
        """
        port = free_port()
        cpus = self.proxy_cpus
        load: set[int] | None = None
        if target.spread:
            ordered = sorted(self.all_cpus)
            if len(ordered) >= 4:
                cpus, load = f"{ordered[0]},{ordered[1]}", set(ordered[2:])
            else:
                cpus, load = ",".join(map(str, ordered)), set(ordered)
        proc = target.start(self, port, cpus)
        try:
            wait_until(proc, target.probe(port), f"{target.key} on port {port}")
            if load is None:
                yield proc, port
            else:
                self.backend.proc.set_cpus(load)
                try:
                    with pinned_self(load):
                        yield proc, port
                finally:
                    if self.load_cpus is not None:
                        self.backend.proc.set_cpus(self.load_cpus)
        finally:
            self.ps.stop(proc)


def interleave(
    env: Env,
    row: RowResult,
    targets: Sequence[Target],
    measure: Callable[[Target, Proc, int], Sample],
) -> None:
    """``rounds`` x (each target in turn: start, measure, stop), into ``row.samples``.

    A target that fails (does not start, crashes, its client reports an error) is
    recorded in ``row.failed`` with the reason and skipped in later rounds; the
    other targets go on.
    """
    row.samples = {t.key: [] for t in targets}
    for r in range(env.settings.rounds):
        for t in targets:
            if t.key in row.failed:
                continue
            print(f"    round {r + 1}/{env.settings.rounds}: {t.key} ...", flush=True)
            try:
                with env.serve(t) as (proc, port):
                    row.samples[t.key].append(measure(t, proc, port))
            except BenchError as exc:
                fail(row, t.key, exc)


def fail(row: RowResult, key: str, exc: BenchError) -> None:
    """Record that target ``key`` failed: a short reason, and the details in the notes."""
    text = str(exc)
    row.failed[key] = text.splitlines()[0][:160]
    row.notes.append(f"{key} failed: {text}")
    print(f"    {key} failed: {row.failed[key]}", flush=True)


def available(targets: Sequence[Target], notes: list[str]) -> list[Target]:
    """The targets that can run here; a note for each one that cannot."""
    keep = []
    for t in targets:
        why = t.missing()
        if why is None:
            keep.append(t)
        else:
            notes.append(f"{t.key}: not run, {why}")
    if not any(t.tool == "tlsgate" for t in keep):
        raise Unavailable("no tlsgate target to measure")
    return keep


# --------------------------------------------------------------------------- measuring


def measure_wrk(
    env: Env,
    proc: Proc,
    url: str,
    *,
    threads: int = 1,
    script: Path | None = None,
    after_warmup: Callable[[], None] | None = None,
) -> Sample:
    s = env.settings
    conns = s.wrk_connections
    if s.warmup_s > 0:
        clients.run_wrk(
            clients.wrk_argv(url, s.warmup_s, threads=threads, connections=conns, script=script)
        )
    if after_warmup is not None:
        after_warmup()
    argv = clients.wrk_argv(url, s.duration_s, threads=threads, connections=conns, script=script)
    with CpuMeter(proc, env.backend.proc) as meter:
        r = clients.run_wrk(argv)
    if r.requests == 0:
        raise BenchError(f"wrk made no request against {proc.name}:\n{proc.log_tail()}")
    return Sample(r.requests_per_sec, r.requests, meter.reading, r.p50_ms, r.p99_ms, r.errors)


def measure_handshakes(env: Env, proc: Proc, port: int, *, reuse: bool) -> Sample:
    s = env.settings
    if s.warmup_s > 0:
        clients.run_s_time(port, s.warmup_s, procs=s.handshake_clients, reuse=reuse)
    with CpuMeter(proc, env.backend.proc) as meter:
        r = clients.run_s_time(port, s.duration_s, procs=s.handshake_clients, reuse=reuse)
    if r.connections == 0:
        raise BenchError(f"no handshake completed with {proc.name}:\n{proc.log_tail()}")
    return Sample(
        r.per_sec,
        r.connections,
        meter.reading,
        extra={"resumed_fraction": r.resumed / r.connections},
    )


# --------------------------------------------------------------------------- reducing

Get = Callable[[Sample], float | None]
STANDARD = {"tlsgate": "tlsgate", "HAProxy": "haproxy", "nginx": "nginx"}  # column -> target


def value(s: Sample) -> float:
    return s.value


def cpu_per_unit(s: Sample) -> float:
    return s.cpu_per_unit


def sys_per_unit(s: Sample) -> float:
    return s.sys_per_unit


def p50(s: Sample) -> float | None:
    return s.p50_ms


def p99(s: Sample) -> float | None:
    return s.p99_ms


def resumed(s: Sample) -> float:
    return s.extra["resumed_fraction"]


def fmt_num(x: float | None, digits: int = 0) -> str:
    if x is None or x != x:  # None or NaN
        return "-"
    return f"{x:,.{digits}f}"


def med(samples: Sequence[Sample], get: Get) -> float | None:
    values = [v for v in map(get, samples) if v is not None]
    return median(values) if values else None


def show(samples: Sequence[Sample], get: Get, *, scale: float = 1.0, digits: int = 0) -> str:
    """The median of ``get`` over ``samples``, times ``scale``, formatted."""
    m = med(samples, get)
    return fmt_num(None if m is None else m * scale, digits)


def paired_ratio(a: Sequence[Sample], b: Sequence[Sample], get: Get) -> float | None:
    """The median over rounds of get(a[round]) / get(b[round])."""
    ratios = []
    for x, y in zip(a, b, strict=False):
        gx, gy = get(x), get(y)
        if gx is not None and gy:
            ratios.append(gx / gy)
    return median(ratios) if ratios else None


def at_least(what: str, measured: float | None, threshold: float) -> Check:
    return Check(what, measured, None if measured is None else measured >= threshold)


def at_most(what: str, measured: float | None, threshold: float) -> Check:
    return Check(what, measured, None if measured is None else measured <= threshold)


def figure_line(
    row: RowResult,
    label: str,
    get: Get,
    *,
    scale: float = 1.0,
    digits: int = 0,
    columns: dict[str, str] = STANDARD,
    ratios_to: Sequence[str] = ("HAProxy", "nginx"),
) -> tuple[Line, dict[str, float | None]]:
    """A table line: the median of ``get`` per column, and tlsgate's ratio to ``ratios_to``.

    Returns the line (also appended to ``row.lines``) and the ratios by column name.
    """
    s = row.samples
    line = Line(label)
    for col, key in columns.items():
        if s.get(key):
            line.cells[col] = show(s[key], get, scale=scale, digits=digits)
        elif key in row.failed:
            line.cells[col] = "failed"
    ratios: dict[str, float | None] = {}
    mine = s.get(columns["tlsgate"])
    for col in ratios_to:
        peer = s.get(columns[col])
        ratios[col] = paired_ratio(mine, peer, get) if mine and peer else None
    line.ratio = ", ".join(f"{fmt_num(r, 2)}x {c}" for c, r in ratios.items() if r is not None)
    row.lines.append(line)
    return line, ratios


def judge(row: RowResult, line: Line, target: str, *checks: Check) -> None:
    """Record ``checks`` and show ``target`` and the verdict on ``line``."""
    row.checks.extend(checks)
    line.target = target
    if any(key.startswith("tlsgate") for key in row.failed):
        line.met = "no (failed)"
    elif any(c.met is None for c in checks):
        line.met = "n/a"
    else:
        line.met = "yes" if all(c.met for c in checks) else "no"


def standard_lines(
    row: RowResult, unit: str, cpu_unit: str, cpu_scale: float, *, latency: bool = False
) -> dict[str, float | None]:
    """The figure, latency (if asked) and CPU lines of a tlsgate/HAProxy/nginx row.

    Returns tlsgate's figure ratios by peer column name.
    """
    _, ratios = figure_line(row, unit, value)
    if latency:
        line = Line("p50 / p99 ms")
        for col, key in STANDARD.items():
            if row.samples.get(key):
                ss = row.samples[key]
                line.cells[col] = f"{show(ss, p50, digits=2)} / {show(ss, p99, digits=2)}"
            elif key in row.failed:
                line.cells[col] = "failed"
        row.lines.append(line)
    figure_line(row, f"proxy {cpu_unit}", cpu_per_unit, scale=cpu_scale, digits=1)
    # the kernel's part: loopback TCP, epoll, splice; what no user-space work can save
    figure_line(row, "  of which kernel", sys_per_unit, scale=cpu_scale, digits=1)
    for key, ss in row.samples.items():
        errors = sum(x.errors for x in ss)
        if errors:
            row.notes.append(f"{key}: {errors} errors reported by the client (not a valid result)")
    return ratios


def busy_notes(row: RowResult) -> None:
    """Say when the load side was saturated, the proxy not, or other jobs took CPU."""
    idle: list[str] = []
    others: list[float] = []
    for key, ss in row.samples.items():
        load = med(ss, lambda x: x.load_busy)
        proxy = med(ss, lambda x: x.proxy_busy)
        other = med(ss, lambda x: x.cpu.other_s / x.cpu.wall_s if x.cpu.wall_s else None)
        if load is not None and load > 0.9:
            row.notes.append(
                f"{key}: the load core was {load:.0%} busy (clients + backend), so this "
                "figure may be client-bound: compare the proxy CPU per unit of work"
            )
        if proxy is not None and proxy < 0.8:
            idle.append(f"{key} {proxy:.0%}")
        if other is not None and other > 0.25:
            others.append(other)
    if idle:
        row.notes.append(f"the proxy used less than its core: {', '.join(idle)}")
    if others:
        low, high = f"{min(others):.1f}", f"{max(others):.1f}"
        spread = low if low == high else f"{low}-{high}"
        row.notes.append(
            f"other processes on this machine used {spread} CPUs during the "
            "measurements: the figures are noisy"
        )


# --------------------------------------------------------------------------- rows 1-3

TITLES = {
    "1": "HTTPS keep-alive, 100-byte responses, wrk -t1 -c50, access log off",
    "2": "as row 1 with a JSON access log to a file",
    "3": "as row 1 with [acme] configured (TLS-ALPN-01 on, nothing to order)",
    "4a": "full TLS 1.3 handshakes/s, ECDSA P-256, one request per connection",
    "4b": "full TLS 1.3 handshakes/s, RSA-2048, one request per connection",
    "5a": "resumed TLS 1.3 handshakes/s (session tickets), one request per connection",
    "5b": "as 5a with 2 workers / threads on the proxy core: tickets come back to either",
    "6": "TLS passthrough new connections/s: ClientHello routed by SNI, 100-byte answer, "
    "close (wrk -t1 -c50)",
    "7": "TCP tunnel bulk download, one connection",
    "8": "memory per idle TLS connection",
    "9": "HTTPS keep-alive req/s, 2 workers vs 1 (HAProxy: 2 threads vs 1), wrk -t2 -c50",
}


def row_https(env: Env, key: str, title: str, opts: HttpsOptions) -> RowResult:
    """Rows 1 and 2: HTTPS keep-alive through each proxy, ``wrk -t1 -c50``."""
    row = RowResult(key, title)
    kinds = ("tlsgate", "haproxy", "nginx")
    targets = available([https_target(k, k, opts) for k in kinds], row.notes)

    def measure(t: Target, proc: Proc, port: int) -> Sample:
        if opts.access_log is None:
            return measure_wrk(env, proc, f"https://127.0.0.1:{port}/")
        log = access_log_path(env, t.tool, port)

        def forget_warmup() -> None:  # every server appends (O_APPEND): truncating is safe
            os.truncate(log, 0)

        sample = measure_wrk(env, proc, f"https://127.0.0.1:{port}/", after_warmup=forget_warmup)
        sample.extra["log_lines_per_request"] = _count_lines(log) / sample.work
        log.unlink()
        return sample

    interleave(env, row, targets, measure)
    ratios = standard_lines(row, "req/s", "CPU µs/req", 1e6, latency=True)
    if key == "1":
        judge(
            row,
            row.lines[0],
            ">= 0.9x HAProxy, >= 1.0x nginx",
            at_least("req/s >= 0.9x HAProxy", ratios["HAProxy"], 0.9),
            at_least("req/s >= 1.0x nginx", ratios["nginx"], 1.0),
        )
        mine, peer = row.samples.get("tlsgate"), row.samples.get("haproxy")
        delta = None
        if mine and peer:
            delta = (med(mine, p99) or 0.0) - (med(peer, p99) or 0.0)
            row.lines[1].ratio = f"p99 {delta:+.2f} ms vs HAProxy"
        judge(
            row,
            row.lines[1],
            "p99 <= HAProxy p99 + 1 ms",
            at_most("p99 - HAProxy p99 <= 1 ms", delta, 1.0),
        )
    else:
        judge(
            row, row.lines[0], ">= 0.8x HAProxy", at_least("req/s >= 0.8x", ratios["HAProxy"], 0.8)
        )
        for k, ss in row.samples.items():
            lines = med(ss, lambda x: x.extra.get("log_lines_per_request"))
            if lines is not None and abs(lines - 1) > 0.05:
                row.notes.append(f"{k}: {lines:.3f} access log lines per request (expected 1)")
    busy_notes(row)
    return row


def _count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def row1(env: Env) -> RowResult:
    """HTTPS keep-alive requests/s, access log off."""
    return row_https(env, "1", TITLES["1"], HttpsOptions())


def row2(env: Env) -> RowResult:
    """HTTPS keep-alive requests/s with a JSON access log to a file."""
    return row_https(env, "2", TITLES["2"], HttpsOptions(access_log=ACCESS_LOG_ON))


def row3(env: Env) -> RowResult:
    """tlsgate with [acme] (TLS-ALPN-01 on, nothing pending) against its row 1 config."""
    row = RowResult("3", TITLES["3"])
    closed = free_port()  # nothing listens there: the directory is unreachable
    acme_opts = HttpsOptions(acme_directory=f"https://127.0.0.1:{closed}/directory")
    targets = [
        https_target("tlsgate", "tlsgate", HttpsOptions()),
        https_target("tlsgate+acme", "tlsgate", acme_opts),
    ]

    def measure(t: Target, proc: Proc, port: int) -> Sample:
        return measure_wrk(env, proc, f"https://127.0.0.1:{port}/")

    interleave(env, row, targets, measure)
    # The tlsgate column shows the [acme] configuration; its ratio is to the row 1 one.
    columns = {"tlsgate": "tlsgate+acme", "row 1 config": "tlsgate"}
    line, ratios = figure_line(row, "req/s", value, columns=columns, ratios_to=["row 1 config"])
    line.ratio += f" ({line.cells.pop('row 1 config', '-')})"
    # Two runs of one configuration differ by a few per cent: allow 3 %.
    judge(
        row,
        line,
        ">= 1.0x row 1 config (3 % noise)",
        at_least("req/s >= 0.97x row 1 config", ratios["row 1 config"], 0.97),
    )
    cpu, _ = figure_line(
        row,
        "proxy CPU µs/req",
        cpu_per_unit,
        scale=1e6,
        digits=1,
        columns=columns,
        ratios_to=["row 1 config"],
    )
    cpu.ratio += f" ({cpu.cells.pop('row 1 config', '-')})"
    busy_notes(row)
    return row


# --------------------------------------------------------------------------- rows 4-5


def row_handshakes(env: Env, key: str, key_type: KeyType) -> RowResult:
    """Row 4: full TLS 1.3 handshakes, one request per connection, no resumption."""
    row = RowResult(key, TITLES[key])
    kinds = ("tlsgate", "haproxy", "nginx")
    targets = available([https_target(k, k, HttpsOptions(), key_type) for k in kinds], row.notes)

    def measure(t: Target, proc: Proc, port: int) -> Sample:
        return measure_handshakes(env, proc, port, reuse=False)

    interleave(env, row, targets, measure)
    ratios = standard_lines(row, "handshakes/s", "CPU µs/handshake", 1e6)
    judge(
        row,
        row.lines[0],
        ">= 0.95x HAProxy",
        at_least("handshakes/s >= 0.95x HAProxy", ratios["HAProxy"], 0.95),
    )
    for k, ss in row.samples.items():
        fraction = med(ss, resumed)
        if fraction:
            row.notes.append(f"{k}: {fraction:.1%} of the handshakes were resumed (expected 0)")
    busy_notes(row)
    return row


def row4a(env: Env) -> RowResult:
    """Full TLS 1.3 handshakes/s, ECDSA P-256."""
    return row_handshakes(env, "4a", "ecdsa-p256")


def row4b(env: Env) -> RowResult:
    """Full TLS 1.3 handshakes/s, RSA-2048."""
    return row_handshakes(env, "4b", "rsa-2048")


def row_resumed(env: Env, key: str, workers: int) -> RowResult:
    """Row 5: resumed handshakes (TLS 1.3 tickets), one request per connection."""
    row = RowResult(key, TITLES[key])
    kinds = ("tlsgate", "haproxy", "nginx")
    targets = available(
        [https_target(k, k, HttpsOptions(workers=workers)) for k in kinds], row.notes
    )

    def measure(t: Target, proc: Proc, port: int) -> Sample:
        return measure_handshakes(env, proc, port, reuse=True)

    interleave(env, row, targets, measure)
    ratios = standard_lines(row, "handshakes/s", "CPU µs/handshake", 1e6)
    rate, _ = figure_line(row, "resumed %", resumed, scale=100, digits=1, ratios_to=[])
    row.lines.insert(1, row.lines.pop())  # right under the figure
    checks = [at_least("handshakes/s >= 0.95x HAProxy", ratios["HAProxy"], 0.95)]
    mine, peer = row.samples.get("tlsgate"), row.samples.get("haproxy")
    delta = None
    if mine and peer:
        delta = (med(mine, resumed) or 0.0) - (med(peer, resumed) or 0.0)
        rate.ratio = f"{100 * delta:+.1f} points vs HAProxy"
    judge(row, row.lines[0], ">= 0.95x HAProxy", *checks)
    judge(
        row, rate, "as HAProxy (-5 points)", at_least("resumed >= HAProxy - 5 points", delta, -0.05)
    )
    if workers > 1 and mine:
        share = med(mine, lambda x: x.cpu.busiest_share)
        if share is not None:
            row.notes.append(
                f"tlsgate: its busiest process did {share:.0%} of its CPU work (the rest: the "
                "other worker and the supervisor), so connections did reach both workers"
                if share < 0.8
                else f"tlsgate: one process did {share:.0%} of its CPU work: the connections "
                "hardly reached the second worker, so this says little about cross-worker "
                "resumption"
            )
    busy_notes(row)
    return row


def row5a(env: Env) -> RowResult:
    """Resumed TLS 1.3 handshakes/s, one worker."""
    return row_resumed(env, "5a", 1)


def row5b(env: Env) -> RowResult:
    """Resumed TLS 1.3 handshakes/s, two workers: resuming on another worker."""
    return row_resumed(env, "5b", 2)


# --------------------------------------------------------------------------- rows 6-7


def row6(env: Env) -> RowResult:
    """New connections/s through a TLS passthrough listener (SNI routing, no crypto)."""
    row = RowResult("6", TITLES["6"])
    kinds = ("tlsgate", "haproxy", "nginx")
    targets = available([l4_target(k, "tls-passthrough") for k in kinds], row.notes)

    def measure(t: Target, proc: Proc, port: int) -> Sample:
        return measure_wrk(env, proc, f"http://127.0.0.1:{port}/", script=env.hello_script)

    interleave(env, row, targets, measure)
    ratios = standard_lines(row, "conn/s", "CPU µs/conn", 1e6, latency=True)
    judge(
        row,
        row.lines[0],
        ">= 0.9x HAProxy",
        at_least("conn/s >= 0.9x HAProxy", ratios["HAProxy"], 0.9),
    )
    busy_notes(row)
    return row


def row7(env: Env) -> RowResult:
    """Bulk download through a TCP tunnel: MB/s and proxy CPU seconds per GB."""
    size = env.settings.bulk_size
    row = RowResult("7", f"{TITLES['7']}, {size / (1 << 30):g} GiB")
    kinds = ("tlsgate", "haproxy", "nginx")
    targets = available([l4_target(k, "tcp") for k in kinds], row.notes)

    def measure(t: Target, proc: Proc, port: int) -> Sample:
        with CpuMeter(proc, env.backend.proc) as meter:
            received, seconds = clients.download(port, "/big", size)
        return Sample(received / seconds / 1e6, received / 1e9, meter.reading)

    interleave(env, row, targets, measure)
    _, ratios = figure_line(row, "MB/s", value)
    cpu, cpu_ratios = figure_line(row, "proxy CPU s/GB", cpu_per_unit, digits=2)
    judge(row, row.lines[0], ">= 1.0x HAProxy", at_least("MB/s >= 1.0x", ratios["HAProxy"], 1.0))
    judge(
        row,
        cpu,
        "<= 0.6x HAProxy",
        at_most("CPU s/GB <= 0.6x HAProxy", cpu_ratios["HAProxy"], 0.6),
    )
    busy_notes(row)
    return row


# --------------------------------------------------------------------------- row 8


def row8(env: Env) -> RowResult:
    """Memory per idle TLS connection, and whether RSS comes back after each burst."""
    s = env.settings
    # Room for the probes and the backend connections, within every proxy's limit.
    n = min(s.idle_connections, servers.max_connections() - 200)
    row = RowResult("8", f"{TITLES['8']}: {n:,} connections, {s.bursts} burst(s)")
    if n < s.idle_connections:
        row.notes.append(
            f"{n:,} connections, not {s.idle_connections:,}: the fd limit is {fd_limit():,} "
            "and could not be raised (HAProxy needs two per maxconn)"
        )
    kinds = ("tlsgate", "haproxy", "nginx")
    targets = available([https_target(k, k, HttpsOptions(idle=True)) for k in kinds], row.notes)
    for t in targets:
        print(f"    {t.key}: {s.bursts} burst(s) of {n:,} connections ...", flush=True)
        try:
            with env.serve(t) as (proc, port):
                idle = proc.rss_bytes()
                row.samples[t.key] = [_burst(env, proc, port, n, idle) for _ in range(s.bursts)]
        except BenchError as exc:
            fail(row, t.key, exc)
    line, ratios = figure_line(row, "KiB per connection", value, scale=1 / 1024, digits=1)
    judge(row, line, "<= 1.5x HAProxy", at_most("KiB <= 1.5x HAProxy", ratios["HAProxy"], 1.5))

    rss = Line("RSS MiB: idle, after each burst")
    for col, key in STANDARD.items():
        ss = row.samples.get(key)
        if ss:
            steps = [ss[0].extra["rss_before"]] + [x.extra["rss_after"] for x in ss]
            rss.cells[col] = " → ".join(f"{x / (1 << 20):.0f}" for x in steps)
    row.lines.append(rss)
    growth = None
    mine = row.samples.get("tlsgate", [])
    if len(mine) >= 2:
        first = mine[0].extra["rss_after"]
        growth = max(abs(x.extra["rss_after"] - first) / first for x in mine[1:])
        rss.ratio = f"tlsgate: at most {growth:.1%} off burst 1"
    else:
        row.notes.append("one burst only: the RSS-after-bursts check needs two or more")
    judge(
        row,
        rss,
        "bursts 2+ within 10 % of burst 1",
        at_most("RSS after bursts 2+ within 10 % of after burst 1", growth, 0.10),
    )
    for k, ss in row.samples.items():
        fraction = med(ss, resumed) or 0.0
        secs = med(ss, lambda x: x.extra["open_seconds"]) or 0.0
        failed = sum(int(x.extra["failed"]) for x in ss)
        row.notes.append(
            f"{k}: {secs:.1f} s to open {n:,} connections, {fraction:.0%} resumed "
            f"(the client resumes so as to cost less than the server), {failed} failed"
        )
    return row


def _burst(env: Env, proc: Proc, port: int, n: int, idle: int) -> Sample:
    """Open ``n`` idle TLS connections, read the proxy's RSS, close them, read it again.

    The figure is (RSS with the connections open - ``idle``) / connections, ``idle``
    being the RSS before the first burst: a server that keeps freed memory in pools
    would otherwise look free of cost from the second burst on.
    """
    rss_before, fds_before = proc.rss_bytes(), proc.fd_count()
    conns = clients.IdleConnections()
    start = time.monotonic()
    try:
        with CpuMeter(proc, env.backend.proc) as meter:
            conns.open(port, n)
        opened = len(conns.sockets)
        open_seconds = time.monotonic() - start
        # Each connection must also be open (a descriptor) on the proxy's side; a few
        # descriptors of its own (pooled backend connections) may close meanwhile.
        _wait_for(lambda: proc.fd_count() >= fds_before + opened - 10, 30.0)
        time.sleep(0.5)
        rss_open = proc.rss_bytes()
    finally:
        conns.close()
    closed = time.monotonic()
    _wait_for(lambda: proc.fd_count() <= fds_before + 2, 60.0)
    drain_seconds = time.monotonic() - closed
    time.sleep(1.0)
    extra = {
        "rss_before": float(rss_before),
        "rss_open": float(rss_open),
        "rss_after": float(proc.rss_bytes()),
        "opened": float(opened),
        "failed": float(conns.failed),
        "resumed_fraction": conns.resumed / opened if opened else 0.0,
        "open_seconds": open_seconds,
        "drain_seconds": drain_seconds,  # from closing to the proxy's descriptors back
    }
    print(
        f"      burst: {opened:,} open in {open_seconds:.1f} s, closed in {drain_seconds:.1f} s, "
        f"RSS {rss_before >> 20} → {rss_open >> 20} → {extra['rss_after'] / (1 << 20):.0f} MiB",
        flush=True,
    )
    return Sample((rss_open - idle) / max(opened, 1), opened, meter.reading, extra=extra)


def _wait_for(cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


# --------------------------------------------------------------------------- row 9


def row9(env: Env) -> RowResult:
    """workers = 2 vs workers = 1 (HAProxy nbthread 2 vs 1 for reference)."""
    row = RowResult("9", TITLES["9"])
    targets = available(
        [
            https_target("tlsgate w1", "tlsgate", HttpsOptions(workers=1)),
            https_target("tlsgate w2", "tlsgate", HttpsOptions(workers=2), spread=True),
            https_target("haproxy t1", "haproxy", HttpsOptions(workers=1)),
            https_target("haproxy t2", "haproxy", HttpsOptions(workers=2), spread=True),
        ],
        row.notes,
    )

    def measure(t: Target, proc: Proc, port: int) -> Sample:
        return measure_wrk(env, proc, f"https://127.0.0.1:{port}/", threads=2)

    interleave(env, row, targets, measure)
    sm = row.samples
    line = Line("req/s, 1 → 2 workers")
    cpu = Line("proxy CPU µs/req, 1 → 2 workers")
    scaling: dict[str, float | None] = {}
    pairs = {"tlsgate": ("tlsgate w1", "tlsgate w2"), "HAProxy": ("haproxy t1", "haproxy t2")}
    for col, (key1, key2) in pairs.items():
        one, two = sm.get(key1), sm.get(key2)
        if one and two:
            line.cells[col] = f"{show(one, value)} → {show(two, value)}"
            cpu.cells[col] = (
                f"{show(one, cpu_per_unit, scale=1e6, digits=1)} → "
                f"{show(two, cpu_per_unit, scale=1e6, digits=1)}"
            )
            scaling[col] = paired_ratio(two, one, value)
    line.ratio = ", ".join(f"{col} x{fmt_num(x, 2)}" for col, x in scaling.items())
    row.lines += [line, cpu]
    mine = scaling.get("tlsgate")
    if len(env.all_cpus) >= 4:
        judge(row, line, ">= 1.8x (near-linear)", at_least("w2/w1 >= 1.8", mine, 1.8))
    else:
        judge(row, line, "near-linear: not measurable here", Check("w2/w1", mine, None))
        row.notes.append(
            f"only {len(env.all_cpus)} CPUs: with 2 workers the proxy, the backend and wrk "
            "share both cores (nothing pinned), so the 2-worker figure is approximate and "
            "cannot show linear scaling; HAProxy's scaling in the same setup is the reference"
        )
    return row


# --------------------------------------------------------------------------- registry

ROWS: dict[str, Callable[[Env], RowResult]] = {
    "1": row1,
    "2": row2,
    "3": row3,
    "4a": row4a,
    "4b": row4b,
    "5a": row5a,
    "5b": row5b,
    "6": row6,
    "7": row7,
    "8": row8,
    "9": row9,
}


def select_rows(spec: str) -> list[str]:
    """``"1,4,5b"`` -> ``["1", "4a", "4b", "5b"]`` (a bare number selects its sub-rows).

    Raises:
        ValueError: an unknown row.
    """
    chosen: list[str] = []
    for part in (p.strip().lower() for p in spec.split(",")):
        if not part:
            continue
        matches = [k for k in ROWS if k == part or (part.isdigit() and k.rstrip("ab") == part)]
        if not matches:
            raise ValueError(f"unknown row {part!r}; rows: {', '.join(ROWS)}")
        chosen += [k for k in matches if k not in chosen]
    return sorted(chosen, key=list(ROWS).index)
