"""What every fuzz target shares: instrumented imports, the entry point, input helpers.

How this works: a target is a module, ``fuzz/targets/fuzz_<name>.py``, whose
``test_one_input(data: bytes) -> None`` feeds ``data`` to one parser and checks
what the parser promises. It returns normally for every input the parser
handles as documented and raises for everything else: an exception the
parser's docstring does not allow escapes as it is, a broken invariant is an
:class:`InvariantViolation` saying which. Run as a script (``fuzz/run.py`` does
it), the target hands ``test_one_input`` to atheris, which runs libFuzzer's
coverage-guided loop over it; any exception is a crash, and libFuzzer writes
the input to its ``-artifact_prefix``. (Run it from the repository root as
``python -m fuzz.targets.fuzz_<name>``: ``fuzz`` is a package, so that mypy
sees ``fuzz.run`` and ``bench/run.py``'s ``run`` as two modules.) Imported
(the corpus replay test in ``tests/unit/fuzz_regressions/`` does),
``test_one_input`` is a plain function and nothing here touches atheris.

Coverage guidance needs Python bytecode, so :func:`instrumented` -- entered
around the target's tlsgate imports -- does three things, only when the target
is ``__main__``: sets ``TLSGATE_PURE=1``, so the mypyc-compiled extensions are
not used (``tlsgate/__init__.py``); imports the ``tlsgate`` package itself
first, so that its source-only finder is on ``sys.meta_path`` *before*
atheris's import hook goes in front of it (the hook wraps the finders after
it); then instruments every ``tlsgate`` module imported inside the block, and
nothing else (httptools, cryptography and the standard library are not
instrumented: their branches would only dilute the feedback).

Targets read structured inputs with :class:`Reader`, a few lines instead of
atheris's FuzzedDataProvider, which has no type stubs and cannot be used
without atheris.
"""

from __future__ import annotations

import contextlib
import os
import sys
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

__all__ = [
    "KNOWN_ISSUES",
    "InvariantViolation",
    "Reader",
    "check",
    "check_incremental_parse",
    "instrumented",
    "known_issue",
    "main",
    "sampled",
]

_T = TypeVar("_T")

# Bugs the targets found that have a failing regression test
# (tests/unit/fuzz_regressions/test_found_by_fuzzing.py) but no fix yet: the
# targets tolerate them, so that a long run is not spent finding them again,
# unless TLSGATE_FUZZ_STRICT=1. Drop an entry once its fix is in.
KNOWN_ISSUES: dict[str, str] = {}
STRICT = os.environ.get("TLSGATE_FUZZ_STRICT", "") not in ("", "0")
seen_issues: set[str] = set()


def known_issue(name: str, message: str) -> None:
    """Tolerate the known bug ``name`` (see :data:`KNOWN_ISSUES`), or fail when strict."""
    if STRICT or name not in KNOWN_ISSUES:
        raise InvariantViolation(f"{message} [{name}]")
    seen_issues.add(name)


class InvariantViolation(Exception):
    """A parser returned something it promises it never returns."""


def sampled(data: bytes, one_in: int) -> bool:
    """Whether ``data`` is among the ``1/one_in`` of inputs that get a costly check.

    A check that re-parses the input many times (every prefix, every buffer
    type) would cut a fast target's rate by ten; run on a fixed share of the
    inputs -- chosen by their CRC, so a crash reproduces from its input alone --
    it still sees every kind of input the fuzzer makes, many times over.
    """
    return zlib.crc32(data) % one_in == 0


def check(condition: bool, message: str) -> None:
    """Raise :class:`InvariantViolation` with ``message`` unless ``condition``.

    Not ``assert``: ``python -O`` would drop the checks, and the fuzzer with them.
    """
    if not condition:
        raise InvariantViolation(message)


