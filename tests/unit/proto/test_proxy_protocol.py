"""PROXY protocol v1/v2: spec examples, HAProxy's own output, errors, round trips, fuzzing."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tlsgate.errors import LocalProtocolError, RemoteProtocolError
from tlsgate.proto.proxy_protocol import (
    MAX_TLV_BYTES,
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_CRC32C,
    PP2_TYPE_NOOP,
    PP2_TYPE_SSL,
    PP2_TYPE_UNIQUE_ID,
    V2_SIGNATURE,
    NeedMoreData,
    ProxyHeader,
    ProxyProtocolError,
    build_v1,
    build_v2,
    crc32c,
    parse_proxy_header,
)

VECTORS = Path(__file__).parent / "vectors"
PAYLOAD = b"GET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n"


def load_vector(name: str) -> bytes:
    lines = (VECTORS / name).read_text().splitlines()
    return bytes.fromhex("".join(line for line in lines if not line.startswith("#")))


def parsed(data: bytes) -> ProxyHeader:
    result = parse_proxy_header(data)
    assert isinstance(result, ProxyHeader), result
    return result


def error(data: bytes) -> str:
    with pytest.raises(ProxyProtocolError) as info:
        parse_proxy_header(data)
    return str(info.value)


def assert_streams(header: bytes, expected: ProxyHeader) -> None:
    """Each strict prefix needs more; the whole parses; the payload is left alone."""
    for cut in range(len(header)):
        result = parse_proxy_header(header[:cut])
        assert isinstance(result, NeedMoreData), (cut, result)
        if result.at_least is not None:
            assert cut < result.at_least <= len(header)
    assert parse_proxy_header(header) == expected
    assert parse_proxy_header(header + PAYLOAD) == expected
    assert expected.size == len(header)


def v2(ver_cmd: int, fam: int, body: bytes, length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    return V2_SIGNATURE + bytes((ver_cmd, fam)) + size.to_bytes(2, "big") + body


def tlv(tlv_type: int, value: bytes) -> bytes:
    return bytes((tlv_type,)) + len(value).to_bytes(2, "big") + value


def with_crc(header: bytes) -> bytes:
    """Fill the (zeroed, last) CRC32C TLV of a hand-built header."""
    return header[:-4] + crc32c(header).to_bytes(4, "big")


TCP4_BLOCK = bytes([192, 168, 0, 1, 192, 168, 0, 11]) + (56324).to_bytes(2, "big") + b"\x01\xbb"
TCP6_BLOCK = (
    ipaddress.IPv6Address("2001:db8::1").packed
    + ipaddress.IPv6Address("2001:db8:0:0:1::2").packed
    + b"\xff\xff\x00\x00"
)


# --- crc32c ------------------------------------------------------------------------------


def reference_crc32c(data: bytes) -> int:
    """Bit-at-a-time CRC-32C (reflected polynomial 0x82F63B78), the textbook definition."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def test_crc32c_check_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0
    # RFC 3720 §B.4: 32 bytes of zeros.
    assert crc32c(bytes(32)) == 0x8A9136AA


@given(st.binary(max_size=200))
def test_crc32c_matches_reference(data: bytes) -> None:
    assert crc32c(data) == reference_crc32c(data) == crc32c(bytearray(data))


# --- v1: the spec's lines ----------------------------------------------------------------


def test_v1_spec_example_before_an_http_request() -> None:
    header = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    expected = ProxyHeader(
        1, "PROXY", "TCP4", ("192.168.0.1", 56324), ("192.168.0.11", 443), size=len(header)
    )
    assert_streams(header, expected)
    data = header + PAYLOAD
    assert data[parsed(data).size :] == PAYLOAD


