"""X-Forwarded-* and RFC 7239 Forwarded: added for every request; what a client
sent is kept (and appended to) only when the client is a trusted proxy.

Clients bind distinct loopback source addresses: 127.0.0.2 is in the listener's
``trusted_proxies``, 127.0.0.3 is not.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from appserver import AppServer
from harness import Pki, Tlsgate, curl, free_port, http_client, https_client, sni_get, table

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

TRUSTED = "127.0.0.2"
UNTRUSTED = "127.0.0.3"
SPOOFED = "203.0.113.7"

SPOOF_HEADERS = {
    "X-Forwarded-For": SPOOFED,
    "X-Forwarded-Proto": "gopher",
    "X-Forwarded-Host": "evil.test",
    "X-Forwarded-Port": "1",
    "Forwarded": f"for={SPOOFED};proto=gopher;host=evil.test",
}


@dataclass
class FwdStack:
    gate: Tlsgate
    https_port: int
    http_port: int
    pki: Pki


@pytest.fixture(scope="module")
def stack(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FwdStack]:
    app = AppServer("fwd").start()
    https_port, http_port = free_port(), free_port()
    config = (
        pki.toml()
        + table(
            "listeners",
            name="https",
            bind=[f"127.0.0.1:{https_port}"],
            protocol="https",
            backend="app",
            trusted_proxies=[f"{TRUSTED}/32"],
            default_certificate="main-ecdsa",
        )
        + table(
            "listeners",
            name="http",
            bind=[f"127.0.0.1:{http_port}"],
            protocol="http",
            backend="app",
            trusted_proxies=[f"{TRUSTED}/32"],
        )
        + table("backends", name="app", servers=[app.address])
    )
    gate = Tlsgate(tmp_path_factory.mktemp("fwd"), config)
    try:
        gate.start()
        yield FwdStack(gate, https_port, http_port, pki)
    finally:
        gate.kill()
        app.stop()


def field(echo: dict[str, Any], name: str) -> str | None:
    """All lines of a field the app received, joined as RFC 9110 5.3 allows."""
    values = [v for k, v in echo["headers"] if k.lower() == name.lower()]
    return ", ".join(values) if values else None


def forwarded_elements(value: str) -> list[dict[str, str]]:
    """RFC 7239 4: forwarded-element *( "," forwarded-element ), pairs split by ";"."""
    elements = []
    for element in value.split(","):
        pairs: dict[str, str] = {}
        for pair in element.split(";"):
            if not pair.strip():
                continue
            key, _, val = pair.strip().partition("=")
            pairs[key.lower()] = val.strip('"')
        elements.append(pairs)
    return elements


def node_ip(node: str) -> str:
    """The IP of an RFC 7239 node ("1.2.3.4", "1.2.3.4:5", "[::1]:5")."""
    if node.startswith("["):
        return node[1:].partition("]")[0]
    return node.partition(":")[0]


def via_https(stack: FwdStack, source: str, headers: dict[str, str]) -> dict[str, Any]:
    with https_client(stack.pki.ca_pem, local_address=source) as client:
        resp = sni_get(client, stack.https_port, "localhost", "/echo", headers=headers)
    assert resp.status_code == 200
    echo: dict[str, Any] = resp.json()
    assert echo["client_addr"].startswith("127.0.0.1:")  # tlsgate connected to the app
    return echo


def test_untrusted_client_headers_are_replaced(stack: FwdStack) -> None:
    echo = via_https(stack, UNTRUSTED, SPOOF_HEADERS)
    assert field(echo, "x-forwarded-for") == UNTRUSTED
    assert field(echo, "x-forwarded-proto") == "https"
    assert field(echo, "x-forwarded-host") == f"localhost:{stack.https_port}"
    assert field(echo, "x-forwarded-port") == str(stack.https_port)
    fwd = field(echo, "forwarded")
    assert fwd is not None
    elements = forwarded_elements(fwd)
    assert len(elements) == 1, fwd
    assert node_ip(elements[0]["for"]) == UNTRUSTED
    assert elements[0]["proto"] == "https"
    assert elements[0]["host"] == f"localhost:{stack.https_port}"
    # Nothing the client claimed survives anywhere.
    text = json.dumps(echo["headers"])
    assert SPOOFED not in text
    assert "evil.test" not in text
    assert "gopher" not in text


def test_trusted_proxy_headers_are_appended_to(stack: FwdStack) -> None:
    echo = via_https(stack, TRUSTED, SPOOF_HEADERS)
    assert field(echo, "x-forwarded-for") == f"{SPOOFED}, {TRUSTED}"
    fwd = field(echo, "forwarded")
    assert fwd is not None
    elements = forwarded_elements(fwd)
    assert [node_ip(e["for"]) for e in elements] == [SPOOFED, TRUSTED], fwd
    assert elements[-1]["proto"] == "https"


def test_trusted_proxy_with_several_xff_lines(stack: FwdStack) -> None:
    with http_client(local_address=TRUSTED) as client:
        resp = client.get(
            f"http://127.0.0.1:{stack.http_port}/echo",
            headers=[("X-Forwarded-For", "198.51.100.1"), ("X-Forwarded-For", SPOOFED)],
        )
    echo = resp.json()
    assert field(echo, "x-forwarded-for") == f"198.51.100.1, {SPOOFED}, {TRUSTED}"


def test_headers_added_when_none_were_sent(stack: FwdStack) -> None:
    echo = via_https(stack, TRUSTED, {})
    assert field(echo, "x-forwarded-for") == TRUSTED
    assert field(echo, "x-forwarded-proto") == "https"
    fwd = field(echo, "forwarded")
    assert fwd is not None
    assert [node_ip(e["for"]) for e in forwarded_elements(fwd)] == [TRUSTED]


def test_plain_http_listener_reports_http(stack: FwdStack) -> None:
    with http_client(local_address=UNTRUSTED) as client:
        resp = client.get(
            f"http://127.0.0.1:{stack.http_port}/echo",
            headers={"Host": "www.example.test", **SPOOF_HEADERS},
        )
    echo = resp.json()
    assert field(echo, "x-forwarded-for") == UNTRUSTED
    assert field(echo, "x-forwarded-proto") == "http"
    assert field(echo, "x-forwarded-host") == "www.example.test"
    assert field(echo, "x-forwarded-port") == str(stack.http_port)
    fwd = field(echo, "forwarded")
    assert fwd is not None
    [element] = forwarded_elements(fwd)
    assert node_ip(element["for"]) == UNTRUSTED
    assert element["proto"] == "http"


def test_with_curl_from_two_source_addresses(stack: FwdStack) -> None:
    url = f"http://localhost:{stack.http_port}/echo"
    for source, expected in ((TRUSTED, f"{SPOOFED}, {TRUSTED}"), (UNTRUSTED, UNTRUSTED)):
        res = curl("--interface", source, "-H", f"X-Forwarded-For: {SPOOFED}", url)
        assert res.returncode == 0, res.stderr
        assert field(json.loads(res.body), "x-forwarded-for") == expected
