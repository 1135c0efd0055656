"""HAProxy and tlsgate around each other, with the PROXY protocol between them.

* HAProxy in front of tlsgate (``mode tcp``, ``send-proxy-v2`` or ``send-proxy``):
  tlsgate's https listener takes the client address from HAProxy's header (the
  app server's X-Forwarded-For and tlsgate's access log show the real client), and
  so does its tls-passthrough listener (the nginx behind it, which reads
  tlsgate's own PROXY header, shows the real client). HAProxy's health checks of
  tlsgate (a TLS handshake after a PROXY header) keep the server UP.
* tlsgate in front of HAProxy (``bind ... accept-proxy``, ``mode http``): HAProxy
  answers every request with what it believes the client is (``%[src]``), and the
  authority TLV it read (``%[fc_pp_authority]``).

Clients are curl processes bound to 127.0.0.2 / 127.0.0.3.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from appserver import AppServer
from harness import CertFiles, GateFactory, Pki, curl, free_port, issue_files, table, wait_until

from peers.conftest import HaproxyFactory, NginxFactory
from peers.peers import nginx_app_server, server_row, wait_log_lines
from tlsgate.ca.local import LocalCA

pytestmark = [pytest.mark.peers, pytest.mark.integration, pytest.mark.timeout(90)]

CLIENTS = ("127.0.0.2", "127.0.0.3")
SEND = {"v2": "send-proxy-v2", "v1": "send-proxy"}


def haproxy_tcp_front(
    port: int, target: int, send: str, stats_sock: Path, *, check: str = "check"
) -> str:
    """HAProxy ``mode tcp`` on ``port`` forwarding to tlsgate on ``target``."""
    return f"""
global
    maxconn 512
    stats socket {stats_sock} mode 600 level admin

defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend front
    bind 127.0.0.1:{port}
    default_backend gate

backend gate
    server tlsgate 127.0.0.1:{target} {send} {check} inter 200ms fall 1 rise 1
"""


def assert_checks_pass(stats: Path, expected: str) -> None:
    """HAProxy's last check of tlsgate ended in ``expected`` and the server is UP."""
    wait_until(
        lambda: server_row(stats, "gate", "tlsgate")["check_status"],
        10,
        what="HAProxy's first health check of tlsgate",
    )
    row = server_row(stats, "gate", "tlsgate")
    assert (row["status"], row["check_status"]) == ("UP", expected), row
    assert row["chkfail"] == "0", row


def curl_json(url: str, *args: str) -> dict[str, object]:
    res = curl(*args, url)
    assert res.returncode == 0, res.stderr
    assert res.status == 200, res.body
    data: dict[str, object] = json.loads(res.body)
    return data


def xff(echo: dict[str, object]) -> str | None:
    headers = echo["headers"]
    assert isinstance(headers, list)
    values = [v for k, v in headers if k.lower() == "x-forwarded-for"]
    return ", ".join(values) if values else None


# ----------------------------------------------------------- HAProxy -> tlsgate


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_haproxy_in_front_of_an_https_listener(
    make_gate: GateFactory,
    make_haproxy: HaproxyFactory,
    make_app: Callable[[str], AppServer],
    pki: Pki,
    tmp_path: Path,
    version: str,
) -> None:
    app = make_app("app")
    gate_port, front = free_port(), free_port()
    gate = make_gate(
        pki.toml()
        + table(
            "listeners",
            name="https",
            bind=[f"127.0.0.1:{gate_port}"],
            protocol="https",
            backend="app",
            accept_proxy_protocol=True,
            trusted_proxies=["127.0.0.1/32"],
        )
        + table("backends", name="app", servers=[app.address])
    )
    stats = tmp_path / "haproxy.sock"
    # the checks: a TLS handshake with tlsgate after HAProxy's PROXY header
    # (v2: the LOCAL command), verified against the test CA
    check = f"check check-ssl check-sni localhost verify required ca-file {pki.ca_file}"
    make_haproxy(
        "haproxy", haproxy_tcp_front(front, gate_port, SEND[version], stats, check=check), [front]
    )
    for source in CLIENTS:
        echo = curl_json(
            f"https://localhost:{front}/echo",
            "--cacert",
            str(pki.ca_file),
            "--interface",
            source,
        )
        assert xff(echo) == source
    wait_until(lambda: len(gate.access_log_lines()) == 2, 10, what="two access log lines")
    assert [(e["client_ip"], e["peer_ip"]) for e in gate.access_log_lines()] == [
        (source, "127.0.0.1") for source in CLIENTS
    ]
    # HAProxy's own checks (a v2 LOCAL header or a v1 line, then a verified TLS
    # handshake) pass through tlsgate's PROXY handling: L6OK, the server is UP
    assert_checks_pass(stats, "L6OK")


