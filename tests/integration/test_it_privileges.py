"""Workers without privileges (issue 8, defect 9).

Two ways to run a node, both real ``tlsgate serve`` processes:

* started as root with ``[node] user = "nobody"``: the supervisor binds and
  reads the config as root, every worker (the first ones, the one a reload
  adds, the one that replaces a killed worker) runs as nobody with no
  capabilities, writes the access log the supervisor handed it, and serves;
* started as nobody with the ambient CAP_NET_BIND_SERVICE a systemd unit
  gives (``setpriv`` here): the supervisor binds a port below 1024, the
  workers drop the capability.

Both need root (to switch users) and skip otherwise. The node's Python must be
one nobody can execute: where the venv's interpreter lives in a private
directory (here: under /root), the tests run tlsgate with a system interpreter
of the same version and the venv's packages on PYTHONPATH, as an install
outside /root would be; when there is no such interpreter they skip.
"""

from __future__ import annotations

import grp
import os
import pwd
import random
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import (
    READY_LINE,
    AppFactory,
    Tlsgate,
    free_port,
    http_client,
    table,
    wait_until,
)

import tlsgate

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CAP_NET_BIND_SERVICE = 1 << 10


@dataclass(frozen=True)
class Python:
    """An interpreter the unprivileged user can run tlsgate with, and what it needs."""

    executable: str
    env: dict[str, str]


def _python_for(uid: int, gid: int) -> Python | None:
    venv_paths = os.pathsep.join(
        [str(Path(tlsgate.__file__).parent.parent), sysconfig.get_paths()["purelib"]]
    )
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [Python(sys.executable, {})]
    for exe in (shutil.which(version, path="/usr/local/bin:/usr/bin:/bin"),):
        if exe is not None:
            candidates.append(Python(exe, {"PYTHONPATH": venv_paths}))
    for python in candidates:
        try:
            probe = subprocess.run(
                [python.executable, "-c", "import tlsgate.supervisor, tlsgate.worker"],
                check=False,
                user=uid,
                group=gid,
                extra_groups=[],
                env={**os.environ, **python.env},
                cwd="/",
                capture_output=True,
                timeout=60,
            )
        except OSError:
            continue  # e.g. EACCES: the interpreter is in a private directory
        if probe.returncode == 0:
            return python
    return None


@dataclass(frozen=True)
class Account:
    user: str
    group: str
    uid: int
    gid: int
    python: Python


@pytest.fixture(scope="module")
def nobody() -> Account:
    if os.geteuid() != 0:
        pytest.skip("switching the workers' user needs root; these tests run as an ordinary user")
    try:
        pw = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' on this system")
    python = _python_for(pw.pw_uid, pw.pw_gid)
    if python is None:
        pytest.skip(
            f"nobody cannot run tlsgate with {sys.executable} (a private directory?) and "
            "there is no system interpreter of the same version to run it with"
        )
    return Account("nobody", grp.getgrgid(pw.pw_gid).gr_name, pw.pw_uid, pw.pw_gid, python)


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A work directory the workers' user can reach (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="tlsgate-priv-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Node(Tlsgate):
    """``Tlsgate`` run as ``python -m tlsgate serve``, optionally behind a command
    (``setpriv ...``), with extra ``[node]`` keys."""

    def __init__(
        self,
        workdir: Path,
        config: str,
        *,
        python: Python,
        node_keys: str,
        wrapper: tuple[str, ...] = (),
        workers: int = 2,
    ) -> None:
        self.python = python
        self.node_keys = node_keys
        self.wrapper = wrapper
        super().__init__(workdir, config, workers=workers, shutdown_timeout="5s")

    def render(self, config: str) -> str:
        return super().render(config).replace("[node]\n", "[node]\n" + self.node_keys, 1)

    def start(self) -> Node:
        cfg = str(self.config_path)
        with self.stdout_log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*self.wrapper, self.python.executable, "-m", "tlsgate", "serve", "-c", cfg],
                env={**os.environ, **self.python.env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd="/",
            )
        self.wait_for_log(READY_LINE, 1, self.ready_timeout)
        return self


