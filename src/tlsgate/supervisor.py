"""The supervisor: one per node. Owns sockets, workers, health checks and signals.

How this works:

* It creates the listening sockets itself: for every bind, one SO_REUSEPORT
  socket per worker slot, and keeps them open for its whole life. A worker
  gets its slot's sockets over its channel. Because the supervisor holds them,
  a worker that restarts or rebuilds its servers never lets a queued
  connection be reset.
* Workers are separate processes (``python -m tlsgate.worker``), spawned with
  one end of a socketpair; a dead worker is respawned onto the same slot.
* SIGHUP: re-read and validate the config and certificates; on success push
  the new model to every worker (in place, no restart) and adjust sockets,
  worker count and health checks; on failure log every problem and keep
  serving the old configuration. Certificates are judged by
  ``tlsgate.certs.bundle.servable_bundle``, as ``tlsgate check`` judges them:
  one that is expired, not yet valid, mismatched with its key, truncated or
  with a broken chain refuses the whole reload (and, at start, the start).
* SIGTERM/SIGINT: tell every worker to drain within ``node.shutdown_timeout``,
  wait for them, exit.
* Health checks run here and changes are pushed to every worker.
* TLS session tickets: the supervisor makes the node's ticket secret at start
  (``tlsgate.certs.tickets``), sends it with every ``Configure`` so that all
  workers, and every generation after a reload, encrypt tickets with the same
  key, and replaces it every ``node.ticket_key_rotation``. It stays in memory.
* One node per data_dir: before it binds anything, the supervisor takes an
  exclusive ``flock(2)`` on ``<data_dir>/tlsgate.lock`` (:class:`NodeLock`) and
  writes its pid there. A second ``tlsgate serve`` with the same data_dir (which
  SO_REUSEPORT would otherwise let share the ports) exits naming that pid. The
  descriptor is close-on-exec and workers get only their channel, so a worker
  never holds the lock: a restarted worker is never blocked, and when the
  supervisor dies (even by SIGKILL) the kernel releases the lock with its last
  descriptor. Commands that only read (``check``, ``certs list``/``show``) and
  those that talk to the store while a node runs (``certs renew`` must, since
  the running node does the renewal) never take it.
* Privileges: the supervisor binds the sockets and reads the certificates and
  keys as whoever starts it (root, or a user with CAP_NET_BIND_SERVICE). With
  ``[node] user`` (and ``group``) a root supervisor starts every worker as that
  account: ``subprocess`` switches the forked child's groups, gid and uid before
  it executes the interpreter, so no worker code ever runs as root, and the
  kernel clears the capabilities with the switch (a worker that inherits some
  anyway, such as a systemd unit's ambient CAP_NET_BIND_SERVICE, drops them
  itself: ``tlsgate.worker.give_up_privileges``). Workers never read key files:
  certificates and keys arrive in ``Configure``. They do open the log files by
  path, so the supervisor creates them (or hands existing ones over) owned by
  that account first (:func:`prepare_log_files`). A supervisor that is not root
  cannot switch: with ``user`` set it refuses to start unless it already runs
  as that account (:func:`worker_credentials`). The account is fixed at start;
  a reload that changes it is logged and takes effect at the next restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import grp
import logging
import os
import pwd
import signal
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import uvloop

from tlsgate.certs.bundle import CertificateBundle, load_bundles
from tlsgate.certs.manager import CertificateManager
from tlsgate.certs.tickets import TicketKeys, ticket_key_support
from tlsgate.config.loader import load_config
from tlsgate.config.model import BindAddress, Config, LogConfig, NodeConfig
from tlsgate.errors import CertificateError, ConfigError, StoreError, TlsgateError
from tlsgate.features import unsupported_features
from tlsgate.ipc import (
    Challenges,
    ChallengesApplied,
    Channel,
    Configure,
    Configured,
    HealthUpdate,
    Message,
    RotateTicketKeys,
    Stop,
)
from tlsgate.logs import setup_error_log
from tlsgate.net.health_check import HealthChecker
from tlsgate.store import Store, open_store

log = logging.getLogger("tlsgate.supervisor")

CONFIGURE_TIMEOUT = 30.0
EXPIRY_WARNING = timedelta(days=7)  # warn (not refuse) when a certificate expires this soon
RESTART_WINDOW = 30.0
RESTARTS_BEFORE_BACKOFF = 5
LOCK_FILE = "tlsgate.lock"  # in node.data_dir: "<pid>\n" of the node holding it


class StartupError(TlsgateError):
    """The node could not start (bind failure, workers that won't come up)."""


# ---- one node per data_dir -------------------------------------------------------------


class NodeLock:
    """An exclusive ``flock(2)`` on ``<data_dir>/tlsgate.lock``, held until :meth:`close`.

    The lock belongs to the open file description, so it lasts exactly as long
    as this process keeps the descriptor: the kernel drops it when the process
    exits however it exits. The descriptor is close-on-exec, so no child (no
    worker) inherits it. The file itself is left in place on exit (removing a
    lock file would race with the next node locking it); its content is only
    information: the pid of the node that holds it.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, data_dir: Path) -> NodeLock:
        """Lock ``data_dir`` for this process (creating it, 0700, if missing).

        Raises:
            StartupError: another process holds the lock (the message names its
                pid), or the directory or lock file cannot be created or locked.
        """
        path = data_dir / LOCK_FILE
        try:
            data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            raise StartupError(
                f"cannot lock the data_dir {data_dir}: cannot open {path}: "
                f"{exc.strerror or exc} (run tlsgate as the user that owns {data_dir}, "
                "or set [node] data_dir to a directory this user may write)"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            who = f"pid {holder}" if holder else "its pid is not recorded yet"
            raise StartupError(
                f"another tlsgate node ({who}) is running with the data_dir {data_dir}: "
                f"it holds {path}. Stop it first (or reload it with SIGHUP instead of "
                "starting a second one), or give this node its own [node] data_dir"
            ) from None
        except OSError as exc:  # ENOLCK: a file system without flock (some NFS setups)
            os.close(fd)
            raise StartupError(
                f"cannot lock {path}: {exc.strerror or exc}; put [node] data_dir on a "
                "local file system"
            ) from exc
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            os.close(fd)
            raise StartupError(f"cannot write {path}: {exc.strerror or exc}") from exc
        return cls(path, fd)

    def close(self) -> None:
        """Release the lock (exiting does the same)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _lock_holder(fd: int) -> int | None:
    """The pid in a lock file another process holds; None if it has not written it yet."""
    for _ in range(10):  # the holder writes its pid right after locking
        try:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        except OSError:
            return None
        if text.isdigit():
            return int(text)
        time.sleep(0.05)
    return None


def warn_if_not_private(data_dir: Path) -> None:
    """Log a warning when group or others may enter ``data_dir`` (the store and its key)."""
    try:
        mode = data_dir.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "the data_dir %s is accessible by group/others (mode %04o); it holds the "
            "node's private state: chmod 700 it",
            data_dir,
            stat.S_IMODE(mode),
        )


