"""Memory per idle TLS connection of the stack tlsgate runs on, without tlsgate.

How this works: a child process runs a minimal uvloop server with CPython's ``ssl``
(an ECDSA P-256 certificate, TLS 1.3, a protocol that does nothing), the way
tlsgate's workers accept TLS; this process opens ``--connections`` TLS connections to
it, waits until every handshake is done, and reads the server's RSS before and after.
The difference per connection is what uvloop's ``SSLProtocol`` and OpenSSL cost by
themselves: the floor under ``make bench`` row 8 (docs/benchmarks.md, "Where the
time goes")::

    .venv/bin/python bench/bare_tls_memory.py --connections 4000
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import free_port, write_certificate

SERVER = """
import asyncio, ssl, sys, uvloop

class Idle(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

async def main():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[2], sys.argv[3])
    await asyncio.get_running_loop().create_server(
        Idle, "127.0.0.1", int(sys.argv[1]), ssl=ctx, backlog=4096
    )
    print("ready", flush=True)
    await asyncio.sleep(3600)

uvloop.run(main())
"""


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


async def open_connections(port: int, n: int) -> list[asyncio.StreamWriter]:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    gate = asyncio.Semaphore(200)
    writers: list[asyncio.StreamWriter] = []

    async def one() -> None:
        async with gate:
            _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
            writers.append(writer)

    await asyncio.gather(*(one() for _ in range(n)))
    return writers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=4000)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 2 * args.connections + 100), hard))
    with tempfile.TemporaryDirectory(prefix="tlsgate-bare-") as tmp:
        cert = write_certificate(Path(tmp), "ecdsa-p256")
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(port), str(cert.cert_file), str(cert.key_file)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            server.stdout.readline()  # "ready"
            before = rss_kib(server.pid)

            async def run() -> float:
                writers = await open_connections(port, args.connections)
                await asyncio.sleep(1.0)  # the server finishes its side of the last ones
                after = rss_kib(server.pid)
                for w in writers:
                    w.close()
                return (after - before) / len(writers)

            per = asyncio.run(run())
        finally:
            server.kill()
            server.wait()
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: uvloop + ssl, no tlsgate: "
        f"{per:.1f} KiB per idle TLS 1.3 connection ({args.connections:,} connections)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