@dataclass(frozen=True)
class ProcStatus:
    uids: tuple[int, ...]
    gids: tuple[int, ...]
    groups: tuple[int, ...]
    cap_permitted: int
    cap_effective: int
    cap_ambient: int
    no_new_privs: bool


def proc_status(pid: int) -> ProcStatus:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.split()
    return ProcStatus(
        uids=tuple(int(v) for v in fields["Uid"]),
        gids=tuple(int(v) for v in fields["Gid"]),
        groups=tuple(sorted(int(v) for v in fields["Groups"])),
        cap_permitted=int(fields["CapPrm"][0], 16),
        cap_effective=int(fields["CapEff"][0], 16),
        cap_ambient=int(fields["CapAmb"][0], 16),
        no_new_privs=fields["NoNewPrivs"] == ["1"],
    )


def assert_unprivileged(pid: int, account: Account) -> None:
    st = proc_status(pid)
    assert st.uids == (account.uid,) * 4, f"worker {pid}: {st}"  # real, effective, saved, fs
    assert st.gids == (account.gid,) * 4, f"worker {pid}: {st}"
    assert set(st.groups) <= set(os.getgrouplist(account.user, account.gid)), st
    assert (st.cap_permitted, st.cap_effective, st.cap_ambient) == (0, 0, 0), st
    assert st.no_new_privs, st


def _config(port: int, app: str, new: str | None = None) -> str:
    routes = backends = ""
    if new is not None:
        routes = table("routes", listener="http", path_prefix="/new", backend="new")
        backends = table("backends", name="new", servers=[new])
    return (
        table("listeners", name="http", bind=[f"127.0.0.1:{port}"], protocol="http", backend="app")
        + routes
        + table("backends", name="app", servers=[app])
        + backends
    )


def wait_for_workers(node: Tlsgate, n: int, gone: int | None = None) -> list[int]:
    def found() -> list[int] | None:
        pids = node.worker_pids()
        return pids if len(pids) == n and gone not in pids else None

    pids = wait_until(found, 10, what=f"{n} workers")
    assert pids is not None
    return pids


def _get(port: int, path: str = "/echo") -> str:
    with http_client(timeout=5) as c:
        r = c.get(f"http://127.0.0.1:{port}{path}")
    assert r.status_code == 200, r.text
    name: str = r.json()["name"]
    return name


def test_a_root_node_runs_its_workers_as_the_configured_user(
    nobody: Account, workdir: Path, make_app: AppFactory
) -> None:
    app, new = make_app("app"), make_app("new")
    port = free_port()
    node = Node(
        workdir,
        _config(port, app.address),
        python=nobody.python,
        node_keys=f'user = "{nobody.user}"\n',
    )
    try:
        node.start()
        supervisor = proc_status(node.pid)
        assert supervisor.uids[1] == 0  # binds and reads the config and keys as root
        workers = node.worker_pids()
        assert len(workers) == 2
        for pid in workers:
            assert_unprivileged(pid, nobody)
        assert f"workers run as {nobody.user} (uid {nobody.uid}" in node.error_log_text()

        assert _get(port) == "app"
        entry = node.wait_access_log(lambda e: e.get("path") == "/echo")
        assert entry["status"] == 200
        for log in (node.access_log, node.error_log):  # created for the workers
            assert (log.stat().st_uid, log.stat().st_gid) == (nobody.uid, nobody.gid)
        # the data_dir the node created, and its lock, are the supervisor's alone
        assert stat.S_IMODE(node.data_dir.stat().st_mode) == 0o700
        lock = node.data_dir / "tlsgate.lock"
        assert stat.S_IMODE(lock.stat().st_mode) == 0o600
        assert lock.read_text() == f"{node.pid}\n"

        # SIGHUP: a new route and a third worker, which starts unprivileged as well
        node.workers = 3
        node.write_config(_config(port, app.address, new.address))
        node.reload()
        workers = wait_for_workers(node, 3)
        for pid in workers:
            assert_unprivileged(pid, nobody)
        assert _get(port, "/new/x") == "new"
        assert _get(port) == "app"

        # a killed worker is replaced by an unprivileged one that serves
        victim = workers[0]
        os.kill(victim, signal.SIGKILL)
        after = wait_for_workers(node, 3, gone=victim)
        for pid in after:  # never root, not even while it starts
            assert proc_status(pid).uids == (nobody.uid,) * 4
        # no_new_privs and the capability drop come first thing in its start-up
        wait_until(
            lambda: all(proc_status(p).no_new_privs for p in after), 10, what="the new worker"
        )
        for pid in after:
            assert_unprivileged(pid, nobody)
        assert [_get(port) for _ in range(20)] == ["app"] * 20
        assert node.stop() == 0
    finally:
        node.kill()