# ---- the workers' account ------------------------------------------------------------


@dataclass(frozen=True)
class WorkerCredentials:
    """The account workers run as: ``uid``, primary ``gid`` and supplementary ``groups``."""

    user: str
    uid: int
    gid: int
    groups: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.user} (uid {self.uid}, gid {self.gid})"


def worker_credentials(
    node: NodeConfig, *, euid: int | None = None, egid: int | None = None
) -> WorkerCredentials | None:
    """Whom a supervisor running as ``euid``/``egid`` (default: this process) starts workers as.

    Returns:
        None when workers simply run as the supervisor: no ``[node] user``, or
        ``user`` (and ``group``) are already this process's (e.g. under the
        systemd unit in ``contrib/``, which runs the whole node as its account).
        Otherwise, for a root supervisor: ``user``'s uid, the gid of ``group``
        (default: the user's primary group) and the groups the user database
        lists for the user, as ``login`` and systemd's ``User=`` would set them.

    Raises:
        StartupError: the user or group no longer exists, or the supervisor is
            neither root nor already that account (only root may switch).
    """
    if not node.user:
        return None
    euid = os.geteuid() if euid is None else euid
    egid = os.getegid() if egid is None else egid
    try:
        pw = pwd.getpwnam(node.user)
    except KeyError:
        raise StartupError(
            f"[node] user = {node.user!r}: no such user on this system (any more); "
            "create it or change the config"
        ) from None
    gid = pw.pw_gid
    if node.group:
        try:
            gid = grp.getgrnam(node.group).gr_gid
        except KeyError:
            raise StartupError(
                f"[node] group = {node.group!r}: no such group on this system (any more); "
                "create it or change the config"
            ) from None
    if euid == 0:
        groups = tuple(os.getgrouplist(node.user, gid))
        return WorkerCredentials(node.user, pw.pw_uid, gid, groups)
    if euid == pw.pw_uid and egid == gid:
        return None  # already that account: nothing to switch
    account = f"uid {euid}, gid {egid}"
    with contextlib.suppress(KeyError):
        account = f"{pwd.getpwuid(euid).pw_name} ({account})"
    wanted = f"user {node.user!r}" + (f", group {node.group!r}" if node.group else "")
    raise StartupError(
        f"[node] asks for workers running as {wanted}, but tlsgate runs as {account} and "
        "only root can start processes as another user. Start tlsgate as root (it binds "
        f"and reads keys as root, the workers run as {node.user}), or run it as "
        f"{node.user} itself with CAP_NET_BIND_SERVICE (contrib/tlsgate.service), or "
        "remove user/group from [node]"
    )


