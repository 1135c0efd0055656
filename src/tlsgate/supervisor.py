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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import uvloop

from tlsgate.certs.bundle import CertificateBundle, load_bundles
from tlsgate.certs.manager import CertificateManager
from tlsgate.certs.tickets import TicketKeys, ticket_key_support
from tlsgate.config.loader import load_config
from tlsgate.config.model import BindAddress, Config
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


class StartupError(TlsgateError):
    """The node could not start (bind failure, workers that won't come up)."""


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
    def __init__(self, config_path: str, config: Config, bundles: tuple[CertificateBundle, ...]):
        self.config_path = config_path
        self.config = config
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
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        child_fd = child.fileno()
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
        )
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
                new = self._spawn(slot, recent)
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
        futs = []
        for slot in range(n):
            futs.append(self._configure(self._spawn(slot)))
        errors = await self._await_configured(futs)
        if errors:
            for e in errors:
                log.error("%s", e)
            await self._shutdown(5.0)
            raise StartupError("workers could not start; see the errors above")
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
            futs.append(self._configure(self._spawn(slot)))
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
        StartupError: sockets or workers could not be set up.
    """
    config, bundles = load_everything(config_path)
    setup_error_log(config.log, "supervisor")
    supervisor = Supervisor(config_path, config, bundles)
    return uvloop.run(supervisor.run())
