"""A worker process: the data plane for one slot of listening sockets.

How this works: the supervisor starts ``python -m tlsgate.worker --ipc-fd N
--slot K``. Everything the worker knows arrives over that channel: a
``Configure`` message with the validated config, the certificate bundles, the
current health states and this slot's listening sockets (SO_REUSEPORT sockets
created and kept open by the supervisor). The worker builds a ``Runtime`` and
serves every listener on a *duplicate* of its socket, so closing a server on
reload never closes the socket itself: connections waiting in the kernel's
accept queue are simply picked up by the next server. A reload is the same
message again: build, swap, retire the old graph; open connections keep the
objects they started with.

``Stop`` (or SIGTERM, or the supervisor vanishing) drains: stop accepting,
close idle connections, let in-flight exchanges finish until the deadline,
then abort what is left and exit.

Privileges: with ``[node] user`` a root supervisor starts the worker as that
account already (the switch happens between fork and exec, see
``tlsgate.supervisor``), so the worker never runs as root and never reads a key
file: certificates and keys come in ``Configure``. Before it touches its
channel, :func:`give_up_privileges` sets ``no_new_privs`` and, in a worker that
is not root, drops every capability, including the ambient
CAP_NET_BIND_SERVICE a systemd unit grants the whole node: the supervisor binds,
the worker only accepts on the sockets it is given.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Coroutine
from typing import Any

import uvloop

from tlsgate.certs.bundle import bundle_from_pem
from tlsgate.certs.cache import make_server_context
from tlsgate.certs.tickets import TicketKeys
from tlsgate.config.model import BindAddress, Config
from tlsgate.errors import CertificateError
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
from tlsgate.logs import AccessLog, setup_error_log
from tlsgate.net.context import Drainable
from tlsgate.net.deadlines import Deadlines
from tlsgate.net.listener import ACME_TLS_ALPN, Closable, serve
from tlsgate.net.memory import HeapTrimmer
from tlsgate.net.poller import Poller
from tlsgate.net.runtime import Runtime

log = logging.getLogger("tlsgate.worker")


class Worker:
    """One worker process's state; implements ``net.context.ServeContext``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, channel: Channel, slot: int) -> None:
        self.loop = loop
        self.channel = channel
        self.slot = slot
        self.runtime: Runtime | None = None
        self.config: Config | None = None
        self.sockets: dict[BindAddress, socket.socket] = {}
        self.servers: list[Closable] = []
        self.connections: set[Drainable] = set()
        self.health: dict[tuple[str, str], bool] = {}
        self.draining = False
        self.done = loop.create_future()
        self.access = AccessLog("")
        self.deadlines = Deadlines(loop)
        self.poller = Poller(loop)
        self._tasks: set[asyncio.Task[None]] = set()
        self.acme_http01: dict[str, str] = {}
        self._serving_tls_alpn01 = False  # whether https listeners peek at ClientHellos
        self._tls_alpn01_contexts: dict[str, ssl.SSLContext] = {}
        self.ticket_keys: TicketKeys | None = None  # the node's, from the supervisor

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a task the worker keeps a reference to (asyncio holds tasks weakly)."""
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- messages ----------------------------------------------------------------------------

    def on_message(self, message: Message, fds: list[int]) -> None:
        if isinstance(message, Configure):
            self._adopt_sockets(message.binds, fds)
            self.ticket_keys = message.ticket_keys
            self.spawn(self.configure(message))
        elif isinstance(message, RotateTicketKeys):
            self.ticket_keys = message.keys
            self._apply_ticket_keys()
        elif isinstance(message, HealthUpdate):
            self.health[(message.backend, message.server)] = message.healthy
            if self.runtime is not None:
                self.runtime.set_health(message.backend, message.server, message.healthy)
        elif isinstance(message, Challenges):
            self._set_challenges(message)
        elif isinstance(message, Stop):
            self.spawn(self.drain(message.timeout))
        else:
            for fd in fds:
                os.close(fd)

    def _apply_ticket_keys(self) -> None:
        """A rotation: the current runtime's contexts encrypt tickets with the new key."""
        if self.runtime is None or self.ticket_keys is None:
            return
        for lr in self.runtime.listeners.values():
            if lr.certificates is not None:
                lr.certificates.set_ticket_key(self.ticket_keys.for_listener(lr.name))

    def on_channel_eof(self) -> None:
        if not self.draining:
            log.error("worker %d: the supervisor went away; draining", self.slot)
            timeout = self.config.node.shutdown_timeout if self.config else 5.0
            self.spawn(self.drain(timeout))

    def _adopt_sockets(self, binds: tuple[BindAddress, ...], fds: list[int]) -> None:
        wanted = set(binds)
        for bind, fd in zip(binds, fds, strict=False):
            if bind in self.sockets:
                os.close(fd)  # already held; the duplicate isn't needed
            else:
                self.sockets[bind] = socket.socket(fileno=fd)
        for bind in list(self.sockets):
            if bind not in wanted:
                self.sockets.pop(bind).close()

    async def configure(self, msg: Configure) -> None:
        try:
            self.health.update(msg.health)
            keys = self.ticket_keys
            runtime = Runtime.build(msg.generation, msg.config, msg.bundles, self.health, keys)
            setup_error_log(msg.config.log, f"worker {self.slot}")
            await self._serve(runtime)
        except Exception as exc:  # report any build failure; keep serving the old graph
            log.exception("worker %d: could not apply configuration %d", self.slot, msg.generation)
            self._reply(Configured(self.slot, msg.generation, error=f"{type(exc).__name__}: {exc}"))
            return
        old, self.runtime = self.runtime, runtime
        if self.ticket_keys is not keys:  # rotated while this runtime was being built
            self._apply_ticket_keys()
        if self.config is None or self.config.log.access != msg.config.log.access:
            self.access.close()
            self.access = AccessLog(msg.config.log.access, self.loop)
        self.config = msg.config
        if old is not None:
            old.retire(runtime)
        self._reply(Configured(self.slot, msg.generation))

    async def _serve(self, runtime: Runtime) -> None:
        new_servers: list[Closable] = []
        tls_alpn01 = bool(self._tls_alpn01_contexts)
        try:
            for lc in runtime.config.listeners:
                lr = runtime.listeners[lc.name]
                for bind in lc.bind:
                    new_servers.append(
                        await serve(self, lr, self.sockets[bind].dup(), tls_alpn01=tls_alpn01)
                    )
        except BaseException:
            for s in new_servers:
                s.close()
            raise
        old, self.servers = self.servers, new_servers
        self._serving_tls_alpn01 = tls_alpn01
        for s in old:
            s.close()

    # ---- ACME challenges ------------------------------------------------------------------

    def acme_tls_alpn01_context(self, name: str) -> ssl.SSLContext | None:
        return self._tls_alpn01_contexts.get(name.lower())

    def _set_challenges(self, msg: Challenges) -> None:
        self.acme_http01 = dict(msg.http01)
        contexts: dict[str, ssl.SSLContext] = {}
        for name, (cert_pem, key_pem) in msg.tls_alpn01.items():
            try:
                bundle = bundle_from_pem(name, [name], cert_pem, key_pem)
                contexts[name.lower()] = make_server_context([bundle], alpn=(ACME_TLS_ALPN,))
            except CertificateError as exc:
                log.error(
                    "worker %d: unusable TLS-ALPN-01 certificate for %s: %s", self.slot, name, exc
                )
        self._tls_alpn01_contexts = contexts
        if bool(contexts) != self._serving_tls_alpn01 and self.runtime is not None:
            # https listeners peek at ClientHellos only while a challenge is pending
            self.spawn(self._reserve(self.runtime, msg.serial))
        else:
            self._applied(msg.serial)

    async def _reserve(self, runtime: Runtime, serial: int) -> None:
        if runtime is self.runtime and not self.draining:
            try:
                await self._serve(runtime)
            except Exception:
                log.exception("worker %d: could not switch the https accept path", self.slot)
        self._applied(serial)

    def _applied(self, serial: int) -> None:
        self._reply(ChallengesApplied(self.slot, serial))

    def _reply(self, message: Configured | ChallengesApplied) -> None:
        try:
            self.channel.send(message)
        except OSError:
            self.on_channel_eof()

    # ---- connections ------------------------------------------------------------

    def connection_closed(self) -> None:
        if self.draining and not self.connections and not self.done.done():
            self.done.set_result(None)

    # ---- shutdown ----------------------------------------------------------------------------

    async def drain(self, timeout: float) -> None:
        if self.draining:
            return
        self.draining = True
        log.info(
            "worker %d: draining %d connection(s), deadline %gs",
            self.slot,
            len(self.connections),
            timeout,
        )
        for s in self.servers:
            s.close()
        self.servers = []
        # the base sockets too: once the supervisor's copies are closed as well, the port
        # refuses new connections instead of queueing them for nobody
        for sock in self.sockets.values():
            sock.close()
        self.sockets.clear()
        for conn in list(self.connections):
            conn.drain()
        if self.connections:
            try:
                await asyncio.wait_for(asyncio.shield(self.done), timeout)
            except TimeoutError:
                log.warning(
                    "worker %d: %d connection(s) still open at the deadline; closing them",
                    self.slot,
                    len(self.connections),
                )
                for conn in list(self.connections):
                    conn.abort()
                await asyncio.sleep(0)
        if not self.done.done():
            self.done.set_result(None)


