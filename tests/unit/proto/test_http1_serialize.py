"""Serialization helpers: heads, chunks, tlsgate's own responses, https redirects."""

from __future__ import annotations

import re

import httptools
import pytest

from tlsgate.errors import ClientProtocolError, LocalProtocolError
from tlsgate.proto.http1 import (
    Headers,
    RequestInfo,
    encode_chunk,
    error_response,
    https_redirect_location,
    last_chunk,
    redirect_response,
    request_head_bytes,
    response_head_bytes,
    validate_request,
)


class _Collector:
    """httptools callbacks, so our bytes are checked by the same parser the data plane uses."""

    def __init__(self) -> None:
        self.headers: Headers = []
        self.body = b""
        self.done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True


def parse_response(data: bytes) -> tuple[int, _Collector]:
    c = _Collector()
    p = httptools.HttpResponseParser(c)
    p.feed_data(data)
    assert c.done
    return p.get_status_code(), c


def without_date(data: bytes) -> bytes:
    return re.sub(rb"\r\nDate: [^\r]*", b"", data)


def info_for(target: bytes, host: bytes = b"example.com", method: bytes = b"GET") -> RequestInfo:
    return validate_request(
        method,
        target,
        "1.1",
        [(b"Host", host)],
        max_headers=100,
        max_header_size=65536,
        max_body_size=0,
    )


def test_request_head_origin_form() -> None:
    info = info_for(b"/a?b=1")
    head = request_head_bytes(info, [(b"Host", b"example.com"), (b"X-A", b"1")])
    assert head == b"GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nX-A: 1\r\n\r\n"


@pytest.mark.parametrize(
    ("target", "sent"),
    [
        (b"http://h:81/x/y?q", b"/x/y?q"),
        (b"http://h", b"/"),
        (b"https://h?q=1", b"/?q=1"),
        (b"/x?", b"/x?"),  # origin-form is sent byte for byte
    ],
)
def test_request_head_converts_absolute_form(target: bytes, sent: bytes) -> None:
    head = request_head_bytes(info_for(target), [])
    assert head == b"GET " + sent + b" HTTP/1.1\r\n\r\n"


def test_request_head_is_always_http11() -> None:
    info = validate_request(
        b"OPTIONS", b"*", "1.0", [], max_headers=10, max_header_size=1000, max_body_size=0
    )
    assert request_head_bytes(info, [(b"Host", b"")]) == b"OPTIONS * HTTP/1.1\r\nHost: \r\n\r\n"


def test_response_head() -> None:
    assert response_head_bytes(200, b"Fine", [(b"A", b"1")]) == b"HTTP/1.1 200 Fine\r\nA: 1\r\n\r\n"
    assert response_head_bytes(404, b"", []) == b"HTTP/1.1 404 Not Found\r\n\r\n"
    assert response_head_bytes(599, b"", []) == b"HTTP/1.1 599 \r\n\r\n"
    # an unsafe reason is replaced
    assert response_head_bytes(200, b"x\r\nEvil: 1", []) == b"HTTP/1.1 200 OK\r\n\r\n"
    with pytest.raises(LocalProtocolError):
        response_head_bytes(42, b"", [])


def test_chunks() -> None:
    assert encode_chunk(b"hello") == b"5\r\nhello\r\n"
    assert encode_chunk(b"x" * 255) == b"ff\r\n" + b"x" * 255 + b"\r\n"
    assert encode_chunk(b"") == b""
    assert last_chunk([]) == b"0\r\n\r\n"
    assert last_chunk([(b"X-Sum", b"abc")]) == b"0\r\nX-Sum: abc\r\n\r\n"


def test_chunks_parse_back() -> None:
    head = response_head_bytes(200, b"", [(b"Transfer-Encoding", b"chunked")])
    data = head + encode_chunk(b"abc") + encode_chunk(b"") + encode_chunk(b"de") + last_chunk([])
    status, c = parse_response(data)
    assert (status, c.body) == (200, b"abcde")


