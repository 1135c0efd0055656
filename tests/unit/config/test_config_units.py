"""Durations and sizes: examples, error messages and properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tlsgate.config.units import parse_duration, parse_size

DURATION_FACTORS = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
SIZE_FACTORS = {
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "TiB": 1024**4,
}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("2s", 2.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("30d", 30 * 86_400.0),
        ("1h30m", 5400.0),
        ("1d2h3m4s5ms", 86_400 + 7_200 + 180 + 4 + 0.005),
        ("1.5s", 1.5),
        ("0.5ms", 0.0005),
        ("0s", 0.0),
        ("0", 0.0),
        (" 2s ", 2.0),
    ],
)
def test_parse_duration_examples(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds, rel=1e-15, abs=0)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "expected a duration like '2s', '500ms', '5m', '30d'"),
        ("2", "has no unit"),
        ("30", "write '30s'"),
        ("2x", "expected a duration like '2s', '500ms', '5m', '30d'"),
        ("-2s", "is not a valid duration"),
        ("2 s", "is not a valid duration"),
        ("1s1h", "largest first"),
        ("1m1m", "write each unit once"),
        ("2S", "is not a valid duration"),
        ("1e3s", "is not a valid duration"),
        (".5s", "is not a valid duration"),
        ("٣s", "is not a valid duration"),  # Arabic-Indic digit three
        ("9" * 80 + "s", "too long"),
    ],
)
def test_parse_duration_rejects(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match="duration") as info:
        parse_duration(text)
    assert fragment in str(info.value)


@given(n=st.integers(min_value=0, max_value=10**12), unit=st.sampled_from(list(DURATION_FACTORS)))
def test_parse_duration_integer_round_trip(n: int, unit: str) -> None:
    assert parse_duration(f"{n}{unit}") == float(n * DURATION_FACTORS[unit])


@given(n=st.integers(min_value=0, max_value=10**15))
def test_parse_duration_milliseconds_are_exact(n: int) -> None:
    # One correctly rounded division: never off by the error of n * 0.001.
    assert parse_duration(f"{n}ms") == n / 1000


@given(
    h=st.integers(min_value=0, max_value=10_000),
    m=st.integers(min_value=0, max_value=59),
    s=st.integers(min_value=0, max_value=59),
)
def test_parse_duration_compound(h: int, m: int, s: int) -> None:
    assert parse_duration(f"{h}h{m}m{s}s") == h * 3600 + m * 60 + s


@given(st.text(max_size=30))
def test_parse_duration_any_text_parses_or_raises_value_error(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        message = str(exc)
    else:
        assert seconds >= 0
        return
    assert message


@given(st.from_regex(r"[0-9.dhms ]{0,12}", fullmatch=True))
def test_parse_duration_near_miss_text_parses_or_raises_value_error(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except ValueError:
        return
    assert seconds >= 0


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("64KiB", 65_536),
        ("1MiB", 1_048_576),
        ("2GiB", 2 * 1024**3),
        ("512B", 512),
        ("10KB", 10_000),
        ("10kb", 10_000),
        ("1.5KiB", 1536),
        ("64 KiB", 65_536),
        ("4096", 4096),
        ("0", 0),
        (0, 0),
        (12345, 12345),
    ],
)
def test_parse_size_examples(value: str | int, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (-1, "negative"),
        (True, "is not a size"),
        ("", "is not a valid size"),
        ("64k", "unknown unit 'k'"),
        ("1M", "unknown unit 'M'"),
        ("1.5B", "not a whole number of bytes"),
        ("-1KiB", "is not a valid size"),
        ("KiB", "is not a valid size"),
        ("1" * 80, "too long"),
    ],
)
def test_parse_size_rejects(value: str | int, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_size(value)
    assert fragment in str(info.value)


@given(n=st.integers(min_value=0, max_value=10**9), unit=st.sampled_from(list(SIZE_FACTORS)))
def test_parse_size_round_trip(n: int, unit: str) -> None:
    assert parse_size(f"{n}{unit}") == n * SIZE_FACTORS[unit]
    assert parse_size(f"{n}{unit.lower()}") == n * SIZE_FACTORS[unit]


@given(st.integers(min_value=0))
def test_parse_size_int_passes_through(n: int) -> None:
    assert parse_size(n) == n


@given(st.integers(max_value=-1))
def test_parse_size_negative_int_is_rejected(n: int) -> None:
    with pytest.raises(ValueError, match="negative"):
        parse_size(n)


@given(st.text(max_size=30))
def test_parse_size_any_text_parses_or_raises_value_error(text: str) -> None:
    try:
        size = parse_size(text)
    except ValueError as exc:
        message = str(exc)
    else:
        assert size >= 0
        return
    assert message
