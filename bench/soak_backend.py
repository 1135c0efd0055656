"""The TLS echo server behind the soak's ``tls-passthrough`` listener (``bench/soak.py``).

tlsgate does not decrypt passthrough traffic, so the server behind it has to
terminate TLS itself with a certificate the client can verify: this one serves
``--cert``/``--key`` and answers every line ``L`` it receives with
``<name> L``, so the client checks both the round trip and which of the two
servers answered. It runs as its own process (``ProcessSet``), on asyncio, and
stops on SIGTERM. Health checks (a TLS handshake, then a close) and clients that
go away mid-line are normal and end the connection quietly.

    python bench/soak_backend.py --port P --name pt-1 --cert c.pem --key k.pem
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path

MAX_LINE = 64 * 1024


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


async def _echo_lines(
    name: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        while line := await reader.readline():
            writer.write(name + b" " + line)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, asyncio.LimitOverrunError, ValueError):
        pass  # a health check's close, a client gone, an overlong line: end quietly
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), 5)


async def _serve(port: int, name: str, ctx: ssl.SSLContext) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tag = name.encode()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _echo_lines(tag, reader, writer)

    server = await asyncio.start_server(
        handle, "127.0.0.1", port, ssl=ctx, limit=MAX_LINE, ssl_handshake_timeout=10
    )
    async with server:
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="TLS line-echo server (soak passthrough backend)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--cert", type=Path, required=True)
    p.add_argument("--key", type=Path, required=True)
    args = p.parse_args(argv)
    asyncio.run(_serve(args.port, args.name, server_context(args.cert, args.key)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
