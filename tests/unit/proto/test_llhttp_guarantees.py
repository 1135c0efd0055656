"""What httptools (llhttp) guarantees about the heads it accepts, which tlsgate relies on.

The data plane calls ``validate_request(..., framed_by_llhttp=True)`` and
``rewrite_response_headers(..., framed_by_llhttp=True)``, which skip scanning
for invalid tokens and NUL/CR/LF in values. That is only sound while the
installed llhttp refuses them itself: these tests prove it does, for requests
and responses, with hand-picked cases and with hypothesis.
"""

from __future__ import annotations

import re
from typing import Any

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class _Collect:
    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.complete = True


def _parse(
    parser_type: type[httptools.HttpRequestParser] | type[httptools.HttpResponseParser],
    data: bytes,
) -> tuple[_Collect, Any] | None:
    """The headers llhttp accepted and the parser, or None when it refused the bytes."""
    sink = _Collect()
    parser = parser_type(sink)
    try:
        parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        pass
    except httptools.HttpParserError:
        return None
    return sink, parser


def _request(data: bytes) -> tuple[_Collect, httptools.HttpRequestParser] | None:
    return _parse(httptools.HttpRequestParser, data)


def _response(data: bytes) -> _Collect | None:
    parsed = _parse(httptools.HttpResponseParser, data)
    return None if parsed is None else parsed[0]


@pytest.mark.parametrize("value", [b"a\x00b", b"a\rb", b"a\nb", b"a\x01b", b"a\x7fb"])
def test_control_characters_in_values_are_refused(value: bytes) -> None:
    assert _request(b"GET / HTTP/1.1\r\nHost: x\r\nX: " + value + b"\r\n\r\n") is None
    assert _response(b"HTTP/1.1 200 OK\r\nX: " + value + b"\r\nContent-Length: 0\r\n\r\n") is None


@pytest.mark.parametrize("name", [b"a b", b"a\x00", b"(a)", b"a@", b"\xff", b"a\tb"])
def test_invalid_name_tokens_are_refused(name: bytes) -> None:
    assert _request(b"GET / HTTP/1.1\r\nHost: x\r\n" + name + b": v\r\n\r\n") is None
    assert _response(b"HTTP/1.1 200 OK\r\n" + name + b": v\r\nContent-Length: 0\r\n\r\n") is None


@pytest.mark.parametrize("method", [b"G(T", b"GET\x00", b"FOO", b"get"])
def test_invalid_methods_are_refused(method: bytes) -> None:
    assert _request(method + b" / HTTP/1.1\r\nHost: x\r\n\r\n") is None


header_bytes = st.binary(min_size=1, max_size=12)


@settings(max_examples=400)
@given(name=header_bytes, value=st.binary(max_size=16))
def test_every_accepted_request_header_is_clean(name: bytes, value: bytes) -> None:
    parsed = _request(b"GET / HTTP/1.1\r\nHost: x\r\n" + name + b": " + value + b"\r\n\r\n")
    if parsed is None or not parsed[0].complete:
        return
    sink, parser = parsed
    assert _TOKEN.fullmatch(parser.get_method())
    for n, v in sink.headers:
        assert _TOKEN.fullmatch(n), n
        assert not ({0, 13, 10} & set(v)), v


@settings(max_examples=400)
@given(name=header_bytes, value=st.binary(max_size=16))
def test_every_accepted_response_header_is_clean(name: bytes, value: bytes) -> None:
    sink = _response(
        b"HTTP/1.1 200 OK\r\n" + name + b": " + value + b"\r\nContent-Length: 0\r\n\r\n"
    )
    if sink is None or not sink.complete:
        return
    for n, v in sink.headers:
        assert _TOKEN.fullmatch(n), n
        assert not ({0, 13, 10} & set(v)), v


@settings(max_examples=300)
@given(method=st.binary(min_size=1, max_size=10))
def test_every_accepted_method_is_a_token(method: bytes) -> None:
    parsed = _request(method + b" / HTTP/1.1\r\nHost: x\r\n\r\n")
    if parsed is None or not parsed[0].complete:
        return
    assert _TOKEN.fullmatch(parsed[1].get_method())