@pytest.mark.parametrize(
    ("line", "protocol", "source", "destination"),
    [
        (
            b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
            "TCP4",
            ("255.255.255.255", 65535),
            ("255.255.255.255", 65535),
        ),
        (
            b"PROXY TCP6 "
            + b":".join([b"ffff"] * 8)
            + b" "
            + b":".join([b"FFFF"] * 8)
            + b" 65535 65535\r\n",
            "TCP6",
            ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535),
            ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535),
        ),
        (b"PROXY UNKNOWN\r\n", "UNKNOWN", None, None),
        (
            b"PROXY UNKNOWN "
            + b":".join([b"ffff"] * 8)
            + b" "
            + b":".join([b"ffff"] * 8)
            + b" 65535 65535\r\n",
            "UNKNOWN",
            None,
            None,
        ),
        (b"PROXY TCP4 0.0.0.0 10.0.0.1 0 1\r\n", "TCP4", ("0.0.0.0", 0), ("10.0.0.1", 1)),
        (
            b"PROXY TCP6 2001:DB8:0:0:0:0:0:1 ::1 1 2\r\n",
            "TCP6",
            ("2001:db8::1", 1),
            ("::1", 2),
        ),
        (
            b"PROXY TCP6 ::ffff:203.0.113.7 2001:db8::1 40000 443\r\n",
            "TCP6",
            ("::ffff:203.0.113.7", 40000),
            ("2001:db8::1", 443),
        ),
        # "the receiver must ignore anything presented before the CRLF"
        (b"PROXY UNKNOWN whatever\x00\xff\r\r\n", "UNKNOWN", None, None),
    ],
)
def test_v1_lines(
    line: bytes,
    protocol: Literal["TCP4", "TCP6", "UNKNOWN"],
    source: tuple[str, int] | None,
    destination: tuple[str, int] | None,
) -> None:
    assert len(line) <= 108
    assert_streams(line, ProxyHeader(1, "PROXY", protocol, source, destination, size=len(line)))


