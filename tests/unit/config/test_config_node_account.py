"""``[node] user`` and ``group``: the workers' account, checked against this system.

An account the machine does not have is a config problem at the key that names
it (``tlsgate check`` reports it), not a failure when the first worker starts.
"""

from __future__ import annotations

import grp
import pwd
from pathlib import Path

import pytest

from tlsgate.config.loader import parse_config
from tlsgate.errors import ConfigError, ConfigProblem

SOURCE = Path("/etc/tlsgate/tlsgate.toml")
REST = """
[[listeners]]
name = "http"
bind = ["0.0.0.0:80"]
protocol = "http"
backend = "app"

[[backends]]
name = "app"
servers = ["10.0.0.11:8080"]
"""
MISSING_USER = "tlsgate-no-such-user"
MISSING_GROUP = "tlsgate-no-such-group"


def _existing_user() -> pwd.struct_passwd:
    for name in ("nobody", "daemon", "root"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    pytest.skip("no well-known user (nobody, daemon, root) on this system")


def _node(lines: str) -> str:
    return "[node]\n" + lines + "\n" + REST


def _only_problem(text: str) -> ConfigProblem:
    with pytest.raises(ConfigError) as info:
        parse_config(text, SOURCE)
    problems = info.value.problems
    assert len(problems) == 1, "\n".join(map(str, problems))
    return problems[0]


def test_unset_means_workers_run_as_the_supervisor() -> None:
    node = parse_config(REST, SOURCE).node
    assert (node.user, node.group) == ("", "")
    node = parse_config(_node('user = ""\ngroup = ""'), SOURCE).node
    assert (node.user, node.group) == ("", "")


def test_an_existing_user_and_group_load() -> None:
    user = _existing_user()
    group = grp.getgrgid(user.pw_gid).gr_name
    node = parse_config(_node(f'user = "{user.pw_name}"'), SOURCE).node
    assert (node.user, node.group) == (user.pw_name, "")
    node = parse_config(_node(f'user = "{user.pw_name}"\ngroup = "{group}"'), SOURCE).node
    assert (node.user, node.group) == (user.pw_name, group)


def test_an_unknown_user_is_a_problem_at_node_user() -> None:
    problem = _only_problem(_node(f'user = "{MISSING_USER}"'))
    assert problem.key_path == "node.user"
    assert problem.file == str(SOURCE)
    assert f"no user named '{MISSING_USER}' on this system" in problem.message
    assert "useradd --system" in problem.message  # what to do about it


def test_an_unknown_group_is_a_problem_at_node_group() -> None:
    user = _existing_user()
    problem = _only_problem(_node(f'user = "{user.pw_name}"\ngroup = "{MISSING_GROUP}"'))
    assert problem.key_path == "node.group"
    assert f"no group named '{MISSING_GROUP}' on this system" in problem.message
    assert "groupadd --system" in problem.message


def test_both_unknown_report_both() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_node(f'user = "{MISSING_USER}"\ngroup = "{MISSING_GROUP}"'), SOURCE)
    user, group = info.value.problems
    assert (user.key_path, group.key_path) == ("node.user", "node.group")
    assert f"no user named '{MISSING_USER}'" in user.message
    assert f"no group named '{MISSING_GROUP}'" in group.message


def test_a_group_without_a_user_is_refused() -> None:
    group = grp.getgrgid(_existing_user().pw_gid).gr_name
    problem = _only_problem(_node(f'group = "{group}"'))
    assert problem.key_path == "node.group"
    assert "set user too" in problem.message


def test_a_numeric_id_asks_for_the_name() -> None:
    problem = _only_problem(_node('user = "4242424"'))
    assert problem.key_path == "node.user"
    assert "write the user's name, not its id" in problem.message


def test_a_user_of_the_wrong_type() -> None:
    problem = _only_problem(_node("user = 65534"))
    assert problem.key_path == "node.user"
    assert "expected a string, got integer 65534" in problem.message


def test_an_odd_name_is_quoted_and_not_put_in_a_command() -> None:
    problem = _only_problem(_node('user = "no body"'))
    assert problem.key_path == "node.user"
    assert "'no body'" in problem.message
    assert "useradd --system --home-dir /var/lib/tlsgate --shell /usr/sbin/nologin NAME" in (
        problem.message
    )
