"""rewrite_request_headers / rewrite_response_headers: hop-by-hop and forwarding rules."""

from __future__ import annotations

from typing import Literal

import pytest

from tlsgate.errors import UpstreamProtocolError
from tlsgate.proto.http1 import (
    HOP_BY_HOP,
    ForwardingContext,
    Headers,
    RequestInfo,
    default_authority,
    rewrite_request_headers,
    rewrite_response_headers,
    validate_request,
)


def info_for(headers: Headers, *, target: bytes = b"/", version: str = "1.1") -> RequestInfo:
    return validate_request(
        b"GET", target, version, headers, max_headers=100, max_header_size=65536, max_body_size=0
    )


def ctx(
    *,
    client: str = "203.0.113.7",
    peer: str | None = None,
    trusted: bool = False,
    proto: Literal["http", "https"] = "https",
    port: int = 443,
    ip_header: bytes = b"",
    authority: bytes = b"",
) -> ForwardingContext:
    return ForwardingContext(
        client_ip=client,
        peer_ip=client if peer is None else peer,
        peer_trusted=trusted,
        proto=proto,
        listener_port=port,
        client_ip_header=ip_header,
        authority=authority,
    )


def values(headers: Headers, name: bytes) -> list[bytes]:
    return [v for n, v in headers if n.lower() == name.lower()]


def names(headers: Headers) -> list[bytes]:
    return [n.lower() for n, _ in headers]


def rewrite(
    headers: Headers,
    fwd: ForwardingContext | None = None,
    *,
    target: bytes = b"/",
    version: str = "1.1",
) -> Headers:
    info = info_for(headers, target=target, version=version)
    return rewrite_request_headers(headers, info, fwd or ctx())


# --- hop-by-hop -------------------------------------------------------------------------------


def test_hop_by_hop_set_follows_rfc9110() -> None:
    assert {b"connection", b"keep-alive", b"te", b"transfer-encoding", b"upgrade"} <= HOP_BY_HOP
    assert {b"proxy-connection", b"proxy-authenticate", b"proxy-authorization"} <= HOP_BY_HOP
    assert b"trailer" not in HOP_BY_HOP  # end-to-end since RFC 7230 (RFC 9110 §6.6.2)
    assert all(n == n.lower() for n in HOP_BY_HOP)


