"""parse_client_hello: real ClientHellos, hand-built ones, every malformation, fuzzing."""

from __future__ import annotations

import dataclasses
import itertools
import ssl
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tlsgate.errors import RemoteProtocolError
from tlsgate.proto.clienthello import (
    ClientHello,
    ClientHelloError,
    NeedMoreData,
    parse_client_hello,
)

VECTORS = Path(__file__).parent / "vectors"

# --- building ClientHellos ---------------------------------------------------------------


def python_client_hello(
    server_name: str | None,
    *,
    alpn: list[str] | None = None,
    maximum_version: ssl.TLSVersion | None = None,
) -> bytes:
    """The ClientHello Python's ssl (OpenSSL) sends, captured through MemoryBIOs."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if maximum_version is not None:
        ctx.maximum_version = maximum_version
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def load_vector(name: str) -> bytes:
    lines = (VECTORS / name).read_text().splitlines()
    return bytes.fromhex("".join(line for line in lines if not line.startswith("#")))


def ext(ext_type: int, data: bytes) -> tuple[int, bytes]:
    return ext_type, data


def u16(value: int) -> bytes:
    return struct.pack("!H", value)


def vec8(data: bytes) -> bytes:
    return bytes([len(data)]) + data


def vec16(data: bytes) -> bytes:
    return u16(len(data)) + data


def sni_ext(*names: bytes, name_type: int = 0) -> tuple[int, bytes]:
    entries = b"".join(bytes([name_type]) + vec16(name) for name in names)
    return 0, vec16(entries)


def alpn_ext(*names: bytes) -> tuple[int, bytes]:
    return 16, vec16(b"".join(vec8(name) for name in names))


def versions_ext(*versions: int) -> tuple[int, bytes]:
    return 43, vec8(b"".join(u16(v) for v in versions))


def hello_body(
    extensions: list[tuple[int, bytes]] | None = None,
    *,
    legacy_version: int = 0x0303,
    session_id: bytes = b"\x11" * 32,
    suites: bytes = b"\x13\x01\x13\x02\xc0\x2f",
    compression: bytes = b"\x00",
    raw_extensions: bytes | None = None,
) -> bytes:
    """A ClientHello body; ``extensions=None`` omits the block entirely (TLS 1.2 allows)."""
    body = u16(legacy_version) + b"\x5a" * 32 + vec8(session_id) + vec16(suites)
    body += vec8(compression)
    if raw_extensions is not None:
        body += raw_extensions
    elif extensions is not None:
        body += vec16(b"".join(u16(t) + vec16(d) for t, d in extensions))
    return body


def handshake(body: bytes, msg_type: int = 1) -> bytes:
    return bytes([msg_type]) + len(body).to_bytes(3, "big") + body


def records(message: bytes, *cuts: int, content_type: int = 22, version: int = 0x0301) -> bytes:
    """``message`` in TLS records, split at the given offsets (ascending)."""
    out = b""
    bounds = [0, *cuts, len(message)]
    for start, end in itertools.pairwise(bounds):
        out += bytes([content_type]) + u16(version) + vec16(message[start:end])
    return out


STANDARD_EXTENSIONS = [
    sni_ext(b"api.Example.COM."),
    ext(10, b"\x00\x02\x00\x1d"),  # supported_groups: x25519
    alpn_ext(b"h2", b"http/1.1"),
    versions_ext(0x0304, 0x0303),
    ext(13, b"\x00\x02\x04\x03"),  # signature_algorithms
]
STANDARD_BODY = hello_body(STANDARD_EXTENSIONS)
STANDARD = records(handshake(STANDARD_BODY))
STANDARD_EXPECTED = ClientHello(
    server_name="api.example.com",
    alpn=("h2", "http/1.1"),
    supported_versions=(0x0304, 0x0303),
    legacy_version=0x0303,
    cipher_suites=(0x1301, 0x1302, 0xC02F),
    extensions=(0, 10, 16, 43, 13),
    size=len(STANDARD),
)


def parsed(data: bytes, **kwargs: int) -> ClientHello:
    result = parse_client_hello(data, **kwargs)
    assert isinstance(result, ClientHello), result
    return result


def error(data: bytes, **kwargs: int) -> str:
    with pytest.raises(ClientHelloError) as info:
        parse_client_hello(data, **kwargs)
    return str(info.value)


def assert_streams(data: bytes, expected: ClientHello) -> None:
    """Every strict prefix needs more (with an honest at_least); the whole parses."""
    for cut in range(len(data)):
        result = parse_client_hello(data[:cut])
        assert isinstance(result, NeedMoreData), (cut, result)
        assert result.at_least is not None
        assert cut < result.at_least <= len(data), (cut, result)
    assert parse_client_hello(data) == expected
    # Bytes after the ClientHello (early data, garbage) are not looked at.
    assert parse_client_hello(data + b"\x17\x03\x03\x00\x05hello") == expected


# --- real clients ------------------------------------------------------------------------


def test_python_tls13_client_with_sni_and_alpn() -> None:
    data = python_client_hello("WWW.Example.org", alpn=["h2", "http/1.1"])
    hello = parsed(data)
    assert hello.server_name == "www.example.org"
    assert hello.alpn == ("h2", "http/1.1")
    assert 0x0304 in hello.supported_versions
    assert hello.legacy_version == 0x0303
    assert 0x1301 in hello.cipher_suites
    assert hello.extensions[:1] == (0,)
    assert {0, 16, 43} <= set(hello.extensions)
    assert hello.size == len(data)
    assert_streams(data, hello)


def test_python_client_without_sni() -> None:
    hello = parsed(python_client_hello(None))
    assert hello.server_name is None
    assert hello.alpn == ()
    assert 0 not in hello.extensions


def test_python_tls12_only_client() -> None:
    data = python_client_hello("example.net", maximum_version=ssl.TLSVersion.TLSv1_2)
    hello = parsed(data)
    assert hello.server_name == "example.net"
    assert hello.supported_versions == ()
    assert 43 not in hello.extensions
    assert hello.legacy_version == 0x0303
    assert_streams(data, hello)


def test_openssl_s_client_tls13_vector() -> None:
    data = load_vector("openssl_s_client_tls13_sni_alpn.hex")
    hello = parsed(data)
    assert hello.server_name == "www.example.org"  # sent as www.Example.org
    assert hello.alpn == ("h2", "http/1.1")
    assert hello.supported_versions == (0x0304, 0x0303, 0x0302, 0x0301)
    assert hello.extensions == (0, 11, 10, 35, 16, 22, 23, 13, 43, 45, 51)
    assert hello.size == len(data) == 339
    assert_streams(data, hello)


def test_openssl_s_client_tls12_vector() -> None:
    data = load_vector("openssl_s_client_tls12_nosni.hex")
    hello = parsed(data)
    assert hello.server_name is None
    assert hello.alpn == ()
    assert hello.supported_versions == ()
    assert len(hello.cipher_suites) == 28
    assert hello.size == len(data) == 188


# --- hand-built valid ClientHellos -------------------------------------------------------


def test_standard_hand_built_hello() -> None:
    assert_streams(STANDARD, STANDARD_EXPECTED)


def test_fragmented_across_three_records() -> None:
    # The first record carries only two bytes: the handshake header itself
    # is split, which RFC 8446 §5.1 permits.
    message = handshake(STANDARD_BODY)
    data = records(message, 2, 40)
    expected = dataclasses.replace(STANDARD_EXPECTED, size=len(data))
    assert_streams(data, expected)


def test_one_byte_records() -> None:
    message = handshake(hello_body([sni_ext(b"a.b")]))
    data = records(message, *range(1, len(message)))
    hello = parsed(data)
    assert hello.server_name == "a.b"
    assert hello.size == len(data) == 6 * len(message)


def test_tls12_hello_without_extension_block() -> None:
    hello = parsed(records(handshake(hello_body(None))))
    assert hello.extensions == ()
    assert hello.server_name is None


def test_empty_extension_block_and_empty_session_id() -> None:
    hello = parsed(records(handshake(hello_body([], session_id=b""))))
    assert hello.extensions == ()


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        (b"Example.COM", "example.com"),
        (b"example.com.", "example.com"),
        (b"_acme-challenge.example.com", "_acme-challenge.example.com"),
        (b"localhost", "localhost"),
        (b"xn--bcher-kva.example", "xn--bcher-kva.example"),
        (b"a" * 63 + b".example", "a" * 63 + ".example"),
        (b"127.0.0.1", "127.0.0.1"),
    ],
)
def test_valid_server_names(raw: bytes, name: str) -> None:
    assert parsed(records(handshake(hello_body([sni_ext(raw)])))).server_name == name


def test_unknown_name_types_are_skipped() -> None:
    entries = b"\x07" + vec16(b"opaque\xff") + b"\x00" + vec16(b"host.example")
    hello = parsed(records(handshake(hello_body([ext(0, vec16(entries))]))))
    assert hello.server_name == "host.example"


def test_alpn_names_keep_every_byte() -> None:
    hello = parsed(records(handshake(hello_body([alpn_ext(b"\xff\x00x", b"h2")]))))
    assert hello.alpn == ("\xff\x00x", "h2")
    assert hello.alpn[0].encode("latin-1") == b"\xff\x00x"


def test_size_limit_is_inclusive() -> None:
    assert parsed(STANDARD, max_size=len(STANDARD)).size == len(STANDARD)


# --- not TLS at all ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "plain HTTP sent to a TLS port"),
        (b"G", "plain HTTP sent to a TLS port"),
        (b"OPTIONS * HTTP/1.1\r\n", "plain HTTP sent to a TLS port"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "plain HTTP sent to a TLS port"),
        (b"\x80\x2e\x01\x00\x02\x00\x15", "SSLv2-style hello (not supported)"),
        (b"\x17\x03\x03\x00\x10", "not a TLS handshake (first byte 0x17)"),
        (b"\x00", "not a TLS handshake (first byte 0x00)"),
        (b"SSH-2.0-OpenSSH_9.2\r\n", "not a TLS handshake (first byte 0x53)"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "accept_proxy_protocol = false"),
        (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11", "accept_proxy_protocol = false"),
    ],
)
def test_not_tls(data: bytes, message: str) -> None:
    assert message in error(data)


# --- malformed ----------------------------------------------------------------------------

MESSAGE = handshake(STANDARD_BODY)


def replace_ext(index: int, new: tuple[int, bytes]) -> bytes:
    extensions = list(STANDARD_EXTENSIONS)
    extensions[index] = new
    return records(handshake(hello_body(extensions)))


MALFORMED = {
    "record version 2.0": (b"\x16\x02\x00", "version major 2"),
    "empty record": (b"\x16\x03\x01\x00\x00", "empty TLS handshake record"),
    "record over 2^14": (b"\x16\x03\x01\x40\x01\x01", "over the 2^14-byte limit"),
    "interleaved alert": (
        records(MESSAGE[:10]) + b"\x15\x03\x03\x00\x02\x02\x28",
        "content type 21",
    ),
    "later record version": (records(MESSAGE[:10]) + b"\x16\x04", "version major 4"),
    "not a ClientHello": (records(handshake(STANDARD_BODY, msg_type=2)), "of type 2"),
    "not a ClientHello, first byte only": (b"\x16\x03\x01\x00\x05\x0b", "of type 11"),
    "data after the message": (records(MESSAGE + b"\x00\x00"), "2 bytes beyond"),
    "message length lies short": (
        records(MESSAGE[:1] + (len(STANDARD_BODY) - 5).to_bytes(3, "big") + STANDARD_BODY),
        "5 bytes beyond",
    ),
    "truncated before random ends": (records(handshake(b"\x03\x03" + b"\x00" * 10)), "random"),
    "session id over 32": (
        records(handshake(hello_body(session_id=b"\x01" * 33))),
        "legacy_session_id: 33 bytes",
    ),
    "session id overruns": (
        records(handshake(b"\x03\x03" + b"\x00" * 32 + b"\x20\x01")),
        "legacy_session_id: length 32 overruns",
    ),
    "odd cipher suites": (records(handshake(hello_body(suites=b"\x13\x01\x13"))), "odd length"),
    "no cipher suites": (records(handshake(hello_body(suites=b""))), "below the minimum of 2"),
    "no compression methods": (
        records(handshake(hello_body(compression=b""))),
        "legacy_compression_methods: length 0 is below the minimum",
    ),
    "one stray byte for extensions": (
        records(handshake(hello_body(raw_extensions=b"\x00"))),
        "extensions length",
    ),
    "extensions overrun": (
        records(handshake(hello_body(raw_extensions=b"\x00\x10\x00\x00\x00\x00"))),
        "extensions: length 16 overruns",
    ),
    "garbage after extensions": (
        records(handshake(hello_body(raw_extensions=b"\x00\x04\x00\x17\x00\x00junk"))),
        "message: 4 unexpected bytes",
    ),
    "extension data overruns": (
        records(handshake(hello_body(raw_extensions=b"\x00\x06\x00\x17\x00\x09\x00\x00"))),
        "extension 23: length 9 overruns",
    ),
    "duplicate extension": (
        records(handshake(hello_body([*STANDARD_EXTENSIONS, ext(10, b"\x00\x02\x00\x17")]))),
        "duplicate extension 10",
    ),
    "duplicate unknown extension": (
        records(handshake(hello_body([ext(0xFAFA, b""), ext(0xFAFA, b"")]))),
        "duplicate extension 64250",
    ),
    "server_name list shorter than extension": (
        replace_ext(0, ext(0, b"\x00\x05" + b"\x00\x00\x02ab" + b"\x00")),
        "server_name extension: 1 unexpected bytes",
    ),
    "server_name list longer than extension": (
        replace_ext(0, ext(0, b"\x00\x09\x00\x00\x02ab")),
        "server_name list: length 9 overruns",
    ),
    "empty server_name extension": (replace_ext(0, ext(0, b"")), "server_name list length"),
    "empty server_name list": (replace_ext(0, ext(0, b"\x00\x00")), "below the minimum of 1"),
    "empty host name": (replace_ext(0, sni_ext(b"")), "HostName: length 0"),
    "two host names": (replace_ext(0, sni_ext(b"a.example", b"b.example")), "more than one"),
    "empty ALPN list": (replace_ext(2, ext(16, b"\x00\x00")), "protocol_name_list: length 0"),
    "empty ALPN name": (replace_ext(2, alpn_ext(b"h2", b"")), "ALPN protocol name: length 0"),
    "ALPN name overruns": (replace_ext(2, ext(16, b"\x00\x03\x05h2")), "length 5 overruns"),
    "ALPN trailing byte": (replace_ext(2, ext(16, vec16(vec8(b"h2")) + b"\x00")), "1 unexpected"),
    "odd supported_versions": (replace_ext(3, ext(43, b"\x03\x03\x04\x03")), "odd length 3"),
    "empty supported_versions": (replace_ext(3, ext(43, b"\x00")), "below the minimum of 2"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed(case: str) -> None:
    data, message = MALFORMED[case]
    assert message in error(data)


def test_malformed_inputs_fed_byte_by_byte_never_parse() -> None:
    # Feeding byte by byte never gets a ClientHello out of a malformed input.
    for data, _ in MALFORMED.values():
        for cut in range(len(data) + 1):
            try:
                result = parse_client_hello(data[:cut])
            except ClientHelloError:
                break
            assert isinstance(result, NeedMoreData)
        else:
            pytest.fail(f"never rejected: {data!r}")


@pytest.mark.parametrize(
    "name",
    [
        b"exa mple.com",
        b"caf\xc3\xa9.example",
        b"a..b",
        b".example.com",
        b"example.com..",
        b"\x00",
        b"host\x7f",
        b"tab\there",
        b"*.example.com",
        b"example.com/",
        b"[::1]",
        b"a" * 64 + b".example",
        (b"a" * 63 + b".") * 4,  # 256 bytes
    ],
)
def test_invalid_server_names(name: bytes) -> None:
    assert "not a DNS host name" in error(records(handshake(hello_body([sni_ext(name)]))))


def test_oversized_message_is_refused_from_its_header() -> None:
    # The announced length alone is enough: no need to buffer 20 kB first.
    header_only = b"\x16\x03\x01\x00\x04\x01" + (20000).to_bytes(3, "big")
    assert "ClientHello larger than the limit of 16384 bytes" in error(header_only)


def test_oversized_by_record_overhead() -> None:
    # 1-byte records: the message is small but its records are not.
    message = handshake(STANDARD_BODY)
    data = records(message, *range(1, len(message)))
    assert "larger than the limit of 800 bytes" in error(data, max_size=800)
    assert parsed(data, max_size=len(data)).size == len(data)


def test_one_byte_over_the_limit() -> None:
    assert "larger than the limit" in error(STANDARD, max_size=len(STANDARD) - 1)


def test_error_is_a_remote_protocol_error() -> None:
    assert issubclass(ClientHelloError, RemoteProtocolError)


def test_accepts_bytearray_and_memoryview() -> None:
    assert parse_client_hello(bytearray(STANDARD)) == STANDARD_EXPECTED
    assert parse_client_hello(memoryview(STANDARD)) == STANDARD_EXPECTED


# --- properties --------------------------------------------------------------------------

host_label = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=12)
host_names = st.lists(host_label, min_size=1, max_size=4).map(".".join)
alpn_names = st.binary(min_size=1, max_size=10)
unknown_extension = st.tuples(
    st.integers(0, 0xFFFF).filter(lambda t: t not in (0, 16, 43)), st.binary(max_size=20)
)


@st.composite
def hand_built(draw: st.DrawFn) -> tuple[bytes, ClientHello]:
    """A random well-formed ClientHello, randomly fragmented, and what it must parse to."""
    name = draw(st.none() | host_names)
    alpn = draw(st.lists(alpn_names, max_size=3))
    versions = draw(st.lists(st.integers(0, 0xFFFF), max_size=4))
    extensions = [
        *([sni_ext(name.encode())] if name is not None else []),
        *([alpn_ext(*alpn)] if alpn else []),
        *([versions_ext(*versions)] if versions else []),
        *draw(st.lists(unknown_extension, max_size=4, unique_by=lambda e: e[0])),
    ]
    extensions = draw(st.permutations(extensions))
    suites = draw(st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=8))
    legacy_version = draw(st.integers(0, 0xFFFF))
    message = handshake(
        hello_body(
            extensions,
            legacy_version=legacy_version,
            session_id=draw(st.binary(max_size=32)),
            suites=b"".join(u16(s) for s in suites),
        )
    )
    cuts = sorted(draw(st.sets(st.integers(1, len(message) - 1), max_size=4)))
    data = records(message, *cuts, version=draw(st.sampled_from([0x0301, 0x0303, 0x0300])))
    expected = ClientHello(
        server_name=name.lower() if name is not None else None,
        alpn=tuple(a.decode("latin-1") for a in alpn),
        supported_versions=tuple(versions),
        legacy_version=legacy_version,
        cipher_suites=tuple(suites),
        extensions=tuple(t for t, _ in extensions),
        size=len(data),
    )
    return data, expected


@given(hand_built(), st.binary(max_size=8))
@settings(max_examples=200)
def test_any_well_formed_hello_parses(case: tuple[bytes, ClientHello], tail: bytes) -> None:
    data, expected = case
    assert parse_client_hello(data + tail) == expected
    cut = len(data) // 2
    assert isinstance(parse_client_hello(data[:cut]), NeedMoreData)


def outcome_is_allowed(data: bytes, **kwargs: int) -> None:
    try:
        result = parse_client_hello(data, **kwargs)
    except ClientHelloError:
        return
    assert isinstance(result, ClientHello | NeedMoreData)
    if isinstance(result, ClientHello):
        assert result.size <= len(data)


@given(st.binary(max_size=300))
def test_fuzz_any_bytes(data: bytes) -> None:
    outcome_is_allowed(data)


@given(st.integers(0, 255), st.integers(0, 0x4100), st.binary(max_size=200))
def test_fuzz_behind_a_record_header(minor: int, length: int, rest: bytes) -> None:
    outcome_is_allowed(bytes([22, 3, minor]) + u16(length) + rest)


@given(st.binary(max_size=300))
def test_fuzz_random_body_in_a_well_framed_record(body: bytes) -> None:
    # The framing is right, so the body decoder gets the random bytes.
    outcome_is_allowed(records(handshake(body)))
    outcome_is_allowed(records(handshake(hello_body(raw_extensions=body))))


SEEDS = [
    STANDARD,
    records(MESSAGE, 2, 40),
    python_client_hello("seed.example", alpn=["h2"]),
    load_vector("openssl_s_client_tls12_nosni.hex"),
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


@given(mutated(), st.integers(0, 600))
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_mutated_vectors(data: bytes, max_size: int) -> None:
    outcome_is_allowed(data)
    outcome_is_allowed(data, max_size=max_size)
    outcome_is_allowed(data[: len(data) // 2])
