"""Helpers every benchmark in bench/ shares: processes, ports, /proc sampling, certificates.

How it works:

* :class:`ProcessSet` starts servers, each in its own session (so its process
  group is the server and every worker it forks, and only them), optionally
  pinned to CPUs with ``taskset -c``, with stdout+stderr captured to a log
  file. Leaving the ``with`` block stops every server still running: SIGTERM
  to the group, SIGKILL after a grace period, newest first -- also on Ctrl-C
  and on SIGTERM (see :func:`exit_on_signals`).
* :func:`group_cpu_seconds`, :func:`group_rss_bytes` and
  :func:`group_fd_count` read ``/proc`` for every process of a group: the
  CPU time (utime+stime, plus cutime+cstime so that a reaped worker's time is
  not lost), the resident memory and the open file descriptors of a whole
  server, workers included.
* :class:`CpuMeter` takes those readings, plus this process's own and its
  waited-for children's rusage (the load generator), before and after a
  measured interval.
* :func:`write_certificate` issues the certificate every proxy serves, from
  tlsgate's local CA.

Nothing here knows about a particular benchmark; ``bench/run.py`` builds on it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Literal

from tlsgate.ca.local import LocalCA
from tlsgate.net import ports

free_port = ports.free_port  # the benchmarks take it from here
BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
STARTUP_TIMEOUT = 30.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class BenchError(Exception):
    """A measurement failed (a server did not start, a client reported errors)."""


class Unavailable(BenchError):
    """A row cannot run on this machine (a tool or module is missing)."""


# --------------------------------------------------------------------------- /proc


@dataclass(frozen=True)
class ProcStat:
    pid: int
    pgrp: int
    cpu_ticks: int  # utime + stime + cutime + cstime
    sys_ticks: int  # stime + cstime: in the kernel


def _read_stat(pid: int) -> ProcStat | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = raw.rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state): pgrp is field 5, utime..cstime are fields 14..17.
    ticks = [int(f) for f in fields[11:15]]
    return ProcStat(pid, int(fields[2]), sum(ticks), ticks[1] + ticks[3])


def group_pids(pgid: int) -> list[int]:
    """Every live process whose process group is ``pgid``."""
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            st = _read_stat(int(entry.name))
            if st is not None and st.pgrp == pgid:
                pids.append(st.pid)
    return pids


def group_cpu_by_pid(pgid: int) -> dict[int, float]:
    """User+system CPU seconds of each process of a group (reaped children included)."""
    out = {}
    for pid in group_pids(pgid):
        st = _read_stat(pid)
        if st is not None:
            out[pid] = st.cpu_ticks / CLOCK_TICKS
    return out


def group_sys_seconds(pgid: int) -> float:
    """The part of :func:`group_cpu_seconds` spent in the kernel (stime + cstime)."""
    total = 0
    for pid in group_pids(pgid):
        st = _read_stat(pid)
        if st is not None:
            total += st.sys_ticks
    return total / CLOCK_TICKS


def group_cpu_seconds(pgid: int) -> float:
    """User+system CPU seconds of a process group (reaped children included)."""
    return sum(group_cpu_by_pid(pgid).values())


def group_rss_bytes(pgid: int) -> int:
    """Resident memory summed over a process group (``/proc/PID/statm``)."""
    total = 0
    for pid in group_pids(pgid):
        with contextlib.suppress(OSError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE
    return total


def group_fd_count(pgid: int) -> int:
    """Open file descriptors summed over a process group."""
    total = 0
    for pid in group_pids(pgid):
        with contextlib.suppress(OSError):
            total += len(os.listdir(f"/proc/{pid}/fd"))
    return total


def own_cpu_seconds() -> float:
    """CPU seconds of this process plus its waited-for descendants (the clients)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        ru = resource.getrusage(who)
        total += ru.ru_utime + ru.ru_stime
    return total


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    """A server started by the benchmark, leader of its own process group."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    extra_logs: list[Path] = field(default_factory=list)

    @property
    def pgid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def cpu_seconds(self) -> float:
        return group_cpu_seconds(self.pgid)

    def rss_bytes(self) -> int:
        return group_rss_bytes(self.pgid)

    def fd_count(self) -> int:
        return group_fd_count(self.pgid)

    def set_cpus(self, cpus: set[int]) -> None:
        """Move every process of the group (and its threads) to ``cpus``."""
        for pid in group_pids(self.pgid):
            with contextlib.suppress(OSError):
                for tid in os.listdir(f"/proc/{pid}/task"):
                    os.sched_setaffinity(int(tid), cpus)

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
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pgid, signal.SIGKILL)
                self.popen.wait(timeout=grace)
        # The leader may exit before its workers: sweep the group until it is empty.
        deadline = time.monotonic() + grace
        while group_pids(self.pgid) and time.monotonic() < deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, signal.SIGKILL)
            time.sleep(0.05)


class ProcessSet:
    """Starts servers and guarantees that each one is stopped.

    Use as a context manager; :meth:`stop` ends one server early (one proxy
    runs at a time), leaving the block ends the rest.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._running: list[Proc] = []
        self._count = 0

    def __enter__(self) -> ProcessSet:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self._running):
            with contextlib.suppress(Exception):
                proc.stop()
        self._running.clear()

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cpus: str | None = None,
        stdout: Path | None = None,
        extra_logs: Sequence[Path] = (),
    ) -> Proc:
        """Start ``argv`` in a new session, pinned to ``cpus`` (taskset list) if given.

        Output goes to ``<workdir>/<name>-<n>.log``; ``stdout``, if given, gets the
        standard output instead (HAProxy's ``log stdout`` access log).
        """
        self._count += 1
        log_path = self.workdir / f"{name}-{self._count}.log"
        full = ["taskset", "-c", cpus, *argv] if cpus is not None else list(argv)
        with contextlib.ExitStack() as stack:
            log = stack.enter_context(log_path.open("wb"))
            out = stack.enter_context(stdout.open("ab")) if stdout is not None else log
            popen = subprocess.Popen(
                full,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=log,
                start_new_session=True,
            )
        proc = Proc(name, popen, log_path, list(extra_logs))
        self._running.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self._running:
            self._running.remove(proc)


