"""Active health checks, run by the supervisor (control plane), one task per server.

How this works: every ``interval`` a check runs within ``timeout``:

- ``tcp``: the TCP connect must succeed;
- ``tls``: after the connect a TLS handshake must complete, verifying the
  server's certificate when ``tls_verify`` is on (for servers that terminate
  TLS themselves, behind a tcp or tls-passthrough listener);
- ``http``: an HTTP/1.1 ``GET path`` (over TLS when the backend has ``tls``
  on) whose status must fall in ``expect_status``.

A backend with ``send_proxy_protocol`` has servers that expect a PROXY header
before anything else on every connection, checks included, so every check
sends one first, in clear text, the way the data path does before its own TLS
handshake; the connection therefore opens plain and is upgraded with
``start_tls`` afterwards. The header announces the check's own connection, not
a relayed client (see :func:`proxy_header_for_check`).

The TLS client context is built once per checker (:func:`health_check_context`),
not per probe. Results feed a ``routing.health.HealthState`` (rise/fall); when a
server changes state, ``on_change`` tells the supervisor, which pushes the
change to every worker.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable

from tlsgate.certs.cache import make_client_context
from tlsgate.config.model import (
    BackendConfig,
    HealthCheckConfig,
    ProxyProtocolVersion,
    ServerConfig,
)
from tlsgate.proto.proxy_protocol import build_v1, build_v2
from tlsgate.routing.health import HealthState, status_matches

__all__ = [
    "HealthChecker",
    "OnChange",
    "health_check_context",
    "probe",
    "proxy_header_for_check",
]

log = logging.getLogger("tlsgate.health")

OnChange = Callable[[str, str, bool], None]

# How long a finished check waits for the server to acknowledge the close (TLS
# close_notify) before the connection is aborted; at most the check's timeout.
_CLOSE_GRACE = 1.0

# OpenSSL's reasons when the bytes that came back are not a TLS record at all.
_NOT_TLS = frozenset(
    {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST"}
)


def health_check_context(backend: BackendConfig) -> ssl.SSLContext | None:
    """The TLS client context the health checks of ``backend`` use, or None for checks
    that make no TLS handshake (tcp checks; http checks of a ``tls = "off"`` backend).

    Checks never verify less than requests do: the certificate is verified when the
    check has ``tls_verify = true`` or the backend has ``tls = "verify"``, against
    the check's ``ca_file`` when it sets one, else the backend's ``ca_file`` (for a
    verifying backend), else the system store. A ``tls`` check offers no ALPN: it
    only proves the server completes a handshake, whatever it speaks on top.

    Raises:
        CertificateError: the CA file cannot be loaded.
    """
    check = backend.health
    if check is None or check.kind == "tcp" or (check.kind == "http" and backend.tls == "off"):
        return None
    verify = check.tls_verify or backend.tls == "verify"
    ca_file = check.ca_file
    if ca_file is None and backend.tls == "verify":
        ca_file = backend.ca_file
    alpn: tuple[str, ...] = () if check.kind == "tls" else ("http/1.1",)
    return make_client_context(verify=verify, ca_file=ca_file if verify else None, alpn=alpn)


def proxy_header_for_check(
    version: ProxyProtocolVersion,
    local: tuple[str, int] | None,
    peer: tuple[str, int] | None,
    *,
    crc32c: bool = False,
) -> bytes:
    """The PROXY header a health check sends on its connection from ``local`` to ``peer``.

    v2 uses the LOCAL command, which the PROXY protocol spec (§2.2) defines for this:
    "the connection was established on purpose by the proxy without being relayed.
    The connection endpoints are the sender and the receiver. Such connections exist
    when the proxy sends health-checks to the server."

    v1 has no LOCAL command, and its UNKNOWN family is no substitute: "an earlier
    version of this specification suggested to use this when sending health checks,
    but this causes issues with servers that reject the "UNKNOWN" keyword. Thus is it
    now recommended not to send "UNKNOWN" when the connection is expected to be
    accepted" (§2.1). So the line carries the check connection's own endpoints, which
    is what LOCAL means; UNKNOWN only when they are not known.

    Args:
        version: the backend's ``send_proxy_protocol``; ``""`` gives ``b""``.
        local: the check socket's own ``(ip, port)``.
        peer: the server's ``(ip, port)``.
        crc32c: v2 only: append a PP2_TYPE_CRC32C TLV (``proxy_protocol_crc32c``).
    """
    if version == "v2":
        return build_v2(None, None, command="LOCAL", crc32c=crc32c)
    if version == "v1":
        return build_v1(local, peer)
    return b""


class _HeldStreamProtocol(asyncio.StreamReaderProtocol):
    """A stream protocol that stops reading the moment it is connected.

    A server that speaks first (an SSH or SMTP banner) may have its greeting arrive
    before ``start_tls``; a reading stream would keep those bytes in its own buffer,
    where the TLS layer never sees them, and the handshake would wait for an answer
    that has already come. Held, the bytes stay in the socket until ``start_tls``
    resumes reading, so OpenSSL reads them and says they are not TLS.
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert isinstance(transport, asyncio.ReadTransport)
        transport.pause_reading()


