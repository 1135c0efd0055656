"""``make bench``: tlsgate against HAProxy and nginx, one table of medians and ratios.

How it works: this process pins itself (and so every client it starts) to the
load core, starts the backend nginx there, writes the certificates and the
bulk file into a temporary directory, then runs each selected row of
``bench/rows.py`` in order; each row starts its proxies one at a time on the
proxy core (``taskset -c``), interleaved over the rounds. At the end it prints
one table -- medians, ratios to HAProxy and nginx, CPU per unit of work,
targets and whether they are met -- plus notes, and writes
``bench/results/bench-<time>.json`` (everything, raw samples included) and
``.md`` (the table with machine, versions and method). ``--write-docs`` also
replaces the marked results section of docs/benchmarks.md.

Every server binds to 127.0.0.1 on a free port. Every process started is
stopped (its whole process group) and the temporary directory removed, also on
Ctrl-C or SIGTERM; a row that fails or cannot run on this machine is reported
as such and the others still run.

    .venv/bin/python bench/run.py --help
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import clients
import report
import rows
import servers
from common import (
    RESULTS_DIR,
    BenchError,
    KeyType,
    ProcessSet,
    Unavailable,
    curl_probe,
    exit_on_signals,
    free_port,
    machine_info,
    missing_tools,
    pinned_self,
    raise_nofile_limit,
    tool_version,
    wait_until,
    write_certificate,
)

import tlsgate

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
REQUIRED = ("nginx", "curl", "wrk", "openssl", "taskset")


def parse_size(text: str) -> int:
    """``"1GiB"``, ``"256MiB"`` or a byte count."""
    units = {"gib": 1 << 30, "mib": 1 << 20, "kib": 1 << 10, "": 1}
    value = text.strip().lower()
    for unit, factor in units.items():
        if value.endswith(unit) and value[: len(value) - len(unit)].isdigit():
            return int(value[: len(value) - len(unit)]) * factor
    raise argparse.ArgumentTypeError(f"{text!r}: expected e.g. 1GiB, 256MiB or 1048576")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/run.py",
        description="tlsgate vs HAProxy vs nginx: one table of medians, ratios and CPU per "
        "unit of work. Rows: " + ", ".join(rows.ROWS) + ".",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run (not a result): 1 round, 2 s measurements, no warm-up, 1,000 "
        "idle connections x 2 bursts, 256 MiB bulk",
    )
    p.add_argument(
        "--rows",
        default=",".join(rows.ROWS),
        help="comma-separated rows, e.g. 1,4,5b (4 = 4a,4b); default: all",
    )
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 3, --quick 1)")
    p.add_argument("--duration", type=float, help="seconds per measurement (default 4, --quick 2)")
    p.add_argument("--warmup", type=float, help="seconds of warm-up first (default 1, --quick 0)")
    p.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    p.add_argument(
        "--handshake-clients",
        type=int,
        default=8,
        help="parallel openssl s_time processes, rows 4-5 (default 8)",
    )
    p.add_argument(
        "--idle-connections",
        type=int,
        help="row 8 connections per burst (default 10000, --quick 1000)",
    )
    p.add_argument("--bursts", type=int, help="row 8 bursts (default 3, --quick 2)")
    p.add_argument(
        "--bulk-size", type=parse_size, help="row 7 download size (default 1GiB, --quick 256MiB)"
    )
    p.add_argument(
        "--write-docs",
        action="store_true",
        help=f"replace the results section of {DOCS.relative_to(DOCS.parents[1])}",
    )
    p.add_argument(
        "--output-dir",
        type=Path,
        default=RESULTS_DIR,
        help="where the JSON and Markdown go (default bench/results)",
    )
    args = p.parse_args(argv)
    try:
        args.rows = rows.select_rows(args.rows)
    except ValueError as exc:
        p.error(str(exc))
    q = args.quick
    args.settings = rows.Settings(
        rounds=args.rounds or (1 if q else 3),
        duration_s=args.duration or (2.0 if q else 4.0),
        warmup_s=args.warmup if args.warmup is not None else (0.0 if q else 1.0),
        wrk_connections=args.connections,
        handshake_clients=args.handshake_clients,
        idle_connections=args.idle_connections or (1000 if q else 10_000),
        bursts=args.bursts or (2 if q else 3),
        bulk_size=args.bulk_size or ((256 << 20) if q else (1 << 30)),
    )
    s = args.settings
    if s.rounds < 1 or s.duration_s < 1 or s.warmup_s < 0 or s.bursts < 1:
        p.error("need --rounds >= 1, --duration >= 1, --warmup >= 0, --bursts >= 1")
    if s.wrk_connections < 2 or s.handshake_clients < 1 or s.idle_connections < 1:
        p.error("need --connections >= 2, --handshake-clients >= 1, --idle-connections >= 1")
    return args


def cpu_split() -> tuple[str | None, set[int] | None, set[int], str]:
    """(proxy taskset list, load CPUs, all CPUs, description)."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return None, None, set(allowed), "not pinned (only one CPU)"
    proxy, load = allowed[0], allowed[1]
    return str(proxy), {load}, set(allowed), f"proxy on CPU {proxy}; backend, clients on CPU {load}"


