"""Every fuzz target accepts its seed corpus and every input kept from a past crash.

How this works: each ``fuzz/targets/fuzz_<name>.py`` is imported as a plain
module (atheris is not needed: the targets only use it when run as scripts)
and its ``test_one_input`` is called on every file of ``fuzz/corpus/<name>/``
-- the seeds ``fuzz/seeds.py`` writes -- and of ``fuzz/regressions/<name>/``,
the minimized inputs of crashes the fuzzer found, kept once fixed. A target
that raises on one of them is either broken itself (its input format or an
invariant drifted from the code) or a crash came back. Running the seeds
here keeps the targets working between fuzzing runs, in the pure and the
compiled build alike, in well under a second each.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parents[3] / "fuzz"
TARGETS = sorted(p.stem.removeprefix("fuzz_") for p in (FUZZ / "targets").glob("fuzz_*.py"))


def _inputs() -> Iterator[tuple[str, Path]]:
    for target in TARGETS:
        for kind in ("corpus", "regressions"):
            directory = FUZZ / kind / target
            if directory.is_dir():
                for path in sorted(directory.iterdir()):
                    if path.is_file():
                        yield target, path


def _target(name: str) -> Callable[[bytes], None]:
    if str(FUZZ.parent) not in sys.path:
        sys.path.insert(0, str(FUZZ.parent))  # the repository root: `fuzz` is a package
    module = importlib.import_module(f"fuzz.targets.fuzz_{name}")
    one: Callable[[bytes], None] = module.test_one_input
    return one


def test_every_target_has_seeds() -> None:
    assert TARGETS, "no fuzz targets found"
    for target in TARGETS:
        assert any((FUZZ / "corpus" / target).iterdir()), f"{target} has no seed corpus"


@pytest.mark.parametrize(
    ("target", "path"),
    [pytest.param(t, p, id=f"{p.parent.parent.name}/{t}/{p.name}") for t, p in _inputs()],
)
def test_target_accepts(target: str, path: Path) -> None:
    _target(target)(path.read_bytes())
