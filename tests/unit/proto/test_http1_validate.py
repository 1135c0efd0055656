"""validate_request and parse_host: one test per policy rule."""

from __future__ import annotations

import pytest

from tlsgate.errors import ClientProtocolError, ProtocolError
from tlsgate.proto.http1 import Headers, RequestInfo, parse_host, validate_request

LIMITS = {"max_headers": 100, "max_header_size": 64 * 1024, "max_body_size": 0}


def validate(
    headers: Headers | None = None,
    *,
    method: bytes = b"GET",
    target: bytes = b"/",
    version: str = "1.1",
    **limits: int,
) -> RequestInfo:
    if headers is None:
        headers = [(b"Host", b"example.com")]
    lim = {**LIMITS, **limits}
    return validate_request(
        method,
        target,
        version,
        headers,
        max_headers=lim["max_headers"],
        max_header_size=lim["max_header_size"],
        max_body_size=lim["max_body_size"],
    )


def rejected(*args: object, **kwargs: object) -> int:
    """Run validate() expecting a ClientProtocolError; return its status hint."""
    with pytest.raises(ClientProtocolError) as info:
        validate(*args, **kwargs)  # type: ignore[arg-type]
    return info.value.status_hint


# --- the happy path --------------------------------------------------------------------


def test_simple_get() -> None:
    info = validate([(b"Host", b"Example.COM:8443"), (b"Accept", b"*/*")], target=b"/a/b?x=1&y")
    assert info == RequestInfo(
        method=b"GET",
        target=b"/a/b?x=1&y",
        path="/a/b",
        query="x=1&y",
        host="example.com",
        port=8443,
        http_version="1.1",
        body="none",
        content_length=None,
        keep_alive=True,
        expect_continue=False,
        upgrade=None,
    )
    assert not info.absolute_form


def test_error_is_a_protocol_error_with_status_hint() -> None:
    with pytest.raises(ProtocolError) as info:
        validate([])
    assert info.value.status_hint == 400
    assert "Host" in str(info.value)


# --- limits ----------------------------------------------------------------------------


def test_too_many_headers_is_431() -> None:
    headers = [(b"Host", b"a")] + [(b"X-N", b"%d" % i) for i in range(10)]
    assert validate(headers, max_headers=11).host == "a"
    assert rejected(headers, max_headers=10) == 431


def test_head_size_is_431() -> None:
    # request line: len("GET") + len("/") + 12 = 16; Host: 4 + 1 + 4 = 9
    headers = [(b"Host", b"a")]
    assert validate(headers, max_header_size=25).host == "a"
    assert rejected(headers, max_header_size=24) == 431


def test_long_target_is_414() -> None:
    target = b"/" + b"a" * 100
    assert rejected(target=target, max_header_size=100) == 414
    assert validate(target=target, max_header_size=200).path == target.decode()


def test_content_length_over_limit_is_413() -> None:
    headers: Headers = [(b"Host", b"a"), (b"Content-Length", b"1001")]
    assert rejected(headers, method=b"POST", max_body_size=1000) == 413
    assert validate(headers, method=b"POST", max_body_size=1001).content_length == 1001
    # 0 = unlimited
    assert validate(headers, method=b"POST", max_body_size=0).content_length == 1001


def test_huge_content_length() -> None:
    headers: Headers = [(b"Host", b"a"), (b"Content-Length", b"9" * 5000)]
    assert rejected(headers, max_body_size=0) == 400
    assert rejected(headers, max_body_size=10) == 413
    # leading zeros are digits too
    zeros: Headers = [(b"Host", b"a"), (b"Content-Length", b"0" * 40 + b"7")]
    assert validate(zeros).content_length == 7


# --- header syntax ---------------------------------------------------------------------


@pytest.mark.parametrize("name", [b"", b"Bad Name", b"X:Y", b"X(Y)", b"\xffX", b"X\x00"])
def test_header_name_must_be_token(name: bytes) -> None:
    assert rejected([(b"Host", b"a"), (name, b"v")]) == 400


@pytest.mark.parametrize("value", [b"a\x00b", b"a\rb", b"a\nb", b"\r\n"])
def test_header_value_nul_cr_lf_rejected(value: bytes) -> None:
    assert rejected([(b"Host", b"a"), (b"X-Test", value)]) == 400


def test_header_value_obs_text_and_tab_allowed() -> None:
    assert validate([(b"Host", b"a"), (b"X-Test", b"caf\xc3\xa9\tx")]).host == "a"


@pytest.mark.parametrize("method", [b"", b"G ET", b"GET\r", b"G(T"])
def test_method_must_be_token(method: bytes) -> None:
    assert rejected(method=method) == 400


