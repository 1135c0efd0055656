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
import json
import os
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from harness import free_port

from acme_client.conftest import CHALLTESTSRV, PEBBLE, _stop, _wait_listening
from tlsgate.ca.local import LocalCA


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
        _stop(self.pebble)


@contextlib.contextmanager
def run_pebble_at(workdir: Path, *, http_port: int, tls_port: int) -> Iterator[PebbleServer]:
    """Start challtestsrv + Pebble validating against ``http_port``/``tls_port``; stop on exit."""
    for binary in (PEBBLE, CHALLTESTSRV):
        if not os.access(binary, os.X_OK):
            pytest.fail(
                f"{binary} is missing: run scripts/install-system-deps.sh (Debian 'pebble')"
            )
    workdir.mkdir(parents=True, exist_ok=True)
    ca = LocalCA.create("tlsgate peers tests: Pebble listener CA")
    leaf = ca.issue(["localhost", "127.0.0.1"])
    (workdir / "ca.pem").write_bytes(ca.cert_pem)
    (workdir / "cert.pem").write_bytes(leaf.chain_pem)
    (workdir / "key.pem").write_bytes(leaf.key_pem)
    acme_port, mgmt_port, dns_port, dns_mgmt_port = (free_port() for _ in range(4))
    config = {
        "pebble": {
            "listenAddress": f"127.0.0.1:{acme_port}",
            "managementListenAddress": f"127.0.0.1:{mgmt_port}",
            "certificate": str(workdir / "cert.pem"),
            "privateKey": str(workdir / "key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
    }
    (workdir / "pebble.json").write_text(json.dumps(config))
    env = {
        **os.environ,
        "PEBBLE_VA_NOSLEEP": "1",
        "PEBBLE_WFE_NONCEREJECT": "0",
        "PEBBLE_AUTHZREUSE": "0",
    }
    procs: list[subprocess.Popen[bytes]] = []
    try:
        dns_log = workdir / "challtestsrv.log"
        with dns_log.open("wb") as out:
            dns = subprocess.Popen(
                [
                    CHALLTESTSRV,
                    "-dns01", f"127.0.0.1:{dns_port}",
                    "-management", f"127.0.0.1:{dns_mgmt_port}",
                    "-http01", "", "-https01", "", "-tlsalpn01", "",
                    "-defaultIPv4", "127.0.0.1",
                    "-defaultIPv6", "",
                ],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        procs.append(dns)
        pebble_log = workdir / "pebble.log"
        with pebble_log.open("wb") as out:
            pebble = subprocess.Popen(
                [
                    PEBBLE,
                    "-config", str(workdir / "pebble.json"),
                    "-dnsserver", f"127.0.0.1:{dns_port}",
                ],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, cwd=workdir,
            )  # fmt: skip
        procs.append(pebble)
        deadline = time.monotonic() + 15
        _wait_listening(dns_mgmt_port, dns, dns_log, deadline)
        _wait_listening(acme_port, pebble, pebble_log, deadline)
        _wait_listening(mgmt_port, pebble, pebble_log, deadline)
        yield PebbleServer(
            workdir=workdir,
            directory_url=f"https://127.0.0.1:{acme_port}/dir",
            ca_file=workdir / "ca.pem",
            management_url=f"https://127.0.0.1:{mgmt_port}",
            http_port=http_port,
            tls_port=tls_port,
            pebble=pebble,
            procs=procs,
        )
    finally:
        for proc in reversed(procs):
            _stop(proc)