@contextlib.contextmanager
def instrumented(module_name: str, *, exclude: Sequence[str] = ()) -> Iterator[None]:
    """Instrument the tlsgate modules imported in the block, when run as a fuzz target.

    Args:
        module_name: the target's ``__name__``; nothing happens unless it is
            ``"__main__"`` (an import by a test runs the modules as they are).
        exclude: tlsgate modules that are imported but not fuzzed (e.g. the
            config loader in the data-plane targets): left uninstrumented,
            they run faster and add no noise to the coverage map.
    """
    if module_name != "__main__":
        yield
        return
    os.environ["TLSGATE_PURE"] = "1"
    import tlsgate

    if tlsgate.COMPILED:  # pragma: no cover - TLSGATE_PURE=1 rules it out
        raise SystemExit("fuzz: tlsgate was imported compiled; instrumentation needs bytecode")
    from atheris.import_hook import instrument_imports

    with instrument_imports(include=["tlsgate"], exclude=list(exclude)):
        yield


def main(test_one_input: Callable[[bytes], None]) -> None:
    """Run ``test_one_input`` under atheris with the command line's libFuzzer flags.

    Two modes of our own come first (``fuzz/run.py`` uses both): ``--signature
    FILE`` prints what a crash input raises, as :func:`signature` puts it, and
    ``--minimize FILE OUT`` writes to OUT the smallest input found that still
    raises the same (libFuzzer's own ``-minimize_crash`` re-executes the
    program, which for a Python target is the interpreter, and does not work).
    """
    if len(sys.argv) == 3 and sys.argv[1] == "--signature":
        with open(sys.argv[2], "rb") as f:
            print(signature(test_one_input, f.read()) or "no crash")
        return
    if len(sys.argv) == 4 and sys.argv[1] == "--minimize":
        with open(sys.argv[2], "rb") as f:
            data = f.read()
        smallest = minimize(test_one_input, data)
        with open(sys.argv[3], "wb") as f:
            f.write(smallest)
        print(f"{len(data)} -> {len(smallest)} bytes: {signature(test_one_input, smallest)}")
        return
    import atheris

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


def signature(test_one_input: Callable[[bytes], None], data: bytes) -> str | None:
    """What ``data`` raises, as ``Type at file:line`` of the frame that raised; None: nothing.

    Two inputs with one signature are taken for one bug (the runner counts
    crashes by it, the minimizer keeps it). The message is left out: it
    usually quotes the input.
    """
    try:
        test_one_input(data)
    except Exception as exc:
        where = "?"
        tb = exc.__traceback__
        while tb is not None:  # the innermost frame, not counting check() and the like
            name = os.path.basename(tb.tb_frame.f_code.co_filename)
            if name != "_fuzzcommon.py":
                where = f"{name}:{tb.tb_lineno}"
            tb = tb.tb_next
        cause = exc.__context__
        inner = f" <- {type(cause).__name__}" if cause is not None else ""
        return f"{type(exc).__name__}{inner} at {where}"
    return None


