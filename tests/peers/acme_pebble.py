"""Pebble whose validation traffic goes to tlsgate's own listeners.

How this works: the ACME client tests (``tests/acme_client/conftest.py``) run
Pebble with in-test challenge responders; here Pebble's ``httpPort`` and
``tlsPort`` must point at the ``http`` and ``https`` listeners of the
``tlsgate serve`` under test instead, so :func:`run_pebble_at` takes those
ports (free ports the test then binds tlsgate to). Everything else is the same
recipe, and the process helpers are imported from there: Debian's ``pebble``
with a listener certificate from ``LocalCA``, ``pebble-challtestsrv`` as its
DNS server answering ``A 127.0.0.1`` for every name, ``PEBBLE_VA_NOSLEEP=1``,
``PEBBLE_WFE_NONCEREJECT=0`` and ``PEBBLE_AUTHZREUSE=0``.

Pebble logs one ``Added order`` line per new order, which is how tests count
orders (its management API has no order listing).
"""

from __future__ import annotations

import contextlib
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from acme_client.pebble import pebble_process, stop


@dataclass
class PebbleServer:
    """A running Pebble (and its DNS server)."""

    workdir: Path
    directory_url: str
    ca_file: Path  # trust anchor for Pebble's own HTTPS (ACME and management)
    management_url: str
    http_port: int  # where Pebble sends HTTP-01 validations
    tls_port: int  # where Pebble sends TLS-ALPN-01 validations
    pebble: subprocess.Popen[bytes]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def log(self) -> Path:
        return self.workdir / "pebble.log"

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def orders(self) -> int:
        """How many orders Pebble has accepted so far."""
        return self.log_text().count("Added order")

    def get(self, path: str) -> httpx.Response:
        """GET ``path`` from the management interface."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        with httpx.Client(verify=ctx, timeout=10) as client:
            resp = client.get(f"{self.management_url}{path}")
        resp.raise_for_status()
        return resp

    def write_root(self, path: Path) -> Path:
        """Pebble's issuing root (new at every start) as a PEM file, for curl --cacert."""
        path.write_bytes(self.get("/roots/0").content)
        return path

    def stop_acme(self) -> None:
        """Stop Pebble itself (the CA goes away; its DNS server stays)."""
        stop(self.pebble)


@contextlib.contextmanager
def run_pebble_at(workdir: Path, *, http_port: int, tls_port: int) -> Iterator[PebbleServer]:
    """Start challtestsrv + Pebble validating against ``http_port``/``tls_port``; stop on exit."""
    with pebble_process(workdir, http_port=http_port, tls_port=tls_port) as proc:
        yield PebbleServer(
            workdir=workdir,
            directory_url=proc.directory_url,
            ca_file=proc.ca_file,
            management_url=proc.management_url,
            http_port=http_port,
            tls_port=tls_port,
            pebble=proc.pebble,
            procs=proc.procs,
        )
