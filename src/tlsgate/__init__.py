"""tlsgate: a TLS-first load balancer.

The data plane's hot modules may be compiled with mypyc (``make compile``,
``scripts/compile.py``): their C extensions sit next to the sources. They are
used only when every one of them is newer than its source; otherwise, or with
``TLSGATE_PURE=1`` in the environment, every tlsgate module is imported from
its ``.py`` file. ``COMPILED`` says which it is in this process.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

__version__ = "0.1.0"

_HERE = Path(__file__).resolve().parent


class _SourceOnlyFinder(importlib.abc.MetaPathFinder):
    """Finds ``tlsgate.*`` modules as ``.py`` files, never as compiled extensions."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith("tlsgate.") or path is None:
            return None
        loaders = (importlib.machinery.SourceFileLoader, importlib.machinery.SOURCE_SUFFIXES)
        for entry in path:
            spec = importlib.machinery.FileFinder(entry, loaders).find_spec(fullname)
            if spec is not None:
                return spec
        return None


def _use_compiled() -> bool:
    # only extensions this interpreter would import: a build for 3.11 is not one for 3.13
    suffixes = importlib.machinery.EXTENSION_SUFFIXES
    extensions = [
        p
        for p in _HERE.rglob("*.so")
        if p.name.split(".")[0] != "__init__" and "." + p.name.split(".", 1)[1] in suffixes
    ]
    if not extensions:
        return False
    stale = []
    for so in extensions:
        source = so.with_name(so.name.split(".", 1)[0] + ".py")
        if source.exists() and source.stat().st_mtime > so.stat().st_mtime:
            stale.append(source.relative_to(_HERE.parent))
    pure = os.environ.get("TLSGATE_PURE", "") not in ("", "0")
    if stale and not pure:
        # not a warning: test runs turn warnings into errors, and this is only slower
        sys.stderr.write(
            f"tlsgate: {', '.join(map(str, stale))} changed after it was compiled; "
            "running pure Python (run `make compile`)\n"
        )
    if pure or stale:
        sys.meta_path.insert(0, _SourceOnlyFinder())
        return False
    return True


COMPILED = _use_compiled()