@pytest.mark.parametrize("version", ["2.0", "1.2", ""])
def test_unsupported_version_is_505(version: str) -> None:
    assert rejected(version=version) == 505


def test_http09_is_400() -> None:
    # llhttp reports a request line without a version as 0.9; HAProxy answers 400 too
    assert rejected(version="0.9") == 400


# --- Host ------------------------------------------------------------------------------


def test_http11_requires_host() -> None:
    assert rejected([(b"Accept", b"*/*")]) == 400


def test_two_host_headers_rejected_even_if_equal() -> None:
    assert rejected([(b"Host", b"a"), (b"host", b"a")]) == 400
    assert rejected([(b"Host", b"a"), (b"HOST", b"b")], version="1.0") == 400


def test_http10_without_host_is_allowed() -> None:
    info = validate([], version="1.0")
    assert (info.host, info.port) == ("", None)


def test_empty_host_is_allowed() -> None:
    # RFC 9112 §3.2: an empty Host when the target URI has no authority.
    assert validate([(b"Host", b"")]).host == ""


@pytest.mark.parametrize(
    "value", [b"a b", b"a/b", b"user@a", b"a:b:c", b"a:99999", b"a:-1", b"[::1", b"[zz::1]", b":80"]
)
def test_invalid_host_rejected(value: bytes) -> None:
    assert rejected([(b"Host", value)]) == 400


def test_ipv6_host() -> None:
    info = validate([(b"Host", b"[2001:DB8::1]:8080")])
    assert (info.host, info.port) == ("2001:db8::1", 8080)


# --- request target --------------------------------------------------------------------


def test_absolute_form_overrides_host() -> None:
    info = validate([(b"Host", b"ignored.example")], target=b"HTTP://Real.Example:81/x/y?q=1")
    assert (info.host, info.port, info.path, info.query) == ("real.example", 81, "/x/y", "q=1")
    assert info.absolute_form


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [(b"http://h", "/", ""), (b"https://h?z", "/", "z"), (b"http://h/", "/", "")],
)
def test_absolute_form_without_path(target: bytes, path: str, query: str) -> None:
    info = validate(target=target)
    assert (info.host, info.path, info.query) == ("h", path, query)


def test_absolute_form_still_needs_a_valid_host_header_in_11() -> None:
    assert rejected([], target=b"http://h/") == 400
    assert rejected([(b"Host", b"bad host")], target=b"http://h/") == 400
    assert validate([], target=b"http://h/", version="1.0").host == "h"


@pytest.mark.parametrize(
    "target",
    [
        b"ftp://h/x",  # not http(s)
        b"http://user:pw@h/x",  # userinfo
        b"http:///x",  # empty host
        b"http://h:x/",  # bad port
        b"example.com:443",  # authority-form without CONNECT
        b"x/y",  # relative
    ],
)
def test_bad_target_forms_rejected(target: bytes) -> None:
    assert rejected(target=target) == 400


@pytest.mark.parametrize("target", [b"/a#frag", b"/a b", b"/\x7f", b"/caf\xc3\xa9", b""])
def test_bad_target_bytes_rejected(target: bytes) -> None:
    assert rejected(target=target) == 400


def test_asterisk_only_for_options() -> None:
    info = validate(method=b"OPTIONS", target=b"*")
    assert (info.path, info.query) == ("/", "")
    assert rejected(method=b"GET", target=b"*") == 400


def test_connect_is_405() -> None:
    with pytest.raises(ClientProtocolError, match="CONNECT is not supported") as info:
        validate(method=b"CONNECT", target=b"example.com:443")
    assert info.value.status_hint == 405


def test_percent_encoding_is_kept_in_path() -> None:
    assert validate(target=b"/a%2Fb/%7e?x=%20").path == "/a%2Fb/%7e"


# --- body framing ----------------------------------------------------------------------


def test_content_length_body() -> None:
    info = validate([(b"Host", b"a"), (b"Content-Length", b"42")], method=b"POST")
    assert (info.body, info.content_length) == ("length", 42)


def test_content_length_zero_is_kept_as_length() -> None:
    info = validate([(b"Host", b"a"), (b"Content-Length", b"0")], method=b"POST")
    assert (info.body, info.content_length) == ("length", 0)


def test_chunked_body() -> None:
    info = validate([(b"Host", b"a"), (b"Transfer-Encoding", b"Chunked")], method=b"POST")
    assert (info.body, info.content_length) == ("chunked", None)