async def _open_connection(
    server: ServerConfig, *, hold_reading: bool
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """``asyncio.open_connection``, with reading held until ``start_tls`` when a TLS
    handshake follows (see :class:`_HeldStreamProtocol`)."""
    if not hold_reading:
        return await asyncio.open_connection(server.host, server.port)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(loop=loop)
    transport, protocol = await loop.create_connection(
        lambda: _HeldStreamProtocol(reader, loop=loop), server.host, server.port
    )
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


def _endpoint(writer: asyncio.StreamWriter, which: str) -> tuple[str, int] | None:
    """``sockname``/``peername`` as ``(ip, port)``; IPv6 addresses come as 4-tuples."""
    address = writer.get_extra_info(which)
    if isinstance(address, tuple) and len(address) >= 2:
        return (str(address[0]), int(address[1]))
    return None


def _tls_name(check: HealthCheckConfig, server_name: str, server: ServerConfig) -> str:
    """The SNI name sent and verified: the check's host, else the backend's
    server_name, else the server's own host. An http check's ``host`` is a Host header
    and may carry a port, which is not part of the name."""
    name = check.host or server_name or server.host
    if name.startswith("["):
        return name[1:].partition("]")[0]
    if name.count(":") == 1:
        return name.partition(":")[0]
    return name


def _failure(exc: BaseException, step: str, timeout: float) -> str:
    """Why a check failed, for the log: which step, and what happened in words."""
    if isinstance(exc, TimeoutError):
        return f"{step}: no answer within {timeout:g}s"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"{step}: certificate verification failed: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        if exc.reason in _NOT_TLS:
            return f"{step} failed: the server does not speak TLS ({exc.reason})"
        return f"{step} failed: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return f"{step}: connection refused"
    if isinstance(exc, ConnectionError | asyncio.IncompleteReadError):
        return f"{step}: connection closed by the server"
    if isinstance(exc, OSError):
        return f"{step}: {exc.strerror or exc}"
    return f"{step}: {exc}"


async def _close(writer: asyncio.StreamWriter, grace: float) -> None:
    """Close politely (TLS close_notify), but never wait longer than ``grace``."""
    writer.close()
    try:
        async with asyncio.timeout(grace):
            await writer.wait_closed()
    except (TimeoutError, OSError, ssl.SSLError):
        writer.transport.abort()
    except asyncio.CancelledError:
        writer.transport.abort()
        raise


async def probe(
    server: ServerConfig,
    check: HealthCheckConfig,
    ssl_context: ssl.SSLContext | None,
    server_name: str,
    *,
    send_proxy_protocol: ProxyProtocolVersion = "",
    proxy_protocol_crc32c: bool = False,
) -> tuple[bool, str]:
    """Run one check against ``server``, all of it within ``check.timeout``.

    Args:
        server: the server checked.
        check: what to check (``kind`` tcp, tls or http).
        ssl_context: the client context for the TLS handshake of a tls check or of an
            http check of a TLS backend (see :func:`health_check_context`); None makes
            http checks plain. A tls check given None builds one from
            ``check.tls_verify`` and ``check.ca_file`` for this probe alone.
        server_name: the backend's ``server_name``; the name sent as SNI and verified
            is ``check.host``, else this, else ``server.host``.
        send_proxy_protocol: the backend's PROXY version; the header (see
            :func:`proxy_header_for_check`) is the first thing sent.
        proxy_protocol_crc32c: v2 only: the header carries a CRC32C TLV.

    Returns:
        ``(passed, why)``; ``why`` explains a failure for the log ("" on success).

    Raises:
        CertificateError: a tls check was given no context and ``check.ca_file``
            cannot be loaded.
    """
    if check.kind == "tls" and ssl_context is None:
        ssl_context = make_client_context(
            verify=check.tls_verify, ca_file=check.ca_file if check.tls_verify else None, alpn=()
        )
    tls = ssl_context if check.kind != "tcp" else None
    writer: asyncio.StreamWriter | None = None
    step = "connect"
    failed = False
    try:
        async with asyncio.timeout(check.timeout):
            reader, writer = await _open_connection(server, hold_reading=tls is not None)
            if send_proxy_protocol:
                step = "PROXY header"
                writer.write(
                    proxy_header_for_check(
                        send_proxy_protocol,
                        _endpoint(writer, "sockname"),
                        _endpoint(writer, "peername"),
                        crc32c=proxy_protocol_crc32c,
                    )
                )
                await writer.drain()
            if tls is not None:
                step = "TLS handshake"
                # After the PROXY header, in the same order as the data path: the server
                # reads the header in clear text, then starts TLS.
                await writer.start_tls(tls, server_hostname=_tls_name(check, server_name, server))
            if check.kind != "http":
                return True, ""
            step = "HTTP request"
            host = check.host or server.address
            writer.write(
                f"GET {check.path} HTTP/1.1\r\nHost: {host}\r\n"
                "User-Agent: tlsgate-health-check\r\nAccept: */*\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            try:
                line = await reader.readline()
            except ValueError:
                # StreamReader.readline: longer than the reader's limit (64 KiB)
                return False, "not an HTTP response: the status line is longer than 64 KiB"
            if not line:
                return False, "HTTP request: connection closed before a response"
            parts = line.split(None, 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
                return False, f"not an HTTP response: {line[:60]!r}"
            status = int(parts[1])
            if status_matches(status, check.expect_status):
                return True, ""
            lo, hi = check.expect_status
            return False, f"status {status}, expected {lo}-{hi}"
    except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
        # ssl.SSLError is an OSError
        failed = True
        return False, _failure(exc, step, check.timeout)
    except asyncio.CancelledError:
        failed = True  # the checker is being stopped: don't linger over a polite close
        raise
    finally:
        if writer is not None:
            if failed:
                # Nothing left to close politely; and after a failed start_tls the
                # stream no longer owns the transport, so wait_closed would never end.
                writer.transport.abort()
            else:
                await _close(writer, min(_CLOSE_GRACE, check.timeout))


class HealthChecker:
    """Checks one server of one backend until cancelled.

    Args:
        backend: the backend, with ``health`` set.
        server: the server checked. The TLS context comes from
            :func:`health_check_context` (the check's tls_verify and ca_file decide it).
        on_change: called as ``on_change(backend_name, server_address, up)`` when the
            server changes state.
        initially_up: the starting state.

    Raises:
        CertificateError: the CA file the checks verify against cannot be loaded.
    """

    def __init__(
        self,
        backend: BackendConfig,
        server: ServerConfig,
        on_change: OnChange,
        *,
        initially_up: bool = True,
    ) -> None:
        assert backend.health is not None
        self.backend = backend
        self.server = server
        self.check = backend.health
        self.ssl_context = health_check_context(backend)
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

    async def check_once(self) -> bool | None:
        """Run one probe and feed it to the rise/fall state.

        Returns:
            The new state (True = UP) when this probe changed it, else None.
        """
        ok, why = await probe(
            self.server,
            self.check,
            self.ssl_context,
            self.backend.server_name,
            send_proxy_protocol=self.backend.send_proxy_protocol,
            proxy_protocol_crc32c=self.backend.proxy_protocol_crc32c,
        )
        changed = self.state.observe(ok)
        if changed is not None:
            if changed:
                log.warning("backend %s: server %s is UP", self.backend.name, self.server.address)
            else:
                log.warning(
                    "backend %s: server %s is DOWN (%s)",
                    self.backend.name,
                    self.server.address,
                    why,
                )
            self.on_change(self.backend.name, self.server.address, changed)
        return changed

    async def _run(self) -> None:
        while True:
            await self.check_once()
            await asyncio.sleep(self.check.interval)