def test_v1_from_haproxy() -> None:
    data = load_vector("haproxy_send_proxy_v1.hex")
    header = parsed(data)
    assert header == ProxyHeader(
        1, "PROXY", "TCP4", ("127.0.0.2", 55939), ("127.0.0.1", 57155), size=44
    )
    assert data[header.size :] == b"PAYLOAD"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"PROXY TCP4 192.168.0.1  192.168.0.11 56324 443\r\n", "malformed line"),
        (b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443 \r\n", "malformed line"),
        (b"PROXY  TCP4 1.2.3.4 1.2.3.4 1 2\r\n", "unknown protocol"),
        (b"PROXY TCP4 192.168.000.1 192.168.0.11 56324 443\r\n", "source address"),
        (b"PROXY TCP4 192.168.0.1 192.168.0.256 56324 443\r\n", "destination address"),
        (b"PROXY TCP4 192.168.0.1 192.168.0.11 056324 443\r\n", "malformed line"),
        (b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 65536\r\n", "destination port 65536"),
        (b"PROXY TCP4 192.168.0.1 192.168.0.11 99999 1\r\n", "source port 99999"),
        (b"PROXY TCP4 192.168.0.1 192.168.0.11 -1 443\r\n", "malformed line"),
        (b"PROXY TCP4 ::1 ::1 1 2\r\n", "malformed line"),
        (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "not a valid IPv6 address"),
        (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "malformed line"),
        (b"PROXY TCP6 1::2::3 ::1 1 2\r\n", "source address"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "bare LF"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r", None),  # waits for the LF
        (b"PROXY UNKNOWN\n", "bare LF"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX\n", "bare LF"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "malformed line"),
        (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
        (b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
        (b"PROXY UNKNOWNX\r\n", "unknown protocol"),
        (b"PROXY UNKNOWN" + b"x" * 100, "no CRLF within the first 107 bytes"),
        (b"PROXY UNKNOWN " + b"x" * 92 + b"\r\n", "no CRLF within the first 107 bytes"),
        (b"PROXY \r\n", "malformed line"),
        # Refused before the CRLF arrives: the line can no longer become valid.
        (b"PROXY TCP4 1.2.3.4\x00", "malformed line"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3", "malformed line"),
        (b"PROXY FOO", "unknown protocol"),
    ],
)
def test_v1_errors(data: bytes, message: str | None) -> None:
    if message is None:
        assert isinstance(parse_proxy_header(data), NeedMoreData)
    else:
        assert message in error(data)


# --- v2 ---------------------------------------------------------------------------------


def test_v2_tcp4_with_tlvs_and_crc() -> None:
    header = with_crc(
        v2(
            0x21,
            0x11,
            TCP4_BLOCK
            + tlv(PP2_TYPE_ALPN, b"h2")
            + tlv(PP2_TYPE_AUTHORITY, b"www.example.org")
            + tlv(PP2_TYPE_CRC32C, b"\x00" * 4),
        )
    )
    expected = ProxyHeader(
        version=2,
        command="PROXY",
        protocol="TCP4",
        source=("192.168.0.1", 56324),
        destination=("192.168.0.11", 443),
        tlvs=(
            (PP2_TYPE_ALPN, b"h2"),
            (PP2_TYPE_AUTHORITY, b"www.example.org"),
            (PP2_TYPE_CRC32C, header[-4:]),
        ),
        size=len(header),
    )
    assert_streams(header, expected)
    assert expected.alpn == b"h2"
    assert expected.authority == "www.example.org"
    assert header == build_v2(
        ("192.168.0.1", 56324),
        ("192.168.0.11", 443),
        tlvs=[(PP2_TYPE_ALPN, b"h2"), (PP2_TYPE_AUTHORITY, b"www.example.org")],
        crc32c=True,
    )


def test_v2_tcp6() -> None:
    header = with_crc(v2(0x21, 0x21, TCP6_BLOCK + tlv(PP2_TYPE_CRC32C, bytes(4))))
    result = parsed(header)
    assert result.protocol == "TCP6"
    assert result.source == ("2001:db8::1", 65535)
    assert result.destination == ("2001:db8::1:0:0:2", 0)  # compressed (RFC 5952)
    assert result.alpn is None
    assert result.authority is None
    assert_streams(header, result)


def test_v2_from_haproxy() -> None:
    # HAProxy puts its CRC32C TLV first, and adds UNIQUE_ID and SSL sub-TLVs.
    data = load_vector("haproxy_send_proxy_v2_ssl.hex")
    header = parsed(data)
    assert data[header.size :] == b"PAYLOAD"
    assert (header.version, header.command, header.protocol) == (2, "PROXY", "TCP4")
    assert header.source == ("127.0.0.2", 50577)
    assert header.destination == ("127.0.0.1", 38593)
    assert [t for t, _ in header.tlvs] == [
        PP2_TYPE_CRC32C,
        PP2_TYPE_ALPN,
        PP2_TYPE_AUTHORITY,
        PP2_TYPE_UNIQUE_ID,
        PP2_TYPE_SSL,
    ]
    assert header.alpn == b"h2"
    assert header.authority == "www.example.org"
    assert dict(header.tlvs)[PP2_TYPE_UNIQUE_ID] == b"tlsgate-7F000002:C591"
    assert b"TLSv1.3" in dict(header.tlvs)[PP2_TYPE_SSL]
    assert_streams(data[: header.size], header)


def test_v2_local_without_addresses() -> None:
    header = v2(0x20, 0x00, b"")
    assert_streams(header, ProxyHeader(2, "LOCAL", "UNKNOWN", None, None, size=16))
    assert header == build_v2(None, None, command="LOCAL")


def test_v2_local_skips_an_address_block() -> None:
    # "Receivers MUST always consider this field to skip the appropriate
    # number of bytes and must not assume zero is presented for LOCAL".
    header = v2(0x20, 0x11, TCP4_BLOCK + tlv(PP2_TYPE_NOOP, b""))
    assert_streams(
        header,
        ProxyHeader(2, "LOCAL", "TCP4", None, None, tlvs=((PP2_TYPE_NOOP, b""),), size=31),
    )


def test_v2_local_ignores_an_undefined_family() -> None:
    # "discard the protocol block including the family which is ignored"
    header = v2(0x20, 0x45, b"\xff" * 10)
    assert parsed(header + PAYLOAD) == ProxyHeader(2, "LOCAL", "UNKNOWN", None, None, size=26)


def test_v2_local_with_tlvs_and_crc_round_trips() -> None:
    header = build_v2(
        ("1.2.3.4", 1), ("5.6.7.8", 2), command="LOCAL", tlvs=[(0xE0, b"x")], crc32c=True
    )
    result = parsed(header)
    assert (result.command, result.protocol, result.source) == ("LOCAL", "UNKNOWN", None)
    assert result.tlvs[0] == (0xE0, b"x")
    assert result.tlvs[1][0] == PP2_TYPE_CRC32C


@pytest.mark.parametrize(
    ("fam", "block"),
    [(0x00, b""), (0x12, TCP4_BLOCK), (0x22, TCP6_BLOCK), (0x31, bytes(216)), (0x32, bytes(216))],
)
def test_v2_proxy_families_without_tcp_addresses(fam: int, block: bytes) -> None:
    header = v2(0x21, fam, block + tlv(PP2_TYPE_AUTHORITY, b"a.example"))
    assert_streams(
        header,
        ProxyHeader(
            2,
            "PROXY",
            "UNKNOWN",
            None,
            None,
            tlvs=((PP2_TYPE_AUTHORITY, b"a.example"),),
            size=len(header),
        ),
    )


def test_v2_ipv4_mapped_is_rendered_dotted() -> None:
    block = ipaddress.IPv6Address("::ffff:10.1.2.3").packed + bytes(16) + bytes(4)
    assert parsed(v2(0x21, 0x21, block)).source == ("::ffff:10.1.2.3", 0)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (v2(0x11, 0x11, TCP4_BLOCK), "unsupported version 1"),
        (V2_SIGNATURE + b"\x31", "unsupported version 3"),
        (v2(0x22, 0x11, TCP4_BLOCK), "unknown command 0x2"),
        (V2_SIGNATURE + b"\x2f", "unknown command 0xf"),
        (v2(0x21, 0x13, TCP4_BLOCK), "unknown address family/protocol byte 0x13"),
        (V2_SIGNATURE + b"\x21\x41", "unknown address family/protocol byte 0x41"),
        (v2(0x21, 0x11, TCP4_BLOCK[:8]), "8 address bytes, too few for family 0x11"),
        (v2(0x21, 0x21, TCP4_BLOCK), "12 address bytes, too few for family 0x21 (needs 36)"),
        (v2(0x21, 0x31, bytes(108)), "needs 216"),
        (v2(0x21, 0x11, TCP4_BLOCK + b"\x04\x00"), "2 stray bytes"),
        (v2(0x21, 0x11, TCP4_BLOCK + b"\x04\x00\x05ab"), "TLV 0x04 of 5 bytes overruns"),
        (v2(0x21, 0x11, TCP4_BLOCK + tlv(3, b"\x00\x00\x00")), "CRC32C TLV of 3 bytes"),
        (v2(0x21, 0x11, TCP4_BLOCK + tlv(3, b"\x12\x34\x56\x78")), "CRC32C mismatch"),
        (
            v2(0x21, 0x11, TCP4_BLOCK + tlv(3, b"1234") + tlv(3, b"1234")),
            "more than one CRC32C TLV",
        ),
        (v2(0x21, 0x11, TCP4_BLOCK + tlv(2, b"caf\xe9")), "AUTHORITY TLV is not UTF-8"),
        # Refused from the 16 fixed bytes, before anything is buffered.
        (v2(0x21, 0x11, b"", length=12 + MAX_TLV_BYTES + 1), "more than the 4096 bytes"),
        (v2(0x20, 0x45, b"", length=0xFFFF), "more than the 4096 bytes"),
    ],
)
def test_v2_errors(data: bytes, message: str) -> None:
    assert message in error(data)


def test_v2_tlv_cap_is_inclusive() -> None:
    tlvs = tlv(0xE0, bytes(MAX_TLV_BYTES - 3))
    assert parsed(v2(0x21, 0x11, TCP4_BLOCK + tlvs)).tlvs == ((0xE0, bytes(MAX_TLV_BYTES - 3)),)


def test_crc_catches_every_bit_flip_in_addresses_and_checksum() -> None:
    header = build_v2(("10.0.0.1", 1000), ("10.0.0.2", 443), crc32c=True)
    positions = [*range(16, 28), *range(len(header) - 4, len(header))]
    for index in positions:
        for bit in range(8):
            broken = bytearray(header)
            broken[index] ^= 1 << bit
            assert "CRC32C mismatch" in error(bytes(broken))


# --- not a header at all ----------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",
        b"\x16\x03\x01\x02\x00\x01",
        b"proxy TCP4",
        b"PROXX",
        b"PROXYTCP4",
        b"\r\n\r\n\x00\r\nQUIT\r",
        b"\r\r",
        b"\x00",
    ],
)
def test_not_a_proxy_header(data: bytes) -> None:
    message = error(data)
    assert "expected a PROXY protocol header (the listener has accept_proxy_protocol = true)" in (
        message
    )
    assert repr(data[:4])[:-1] in message


@pytest.mark.parametrize("data", [b"", b"P", b"PROXY", b"\r", b"\r\n\r\n\x00", V2_SIGNATURE])
def test_prefixes_need_more(data: bytes) -> None:
    assert isinstance(parse_proxy_header(data), NeedMoreData)


def test_v2_fixed_part_tells_how_much_is_needed() -> None:
    header = build_v2(("1.2.3.4", 1), ("5.6.7.8", 2), tlvs=[(0xE1, b"abc")])
    assert parse_proxy_header(header[:13]) == NeedMoreData(16)
    assert parse_proxy_header(header[:16]) == NeedMoreData(len(header))


def test_error_classes() -> None:
    assert issubclass(ProxyProtocolError, RemoteProtocolError)


def test_accepts_bytearray_and_memoryview() -> None:
    header = build_v2(("1.2.3.4", 1), ("5.6.7.8", 2))
    assert parse_proxy_header(bytearray(header)) == parse_proxy_header(memoryview(header))


# --- building ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "destination", "line"),
    [
        (("192.168.0.1", 56324), ("192.168.0.11", 443), b"TCP4 192.168.0.1 192.168.0.11 56324 443"),
        (("2001:db8::1", 1), ("2001:0db8:0::2", 2), b"TCP6 2001:db8::1 2001:db8::2 1 2"),
        # Mixed families: the IPv4 side becomes IPv4-mapped IPv6.
        (
            ("203.0.113.7", 40000),
            ("2001:db8::1", 443),
            b"TCP6 ::ffff:203.0.113.7 2001:db8::1 40000 443",
        ),
        (("2001:db8::7", 1), ("198.51.100.1", 2), b"TCP6 2001:db8::7 ::ffff:198.51.100.1 1 2"),
        # The zone of a link-local peer is not part of the format.
        (("fe80::1%eth0", 1), ("fe80::2", 2), b"TCP6 fe80::1 fe80::2 1 2"),
        (None, None, b"UNKNOWN"),
        (("1.2.3.4", 1), None, b"UNKNOWN"),
        (None, ("1.2.3.4", 1), b"UNKNOWN"),
    ],
)
def test_build_v1(
    source: tuple[str, int] | None, destination: tuple[str, int] | None, line: bytes
) -> None:
    header = build_v1(source, destination)
    assert header == b"PROXY " + line + b"\r\n"
    assert parsed(header).size == len(header)


