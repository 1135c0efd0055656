"""Request smuggling through an upgrade request with a body (the corpus case
``upgrade-with-body`` of tests/integration/smuggling_cases.toml, found with nginx
behind tlsgate).

llhttp, as httptools drives it, ends an upgrade request -- any request with an
Upgrade field and the "upgrade" connection option, HTTP/1.0 too -- with its head:
the bytes after it are left to the tunnel, which a server that declines the
upgrade never opens. tlsgate re-adds the framing ``validate_request`` found to the
head it sends upstream, so a body there was announced (``Content-Length: 5``) but
never sent; a server that frames by that field (nginx) answered, kept the
connection, and read the next request on it -- another client's, once pooled --
as this body: the first bytes of that request disappeared and the rest was parsed
as a request of its own. ``validate_request`` now refuses such a request (400).
"""

from __future__ import annotations

from collections.abc import Iterator

import httptools
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tlsgate.errors import ClientProtocolError
from tlsgate.net.testing import Harness
from tlsgate.proto.http1 import Headers, RequestInfo, validate_request

UPGRADE: Headers = [(b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")]


def validate(headers: Headers, version: str = "1.1") -> RequestInfo:
    return validate_request(
        b"POST",
        b"/",
        version,
        [(b"Host", b"a"), *headers],
        max_headers=100,
        max_header_size=65536,
        max_body_size=0,
    )


@pytest.mark.parametrize("version", ["1.1", "1.0"])
@pytest.mark.parametrize(
    "framing",
    [[(b"Content-Length", b"5")], [(b"Transfer-Encoding", b"chunked")]],
    ids=["content-length", "chunked"],
)
@pytest.mark.parametrize(
    "connection",
    [b"Upgrade", b"keep-alive, UPGRADE", b",upgrade,"],
)
def test_an_upgrade_request_with_a_body_is_refused(
    version: str, framing: Headers, connection: bytes
) -> None:
    if version == "1.0" and framing[0][0] == b"Transfer-Encoding":
        framing = [(b"Content-Length", b"7")]  # TE in HTTP/1.0 is refused anyway
    headers = [(b"Connection", connection), (b"Upgrade", b"websocket"), *framing]
    with pytest.raises(ClientProtocolError) as info:
        validate(headers, version)
    assert info.value.status_hint == 400
    assert "upgrade request with a body" in str(info.value)


def test_an_upgrade_request_without_a_body_is_accepted() -> None:
    assert validate(UPGRADE).upgrade == b"websocket"
    info = validate([*UPGRADE, (b"Content-Length", b"0")])
    assert (info.upgrade, info.body, info.content_length) == (b"websocket", "length", 0)
    # HTTP/1.0: no upgrade for tlsgate (RFC 9110 §7.8), and no body to lose
    assert validate(UPGRADE, "1.0").upgrade is None


@pytest.mark.parametrize(
    "headers",
    [
        [(b"Upgrade", b"websocket"), (b"Content-Length", b"5")],
        [(b"Connection", b"upgrade"), (b"Content-Length", b"5")],
        [(b"Connection", b"upgradex"), (b"Upgrade", b"x"), (b"Content-Length", b"5")],
    ],
    ids=["no-connection-option", "no-upgrade-field", "other-option"],
)
def test_a_body_without_a_whole_upgrade_is_framed_as_usual(headers: Headers) -> None:
    info = validate(headers)
    assert (info.upgrade, info.body, info.content_length) == (None, "length", 5)


class _Events:
    def __init__(self) -> None:
        self.body = b""

    def on_body(self, body: bytes) -> None:
        self.body += body


connection_values = st.sampled_from(
    [b"upgrade", b"Upgrade", b"keep-alive, upgrade", b"close", b"upgrade, close", b"x", b""]
)
upgrade_values = st.sampled_from([b"websocket", b"h2c", b"x", b""])


@given(
    version=st.sampled_from(["1.0", "1.1"]),
    connection=st.none() | connection_values,
    upgrade=st.none() | upgrade_values,
    length=st.none() | st.integers(0, 9),
    chunked=st.booleans(),
)
def test_what_llhttp_leaves_to_a_tunnel_is_never_announced_upstream(
    version: str, connection: bytes | None, upgrade: bytes | None, length: int | None, chunked: bool
) -> None:
    """For every head llhttp ends as an upgrade, validate_request either refuses it or
    finds no body: the framing tlsgate sends upstream never announces bytes that
    llhttp hands to the tunnel instead of the body."""
    headers: Headers = [(b"Host", b"a")]
    if connection is not None:
        headers.append((b"Connection", connection))
    if upgrade is not None:
        headers.append((b"Upgrade", upgrade))
    if length is not None:
        headers.append((b"Content-Length", b"%d" % length))
    if chunked:
        headers.append((b"Transfer-Encoding", b"chunked"))
    head = b"POST / HTTP/%s\r\n" % version.encode() + b"".join(
        n + b": " + v + b"\r\n" for n, v in headers
    )
    body = b"0\r\n\r\n" if chunked else b"x" * (length or 0)
    events = _Events()
    parser = httptools.HttpRequestParser(events)
    try:
        parser.feed_data(head + b"\r\n" + body)
    except httptools.HttpParserUpgrade:
        tunnelled = True
    except httptools.HttpParserError:
        return  # llhttp refuses the head itself
    else:
        tunnelled = False
    try:
        info = validate_request(
            b"POST",
            b"/",
            version,
            headers,
            max_headers=100,
            max_header_size=65536,
            max_body_size=0,
        )
    except ClientProtocolError:
        return
    if tunnelled:
        assert events.body == b""
        assert info.body == "none" or (info.body == "length" and info.content_length == 0)


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

NEXT = b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n"


@pytest.fixture
def h() -> Iterator[Harness]:
    harness = Harness(CONFIG)
    yield harness
    harness.close()


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /up HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Content-Length: 5\r\n\r\nhello",
        b"POST /up HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"POST /up HTTP/1.0\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: x\r\n"
        b"Content-Length: 5\r\n\r\nhello",
    ],
    ids=["content-length", "chunked", "http/1.0"],
)
def test_no_upgrade_head_announcing_a_body_reaches_a_pooled_upstream(
    h: Harness, request_bytes: bytes
) -> None:
    """Through the data plane: the client gets 400 and the connection ends; the
    pooled upstream connection, which the next request (any client's) reuses, got
    nothing, so it is not left waiting for a body that would never come."""
    up = h.pooled_upstream()
    conn, client = h.client()
    conn.data_received(request_bytes + NEXT)
    answer = client.data()
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert b"upgrade request with a body" in answer
    # closed, or (plain HTTP) half-closed while the client may still be sending
    assert client.closed or client.eof_written
    assert up.data() == b""
    h.loop.run_ready()
    assert client.data() == b"", "nothing after the refusal"
    assert up.data() == b""