def prepare_log_files(config: LogConfig, credentials: WorkerCredentials) -> None:
    """Create the log files (or hand existing ones over) owned by the workers' account.

    Workers open the access and error logs by path, after they have become
    ``credentials``; a file the root supervisor created (or that logrotate
    recreated as root) would be closed to them. A missing file is created
    0640; an existing regular file not already theirs is chowned to them. The
    supervisor goes on writing its own lines to the error log through the
    descriptor it opened before (so even a root without CAP_DAC_OVERRIDE
    can). A log path that is a symbolic link, a device or a file with other
    hard links is left alone: following one could give the workers' account
    some other file. Call it again before every reload (new paths, rotated
    files).

    Raises:
        StartupError: a log file cannot be created or handed over; the message
            names it.
    """
    for what, value in (("access", config.access), ("error", config.error)):
        if value not in ("", "-"):
            _hand_over(Path(value), what, credentials)


def _hand_over(path: Path, what: str, credentials: WorkerCredentials) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise StartupError(f"[log] {what} = {str(path)!r}: {exc.strerror or exc}") from exc
    if st is not None and not stat.S_ISREG(st.st_mode):
        return  # a symlink, /dev/stderr, a FIFO: not a file of ours to give away
    if st is not None and st.st_uid == credentials.uid and st.st_gid == credentials.gid:
        return
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, 0o640)
    except OSError as exc:
        raise StartupError(
            f"cannot create the {what} log {path}: {exc.strerror or exc} (its directory "
            "must exist; see [log] in the configuration)"
        ) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return
        if st.st_nlink > 1:
            raise StartupError(
                f"the {what} log {path} has {st.st_nlink} hard links: refusing to give it to "
                f"{credentials.user}; remove it or point [log] {what} at a new file"
            )
        os.fchown(fd, credentials.uid, credentials.gid)
    except OSError as exc:
        raise StartupError(
            f"cannot give the {what} log {path} to {credentials}: {exc.strerror or exc}"
        ) from exc
    finally:
        os.close(fd)


@dataclass(eq=False)
class WorkerHandle:
    slot: int
    proc: subprocess.Popen[bytes]
    channel: Channel
    generation: int = 0
    acks: dict[int, asyncio.Future[Configured]] = field(default_factory=dict)
    challenges_serial: int = 0  # the last Challenges this worker said it serves
    restarts: list[float] = field(default_factory=list)


def worker_count(config: Config) -> int:
    return config.node.workers or os.cpu_count() or 1


def all_binds(config: Config) -> list[BindAddress]:
    return [b for lc in config.listeners for b in lc.bind]


def open_listening_socket(bind: BindAddress) -> socket.socket:
    """A non-blocking SO_REUSEPORT listening socket. Raises StartupError naming the bind."""
    family = socket.AF_INET6 if ":" in bind.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((bind.host, bind.port))
        sock.listen(4096)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {bind}: {exc.strerror or exc}") from exc
    return sock


