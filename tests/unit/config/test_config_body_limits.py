"""The listener keys for slow clients: ``body_timeout`` and ``body_min_rate`` (slow request
bodies) and ``send_timeout`` (slow readers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tlsgate.config.loader import parse_config
from tlsgate.config.model import ListenerLimits
from tlsgate.errors import ConfigError

SOURCE = Path("/etc/tlsgate/tlsgate.toml")
BACKEND = """
[[backends]]
name = "app"
servers = ["127.0.0.1:9000"]
"""


def listener(**extra: str) -> str:
    lines = ['name = "web"', 'bind = ["127.0.0.1:8080"]', 'protocol = "http"', 'backend = "app"']
    lines += [f"{key} = {value}" for key, value in extra.items()]
    return "[[listeners]]\n" + "\n".join(lines) + "\n" + BACKEND


def limits_of(**extra: str) -> ListenerLimits:
    (only,) = parse_config(listener(**extra), SOURCE).listeners
    return only.limits


def test_the_defaults() -> None:
    limits = limits_of()
    assert limits.body_timeout == 60.0  # nginx's client_body_timeout
    assert limits.body_min_rate == 500  # Apache's mod_reqtimeout body MinRate
    assert limits.send_timeout == 60.0  # nginx's send_timeout
    assert limits == ListenerLimits()


def test_values_map_onto_the_model() -> None:
    limits = limits_of(body_timeout='"1500ms"', body_min_rate='"1KiB"')
    assert (limits.body_timeout, limits.body_min_rate) == (1.5, 1024)
    assert limits_of(send_timeout='"2m"').send_timeout == 120.0


@pytest.mark.parametrize("off", ['"0"', "0", '"0B"'])
def test_body_min_rate_zero_turns_the_rate_off(off: str) -> None:
    assert limits_of(body_min_rate=off).body_min_rate == 0


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("body_timeout", '"0s"', "must be longer than zero"),
        ("body_timeout", "30", 'write body_timeout = "30s"'),
        ("body_timeout", '"soon"', "is not a valid duration"),
        ("body_min_rate", '"fast"', "is not a valid size"),
        ("body_min_rate", "-1", "negative"),
        ("body_min_rate", '"1k"', "unknown unit 'k'"),
        ("send_timeout", '"0s"', "must be longer than zero"),
        ("send_timeout", "30", 'write send_timeout = "30s"'),
    ],
)
def test_bad_values_say_what_would_be_valid(key: str, value: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(listener(**{key: value}), SOURCE)
    (problem,) = info.value.problems
    assert problem.key_path == f"listeners[0].{key}"
    assert fragment in problem.message