def exit_on_signals() -> None:
    """Make SIGTERM and SIGHUP unwind like Ctrl-C, through every ``finally`` that cleans up.

    SIGINT gets Python's default handler back too: a shell starts background jobs
    with SIGINT ignored, and the benchmark must stop on it all the same.
    """

    def handler(signum: int, frame: FrameType | None) -> None:
        sys.exit(128 + signum)

    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def fd_limit() -> int:
    """This process's RLIMIT_NOFILE soft limit (what servers started now inherit)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


def raise_nofile_limit(want: int = 200_000) -> int:
    """Raise RLIMIT_NOFILE towards ``want`` (servers and clients started later inherit it).

    Raising the hard limit needs CAP_SYS_RESOURCE (root on a normal machine); without
    it the soft limit goes up to the hard one. Returns the new soft limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(OSError, ValueError):
        nr_open = int(Path("/proc/sys/fs/nr_open").read_text())
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, nr_open),) * 2)
        return fd_limit()
    if hard == resource.RLIM_INFINITY or hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    return fd_limit()


# --------------------------------------------------------------------------- measuring


def machine_busy_seconds() -> float:
    """CPU seconds every CPU of the machine spent busy (``/proc/stat``), since boot."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


@dataclass
class CpuReading:
    wall_s: float
    proxy_s: float
    load_s: float  # client (this process and its children) + backend
    other_s: float = 0.0  # everything else on the machine (other users' jobs)
    busiest_share: float = 1.0  # the busiest proxy process's part of the proxy's CPU
    proxy_sys_s: float = 0.0  # the part of proxy_s spent in the kernel (system time)


class CpuMeter:
    """CPU seconds of the proxy's process group and of the load side over an interval.

    ``with CpuMeter(proxy, backend) as m: ...`` then ``m.reading``.
    """

    def __init__(self, proxy: Proc, backend: Proc | None) -> None:
        self.proxy = proxy
        self.backend = backend
        self.reading = CpuReading(0.0, 0.0, 0.0)
        self._start: tuple[float, dict[int, float], float, float] = (0.0, {}, 0.0, 0.0)
        self._sys0 = 0.0

    def _sample(self) -> tuple[float, dict[int, float], float, float]:
        backend = self.backend.cpu_seconds() if self.backend is not None else 0.0
        proxy = group_cpu_by_pid(self.proxy.pgid)
        return time.monotonic(), proxy, own_cpu_seconds() + backend, machine_busy_seconds()

    def __enter__(self) -> CpuMeter:
        self._start = self._sample()
        self._sys0 = group_sys_seconds(self.proxy.pgid)
        return self

    def __exit__(self, *exc: object) -> None:
        t0, procs0, load0, machine0 = self._start
        t1, procs1, load1, machine1 = self._sample()
        proxy_sys = max(0.0, group_sys_seconds(self.proxy.pgid) - self._sys0)
        per_pid = [cpu - procs0.get(pid, 0.0) for pid, cpu in procs1.items()]
        proxy = sum(per_pid)
        load = load1 - load0
        self.reading = CpuReading(
            wall_s=t1 - t0,
            proxy_s=proxy,
            load_s=load,
            other_s=max(0.0, machine1 - machine0 - proxy - load),
            busiest_share=max(per_pid) / proxy if proxy > 0 else 1.0,
            proxy_sys_s=proxy_sys,
        )


def fresh_dir(parent: Path, prefix: str) -> Path:
    """A new, empty directory ``parent/<prefix>-XXXX`` (mode 0755: nginx workers read it)."""
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=parent))
    path.chmod(0o755)
    return path


def wait_until(proc: Proc, probe: Callable[[], str | None], what: str) -> None:
    """Call ``probe`` until it returns None (ready); it returns why not otherwise.

    Raises:
        BenchError: the process exited, or it was not ready within STARTUP_TIMEOUT.
    """
    deadline = time.monotonic() + STARTUP_TIMEOUT
    last = "not tried"
    while time.monotonic() < deadline:
        if not proc.alive():
            raise BenchError(
                f"{proc.name} exited with status {proc.popen.returncode}:\n{proc.log_tail()}"
            )
        last = probe() or ""
        if not last:
            return
        time.sleep(0.1)
    raise BenchError(
        f"{proc.name}: {what} not ready after {STARTUP_TIMEOUT}s ({last}):\n{proc.log_tail()}"
    )


def curl_probe(url: str, expect: bytes) -> Callable[[], str | None]:
    """A :func:`wait_until` probe: ``curl -k url`` must return exactly ``expect``."""

    def probe() -> str | None:
        out = subprocess.run(
            ["curl", "-sk", "--max-time", "5", "--http1.1", url],
            capture_output=True,
            check=False,
        )
        if out.returncode == 0 and out.stdout == expect:
            return None
        return f"curl exit {out.returncode}, body {out.stdout[:60]!r} {out.stderr[:200]!r}"

    return probe


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


# --------------------------------------------------------------------------- machine


def tool_version(argv: Sequence[str]) -> str:
    """First line a tool prints about its version (stdout or stderr), or ``"?"``."""
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (out.stdout + out.stderr).strip()
    return text.splitlines()[0] if text else "?"


def missing_tools(names: Sequence[str]) -> list[str]:
    return [n for n in names if shutil.which(n) is None]


def machine_info() -> dict[str, object]:
    cpu_model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
    }


# --------------------------------------------------------------------------- certificates

KeyType = Literal["ecdsa-p256", "rsa-2048"]


@dataclass(frozen=True)
class Certificate:
    """One certificate in the three shapes the servers want."""

    key_type: KeyType
    cert_file: Path  # chain, PEM (tlsgate, nginx)
    key_file: Path  # key, PEM (tlsgate, nginx)
    combined: Path  # chain + key (HAProxy)


def write_certificate(workdir: Path, key_type: KeyType) -> Certificate:
    """Issue a ``localhost``/``127.0.0.1`` certificate from a fresh tlsgate local CA."""
    ca = LocalCA.create("tlsgate bench CA")
    issued = ca.issue(["localhost", "127.0.0.1"], key_type=key_type)
    stem = workdir / f"cert-{key_type}"
    cert_file = stem.with_suffix(".crt")
    key_file = stem.with_suffix(".key")
    combined = stem.with_suffix(".pem")
    cert_file.write_bytes(issued.chain_pem)
    chain_and_key = issued.chain_pem.rstrip(b"\n") + b"\n" + issued.key_pem
    for path, data in ((key_file, issued.key_pem), (combined, chain_and_key)):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    return Certificate(key_type, cert_file, key_file, combined)


@contextlib.contextmanager
def pinned_self(cpus: set[int] | None) -> Iterator[None]:
    """Run this process (and so every client it starts) on ``cpus``, then restore."""
    before = os.sched_getaffinity(0)
    if cpus:
        os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)
