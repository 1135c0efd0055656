"""A tiny app server for ``tlsgate demo``: it shows who answered and what tlsgate added.

How this works: one asyncio protocol per connection feeds an httptools request
parser; each request is answered as soon as it is complete (so pipelined
requests are answered in order, and bodies are read and dropped) with a small
JSON document: this app's name, the method and path, and the ``Host``,
``X-Forwarded-*`` and ``Forwarded`` fields it received. Run behind the demo
node, successive curls show the app names taking turns (round robin) and the
client address in ``X-Forwarded-For``. Keep-alive follows the request
(``should_keep_alive``); a malformed request gets 400 and the connection closes.

Run it as ``python -m tlsgate.demo_app --port 9001 --name app-1``; SIGTERM or
SIGINT stops it with exit status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Sequence

import httptools

__all__ = ["main", "serve"]

# The request fields echoed back, in the order they are shown.
_SHOWN = ("host", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded")
_REASONS = {200: "OK", 400: "Bad Request"}


class _DemoProtocol(asyncio.Protocol):
    """One client connection (normally: one of tlsgate's upstream connections)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = bytearray()
        self.fields: dict[str, str] = {}

    # -- asyncio -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The request was answered in on_message_complete; this app speaks no
            # other protocol (RFC 9110 7.8: a server MAY ignore Upgrade), and what
            # follows on the connection would be the other protocol: close.
            self._close()
        except httptools.HttpParserError:
            self._respond(400, b"malformed request\n", "text/plain", keep_alive=False, head=False)

    # -- httptools callbacks -------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = bytearray()
        self.fields = {}

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        if key in _SHOWN:
            text = value.decode("latin-1")
            # RFC 9110 5.3: repeated field lines combine into one comma-separated list.
            self.fields[key] = f"{self.fields[key]}, {text}" if key in self.fields else text

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode("latin-1")
        target = self.url.decode("latin-1")
        path, _, query = target.partition("?")
        answer = {
            "app": self.name,
            "method": method,
            "path": path,
            "query": query,
            **{key: self.fields.get(key) for key in _SHOWN},
        }
        body = (json.dumps(answer, indent=2) + "\n").encode()
        self._respond(
            200,
            body,
            "application/json",
            keep_alive=bool(self.parser.should_keep_alive()),
            head=method == "HEAD",
        )

    # -- output --------------------------------------------------------------

    def _respond(
        self, status: int, body: bytes, content_type: str, *, keep_alive: bool, head: bool
    ) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        lines = [
            f"HTTP/1.1 {status} {_REASONS[status]}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
            f"X-Demo-App: {self.name}",
        ]
        if not keep_alive:
            lines.append("Connection: close")
        head_bytes = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.transport.write(head_bytes if head else head_bytes + body)
        if not keep_alive:
            self._close()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def serve(host: str, port: int, name: str, stop: asyncio.Event) -> None:
    """Answer requests on ``host:port`` until ``stop`` is set.

    Raises:
        OSError: the address cannot be bound (e.g. the port is in use).
    """
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _DemoProtocol(name), host, port)
    async with server:
        await stop.wait()


async def _run(host: str, port: int, name: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(host, port, name, stop)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (1 if the port can't be bound)."""
    parser = argparse.ArgumentParser(
        prog="python -m tlsgate.demo_app", description="tlsgate demo app server"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", required=True)
    args = parser.parse_args(argv)
    try:
        asyncio.run(_run(args.host, args.port, args.name))
    except OSError as exc:
        print(f"{args.name}: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