# prctl(2) options and the capset(2) ABI, from <linux/prctl.h> and <linux/capability.h>
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def give_up_privileges() -> None:
    """Keep this worker from ever gaining a privilege, and drop those it does not need.

    * ``PR_SET_NO_NEW_PRIVS``: no ``execve`` (of a set-user-ID program, a file
      with capabilities) can give this process or its children more rights.
    * When not root: clear the ambient capabilities and empty the permitted,
      effective and inheritable sets. Dropping is always allowed, and nothing a
      worker does needs a capability. A root worker (no ``[node] user``) keeps
      its capabilities: root without them still owns every root file, so it
      would gain little and could lose access to files it is configured to read.

    Failures are logged, not raised: an old kernel without ambient capabilities
    must not stop the node.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl, capset = libc.prctl, libc.capset
    except (OSError, AttributeError) as exc:  # not glibc/Linux
        log.warning("worker: cannot drop privileges here: %s", exc)
        return
    zero = ctypes.c_ulong(0)
    if prctl(ctypes.c_int(_PR_SET_NO_NEW_PRIVS), ctypes.c_ulong(1), zero, zero, zero) != 0:
        log.warning("worker: prctl(PR_SET_NO_NEW_PRIVS): %s", os.strerror(ctypes.get_errno()))
    if os.geteuid() == 0:
        return
    clear_all = ctypes.c_ulong(_PR_CAP_AMBIENT_CLEAR_ALL)
    if prctl(ctypes.c_int(_PR_CAP_AMBIENT), clear_all, zero, zero, zero) != 0:
        err = ctypes.get_errno()
        if err != errno.EINVAL:  # a kernel before 4.3 has no ambient set
            log.warning("worker: cannot clear ambient capabilities: %s", os.strerror(err))
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()  # version 3: two 32-bit halves, all zero
    if capset(ctypes.byref(header), data) != 0:
        log.warning("worker: cannot drop capabilities: %s", os.strerror(ctypes.get_errno()))


def _log_loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    # A bug in one connection's callbacks must be visible and must not end the worker.
    exc = context.get("exception")
    log.error(
        "unhandled error: %s",
        context.get("message", "?"),
        exc_info=(type(exc), exc, exc.__traceback__) if isinstance(exc, BaseException) else None,
    )


async def _main(ipc_fd: int, slot: int) -> int:
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_log_loop_exception)
    channel = Channel(socket.socket(fileno=ipc_fd))
    worker = Worker(loop, channel, slot)
    channel.attach(loop, worker.on_message, worker.on_channel_eof)

    tasks: set[asyncio.Task[None]] = set()

    def on_term() -> None:
        timeout = worker.config.node.shutdown_timeout if worker.config else 5.0
        task = loop.create_task(worker.drain(timeout))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    loop.add_signal_handler(signal.SIGTERM, on_term)
    # Ctrl-C reaches the whole process group; the supervisor decides what happens.
    loop.add_signal_handler(signal.SIGINT, lambda: None)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)
    # after a burst of connections (or once a minute) the freed C heap given back to
    # the kernel. (Not a fixed mmap threshold: every TLS read would then mmap and munmap
    # its 256 KiB buffer: measured, +32 µs of kernel time per keep-alive request.)
    trimmer = HeapTrimmer(loop, lambda: len(worker.connections))
    trimmer.start()
    await worker.done
    trimmer.stop()
    for s in worker.sockets.values():
        s.close()
    worker.access.close()  # writes the lines still batched
    if worker.runtime is not None:
        worker.runtime.retire()  # idle keep-alive connections to app servers
    with contextlib.suppress(ValueError, OSError):
        loop.remove_reader(channel.sock.fileno())
    channel.close()
    worker.deadlines.close()
    worker.poller.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tlsgate-worker", description="tlsgate worker process")
    parser.add_argument("--ipc-fd", type=int, required=True)
    parser.add_argument("--slot", type=int, required=True)
    args = parser.parse_args(argv)
    setup_error_log(None, f"worker {args.slot}")
    give_up_privileges()  # before the channel: nothing has been received yet
    return uvloop.run(_main(args.ipc_fd, args.slot))


if __name__ == "__main__":
    sys.exit(main())
