"""Free loopback ports for tests, benchmarks and the demo.

Binding to port 0 lets the kernel return the same port to two calls in a row (the
first is closed again at once), and a port from the ephemeral range can be taken as
the source port of any outgoing connection before the server meant to bind it
starts. So ports come from below the ephemeral range, each at most once per process.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_HANDED_OUT: set[int] = set()
_LOWEST = 10000


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago and never handed out before."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    high = max(_ephemeral_low(), _LOWEST + 2000)
    while True:
        port = random.randrange(_LOWEST, high)  # noqa: S311 - not a secret
        if port in _HANDED_OUT:
            continue
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
