"""Hypothesis properties of the HTTP/1.1 layer."""

from __future__ import annotations

from typing import Literal

import httptools
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tlsgate.errors import ClientProtocolError
from tlsgate.proto.http1 import (
    HOP_BY_HOP,
    ForwardingContext,
    Headers,
    RequestInfo,
    request_head_bytes,
    rewrite_request_headers,
    validate_request,
)

OURS = {
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-forwarded-port",
    b"forwarded",
}
SPOOFABLE = [b"X-Forwarded-For", b"X-Forwarded-Proto", b"X-Forwarded-Host", b"X-Forwarded-Port"]
SPOOFABLE += [b"X-Forwarded-Server", b"Forwarded", b"X-Real-IP", b"CF-Connecting-IP"]
OTHER = [b"Accept", b"Cookie", b"X-Custom", b"Trailer", b"Expect", b"User-Agent"]
HOP = [b"Connection", b"Keep-Alive", b"Proxy-Connection", b"TE", b"Upgrade"]
HOP += [b"Proxy-Authorization", b"Proxy-Authenticate"]


def any_case(name: bytes) -> st.SearchStrategy[bytes]:
    """``name`` with each letter's case chosen by one bit of a drawn mask."""
    return st.integers(0, (1 << len(name)) - 1).map(
        lambda mask: bytes(
            c ^ 0x20 if mask >> i & 1 and chr(c).isalpha() else c for i, c in enumerate(name)
        )
    )


safe_values = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=12
).map(str.encode)
ip_strings = st.ip_addresses().map(str)


CONNECTION_LISTS = st.lists(st.sampled_from([*SPOOFABLE, *OTHER, *HOP, b"Host"]), max_size=3).map(
    b", ".join
)
header_line = st.one_of(
    st.tuples(any_case(b"Connection"), CONNECTION_LISTS),
    *(st.tuples(any_case(name), safe_values) for name in SPOOFABLE + OTHER + HOP),
)


@st.composite
def request_headers(draw: st.DrawFn) -> Headers:
    host = draw(st.sampled_from([b"example.com", b"a.b:8080", b"[::1]"]))
    return [(b"Host", host), *draw(st.lists(header_line, max_size=12))]


@st.composite
def forwarding(draw: st.DrawFn) -> ForwardingContext:
    proto: Literal["http", "https"] = draw(st.sampled_from(["http", "https"]))
    return ForwardingContext(
        client_ip=draw(ip_strings),
        peer_ip=draw(ip_strings),
        peer_trusted=draw(st.booleans()),
        proto=proto,
        listener_port=draw(st.integers(1, 65535)),
        client_ip_header=draw(st.sampled_from([b"", b"CF-Connecting-IP"])),
    )


def validate(headers: Headers) -> RequestInfo:
    return validate_request(
        b"GET", b"/", "1.1", headers, max_headers=100, max_header_size=65536, max_body_size=0
    )


@settings(suppress_health_check=[HealthCheck.filter_too_much])
@given(request_headers(), forwarding())
def test_rewrite_request_headers_invariants(headers: Headers, fwd: ForwardingContext) -> None:
    try:
        info = validate(headers)
    except ClientProtocolError:
        assume(False)
        raise
    out = rewrite_request_headers(headers, info, fwd)

    options = {
        m.strip().lower() for n, v in headers if n.lower() == b"connection" for m in v.split(b",")
    } - {b"", b"host"}
    for name, value in out:
        lname = name.lower()
        if lname in HOP_BY_HOP:
            # only an upgrade request's own Connection/Upgrade come back
            assert info.upgrade is not None
            assert lname == b"upgrade" or (lname == b"connection" and value == b"upgrade")
        elif lname in options:
            assert lname in OURS, f"Connection-named {lname!r} survived"

    xff = [v for n, v in out if n.lower() == b"x-forwarded-for"]
    assert len(xff) == 1
    if fwd.peer_trusted:
        assert xff[0].split(b", ")[-1] == fwd.peer_ip.encode()
    else:
        # nothing the untrusted peer sent survives
        assert xff == [fwd.client_ip.encode()]
        for name, value in out:
            lname = name.lower()
            assert lname not in (b"x-real-ip", b"x-forwarded-server")
            assert lname != fwd.client_ip_header.lower()
            if lname == b"x-forwarded-proto":
                assert value == fwd.proto.encode()
            if lname == b"x-forwarded-port":
                assert value == str(fwd.listener_port).encode()
            if lname == b"x-forwarded-host":
                assert value == headers[0][1]
    assert [v for n, v in out if n.lower() == b"host"] == [headers[0][1]]


