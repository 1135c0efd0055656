"""HAProxy PROXY protocol, versions 1 and 2: parse on accept, build on connect.

How this works: a listener with ``accept_proxy_protocol = true`` calls
:func:`parse_proxy_header` with everything read so far; it answers
:class:`NeedMoreData` until the header is complete, then a
:class:`ProxyHeader` whose ``size`` bytes the caller strips before handing the
rest to TLS or HTTP, or raises :class:`ProxyProtocolError`. The spec forbids
guessing -- "The receiver MUST be configured to only receive the protocol
described in this specification and MUST not try to guess whether the
protocol header is present or not" -- so anything that is not a PROXY header
is an error, never a pass-through. Trust (which peers may send a header) is
the caller's decision, made before calling.

A backend with ``send_proxy_protocol = "v1"`` or ``"v2"`` gets the bytes of
:func:`build_v1` or :func:`build_v2` as the first bytes of each connection.

Spec: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt (quoted
beside the code that enforces it). Nothing here does I/O.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import google_crc32c

from tlsgate.errors import LocalProtocolError, RemoteProtocolError
from tlsgate.proto.common import NeedMoreData, show_bytes

__all__ = [
    "MAX_TLV_BYTES",
    "PP2_TYPE_ALPN",
    "PP2_TYPE_AUTHORITY",
    "PP2_TYPE_CRC32C",
    "PP2_TYPE_NETNS",
    "PP2_TYPE_NOOP",
    "PP2_TYPE_SSL",
    "PP2_TYPE_UNIQUE_ID",
    "V2_SIGNATURE",
    "NeedMoreData",
    "ProxyHeader",
    "ProxyProtocolError",
    "build_v1",
    "build_v2",
    "client_address_of",
    "crc32c",
    "parse_proxy_header",
    "proxy_header_for",
]

PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_NOOP = 0x04
PP2_TYPE_UNIQUE_ID = 0x05
PP2_TYPE_SSL = 0x20
PP2_TYPE_NETNS = 0x30

V2_SIGNATURE = b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a"
_V2_HEADER = 16  # signature, ver_cmd, fam, len
_V1_PREFIX = b"PROXY "
# "The maximum line lengths the receiver must support including the CRLF are
# [...] worst case [...] => 107 chars"; "If the CRLF sequence is not found in
# the first 107 characters, the receiver should declare the line invalid."
_V1_MAX_LINE = 107
# TLVs may in principle fill 65535 bytes; real senders use a few hundred.
# Capping them bounds what an unauthenticated peer makes us buffer.
MAX_TLV_BYTES = 4096

_CMD_LOCAL = 0x0
_CMD_PROXY = 0x1
# The 14th byte: address family (high nibble) and transport (low nibble).
# "other values are unspecified and must not be emitted in version 2 of this
# protocol and must be rejected as invalid by receivers."
_FAM_UNSPEC = 0x00
_FAM_TCP4 = 0x11
_FAM_TCP6 = 0x21
_ADDRESS_LENGTH = {
    _FAM_UNSPEC: 0,
    _FAM_TCP4: 12,  # "Address length is 2*4 + 2*2 = 12 bytes."
    0x12: 12,  # UDP over IPv4
    _FAM_TCP6: 36,  # "Address length is 2*16 + 2*2 = 36 bytes."
    0x22: 36,  # UDP over IPv6
    0x31: 216,  # UNIX stream: "Address length is 2*108 = 216 bytes."
    0x32: 216,  # UNIX datagram
}
_MAX_ADDRESS_LENGTH = 216

# v1 line after "PROXY ", without the CRLF. "exactly one space" between the
# fields; ports are decimal "[0..65535] inclusive. Heading zeroes are not
# permitted"; the addresses are checked by ipaddress, which also refuses
# leading zeros in IPv4 octets ("Heading zeroes are not permitted in front of
# numbers in order to avoid any possible confusion with octal numbers").
_PORT = rb"(0|[1-9][0-9]{0,4})"
_V1_TCP4 = re.compile(rb"TCP4 ([0-9.]{7,15}) ([0-9.]{7,15}) " + _PORT + b" " + _PORT)
_V1_TCP6 = re.compile(rb"TCP6 ([0-9A-Fa-f:.]{2,45}) ([0-9A-Fa-f:.]{2,45}) " + _PORT + b" " + _PORT)
# What may precede the CRLF of an incomplete TCP4/TCP6 line: lets a garbage
# line be refused on its first bad byte instead of after 107 bytes.
_V1_TCP_PARTIAL = re.compile(rb"TCP[46](?: [0-9A-Fa-f:.]*){0,4}\r?")
_V1_PROTOCOLS = (b"TCP4 ", b"TCP6 ", b"UNKNOWN")

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class ProxyProtocolError(RemoteProtocolError):
    """The peer sent something that is not a valid PROXY protocol header."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A parsed PROXY protocol header.

    Attributes:
        version: 1 (text) or 2 (binary).
        command: ``"PROXY"`` (relayed: use the addresses) or ``"LOCAL"`` (v2
            only: the proxy's own connection, e.g. a health check; use the real
            endpoints).
        protocol: ``"TCP4"``/``"TCP6"``, or ``"UNKNOWN"`` for v1 UNKNOWN and
            for v2 UNSPEC, AF_UNIX and UDP. For LOCAL it still names the
            family byte (when defined), but no addresses are given.
        source: ``(ip, port)`` of the original client when ``protocol`` is
            TCP4/TCP6 and ``command`` is PROXY, else ``None``. IPv6 is in
            compressed form, IPv4-mapped IPv6 as ``::ffff:a.b.c.d``.
        destination: ``(ip, port)`` the client connected to, likewise.
        tlvs: v2 ``(type, value)`` pairs in order, every type kept raw
            (including NOOP and CRC32C); ``()`` for v1.
        size: bytes the header occupies at the start of the buffer.
    """

    version: Literal[1, 2]
    command: Literal["PROXY", "LOCAL"]
    protocol: Literal["TCP4", "TCP6", "UNKNOWN"]
    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    tlvs: tuple[tuple[int, bytes], ...] = ()
    size: int = 0

    def _tlv(self, tlv_type: int) -> bytes | None:
        for found, value in self.tlvs:
            if found == tlv_type:
                return value
        return None

    @property
    def alpn(self) -> bytes | None:
        """The PP2_TYPE_ALPN value (the protocol the client negotiated), if sent."""
        return self._tlv(PP2_TYPE_ALPN)

    @property
    def authority(self) -> str | None:
        """The PP2_TYPE_AUTHORITY value (the client's SNI / host name), if sent.

        :func:`parse_proxy_header` rejects a value that is not UTF-8; one built
        by hand is decoded with replacement characters rather than raising.
        """
        value = self._tlv(PP2_TYPE_AUTHORITY)
        return None if value is None else value.decode("utf-8", "replace")


def crc32c(data: bytes | bytearray) -> int:
    """CRC-32C (Castagnoli, RFC 4960 Appendix B) of ``data``, as PP2_TYPE_CRC32C uses.

    ``crc32c(b"123456789") == 0xE3069283``. Computed by google-crc32c's C
    extension (hardware CRC32 instructions where the CPU has them).
    """
    return int(google_crc32c.value(bytes(data)))


# build_v2's keyword parameter ``crc32c`` shadows the function inside it.
_crc32c = crc32c


# --------------------------------------------------------------------------
# Parsing


def parse_proxy_header(data: bytes | bytearray | memoryview) -> ProxyHeader | NeedMoreData:
    """Parse the PROXY protocol header (v1 or v2) at the start of ``data``.

    Args:
        data: everything received on the connection so far.

    Returns:
        A :class:`ProxyHeader` once the header is complete (its ``size`` is
        exact: the bytes after it are the proxied payload, untouched), or
        :class:`NeedMoreData` while ``data`` is a strict prefix of a header.

    Raises:
        ProxyProtocolError: ``data`` is not, and cannot become, a valid
            header. Nothing else is raised for any input.
    """
    if not isinstance(data, bytes):
        data = bytes(data[: _V2_HEADER + 0xFFFF])
    if not data:
        return NeedMoreData()
    if data[0] == V2_SIGNATURE[0]:
        # A prefix of the signature is a valid start; so is the signature.
        if not data.startswith(V2_SIGNATURE[: len(data)]):
            raise _not_a_header(data)
        if len(data) < _V2_HEADER:
            # Refuse a bad version/command/family byte right away; the rest
            # waits for the whole header.
            _check_ver_cmd_fam(data[12:14])
            return NeedMoreData(_V2_HEADER)
        return _parse_v2(data)
    if not data.startswith(_V1_PREFIX[: len(data)]):
        raise _not_a_header(data)
    if len(data) < len(_V1_PREFIX):
        return NeedMoreData()
    return _parse_v1(data)


def _not_a_header(data: bytes) -> ProxyProtocolError:
    return ProxyProtocolError(
        "expected a PROXY protocol header (the listener has accept_proxy_protocol = true) "
        f"but got {show_bytes(data, 16)}"
    )


def _format_ip(address: _Address) -> str:
    # inet_ntop's form, which is also what getpeername() reports: compressed
    # IPv6, with an IPv4-mapped address's last 32 bits in dotted quad
    # (Python before 3.13 would print ::ffff:102:304).
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return f"::ffff:{address.ipv4_mapped}"
    return str(address)


def _parse_v1(data: bytes) -> ProxyHeader | NeedMoreData:
    window = data[:_V1_MAX_LINE]
    lf = window.find(b"\n")
    if lf < 0:
        if len(window) >= _V1_MAX_LINE:
            raise ProxyProtocolError(
                f"PROXY v1: no CRLF within the first {_V1_MAX_LINE} bytes of the line"
            )
        _check_v1_partial(window[len(_V1_PREFIX) :])
        return NeedMoreData()
    # "The receiver must not tolerate a single CR or LF character to end the
    # line when a complete CRLF sequence is expected."
    if window[lf - 1] != 0x0D:
        raise ProxyProtocolError("PROXY v1: the line ends with a bare LF instead of CRLF")
    line = window[len(_V1_PREFIX) : lf - 1]
    size = lf + 1
    _check_v1_partial(line)  # the same messages whether or not the CRLF is here yet
    if line.startswith(b"UNKNOWN") and line[7:8] in (b"", b" ", b"\r"):
        # "For "UNKNOWN", the rest of the line before the CRLF may be omitted
        # by the sender, and the receiver must ignore anything presented
        # before the CRLF is found."
        return ProxyHeader(1, "PROXY", "UNKNOWN", None, None, size=size)
    match = _V1_TCP4.fullmatch(line) or _V1_TCP6.fullmatch(line)
    if match is None:
        raise ProxyProtocolError(
            f"PROXY v1: malformed line {show_bytes(window[: lf + 1], 110)}; expected "
            "'PROXY TCP4|TCP6 <src> <dst> <sport> <dport>' with single spaces, or 'PROXY UNKNOWN'"
        )
    tcp6 = line[3] == ord("6")
    src_ip = _v1_address(match[1], tcp6, "source")
    dst_ip = _v1_address(match[2], tcp6, "destination")
    src_port = _v1_port(match[3], "source")
    dst_port = _v1_port(match[4], "destination")
    return ProxyHeader(
        version=1,
        command="PROXY",
        protocol="TCP6" if tcp6 else "TCP4",
        source=(src_ip, src_port),
        destination=(dst_ip, dst_port),
        size=size,
    )


def _check_v1_partial(rest: bytes) -> None:
    """Refuse an incomplete v1 line as soon as it can no longer become valid."""
    head = rest[:7]
    if not any(proto.startswith(head) or head.startswith(proto) for proto in _V1_PROTOCOLS) or (
        head == b"UNKNOWN" and rest[7:8] not in (b"", b" ", b"\r")
    ):
        raise ProxyProtocolError(
            f"PROXY v1: unknown protocol {show_bytes(rest[:8])}; expected TCP4, TCP6 or UNKNOWN"
        )
    if rest.startswith((b"TCP4 ", b"TCP6 ")) and not _V1_TCP_PARTIAL.fullmatch(rest):
        raise ProxyProtocolError(f"PROXY v1: malformed line {show_bytes(rest, 110)}")


def _v1_address(raw: bytes, tcp6: bool, which: str) -> str:
    try:
        text = raw.decode("ascii")
        address: _Address = ipaddress.IPv6Address(text) if tcp6 else ipaddress.IPv4Address(text)
    except ValueError:
        family = "IPv6" if tcp6 else "IPv4"
        # "The advertised protocol family dictates what format to use."
        raise ProxyProtocolError(
            f"PROXY v1: {which} address {show_bytes(raw, 48)} is not a valid {family} address "
            "in canonical form"
        ) from None
    return _format_ip(address)


def _v1_port(raw: bytes, which: str) -> int:
    port = int(raw)  # the regex admits 1-5 ASCII digits only
    if port > 0xFFFF:
        raise ProxyProtocolError(f"PROXY v1: {which} port {port} is above 65535")
    return port


def _check_ver_cmd_fam(fixed: bytes) -> tuple[int, int | None]:
    """Check the ver_cmd and fam bytes (as many of them as ``fixed`` holds).

    Returns the command and the address length the family implies (``None``
    for a family byte that is undefined, which LOCAL ignores).
    """
    command = _check_ver_cmd(fixed[0]) if fixed else _CMD_PROXY
    if len(fixed) < 2:
        return command, None
    fam = fixed[1]
    address_length = _ADDRESS_LENGTH.get(fam)
    if address_length is None and command == _CMD_PROXY:
        raise ProxyProtocolError(f"PROXY v2: unknown address family/protocol byte 0x{fam:02x}")
    return command, address_length


def _check_ver_cmd(ver_cmd: int) -> int:
    # "As of this specification, it must always be sent as \x2 and the
    # receiver must only accept this value."
    if ver_cmd >> 4 != 2:
        raise ProxyProtocolError(f"PROXY v2: unsupported version {ver_cmd >> 4} (only 2 exists)")
    command = ver_cmd & 0x0F
    # "other values are unassigned and must not be emitted by senders.
    # Receivers must drop connections presenting unexpected values here."
    if command not in (_CMD_LOCAL, _CMD_PROXY):
        raise ProxyProtocolError(f"PROXY v2: unknown command 0x{command:x} (not LOCAL or PROXY)")
    return command


def _parse_v2(data: bytes) -> ProxyHeader | NeedMoreData:
    command, address_length = _check_ver_cmd_fam(data[12:14])
    fam = data[13]
    length = _u16(data, 14)
    if address_length is not None and length < address_length:
        raise ProxyProtocolError(
            f"PROXY v2: {length} address bytes, too few for family 0x{fam:02x} "
            f"(needs {address_length})"
        )
    if length - (_MAX_ADDRESS_LENGTH if address_length is None else address_length) > (
        MAX_TLV_BYTES
    ):
        raise ProxyProtocolError(
            f"PROXY v2: header announces {length} bytes after the fixed part, more than "
            f"the {MAX_TLV_BYTES} bytes of TLVs accepted"
        )
    size = _V2_HEADER + length
    if len(data) < size:
        # "The receiver must not start to parse an address before the whole
        # address block is received."
        return NeedMoreData(size)

    protocol: Literal["TCP4", "TCP6", "UNKNOWN"] = (
        "TCP4" if fam == _FAM_TCP4 else "TCP6" if fam == _FAM_TCP6 else "UNKNOWN"
    )
    if address_length is None:
        # LOCAL with a family byte the spec does not define: "the receiver
        # must accept this connection as valid and must use the real
        # connection endpoints and discard the protocol block including the
        # family which is ignored." Without a known address length, TLVs
        # cannot be located, so the whole block is discarded.
        return ProxyHeader(2, "LOCAL", "UNKNOWN", None, None, size=size)

    tlvs = _parse_tlvs(data, _V2_HEADER + address_length, size)
    source = destination = None
    if command == _CMD_PROXY and protocol != "UNKNOWN":
        block = data[_V2_HEADER : _V2_HEADER + address_length]
        width = 4 if protocol == "TCP4" else 16
        ports = 2 * width
        ip = ipaddress.IPv4Address if width == 4 else ipaddress.IPv6Address
        source = (_format_ip(ip(block[:width])), _u16(block, ports))
        destination = (_format_ip(ip(block[width:ports])), _u16(block, ports + 2))
    return ProxyHeader(
        version=2,
        command="PROXY" if command == _CMD_PROXY else "LOCAL",
        protocol=protocol,
        source=source,
        destination=destination,
        tlvs=tlvs,
        size=size,
    )


def _u16(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 2], "big")


def _parse_tlvs(data: bytes, start: int, end: int) -> tuple[tuple[int, bytes], ...]:
    """Split ``data[start:end]`` into TLVs; they must tile it exactly."""
    tlvs: list[tuple[int, bytes]] = []
    crc_offset: int | None = None
    offset = start
    while offset < end:
        if end - offset < 3:
            raise ProxyProtocolError(
                f"PROXY v2: {end - offset} stray bytes at the end of the header, "
                "too short for a TLV (type and length take 3)"
            )
        tlv_type = data[offset]
        length = _u16(data, offset + 1)
        value_start = offset + 3
        if value_start + length > end:
            raise ProxyProtocolError(
                f"PROXY v2: TLV 0x{tlv_type:02x} of {length} bytes overruns the header "
                f"by {value_start + length - end} bytes"
            )
        value = data[value_start : value_start + length]
        if tlv_type == PP2_TYPE_CRC32C:
            if length != 4:
                raise ProxyProtocolError(f"PROXY v2: CRC32C TLV of {length} bytes (must be 4)")
            if crc_offset is not None:
                raise ProxyProtocolError("PROXY v2: more than one CRC32C TLV")
            crc_offset = value_start
        elif tlv_type == PP2_TYPE_AUTHORITY:
            try:
                # "Contains the host name value passed by the client, as an
                # UTF8-encoded string."
                value.decode("utf-8")
            except UnicodeDecodeError:
                raise ProxyProtocolError(
                    f"PROXY v2: AUTHORITY TLV is not UTF-8: {show_bytes(value)}"
                ) from None
        tlvs.append((tlv_type, value))
        offset = value_start + length

    if crc_offset is not None:
        # "replace the 32 bits of the checksum field in the received PROXY
        # header with all '0's and calculate a CRC32c checksum value of the
        # whole PROXY header. [...] If it is not, the receiver MUST treat the
        # TCP connection providing the header as invalid."
        received = int.from_bytes(data[crc_offset : crc_offset + 4], "big")
        zeroed = data[:crc_offset] + b"\x00\x00\x00\x00" + data[crc_offset + 4 : end]
        computed = crc32c(zeroed)
        if computed != received:
            raise ProxyProtocolError(
                f"PROXY v2: CRC32C mismatch (header says 0x{received:08x}, "
                f"computed 0x{computed:08x})"
            )
    return tuple(tlvs)


# --------------------------------------------------------------------------
# Building


def _endpoint(endpoint: tuple[str, int], which: str) -> tuple[_Address, int]:
    host, port = endpoint
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise LocalProtocolError(
            f"PROXY header: {which} address {host!r} is not an IP address"
        ) from None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        # A link-local peer's "%eth0" means nothing to the receiver and is
        # not part of either wire format.
        address = ipaddress.IPv6Address(address.packed)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 0xFFFF:
        raise LocalProtocolError(f"PROXY header: {which} port {port!r} is not in 0..65535")
    return address, port


def _same_family(
    source: tuple[str, int], destination: tuple[str, int]
) -> tuple[_Address, int, _Address, int]:
    """Validate both endpoints and bring them to one address family.

    Both formats carry one family for both addresses. When they differ (an
    IPv4 client reached a dual-stack listener through an IPv6 address, or the
    other way round), the IPv4 one is sent as IPv4-mapped IPv6 (RFC 4291
    §2.5.5.2, ``::ffff:a.b.c.d``), as HAProxy does.
    """
    src, src_port = _endpoint(source, "source")
    dst, dst_port = _endpoint(destination, "destination")
    if src.version != dst.version:
        src, dst = _as_ipv6(src), _as_ipv6(dst)
    return src, src_port, dst, dst_port


def _as_ipv6(address: _Address) -> ipaddress.IPv6Address:
    if isinstance(address, ipaddress.IPv6Address):
        return address
    return ipaddress.IPv6Address(b"\x00" * 10 + b"\xff\xff" + address.packed)


def build_v1(source: tuple[str, int] | None, destination: tuple[str, int] | None) -> bytes:
    """The PROXY v1 line for a connection from ``source`` to ``destination``.

    Args:
        source: the client's ``(ip, port)``; ``None`` if unknown.
        destination: the ``(ip, port)`` the client connected to; ``None`` if
            unknown.

    Returns:
        ``PROXY TCP4|TCP6 src dst sport dport\\r\\n``, or ``PROXY UNKNOWN\\r\\n``
        when either endpoint is ``None`` (a line cannot carry half the
        addresses). An IPv4 endpoint paired with an IPv6 one is sent as
        IPv4-mapped IPv6 (``::ffff:a.b.c.d``) under TCP6. An IPv6 zone
        (``%eth0``) is dropped.

    Raises:
        LocalProtocolError: an address is not an IP literal, or a port is not
            in 0..65535.
    """
    if source is None or destination is None:
        return b"PROXY UNKNOWN\r\n"
    src, src_port, dst, dst_port = _same_family(source, destination)
    protocol = "TCP4" if src.version == 4 else "TCP6"
    line = f"PROXY {protocol} {_format_ip(src)} {_format_ip(dst)} {src_port} {dst_port}\r\n"
    return line.encode("ascii")


def build_v2(
    source: tuple[str, int] | None,
    destination: tuple[str, int] | None,
    *,
    command: Literal["PROXY", "LOCAL"] = "PROXY",
    tlvs: Sequence[tuple[int, bytes]] = (),
    crc32c: bool = False,
) -> bytes:
    """A PROXY v2 header for a TCP connection from ``source`` to ``destination``.

    Args:
        source: the client's ``(ip, port)``; ``None`` if unknown.
        destination: the ``(ip, port)`` the client connected to; ``None`` if
            unknown.
        command: ``"PROXY"`` for a relayed connection; ``"LOCAL"`` for the
            proxy's own (a health check): family UNSPEC, no addresses, the
            endpoints are ignored.
        tlvs: ``(type, value)`` pairs appended in order, e.g.
            ``(PP2_TYPE_ALPN, b"h2")``, ``(PP2_TYPE_AUTHORITY, b"example.com")``.
        crc32c: append a PP2_TYPE_CRC32C TLV, computed over the whole header
            with the checksum field zeroed.

    Returns:
        The header bytes. With command PROXY and an endpoint ``None``, the
        family is UNSPEC and no addresses are sent ("The sender should use
        this family when [...] dealing with unsupported protocol families").
        Mixed IPv4/IPv6 endpoints are sent as IPv6 like :func:`build_v1`.

    Raises:
        LocalProtocolError: a bad address, port, command or TLV (type outside
            0..255, value over 65535 bytes, a CRC32C TLV passed by hand), or
            TLVs over the :data:`MAX_TLV_BYTES` our own parser accepts.
    """
    if command == "PROXY":
        ver_cmd = 0x20 | _CMD_PROXY
    elif command == "LOCAL":
        ver_cmd = 0x20 | _CMD_LOCAL
    else:
        raise LocalProtocolError(f"PROXY v2: unknown command {command!r}")

    fam = _FAM_UNSPEC
    addresses = b""
    if command == "PROXY" and source is not None and destination is not None:
        src, src_port, dst, dst_port = _same_family(source, destination)
        fam = _FAM_TCP4 if src.version == 4 else _FAM_TCP6
        addresses = (
            src.packed + dst.packed + src_port.to_bytes(2, "big") + dst_port.to_bytes(2, "big")
        )

    parts: list[bytes] = []
    for tlv_type, value in tlvs:
        if not isinstance(tlv_type, int) or not 0 <= tlv_type <= 0xFF:
            raise LocalProtocolError(f"PROXY v2: TLV type {tlv_type!r} is not in 0..255")
        if tlv_type == PP2_TYPE_CRC32C:
            raise LocalProtocolError("PROXY v2: pass crc32c=True instead of a CRC32C TLV")
        if len(value) > 0xFFFF:
            raise LocalProtocolError(f"PROXY v2: TLV 0x{tlv_type:02x} value over 65535 bytes")
        parts += (bytes((tlv_type,)), len(value).to_bytes(2, "big"), bytes(value))
    if crc32c:
        parts.append(bytes((PP2_TYPE_CRC32C, 0, 4, 0, 0, 0, 0)))
    tlv_bytes = b"".join(parts)
    if len(tlv_bytes) > MAX_TLV_BYTES:
        raise LocalProtocolError(
            f"PROXY v2: {len(tlv_bytes)} bytes of TLVs, over the {MAX_TLV_BYTES} accepted"
        )

    body = addresses + tlv_bytes
    header = V2_SIGNATURE + bytes((ver_cmd, fam)) + len(body).to_bytes(2, "big") + body
    if crc32c:
        # The CRC TLV is last, so its value is the last 4 bytes (zero so far).
        header = header[:-4] + _crc32c(header).to_bytes(4, "big")
    return header


def proxy_header_for(
    version: str,
    client: tuple[str, int],
    local: tuple[str, int],
    *,
    sni: str | None,
    alpn: str | None,
    crc32c: bool,
) -> bytes:
    """The PROXY header a backend gets: the real client, and for v2 ALPN + authority TLVs."""
    if version == "v1":
        return build_v1(client, local)
    tlvs: list[tuple[int, bytes]] = []
    if alpn:
        tlvs.append((PP2_TYPE_ALPN, alpn.encode("latin-1")))
    if sni:
        tlvs.append((PP2_TYPE_AUTHORITY, sni.encode("ascii")))
    return build_v2(client, local, tlvs=tlvs, crc32c=crc32c)


def client_address_of(proxy: ProxyHeader | None, peer: tuple[str, int]) -> tuple[str, int]:
    """The address a PROXY header vouches for, or the TCP peer (LOCAL, UNKNOWN, none)."""
    if proxy is not None and proxy.command == "PROXY" and proxy.source is not None:
        return proxy.source
    return peer
