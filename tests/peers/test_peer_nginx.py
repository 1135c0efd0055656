"""nginx as the app server behind tlsgate (topology T2: TLS ends on the app servers).

Two nginx processes, each holding its own certificate from the session CA
(``a.test`` and ``b.test``), listen with ``ssl proxy_protocol`` and log
``$proxy_protocol_addr``. tlsgate routes by SNI on a tls-passthrough listener and
sends each a PROXY header (v1 or v2). curl, bound to 127.0.0.2 or 127.0.0.3 and
verifying with the CA, is the client. Also: tlsgate's TLS health checks with a
PROXY v2 LOCAL header against nginx, and nginx as a plain HTTP backend that reads
the PROXY header an https listener sends.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness import (
    CertFiles,
    GateFactory,
    Pki,
    Tlsgate,
    curl,
    dns_names,
    free_port,
    issue_files,
    s_client,
    table,
    wait_until,
)

from peers.conftest import NginxFactory
from peers.peers import Peer, log_lines, nginx_app_server, wait_log_lines
from tlsgate.ca.local import LocalCA

pytestmark = [pytest.mark.peers, pytest.mark.integration, pytest.mark.timeout(90)]

CLIENTS = ("127.0.0.2", "127.0.0.3")


@dataclass
class Nginx:
    name: str
    port: int
    peer: Peer
    access_log: Path
    cert: CertFiles

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def certs(ca: LocalCA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, CertFiles]:
    d = tmp_path_factory.mktemp("nginx-certs")
    return {
        "a": issue_files(ca, d, "a", ("a.test",), "ecdsa-p256"),
        "b": issue_files(ca, d, "b", ("b.test",), "rsa-2048"),
    }


def start_tls_nginx(
    make_nginx: NginxFactory, tmp_path: Path, name: str, cert: CertFiles, *, proxy: bool = True
) -> Nginx:
    port = free_port()
    log = tmp_path / f"{name}-access.log"
    http = nginx_app_server(
        name, port, log, cert_file=cert.cert_file, key_file=cert.key_file, proxy_protocol=proxy
    )
    return Nginx(name, port, make_nginx(name, [port], http=http), log, cert)


def passthrough_gate(
    make_gate: GateFactory, servers: dict[str, Nginx], version: str, **backend: object
) -> tuple[Tlsgate, int]:
    port = free_port()
    config = table("listeners", name="pt", bind=[f"127.0.0.1:{port}"], protocol="tls-passthrough")
    for host, server in servers.items():
        config += table("routes", listener="pt", hosts=[host], backend=server.name)
        config += table(
            "backends",
            name=server.name,
            servers=[server.address],
            send_proxy_protocol=version,
            **backend,
        )
    return make_gate(config), port


def curl_https(name: str, port: int, ca_file: Path, source: str) -> bytes:
    res = curl(
        "--cacert",
        str(ca_file),
        "--resolve",
        f"{name}:{port}:127.0.0.1",
        "--interface",
        source,
        f"https://{name}:{port}/",
    )
    assert res.returncode == 0, res.stderr
    assert res.status == 200
    return res.body


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_nginx_terminating_tls_logs_each_real_client(
    make_gate: GateFactory,
    make_nginx: NginxFactory,
    certs: dict[str, CertFiles],
    pki: Pki,
    tmp_path: Path,
    version: str,
) -> None:
    nginx = start_tls_nginx(make_nginx, tmp_path, "nginx-a", certs["a"])
    gate, port = passthrough_gate(make_gate, {"a.test": nginx}, version)
    for source in CLIENTS:
        body = curl_https("a.test", port, pki.ca_file, source)
        assert body == f"nginx-a {source} \n".encode()
    lines = wait_log_lines(nginx.access_log, 2)
    logged = [line.split() for line in lines]
    # $proxy_protocol_addr is each client; $remote_addr is tlsgate; the SNI went through
    assert [(f[0], f[2], f[3]) for f in logged] == [
        ("127.0.0.2", "127.0.0.1", "a.test"),
        ("127.0.0.3", "127.0.0.1", "a.test"),
    ]
    # a passthrough session is logged when both sides have closed, which can be just
    # after curl has its answer: wait for one line per client
    for source in CLIENTS:

        def logged_for(e: dict[str, Any], source: str = source) -> bool:
            return bool(e.get("listener") == "pt" and e["client_ip"] == source)

        gate.wait_access_log(logged_for)
    entries = [e for e in gate.access_log_lines() if e.get("listener") == "pt"]
    # each client port nginx saw is the one tlsgate logged for that client
    assert sorted((e["client_ip"], str(e["client_port"])) for e in entries) == sorted(
        (f[0], f[1]) for f in logged
    )


def test_two_names_route_to_two_nginx_each_with_its_own_certificate(
    make_gate: GateFactory,
    make_nginx: NginxFactory,
    certs: dict[str, CertFiles],
    pki: Pki,
    tmp_path: Path,
) -> None:
    a = start_tls_nginx(make_nginx, tmp_path, "nginx-a", certs["a"])
    b = start_tls_nginx(make_nginx, tmp_path, "nginx-b", certs["b"])
    gate, port = passthrough_gate(make_gate, {"a.test": a, "b.test": b}, "v2")
    assert curl_https("a.test", port, pki.ca_file, "127.0.0.2") == b"nginx-a 127.0.0.2 \n"
    assert curl_https("b.test", port, pki.ca_file, "127.0.0.3") == b"nginx-b 127.0.0.3 \n"
    for name, expected in (("a.test", ["a.test"]), ("b.test", ["b.test"])):
        probe = s_client(port, servername=name, ca_file=pki.ca_file)
        assert probe.handshake_ok, probe.output
        assert probe.cert is not None
        assert dns_names(probe.cert) == expected
    assert s_client(port, servername="b.test").key_kind == "rsa"
    assert s_client(port, servername="a.test").key_kind == "ecdsa"
    # the verification is real: another CA's clients refuse these certificates
    other_ca, _ = LocalCA.create("unrelated").write(tmp_path / "other-ca")
    res = curl(
        "--cacert",
        str(other_ca),
        "--resolve",
        f"a.test:{port}:127.0.0.1",
        f"https://a.test:{port}/",
    )
    assert res.returncode == 60, res.stderr  # CURLE_PEER_FAILED_VERIFICATION
    # an SNI with no route and no default backend: closed, nothing reaches nginx
    res = curl("-k", "--resolve", f"c.test:{port}:127.0.0.1", f"https://c.test:{port}/")
    assert res.returncode != 0
    entry = gate.wait_access_log(lambda e: e.get("sni") == "c.test")
    assert "no route for SNI 'c.test'" in entry["close_reason"], entry


def test_tls_health_checks_send_proxy_v2_local_and_keep_nginx_up(
    make_gate: GateFactory,
    make_nginx: NginxFactory,
    certs: dict[str, CertFiles],
    pki: Pki,
    tmp_path: Path,
) -> None:
    """Verified TLS handshake checks, each after a PROXY v2 LOCAL header: nginx (which
    requires the header) passes them; the same checks against an nginx that does not
    expect a header fail, which shows the checks run and the header matters."""
    good = start_tls_nginx(make_nginx, tmp_path, "nginx-a", certs["a"])
    plain = start_tls_nginx(make_nginx, tmp_path, "nginx-plain", certs["b"], proxy=False)
    health = {
        "type": "tls",
        "host": "a.test",
        "tls_verify": True,
        "ca_file": str(pki.ca_file),
        "interval": "300ms",
        "timeout": "250ms",
        "rise": 1,
        "fall": 1,
    }
    gate, port = passthrough_gate(make_gate, {"a.test": good, "b.test": plain}, "v2", health=health)
    wait_until(
        lambda: f"server {plain.address} is DOWN" in gate.error_log_text(),
        10,
        what="the header-less nginx to be marked down",
    )
    assert f"server {good.address} is DOWN" not in gate.error_log_text()
    # nginx took each check's LOCAL header, then finished the TLS handshake: the
    # checker hung up while nginx waited for a request (connection *1 is the
    # readiness probe of the test harness, which connects and says nothing)
    error_log = good.peer.workdir / "error.log"
    wait_until(
        lambda: (
            sum(
                "closed connection while waiting for request" in line
                for line in log_lines(error_log)
            )
            >= 2
        ),
        10,
        what="nginx to log completed health checks",
    )
    complaints = [
        line
        for line in log_lines(error_log)
        if ("broken header" in line or "SSL" in line) and "*1 " not in line
    ]
    assert not complaints, complaints
    assert curl_https("a.test", port, pki.ca_file, "127.0.0.2") == b"nginx-a 127.0.0.2 \n"


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_nginx_http_backend_reads_the_header_an_https_listener_sends(
    make_gate: GateFactory, make_nginx: NginxFactory, pki: Pki, tmp_path: Path, version: str
) -> None:
    port = free_port()
    log = tmp_path / "web-access.log"
    make_nginx("web", [port], http=nginx_app_server("web", port, log))
    gate_port = free_port()
    make_gate(
        pki.toml()
        + table(
            "listeners",
            name="https",
            bind=[f"127.0.0.1:{gate_port}"],
            protocol="https",
            backend="web",
        )
        + table(
            "backends",
            name="web",
            servers=[f"127.0.0.1:{port}"],
            send_proxy_protocol=version,
        )
    )
    for source in CLIENTS:
        res = curl(
            "--cacert",
            str(pki.ca_file),
            "--interface",
            source,
            f"https://localhost:{gate_port}/",
        )
        assert res.returncode == 0, res.stderr
        # nginx's $proxy_protocol_addr and the X-Forwarded-For tlsgate added agree
        assert res.body == f"web {source} {source}\n".encode()
    lines = wait_log_lines(log, 2)
    assert [line.split()[0] for line in lines] == list(CLIENTS)


def test_an_http10_request_without_host_reaches_nginx_with_the_reconstructed_authority(
    make_gate: GateFactory, make_nginx: NginxFactory, pki: Pki, tmp_path: Path
) -> None:
    """An HTTP/1.0 client that sends no Host (``openssl s_time -www``, monitoring
    probes) is forwarded as HTTP/1.1, which must carry a Host. An empty one, RFC 9112
    §3.2's letter, gets a 400 from nginx; RFC 9112 §3.3's authority does not: the SNI
    name, else tlsgate's own address."""
    port = free_port()
    make_nginx(
        "hostless",
        [port],
        http=f"""
    server {{
        listen 127.0.0.1:{port};
        access_log off;
        location / {{
            return 200 "host=$http_host\\n";
        }}
    }}
""",
    )
    gate_port = free_port()
    make_gate(
        pki.toml()
        + table(
            "listeners",
            name="https",
            bind=[f"127.0.0.1:{gate_port}"],
            protocol="https",
            backend="web",
        )
        + table("backends", name="web", servers=[f"127.0.0.1:{port}"])
    )

    def get(server_name: str | None) -> bytes:
        context = ssl.create_default_context(cafile=str(pki.ca_file))
        context.check_hostname = False
        with (
            socket.create_connection(("127.0.0.1", gate_port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=server_name) as tls,
        ):
            tls.sendall(b"GET / HTTP/1.0\r\n\r\n")
            response = b""
            while chunk := tls.recv(65536):
                response += chunk
        return response

    with_sni = get("localhost")
    assert with_sni.startswith(b"HTTP/1.1 200 "), with_sni[:200]
    assert with_sni.endswith(b"\r\n\r\nhost=localhost\n")
    without_sni = get(None)
    assert without_sni.startswith(b"HTTP/1.1 200 "), without_sni[:200]
    assert without_sni.endswith(f"\r\n\r\nhost=127.0.0.1:{gate_port}\n".encode())
