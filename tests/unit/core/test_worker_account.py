"""Whom workers run as (``[node] user``/``group``) and the log files handed to them.

``worker_credentials`` takes the supervisor's euid/egid as parameters, so the
root and non-root cases are tested whoever runs the tests. Handing log files to
another account needs root (chown); those tests skip otherwise.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import stat
from pathlib import Path

import pytest

from tlsgate.config.loader import parse_config
from tlsgate.config.model import LogConfig, NodeConfig
from tlsgate.supervisor import (
    StartupError,
    Supervisor,
    WorkerCredentials,
    prepare_log_files,
    worker_credentials,
)


def _nobody() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' on this system")


def _node(user: str = "", group: str = "") -> NodeConfig:
    return NodeConfig(name="n", data_dir=Path("/var/lib/tlsgate"), user=user, group=group)


def test_no_user_means_no_switch() -> None:
    assert worker_credentials(_node(), euid=0, egid=0) is None
    assert worker_credentials(_node(), euid=1000, egid=1000) is None


def test_root_switches_to_the_user_and_its_primary_group() -> None:
    pw = _nobody()
    creds = worker_credentials(_node("nobody"), euid=0, egid=0)
    assert creds == WorkerCredentials(
        "nobody", pw.pw_uid, pw.pw_gid, tuple(os.getgrouplist("nobody", pw.pw_gid))
    )
    assert str(creds) == f"nobody (uid {pw.pw_uid}, gid {pw.pw_gid})"


def test_root_switches_to_the_named_group() -> None:
    _nobody()
    group = grp.getgrgid(0).gr_name  # any group will do: root's always exists
    creds = worker_credentials(_node("nobody", group), euid=0, egid=0)
    assert creds is not None
    assert creds.gid == 0
    assert 0 in creds.groups


def test_already_that_account_continues_without_switching() -> None:
    pw = _nobody()
    group = grp.getgrgid(pw.pw_gid).gr_name
    assert worker_credentials(_node("nobody"), euid=pw.pw_uid, egid=pw.pw_gid) is None
    assert worker_credentials(_node("nobody", group), euid=pw.pw_uid, egid=pw.pw_gid) is None


def test_another_non_root_account_is_refused() -> None:
    pw = _nobody()
    other = pw.pw_uid - 1 if pw.pw_uid > 1 else pw.pw_uid + 1
    with pytest.raises(StartupError) as info:
        worker_credentials(_node("nobody"), euid=other, egid=other)
    message = str(info.value)
    assert "asks for workers running as user 'nobody'" in message
    assert f"uid {other}" in message
    assert "only root can start processes as another user" in message
    assert "Start tlsgate as root" in message
    assert "contrib/tlsgate.service" in message


def test_the_right_user_with_another_group_is_refused() -> None:
    pw = _nobody()
    group = grp.getgrgid(0).gr_name
    with pytest.raises(StartupError, match=f"user 'nobody', group '{group}'"):
        worker_credentials(_node("nobody", group), euid=pw.pw_uid, egid=pw.pw_gid)


def test_an_account_removed_since_the_config_was_checked() -> None:
    with pytest.raises(StartupError, match="no such user on this system"):
        worker_credentials(_node("tlsgate-no-such-user"), euid=0, egid=0)
    _nobody()
    with pytest.raises(StartupError, match="no such group on this system"):
        worker_credentials(_node("nobody", "tlsgate-no-such-group"), euid=0, egid=0)


# ---- log files -------------------------------------------------------------------------------


@pytest.fixture
def nobody_creds() -> WorkerCredentials:
    if os.geteuid() != 0:
        pytest.skip("handing files to another account needs root (chown)")
    pw = _nobody()
    return WorkerCredentials("nobody", pw.pw_uid, pw.pw_gid, (pw.pw_gid,))


def test_missing_log_files_are_created_for_the_workers(
    tmp_path: Path, nobody_creds: WorkerCredentials
) -> None:
    access, error = tmp_path / "access.log", tmp_path / "error.log"
    prepare_log_files(LogConfig(access=str(access), error=str(error)), nobody_creds)
    for path in (access, error):
        st = path.stat()
        assert (st.st_uid, st.st_gid) == (nobody_creds.uid, nobody_creds.gid)
        assert stat.S_IMODE(st.st_mode) & ~0o640 == 0


def test_an_existing_root_file_is_handed_over_and_keeps_its_lines(
    tmp_path: Path, nobody_creds: WorkerCredentials
) -> None:
    error = tmp_path / "error.log"
    error.write_text("an old line\n")  # e.g. recreated by logrotate as root
    prepare_log_files(LogConfig(access="-", error=str(error)), nobody_creds)
    assert error.stat().st_uid == nobody_creds.uid
    assert error.read_text() == "an old line\n"


def test_stdout_stderr_and_off_are_left_alone(nobody_creds: WorkerCredentials) -> None:
    prepare_log_files(LogConfig(access="", error="-"), nobody_creds)
    prepare_log_files(LogConfig(access="-", error="-"), nobody_creds)


def test_a_symlinked_log_is_not_followed(tmp_path: Path, nobody_creds: WorkerCredentials) -> None:
    secret = tmp_path / "secret"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    link = tmp_path / "access.log"
    link.symlink_to(secret)
    prepare_log_files(LogConfig(access=str(link), error="-"), nobody_creds)
    assert secret.stat().st_uid == 0
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600


def test_a_hard_linked_log_is_refused(tmp_path: Path, nobody_creds: WorkerCredentials) -> None:
    secret = tmp_path / "secret"
    secret.write_text("root only\n")
    os.link(secret, tmp_path / "access.log")
    with pytest.raises(StartupError, match="has 2 hard links: refusing to give it to nobody"):
        prepare_log_files(LogConfig(access=str(tmp_path / "access.log"), error="-"), nobody_creds)
    assert secret.stat().st_uid == 0


def test_a_log_in_a_missing_directory_is_named(
    tmp_path: Path, nobody_creds: WorkerCredentials
) -> None:
    path = tmp_path / "no-such-dir" / "access.log"
    with pytest.raises(StartupError, match=f"cannot create the access log {path}"):
        prepare_log_files(LogConfig(access=str(path), error="-"), nobody_creds)


# ---- reload ------------------------------------------------------------------------------------


class _Records(logging.Handler):
    """Records caught on the logger itself (``tlsgate`` need not propagate to root)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_a_reload_that_changes_the_account_or_data_dir_says_it_needs_a_restart() -> None:
    _nobody()
    rest = '[[backends]]\nname = "app"\nservers = ["127.0.0.1:9"]\n'
    source = Path("/etc/t.toml")
    started = parse_config(f'[node]\ndata_dir = "/srv/a"\n{rest}', source)
    same = parse_config(f'[node]\ndata_dir = "/srv/a"\nworkers = 3\n{rest}', source)
    changed = parse_config(f'[node]\ndata_dir = "/srv/b"\nuser = "nobody"\n{rest}', source)
    supervisor = Supervisor(str(source), started, ())
    logger = logging.getLogger("tlsgate.supervisor")
    records = _Records()
    logger.addHandler(records)
    try:
        supervisor._warn_restart_only(same.node)
        assert records.messages == []
        supervisor._warn_restart_only(changed.node)
    finally:
        logger.removeHandler(records)
    assert len(records.messages) == 2, records.messages
    user, data_dir = records.messages
    assert "user/group changed: only a restart applies it" in user
    assert "keep running as the supervisor's account" in user
    assert "data_dir changed to /srv/b" in data_dir
    assert "keeps its lock in /srv/a" in data_dir