interesting_names = st.sampled_from(
    [b"Host", b"Content-Length", b"Transfer-Encoding", b"Connection", b"Expect", b"Upgrade"]
)
interesting_values = st.sampled_from(
    [b"chunked", b"gzip, chunked", b"5", b"-1", b"close", b"upgrade", b"[::1]:80", b"a:b", b""]
)
header_lines = st.lists(
    st.tuples(
        interesting_names | st.binary(max_size=10), interesting_values | st.binary(max_size=20)
    ),
    max_size=8,
)
targets = st.sampled_from([b"/", b"*", b"http://h/x", b"h:443", b"/a?b"]) | st.binary(max_size=30)
methods = st.sampled_from([b"GET", b"CONNECT", b"OPTIONS"]) | st.binary(max_size=8)


def outcome_of(
    method: bytes,
    target: bytes,
    version: str,
    headers: Headers,
    **limits: int,
) -> RequestInfo | ClientProtocolError:
    """validate_request's result or its ClientProtocolError; anything else propagates."""
    try:
        return validate_request(
            method,
            target,
            version,
            headers,
            max_headers=limits["max_headers"],
            max_header_size=limits["max_header_size"],
            max_body_size=limits["max_body_size"],
        )
    except ClientProtocolError as exc:
        return exc


@given(
    methods,
    targets,
    st.sampled_from(["1.0", "1.1", "2.0", "", "1.1\x00"]),
    header_lines,
    st.integers(0, 20),
    st.integers(0, 300),
    st.integers(0, 10),
)
def test_validate_request_total(
    method: bytes,
    target: bytes,
    version: str,
    headers: Headers,
    max_headers: int,
    max_header_size: int,
    max_body_size: int,
) -> None:
    outcome = outcome_of(
        method,
        target,
        version,
        headers,
        max_headers=max_headers,
        max_header_size=max_header_size,
        max_body_size=max_body_size,
    )
    if isinstance(outcome, ClientProtocolError):
        assert outcome.status_hint in {400, 405, 413, 414, 431, 501, 505}
        return
    info = outcome
    assert isinstance(info, RequestInfo)
    assert info.host == info.host.lower()
    assert (info.body == "length") == (info.content_length is not None)
    assert info.path.startswith("/")
    assert info.http_version in ("1.0", "1.1")


@given(
    st.sampled_from([b"GET", b"POST", b"PURGE"]),
    st.sampled_from([b"/", b"/a/b?c=d", b"http://example.com:8080/x?y", b"https://h"]),
    request_headers(),
    forwarding(),
)
def test_upstream_head_parses_back(
    method: bytes, target: bytes, headers: Headers, fwd: ForwardingContext
) -> None:
    try:
        info = validate_request(
            method, target, "1.1", headers, max_headers=100, max_header_size=65536, max_body_size=0
        )
    except ClientProtocolError:
        return
    out = rewrite_request_headers(headers, info, fwd)
    parsed: Headers = []

    class Callbacks:
        def on_header(self, name: bytes, value: bytes) -> None:
            parsed.append((name, value))

    parser = httptools.HttpRequestParser(Callbacks())
    try:
        parser.feed_data(request_head_bytes(info, out))
    except httptools.HttpParserUpgrade:
        # llhttp stops at the end of an upgrade request's head, as designed
        assert info.upgrade is not None
    else:
        assert info.upgrade is None
    assert parser.get_method() == method
    assert parsed == out