def load_everything(path: str) -> tuple[Config, tuple[CertificateBundle, ...]]:
    """Config + certificates, fully validated.

    Raises:
        ConfigError: the config, or a feature it asks for, is invalid here.
        CertificateError: a certificate cannot be served (unreadable, expired or
            not yet valid, a key that does not match, a truncated PEM block, a
            broken chain); the message names it and says which.
    """
    config = load_config(path)
    problems = unsupported_features(config)
    if problems:
        raise ConfigError(problems)
    bundles = tuple(load_bundles(config))
    now = datetime.now(UTC)
    for b in bundles:
        if b.not_after - now < EXPIRY_WARNING:
            log.warning(
                "certificate %s in %s expires soon, on %s: replace it and reload",
                b.name,
                b.source,
                b.not_after.isoformat(),
            )
    return config, bundles


class Supervisor:
    def __init__(
        self,
        config_path: str,
        config: Config,
        bundles: tuple[CertificateBundle, ...],
        credentials: WorkerCredentials | None = None,
    ):
        self.config_path = config_path
        self.config = config
        # whom workers are started as (None: as this process); fixed for the node's life
        self.credentials = credentials
        self._started_node = config.node
        self.bundles = bundles  # from files; ACME-managed ones come from self.manager
        self.generation = 1
        self.store: Store | None = None
        self.manager: CertificateManager | None = None
        self._manager_task: asyncio.Task[None] | None = None
        self.http01: dict[str, str] = {}
        self.tls_alpn01: dict[str, tuple[bytes, bytes]] = {}
        self._challenge_serial = 0
        self._challenges_applied = asyncio.Event()
        self.sockets: dict[int, dict[BindAddress, socket.socket]] = {}
        self.workers: dict[int, WorkerHandle] = {}
        self.health: dict[tuple[str, str], bool] = {}
        self.checkers: dict[tuple[str, str], HealthChecker] = {}
        self.stopping = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._reload_lock: asyncio.Lock | None = None
        # memory only, never logged; None where OpenSSL can't take it (warned once, here)
        self.ticket_keys = TicketKeys.generate() if ticket_key_support(warn=True) is None else None
        self._ticket_keys_born = time.monotonic()
        self._ticket_rotation: asyncio.Task[None] | None = None

    def is_stopping(self) -> bool:
        return self.stopping

    # ---- sockets -----------------------------------------------------------------------------

    def _open_slot_sockets(self, slot: int, binds: list[BindAddress]) -> list[socket.socket]:
        """Open this slot's missing sockets; returns the new ones (for rollback)."""
        have = self.sockets.setdefault(slot, {})
        opened: list[socket.socket] = []
        try:
            for bind in binds:
                if bind not in have:
                    s = open_listening_socket(bind)
                    have[bind] = s
                    opened.append(s)
        except StartupError:
            for bind, s in list(have.items()):
                if s in opened:
                    s.close()
                    del have[bind]
            raise
        return opened

    # ---- workers -----------------------------------------------------------------------------

    def _spawn(self, slot: int, restarts: list[float] | None = None) -> WorkerHandle:
        """Start a worker for ``slot`` (as :attr:`credentials` when set).

        Raises:
            StartupError: the process could not be started (e.g. the workers'
                account may not execute the interpreter).
        """
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        child_fd = child.fileno()
        creds = self.credentials
        try:
            # With credentials, the child sets its groups, gid and uid after fork and
            # before exec: not one line of worker code runs as root. cwd "/": every
            # path in the model is absolute, and no worker sits in a private directory.
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tlsgate.worker",
                    "--ipc-fd",
                    str(child_fd),
                    "--slot",
                    str(slot),
                ],
                pass_fds=[child_fd],
                stdin=subprocess.DEVNULL,
                user=None if creds is None else creds.uid,
                group=None if creds is None else creds.gid,
                extra_groups=None if creds is None else list(creds.groups),
                cwd=None if creds is None else "/",
            )
        except OSError as exc:
            parent.close()
            child.close()
            what = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
            if creds is None:
                raise StartupError(f"cannot start a worker process: {what}") from exc
            real = os.path.realpath(sys.executable)
            python = sys.executable + (f" (that is, {real})" if real != sys.executable else "")
            raise StartupError(
                f"cannot start a worker process as {creds}: {what}; {creds.user} must be able "
                f"to execute {python} and read tlsgate's installation (install it outside "
                "private directories such as /root)"
            ) from exc
        child.close()
        handle = WorkerHandle(slot, proc, Channel(parent), restarts=restarts or [])
        assert self.loop is not None
        handle.channel.attach(
            self.loop,
            lambda m, fds, h=handle: self._on_worker_message(h, m, fds),  # type: ignore[misc]
            lambda: None,
        )
        self.workers[slot] = handle
        log.info("worker %d started (pid %d)", slot, proc.pid)
        return handle

    def _spawn_configured(self, slot: int) -> asyncio.Future[Configured]:
        """Start a worker for ``slot`` and configure it; a start failure is its answer."""
        try:
            handle = self._spawn(slot)
        except StartupError as exc:
            assert self.loop is not None
            fut: asyncio.Future[Configured] = self.loop.create_future()
            fut.set_result(Configured(slot, self.generation, error=str(exc)))
            return fut
        return self._configure(handle)

    def _on_worker_message(self, handle: WorkerHandle, message: Message, fds: list[int]) -> None:
        for fd in fds:
            os.close(fd)
        if isinstance(message, Configured):
            fut = handle.acks.pop(message.generation, None)
            if fut is not None and not fut.done():
                fut.set_result(message)
        elif isinstance(message, ChallengesApplied):
            handle.challenges_serial = max(handle.challenges_serial, message.serial)
            self._challenges_applied.set()

    def _configure(self, handle: WorkerHandle) -> asyncio.Future[Configured]:
        assert self.loop is not None
        binds = all_binds(self.config)
        slot_socks = self.sockets[handle.slot]
        fut: asyncio.Future[Configured] = self.loop.create_future()
        handle.acks[self.generation] = fut
        msg = Configure(
            generation=self.generation,
            config=self.config,
            bundles=self.served_bundles(),
            binds=tuple(binds),
            health=dict(self.health),
            ticket_keys=self.ticket_keys,
        )
        try:
            handle.channel.send(msg, [slot_socks[b].fileno() for b in binds])
            if self.http01 or self.tls_alpn01:
                handle.channel.send(self._challenges())
        except OSError as exc:
            fut.set_result(Configured(handle.slot, self.generation, error=f"channel: {exc}"))
        return fut

    async def _await_configured(self, futs: list[asyncio.Future[Configured]]) -> list[str]:
        errors: list[str] = []
        try:
            async with asyncio.timeout(CONFIGURE_TIMEOUT):
                results = await asyncio.gather(*futs)
        except TimeoutError:
            return [f"a worker did not apply the configuration within {CONFIGURE_TIMEOUT:g}s"]
        for r in results:
            if r.error:
                errors.append(f"worker {r.slot}: {r.error}")
        return errors

    async def _watch_children(self) -> None:
        while not self.stopping:
            await asyncio.sleep(0.2)
            for slot, handle in list(self.workers.items()):
                code = handle.proc.poll()
                if code is None or self.stopping:
                    continue
                handle.channel.close()
                if slot not in self.sockets:
                    del self.workers[slot]  # retired by a reload
                    continue
                now = time.monotonic()
                recent = [t for t in handle.restarts if now - t < RESTART_WINDOW]
                log.error(
                    "worker %d (pid %d) exited with status %s; restarting",
                    slot,
                    handle.proc.pid,
                    code,
                )
                if len(recent) >= RESTARTS_BEFORE_BACKOFF:
                    log.error("worker %d keeps dying; waiting 5s before the next restart", slot)
                    del self.workers[slot]
                    await asyncio.sleep(5.0)
                    if self.is_stopping():
                        return
                recent.append(now)
                handle.restarts = recent
                try:
                    new = self._spawn(slot, recent)
                except StartupError as exc:
                    log.error("worker %d: %s; trying again", slot, exc)
                    self.workers.setdefault(slot, handle)  # still dead: the next round retries
                    continue
                errors = await self._await_configured([self._configure(new)])
                for e in errors:
                    log.error("restarted %s", e)

    # ---- health checks -----------------------------------------------------------------------

    def _on_health_change(self, backend: str, server: str, healthy: bool) -> None:
        self.health[(backend, server)] = healthy
        self._broadcast(HealthUpdate(backend, server, healthy))

    def _sync_health_checkers(self) -> None:
        wanted: dict[tuple[str, str], HealthChecker] = {}
        for b in self.config.backends:
            if b.health is None:
                continue
            for s in b.servers:
                key = (b.name, s.address)
                old = self.checkers.get(key)
                if old is not None and old.backend == b:
                    wanted[key] = old
                    continue
                if old is not None:
                    old.stop()
                try:
                    checker = HealthChecker(
                        b, s, self._on_health_change, initially_up=self.health.get(key, True)
                    )
                except CertificateError as exc:
                    log.error("backend %s: no health checks for %s: %s", b.name, s.address, exc)
                    continue
                checker.start()
                wanted[key] = checker
        for key, checker in self.checkers.items():
            if key not in wanted:
                checker.stop()
        self.checkers = wanted
        # servers without active checks are considered up
        for key in list(self.health):
            if key not in wanted:
                del self.health[key]

    # ---- certificates (ACME) ------------------------------------------------------------

    def served_bundles(self) -> tuple[CertificateBundle, ...]:
        managed = self.manager.bundles() if self.manager is not None else []
        return self.bundles + tuple(managed)

    async def _new_manager(self, config: Config) -> CertificateManager | None:
        """A manager for ``config`` with the store's certificates loaded; None without [acme].

        Nothing is ordered and nothing in service changes: :meth:`_use_manager`
        puts it in place once the whole (re)load has succeeded. Where the store
        has nothing servable, the current manager's certificate is carried over
        (:meth:`CertificateManager.inherit`).

        Raises:
            StoreError: the store cannot be opened or read.
        """
        if config.acme is None:
            return None
        if self.store is None:
            data_dir = config.node.data_dir
            data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            key_file = config.store.key_file or data_dir / "store.key"
            self.store = open_store(config.store.url, key_file=key_file)
        manager = CertificateManager(config, self.store, self, self._certificates_changed)
        await manager.load()
        manager.inherit(self.manager)
        return manager

    def _use_manager(self, manager: CertificateManager | None) -> None:
        """Replace the certificate manager (stopping the old one's loop); see _run_manager."""
        if self._manager_task is not None:
            self._manager_task.cancel()
            self._manager_task = None
        self.manager = manager

    def _run_manager(self) -> None:
        if self.manager is not None and self.loop is not None:
            self._manager_task = self.loop.create_task(self.manager.run())

    def set_http01(self, token: str, key_authorization: str | None) -> None:
        if key_authorization is None:
            self.http01.pop(token, None)
        else:
            self.http01[token] = key_authorization
        self._challenge_serial += 1
        self._broadcast(self._challenges())

    def set_tls_alpn01(self, name: str, cert_and_key: tuple[bytes, bytes] | None) -> None:
        if cert_and_key is None:
            self.tls_alpn01.pop(name, None)
        else:
            self.tls_alpn01[name] = cert_and_key
        self._challenge_serial += 1
        self._broadcast(self._challenges())

    def _challenges(self) -> Challenges:
        return Challenges(dict(self.http01), dict(self.tls_alpn01), self._challenge_serial)

    async def challenges_published(self, timeout: float = 5.0) -> None:
        """Wait until every running worker serves the current challenges.

        A TLS-ALPN-01 challenge switches https listeners to the accept path that
        peeks at ClientHellos; telling the CA to validate before every worker has
        switched could fail the validation. A worker that does not answer within
        ``timeout`` is logged and not waited for (it may be restarting).
        """
        serial = self._challenge_serial
        try:
            async with asyncio.timeout(timeout):
                while any(
                    h.challenges_serial < serial and h.proc.poll() is None
                    for h in self.workers.values()
                ):
                    self._challenges_applied.clear()
                    await self._challenges_applied.wait()
        except TimeoutError:
            log.warning(
                "a worker did not confirm the ACME challenges within %gs; going on", timeout
            )

    def _broadcast(self, msg: Challenges | HealthUpdate | RotateTicketKeys) -> None:
        for handle in list(self.workers.values()):
            # a dead worker gets the full state when it is respawned
            with contextlib.suppress(OSError):
                handle.channel.send(msg)

    def _certificates_changed(self) -> None:
        if self.loop is not None and not self.stopping:
            task = self.loop.create_task(self._push_certificates())
            self._pushes.add(task)
            task.add_done_callback(self._pushes.discard)

    async def _push_certificates(self) -> None:
        """New certificates to every worker: new handshakes use them, open connections stay."""
        assert self._reload_lock is not None
        async with self._reload_lock:
            self.generation += 1
            futs = [self._configure(h) for h in self.workers.values()]
            errors = await self._await_configured(futs)
            for e in errors:
                log.error("certificate update: %s", e)
            if not errors:
                log.info("certificates updated: generation %d", self.generation)

    # ---- session ticket keys -------------------------------------------------------------

    def _schedule_ticket_rotation(self) -> None:
        """(Re)start the rotation timer for the current ``node.ticket_key_rotation``."""
        if self._ticket_rotation is not None:
            self._ticket_rotation.cancel()
        if self.ticket_keys is None:
            return  # per-worker keys: nothing shared to rotate
        assert self.loop is not None
        self._ticket_rotation = self.loop.create_task(
            self._rotate_ticket_keys(self.config.node.ticket_key_rotation)
        )

    async def _rotate_ticket_keys(self, interval: float) -> None:
        while not self.stopping:
            await asyncio.sleep(max(0.0, self._ticket_keys_born + interval - time.monotonic()))
            if self.is_stopping():
                return
            self.ticket_keys = TicketKeys.generate()
            self._ticket_keys_born = time.monotonic()
            # a worker that misses this (dead) gets the keys with its next Configure
            self._broadcast(RotateTicketKeys(self.ticket_keys))
            log.info("TLS session ticket key rotated (next in %gs)", interval)

    # ---- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> int:
        self.loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._pushes: set[asyncio.Task[None]] = set()
        self._use_manager(await self._new_manager(self.config))
        n = worker_count(self.config)
        binds = all_binds(self.config)
        for slot in range(n):
            self._open_slot_sockets(slot, binds)
        if self.credentials is not None:
            log.info("workers run as %s", self.credentials)
        elif os.geteuid() == 0:
            log.info("workers run as root; set [node] user to run them as an unprivileged user")
        futs = [self._spawn_configured(slot) for slot in range(n)]
        errors = await self._await_configured(futs)
        if errors:
            for e in errors:
                log.error("%s", e)
            await self._shutdown(5.0)
            more = f" (and {len(errors) - 1} more in the error log)" if len(errors) > 1 else ""
            raise StartupError(f"workers could not start: {errors[0]}{more}")
        self.loop.add_signal_handler(signal.SIGHUP, lambda: self.loop.create_task(self.reload()))  # type: ignore[union-attr]
        self.loop.add_signal_handler(signal.SIGTERM, self._stop_event.set)
        self.loop.add_signal_handler(signal.SIGINT, self._stop_event.set)
        self._sync_health_checkers()
        self._run_manager()
        self._schedule_ticket_rotation()
        watcher = self.loop.create_task(self._watch_children())
        listeners = ", ".join(
            f"{lc.name} ({lc.protocol}) on {', '.join(str(b) for b in lc.bind)}"
            for lc in self.config.listeners
        )
        log.info("tlsgate ready: %d worker(s), generation %d; %s", n, self.generation, listeners)
        await self._stop_event.wait()
        log.info("stopping: draining connections (deadline %gs)", self.config.node.shutdown_timeout)
        watcher.cancel()
        await self._shutdown(self.config.node.shutdown_timeout)
        log.info("stopped")
        return 0

    async def reload(self) -> None:
        assert self._reload_lock is not None
        async with self._reload_lock:
            await self._reload()

    async def _reload(self) -> None:
        log.info("reloading %s", self.config_path)
        try:
            config, bundles = await asyncio.to_thread(load_everything, self.config_path)
        except ConfigError as exc:
            for p in exc.problems:
                log.error("reload failed: %s", p)
            log.error("reload failed; still serving generation %d", self.generation)
            return
        except CertificateError as exc:
            log.error(
                "reload failed: %s; still serving generation %d with its certificates",
                exc,
                self.generation,
            )
            return
        try:
            manager = await self._new_manager(config)
        except (StoreError, CertificateError) as exc:
            log.error("reload failed: %s; still serving generation %d", exc, self.generation)
            return
        if self.credentials is not None:
            try:
                prepare_log_files(config.log, self.credentials)
            except StartupError as exc:
                log.error("reload failed: %s; still serving generation %d", exc, self.generation)
                return
        self._warn_restart_only(config.node)
        old_config = self.config
        n_old, n_new = worker_count(old_config), worker_count(config)
        binds = all_binds(config)
        opened: list[socket.socket] = []
        try:
            for slot in range(n_new):
                opened += self._open_slot_sockets(slot, binds)
        except StartupError as exc:
            for s in opened:
                s.close()
            for socks in self.sockets.values():
                for bind, s in list(socks.items()):
                    if s in opened:
                        del socks[bind]
            log.error("reload failed: %s; still serving generation %d", exc, self.generation)
            return
        self._use_manager(manager)
        self.config, self.bundles = config, bundles
        self.generation += 1
        self._sync_health_checkers()
        if config.node.ticket_key_rotation != old_config.node.ticket_key_rotation:
            self._schedule_ticket_rotation()  # the key itself stays
        futs = [self._configure(h) for slot, h in self.workers.items() if slot < n_new]
        for slot in range(n_old, n_new):
            futs.append(self._spawn_configured(slot))
        for slot in range(n_new, n_old):
            handle = self.workers.get(slot)
            socks = self.sockets.pop(slot, {})
            if handle is not None:
                with contextlib.suppress(OSError):
                    handle.channel.send(Stop(config.node.shutdown_timeout))
            for s in socks.values():
                s.close()
        errors = await self._await_configured(futs)
        wanted = set(binds)
        for socks in self.sockets.values():
            for bind in [b for b in socks if b not in wanted]:
                socks.pop(bind).close()
        if errors:
            for e in errors:
                log.error("reload: %s", e)
            log.error("reload of generation %d failed on some workers", self.generation)
            return
        self._run_manager()
        log.info("reload complete: generation %d, %d worker(s)", self.generation, n_new)

    def _warn_restart_only(self, node: NodeConfig) -> None:
        """Log the [node] changes a reload cannot apply (they need a restart)."""
        started = self._started_node
        if (node.user, node.group) != (started.user, started.group):
            running = self.credentials or "the supervisor's account"
            log.warning(
                "[node] user/group changed: only a restart applies it; workers, also the ones "
                "started from now on, keep running as %s",
                running,
            )
        if node.data_dir != started.data_dir:
            log.warning(
                "[node] data_dir changed to %s: only a restart applies it; this node keeps its "
                "lock in %s",
                node.data_dir,
                started.data_dir,
            )

    async def _shutdown(self, timeout: float) -> None:
        self.stopping = True
        if self._manager_task is not None:
            self._manager_task.cancel()
        if self._ticket_rotation is not None:
            self._ticket_rotation.cancel()
        for checker in self.checkers.values():
            checker.stop()
        for handle in self.workers.values():
            with contextlib.suppress(OSError):
                handle.channel.send(Stop(timeout))
        for socks in self.sockets.values():
            for s in socks.values():
                s.close()
        self.sockets.clear()
        deadline = time.monotonic() + timeout + 5.0
        while time.monotonic() < deadline:
            if all(h.proc.poll() is not None for h in self.workers.values()):
                break
            await asyncio.sleep(0.05)
        for handle in self.workers.values():
            if handle.proc.poll() is None:
                log.error("worker %d did not stop in time; killing it", handle.slot)
                handle.proc.kill()
                handle.proc.wait()
            handle.channel.close()
        if self.store is not None:
            await self.store.close()


def serve(config_path: str) -> int:
    """Run a node until SIGTERM/SIGINT. Returns the process exit status.

    Raises:
        ConfigError, CertificateError: the config or certificates are invalid.
        StartupError: another node holds the data_dir, the workers' account
            cannot be used, or sockets or workers could not be set up.
    """
    config, bundles = load_everything(config_path)
    credentials = worker_credentials(config.node)
    lock = NodeLock.acquire(config.node.data_dir)
    try:
        try:
            # before the files are handed to the workers' account: the supervisor
            # keeps this descriptor, so it needs no right to open their file again
            setup_error_log(config.log, "supervisor")
        except OSError as exc:
            raise StartupError(
                f"cannot open the error log {config.log.error}: {exc.strerror or exc}"
            ) from exc
        if credentials is not None:
            prepare_log_files(config.log, credentials)
        warn_if_not_private(config.node.data_dir)
        supervisor = Supervisor(config_path, config, bundles, credentials)
        return uvloop.run(supervisor.run())
    finally:
        lock.close()
