"""``tlsgate check -c FILE``: exit 0 on a valid config; exit 2 naming the file and
the key path of every problem otherwise."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from harness import TLSGATE, table

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

GOOD = table(
    "listeners", name="http", bind=["127.0.0.1:18080"], protocol="http", backend="app"
) + table("backends", name="app", servers=["127.0.0.1:9001"])


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TLSGATE), "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


def test_check_accepts_a_good_config(tmp_path: Path) -> None:
    path = tmp_path / "good.toml"
    path.write_text(GOOD)
    res = check(path)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize(
    ("extra", "key_path"),
    [
        (
            table("backends", name="b", servers=["127.0.0.1:1"], balance="fastest"),
            "backends[1].balance",
        ),
        (table("routes", listener="http", backend="missing"), "routes[0].backend"),
        (
            '[[listeners]]\nname = "x"\nbind = ["nope"]\nprotocol = "http"\nbackend = "app"\n',
            "listeners[1].bind[0]",
        ),
        (
            '[[listeners]]\nname = "y"\nbind = ["127.0.0.1:18081"]\nprotocol = "http"\n'
            'backend = "app"\nbogus_key = 1\n',
            "listeners[1].bogus_key",
        ),
    ],
    ids=["bad-balance", "dangling-backend", "bad-bind", "unknown-key"],
)
def test_check_rejects_a_bad_config(tmp_path: Path, extra: str, key_path: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(GOOD + extra)
    res = check(path)
    out = res.stdout + res.stderr
    assert res.returncode == 2, out
    assert key_path in out
    assert str(path) in out or path.name in out


def test_check_reports_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        GOOD
        + table("backends", name="b", servers=["127.0.0.1:1"], balance="fastest")
        + table("routes", listener="http", backend="missing")
    )
    res = check(path)
    out = res.stdout + res.stderr
    assert res.returncode == 2
    assert "backends[1].balance" in out
    assert "routes[0].backend" in out


def test_check_missing_file(tmp_path: Path) -> None:
    res = check(tmp_path / "absent.toml")
    assert res.returncode == 2
    assert "absent.toml" in res.stdout + res.stderr