def test_build_v1_longest_line_fits() -> None:
    full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    assert len(build_v1((full, 65535), (full, 65535))) == 104


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (("example.com", 1), "source address 'example.com' is not an IP address"),
        (("1.2.3.4", 65536), "source port 65536 is not in 0..65535"),
        (("1.2.3.4", -1), "source port -1"),
        (("1.2.3.4", True), "source port True"),
        (("01.2.3.4", 1), "is not an IP address"),
    ],
)
def test_build_rejects_bad_endpoints(source: tuple[str, int], message: str) -> None:
    for build in (build_v1, build_v2):
        with pytest.raises(LocalProtocolError) as info:
            build(source, ("5.6.7.8", 2))
        assert message in str(info.value)


def test_build_v2_exact_bytes() -> None:
    assert build_v2(("192.168.0.1", 56324), ("192.168.0.11", 443)) == v2(0x21, 0x11, TCP4_BLOCK)
    assert build_v2(None, None) == v2(0x21, 0x00, b"")
    assert build_v2(("1.2.3.4", 1), None, tlvs=[(0xE0, b"")]) == v2(0x21, 0x00, tlv(0xE0, b""))
    # LOCAL ignores the endpoints it is given.
    assert build_v2(("1.2.3.4", 1), ("5.6.7.8", 2), command="LOCAL") == v2(0x20, 0x00, b"")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"command": "DIRECT"}, "unknown command 'DIRECT'"),
        ({"tlvs": [(256, b"")]}, "TLV type 256"),
        ({"tlvs": [(-1, b"")]}, "TLV type -1"),
        ({"tlvs": [(PP2_TYPE_CRC32C, bytes(4))]}, "crc32c=True"),
        ({"tlvs": [(0xE0, bytes(0x10000))]}, "value over 65535 bytes"),
        ({"tlvs": [(0xE0, bytes(MAX_TLV_BYTES - 2))]}, "4097 bytes of TLVs"),
        ({"tlvs": [(0xE0, bytes(MAX_TLV_BYTES - 3))], "crc32c": True}, "4103 bytes of TLVs"),
    ],
)
def test_build_v2_rejects(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(LocalProtocolError) as info:
        build_v2(("1.2.3.4", 1), ("5.6.7.8", 2), **kwargs)  # type: ignore[arg-type]
    assert message in str(info.value)


# --- properties -------------------------------------------------------------------------

ports = st.integers(0, 0xFFFF)
endpoints = st.tuples(st.ip_addresses().map(str), ports)
tlv_values = st.one_of(
    st.tuples(st.just(PP2_TYPE_AUTHORITY), st.text(max_size=30).map(str.encode)),
    st.tuples(
        st.integers(0, 255).filter(lambda t: t not in (PP2_TYPE_CRC32C, PP2_TYPE_AUTHORITY)),
        st.binary(max_size=40),
    ),
)


def expected_addresses(
    source: tuple[str, int], destination: tuple[str, int]
) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]:
    addresses = [ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])]
    if addresses[0].version != addresses[1].version:
        addresses = [
            ipaddress.IPv6Address(f"::ffff:{a}") if a.version == 4 else a for a in addresses
        ]
    return tuple(addresses)


