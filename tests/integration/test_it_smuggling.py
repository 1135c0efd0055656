"""Request smuggling shapes are answered 400 (501 for an unknown transfer coding),
the connection is closed, and the app server never sees them.

Each request carries a unique marker in its target and is followed, in the same
write, by a second ("smuggled") request with its own marker. A proxy that
frames the first request differently from the rule the app follows would
deliver the smuggled one as a separate request; tlsgate must deliver neither.
The app server records every byte it receives, so "never seen" is checked on
raw bytes, not only on parsed requests.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from appserver import AppServer
from harness import Pki, RawConn, Tlsgate, app_saw, client_context, free_port, table

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@dataclass
class SmugStack:
    gate: Tlsgate
    app: AppServer
    http_port: int
    https_port: int
    pki: Pki


@pytest.fixture(scope="module")
def stack(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmugStack]:
    app = AppServer("smuggling").start()
    http_port, https_port = free_port(), free_port()
    config = (
        pki.toml()
        + table(
            "listeners",
            name="http",
            bind=[f"127.0.0.1:{http_port}"],
            protocol="http",
            backend="app",
        )
        + table(
            "listeners",
            name="https",
            bind=[f"127.0.0.1:{https_port}"],
            protocol="https",
            backend="app",
            default_certificate="main-ecdsa",
        )
        + table("backends", name="app", servers=[app.address])
    )
    gate = Tlsgate(tmp_path_factory.mktemp("smuggling"), config)
    try:
        gate.start()
        yield SmugStack(gate, app, http_port, https_port, pki)
    finally:
        gate.kill()
        app.stop()


H = "POST /{outer} HTTP/1.1\r\nHost: localhost\r\n"
SMUGGLED = "GET /{inner} HTTP/1.1\r\nHost: localhost\r\n\r\n"

# name -> (request text with {outer}/{inner}, acceptable statuses, head detectable?)
# "head detectable": the problem is in the request head, so not even the head may
# reach the app. An invalid chunk size shows only in the body, after a streaming
# proxy may already have sent the head on; the smuggled request must still never
# arrive.
SHAPES: dict[str, tuple[str, set[int], bool]] = {
    # RFC 9112 6.1: "A server MAY reject a request that contains both
    # Content-Length and Transfer-Encoding ... Regardless, the server MUST close the
    # connection after responding to such a request".
    "cl-then-te": (
        H + "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
        {400},
        True,
    ),
    "te-then-cl": (
        H + "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n" + SMUGGLED,
        {400},
        True,
    ),
    # RFC 9112 6.3: "If a message is received without Transfer-Encoding and with an
    # invalid Content-Length header field, then the message framing is invalid and
    # the recipient MUST treat it as an unrecoverable error ... the server MUST
    # respond with a 400 (Bad Request) status code and then close the connection."
    "duplicate-cl": (
        H + "Content-Length: 5\r\nContent-Length: 47\r\n\r\nhello" + SMUGGLED,
        {400},
        True,
    ),
    "cl-list": (H + "Content-Length: 5, 47\r\n\r\nhello" + SMUGGLED, {400}, True),
    "cl-plus": (H + "Content-Length: +5\r\n\r\nhello" + SMUGGLED, {400}, True),
    "cl-hex": (H + "Content-Length: 0x5\r\n\r\nhello" + SMUGGLED, {400}, True),
    "cl-negative": (H + "Content-Length: -1\r\n\r\n" + SMUGGLED, {400}, True),
    "cl-inner-space": (H + "Content-Length: 5 5\r\n\r\nhello" + SMUGGLED, {400}, True),
    "invalid-chunk-size": (
        H + "Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n" + SMUGGLED,
        {400},
        False,
    ),
    "chunk-size-overflow": (
        H + "Transfer-Encoding: chunked\r\n\r\n1" + "0" * 20 + "5\r\nhello\r\n0\r\n\r\n" + SMUGGLED,
        {400, 413},
        False,
    ),
    # RFC 9112 5.2: "A server that receives an obs-fold in a request message ... MUST
    # either reject the message by sending a 400 (Bad Request) ... or replace each
    # received obs-fold with one or more SP octets"; tlsgate rejects.
    "obs-fold": (
        H + "Content-Length: 4\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
        {400},
        True,
    ),
    "obs-fold-plain": (
        H + "X-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n" + SMUGGLED,
        {400},
        True,
    ),
    # RFC 9112 2.2: "a recipient of such a bare CR MUST consider that element to be
    # invalid or replace each bare CR with SP before processing the element".
    "bare-cr": (H + "X-Bad: a\rb\r\nContent-Length: 0\r\n\r\n" + SMUGGLED, {400}, True),
    "bare-cr-in-te": (
        H + "Transfer-Encoding: \rchunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n" + SMUGGLED,
        {400},
        True,
    ),
    # RFC 9112 6.3: "If a Transfer-Encoding header field is present in a request and
    # the chunked transfer coding is not the final encoding, the message body length
    # cannot be determined reliably; the server MUST respond with the 400 (Bad
    # Request) status code and then close the connection."
    "te-chunked-not-last": (
        H + "Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n" + SMUGGLED,
        {400},
        True,
    ),
    # RFC 9112 6.1: "A server that receives a request message with a transfer coding
    # it does not understand SHOULD respond with 501 (Not Implemented)."
    "te-unknown": (H + "Transfer-Encoding: foo\r\n\r\n0\r\n\r\n" + SMUGGLED, {400, 501}, True),
    "te-xchunked": (
        H + "Transfer-Encoding: xchunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n" + SMUGGLED,
        {400, 501},
        True,
    ),
    # RFC 9112 7: "A sender MUST NOT apply the chunked transfer coding more than once".
    "te-chunked-twice": (
        H + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
        {400, 501},
        True,
    ),
    # RFC 9112 5.1: "A server MUST reject, with a response status code of 400 (Bad
    # Request), any received request message that contains whitespace between a
    # header field name and colon."
    "space-before-colon": (
        H + "Transfer-Encoding : chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n" + SMUGGLED,
        {400},
        True,
    ),
}


def _send_shape(c: RawConn, text: str) -> tuple[str, str, int, bool]:
    outer, inner = f"outer-{uuid.uuid4().hex}", f"inner-{uuid.uuid4().hex}"
    c.send(text.format(outer=outer, inner=inner).encode("latin-1"))
    resp = c.read_response()
    closed = c.closed_by_peer(5)
    return outer, inner, resp.status, closed


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_smuggling_shape_is_rejected_and_never_forwarded(stack: SmugStack, shape: str) -> None:
    text, statuses, head_detectable = SHAPES[shape]
    with RawConn(stack.http_port) as c:
        outer, inner, status, closed = _send_shape(c, text)
    assert status in statuses
    assert closed, "the connection must be closed after a framing error"
    time.sleep(0.2)  # anything forwarded would have reached the app by now
    assert not app_saw(stack.app.address, inner), "the smuggled request reached the app"
    if head_detectable:
        assert not app_saw(stack.app.address, outer), "a malformed head reached the app"


@pytest.mark.parametrize("shape", ["cl-then-te", "duplicate-cl", "obs-fold"])
def test_smuggling_over_tls(stack: SmugStack, shape: str) -> None:
    text, statuses, _ = SHAPES[shape]
    tls = client_context(stack.pki.ca_pem)
    with RawConn(stack.https_port, tls=tls, server_hostname="localhost") as c:
        outer, inner, status, closed = _send_shape(c, text)
    assert status in statuses
    assert closed
    time.sleep(0.2)
    assert not app_saw(stack.app.address, inner)
    assert not app_saw(stack.app.address, outer)


def test_valid_requests_after_a_rejected_one_still_work(stack: SmugStack) -> None:
    """Control: a well-formed chunked request with a marker is forwarded, and the
    marker check does find it."""
    marker = f"fine-{uuid.uuid4().hex}"
    with RawConn(stack.http_port) as c:
        c.send(
            (
                f"POST /{marker} HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
                "5\r\nhello\r\n0\r\n\r\n"
            ).encode()
        )
        resp = c.read_response()
    assert resp.status == 200
    assert resp.json()["body_len"] == 5
    assert app_saw(stack.app.address, marker)
