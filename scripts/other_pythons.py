"""Run the unit tier and the smoke test on every other supported Python on this machine.

How this works: the supported versions are the ``Programming Language :: Python ::
3.N`` classifiers of ``pyproject.toml``; the one running this script (``make``'s
``$(PYTHON)``, the interpreter ``.venv`` is built from) is skipped, since ``make test``
has already run the whole suite on it. Every other version is looked for, in this
order: ``$PYTHON_3_N`` (a path; ``make test-other-pythons PYTHON_3_12=...``),
``python3.N`` on ``PATH`` (run once to prove it works: a pyenv shim of a version that
is installed but not selected is on ``PATH`` and fails), then pyenv's
``versions/3.N.*`` (``$PYENV_ROOT``, else ``~/.pyenv``; the newest patch release).
A version that is not found, or whose interpreter has no ``venv``/``ensurepip``, is
reported as skipped, not failed.

For each one found, ``.venv-3.N`` is (re)built when its stamp (``.venv-3.N/.installed``:
the interpreter, and a hash of ``pyproject.toml``) does not match: first the
dependencies, the ``test`` extra and the build backend, in every such venv at once
(mostly downloads), then the project itself, editable, without dependencies or build
isolation, one venv at a time (setuptools writes ``src/tlsgate.egg-info`` while it
builds). Then ``pytest tests/unit`` and ``pytest tests/smoke`` in each: the pure-Python
modules (the mypyc extensions in ``src/`` are built for the default Python, and another
interpreter's import system does not even look at them), and one real ``tlsgate
serve`` (tests/smoke/test_smoke_serve.py). ``--jobs N`` tests N interpreters at once
(make passes 2: much of the unit tier waits on timers and subprocesses, so two
interpreters side by side take about 90 s on two cores, one after the other about
130 s). Each pytest's output goes to ``.venv-3.N/pytest-{unit,smoke}.log``; its last
line is printed, and its last 40 when it failed.

Exit status: 0 when every interpreter found passed (none found is 0 too), 1 otherwise.
Run through make: ``make test-other-pythons`` (``make test`` does it last).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
PIP = ["-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
TIERS = {"unit": "tests/unit", "smoke": "tests/smoke"}

_install_lock = threading.Lock()  # editable installs, one at a time
_print_lock = threading.Lock()


def say(text: str) -> None:
    with _print_lock:
        print(f"test-other-pythons: {text}", flush=True)


def supported_versions() -> list[str]:
    classifiers = tomllib.loads(PYPROJECT.read_text())["project"]["classifiers"]
    found = [m.group(1) for c in classifiers if (m := re.fullmatch(r".* :: (3\.\d+)", c))]
    return sorted(found, key=lambda v: tuple(map(int, v.split("."))))


def probe(exe: str | Path) -> str | None:
    """The ``X.Y`` that ``exe`` reports, or None if it does not run."""
    try:
        proc = subprocess.run(
            [str(exe), "-c", "import sys; print('{}.{}'.format(*sys.version_info[:2]))"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def pyenv_candidates(version: str) -> list[Path]:
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    found = []
    for d in (root / "versions").glob(f"{version}.*"):
        m = re.fullmatch(re.escape(version) + r"\.(\d+)", d.name)  # not 3.13.0t, -dev, ...
        if m and (d / "bin" / f"python{version}").exists():
            found.append((int(m.group(1)), d / "bin" / f"python{version}"))
    return [exe for _, exe in sorted(found, reverse=True)]


def find_python(version: str) -> tuple[Path | None, str]:
    """The interpreter for ``version`` and where it came from, or None and why not."""
    override = os.environ.get(f"PYTHON_{version.replace('.', '_')}")
    candidates: list[tuple[str | Path, str]] = []
    if override:
        candidates.append((override, f"$PYTHON_{version.replace('.', '_')}"))
    else:
        on_path = shutil.which(f"python{version}")
        if on_path:
            candidates.append((on_path, "PATH"))
        candidates += [(exe, "pyenv") for exe in pyenv_candidates(version)]
    for exe, origin in candidates:
        if probe(exe) == version:
            resolved = shutil.which(str(exe)) or str(exe)
            return Path(resolved), origin
    if override:
        return None, f"$PYTHON_{version.replace('.', '_')}={override} is not Python {version}"
    return None, f"no python{version} on PATH or under pyenv"


def probe_modules(python: Path) -> str | None:
    """None if ``python`` can make a venv with pip, else the error."""
    proc = subprocess.run(
        [str(python), "-c", "import venv, ensurepip, ssl"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return None if proc.returncode == 0 else proc.stderr.strip()


@dataclass
class Target:
    version: str
    python: Path
    origin: str
    venv: Path = field(init=False)
    times: dict[str, float] = field(default_factory=dict)
    results: dict[str, str] = field(default_factory=dict)  # phase -> "ok" / "cached" / "FAILED"

    def __post_init__(self) -> None:
        self.venv = ROOT / f".venv-{self.version}"

    @property
    def bin_python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def stamp(self) -> Path:
        return self.venv / ".installed"

    def wanted_stamp(self) -> str:
        digest = hashlib.sha256(PYPROJECT.read_bytes()).hexdigest()
        return f"{self.python.resolve()}\n{digest}\n"

    def failed(self) -> bool:
        return "FAILED" in self.results.values()


def run_logged(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> int:
    with log.open("w") as out:
        return subprocess.run(
            cmd,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            check=False,
        ).returncode


def tail(log: Path, lines: int) -> str:
    text = log.read_text(errors="replace").rstrip("\n").split("\n")
    return "\n".join("    " + line for line in text[-lines:])


def requirements_for_tests() -> list[str]:
    """The dependencies, the ``test`` extra, and the build backend (for phase two)."""
    pyproject = tomllib.loads(PYPROJECT.read_text())
    project = pyproject["project"]
    return [
        *project["dependencies"],
        *project["optional-dependencies"]["test"],
        *pyproject["build-system"]["requires"],
    ]


def build_deps(t: Target) -> None:
    """Phase one (parallel): a fresh venv with the dependencies and the test extra."""
    start = time.monotonic()
    log = ROOT / f".venv-{t.version}.build.log"  # the venv is not there yet
    say(f"{t.version}: building {t.venv.name} (pyproject.toml changed or no venv yet)")
    shutil.rmtree(t.venv, ignore_errors=True)
    rc = run_logged([str(t.python), "-m", "venv", str(t.venv)], log)
    if rc == 0:
        with log.open("a") as out:
            rc = subprocess.run(
                [str(t.bin_python), *PIP, *requirements_for_tests()],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
            ).returncode
    t.times["venv"] = time.monotonic() - start
    if rc != 0:
        t.results["venv"] = "FAILED"
        say(f"{t.version}: venv build FAILED (exit {rc}), log {log}:\n{tail(log, 25)}")


def install_project(t: Target) -> None:
    """Phase two (serial): tlsgate itself, editable, and the stamp."""
    start = time.monotonic()
    log = ROOT / f".venv-{t.version}.build.log"
    with _install_lock, log.open("a") as out:
        rc = subprocess.run(
            [str(t.bin_python), *PIP, "--no-deps", "--no-build-isolation", "-e", "."],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        ).returncode
    t.times["venv"] += time.monotonic() - start
    if rc != 0:
        t.results["venv"] = "FAILED"
        say(f"{t.version}: installing tlsgate FAILED (exit {rc}), log {log}:\n{tail(log, 25)}")
        return
    shutil.move(log, t.venv / "build.log")
    t.stamp.write_text(t.wanted_stamp())
    t.results["venv"] = "ok"
    say(f"{t.version}: {t.venv.name} built in {t.times['venv']:.0f}s")


def run_tiers(t: Target) -> None:
    env = dict(os.environ)
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = f"{t.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    for tier, path in TIERS.items():
        log = t.venv / f"pytest-{tier}.log"
        start = time.monotonic()
        cmd = [str(t.bin_python), "-m", "pytest", "-q", "-p", "no:cacheprovider", path]
        rc = run_logged(cmd, log, env)
        t.times[tier] = time.monotonic() - start
        t.results[tier] = "ok" if rc == 0 else "FAILED"
        took = f"{t.times[tier]:.0f}s"
        if rc == 0:
            say(f"{t.version}: {tier} passed in {took}: {tail(log, 1).strip()}")
        else:
            say(f"{t.version}: {tier} FAILED (exit {rc}) in {took}, log {log}:\n{tail(log, 40)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--jobs", type=int, default=1, help="interpreters tested at once (default 1)"
    )
    args = parser.parse_args()
    default = "{}.{}".format(*sys.version_info[:2])
    versions = supported_versions()
    if default not in versions:
        say(f"note: the default Python {default} is not among the supported {versions}")
    targets: list[Target] = []
    skipped: list[tuple[str, str]] = []
    for version in versions:
        if version == default:
            continue
        python, origin = find_python(version)
        if python is None:
            skipped.append((version, origin))
            say(f"{version}: skipped ({origin})")
            continue
        if probe_modules(python) is not None:
            skipped.append((version, f"{python} has no venv/ensurepip"))
            say(
                f"{version}: skipped ({python} has no venv/ensurepip; Debian: python{version}-venv)"
            )
            continue
        say(f"{version}: {python} (from {origin})")
        targets.append(Target(version, python, origin))

    stale = [t for t in targets if not t.stamp.exists() or t.stamp.read_text() != t.wanted_stamp()]
    for t in targets:
        if t not in stale:
            t.times["venv"] = 0.0
            t.results["venv"] = "cached"
    if stale:
        with ThreadPoolExecutor(len(stale)) as pool:
            list(pool.map(build_deps, stale))
        for t in stale:
            if not t.failed():
                install_project(t)

    ready = [t for t in targets if not t.failed()]
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        list(pool.map(run_tiers, ready))

    say(f"summary (default Python {default}: the whole suite, above)")
    for t in targets:
        cells = "  ".join(
            f"{phase} {t.results.get(phase, '-')} {t.times.get(phase, 0):.0f}s"
            for phase in ("venv", *TIERS)
        )
        say(f"  {t.version}  {cells}  ({t.python})")
    for version, why in skipped:
        say(f"  {version}  skipped: {why}")
    return 1 if any(t.failed() for t in targets) else 0


if __name__ == "__main__":
    sys.exit(main())