def test_hop_by_hop_removed_and_input_untouched() -> None:
    headers: Headers = [
        (b"Host", b"example.com"),
        (b"Connection", b"keep-alive"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Proxy-Connection", b"keep-alive"),
        (b"TE", b"trailers"),
        (b"Proxy-Authorization", b"Basic eA=="),
        (b"Upgrade", b"websocket"),  # no "Connection: upgrade": not an upgrade
        (b"Trailer", b"X-Checksum"),
        (b"Accept", b"*/*"),
    ]
    before = list(headers)
    out = rewrite(headers)
    assert headers == before
    assert not set(names(out)) & HOP_BY_HOP
    assert (b"Trailer", b"X-Checksum") in out
    assert (b"Accept", b"*/*") in out
    assert out[0] == (b"Host", b"example.com")


def test_connection_named_headers_removed() -> None:
    headers: Headers = [
        (b"Host", b"example.com"),
        (b"Connection", b"X-Secret, close"),
        (b"connection", b"x-other"),
        (b"x-secret", b"1"),
        (b"X-Other", b"2"),
        (b"X-Kept", b"3"),
    ]
    out = rewrite(headers)
    assert values(out, b"x-secret") == []
    assert values(out, b"x-other") == []
    assert values(out, b"x-kept") == [b"3"]


def test_connection_close_removes_a_close_field() -> None:
    # "Close" is a reserved field name (RFC 9110 §16.3.1): drop it as named.
    out = rewrite([(b"Host", b"a"), (b"Connection", b"close"), (b"Close", b"x")])
    assert values(out, b"close") == []
    assert values(out, b"connection") == []


def test_connection_cannot_remove_host() -> None:
    out = rewrite([(b"Host", b"example.com"), (b"Connection", b"host")])
    assert values(out, b"host") == [b"example.com"]


def test_framing_headers_removed() -> None:
    headers: Headers = [(b"Host", b"a"), (b"Content-Length", b"3")]
    assert values(rewrite(headers), b"content-length") == []
    chunked: Headers = [(b"Host", b"a"), (b"Transfer-Encoding", b"chunked")]
    assert values(rewrite(chunked), b"transfer-encoding") == []


def test_upgrade_request_keeps_connection_upgrade_and_upgrade() -> None:
    headers: Headers = [
        (b"Host", b"a"),
        (b"Connection", b"keep-alive, Upgrade"),
        (b"Upgrade", b"websocket"),
        (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="),
        (b"Keep-Alive", b"300"),
    ]
    out = rewrite(headers)
    assert values(out, b"connection") == [b"upgrade"]
    assert values(out, b"upgrade") == [b"websocket"]
    assert values(out, b"sec-websocket-key") == [b"dGhlIHNhbXBsZSBub25jZQ=="]
    assert values(out, b"keep-alive") == []


def test_http10_request_without_host_gets_the_connections_authority() -> None:
    out = rewrite([], ctx(authority=b"www.example.com"), version="1.0")
    assert out[0] == (b"Host", b"www.example.com")
    # no host to report
    assert values(out, b"x-forwarded-host") == []
    assert b"host=" not in values(out, b"forwarded")[0]


def test_absolute_form_replaces_host() -> None:
    headers: Headers = [(b"Host", b"spoofed.example"), (b"Accept", b"*/*")]
    out = rewrite(headers, ctx(), target=b"http://[::1]:8080/x")
    assert values(out, b"host") == [b"[::1]:8080"]
    assert values(out, b"x-forwarded-host") == [b"[::1]:8080"]
    assert values(out, b"forwarded") == [b'for=203.0.113.7;proto=https;host="[::1]:8080"']


# --- forwarding headers ----------------------------------------------------------------

INCOMING: Headers = [
    (b"Host", b"example.com"),
    (b"X-Forwarded-For", b"198.51.100.1"),
    (b"x-forwarded-for", b"198.51.100.2"),
    (b"X-Forwarded-Proto", b"http"),
    (b"X-Forwarded-Host", b"orig.example"),
    (b"X-Forwarded-Port", b"8080"),
    (b"X-Forwarded-Prefix", b"/evil"),
    (b"Forwarded", b"for=198.51.100.1"),
    (b"X-Real-IP", b"198.51.100.9"),
    (b"CF-Connecting-IP", b"198.51.100.3"),
]


def test_untrusted_peer_forwarding_headers_replaced() -> None:
    out = rewrite(INCOMING, ctx(client="203.0.113.7", ip_header=b"CF-Connecting-IP"))
    assert values(out, b"x-forwarded-for") == [b"203.0.113.7"]
    assert values(out, b"x-forwarded-proto") == [b"https"]
    assert values(out, b"x-forwarded-host") == [b"example.com"]
    assert values(out, b"x-forwarded-port") == [b"443"]
    assert values(out, b"x-forwarded-prefix") == []
    assert values(out, b"x-real-ip") == []
    assert values(out, b"cf-connecting-ip") == []
    assert values(out, b"forwarded") == [b"for=203.0.113.7;proto=https;host=example.com"]
    # our own headers use canonical case
    assert (b"X-Forwarded-For", b"203.0.113.7") in out


def test_trusted_peer_appends_peer_and_keeps_the_rest() -> None:
    fwd = ctx(client="198.51.100.3", peer="10.0.0.5", trusted=True, ip_header=b"CF-Connecting-IP")
    out = rewrite(INCOMING, fwd)
    assert values(out, b"x-forwarded-for") == [b"198.51.100.1, 198.51.100.2, 10.0.0.5"]
    assert values(out, b"x-forwarded-proto") == [b"http"]
    assert values(out, b"x-forwarded-host") == [b"orig.example"]
    assert values(out, b"x-forwarded-port") == [b"8080"]
    assert values(out, b"x-forwarded-prefix") == [b"/evil"]
    assert values(out, b"x-real-ip") == [b"198.51.100.9"]
    assert values(out, b"cf-connecting-ip") == [b"198.51.100.3"]
    assert values(out, b"forwarded") == [
        b"for=198.51.100.1, for=10.0.0.5;proto=https;host=example.com"
    ]


def test_trusted_peer_without_incoming_headers() -> None:
    fwd = ctx(client="10.0.0.5", peer="10.0.0.5", trusted=True, proto="http", port=80)
    out = rewrite([(b"Host", b"example.com")], fwd)
    assert values(out, b"x-forwarded-for") == [b"10.0.0.5"]
    assert values(out, b"x-forwarded-proto") == [b"http"]
    assert values(out, b"x-forwarded-port") == [b"80"]
    assert values(out, b"forwarded") == [b"for=10.0.0.5;proto=http;host=example.com"]


def test_trusted_peer_client_from_header_starts_the_list() -> None:
    # e.g. the client IP came from CF-Connecting-IP and the edge sent no XFF
    fwd = ctx(client="198.51.100.3", peer="10.0.0.5", trusted=True)
    out = rewrite([(b"Host", b"example.com")], fwd)
    assert values(out, b"x-forwarded-for") == [b"198.51.100.3, 10.0.0.5"]
    assert values(out, b"forwarded") == [
        b"for=198.51.100.3, for=10.0.0.5;proto=https;host=example.com"
    ]


def test_empty_incoming_xff_from_trusted_peer_ignored() -> None:
    fwd = ctx(client="10.0.0.5", trusted=True)
    out = rewrite([(b"Host", b"a"), (b"X-Forwarded-For", b"")], fwd)
    assert values(out, b"x-forwarded-for") == [b"10.0.0.5"]


def test_connection_named_xff_from_trusted_peer_is_dropped_first() -> None:
    fwd = ctx(client="10.0.0.5", trusted=True)
    headers: Headers = [
        (b"Host", b"a"),
        (b"Connection", b"X-Forwarded-For"),
        (b"X-Forwarded-For", b"1.1.1.1"),
    ]
    assert values(rewrite(headers, fwd), b"x-forwarded-for") == [b"10.0.0.5"]


def test_forwarded_ipv6_is_quoted_and_bracketed() -> None:
    out = rewrite([(b"Host", b"example.com:8443")], ctx(client="2001:db8::1"))
    assert values(out, b"x-forwarded-for") == [b"2001:db8::1"]
    assert values(out, b"forwarded") == [b'for="[2001:db8::1]";proto=https;host="example.com:8443"']


def test_forwarded_trusted_ipv6_peer() -> None:
    fwd = ctx(client="2001:db8::1", peer="fd00::5", trusted=True)
    out = rewrite([(b"Host", b"h"), (b"Forwarded", b'for="[2001:db8::1]"')], fwd)
    assert values(out, b"forwarded") == [b'for="[2001:db8::1]", for="[fd00::5]";proto=https;host=h']


# --- responses -------------------------------------------------------------------------


def test_response_hop_by_hop_and_connection_named_removed() -> None:
    headers: Headers = [
        (b"Content-Type", b"text/html"),
        (b"Connection", b"X-Internal"),
        (b"X-Internal", b"secret"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Proxy-Authenticate", b"Basic"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Content-Length", b"10"),
        (b"Upgrade", b"h2c"),
    ]
    out = rewrite_response_headers(headers, hsts="", keep_alive=True)
    assert out == [(b"Content-Type", b"text/html")]


def test_response_hsts_added_once() -> None:
    out = rewrite_response_headers([(b"A", b"1")], hsts="max-age=63072000", keep_alive=True)
    assert values(out, b"strict-transport-security") == [b"max-age=63072000"]
    upstream: Headers = [(b"strict-transport-security", b"max-age=1")]
    out = rewrite_response_headers(upstream, hsts="max-age=63072000", keep_alive=True)
    assert values(out, b"strict-transport-security") == [b"max-age=1"]
    assert (
        values(rewrite_response_headers([], hsts="", keep_alive=True), b"strict-transport-security")
        == []
    )


def test_response_connection_close_when_not_keep_alive() -> None:
    out = rewrite_response_headers([(b"Connection", b"keep-alive")], hsts="", keep_alive=False)
    assert out == [(b"Connection", b"close")]
    assert rewrite_response_headers([], hsts="", keep_alive=True) == []


def test_response_keep_alive_for_http10_client() -> None:
    out = rewrite_response_headers([], hsts="", keep_alive=True, client_version="1.0")
    assert out == [(b"Connection", b"keep-alive")]


def test_response_upgrade_keeps_headers() -> None:
    headers: Headers = [
        (b"Upgrade", b"websocket"),
        (b"Connection", b"Upgrade"),
        (b"Sec-WebSocket-Accept", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
    ]
    out = rewrite_response_headers(headers, hsts="", keep_alive=False, upgrade=True)
    assert values(out, b"connection") == [b"upgrade"]
    assert values(out, b"upgrade") == [b"websocket"]
    assert values(out, b"sec-websocket-accept") == [b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="]


@pytest.mark.parametrize("value", [b"a\rb", b"a\nb", b"a\x00b"])
def test_response_bad_value_is_502(value: bytes) -> None:
    with pytest.raises(UpstreamProtocolError) as info:
        rewrite_response_headers([(b"X", value)], hsts="", keep_alive=True)
    assert info.value.status_hint == 502


@pytest.mark.parametrize(
    ("sni", "ip", "port", "tls", "expected"),
    [
        ("www.example.com", "192.0.2.1", 8443, True, b"www.example.com"),
        (None, "192.0.2.1", 8443, True, b"192.0.2.1:8443"),
        (None, "192.0.2.1", 443, True, b"192.0.2.1"),
        (None, "192.0.2.1", 80, False, b"192.0.2.1"),
        (None, "192.0.2.1", 443, False, b"192.0.2.1:443"),
        (None, "2001:db8::1", 8443, True, b"[2001:db8::1]:8443"),
        ("bücher.example", "192.0.2.1", 443, True, b"xn--bcher-kva.example"),
        (None, "", 0, True, b""),
    ],
)
def test_default_authority_is_the_sni_name_else_the_local_address(
    sni: str | None, ip: str, port: int, tls: bool, expected: bytes
) -> None:
    """RFC 9112 §3.3: the default name, else the connection's local address."""
    assert default_authority(sni, ip, port, tls=tls) == expected
