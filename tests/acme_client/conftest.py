"""Fixtures for the ACME client tests: a real Pebble and real challenge responders.

How this works: one Pebble per session (Debian's ``pebble`` 2.4), started with
a listener certificate from ``tlsgate.ca.local.LocalCA`` (Debian ships none)
and a JSON config in a temporary directory. Pebble resolves every name through
``pebble-challtestsrv`` (shipped in the same package) acting as a DNS server
that answers ``A 127.0.0.1`` for any name and serves the TXT records dns-01
tests set through its management API -- so names like ``a.acme.test`` work
without touching the system resolver. Pebble's ``httpPort`` and ``tlsPort``
point at two responders running in threads here:

- :class:`Http01Responder` serves ``path -> body`` pairs a test registers;
- :class:`TlsAlpnResponder` serves, per SNI name, the certificate a test
  registers, and only to clients that offer ALPN ``acme-tls/1``.

Pebble runs with ``PEBBLE_VA_NOSLEEP=1`` (validate at once),
``PEBBLE_WFE_NONCEREJECT=0`` (no random badNonce) and ``PEBBLE_AUTHZREUSE=0``
(every order gets fresh authorizations). Its root (new each start) is fetched
from the management port to verify what it issues. Everything started here is
stopped at the end of the session.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tlsgate.acme import ACME_TLS_ALPN_PROTOCOL
from tlsgate.net.ports import free_port

from .pebble import pebble_process

__all__ = ["free_port"]

# Pebble's example EAB key (from the Debian package's example config).
EAB_KID = "kid-1"
EAB_HMAC_B64 = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"


# --------------------------------------------------------------------------- responders


class Http01Responder:
    """A threaded HTTP server answering registered paths (anything else: 404)."""

    def __init__(self) -> None:
        self.responses: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []  # (Host header, path)
        responder = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                responder.requests.append((self.headers.get("Host", ""), self.path))
                body = responder.responses.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class AlpnHandshake:
    server_name: str | None
    alpn: str | None


class TlsAlpnResponder:
    """A TLS server that presents, per SNI name, a registered tls-alpn-01 certificate.

    Only ``acme-tls/1`` is offered (RFC 8737 §3: the validator "MUST offer the
    "acme-tls/1" protocol"), so a client without it fails the handshake.
    """

    def __init__(self, workdir: Path) -> None:
        self._dir = workdir
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._sni: dict[int, str | None] = {}  # id(SSLSocket) -> the SNI it sent
        self.handshakes: list[AlpnHandshake] = []
        self._base = self._context()
        self._base.sni_callback = self._on_sni
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = int(self._sock.getsockname()[1])
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    @staticmethod
    def _context() -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.set_alpn_protocols([ACME_TLS_ALPN_PROTOCOL])
        return ctx

    def serve(self, server_name: str, cert_pem: bytes, key_pem: bytes) -> None:
        """Present ``cert_pem`` to handshakes whose SNI is ``server_name``."""
        path = self._dir / f"alpn-{len(self._contexts)}.pem"
        path.write_bytes(key_pem + cert_pem)
        ctx = self._context()
        ctx.load_cert_chain(path)
        self._contexts[server_name] = ctx

    def _on_sni(
        self, sock: ssl.SSLObject | ssl.SSLSocket, name: str | None, _: object
    ) -> int | None:
        self._sni[id(sock)] = name
        ctx = self._contexts.get(name or "")
        if ctx is None:
            return int(ssl.AlertDescription.ALERT_DESCRIPTION_UNRECOGNIZED_NAME)
        sock.context = ctx
        return None

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handshake, args=(conn,), daemon=True).start()

    def _handshake(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            with self._base.wrap_socket(conn, server_side=True) as tls:
                name = self._sni.pop(id(tls), None)
                self.handshakes.append(AlpnHandshake(name, tls.selected_alpn_protocol()))
        except (OSError, ssl.SSLError):
            conn.close()

    def close(self) -> None:
        self._closed.set()
        self._sock.close()


# --------------------------------------------------------------------------- pebble


@dataclass
class Pebble:
    """A running Pebble and what tests need to talk to it."""

    directory_url: str
    ca_file: str  # trust anchor for Pebble's own HTTPS listener
    management_url: str
    dns_management_url: str
    http01: Http01Responder
    tls_alpn: TlsAlpnResponder
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _root_pem: bytes | None = None

    def root_pem(self) -> bytes:
        """Pebble's issuing root (regenerated at every start)."""
        if self._root_pem is None:
            self._root_pem = self.get(f"{self.management_url}/roots/0").content
        return self._root_pem

    def get(self, url: str) -> httpx.Response:
        with httpx.Client(verify=ssl.create_default_context(cafile=self.ca_file)) as c:
            resp = c.get(url)
        resp.raise_for_status()
        return resp

    def set_txt(self, host: str, value: str) -> None:
        """Publish a TXT record in the DNS server Pebble resolves with."""
        httpx.post(
            f"{self.dns_management_url}/set-txt",
            json={"host": host.rstrip(".") + ".", "value": value},
        ).raise_for_status()

    def clear_txt(self, host: str) -> None:
        httpx.post(
            f"{self.dns_management_url}/clear-txt", json={"host": host.rstrip(".") + "."}
        ).raise_for_status()


@contextlib.contextmanager
def run_pebble(workdir: Path, *, eab_keys: dict[str, str] | None = None) -> Iterator[Pebble]:
    """Start challtestsrv + Pebble (+ both responders) and stop them on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    http01 = Http01Responder()
    tls_alpn = TlsAlpnResponder(workdir)
    try:
        with pebble_process(
            workdir, http_port=http01.port, tls_port=tls_alpn.port, eab_keys=eab_keys
        ) as proc:
            yield Pebble(
                directory_url=proc.directory_url,
                ca_file=str(proc.ca_file),
                management_url=proc.management_url,
                dns_management_url=proc.dns_management_url,
                http01=http01,
                tls_alpn=tls_alpn,
                procs=proc.procs,
            )
    finally:
        http01.close()
        tls_alpn.close()


@pytest.fixture(scope="session")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    """The session's Pebble (no external account binding)."""
    with run_pebble(tmp_path_factory.mktemp("pebble")) as server:
        yield server


@pytest.fixture(scope="session")
def pebble_eab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    """A second Pebble that requires external account binding (key :data:`EAB_KID`)."""
    with run_pebble(
        tmp_path_factory.mktemp("pebble-eab"), eab_keys={EAB_KID: EAB_HMAC_B64}
    ) as server:
        yield server


@pytest.fixture
def account_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """``unique_name("a")`` -> ``a-<n>.acme.test``: fresh names per test."""
    counter = iter(range(1_000_000))
    stamp = f"{os.getpid()}{time.monotonic_ns() % 1_000_000}"

    def make(label: str) -> str:
        return f"{label}-{stamp}-{next(counter)}.acme.test"

    return make
