"""A real authoritative DNS server for dns-01 tests: BIND 9 (Debian ``bind9``).

How this works: :func:`run_named` writes a ``named.conf`` and one primary zone
into a work directory, and starts ``named -g`` (foreground, log to stderr, which
goes to ``named.log`` there) listening on 127.0.0.1 at a port free for both UDP
and TCP. Everything BIND would take from its compiled-in defaults (pid file,
lock file, session key, managed-keys directory) points into the work directory,
and the control channel (rndc, port 953) is off, so several can run side by side
and nothing touches ``/etc/bind`` or ``/run/named``. The zone takes RFC 2136
updates signed with any of the TSIG keys in :data:`TSIG_ALGORITHMS` (one key per
algorithm, named ``tlsgate-<algorithm>``; ``tlsgate`` is the hmac-sha256 one)
and holds ``A 127.0.0.1`` for its apex and, through a wildcard, for every name
in it. A second zone, :data:`POLICY_ZONE`, lets only ``tlsgate`` change only
``_acme-challenge.<POLICY_ZONE> TXT`` (an ``update-policy``, as the docs
recommend). Journals are written next to the zone files. ``run_named`` waits until
the server answers the zone's SOA and stops it at exit.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import pytest

NAMED = shutil.which("named", path="/usr/sbin:/usr/bin:" + os.environ.get("PATH", ""))
TSIG_ALGORITHMS = (
    "hmac-sha256",
    "hmac-sha512",
    "hmac-sha384",
    "hmac-sha224",
    "hmac-sha1",
    "hmac-md5",
)
MAIN_KEY = "tlsgate"  # the hmac-sha256 key
# A second zone whose update-policy lets MAIN_KEY change one TXT record only, as
# docs/configuration.md recommends.
POLICY_ZONE = "policy.test"


def free_udp_tcp_port() -> int:
    """A port free on 127.0.0.1 for TCP and for UDP a moment ago (DNS takes both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free for both TCP and UDP on 127.0.0.1")


@dataclass
class NamedServer:
    """A running ``named`` serving one zone on ``127.0.0.1:port``."""

    workdir: Path
    port: int
    zone: str
    secrets: dict[str, tuple[str, str]]  # key name -> (algorithm, base64 secret)
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def server(self) -> str:
        """The ``[acme.dns] server`` value for this server."""
        return f"127.0.0.1:{self.port}"

    @property
    def secret(self) -> str:
        """The secret of the hmac-sha256 key :data:`MAIN_KEY`."""
        return self.secrets[MAIN_KEY][1]

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def query(self, name: str, rdtype: str) -> dns.message.Message:
        """Ask the server directly (UDP, no recursion), as a validator would."""
        request = dns.message.make_query(name, rdtype)
        request.flags &= ~dns.flags.RD
        return dns.query.udp(request, "127.0.0.1", port=self.port, timeout=2)

    def txt(self, name: str) -> set[str]:
        """The TXT values at ``name`` (each record's strings joined), as the server has them."""
        response = self.query(name, "TXT")
        values: set[str] = set()
        for rrset in response.answer:
            if rrset.rdtype != dns.rdatatype.TXT:
                continue
            for rdata in rrset:
                assert isinstance(rdata, dns.rdtypes.ANY.TXT.TXT)
                values.add(b"".join(rdata.strings).decode())
        return values

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s; never raises."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def _conf(workdir: Path, port: int, zone: str, keys: dict[str, tuple[str, str]]) -> str:
    key_blocks = "".join(
        f'key "{name}" {{ algorithm {alg}; secret "{secret}"; }};\n'
        for name, (alg, secret) in keys.items()
    )
    allowed = " ".join(f'key "{name}";' for name in keys)
    d = str(workdir)
    return f"""
options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    lock-file "{d}/named.lock";
    session-keyfile "{d}/session.key";
    managed-keys-directory "{d}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    notify no;
}};
controls {{ }};
{key_blocks}
zone "{zone}" {{
    type primary;
    file "{d}/{zone}.zone";
    allow-update {{ {allowed} }};
}};
zone "{POLICY_ZONE}" {{
    type primary;
    file "{d}/{POLICY_ZONE}.zone";
    update-policy {{ grant {MAIN_KEY} name _acme-challenge.{POLICY_ZONE}. TXT; }};
}};
"""


def _zone_file(zone: str) -> str:
    return f"""$TTL 60
@   IN SOA ns.{zone}. hostmaster.{zone}. 1 3600 600 86400 60
@   IN NS  ns.{zone}.
ns  IN A   127.0.0.1
@   IN A   127.0.0.1
*   IN A   127.0.0.1
"""


@contextlib.contextmanager
def run_named(workdir: Path, zone: str = "acme.test") -> Iterator[NamedServer]:
    """Start ``named`` for ``zone`` in ``workdir``; stop it on exit.

    Raises:
        pytest.fail: ``named`` is not installed.
        RuntimeError: it exited or did not answer within 15 s (its log attached).
    """
    if NAMED is None:
        pytest.fail("named is missing: run scripts/install-system-deps.sh (Debian 'bind9')")
    workdir.mkdir(parents=True, exist_ok=True)
    keys = {
        (MAIN_KEY if alg == "hmac-sha256" else f"tlsgate-{alg}"): (
            alg,
            base64.b64encode(secrets.token_bytes(32)).decode(),
        )
        for alg in TSIG_ALGORITHMS
    }
    port = free_udp_tcp_port()
    conf = workdir / "named.conf"
    conf.write_text(_conf(workdir, port, zone, keys))
    (workdir / f"{zone}.zone").write_text(_zone_file(zone))
    (workdir / f"{POLICY_ZONE}.zone").write_text(_zone_file(POLICY_ZONE))
    log = workdir / "named.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            # -g: foreground, all logging to stderr; -n 1: one worker thread is plenty.
            [NAMED, "-g", "-n", "1", "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = NamedServer(workdir, port, zone, keys, proc, log)
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"named exited at start:\n{server.log_text()[-4000:]}")
            with contextlib.suppress(dns.exception.DNSException, OSError):
                if server.query(zone, "SOA").rcode() == dns.rcode.NOERROR:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"named did not answer in 15s:\n{server.log_text()[-4000:]}")
            time.sleep(0.05)
        yield server
    finally:
        server.stop()
