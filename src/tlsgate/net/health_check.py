"""Active health checks, run by the supervisor (control plane), one task per server.

How this works: every ``interval`` a check runs with ``timeout``: a TCP
connect, or an HTTP/1.1 ``GET path`` whose status must fall in
``expect_status``. Results feed a ``routing.health.HealthState`` (rise/fall);
when a server changes state, ``on_change`` tells the supervisor, which pushes
the change to every worker.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable

from tlsgate.config.model import BackendConfig, HealthCheckConfig, ServerConfig
from tlsgate.routing.health import HealthState, status_matches

log = logging.getLogger("tlsgate.health")

OnChange = Callable[[str, str, bool], None]


async def probe(
    server: ServerConfig,
    check: HealthCheckConfig,
    ssl_context: ssl.SSLContext | None,
    server_name: str,
) -> tuple[bool, str]:
    """Run one check. Returns (passed, why) — ``why`` explains a failure for the log."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(check.timeout):
            reader, writer = await asyncio.open_connection(
                server.host,
                server.port,
                ssl=ssl_context,
                server_hostname=(server_name or server.host) if ssl_context else None,
            )
            if check.kind == "tcp":
                return True, ""
            host = check.host or server.address
            writer.write(
                f"GET {check.path} HTTP/1.1\r\nHost: {host}\r\n"
                "User-Agent: tlsgate-health-check\r\nAccept: */*\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            line = await reader.readline()
            parts = line.split(None, 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
                return False, f"not an HTTP response: {line[:60]!r}"
            status = int(parts[1])
            if status_matches(status, check.expect_status):
                return True, ""
            lo, hi = check.expect_status
            return False, f"status {status}, expected {lo}-{hi}"
    except TimeoutError:
        return False, f"no answer within {check.timeout:g}s"
    except (OSError, ssl.SSLError) as exc:
        return False, str(exc) or type(exc).__name__
    finally:
        if writer is not None:
            writer.close()


class HealthChecker:
    """Checks one server of one backend until cancelled."""

    def __init__(
        self,
        backend: BackendConfig,
        server: ServerConfig,
        ssl_context: ssl.SSLContext | None,
        on_change: OnChange,
        *,
        initially_up: bool = True,
    ) -> None:
        assert backend.health is not None
        self.backend = backend
        self.server = server
        self.check = backend.health
        self.ssl_context = ssl_context
        self.on_change = on_change
        self.state = HealthState(self.check.rise, self.check.fall, initially_up=initially_up)
        self.task: asyncio.Task[None] | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.backend.name, self.server.address)

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def _run(self) -> None:
        while True:
            ok, why = await probe(
                self.server, self.check, self.ssl_context, self.backend.server_name
            )
            changed = self.state.observe(ok)
            if changed is not None:
                if changed:
                    log.warning(
                        "backend %s: server %s is UP", self.backend.name, self.server.address
                    )
                else:
                    log.warning(
                        "backend %s: server %s is DOWN (%s)",
                        self.backend.name,
                        self.server.address,
                        why,
                    )
                self.on_change(self.backend.name, self.server.address, changed)
            await asyncio.sleep(self.check.interval)