@given(
    endpoints,
    endpoints,
    st.lists(tlv_values, max_size=5),
    st.booleans(),
    st.sampled_from(["PROXY", "LOCAL"]),
    st.binary(max_size=10),
)
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
def test_build_v2_parse_round_trip(
    source: tuple[str, int],
    destination: tuple[str, int],
    tlvs: list[tuple[int, bytes]],
    with_crc32c: bool,
    command: Literal["PROXY", "LOCAL"],
    payload: bytes,
) -> None:
    header = build_v2(source, destination, command=command, tlvs=tlvs, crc32c=with_crc32c)
    result = parsed(header + payload)
    assert result.size == len(header)
    assert (result.version, result.command) == (2, command)
    assert list(result.tlvs[: len(tlvs)]) == tlvs
    assert len(result.tlvs) == len(tlvs) + with_crc32c
    if command == "LOCAL":
        assert (result.protocol, result.source, result.destination) == ("UNKNOWN", None, None)
    else:
        src, dst = expected_addresses(source, destination)
        assert result.protocol == f"TCP{src.version}"
        assert result.source is not None
        assert result.destination is not None
        assert ipaddress.ip_address(result.source[0]) == src
        assert ipaddress.ip_address(result.destination[0]) == dst
        assert (result.source[1], result.destination[1]) == (source[1], destination[1])
    for cut in range(len(header)):
        assert isinstance(parse_proxy_header(header[:cut]), NeedMoreData)