def _free_privileged_port() -> int:
    ports = list(range(600, 1024))
    random.shuffle(ports)
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port below 1024 on 127.0.0.1")


@pytest.mark.parametrize("same_account", [False, True], ids=["no-user-key", "user-is-self"])
def test_a_node_with_ambient_net_bind_service_drops_it_in_the_workers(
    nobody: Account, workdir: Path, make_app: AppFactory, same_account: bool
) -> None:
    """The systemd unit's way (contrib/tlsgate.service), with setpriv in systemd's place.

    With ``user``/``group`` naming the account it already runs as, the node goes
    on without switching.
    """
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is not installed")
    app = make_app("app")
    port = _free_privileged_port()
    os.chown(workdir, nobody.uid, nobody.gid)  # the whole node runs as nobody
    wrapper = (
        setpriv,
        f"--reuid={nobody.uid}",
        f"--regid={nobody.gid}",
        "--clear-groups",
        "--inh-caps=+net_bind_service",
        "--ambient-caps=+net_bind_service",
        "--",
    )
    node = Node(
        workdir,
        _config(port, app.address),
        python=nobody.python,
        node_keys=f'user = "{nobody.user}"\ngroup = "{nobody.group}"\n' if same_account else "",
        wrapper=wrapper,
    )
    try:
        node.start()
        supervisor = proc_status(node.pid)
        assert supervisor.uids == (nobody.uid,) * 4
        assert supervisor.cap_effective & CAP_NET_BIND_SERVICE  # it bound port < 1024
        workers = node.worker_pids()
        assert len(workers) == 2
        for pid in workers:
            st = proc_status(pid)
            assert st.uids == (nobody.uid,) * 4
            assert (st.cap_permitted, st.cap_effective, st.cap_ambient) == (0, 0, 0), st
            assert st.no_new_privs
        assert _get(port) == "app"
        assert node.stop() == 0
    finally:
        node.kill()


def test_a_non_root_node_asked_for_another_user_refuses_to_start(
    nobody: Account, workdir: Path
) -> None:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is not installed")
    os.chown(workdir, nobody.uid, nobody.gid)
    node = Node(
        workdir,
        _config(free_port(), "127.0.0.1:9"),
        python=nobody.python,
        node_keys='user = "root"\n',
        wrapper=(setpriv, f"--reuid={nobody.uid}", f"--regid={nobody.gid}", "--clear-groups"),
    )
    with pytest.raises(AssertionError, match="exited"):
        node.start()
    assert node.proc is not None
    assert node.proc.wait(10) == 1
    output = node.stdout_log.read_text()
    assert "asks for workers running as user 'root', but tlsgate runs as nobody" in output
    assert "only root can start processes as another user" in output
    assert not (node.data_dir / "tlsgate.lock").exists()  # refused before taking anything
