"""Starting Debian's Pebble for tests: the one recipe every ACME test builds on.

How this works: Pebble ships no listener certificate, so one is made with the
project's LocalCA (``ca.pem`` is the trust anchor for Pebble's own HTTPS). Pebble
validates HTTP-01 on ``http_port`` and TLS-ALPN-01 on ``tls_port`` of 127.0.0.1
and resolves names through ``dns_server``; without one, ``pebble-challtestsrv``
(shipped in the same package) is started as a DNS server that answers A
127.0.0.1 for every name and serves TXT records set through its management API.
The environment is the same everywhere: ``PEBBLE_VA_NOSLEEP=1`` (validate at
once), ``PEBBLE_WFE_NONCEREJECT=0`` (no random badNonce), ``PEBBLE_AUTHZREUSE=0``
(fresh authorizations per order).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tlsgate.ca.local import LocalCA
from tlsgate.net.ports import free_port

PEBBLE = "/usr/bin/pebble"
CHALLTESTSRV = "/usr/bin/pebble-challtestsrv"


def wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path, deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited early:\n{log.read_text(errors='replace')}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(
        f"{proc.args!r} not listening after start:\n{log.read_text(errors='replace')}"
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class PebbleProcess:
    """A running Pebble (and its challtestsrv, when it has one)."""

    workdir: Path
    acme_port: int
    mgmt_port: int
    dns_mgmt_port: int | None  # challtestsrv's management API, when it runs
    pebble: subprocess.Popen[bytes]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.acme_port}/dir"

    @property
    def management_url(self) -> str:
        return f"https://127.0.0.1:{self.mgmt_port}"

    @property
    def dns_management_url(self) -> str:
        return f"http://127.0.0.1:{self.dns_mgmt_port}"

    @property
    def ca_file(self) -> Path:
        return self.workdir / "ca.pem"


@contextlib.contextmanager
def pebble_process(
    workdir: Path,
    *,
    http_port: int,
    tls_port: int,
    dns_server: str | None = None,
    eab_keys: dict[str, str] | None = None,
) -> Iterator[PebbleProcess]:
    """Start Pebble (plus challtestsrv unless ``dns_server`` is given); stop all on exit."""
    needed = (PEBBLE,) if dns_server else (PEBBLE, CHALLTESTSRV)
    for binary in needed:
        if not os.access(binary, os.X_OK):
            pytest.fail(
                f"{binary} is missing: run scripts/install-system-deps.sh (Debian 'pebble')"
            )
    workdir.mkdir(parents=True, exist_ok=True)
    ca = LocalCA.create("tlsgate tests: Pebble listener CA")
    leaf = ca.issue(["localhost", "127.0.0.1"])
    (workdir / "ca.pem").write_bytes(ca.cert_pem)
    (workdir / "cert.pem").write_bytes(leaf.chain_pem)
    (workdir / "key.pem").write_bytes(leaf.key_pem)
    acme_port, mgmt_port = free_port(), free_port()
    config = {
        "pebble": {
            "listenAddress": f"127.0.0.1:{acme_port}",
            "managementListenAddress": f"127.0.0.1:{mgmt_port}",
            "certificate": str(workdir / "cert.pem"),
            "privateKey": str(workdir / "key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": eab_keys is not None,
            "externalAccountMACKeys": eab_keys or {},
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
    deadline = time.monotonic() + 15
    dns_mgmt_port: int | None = None
    try:
        if dns_server is None:
            dns_port, dns_mgmt_port = free_port(), free_port()
            dns_server = f"127.0.0.1:{dns_port}"
            dns_log = workdir / "challtestsrv.log"
            with dns_log.open("wb") as out:
                dns = subprocess.Popen(
                    [
                        CHALLTESTSRV,
                        "-dns01", dns_server,
                        "-management", f"127.0.0.1:{dns_mgmt_port}",
                        "-http01", "", "-https01", "", "-tlsalpn01", "",
                        "-defaultIPv4", "127.0.0.1",
                        "-defaultIPv6", "",
                    ],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                )  # fmt: skip
            procs.append(dns)
            wait_listening(dns_mgmt_port, dns, dns_log, deadline)
        pebble_log = workdir / "pebble.log"
        with pebble_log.open("wb") as out:
            pebble = subprocess.Popen(
                [PEBBLE, "-config", str(workdir / "pebble.json"), "-dnsserver", dns_server],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, cwd=workdir,
            )  # fmt: skip
        procs.append(pebble)
        wait_listening(acme_port, pebble, pebble_log, deadline)
        wait_listening(mgmt_port, pebble, pebble_log, deadline)
        yield PebbleProcess(workdir, acme_port, mgmt_port, dns_mgmt_port, pebble, procs)
    finally:
        for proc in reversed(procs):
            stop(proc)