@given(st.none() | endpoints, st.none() | endpoints, st.binary(max_size=10))
@settings(max_examples=150)
def test_build_v1_parse_round_trip(
    source: tuple[str, int] | None, destination: tuple[str, int] | None, payload: bytes
) -> None:
    header = build_v1(source, destination)
    assert len(header) <= 107
    result = parsed(header + payload)
    assert result.size == len(header)
    if source is None or destination is None:
        assert (result.protocol, result.source) == ("UNKNOWN", None)
    else:
        src, dst = expected_addresses(source, destination)
        assert result.source is not None
        assert result.destination is not None
        assert ipaddress.ip_address(result.source[0]) == src
        assert ipaddress.ip_address(result.destination[0]) == dst
        # The same addresses in the same text form as v2 renders them.
        assert parsed(build_v2(source, destination)).source == result.source
    for cut in range(len(header)):
        assert isinstance(parse_proxy_header(header[:cut]), NeedMoreData)


def outcome_is_allowed(data: bytes) -> None:
    try:
        result = parse_proxy_header(data)
    except ProxyProtocolError:
        return
    assert isinstance(result, ProxyHeader | NeedMoreData)
    if isinstance(result, ProxyHeader):
        assert 0 < result.size <= len(data)
        # Built back, a parsed header's addresses survive.
        if result.source is not None and result.destination is not None:
            rebuilt = parsed(build_v1(result.source, result.destination))
            assert (rebuilt.source, rebuilt.destination) == (result.source, result.destination)


