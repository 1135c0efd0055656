"""Compile tlsgate's hot modules with mypyc, in place, or explain why not.

How this works: mypyc turns the type-annotated modules of the data plane's hot
path into C extensions, written next to their sources in ``src/`` (shared code
in one ``*__mypyc*.so``). Python then imports the extension instead of the
``.py`` file -- unless a source is newer than its extension (an edit not yet
compiled) or ``TLSGATE_PURE=1`` is set, in which case ``tlsgate/__init__.py``
loads every module from source, so a stale build is never run. The pure-Python
path is the same code and stays tested (``make test`` runs the unit tier both
ways).

Needs a C compiler and the Python headers (Debian: ``build-essential`` and
``python3-dev``); without them this script says so and exits 0: tlsgate runs as
pure Python, slower. ``--clean`` removes the build output.

Run through make: ``make compile`` (``make venv``, ``make test``, ``make bench``
and ``make demo`` do it when a source changed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"

# The per-request path, measured with bench/bench_exchange.py and py-spy: request and
# response parsing callbacks, validation and header rewriting, routing, balancing, the
# pool, the deadline wheel and the access log; per new connection, the accept paths,
# the ClientHello parser, the L4 session, its splicer and the epoll set.
# (proto/proxy_protocol.py stays interpreted: compiled, a bool given as a port would
# arrive as the int 1 and pass its check.)
MODULES = [
    "tlsgate/logs.py",
    "tlsgate/proto/http1.py",
    "tlsgate/proto/clienthello.py",
    "tlsgate/routing/balance.py",
    "tlsgate/routing/hosts.py",
    "tlsgate/net/deadlines.py",
    "tlsgate/net/pool.py",
    "tlsgate/net/runtime.py",
    "tlsgate/net/upstream.py",
    "tlsgate/net/exchange.py",
    "tlsgate/net/http_proxy.py",
    "tlsgate/net/poller.py",
    "tlsgate/net/connect.py",
    "tlsgate/net/l4.py",
    "tlsgate/net/listener.py",
]


def built() -> list[Path]:
    return sorted(SRC.rglob("*.so"))


def clean() -> None:
    for so in built():
        so.unlink()
    shutil.rmtree(SRC / "build", ignore_errors=True)


def why_not() -> str | None:
    """Why mypyc cannot build here, or None."""
    if shutil.which(sysconfig.get_config_var("CC").split()[0] or "cc") is None:
        return "no C compiler (Debian: apt-get install build-essential)"
    include = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not include.exists():
        return f"no Python headers ({include}; Debian: apt-get install python3-dev)"
    try:
        import mypyc  # noqa: F401
    except ImportError:
        return "mypyc is not installed (it comes with mypy: pip install -e '.[dev]')"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description="compile tlsgate's hot modules with mypyc")
    parser.add_argument("--clean", action="store_true", help="remove the compiled modules")
    args = parser.parse_args()
    if args.clean:
        clean()
        return 0
    reason = why_not()
    if reason is not None:
        print(f"compile: skipped, tlsgate runs as pure Python: {reason}", file=sys.stderr)
        return 0
    clean()
    mypyc = [sys.executable, "-m", "mypyc"]
    env = dict(os.environ, MYPYC_OPT_LEVEL="3")
    result = subprocess.run(
        [*mypyc, *MODULES], cwd=SRC, env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        clean()
        print(result.stdout[-4000:], result.stderr[-4000:], sep="\n", file=sys.stderr)
        print("compile: mypyc failed; tlsgate runs as pure Python", file=sys.stderr)
        return 1
    shutil.rmtree(SRC / "build", ignore_errors=True)
    print(f"compile: {len(MODULES)} modules compiled with mypyc ({len(built())} extensions)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
