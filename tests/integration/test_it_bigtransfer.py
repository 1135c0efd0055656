"""Big bodies stream through in bounded memory, both directions, over TLS.

The size is ``$TLSGATE_BIG_TRANSFER`` bytes (default 1 GiB; the issue names a 2 GiB
upload: ``TLSGATE_BIG_TRANSFER=2GiB``). The client side is bounded too: uploads
come from a generator, downloads are checked piece by piece against the known
pattern. A sampler thread reads the worker's RSS during the transfer.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from appserver import PatternChecker, pattern_chunks
from harness import AppProcess, Pki, RssSampler, Tlsgate, free_port, https_client, table

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

MiB = 1024 * 1024
RSS_LIMIT = 150 * MiB
_UNITS = {
    "": 1,
    "b": 1,
    "kib": 1024,
    "mib": MiB,
    "gib": 1024 * MiB,
    "kb": 1000,
    "mb": 10**6,
    "gb": 10**9,
}


def big_size() -> int:
    """``$TLSGATE_BIG_TRANSFER`` as bytes: "1073741824", "512MiB", "2GiB"..."""
    text = os.environ.get("TLSGATE_BIG_TRANSFER", "1GiB").strip().lower()
    m = re.fullmatch(r"(\d+)\s*([a-z]*)", text)
    if not m or m.group(2) not in _UNITS:
        raise ValueError(f"TLSGATE_BIG_TRANSFER={text!r}: expected e.g. 1073741824, 512MiB, 2GiB")
    return int(m.group(1)) * _UNITS[m.group(2)]


@dataclass
class BigStack:
    gate: Tlsgate
    port: int
    pki: Pki

    def url(self, path: str) -> str:
        return f"https://localhost:{self.port}{path}"


@pytest.fixture(scope="module")
def stack(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BigStack]:
    workdir = tmp_path_factory.mktemp("big")
    # A separate process: the app must not share the test's GIL at these rates.
    app = AppProcess("big", log_dir=workdir).start()
    port = free_port()
    config = (
        pki.toml()
        + table(
            "listeners",
            name="https",
            bind=[f"127.0.0.1:{port}"],
            protocol="https",
            backend="app",
            default_certificate="main-ecdsa",
        )
        + table("backends", name="app", servers=[app.address], read_timeout="60s")
    )
    gate = Tlsgate(workdir, config, workers=1)
    try:
        gate.start()
        yield BigStack(gate, port, pki)
    finally:
        gate.kill()
        app.stop()


def client(stack: BigStack):  # type: ignore[no-untyped-def]
    return https_client(stack.pki.ca_pem, timeout=60)


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
def test_big_upload_bounded_memory(stack: BigStack, framing: str) -> None:
    size = big_size()
    digest = hashlib.sha256()

    def body() -> Iterator[bytes]:
        for piece in pattern_chunks(size, 256 * 1024):
            digest.update(piece)
            yield piece

    headers = {"Content-Length": str(size)} if framing == "content-length" else {}
    with RssSampler(stack.gate) as rss, client(stack) as c:
        resp = c.post(
            f"https://127.0.0.1:{stack.port}/upload",
            content=body(),
            headers={"Host": "localhost", **headers},
            extensions={"sni_hostname": "localhost"},
        )
    assert resp.status_code == 200
    echo = resp.json()
    assert echo["body_len"] == size
    assert echo["body_sha256"] == digest.hexdigest()
    assert rss.samples > 0
    assert rss.max_rss < RSS_LIMIT, f"worker RSS reached {rss.max_rss / MiB:.0f} MiB"


@pytest.mark.parametrize("path", ["/stream", "/length"])
def test_big_download_bounded_memory(stack: BigStack, path: str) -> None:
    size = big_size()
    checker = PatternChecker()
    with (
        RssSampler(stack.gate) as rss,
        client(stack) as c,
        c.stream(
            "GET",
            f"https://127.0.0.1:{stack.port}{path}?size={size}",
            headers={"Host": "localhost"},
            extensions={"sni_hostname": "localhost"},
        ) as resp,
    ):
        assert resp.status_code == 200
        for piece in resp.iter_raw(256 * 1024):
            checker.feed(piece)
    assert checker.received == size
    assert checker.ok, "the body differs from what the app sent"
    assert rss.samples > 0
    assert rss.max_rss < RSS_LIMIT, f"worker RSS reached {rss.max_rss / MiB:.0f} MiB"