@given(st.binary(max_size=200))
def test_fuzz_any_bytes(data: bytes) -> None:
    outcome_is_allowed(data)


@given(st.sampled_from([b"PROXY ", b"PROXY TCP4 ", b"PROXY TCP6 ", b"PROXY UNKNOWN"]), st.binary())
def test_fuzz_after_v1_prefix(prefix: bytes, rest: bytes) -> None:
    outcome_is_allowed(prefix + rest)


@given(
    st.text("0123456789abcdefABCDEF.: \r\n", max_size=60).map(str.encode),
    st.sampled_from([b"PROXY TCP4 ", b"PROXY TCP6 "]),
)
def test_fuzz_v1_address_alphabet(rest: bytes, prefix: bytes) -> None:
    outcome_is_allowed(prefix + rest)


@given(st.integers(0, 255), st.integers(0, 255), st.integers(0, 300), st.binary(max_size=300))
def test_fuzz_after_v2_signature(ver_cmd: int, fam: int, length: int, rest: bytes) -> None:
    outcome_is_allowed(v2(ver_cmd, fam, rest, length=length))
    outcome_is_allowed(v2(0x21, fam, rest))


SEEDS = [
    load_vector("haproxy_send_proxy_v2_ssl.hex"),
    load_vector("haproxy_send_proxy_v1.hex"),
    build_v2(("2001:db8::1", 1), ("2001:db8::2", 2), tlvs=[(PP2_TYPE_ALPN, b"h2")], crc32c=True),
    build_v2(None, None, command="LOCAL", tlvs=[(PP2_TYPE_NOOP, b"")]),
    build_v1(("2001:db8::1", 1), ("2001:db8::2", 2)),
    b"PROXY UNKNOWN\r\n",
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "set"]))
        at = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=3))
        elif len(data) > 1:
            del data[at : at + draw(st.integers(1, 3))]
    return bytes(data)


@given(mutated())
@settings(max_examples=400)
def test_fuzz_mutated_vectors(data: bytes) -> None:
    outcome_is_allowed(data)
    outcome_is_allowed(data[: len(data) // 2])
