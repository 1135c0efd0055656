"""Reverse-proxy correctness on the wire: message framing, keep-alive, pipelining,
1xx/HEAD/204/304, Expect: 100-continue, streaming and hop-by-hop fields.

One tlsgate (1 worker) and one in-process app server serve the whole module;
every test talks raw HTTP/1.1 through ``RawConn`` so it sees exactly the bytes
tlsgate sends, or uses httpx where byte-exactness does not matter.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from appserver import AppServer, PatternChecker
from harness import (
    PeerClosed,
    Pki,
    RawConn,
    Tlsgate,
    client_context,
    free_port,
    request_bytes,
    table,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

KiB = 1024
MiB = 1024 * KiB


@dataclass
class Stack:
    gate: Tlsgate
    app: AppServer
    http_port: int
    https_port: int
    pki: Pki

    @property
    def host(self) -> str:
        return f"localhost:{self.http_port}"

    def raw(self) -> RawConn:
        return RawConn(self.http_port)

    def raw_tls(self) -> RawConn:
        return RawConn(
            self.https_port, tls=client_context(self.pki.ca_pem), server_hostname="localhost"
        )


@pytest.fixture(scope="module")
def stack(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    app = AppServer("framing").start()
    http_port, https_port = free_port(), free_port()
    config = (
        pki.toml()
        + table(
            "listeners",
            name="https",
            bind=[f"127.0.0.1:{https_port}"],
            protocol="https",
            backend="app",
            default_certificate="main-ecdsa",
        )
        + table(
            "listeners",
            name="http",
            bind=[f"127.0.0.1:{http_port}"],
            protocol="http",
            backend="app",
        )
        + table("backends", name="app", servers=[app.address], read_timeout="10s")
    )
    gate = Tlsgate(tmp_path_factory.mktemp("framing"), config)
    try:
        gate.start()
        yield Stack(gate, app, http_port, https_port, pki)
    finally:
        gate.kill()
        app.stop()


def header_names(pairs: list[list[str]]) -> set[str]:
    return {k.lower() for k, _ in pairs}


# ---------------------------------------------------------------- bodies


def test_content_length_body_both_ways(stack: Stack) -> None:
    body = bytes(range(256)) * 400  # 100 KiB
    with stack.raw() as c:
        c.send(request_bytes("POST", "/echo", stack.host, body=body))
        resp = c.read_response()
    assert resp.status == 200
    echo = resp.json()
    assert echo["body_len"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert int(resp.header("content-length") or -1) == len(resp.body)


def test_chunked_request_body_with_trailer(stack: Stack) -> None:
    chunks = [b"a" * 10, b"b" * 5000, b"c" * 1]
    wire = b"".join(b"%x\r\n%b\r\n" % (len(c), c) for c in chunks)
    wire += b"0\r\nX-Request-Sum: 42\r\n\r\n"
    head = request_bytes(
        "POST",
        "/echo",
        stack.host,
        [("Transfer-Encoding", "chunked"), ("Trailer", "X-Request-Sum")],
    )
    with stack.raw() as c:
        c.send(head + wire)
        resp = c.read_response()
    assert resp.status == 200
    echo = resp.json()
    whole = b"".join(chunks)
    assert echo["body_len"] == len(whole)
    assert echo["body_sha256"] == hashlib.sha256(whole).hexdigest()
    # The trailer section travels with the last chunk (RFC 9112 7.1.2).
    assert ["X-Request-Sum", "42"] in echo["trailers"]


def test_chunked_response_with_trailer(stack: Stack) -> None:
    with stack.raw() as c:
        c.send(request_bytes("GET", "/trailers", stack.host, [("TE", "trailers")]))
        resp = c.read_response()
    assert resp.status == 200
    expected = b"hello trailers\n" * 100
    assert resp.body == expected
    assert resp.header("transfer-encoding") == "chunked"
    assert ("X-Checksum", hashlib.sha256(expected).hexdigest()) in resp.trailers


@pytest.mark.parametrize("path", ["/stream", "/length"])
def test_streamed_and_sized_responses(stack: Stack, path: str) -> None:
    size = 3 * MiB + 123
    with stack.raw() as c:
        c.send(request_bytes("GET", f"{path}?size={size}", stack.host))
        resp = c.read_response()
        assert resp.status == 200
        checker = PatternChecker()
        checker.feed(resp.body)
        assert checker.received == size
        assert checker.ok
        # The connection is still good for another request.
        c.send(request_bytes("GET", "/echo?again=1", stack.host))
        assert c.read_response().json()["query"] == "again=1"


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_close_delimited_upstream_body(stack: Stack, version: str) -> None:
    """An upstream body that ends when the app closes reaches the client whole."""
    size = 1 * MiB + 7
    with stack.raw() as c:
        c.send(request_bytes("GET", f"/close-delimited?size={size}&version={version}", stack.host))
        resp = c.read_response()
        assert resp.status == 200
        checker = PatternChecker()
        checker.feed(resp.body)
        assert (checker.received, checker.ok) == (size, True)
        framed = resp.header("content-length") is not None or resp.header("transfer-encoding")
        if framed:
            # Re-framed for the client: the client connection can carry on.
            c.send(request_bytes("GET", "/echo?after=close", stack.host))
            assert c.read_response().status == 200


def test_truncated_upstream_body_is_not_passed_off_as_complete(stack: Stack) -> None:
    """The app promises 10 bytes and sends 5: the client must be able to tell."""
    with stack.raw() as c:
        c.send(request_bytes("GET", "/truncated", stack.host))
        try:
            resp = c.read_response()
        except PeerClosed:
            return  # head (maybe) then close before the promised length: detectable
        assert resp.status == 502, f"a truncated body was delivered as complete: {resp}"


# ---------------------------------------------------- HEAD, 1xx, 204, 304


@pytest.mark.parametrize("path", ["/length?size=5000", "/stream?size=5000", "/echo"])
def test_head_has_no_body(stack: Stack, path: str) -> None:
    with stack.raw() as c:
        c.send(request_bytes("HEAD", path, stack.host))
        resp = c.read_response("HEAD")
        assert resp.status == 200
        if path.startswith("/length"):
            # RFC 9110 9.3.2: the server SHOULD send the same header fields as for GET.
            assert resp.header("content-length") == "5000"
        # If any body bytes had been sent, the next response would not parse.
        c.send(request_bytes("GET", "/echo?after=head", stack.host))
        nxt = c.read_response()
        assert nxt.status == 200
        assert nxt.json()["query"] == "after=head"


@pytest.mark.parametrize("code", [204, 304])
def test_bodiless_statuses(stack: Stack, code: int) -> None:
    with stack.raw() as c:
        c.send(request_bytes("GET", f"/status/{code}", stack.host))
        resp = c.read_response()
        assert resp.status == code
        assert resp.body == b""
        # RFC 9110 8.6: "A server MUST NOT send a Content-Length header field in any
        # response with a status code of 1xx (Informational) or 204 (No Content)."
        if code == 204:
            assert resp.header("content-length") is None
            assert resp.header("transfer-encoding") is None
        c.send(request_bytes("GET", "/echo?after=bodiless", stack.host))
        assert c.read_response().json()["query"] == "after=bodiless"


def test_1xx_is_forwarded_before_the_final_response(stack: Stack) -> None:
    # RFC 9110 15.2: "A proxy MUST forward 1xx responses unless the proxy itself
    # requested the generation of the 1xx response."
    with stack.raw() as c:
        c.send(request_bytes("GET", "/early-hints", stack.host))
        resp = c.read_response()
    assert [s for s, _ in resp.interim] == [103]
    assert ("Link", "</style.css>; rel=preload") in resp.interim[0][1]
    assert resp.status == 200
    assert resp.json()["path"] == "/early-hints"


# ------------------------------------------------------- Expect: 100-continue


def test_expect_100_continue(stack: Stack) -> None:
    body = b"x" * 5000
    head = request_bytes(
        "POST",
        "/continue",
        stack.host,
        [("Expect", "100-continue"), ("Content-Length", str(len(body)))],
    )
    with stack.raw() as c:
        c.send(head)
        # The client holds the body back until it is invited to send it.
        c.sock.settimeout(5)
        line = c.read_line()
        assert line.startswith(b"HTTP/1.1 100"), line
        c.read_fields()  # the rest of the 100 head
        c.send(body)
        c.sock.settimeout(10)
        resp = c.read_response()
    assert resp.status == 200
    assert resp.json()["body_len"] == len(body)


def test_expect_100_continue_rejected_without_the_body(stack: Stack) -> None:
    """The app answers 403 before reading: the client gets it without sending the body."""
    head = request_bytes(
        "POST",
        "/continue?status=403",
        stack.host,
        [("Expect", "100-continue"), ("Content-Length", "5000")],
    )
    with stack.raw() as c:
        c.send(head)
        c.sock.settimeout(5)
        resp = c.read_response()  # collects any 1xx in resp.interim
        if resp.interim:
            # tlsgate invited the body itself; the final answer must still be the app's.
            assert resp.interim[0][0] == 100
    assert resp.status == 403


# ---------------------------------------------------------------- streaming


def test_request_body_is_streamed_to_the_app(stack: Stack) -> None:
    """The app answers after the first body byte; tlsgate must not wait for the rest."""
    head = request_bytes("POST", "/first-byte", stack.host, [("Content-Length", str(1 * MiB))])
    with stack.raw() as c:
        c.send(head + b"x" * 100)
        c.sock.settimeout(5)
        resp = c.read_response()
    assert resp.status == 200
    assert resp.body == b"got the first byte\n"


def test_response_body_is_streamed_to_the_client(stack: Stack) -> None:
    with stack.raw() as c:
        start = time.monotonic()
        c.send(request_bytes("GET", "/drip?n=3&interval=1.5", stack.host))
        c.sock.settimeout(10)
        while b"drip 0" not in c.buf:
            assert c.recv_more(), "closed before the first piece"
        first = time.monotonic() - start
        resp = c.read_response()
        total = time.monotonic() - start
    # The first piece left the app at once, the last after 3 s: buffering would
    # deliver the first one no earlier than the last.
    assert first < 1.5, f"first piece after {first:.2f}s"
    assert total >= 2.9
    assert resp.status == 200
    assert resp.body == b"drip 0\ndrip 1\ndrip 2\n"


# ------------------------------------------------------------ hop-by-hop


def test_hop_by_hop_request_fields_are_not_forwarded(stack: Stack) -> None:
    # RFC 9110 7.6.1: "Intermediaries SHOULD remove or replace fields that are known
    # to require removal before forwarding, whether or not they appear as
    # connection-options, after applying those fields' semantics." ... "a proxy or
    # gateway MUST parse a received Connection header field before a message is
    # forwarded and, for each connection-option in this field, remove any header or
    # trailer field(s) from the message with the same name as the connection-option".
    headers = [
        ("Connection", "keep-alive, X-Hop-Secret"),
        ("X-Hop-Secret", "must-not-pass"),
        ("Keep-Alive", "timeout=300"),
        ("Proxy-Connection", "keep-alive"),
        ("TE", "gzip"),
        ("X-End-To-End", "kept"),
    ]
    with stack.raw() as c:
        c.send(request_bytes("GET", "/echo", stack.host, headers))
        echo = c.read_response().json()
    got = {k.lower(): v for k, v in echo["headers"]}
    assert "x-hop-secret" not in got
    assert "keep-alive" not in got
    assert "proxy-connection" not in got
    assert "gzip" not in got.get("te", "")
    assert "x-hop-secret" not in got.get("connection", "").lower()
    assert got["x-end-to-end"] == "kept"


def test_hop_by_hop_response_fields_are_not_forwarded(stack: Stack) -> None:
    query = "&".join(
        "h=" + h.replace(" ", "%20")
        for h in (
            "Connection: X-App-Secret",
            "X-App-Secret: s3cret",
            "Keep-Alive: timeout=99",
            "X-End-To-End: kept",
        )
    )
    with stack.raw() as c:
        c.send(request_bytes("GET", f"/respond?{query}", stack.host))
        resp = c.read_response()
    assert resp.status == 200
    assert resp.header("x-app-secret") is None
    assert "timeout=99" not in (resp.header("keep-alive") or "")
    assert "x-app-secret" not in (resp.header("connection") or "").lower()
    assert resp.header("x-end-to-end") == "kept"


# ---------------------------------------------------- pipelining, keep-alive


def test_pipelined_requests_are_answered_in_order(stack: Stack) -> None:
    burst = b"".join(
        request_bytes("GET", target, stack.host)
        for target in ("/slow?delay=0.5&n=1", "/echo?n=2", "/echo?n=3")
    )
    with stack.raw() as c:
        c.send(burst)  # one write: all three arrive together
        queries = [c.read_response().json()["query"] for _ in range(3)]
    assert queries == ["delay=0.5&n=1", "n=2", "n=3"]


def test_pipelined_requests_over_tls(stack: Stack) -> None:
    burst = b"".join(
        request_bytes(
            "POST" if i == 2 else "GET", f"/echo?n={i}", stack.host, body=b"b" * (i == 2) * 2
        )
        for i in range(1, 4)
    )
    with stack.raw_tls() as c:
        c.send(burst)
        answers = [c.read_response().json() for _ in range(3)]
    assert [a["query"] for a in answers] == ["n=1", "n=2", "n=3"]
    assert [a["body_len"] for a in answers] == [0, 2, 0]


def test_keep_alive_reuses_one_upstream_connection(stack: Stack) -> None:
    with httpx.Client(timeout=10) as client:
        answers = [
            client.get(f"http://127.0.0.1:{stack.http_port}/echo?i={i}").json() for i in range(6)
        ]
    conn_ids = {a["conn_id"] for a in answers}
    assert len(conn_ids) == 1, f"upstream connections used: {conn_ids}"
    counts = [a["requests_on_conn"] for a in answers]
    assert counts == sorted(counts), counts
    assert len(set(counts)) == 6, counts


def test_keep_alive_on_the_client_side(stack: Stack) -> None:
    with stack.raw() as c:
        for i in range(5):
            c.send(request_bytes("GET", f"/echo?i={i}", stack.host))
            assert c.read_response().json()["query"] == f"i={i}"
        c.send(request_bytes("GET", "/echo?last", stack.host, [("Connection", "close")]))
        assert c.read_response().status == 200
        # RFC 9112 9.6: a server that receives a "close" connection option MUST
        # initiate closure of the connection after it sends the final response.
        assert c.closed_by_peer(5)


def test_http10_client_gets_a_whole_response(stack: Stack) -> None:
    with stack.raw() as c:
        c.send(b"GET /stream?size=10000 HTTP/1.0\r\nHost: localhost\r\n\r\n")
        resp = c.read_response()
        # An HTTP/1.0 client cannot parse chunked: length or close delimits it.
        assert "chunked" not in (resp.header("transfer-encoding") or "")
    checker = PatternChecker()
    checker.feed(resp.body)
    assert (checker.received, checker.ok) == (10000, True)


def test_echo_json_is_what_the_app_saw(stack: Stack) -> None:
    """Sanity: the proxied request line reaches the app unchanged."""
    with stack.raw() as c:
        c.send(request_bytes("GET", "/echo?a=1&b=%20x", stack.host))
        echo = c.read_response().json()
    assert echo["name"] == "framing"
    assert echo["method"] == "GET"
    assert echo["target"] == "/echo?a=1&b=%20x"
