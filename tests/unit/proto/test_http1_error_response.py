"""``error_response`` with a request id and without a detail (the generic 5xx page)."""

from __future__ import annotations

import httptools
import pytest

from tlsgate.errors import LocalProtocolError
from tlsgate.proto.http1 import Headers, error_response


class _Collector:
    def __init__(self) -> None:
        self.headers: Headers = []
        self.body = b""

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body += body


def parse(data: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    c = _Collector()
    p = httptools.HttpResponseParser(c)
    p.feed_data(data)
    return p.get_status_code(), {n.lower(): v for n, v in c.headers}, c.body


def test_a_generic_page_with_a_request_id() -> None:
    status, fields, body = parse(error_response(502, "", request_id="0123456789abcdef"))
    assert status == 502
    assert body == b"502 Bad Gateway\nrequest id: 0123456789abcdef\n"
    assert fields[b"x-request-id"] == b"0123456789abcdef"
    assert fields[b"content-length"] == str(len(body)).encode()


def test_a_4xx_page_keeps_its_detail_before_the_request_id() -> None:
    _, fields, body = parse(error_response(400, "malformed request", request_id="abc"))
    assert body == b"400 Bad Request: malformed request\nrequest id: abc\n"
    assert fields[b"x-request-id"] == b"abc"


def test_without_a_request_id_there_is_no_id_line_or_field() -> None:
    _, fields, body = parse(error_response(503, ""))
    assert body == b"503 Service Unavailable\n"
    assert b"x-request-id" not in fields


def test_head_keeps_the_length_of_the_page_with_its_id() -> None:
    full = error_response(504, "", request_id="00ff")
    head = error_response(504, "", request_id="00ff", head=True)
    assert full.startswith(head)
    assert full[len(head) :] == b"504 Gateway Timeout\nrequest id: 00ff\n"


@pytest.mark.parametrize("rid", ["a b", "a\r\nX-Evil: 1", "é"])
def test_an_invalid_request_id_is_refused(rid: str) -> None:
    with pytest.raises(LocalProtocolError):
        error_response(502, "", request_id=rid)