def test_te_with_content_length_rejected() -> None:
    headers: Headers = [
        (b"Host", b"a"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Content-Length", b"5"),
    ]
    assert rejected(headers) == 400


@pytest.mark.parametrize("te", [b"gzip", b"chunked, gzip", b"", b" , ", b"chunked;foo=bar"])
def test_te_must_end_in_chunked(te: bytes) -> None:
    assert rejected([(b"Host", b"a"), (b"Transfer-Encoding", te)]) == 400


def test_te_chunked_twice_rejected() -> None:
    assert rejected([(b"Host", b"a"), (b"Transfer-Encoding", b"chunked, chunked")]) == 400
    two_lines: Headers = [
        (b"Host", b"a"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Transfer-Encoding", b"chunked"),
    ]
    assert rejected(two_lines) == 400


@pytest.mark.parametrize("te", [b"gzip, chunked", b"identity,chunked"])
def test_other_codings_are_501(te: bytes) -> None:
    assert rejected([(b"Host", b"a"), (b"Transfer-Encoding", te)]) == 501


def test_te_split_over_lines_is_one_list() -> None:
    headers: Headers = [
        (b"Host", b"a"),
        (b"Transfer-Encoding", b"gzip"),
        (b"Transfer-Encoding", b"chunked"),
    ]
    assert rejected(headers) == 501


def test_te_in_http10_rejected() -> None:
    assert rejected([(b"Transfer-Encoding", b"chunked")], version="1.0") == 400


def test_two_content_lengths_rejected() -> None:
    headers: Headers = [(b"Host", b"a"), (b"Content-Length", b"5"), (b"Content-Length", b"5")]
    assert rejected(headers) == 400


@pytest.mark.parametrize("value", [b"5, 5", b"-1", b"+5", b"0x10", b"", b"1 2", b"\xd9\xa1"])
def test_content_length_must_be_digits(value: bytes) -> None:
    assert rejected([(b"Host", b"a"), (b"Content-Length", value)]) == 400


# --- connection management -------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "connection", "keep_alive"),
    [
        ("1.1", None, True),
        ("1.1", b"close", False),
        ("1.1", b"Keep-Alive, CLOSE", False),
        ("1.0", None, False),
        ("1.0", b"keep-alive", True),
        ("1.0", b"Keep-Alive", True),
        ("1.0", b"keep-alive, close", False),
    ],
)
def test_keep_alive(version: str, connection: bytes | None, keep_alive: bool) -> None:
    headers: Headers = [(b"Host", b"a")]
    if connection is not None:
        headers.append((b"Connection", connection))
    assert validate(headers, version=version).keep_alive is keep_alive


def test_expect_continue() -> None:
    assert validate([(b"Host", b"a"), (b"Expect", b"100-Continue")]).expect_continue
    assert not validate([(b"Host", b"a")]).expect_continue
    # RFC 9110 §10.1.1: ignored in HTTP/1.0
    assert not validate([(b"Expect", b"100-continue")], version="1.0").expect_continue


def test_upgrade_needs_connection_upgrade() -> None:
    ws: Headers = [
        (b"Host", b"a"),
        (b"Connection", b"keep-alive, Upgrade"),
        (b"Upgrade", b"WebSocket"),
    ]
    assert validate(ws).upgrade == b"websocket"
    no_conn: Headers = [(b"Host", b"a"), (b"Upgrade", b"websocket")]
    assert validate(no_conn).upgrade is None
    no_upgrade: Headers = [(b"Host", b"a"), (b"Connection", b"upgrade")]
    assert validate(no_upgrade).upgrade is None
    # RFC 9110 §7.8: ignored in HTTP/1.0
    assert validate(ws, version="1.0").upgrade is None


# --- parse_host ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"Example.com", ("example.com", None)),
        (b"example.com.", ("example.com.", None)),
        (b"example.com:0", ("example.com", 0)),
        (b"example.com:65535", ("example.com", 65535)),
        (b"example.com:", ("example.com", None)),
        (b"10.0.0.1:80", ("10.0.0.1", 80)),
        (b"[::1]", ("::1", None)),
        (b"[::1]:", ("::1", None)),  # RFC 3986 allows an empty port: none
        (b"[::FFFF:1.2.3.4]:443", ("::ffff:1.2.3.4", 443)),
        (b"xn--caf-dma.example", ("xn--caf-dma.example", None)),
        (b"a%41b", ("a%41b", None)),
        (b" spaced ", ("spaced", None)),
        (b"", ("", None)),
    ],
)
def test_parse_host_valid(value: bytes, expected: tuple[str, int | None]) -> None:
    assert parse_host(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        b"a,b",
        b"a;b",
        b"a=b",
        b"a%4",
        b"caf\xc3\xa9",
        b"[::1]x",
        b"[fe80::1%25eth0]",
        b"[v1.abc]",
        b"::1",
        b"a:123456",
        b"a:6553 6",
        b":",
    ],
)
def test_parse_host_invalid(value: bytes) -> None:
    with pytest.raises(ClientProtocolError) as info:
        parse_host(value)
    assert info.value.status_hint == 400
