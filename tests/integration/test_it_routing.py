"""Routing by Host and path prefix, http -> https redirects, and HSTS."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from appserver import AppServer
from harness import (
    Pki,
    RawConn,
    Tlsgate,
    curl,
    free_port,
    https_client,
    request_bytes,
    sni_get,
    table,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

HSTS = "max-age=63072000"


@dataclass
class RoutingStack:
    gate: Tlsgate
    https_port: int
    http_port: int  # routes like the https listener, no redirect
    redirect_port: int  # redirect_https to https_port
    redirect443_port: int  # redirect_https with the default redirect_port (443)
    pki: Pki


@pytest.fixture(scope="module")
def stack(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RoutingStack]:
    names = ("default", "api", "apiv2", "wild", "static")
    apps = {n: AppServer(n).start() for n in names}
    https_port, http_port, redirect_port, r443 = (free_port() for _ in range(4))
    routes = ""
    for listener in ("https", "http"):
        routes += (
            table("routes", listener=listener, hosts=["api.example.test"], backend="api")
            + table(
                "routes",
                listener=listener,
                hosts=["api.example.test"],
                path_prefix="/v2",
                backend="apiv2",
            )
            + table("routes", listener=listener, hosts=["*.example.test"], backend="wild")
            + table("routes", listener=listener, path_prefix="/static", backend="static")
        )
    config = (
        pki.toml()
        + table(
            "listeners",
            name="https",
            bind=[f"127.0.0.1:{https_port}"],
            protocol="https",
            backend="default",
            hsts=HSTS,
            default_certificate="main-ecdsa",
        )
        + table(
            "listeners",
            name="http",
            bind=[f"127.0.0.1:{http_port}"],
            protocol="http",
            backend="default",
        )
        + table(
            "listeners",
            name="redirect",
            bind=[f"127.0.0.1:{redirect_port}"],
            protocol="http",
            redirect_https=True,
            redirect_port=https_port,
        )
        + table(
            "listeners",
            name="redirect443",
            bind=[f"127.0.0.1:{r443}"],
            protocol="http",
            redirect_https=True,
            redirect_port=443,
        )
        + routes
        + "".join(table("backends", name=n, servers=[a.address]) for n, a in apps.items())
    )
    gate = Tlsgate(tmp_path_factory.mktemp("routing"), config)
    try:
        gate.start()
        yield RoutingStack(gate, https_port, http_port, redirect_port, r443, pki)
    finally:
        gate.kill()
        for a in apps.values():
            a.stop()


ROUTES = [
    ("api.example.test", "/x", "api"),
    ("API.Example.TEST", "/x", "api"),  # host names are case-insensitive
    ("api.example.test", "/v2/items", "apiv2"),  # the longest prefix wins among equals
    ("api.example.test", "/static/a.css", "api"),  # an exact host beats a hostless route
    ("www.example.test", "/x", "wild"),  # *.example.test
    ("www.example.test", "/v2/items", "wild"),
    ("a.b.example.test", "/x", "default"),  # the wildcard covers one label only
    ("a.b.example.test", "/static/a.css", "static"),
    ("other.test", "/static/a.css", "static"),
    ("other.test", "/", "default"),  # the listener's default backend
]


@pytest.mark.parametrize(("host", "path", "backend"), ROUTES)
def test_routing_over_http(stack: RoutingStack, host: str, path: str, backend: str) -> None:
    with RawConn(stack.http_port) as c:
        c.send(request_bytes("GET", path, f"{host}:{stack.http_port}"))
        resp = c.read_response()
    assert resp.status == 200
    assert resp.json()["name"] == backend
    assert resp.json()["path"] == path


@pytest.mark.parametrize(("host", "path", "backend"), ROUTES[:6])
def test_routing_over_https(stack: RoutingStack, host: str, path: str, backend: str) -> None:
    with https_client(stack.pki.ca_pem) as client:
        resp = sni_get(client, stack.https_port, host.lower(), path)
    assert resp.status_code == 200
    assert resp.json()["name"] == backend


def test_hsts_on_https_responses(stack: RoutingStack) -> None:
    with https_client(stack.pki.ca_pem) as client:
        ok = sni_get(client, stack.https_port, "localhost", "/echo")
        missing = sni_get(client, stack.https_port, "localhost", "/status/404")
    assert ok.headers["strict-transport-security"] == HSTS
    assert missing.status_code == 404
    assert missing.headers["strict-transport-security"] == HSTS


def test_no_hsts_over_plain_http(stack: RoutingStack) -> None:
    # RFC 6797 7.2: "An HSTS Host MUST NOT include the STS header field in HTTP
    # responses conveyed over non-secure transport."
    res = curl(f"http://localhost:{stack.redirect_port}/x")
    assert res.status == 308
    assert res.header("strict-transport-security") is None
    plain = curl(f"http://localhost:{stack.http_port}/echo")
    assert plain.status == 200
    assert plain.header("strict-transport-security") is None


@pytest.mark.parametrize(
    ("target", "expected_path"),
    [("/x?y=1", "/x?y=1"), ("/", "/"), ("/a/b%20c?q=%2F&r", "/a/b%20c?q=%2F&r")],
)
def test_redirect_to_https_keeps_host_path_and_query(
    stack: RoutingStack, target: str, expected_path: str
) -> None:
    res = curl(f"http://localhost:{stack.redirect_port}{target}")
    assert res.status == 308
    assert res.header("location") == f"https://localhost:{stack.https_port}{expected_path}"


def test_redirect_omits_port_443(stack: RoutingStack) -> None:
    with RawConn(stack.redirect443_port) as c:
        c.send(request_bytes("GET", "/x?y=1", f"www.example.test:{stack.redirect443_port}"))
        resp = c.read_response()
    assert resp.status == 308
    assert resp.header("location") == "https://www.example.test/x?y=1"


def test_redirect_is_followed_to_the_https_listener(stack: RoutingStack) -> None:
    res = curl(
        "-L",
        "--cacert",
        str(stack.pki.ca_file),
        f"http://localhost:{stack.redirect_port}/echo?from=http",
    )
    assert res.returncode == 0, res.stderr
    assert res.status == 200
    assert b'"query": "from=http"' in res.body
    assert res.header("strict-transport-security") == HSTS


def test_redirect_of_a_post_keeps_the_method_semantics(stack: RoutingStack) -> None:
    # 308 (not 301/302): RFC 9110 15.4.9 "does not allow changing the request method
    # from POST to GET".
    with RawConn(stack.redirect_port) as c:
        c.send(request_bytes("POST", "/form", "localhost", body=b"a=1"))
        resp = c.read_response()
    assert resp.status == 308
    assert resp.header("location") == f"https://localhost:{stack.https_port}/form"
