"""Access-log lines: always one valid JSON object with the documented keys."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from tlsgate.logs import AccessRecord

text = st.text(max_size=20)
maybe = st.none() | text

HTTP_KEYS = [
    "time", "client_ip", "peer_ip", "listener", "sni", "tls_version", "method", "host",
    "path", "status", "bytes_in", "bytes_out", "backend", "server", "upstream_duration_ms",
    "duration_ms", "worker",
]  # fmt: skip
STREAM_KEYS = [
    "time", "client_ip", "client_port", "peer_ip", "listener", "protocol", "sni", "alpn",
    "backend", "server", "bytes_in", "bytes_out", "duration_ms", "close_reason", "worker",
]  # fmt: skip


@given(
    ip=text,
    path=maybe,
    host=maybe,
    error=text,
    up=st.none() | st.floats(0, 1e6),
    dur=st.floats(0, 1e6),
    status=st.integers(0, 999),
)
def test_http_lines_are_json_with_every_key(
    ip: str,
    path: str | None,
    host: str | None,
    error: str,
    up: float | None,
    dur: float,
    status: int,
) -> None:
    record = AccessRecord(
        kind="http",
        client_ip=ip,
        peer_ip="10.0.0.1",
        listener="web",
        worker=1,
        duration_ms=dur,
        path=path,
        host=host,
        status=status,
        upstream_duration_ms=up,
        error=error,
    )
    entry = json.loads(record.json_line("2026-12-01T00:00:00.000+00:00"))
    assert list(entry) == HTTP_KEYS + (["error"] if error else [])
    assert (entry["client_ip"], entry["path"], entry["host"]) == (ip, path, host)
    assert entry["duration_ms"] == dur
    assert entry["upstream_duration_ms"] == up
    assert entry["status"] == status


@given(sni=maybe, alpn=st.none() | st.lists(text, max_size=3), reason=text)
def test_stream_lines_are_json_with_every_key(
    sni: str | None, alpn: list[str] | None, reason: str
) -> None:
    record = AccessRecord(
        kind="stream",
        client_ip="192.0.2.1",
        peer_ip="192.0.2.1",
        listener="tls",
        worker=0,
        duration_ms=1.5,
        sni=sni,
        alpn=alpn,
        client_port=4000,
        protocol="tls-passthrough",
        close_reason=reason,
    )
    entry = json.loads(record.json_line("t"))
    assert list(entry) == STREAM_KEYS
    assert (entry["sni"], entry["alpn"], entry["close_reason"]) == (sni, alpn, reason)
