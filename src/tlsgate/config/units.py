"""Durations and sizes as they are written in the configuration file.

How this works: a duration is one or more ``<number><unit>`` parts with no
spaces between them ("250ms", "2s", "1h30m", "1.5s"), units in decreasing
order and each at most once; the bare string "0" is also accepted. A size is a
number followed by an optional byte unit ("512B", "64KiB", "10KB"), or an
integer count of bytes. Arithmetic is exact (``fractions.Fraction``) and the
result is rounded once, so "1500ms" is exactly ``1500 / 1000``. Anything else
raises ``ValueError`` with a message that says what a valid value looks like;
these functions never raise anything else for a ``str`` input.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

__all__ = ["parse_duration", "parse_size"]

# Long enough for any sensible value ("365d23h59m59s999ms" is 18 characters),
# short enough that no number in it can be slow to convert.
_MAX_LENGTH = 64

_DURATION_HINT = "expected a duration like '2s', '500ms', '5m', '30d'"
# Largest unit first: the order in which parts must appear.
_DURATION_UNITS: dict[str, Fraction] = {
    "d": Fraction(86_400),
    "h": Fraction(3_600),
    "m": Fraction(60),
    "s": Fraction(1),
    "ms": Fraction(1, 1_000),
}
_DURATION_RANK = {unit: rank for rank, unit in enumerate(_DURATION_UNITS)}
# [0-9] rather than \d: \d would also accept other scripts' digits.
_NUMBER = r"[0-9]+(?:\.[0-9]+)?"
# "ms" before "m" so that "5ms" is milliseconds, not minutes followed by garbage.
_DURATION_PART = re.compile(rf"({_NUMBER})(ms|d|h|m|s)")
_DURATION_WHOLE = re.compile(rf"(?:{_NUMBER}(?:ms|d|h|m|s))+")

_SIZE_HINT = "expected a size like '512B', '64KiB', '1MiB', '2GiB', '10KB' or a number of bytes"
# Decimal (SI) and binary (IEC) units. Bare "K"/"M"/"G" are refused on purpose:
# nginx reads "64k" as 64 KiB and others read it as 64 000 bytes.
_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(rf"({_NUMBER}) ?([A-Za-z]*)")


def parse_duration(value: str) -> float:
    """Parse a duration such as "250ms", "2s", "5m", "1h", "30d" or "1h30m".

    Args:
        value: the text from the config file. Surrounding whitespace is ignored.

    Returns:
        The duration in seconds (>= 0).

    Raises:
        ValueError: ``value`` is not a duration; the message shows valid examples.
    """
    text = value.strip()
    if len(text) > _MAX_LENGTH:
        raise ValueError(f"{_show(text)} is too long for a duration; {_DURATION_HINT}")
    if text == "0":
        return 0.0
    if not _DURATION_WHOLE.fullmatch(text):
        if re.fullmatch(_NUMBER, text):
            raise ValueError(
                f"{_show(text)} has no unit; {_DURATION_HINT} (for seconds write '{text}s')"
            )
        raise ValueError(f"{_show(text)} is not a valid duration; {_DURATION_HINT}")
    total = Fraction(0)
    previous_rank = -1
    for match in _DURATION_PART.finditer(text):
        number, unit = match.group(1), match.group(2)
        rank = _DURATION_RANK[unit]
        if rank <= previous_rank:
            raise ValueError(
                f"{_show(text)} is not a valid duration: write each unit once, largest first "
                "(d, h, m, s, ms), as in '1h30m'"
            )
        previous_rank = rank
        total += Fraction(number) * _DURATION_UNITS[unit]
    seconds = float(total)
    if not math.isfinite(seconds):  # pragma: no cover - the length limit keeps totals finite
        raise ValueError(f"{_show(text)} is too large for a duration")
    return seconds


def parse_size(value: str | int) -> int:
    """Parse a size such as "512B", "64KiB", "1MiB", "2GiB" or "10KB".

    KB, MB, GB and TB are powers of 1000; KiB, MiB, GiB and TiB powers of 1024.
    Units are case-insensitive, a number without a unit counts bytes, and a
    fractional number is allowed when the result is a whole number of bytes
    ("1.5KiB" is 1536). An ``int`` is a count of bytes and is returned as is.

    Args:
        value: the text or integer from the config file.

    Returns:
        The size in bytes (>= 0).

    Raises:
        ValueError: ``value`` is negative, a boolean, or not a size.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size; {_SIZE_HINT}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value} is negative; a size must be 0 or more bytes")
        return value
    text = value.strip()
    if len(text) > _MAX_LENGTH:
        raise ValueError(f"{_show(text)} is too long for a size; {_SIZE_HINT}")
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(f"{_show(text)} is not a valid size; {_SIZE_HINT}")
    number, unit = match.group(1), match.group(2)
    factor = _SIZE_UNITS.get(unit.lower())
    if factor is None:
        raise ValueError(
            f"{_show(text)} has an unknown unit {_show(unit)}; use one of B, KB, MB, GB, TB "
            "(powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024)"
        )
    size = Fraction(number) * factor
    if size.denominator != 1:
        raise ValueError(f"{_show(text)} is not a whole number of bytes")
    return size.numerator


def _show(text: str) -> str:
    """Quote user text for a message, shortened and with control characters escaped."""
    if len(text) > 40:
        text = text[:40] + "..."
    return repr(text)
