"""Every key the loader knows, given every kind of TOML value: a Config or a ConfigError.

The loader's own tests fuzz whole documents (test_config_loader.py); these
aim at each reader instead. A valid file gets one key -- any key of any
section, taken from the loader's own tables so new keys are covered as they
are added -- set to a value of any TOML type: the datetimes, dates and times,
infinities, NaN, huge integers, nested arrays and tables and control
characters that a hand-written example rarely has. The loader must answer a
Config or a ConfigError whose problems each name the file and say something,
and a ConfigError for a key that does not exist must point at that key.
The fuzz target ``fuzz/targets/fuzz_config.py`` does the same under coverage
guidance.
"""

from __future__ import annotations

import datetime
import json
import math
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tlsgate.config import loader
from tlsgate.config.loader import parse_config
from tlsgate.errors import ConfigError

SOURCE = Path("/etc/tlsgate/values.toml")

Value = (
    str
    | int
    | float
    | bool
    | datetime.datetime
    | datetime.date
    | datetime.time
    | list["Value"]
    | dict[str, "Value"]
)

BASE: dict[str, dict[str, Value] | list[dict[str, Value]]] = {
    "listeners": [
        {"name": "web", "bind": ["127.0.0.1:8080"], "protocol": "http", "backend": "app"}
    ],
    "backends": [{"name": "app", "servers": ["127.0.0.1:9000"]}],
}
# (section, array of tables?, the keys the loader reads there)
SECTIONS: list[tuple[str, bool, tuple[str, ...]]] = [
    ("node", False, loader._NODE_KEYS),
    ("log", False, loader._LOG_KEYS),
    ("store", False, loader._STORE_KEYS),
    ("acme", False, loader._ACME_KEYS),
    ("certificates", True, loader._CERTIFICATE_KEYS),
    ("listeners", True, loader._LISTENER_KEYS),
    ("routes", True, loader._ROUTE_KEYS),
    ("backends", True, loader._BACKEND_KEYS),
]
EXTRA: dict[str, dict[str, Value]] = {
    "certificates": {
        "name": "c",
        "domains": ["example.com"],
        "cert_file": "c.pem",
        "key_file": "k",
    },
    "routes": {"listener": "web", "backend": "app"},
    "acme": {"directory": "https://acme.example/dir"},
}

TZ = st.sampled_from([None, datetime.UTC, datetime.timezone(datetime.timedelta(hours=-5))])
scalars: st.SearchStrategy[Value] = (
    st.text(max_size=16)
    | st.sampled_from(["", "5s", "64KiB", "127.0.0.1:1", "[::1]:443", "app", "web", "0", "x" * 300])
    | st.integers()
    | st.floats()
    | st.booleans()
    | st.datetimes(timezones=TZ)
    | st.dates()
    | st.times()
)
values: st.SearchStrategy[Value] = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)


def basic(text: str) -> str:
    """A TOML basic string: JSON's escapes, and DEL, which TOML also wants escaped."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml(value: Value) -> str:
    """``value`` as a TOML value (tomllib can read, tomli-w is not a dependency)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return basic(value)
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    return "{" + ", ".join(f"{basic(k)} = {toml(v)}" for k, v in value.items()) + "}"


def document(section: str, array: bool, key: str, value: Value) -> str:
    tables: dict[str, list[dict[str, Value]]] = {
        name: [dict(t) for t in (v if isinstance(v, list) else [v])] for name, v in BASE.items()
    }
    if section not in tables:
        tables[section] = [dict(EXTRA.get(section, {}))]
    tables[section][0][key] = value
    lines = []
    for name, entries in tables.items():
        for entry in entries:
            lines.append(f"[[{name}]]" if array or name in BASE else f"[{name}]")
            lines += [f"{basic(k)} = {toml(v)}" for k, v in entry.items()]
    return "\n".join(lines) + "\n"


def outcome(text: str) -> ConfigError | None:
    """None for a Config; the ConfigError, once its problems are checked, otherwise."""
    error: ConfigError | None = None
    try:
        parse_config(text, SOURCE)
    except ConfigError as exc:
        error = exc
    if error is not None:
        assert error.problems
        for problem in error.problems:
            assert problem.file == str(SOURCE)
            assert problem.message
        assert str(error)
    return error


def test_the_base_document_is_valid() -> None:
    assert outcome(document("log", False, "level", "info")) is None


@st.composite
def known_keys(draw: st.DrawFn) -> tuple[str, bool, str]:
    section, array, known = draw(st.sampled_from(SECTIONS))
    return section, array, draw(st.sampled_from(known))


@settings(max_examples=250, suppress_health_check=[HealthCheck.too_slow])
@given(where=known_keys(), value=values)
def test_any_value_at_any_known_key(where: tuple[str, bool, str], value: Value) -> None:
    section, array, key = where
    outcome(document(section, array, key, value))


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(where=known_keys(), value=values)
def test_a_table_where_an_array_of_tables_belongs_and_the_reverse(
    where: tuple[str, bool, str], value: Value
) -> None:
    section, array, key = where
    if section in BASE:
        return  # the base file already has it the right way
    assert outcome(document(section, not array, key, value)) is not None


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(
    section=st.sampled_from(SECTIONS),
    key=st.text(min_size=1, max_size=10),
    value=values,
)
def test_an_unknown_key_is_reported_where_it_is(
    section: tuple[str, bool, tuple[str, ...]], key: str, value: Value
) -> None:
    name, array, known = section
    if key in known or key in loader._UNSUPPORTED_KEYS.get(name, {}):
        return
    error = outcome(document(name, array, key, value))
    assert error is not None
    shown = key.replace('"', '\\"')
    assert any(p.key_path.startswith(name) and shown in p.key_path for p in error.problems), [
        str(p) for p in error.problems
    ]
