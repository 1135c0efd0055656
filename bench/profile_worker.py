"""Where one tlsgate worker's time goes under load: py-spy and perf.

How this works: the same set-up as a ``make bench`` row (one worker pinned to
core 0, the nginx backend and ``wrk -t1 -c50`` on core 1): ``--scenario https``
is row 1 (HTTPS keep-alive, 100-byte responses), ``--scenario passthrough`` is
row 6 (a new connection per ClientHello, routed by SNI, 100-byte answer).
Then, while wrk runs, ``py-spy record`` on the worker (the Python frames; in
the compiled build only what is still interpreted shows up by name) and, when
``perf`` works here, ``perf record`` (every native library and the kernel).
It prints, and writes to ``--output``, the share of samples per Python frame
and per shared object. That file is what docs/benchmarks.md quotes.

Run it with the project's virtualenv (``make compile`` first for the compiled
build, or ``TLSGATE_PURE=1`` for pure Python)::

    .venv/bin/python bench/profile_worker.py --output docs/profiles/https-keepalive.txt

Needs py-spy (``pip install py-spy``) and, for the native split, Debian's
``linux-perf``; either is skipped with a note when missing.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from clients import write_hello_script
from common import (
    ProcessSet,
    exit_on_signals,
    free_port,
    group_pids,
    wait_until,
    write_certificate,
)
from rows import hello_probe, https_probe
from servers import HttpsOptions, start_backend, start_tlsgate_https, start_tlsgate_l4

import tlsgate

_SCENARIOS = {
    "https": "HTTPS keep-alive, 100-byte responses",
    "handshakes": "full TLS 1.3 handshakes (ECDSA), one request per connection",
    "resumed": "resumed TLS 1.3 handshakes (tickets), one request per connection",
    "passthrough": "TLS passthrough, a new connection per ClientHello, 100-byte answer",
}


def _worker_pid(pgid: int) -> int:
    """The worker: the newest process of tlsgate's group (the supervisor is the first)."""
    pids = sorted(group_pids(pgid))
    return pids[-1]


def _pyspy_summary(raw: Path, top: int) -> list[str]:
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        total += int(count)
        own[stack.split(";")[-1]] += int(count)
    lines = [f"py-spy: {total} samples, share by innermost Python frame"]
    lines += [f"  {100 * n / total:5.1f} %  {frame}" for frame, n in own.most_common(top)]
    return lines


def _perf_summary(data: Path) -> list[str]:
    out = subprocess.run(
        ["perf", "report", "-i", str(data), "--no-children", "--sort", "dso", "-g", "none"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    rows = [line.strip() for line in out.splitlines() if line.strip() and line[0] != "#"]
    return ["perf: share of samples by shared object", *("  " + r for r in rows[:12])]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scenario",
        choices=tuple(_SCENARIOS),
        default="https",
        help="https: row 1 (keep-alive); handshakes / resumed: rows 4a / 5a "
        "(8 openssl s_time clients, one request per connection); passthrough: row 6",
    )
    parser.add_argument("--seconds", type=int, default=8, help="how long to sample")
    parser.add_argument("--top", type=int, default=25, help="Python frames to list")
    parser.add_argument("--output", type=Path, help="also write the summary here")
    args = parser.parse_args(argv)
    exit_on_signals()
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    have_pyspy = Path(pyspy).exists()
    have_perf = shutil.which("perf") is not None
    build = "compiled" if tlsgate.COMPILED else "pure Python"
    lines = [
        f"bench/profile_worker.py, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
        f"one tlsgate worker on core 0 ({build}), nginx and the clients on core 1, "
        f"{_SCENARIOS[args.scenario]}, {args.seconds} s",
    ]
    with tempfile.TemporaryDirectory(prefix="tlsgate-profile-") as tmp:
        work = Path(tmp)
        with ProcessSet(work) as ps:
            backend = start_backend(ps, work, free_port(), free_port(), work / "big", cpus="1")
            port = free_port()
            wrk_args = ["taskset", "-c", "1", "wrk", "-t1", "-c50", f"-d{args.seconds + 3}s"]
            clients = 1
            if args.scenario in ("https", "handshakes", "resumed"):
                cert = write_certificate(work, "ecdsa-p256")
                gate = start_tlsgate_https(
                    ps, work, port, backend.http_port, cert, HttpsOptions(), cpus="0"
                )
                wait_until(gate, https_probe(port), "tlsgate")
                wrk_args.append(f"https://127.0.0.1:{port}/")
                if args.scenario != "https":  # as make bench rows 4a and 5a run them
                    reuse = "-reuse" if args.scenario == "resumed" else "-new"
                    wrk_args = ["taskset", "-c", "1", "openssl", "s_time", "-connect"]
                    wrk_args += [f"127.0.0.1:{port}", "-tls1_3", "-www", "/", "-no-CApath"]
                    wrk_args += ["-no-CAfile", "-no-CAstore", reuse]
                    wrk_args += ["-time", str(args.seconds + 3)]
                    clients = 8
            else:
                if backend.stream_port is None:
                    print("the passthrough scenario needs libnginx-mod-stream", file=sys.stderr)
                    return 1
                gate = start_tlsgate_l4(
                    ps, work, port, backend.stream_port, "tls-passthrough", cpus="0"
                )
                wait_until(gate, hello_probe(port), "tlsgate")
                script = write_hello_script(work / "hello.lua")
                wrk_args += ["-s", str(script), f"http://127.0.0.1:{port}/"]
            worker = _worker_pid(gate.pgid)
            load = [subprocess.Popen(wrk_args, stdout=subprocess.DEVNULL) for _ in range(clients)]
            time.sleep(1.0)
            samplers = []
            raw = work / "pyspy.txt"
            data = work / "perf.data"
            if have_pyspy:
                spy = [pyspy, "record", "-p", str(worker), "-f", "raw", "-o", str(raw)]
                spy += ["-d", str(args.seconds), "-r", "250"]
                samplers.append(
                    subprocess.Popen(spy, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                )
            if have_perf:
                perf = ["perf", "record", "-F", "999", "-o", str(data), "-p", str(worker)]
                perf += ["--", "sleep", str(args.seconds)]
                samplers.append(
                    subprocess.Popen(perf, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                )
            for s in samplers:
                s.wait()
            for p in load:
                p.wait()
            lines += _pyspy_summary(raw, args.top) if have_pyspy else ["py-spy: not installed"]
            lines += _perf_summary(data) if have_perf else ["perf: not installed"]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
