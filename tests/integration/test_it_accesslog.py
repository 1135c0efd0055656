"""The access log: one JSON object per line per request, with the documented fields."""

from __future__ import annotations

import uuid
from datetime import datetime

import pytest
from harness import AppFactory, GateFactory, Pki, free_port, http_client, https_client, table

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

FIELDS = {
    "time",
    "client_ip",
    "listener",
    "sni",
    "tls_version",
    "method",
    "host",
    "path",
    "status",
    "bytes_in",
    "bytes_out",
    "backend",
    "server",
    "upstream_duration_ms",
    "duration_ms",
}


def test_access_log_fields(pki: Pki, make_app: AppFactory, make_gate: GateFactory) -> None:
    app = make_app("app")
    https_port, http_port = free_port(), free_port()
    gate = make_gate(
        pki.toml()
        + table(
            "listeners",
            name="web-tls",
            bind=[f"127.0.0.1:{https_port}"],
            protocol="https",
            backend="app",
            default_certificate="main-ecdsa",
        )
        + table(
            "listeners", name="web", bind=[f"127.0.0.1:{http_port}"], protocol="http", backend="app"
        )
        + table("backends", name="app", servers=[app.address])
        + table("backends", name="nowhere", servers=[f"127.0.0.1:{free_port()}"], retries=0)
        + table("routes", listener="web", path_prefix="/nowhere", backend="nowhere")
    )
    tls_marker, http_marker, err_marker = (uuid.uuid4().hex for _ in range(3))
    body = b"0123456789" * 10

    with https_client(pki.ca_pem, local_address="127.0.0.2") as c:
        resp = c.post(
            f"https://127.0.0.1:{https_port}/echo/{tls_marker}?q=1",
            content=body,
            headers={"Host": f"api.example.test:{https_port}"},
            extensions={"sni_hostname": "api.example.test"},
        )
        assert resp.status_code == 200
        response_len = len(resp.content)
    with http_client() as c:
        assert c.get(f"http://127.0.0.1:{http_port}/status/404/{http_marker}").status_code == 404
        assert c.get(f"http://127.0.0.1:{http_port}/nowhere/{err_marker}").status_code == 502

    tls = gate.wait_access_log(lambda e: tls_marker in str(e.get("path", "")))
    assert set(tls) >= FIELDS, f"missing: {FIELDS - set(tls)}"
    stamp = datetime.fromisoformat(tls["time"])
    assert stamp.tzinfo is not None, "time must carry its UTC offset"
    assert tls["client_ip"] == "127.0.0.2"
    assert tls["listener"] == "web-tls"
    assert tls["sni"] == "api.example.test"
    assert "1.3" in str(tls["tls_version"]) or "1.2" in str(tls["tls_version"])
    assert tls["method"] == "POST"
    assert tls["host"] in ("api.example.test", f"api.example.test:{https_port}")
    assert tls["path"] in (f"/echo/{tls_marker}", f"/echo/{tls_marker}?q=1")
    assert tls["status"] == 200
    assert tls["bytes_in"] >= len(body)
    assert tls["bytes_out"] >= response_len
    assert tls["backend"] == "app"
    assert tls["server"] == app.address
    assert 0 <= tls["upstream_duration_ms"] <= tls["duration_ms"]

    plain = gate.wait_access_log(lambda e: http_marker in str(e.get("path", "")))
    assert set(plain) >= FIELDS
    assert plain["listener"] == "web"
    assert plain["sni"] in (None, "")
    assert plain["tls_version"] in (None, "")
    assert plain["method"] == "GET"
    assert plain["status"] == 404
    assert plain["client_ip"] == "127.0.0.1"

    failed = gate.wait_access_log(lambda e: err_marker in str(e.get("path", "")))
    assert failed["status"] == 502
    assert failed["backend"] == "nowhere"

    # Exactly one line per request.
    lines = gate.access_log_lines()
    for marker in (tls_marker, http_marker, err_marker):
        assert sum(marker in str(e.get("path", "")) for e in lines) == 1
