"""Pebble that resolves through a real authoritative server (BIND) for dns-01.

How this works: the other Pebble recipes in the tests (``acme_client/conftest.py``,
``peers/acme_pebble.py``) pair Pebble with ``pebble-challtestsrv``, a fake DNS
server whose TXT records the tests set directly. Here Pebble's ``-dnsserver`` is
the ``named`` of ``integration/bindserver.py`` instead, so a dns-01 validation
succeeds only if tlsgate really wrote the TXT record into the zone through a
signed RFC 2136 update. Only dns-01 is used, so Pebble's ``httpPort`` and
``tlsPort`` point at free ports nobody listens on. Same environment as the
others: ``PEBBLE_VA_NOSLEEP=1`` (validate at once), ``PEBBLE_WFE_NONCEREJECT=0``
(no random badNonce), ``PEBBLE_AUTHZREUSE=0`` (fresh authorizations per order,
but for 1 % of identifiers: Pebble 2.4 tests ``rand.Intn(100) > percent``).
"""

from __future__ import annotations

import contextlib
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from harness import free_port

from acme_client.pebble import pebble_process


@dataclass
class DnsPebble:
    """A running Pebble that validates dns-01 against ``127.0.0.1:dns_port``."""

    workdir: Path
    directory_url: str
    ca_file: Path  # trust anchor for Pebble's own HTTPS (ACME and management)
    management_url: str
    proc: subprocess.Popen[bytes]

    def log_text(self) -> str:
        try:
            return (self.workdir / "pebble.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def write_root(self, path: Path) -> Path:
        """Pebble's issuing root (new at every start) as a PEM file, for curl --cacert."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        with httpx.Client(verify=ctx, timeout=10) as client:
            resp = client.get(f"{self.management_url}/roots/0")
        resp.raise_for_status()
        path.write_bytes(resp.content)
        return path


@contextlib.contextmanager
def run_pebble_with_dns(workdir: Path, dns_port: int) -> Iterator[DnsPebble]:
    """Start Pebble resolving through ``127.0.0.1:dns_port``; stop it on exit."""
    # only dns-01 is used: HTTP-01 and TLS-ALPN-01 point at ports nobody listens on
    with pebble_process(
        workdir,
        http_port=free_port(),
        tls_port=free_port(),
        dns_server=f"127.0.0.1:{dns_port}",
    ) as proc:
        yield DnsPebble(
            workdir=workdir,
            directory_url=proc.directory_url,
            ca_file=proc.ca_file,
            management_url=proc.management_url,
            proc=proc.pebble,
        )
