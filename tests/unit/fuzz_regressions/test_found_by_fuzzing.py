"""Bugs the fuzz targets found (fuzz/, docs/security.md "Fuzzing"), minimized to one test each.

Each test names the target that found it and the invariant it broke. While
a bug is unfixed its test fails; the fuzz targets tolerate it meanwhile
(``_fuzzhttp.KNOWN_ISSUES``, off with ``TLSGATE_FUZZ_STRICT=1``) so that a
long run is not spent finding it again. Once fixed, drop its entry there.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tlsgate.certs import inventory
from tlsgate.certs.manager import CertificateManager
from tlsgate.config.loader import parse_config
from tlsgate.net.testing import Harness
from tlsgate.store import Entry, SqliteStore

CONFIG = """
[[listeners]]
name = "web"
bind = ["127.0.0.1:8080"]
protocol = "http"
backend = "app"

[[backends]]
name = "app"
servers = ["127.0.0.1:9000"]
"""


@pytest.fixture
def h() -> Iterator[Harness]:
    harness = Harness(CONFIG)
    yield harness
    harness.close()


# --- http_requests: "the client gets well-formed responses" ------------------------------------


@pytest.mark.parametrize(
    "request_head",
    [
        # refused by validate_request (an invalid Host)
        b"HEAD / HTTP/1.1\r\nHost: a b\r\n\r\n",
        # refused by llhttp itself, after the request line
        b"HEAD / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    ],
)
def test_a_refused_head_request_gets_no_body(h: Harness, request_head: bytes) -> None:
    """RFC 9110 §9.3.2: "The server MUST NOT send content in the response" to HEAD.

    The error page for a HEAD request whose head is refused carries its body
    (ClientConnection._reject makes it with no RequestInfo, so head=False); a
    client reads those bytes as the start of the next response. Harmless while
    the connection is closed right after, but still a framing error.
    """
    conn, client = h.client()
    conn.data_received(request_head)
    out = client.data()
    assert out.startswith(b"HTTP/1.1 400 ")
    assert b"Content-Length: " in out
    body = out.split(b"\r\n\r\n", 1)[1]
    assert body == b"", f"a body follows the head: {body!r}"


def test_a_head_request_that_times_out_gets_no_body() -> None:
    """The same as above for the 408 of ``header_timeout``: a HEAD request whose head
    never ends gets a 408 page with a body (ClientConnection._header_timeout calls
    error_page without ``head``); ``_refused_head_is_head()`` would say it is HEAD."""
    harness = Harness(
        CONFIG.replace('backend = "app"\n', 'backend = "app"\nheader_timeout = "5s"\n', 1)
    )
    try:
        conn, client = harness.client()
        conn.data_received(b"HEAD / HTTP/1.1\r\nHost: a\r\nX-Slow")
        harness.loop.advance(6)
        out = client.data()
        assert out.startswith(b"HTTP/1.1 408 ")
        body = out.split(b"\r\n\r\n", 1)[1]
        assert body == b"", f"a body follows the head: {body!r}"
    finally:
        harness.close()


@pytest.mark.parametrize("ows", [b" ", b"\t", b" \t "])
def test_trailing_whitespace_after_a_content_length_is_not_part_of_it(
    h: Harness, ows: bytes
) -> None:
    """RFC 9112 §5: ``field-line = field-name ":" OWS field-value OWS``; the OWS is no part
    of the value, and "a parser [...] excludes such whitespace prior to evaluating the field
    value".

    llhttp hands over values with their trailing OWS (found by http_responses, whose
    checker expected none, as http1's docstring promises: "values without surrounding
    whitespace"); validate_request then finds ``b"5 "`` not all digits and refuses a
    valid request with 400. Stripping trailing OWS where the fields are collected
    (ClientConnection.on_header, UpstreamConnection.on_header) fixes this and every
    derived value (X-Forwarded-Host, Forwarded: host=) at once.
    """
    up = h.pooled_upstream()
    conn, client = h.client()
    conn.data_received(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5" + ows + b"\r\n\r\nhello")
    assert client.data() == b""  # no 400
    assert up.data().endswith(b"\r\nContent-Length: 5\r\n\r\nhello")


# --- http_responses: "no exception escapes the data plane" -------------------------------------


@pytest.mark.parametrize("status_line", [b"HTTP/1.1 099 Odd\r\n\r\n", b"HTTP/1.1 000 X\r\n\r\n"])
def test_an_upstream_status_below_100_is_a_502(h: Harness, status_line: bytes) -> None:
    """llhttp accepts any three digits as a status code, 000 to 099 included.

    Such a status is < 200, so UpstreamConnection.on_headers_complete relays it as
    an interim response; response_head_bytes raises LocalProtocolError for it,
    inside the parser callback, and since that is neither an UpstreamError nor an
    UpstreamProtocolError, data_received re-raises it: the event loop logs
    "Fatal error: protocol.data_received() call failed" and drops the connection.
    A malformed response should be a 502 like any other.
    """
    up = h.pooled_upstream()
    conn, client = h.client()
    conn.data_received(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
    h.upstream_of(up).data_received(status_line)  # raises HttpParserCallbackError today
    assert client.data().startswith(b"HTTP/1.1 502 ")


def test_bytes_after_a_response_never_reach_the_next_client(h: Harness) -> None:
    """An upstream connection whose server sent more than the response must not be reused.

    Found by http_responses ("the client gets well-formed responses"): the server
    answers client A's request, and in the same read starts a response nobody asked
    for, one without framing (``HTTP/1.x 200``, no Content-Length: read until close).
    llhttp parses it while the connection is already back in the pool (the first
    response completed inside the same ``feed_data``; on_headers_complete returns
    early with no owner), so the pooled parser sits in that close-delimited body.
    UpstreamConnection.begin() keeps a parser whose last response was done, so the
    next exchange on the connection -- client B's here -- receives the server's next
    bytes through on_body before any response head, and relays them raw: B reads
    them as its response (response desync, across clients).

    Fix: in UpstreamConnection, treat a message that begins with no owner as the
    server being confused -- an ``on_message_begin`` callback that raises
    UpstreamProtocolError when ``self.owner is None`` (data_received then aborts the
    connection, and the pool skips it) -- or give begin() a fresh parser always.
    """
    up = h.pooled_upstream()
    a, to_a = h.client(peer=("192.0.2.1", 1111))
    a.data_received(b"GET /a HTTP/1.1\r\nHost: example.com\r\n\r\n")
    h.upstream_of(up).data_received(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"
    )
    assert to_a.data() == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    b, to_b = h.client(peer=("192.0.2.2", 2222))
    b.data_received(b"GET /b HTTP/1.1\r\nHost: example.com\r\n\r\n")
    if not up.closed:  # reused: whatever the server sends now is B's response
        h.upstream_of(up).data_received(b"<script>alert(1)</script>")
        assert not to_b.data().startswith(b"<script>"), "the server's bytes reached B raw"


SMUGGLED = b"GET /admin HTTP/1.1\r\nHost: internal\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n"


@pytest.mark.parametrize(
    "request_head",
    [
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        # HTTP/1.0: tlsgate ignores Upgrade (RFC 9110 §7.8), llhttp does not
        b"GET / HTTP/1.0\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n",
    ],
    ids=["http/1.1", "http/1.0"],
)
def test_bytes_after_an_upgrade_request_wait_for_the_101(h: Harness, request_head: bytes) -> None:
    """Request smuggling through Upgrade. Found by http_requests ("the upstream
    transports get exactly the client's requests": 2 reached upstream, 1 was sent).

    After an upgrade request llhttp stops parsing and raises HttpParserUpgrade;
    ClientConnection.data_received hands the rest of the read to
    ``Exchange.tunnel_bytes``, whose docstring says "held until the server agrees
    (101)", but ``_send_upstream`` writes at once once the exchange is FORWARDING.
    So a second request behind the upgrade request reaches the app server before any
    101 -- never validated, never rewritten (its X-Forwarded-For, Host, framing go as
    the client wrote them) -- and if the server declines the upgrade and keeps the
    connection, it answers that request too, and the connection goes back to the pool
    with that answer waiting in it. For HTTP/1.0, where tlsgate ignores Upgrade but
    llhttp still stops, the bytes go upstream as well.

    Fix (net/exchange.py, net/http_proxy.py): ``tunnel_bytes`` buffers until the state
    is TUNNEL (``start_tunnel`` already writes ``ex.buffer``); a declined upgrade drops
    the buffer and does not pool the connection; and when llhttp stops for an
    exchange that is no upgrade to us (``not ex.upgrade``), the rest is not tunnel
    data: close after the response instead.
    """
    up = h.pooled_upstream()
    conn, client = h.client()
    conn.data_received(request_head + SMUGGLED)
    assert SMUGGLED not in up.data(), "sent upstream before any 101"
    h.upstream_of(up).data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert SMUGGLED not in up.data(), "sent upstream although the upgrade was declined"
    assert client.data().startswith(b"HTTP/1.1 200 OK\r\n")


@pytest.mark.parametrize("reason", [b"O\x7fK", b"Con\x1ctinue", b"\x01", b"a\x0bb"])
def test_a_reason_phrase_with_control_characters_is_replaced(h: Harness, reason: bytes) -> None:
    """RFC 9112 §4: ``reason-phrase = 1*( HTAB / SP / VCHAR / obs-text )``.

    llhttp accepts control characters in an app server's reason phrase, and
    http1.response_head_bytes replaces a reason only for NUL, CR or LF, so the
    others (0x01-0x08, 0x0b-0x1f, 0x7f) reach the client in a status line no
    parser is obliged to accept. It should get the standard phrase instead.
    """
    up = h.pooled_upstream()
    conn, client = h.client()
    conn.data_received(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
    h.upstream_of(up).data_received(b"HTTP/1.1 200 " + reason + b"\r\nContent-Length: 0\r\n\r\n")
    assert client.data().split(b"\r\n", 1)[0] == b"HTTP/1.1 200 OK"


# --- store records: "reading a record raises only the documented errors" ------------------------

ACME = """
[node]
name = "t"
data_dir = {data_dir}

[acme]
directory = "https://acme.invalid/dir"
key_types = ["ecdsa-p256"]

[[certificates]]
name = "www"
domains = ["www.example.com"]
issuer = "acme"

[[listeners]]
name = "https"
bind = ["127.0.0.1:18443"]
protocol = "https"
backend = "app"

[[backends]]
name = "app"
servers = ["127.0.0.1:9001"]
"""

# what a damaged or foreign certs/<name>/<key-type>/meta.json may hold
BAD_META = [b"{", b"\xff\xfe", b"[]", b'"text"', b"null", b"[" * 100_000]


class _Sink:
    def set_http01(self, token: str, key_authorization: str | None) -> None:
        pass

    def set_tls_alpn01(self, name: str, cert_and_key: tuple[bytes, bytes] | None) -> None:
        pass

    async def challenges_published(self) -> None:
        pass


@pytest.mark.parametrize("meta", BAD_META, ids=lambda m: repr(m[:8]))
def test_the_manager_loads_a_store_with_an_unreadable_meta_json(
    tmp_path: Path, meta: bytes
) -> None:
    """CertificateManager._load_one does ``json.loads(meta.value)`` and ``.get`` unguarded.

    One damaged meta.json -- not JSON, not UTF-8, not an object, nested too
    deeply -- makes ``load()`` raise, and with it the supervisor's start and
    every SIGHUP (supervisor.py: ``await manager.load()``), for all certificates.
    ``tlsgate certs list`` (certs/inventory.py) already reads the same record
    as "no metadata"; the manager should too (log it, use ``{}``).
    """
    config = parse_config(ACME.format(data_dir=json.dumps(str(tmp_path))), tmp_path / "t.toml")

    async def body() -> None:
        store = SqliteStore(tmp_path / "state.db")
        try:
            await store.put("certs/www/ecdsa-p256/meta.json", meta)
            manager = CertificateManager(config, store, _Sink(), lambda: None)
            await manager.load()  # raises today
            assert manager.managed[0].meta == {}
        finally:
            await store.close()

    asyncio.run(body())


def test_certs_list_survives_a_deeply_nested_meta_json(tmp_path: Path) -> None:
    """inventory._from_store catches ValueError around ``json.loads``, not RecursionError.

    A meta.json of 100 000 ``[`` makes ``tlsgate certs list`` fail with a
    RecursionError traceback instead of listing the certificate.
    """
    config = parse_config(ACME.format(data_dir=json.dumps(str(tmp_path))), tmp_path / "t.toml")

    class OneRecord:
        async def get(self, key: str) -> Entry | None:
            if key.endswith("meta.json"):
                return Entry(key, b"[" * 100_000, 1)
            return None

    infos = asyncio.run(inventory.list_certificates(config, OneRecord()))  # type: ignore[arg-type]
    assert [k.status for k in infos[0].keys] == ["not issued"]
