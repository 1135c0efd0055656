"""Pebble that resolves through a real authoritative server (BIND) for dns-01.

How this works: the other Pebble recipes in the tests (``acme_client/conftest.py``,
``peers/acme_pebble.py``) pair Pebble with ``pebble-challtestsrv``, a fake DNS
server whose TXT records the tests set directly. Here Pebble's ``-dnsserver`` is
the ``named`` of ``integration/bindserver.py`` instead, so a dns-01 validation
succeeds only if tlsgate really wrote the TXT record into the zone through a
signed RFC 2136 update. Only dns-01 is used, so Pebble's ``httpPort`` and
``tlsPort`` point at free ports nobody listens on. Same environment as the
others: ``PEBBLE_VA_NOSLEEP=1`` (validate at once), ``PEBBLE_WFE_NONCEREJECT=0``
(no random badNonce), ``PEBBLE_AUTHZREUSE=0`` (fresh authorizations per order).
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from harness import free_port

from acme_client.conftest import PEBBLE, _stop, _wait_listening
from tlsgate.ca.local import LocalCA


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
    if not os.access(PEBBLE, os.X_OK):
        pytest.fail(f"{PEBBLE} is missing: run scripts/install-system-deps.sh (Debian 'pebble')")
    workdir.mkdir(parents=True, exist_ok=True)
    ca = LocalCA.create("tlsgate dns-01 tests: Pebble listener CA")
    leaf = ca.issue(["localhost", "127.0.0.1"])
    (workdir / "ca.pem").write_bytes(ca.cert_pem)
    (workdir / "cert.pem").write_bytes(leaf.chain_pem)
    (workdir / "key.pem").write_bytes(leaf.key_pem)
    acme_port, mgmt_port, unused_http, unused_tls = (free_port() for _ in range(4))
    config = {
        "pebble": {
            "listenAddress": f"127.0.0.1:{acme_port}",
            "managementListenAddress": f"127.0.0.1:{mgmt_port}",
            "certificate": str(workdir / "cert.pem"),
            "privateKey": str(workdir / "key.pem"),
            "httpPort": unused_http,
            "tlsPort": unused_tls,
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
    log = workdir / "pebble.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                PEBBLE,
                "-config", str(workdir / "pebble.json"),
                "-dnsserver", f"127.0.0.1:{dns_port}",
            ],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=workdir,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        _wait_listening(acme_port, proc, log, deadline)
        _wait_listening(mgmt_port, proc, log, deadline)
        yield DnsPebble(
            workdir=workdir,
            directory_url=f"https://127.0.0.1:{acme_port}/dir",
            ca_file=workdir / "ca.pem",
            management_url=f"https://127.0.0.1:{mgmt_port}",
            proc=proc,
        )
    finally:
        _stop(proc)