def _version(argv: list[str], pattern: str) -> str:
    """The version a tool reports, cut down to ``pattern``'s first group if it matches."""
    text = tool_version(argv)
    m = re.search(pattern, text)
    return m.group(1) if m else text


def versions() -> dict[str, str]:
    compiled = getattr(tlsgate, "COMPILED", None)  # mypyc-compiled hot modules, or not
    build = {True: " (mypyc-compiled)", False: " (pure Python)", None: ""}[compiled]
    return {
        "tlsgate": tlsgate.__version__ + build,
        "HAProxy": _version(["haproxy", "-v"], r"version (\S+)"),
        "nginx": _version(["nginx", "-v"], r"nginx/(\S+)"),
        "wrk": _version(["wrk", "--version"], r"wrk (\S+)"),
        "OpenSSL": _version(["openssl", "version"], r"OpenSSL (\S+)"),
        "Python": platform.python_version(),
        "kernel": os.uname().release,
    }


def run(args: argparse.Namespace) -> list[rows.RowResult]:
    """Set up the shared pieces, run every selected row, return the results."""
    missing = missing_tools(REQUIRED)
    if missing:
        raise Unavailable(f"missing tools: {', '.join(missing)} (run: make system-deps)")
    raise_nofile_limit()
    proxy_cpus, load_cpus, all_cpus, _ = cpu_split()
    results: list[rows.RowResult] = []
    settings: rows.Settings = args.settings
    with (
        tempfile.TemporaryDirectory(prefix="tlsgate-bench-") as tmp,
        ProcessSet(Path(tmp)) as ps,
        pinned_self(load_cpus),
    ):
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)
        big = workdir / "big.bin"
        with big.open("wb") as f:
            f.truncate(settings.bulk_size)  # sparse: nginx sends zeros from the page cache
        backend = servers.start_backend(
            ps,
            workdir,
            free_port(),
            free_port(),
            big,
            ",".join(map(str, load_cpus)) if load_cpus else None,
        )
        wait_until(
            backend.proc,
            curl_probe(f"http://127.0.0.1:{backend.http_port}/", servers.BODY),
            "backend",
        )
        if "7" in args.rows:  # read the file once, so that every download comes from memory
            clients.download(backend.http_port, "/big", settings.bulk_size)
        key_types: tuple[KeyType, ...] = ("ecdsa-p256", "rsa-2048")
        env = rows.Env(
            settings=settings,
            ps=ps,
            workdir=workdir,
            backend=backend,
            certs={k: write_certificate(workdir, k) for k in key_types},
            proxy_cpus=proxy_cpus,
            load_cpus=load_cpus,
            all_cpus=all_cpus,
            hello_script=clients.write_hello_script(workdir / "hello.lua"),
        )
        for key in args.rows:
            print(f"row {key} ...", flush=True)
            start = time.monotonic()
            try:
                result = rows.ROWS[key](env)
            except Exception as exc:  # a failed row is reported; the others still run
                if not isinstance(exc, BenchError):  # Unavailable is one too
                    traceback.print_exc()
                result = rows.RowResult(key, rows.TITLES[key])
                result.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                result.notes.append(str(exc))
            result.seconds = time.monotonic() - start
            print(f"row {key}: {result.seconds:.0f} s", flush=True)
            results.append(result)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_signals()
    started = time.monotonic()
    meta: dict[str, Any] = {
        "benchmark": "make bench",
        "command": "bench/run.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "machine": machine_info(),
        "versions": versions(),
        "settings": vars(args.settings),
        "rows_selected": args.rows,
        "cpu_split": cpu_split()[3],
        "knobs": servers.KNOBS,
    }
    try:
        results = run(args)
    except Unavailable as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the servers were stopped on the way out
        print("\nbench: interrupted, every server stopped", file=sys.stderr)
        return 130
    meta["seconds"] = round(time.monotonic() - started, 1)
    print()
    print(report.text_table(results))
    notes = report.notes_text(results)
    if notes:
        print("\nnotes:")
        for n in notes:
            print(f"  - {n}")
    print("\n" + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()))
    print(f"{meta['cpu_split']}; {meta['seconds']:.0f} s in all")

    args.output_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.output_dir / f"bench-{stamp}"
    md = report.markdown(results, meta)
    out.with_suffix(".json").write_text(json.dumps(report.to_json(results, meta), indent=2) + "\n")
    out.with_suffix(".md").write_text(md)
    print(f"results: {out}.json, {out}.md")
    if args.write_docs:
        report.update_docs(DOCS, md)
        print(f"updated {DOCS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
