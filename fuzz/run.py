"""Run every fuzz target for a fixed budget and report what each reached (``make fuzz``).

How this works: each ``fuzz/targets/fuzz_<name>.py`` is an atheris script;
this runs it, from the repository root, as libFuzzer would be run --

    python -m fuzz.targets.fuzz_<name> WORK SEEDS -max_total_time=N
        -print_final_stats=1 -artifact_prefix=fuzz/crashes/<name>/ ...

with ``TLSGATE_PURE=1`` (instrumentation needs bytecode, not the mypyc
build), ``WORK`` = ``fuzz/.work/<name>/corpus`` first, so what the fuzzer
finds goes there and the checked-in seeds in ``fuzz/corpus/<name>/`` stay as
they are (``--fresh`` empties WORK first: a run from the seeds alone). Up to
``--jobs`` targets run at once. A crash stops libFuzzer; the crash input is
minimized in-process (``--minimize``, see ``_fuzzcommon.main``) into
``fuzz/crashes/<name>/min-<sha1>``, and the target is started again for what
is left of its budget, up to ``--max-crashes`` times, so one bug does not
end a run. Crashes are told apart by signature (exception type, the frame
that raised).

Each run's figures come from libFuzzer's final stats lines --
``stat::number_of_executed_units``, ``stat::new_units_added`` -- and its last
status line (``cov:`` edges, ``ft:`` features, ``corp:`` corpus size), summed
over restarts. The table goes to stdout, the figures as JSON to
``fuzz/.work/summary.json``; the exit status is 1 if anything crashed.

Usage::

    .venv/bin/python fuzz/run.py                      # every target, ~10 minutes with 2 jobs
    .venv/bin/python fuzz/run.py --seconds 30 --jobs 1 clienthello http1
    .venv/bin/python fuzz/run.py --time http_requests=300 --fresh
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FUZZ = ROOT / "fuzz"
TARGETS_DIR = FUZZ / "targets"
WORK = FUZZ / ".work"

# Longest input libFuzzer generates per target: room for the biggest real inputs
# (a v2 header with 4 KiB of TLVs, a TOML file, a few pipelined requests), no more.
MAX_LEN = {"proxy_protocol": 5000, "clienthello": 2048, "store": 1024}
DEFAULT_MAX_LEN = 4096
# Seconds per target by default: ~10 minutes of wall time with 2 jobs. The fastest
# target gets twice the time: it is where most of the executions come from.
DEFAULT_SECONDS = 150.0
SECONDS = {"proxy_protocol": 300.0}
DICTS = {"http1": "http", "http_requests": "http", "http_responses": "http", "config": "toml"}

_STAT = re.compile(rb"^stat::(\w+):\s+(\d+)", re.M)
_STATUS = re.compile(rb"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/", re.M)
_ARTIFACT = re.compile(rb"Test unit written to (\S+)")
_DONE = re.compile(rb"^Done (\d+) runs in (\d+) second", re.M)


@dataclass
class Result:
    target: str
    seconds: float = 0.0
    executions: int = 0
    new_units: int = 0
    coverage: int = 0  # libFuzzer's cov: (instrumented edges reached)
    features: int = 0  # ft:
    corpus: int = 0
    runs: int = 0  # libFuzzer processes (1 + restarts after crashes)
    crashes: list[str] = field(default_factory=list)  # "signature: path"
    errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.executions / self.seconds if self.seconds else 0.0


def targets() -> list[str]:
    return sorted(p.stem.removeprefix("fuzz_") for p in TARGETS_DIR.glob("fuzz_*.py"))


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["TLSGATE_PURE"] = "1"
    return env


def _script(target: str) -> list[str]:
    """The command that runs a target (from the repository root: ``fuzz`` is a package)."""
    return [sys.executable, "-m", f"fuzz.targets.fuzz_{target}"]


def _signature(target: str, path: Path) -> str:
    out = subprocess.run(
        [*_script(target), "--signature", str(path)],
        capture_output=True,
        env=_env(),
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    lines = out.stdout.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else f"unreproducible (exit {out.returncode})"


def _minimize(target: str, path: Path) -> Path:
    digest = hashlib.sha1(path.read_bytes()).hexdigest()  # noqa: S324 - a file name
    out = path.with_name(f"min-{digest}")
    subprocess.run(
        [*_script(target), "--minimize", str(path), str(out)],
        capture_output=True,
        env=_env(),
        cwd=ROOT,
        timeout=600,
        check=False,
    )
    return out if out.exists() else path


def run_target(target: str, seconds: float, *, max_crashes: int, fresh: bool) -> Result:
    result = Result(target)
    work = WORK / target
    corpus = work / "corpus"
    if fresh and corpus.exists():
        shutil.rmtree(corpus)
    corpus.mkdir(parents=True, exist_ok=True)
    crashes = FUZZ / "crashes" / target
    crashes.mkdir(parents=True, exist_ok=True)
    seeds = FUZZ / "corpus" / target
    seen: set[str] = set()
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left < 2:
            break
        flags = [
            f"-max_total_time={int(left)}",
            "-print_final_stats=1",
            f"-artifact_prefix={crashes}/",
            f"-max_len={MAX_LEN.get(target, DEFAULT_MAX_LEN)}",
            "-timeout=20",
            "-rss_limit_mb=2048",
        ]
        if target in DICTS:
            flags.append(f"-dict={FUZZ / 'dicts' / (DICTS[target] + '.dict')}")
        log_path = work / f"log-{result.runs}.txt"
        started = time.monotonic()
        with log_path.open("wb") as log:
            proc = subprocess.run(
                [*_script(target), str(corpus), str(seeds), *flags],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_env(),
                cwd=ROOT,
                timeout=left + 300,
                check=False,
            )
        result.seconds += time.monotonic() - started
        result.runs += 1
        output = log_path.read_bytes()
        stats = {k.decode(): int(v) for k, v in _STAT.findall(output)}
        executions = stats.get("number_of_executed_units")
        if executions is None:  # no final stats: take the last status or Done line
            done = _DONE.findall(output) or [(m[0], b"0") for m in _STATUS.findall(output)[-1:]]
            executions = int(done[-1][0]) if done else 0
        result.executions += executions
        result.new_units += stats.get("new_units_added", 0)
        status = _STATUS.findall(output)
        if status:
            _, cov, ft, corp = status[-1]
            result.coverage = max(result.coverage, int(cov))
            result.features = max(result.features, int(ft))
            result.corpus = max(result.corpus, int(corp))
        artifact = _ARTIFACT.search(output)
        if artifact is None:
            if proc.returncode != 0:
                tail = output[-400:].decode(errors="replace")
                result.errors.append(f"exit {proc.returncode} without a crash input: {tail}")
            break
        path = Path(artifact.group(1).decode())
        sig = _signature(target, path)
        if sig not in seen:
            seen.add(sig)
            result.crashes.append(f"{sig}: {_minimize(target, path).relative_to(ROOT)}")
        if len(result.crashes) >= max_crashes:
            break
    return result


def _table(results: list[Result], wall: float) -> str:
    head = ("target", "seconds", "executions", "exec/s", "cov", "ft", "corpus", "new", "crashes")
    rows = [
        (
            r.target,
            f"{r.seconds:.0f}",
            f"{r.executions:,}",
            f"{r.rate:,.0f}",
            str(r.coverage),
            str(r.features),
            str(r.corpus),
            str(r.new_units),
            str(len(r.crashes)),
        )
        for r in results
    ]
    total = sum(r.executions for r in results)
    rows.append(
        (
            "total",
            f"{sum(r.seconds for r in results):.0f}",
            f"{total:,}",
            "",
            "",
            "",
            "",
            str(sum(r.new_units for r in results)),
            str(sum(len(r.crashes) for r in results)),
        )
    )
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [head, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"wall time {wall:.0f} s")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description="Run every fuzz target for a fixed budget.")
    parser.add_argument("targets", nargs="*", help=f"targets to run (default: all of {targets()})")
    parser.add_argument(
        "--seconds",
        type=float,
        help=f"budget per target (default {DEFAULT_SECONDS:g}; {SECONDS})",
    )
    parser.add_argument(
        "--time",
        action="append",
        default=[],
        metavar="TARGET=SECONDS",
        help="a different budget for one target (repeatable)",
    )
    parser.add_argument(
        "--jobs", type=int, default=min(2, os.cpu_count() or 1), help="targets run at once"
    )
    parser.add_argument(
        "--max-crashes", type=int, default=3, help="distinct crashes per target before it stops"
    )
    parser.add_argument("--fresh", action="store_true", help="start from the seeds alone")
    args = parser.parse_args()

    chosen = args.targets or targets()
    unknown = set(chosen) - set(targets())
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}; there are {targets()}")
    budget = {
        t: args.seconds if args.seconds is not None else SECONDS.get(t, DEFAULT_SECONDS)
        for t in chosen
    }
    for item in args.time:
        name, _, value = item.partition("=")
        if name not in budget:
            parser.error(f"--time {item}: {name!r} is not a chosen target")
        budget[name] = float(value)

    # the longest first, so that the last ones to finish are short
    order = sorted(chosen, key=lambda t: -budget[t])
    print(f"fuzzing {len(order)} targets, {args.jobs} at a time: "
          + ", ".join(f"{t} {budget[t]:.0f}s" for t in order), flush=True)  # fmt: skip
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
        futures = {
            t: pool.submit(run_target, t, budget[t], max_crashes=args.max_crashes, fresh=args.fresh)
            for t in order
        }
        results = [futures[t].result() for t in chosen]
    wall = time.monotonic() - started
    print(_table(results, wall))
    for r in results:
        for crash in r.crashes:
            print(f"CRASH {r.target}: {crash}")
        for error in r.errors:
            print(f"ERROR {r.target}: {error}")
    WORK.mkdir(parents=True, exist_ok=True)
    summary = {
        "wall_seconds": round(wall, 1),
        "jobs": args.jobs,
        "total_executions": sum(r.executions for r in results),
        "targets": [asdict(r) | {"exec_per_second": round(r.rate, 1)} for r in results],
    }
    (WORK / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if any(r.crashes or r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