@pytest.fixture(scope="module")
def a_cert(ca: LocalCA, tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return issue_files(ca, tmp_path_factory.mktemp("a-cert"), "a", ("a.test",), "ecdsa-p256")


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_haproxy_in_front_of_a_passthrough_listener(
    make_gate: GateFactory,
    make_haproxy: HaproxyFactory,
    make_nginx: NginxFactory,
    pki: Pki,
    a_cert: CertFiles,
    tmp_path: Path,
    version: str,
) -> None:
    """client -> HAProxy (PROXY) -> tlsgate passthrough (PROXY v2) -> nginx (TLS)."""
    nginx_port, gate_port, front = free_port(), free_port(), free_port()
    nginx_log = tmp_path / "nginx-access.log"
    make_nginx(
        "nginx",
        [nginx_port],
        http=nginx_app_server(
            "nginx", nginx_port, nginx_log, cert_file=a_cert.cert_file, key_file=a_cert.key_file
        ),
    )
    gate = make_gate(
        table(
            "listeners",
            name="pt",
            bind=[f"127.0.0.1:{gate_port}"],
            protocol="tls-passthrough",
            backend="nginx",
            accept_proxy_protocol=True,
            trusted_proxies=["127.0.0.1/32"],
        )
        + table(
            "backends",
            name="nginx",
            servers=[f"127.0.0.1:{nginx_port}"],
            send_proxy_protocol="v2",
        )
    )
    stats = tmp_path / "haproxy.sock"
    check = "check"  # a plain connect check: tlsgate must not log it as an error
    make_haproxy(
        "haproxy", haproxy_tcp_front(front, gate_port, SEND[version], stats, check=check), [front]
    )
    for source in CLIENTS:
        res = curl(
            "--cacert",
            str(pki.ca_file),
            "--resolve",
            f"a.test:{front}:127.0.0.1",
            "--interface",
            source,
            f"https://a.test:{front}/",
        )
        assert res.returncode == 0, res.stderr
        assert res.body == f"nginx {source} \n".encode()
    lines = wait_log_lines(nginx_log, 2)
    assert [line.split()[0] for line in lines] == list(CLIENTS)

    def entries() -> list[dict[str, object]]:
        return [e for e in gate.access_log_lines() if e.get("sni") == "a.test"]

    wait_until(lambda: len(entries()) == 2, 10, what="two access log lines")
    assert [(e["client_ip"], e["peer_ip"], e["backend"]) for e in entries()] == [
        (source, "127.0.0.1", "nginx") for source in CLIENTS
    ]
    assert_checks_pass(stats, "L4OK")


# ----------------------------------------------------------- tlsgate -> HAProxy


HAPROXY_ECHO_SRC = """
global
    maxconn 512

defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend echo
    bind 127.0.0.1:{port} accept-proxy
    http-request return status 200 content-type text/plain \
        lf-string "%[src] %[src_port] %[fc_pp_authority]"
"""


@pytest.mark.parametrize(("version", "crc32c"), [("v1", False), ("v2", False), ("v2", True)])
@pytest.mark.parametrize("listener", ["tcp", "http", "https"])
def test_haproxy_behind_tlsgate_sees_the_real_client(
    make_gate: GateFactory,
    make_haproxy: HaproxyFactory,
    pki: Pki,
    listener: str,
    version: str,
    crc32c: bool,
) -> None:
    hport, gport = free_port(), free_port()
    make_haproxy("haproxy", HAPROXY_ECHO_SRC.format(port=hport), [hport])
    backend: dict[str, object] = {"send_proxy_protocol": version}
    if crc32c:
        backend["proxy_protocol_crc32c"] = True
    make_gate(
        (pki.toml() if listener == "https" else "")
        + table(
            "listeners",
            name=listener,
            bind=[f"127.0.0.1:{gport}"],
            protocol=listener,
            backend="haproxy",
        )
        + table("backends", name="haproxy", servers=[f"127.0.0.1:{hport}"], **backend)
    )
    scheme = "https" if listener == "https" else "http"
    for source in CLIENTS:
        res = curl(
            "--cacert",
            str(pki.ca_file),
            "--interface",
            source,
            "--local-port",
            "47100-47199",
            f"{scheme}://localhost:{gport}/",
        )
        assert res.returncode == 0, res.stderr
        assert res.status == 200, res.body
        src, port, authority = res.body.decode().split(" ")
        assert src == source
        assert 47100 <= int(port) <= 47199
        # the authority TLV is the SNI: only an https listener has one over v2
        assert authority == ("localhost" if listener == "https" and version == "v2" else "")