def test_error_response() -> None:
    data = error_response(502, "no server answered")
    status, c = parse_response(data)
    assert status == 502
    assert c.body == b"502 Bad Gateway: no server answered\n"
    h = {n.lower(): v for n, v in c.headers}
    assert h[b"content-type"] == b"text/plain; charset=utf-8"
    assert h[b"content-length"] == str(len(c.body)).encode()
    assert h[b"cache-control"] == b"no-store"
    assert h[b"connection"] == b"close"
    assert re.fullmatch(rb"[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT", h[b"date"])


def test_error_response_keep_alive_extra_headers_and_utf8() -> None:
    data = error_response(
        429, "trop de requêtes", close=False, extra_headers=[(b"Retry-After", b"5")]
    )
    _, c = parse_response(data)
    h = {n.lower(): v for n, v in c.headers}
    assert b"connection" not in h
    assert h[b"retry-after"] == b"5"
    assert c.body.decode("utf-8") == "429 Too Many Requests: trop de requêtes\n"


def test_error_response_head_has_no_body() -> None:
    # (the Date line may differ if a second boundary passes between the calls)
    full = without_date(error_response(404, "nothing here"))
    head_only = without_date(error_response(404, "nothing here", head=True))
    assert full.startswith(head_only)
    assert head_only.endswith(b"\r\n\r\n")
    assert full[len(head_only) :] == b"404 Not Found: nothing here\n"
    assert b"Content-Length: 28\r\n" in head_only


def test_error_response_405_has_allow() -> None:
    data = error_response(405, "CONNECT is not supported")
    assert b"\r\nAllow: GET, HEAD, POST" in data
    custom = error_response(405, "x", extra_headers=[(b"Allow", b"GET")])
    assert custom.count(b"Allow:") == 1


def test_error_response_rejects_bad_extra_headers() -> None:
    with pytest.raises(LocalProtocolError):
        error_response(400, "x", extra_headers=[(b"X", b"a\r\nb")])


def test_redirect_response() -> None:
    data = redirect_response("https://example.com/a?b")
    status, c = parse_response(data)
    h = {n.lower(): v for n, v in c.headers}
    assert status == 308
    assert data.startswith(b"HTTP/1.1 308 Permanent Redirect\r\n")
    assert h[b"location"] == b"https://example.com/a?b"
    assert h[b"content-length"] == b"0"
    assert b"connection" not in h
    assert b"Connection: close" in redirect_response("/x", status=301, close=True)


@pytest.mark.parametrize("location", ["https://a/\r\nSet-Cookie: x=1", "https://a/ b", "/é"])
def test_redirect_response_rejects_unsafe_location(location: str) -> None:
    with pytest.raises(LocalProtocolError):
        redirect_response(location)


def test_redirect_response_status_must_be_3xx() -> None:
    with pytest.raises(LocalProtocolError):
        redirect_response("/x", status=200)


@pytest.mark.parametrize(
    ("target", "host", "port", "location"),
    [
        (b"/a/b?c=d", b"example.com", 443, "https://example.com/a/b?c=d"),
        (b"/a/b?c=d", b"example.com:80", 8443, "https://example.com:8443/a/b?c=d"),
        (b"/", b"[2001:db8::1]:80", 443, "https://[2001:db8::1]/"),
        (b"/x", b"[::1]", 8443, "https://[::1]:8443/x"),
        (b"/x?", b"h", 443, "https://h/x?"),
        (b"http://other:80/p?q", b"h", 443, "https://other/p?q"),
    ],
)
def test_https_redirect_location(target: bytes, host: bytes, port: int, location: str) -> None:
    assert https_redirect_location(info_for(target, host), port) == location


def test_https_redirect_location_for_asterisk() -> None:
    assert https_redirect_location(info_for(b"*", method=b"OPTIONS"), 443) == "https://example.com/"


def test_https_redirect_needs_a_host() -> None:
    with pytest.raises(ClientProtocolError):
        https_redirect_location(info_for(b"/", host=b""), 443)
