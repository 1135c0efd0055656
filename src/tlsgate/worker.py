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
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import uvloop

from tlsgate.certs.bundle import bundle_from_pem
from tlsgate.certs.cache import make_server_context
from tlsgate.config.model import BindAddress, Config
from tlsgate.errors import CertificateError
from tlsgate.ipc import Challenges, Channel, Configure, Configured, HealthUpdate, Message, Stop
from tlsgate.logs import AccessLog, setup_error_log
from tlsgate.net.http_proxy import ClientConnection
from tlsgate.net.l4 import (
    ACME_TLS_ALPN,
    Acceptor,
    Address,
    L4Session,
    accept_http_with_preamble,
)
from tlsgate.net.runtime import ListenerRuntime, Runtime

if TYPE_CHECKING:
    from tlsgate.net.http_proxy import Exchange

log = logging.getLogger("tlsgate.worker")


class Closable(Protocol):
    def close(self) -> None: ...


class Drainable(Protocol):
    def drain(self) -> None: ...
    def abort(self) -> None: ...


class Worker:
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
        self._access = AccessLog("")
        self._tasks: set[asyncio.Task[None]] = set()
        self.acme_http01: dict[str, str] = {}
        self._tls_alpn01_contexts: dict[str, ssl.SSLContext] = {}

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a task the worker keeps a reference to (asyncio holds tasks weakly)."""
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- messages ----------------------------------------------------------------------------

    def on_message(self, message: Message, fds: list[int]) -> None:
        if isinstance(message, Configure):
            self._adopt_sockets(message.binds, fds)
            self.spawn(self.configure(message))
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
            runtime = Runtime.build(msg.generation, msg.config, msg.bundles, self.health)
            setup_error_log(msg.config.log, f"worker {self.slot}")
            await self._serve(runtime)
        except Exception as exc:  # report any build failure; keep serving the old graph
            log.exception("worker %d: could not apply configuration %d", self.slot, msg.generation)
            self._reply(Configured(self.slot, msg.generation, error=f"{type(exc).__name__}: {exc}"))
            return
        old, self.runtime = self.runtime, runtime
        if self.config is None or self.config.log.access != msg.config.log.access:
            self._access.close()
            self._access = AccessLog(msg.config.log.access)
        self.config = msg.config
        if old is not None:
            old.retire()
        self._reply(Configured(self.slot, msg.generation))

    async def _serve(self, runtime: Runtime) -> None:
        new_servers: list[Closable] = []
        acme = runtime.config.acme
        tls_alpn = acme is not None and "tls-alpn-01" in acme.challenges
        try:
            for lc in runtime.config.listeners:
                lr = runtime.listeners[lc.name]
                for bind in lc.bind:
                    base = self.sockets[bind]
                    sock = base.dup()
                    tls = lc.protocol == "https"
                    server: Closable
                    if lc.protocol in ("tcp", "tls-passthrough"):
                        acceptor = Acceptor(self.loop, sock, lc.name, self._l4_factory(lr))
                        acceptor.start()
                        server = acceptor
                    elif lc.accept_proxy_protocol or (tls and tls_alpn):
                        acceptor = Acceptor(
                            self.loop,
                            sock,
                            lc.name,
                            self._preamble_http_factory(lr, tls, want_hello=tls and tls_alpn),
                        )
                        acceptor.start()
                        server = acceptor
                    else:
                        assert not tls or lr.certificates is not None
                        server = await self.loop.create_server(
                            _factory(self, lr, tls),
                            sock=sock,
                            ssl=lr.certificates.base_context if lr.certificates else None,
                            ssl_handshake_timeout=lc.limits.tls_handshake_timeout if tls else None,
                            backlog=4096,
                        )
                    new_servers.append(server)
        except BaseException:
            for s in new_servers:
                s.close()
            raise
        old, self.servers = self.servers, new_servers
        for s in old:
            s.close()

    def _l4_factory(self, lr: ListenerRuntime) -> Callable[[socket.socket, Address], None]:
        def accept(sock: socket.socket, peer: Address) -> None:
            L4Session(self, lr, sock, peer).start()

        return accept

    def _preamble_http_factory(
        self, lr: ListenerRuntime, tls: bool, *, want_hello: bool
    ) -> Callable[[socket.socket, Address], None]:
        def accept(sock: socket.socket, peer: Address) -> None:
            accept_http_with_preamble(self, lr, tls, sock, peer, want_hello=want_hello)

        return accept

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

    def _reply(self, message: Configured) -> None:
        try:
            self.channel.send(message)
        except OSError:
            self.on_channel_eof()

    # ---- connections & access log ------------------------------------------------------------

    def connection_closed(self) -> None:
        if self.draining and not self.connections and not self.done.done():
            self.done.set_result(None)

    def write_access(self, entry: dict[str, Any]) -> None:
        self._access.write(entry)

    def access_log(self, ex: Exchange) -> None:
        conn = ex.conn
        info = ex.info
        now = time.monotonic()
        entry: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "client_ip": conn.client_ip,
            "peer_ip": conn.proxy_peer or conn.peer_ip,
            "listener": conn.listener.name,
            "sni": conn.sni,
            "tls_version": conn.tls_version,
            "method": info.method.decode("latin-1") if info else None,
            "host": info.host if info else None,
            "path": info.path if info else None,
            "status": ex.status,
            "bytes_in": ex.body_received,
            "bytes_out": ex.bytes_out,
            "backend": ex.backend.name if ex.backend else None,
            "server": ex.server.key if ex.server else None,
            "upstream_duration_ms": round(ex.upstream_ms, 3) if ex.upstream_ms >= 0 else None,
            "duration_ms": round((now - ex.t_start) * 1000.0, 3),
            "worker": self.slot,
        }
        if ex.error_detail:
            entry["error"] = ex.error_detail
        self._access.write(entry)

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


def _factory(worker: Worker, listener: ListenerRuntime, tls: bool) -> Any:
    def make() -> ClientConnection:
        return ClientConnection(worker, listener, tls)

    return make


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
    await worker.done
    for s in worker.sockets.values():
        s.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tlsgate-worker", description="tlsgate worker process")
    parser.add_argument("--ipc-fd", type=int, required=True)
    parser.add_argument("--slot", type=int, required=True)
    args = parser.parse_args(argv)
    setup_error_log(None, f"worker {args.slot}")
    return uvloop.run(_main(args.ipc_fd, args.slot))


if __name__ == "__main__":
    sys.exit(main())