def minimize(test_one_input: Callable[[bytes], None], data: bytes, budget: int = 20_000) -> bytes:
    """A smaller input with the same :func:`signature`: drop chunks, then simplify bytes.

    Zeller's ddmin, greedily: try removing chunks of halving sizes, keep every
    removal that still crashes the same way; then try replacing each byte by
    a plain one. At most ``budget`` runs of the target.
    """
    wanted = signature(test_one_input, data)
    if wanted is None:
        return data
    runs = 0

    def same(candidate: bytes) -> bool:
        nonlocal runs
        runs += 1
        return signature(test_one_input, candidate) == wanted

    size = max(len(data) // 2, 1)
    while size >= 1 and runs < budget:
        start = 0
        while start < len(data) and runs < budget:
            candidate = data[:start] + data[start + size :]
            if candidate != data and same(candidate):
                data = candidate
            else:
                start += size
        size //= 2
    for i in range(len(data)):
        if runs >= budget:
            break
        for plain in (0x41, 0x30, 0x20):
            if data[i] != plain:
                candidate = data[:i] + bytes((plain,)) + data[i + 1 :]
                if same(candidate):
                    data = candidate
                    break
    return data


class Reader:
    """Consume a fuzzer's bytes as small structured choices; past the end, zeros.

    Every method is total: an exhausted input reads as zero bytes, so any input
    decodes to *some* structure and the fuzzer never wastes runs on a length
    check.
    """

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def byte(self) -> int:
        if self._pos >= len(self._data):
            return 0
        value = self._data[self._pos]
        self._pos += 1
        return value

    def take(self, count: int) -> bytes:
        """Up to ``count`` bytes (fewer at the end of the input)."""
        out = self._data[self._pos : self._pos + max(count, 0)]
        self._pos += len(out)
        return out

    def rest(self) -> bytes:
        return self.take(self.remaining)

    def int_below(self, bound: int) -> int:
        """An integer in ``0 .. bound - 1`` from as few bytes as it needs."""
        if bound <= 1:
            return 0
        width = (bound - 1).bit_length() // 8 + 1
        return int.from_bytes(self.take(width).ljust(width, b"\x00"), "big") % bound

    def flag(self) -> bool:
        return bool(self.byte() & 1)

    def pick(self, choices: Sequence[_T]) -> _T:
        return choices[self.int_below(len(choices))]

    def chunk(self, limit: int = 255) -> bytes:
        """A length byte (capped at ``limit``), then that many bytes."""
        return self.take(min(self.byte(), limit))


def check_incremental_parse(
    data: bytes,
    parse: Callable[[bytes | bytearray | memoryview], object],
    *,
    error: type[Exception],
    need_more: type,
    grow: bytes,
    tail: bytes,
    cuts: Sequence[int],
    what: str,
) -> object | None:
    """The checks every incremental sans-IO parser of tlsgate must pass.

    ``parse`` returns the parsed value, a ``need_more`` (with ``at_least``) or the
    ``error`` it raised. On every input only the documented answers may come; on
    the sampled quarter, also: the buffer type does not matter; an error stays an
    error when ``grow`` is appended; a complete value's ``size`` lies in the buffer,
    its own bytes parse the same, a ``tail`` after it changes nothing, and each
    prefix in ``cuts`` (those shorter than ``size``) needs more, with a sensible
    ``at_least``. ``what`` names the value in messages ("the ClientHello").

    Returns:
        The complete value for the parser's own checks, or None when there are none
        to make (not sampled, an error, or more data needed).
    """

    def same(a: object, b: object) -> bool:
        if isinstance(a, error) or isinstance(b, error):
            return type(a) is type(b) and str(a) == str(b)
        return a == b

    def needs_more_sensibly(result: object, have: int, limit: int | None) -> bool:
        at_least = getattr(result, "at_least", None)
        return at_least is None or have < at_least <= (limit if limit is not None else at_least)

    result = parse(data)
    if not sampled(data, 4):
        # every input: only the documented answers
        check(
            not isinstance(result, need_more) or needs_more_sensibly(result, len(data), None),
            f"{result!r} for {len(data)} bytes already there",
        )
        return None
    check(same(result, parse(bytearray(data))), "bytearray parses differently")
    check(same(result, parse(memoryview(data))), "memoryview parses differently")
    if isinstance(result, error):
        check(str(result) != "", "empty error message")
        check(
            isinstance(parse(data + grow), error),
            "an error became something else when more bytes came",
        )
        return None
    if isinstance(result, need_more):
        check(
            needs_more_sensibly(result, len(data), None),
            f"NeedMoreData({getattr(result, 'at_least', None)}) for {len(data)} bytes "
            "already there",
        )
        return None
    size = getattr(result, "size")  # noqa: B009 -- any parser's value with a size
    check(0 < size <= len(data), f"size {size} outside the {len(data)}-byte buffer")
    check(same(result, parse(data[:size])), f"{what}'s own bytes parse differently")
    check(same(result, parse(data[:size] + tail)), f"a tail after {what} changed the answer")
    for cut in set(cuts) | {size // 2, size - 1}:
        if 0 <= cut < size:
            prefix = parse(data[:cut])
            check(isinstance(prefix, need_more), f"prefix of {cut} bytes gave {prefix!r}")
            check(
                needs_more_sensibly(prefix, cut, size),
                f"prefix of {cut} bytes: at_least {getattr(prefix, 'at_least', None)} "
                f"outside ({cut}, {size}]",
            )
    return result
