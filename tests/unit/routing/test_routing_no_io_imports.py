"""proto and routing must not load asyncio, socket or ssl, even indirectly."""

from __future__ import annotations

import subprocess
import sys

_CHECK = """
import sys
import tlsgate.proto.http1, tlsgate.routing.hosts, tlsgate.routing.balance, tlsgate.routing.health
import tlsgate.proto.clienthello, tlsgate.proto.proxy_protocol
print(",".join(m for m in ("asyncio", "socket", "ssl", "selectors") if m in sys.modules))
"""


def test_no_io_modules_loaded() -> None:
    out = subprocess.run(
        [sys.executable, "-I", "-c", _CHECK], capture_output=True, check=True, text=True
    )
    assert out.stdout.strip() == ""
