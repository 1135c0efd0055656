"""``client_ip_header`` end to end: an edge's keep-alive connection carries many clients.

tlsgate trusts ``CF-Connecting-IP`` only from ``trusted_proxies`` (here the edge at
127.0.0.2) and believes it per request: the app server's X-Forwarded-For and the
access log name each request's own client, and a request without the header is
the edge's own -- never the client of the request before it on that connection.
"""

from __future__ import annotations

import pytest
from appserver import AppServer
from harness import RawConn, Tlsgate, free_port, request_bytes, table, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def test_an_edge_connection_names_each_requests_client(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    app = AppServer("client-ip-header").start()
    port = free_port()
    config = table(
        "listeners",
        name="origin",
        bind=[f"127.0.0.1:{port}"],
        protocol="http",
        backend="app",
        trusted_proxies=["127.0.0.2/32"],
        client_ip_header="CF-Connecting-IP",
    ) + table("backends", name="app", servers=[app.address])
    gate = Tlsgate(tmp_path_factory.mktemp("client-ip-header"), config)
    try:
        gate.start()
        named = ["198.51.100.1", None, "forged, 10.0.0.1", "2001:db8::5"]
        seen = []
        with RawConn(port, source="127.0.0.2") as edge:
            for i, client in enumerate(named):
                headers = [("CF-Connecting-IP", client)] if client else []
                edge.send(request_bytes("GET", f"/echo?n={i}", "origin.test", headers))
                echo = edge.read_response().json()
                xff = [v for k, v in echo["headers"] if k.lower() == "x-forwarded-for"]
                seen.append(xff)
        assert seen == [
            ["198.51.100.1, 127.0.0.2"],
            ["127.0.0.2"],
            ["127.0.0.2"],  # an invalid value is not believed
            ["2001:db8::5, 127.0.0.2"],
        ]

        def echoes() -> list[dict[str, object]]:
            found = [e for e in gate.access_log_lines() if e["path"] == "/echo"]
            return found if len(found) >= len(named) else []

        entries = wait_until(echoes, 10, what="an access log line per request")
        assert [e["client_ip"] for e in entries] == [
            "198.51.100.1",
            "127.0.0.2",
            "127.0.0.2",
            "2001:db8::5",
        ]
        # from anyone else the header is neither believed nor passed on
        with RawConn(port, source="127.0.0.3") as other:
            other.send(
                request_bytes("GET", "/echo", "origin.test", [("CF-Connecting-IP", "192.0.2.9")])
            )
            echo = other.read_response().json()
        names = [k.lower() for k, _ in echo["headers"]]
        assert "cf-connecting-ip" not in names
        assert [v for k, v in echo["headers"] if k.lower() == "x-forwarded-for"] == ["127.0.0.3"]
    finally:
        gate.kill()
        app.stop()
