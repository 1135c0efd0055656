"""Peek at a TLS ClientHello without consuming it: SNI, ALPN and versions.

How this works: a ``tls-passthrough`` listener must route a connection by the
name the client asks for before it has a single byte to forward, and without
terminating TLS. The data plane reads from the client, calls
:func:`parse_client_hello` with *everything read so far*, and gets back either
:class:`NeedMoreData` (read again), a :class:`ClientHello` (route by
``server_name``, then replay every byte read to the chosen server), or a
:class:`ClientHelloError` (close the connection; the message says what the
client got wrong).

The parser walks the TLS records from the start of the buffer each call,
collects the handshake fragments they carry -- RFC 8446 §5.1: "Handshake
messages MAY be fragmented across multiple records" -- until the whole
ClientHello message is there, then decodes its body. It rejects as early as
it can (the first byte, each record header, the announced message length
against ``max_size``), so a client that is not speaking TLS, or that announces
a huge message, is turned away after a few bytes rather than after a timeout.

Only the fields routing needs are decoded (server_name, ALPN,
supported_versions); every other extension is checked for framing only and
listed by type. Nothing here does I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tlsgate.errors import RemoteProtocolError
from tlsgate.proto.common import NeedMoreData, show_bytes

__all__ = ["ClientHello", "ClientHelloError", "NeedMoreData", "parse_client_hello"]

# TLS record layer (RFC 8446 §5.1): ContentType(1) ProtocolVersion(2) length(2).
_RECORD_HEADER = 5
_CONTENT_HANDSHAKE = 22
# RFC 8446 §5.1: "The length MUST NOT exceed 2^14 bytes. An endpoint that
# receives a record that exceeds this length MUST terminate the connection
# with a "record_overflow" alert." A ClientHello always travels in
# TLSPlaintext records, so the 2^14 + 256 allowance of TLSCiphertext (§5.2)
# does not apply.
_MAX_FRAGMENT = 2**14
# Handshake header (RFC 8446 §4): HandshakeType(1) uint24 length.
_HANDSHAKE_HEADER = 4
_CLIENT_HELLO = 1

_EXT_SERVER_NAME = 0  # RFC 6066 §3
_EXT_ALPN = 16  # RFC 7301 §3.1
_EXT_SUPPORTED_VERSIONS = 43  # RFC 8446 §4.2.1
_NAME_TYPE_HOST_NAME = 0
_EXTENSION_NAMES = {
    _EXT_SERVER_NAME: "server_name extension",
    _EXT_ALPN: "ALPN extension",
    _EXT_SUPPORTED_VERSIONS: "supported_versions extension",
}

# A DNS host name: dot-separated labels of letters, digits, hyphens -- and
# underscores, which are not legal in host names (RFC 952/1123) but do occur in
# real names (service records, some internal zones); rejecting them would only
# break clients, and routing compares names exactly anyway. Labels are 1-63
# bytes; one trailing dot (a fully qualified name) is tolerated and removed.
_LABEL = rb"[A-Za-z0-9_-]{1,63}"
_is_host_name = re.compile(_LABEL + rb"(?:\." + _LABEL + rb")*\.?").fullmatch
_MAX_HOST_NAME = 253  # RFC 1035 §2.3.4, as text without the trailing dot

# Error messages for the most common ways a client talks something other than
# TLS to a TLS port: say what it looks like, so the log is actionable.
_looks_like_http = re.compile(rb"[A-Z]{1,20}(?: |$)").match
_PROXY_V1_PREFIX = b"PROXY "
_PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


class ClientHelloError(RemoteProtocolError):
    """The client's first bytes are not a well-formed TLS ClientHello."""


@dataclass(init=False, eq=True)
class ClientHello:
    """What a passthrough proxy needs to know about a ClientHello.

    Attributes:
        server_name: the SNI host_name (RFC 6066 §3), lower-cased, without a
            trailing dot; ``None`` if the client sent no server_name.
        alpn: RFC 7301 protocol names in the client's order, decoded as
            latin-1 so every byte survives; ``()`` if none were offered.
        supported_versions: the RFC 8446 §4.2.1 list (``0x0304`` is TLS 1.3);
            ``()`` if the extension is absent (a TLS 1.2 or older client).
        legacy_version: ``ClientHello.legacy_version`` (``0x0303`` from TLS
            1.3 clients, RFC 8446 §4.1.2).
        cipher_suites: the offered cipher suites, in order.
        extensions: the extension types, in order.
        size: bytes of the TLS records that carry the whole ClientHello,
            counted from the start of the buffer.
    """

    server_name: str | None
    alpn: tuple[str, ...]
    supported_versions: tuple[int, ...]
    legacy_version: int
    cipher_suites: tuple[int, ...]
    extensions: tuple[int, ...]
    size: int

    # Written out rather than generated: a dataclass's generated __init__ stays
    # interpreted in the compiled build, and one is made per passthrough connection.
    def __init__(
        self,
        *,
        server_name: str | None,
        alpn: tuple[str, ...],
        supported_versions: tuple[int, ...],
        legacy_version: int,
        cipher_suites: tuple[int, ...],
        extensions: tuple[int, ...],
        size: int,
    ) -> None:
        self.server_name = server_name
        self.alpn = alpn
        self.supported_versions = supported_versions
        self.legacy_version = legacy_version
        self.cipher_suites = cipher_suites
        self.extensions = extensions
        self.size = size


def parse_client_hello(
    data: bytes | bytearray | memoryview, *, max_size: int = 16384
) -> ClientHello | NeedMoreData:
    """Parse the ClientHello at the start of ``data`` without consuming it.

    Args:
        data: everything received from the client so far.
        max_size: the largest ClientHello accepted, counting the handshake
            message and the headers of the records that carry it.

    Returns:
        A :class:`ClientHello` once the records carrying the whole message
        have arrived; :class:`NeedMoreData` while ``data`` is a valid prefix
        of one. Bytes after those records are not looked at.

    Raises:
        ClientHelloError: ``data`` is not, and cannot become, a ClientHello
            within ``max_size`` bytes. Nothing else is raised for any input.
    """
    if not isinstance(data, bytes):
        # Only the first max_size bytes can matter; copy no more than those
        # (plus one record header, to still see the record that overflows).
        data = bytes(data[: max_size + _RECORD_HEADER])
    size = len(data)
    if size and data[0] != _CONTENT_HANDSHAKE:
        raise ClientHelloError(_not_tls_message(data))

    handshake = bytearray()  # the fragments of the complete records so far
    message_size: int | None = None  # handshake header + body, once known
    pos = 0
    while True:
        # At a record boundary. Check whatever part of the header is here.
        header = data[pos : pos + _RECORD_HEADER]
        if header[:1] and header[0] != _CONTENT_HANDSHAKE:
            # RFC 8446 §5.1: "Handshake messages MUST NOT be interleaved
            # with other record types."
            raise ClientHelloError(
                f"TLS record of content type {header[0]} at byte {pos} inside the "
                "ClientHello; every record carrying it must be a handshake record (22)"
            )
        if header[1:2] and header[1] != 3:
            raise ClientHelloError(
                f"TLS record version major {header[1]} at byte {pos} is not 3 "
                "(not TLS, or an SSLv2-era client)"
            )
        if len(header) < _RECORD_HEADER:
            return NeedMoreData(_at_least(pos, len(handshake), message_size))

        length = int.from_bytes(header[3:5], "big")
        if length == 0:
            # RFC 8446 §5.1: "Implementations MUST NOT send zero-length
            # fragments of Handshake types".
            raise ClientHelloError(f"empty TLS handshake record at byte {pos}")
        if length > _MAX_FRAGMENT:
            raise ClientHelloError(
                f"TLS record at byte {pos} announces {length} bytes, over the "
                f"2^14-byte limit of a plaintext record (RFC 8446 §5.1)"
            )
        end = pos + _RECORD_HEADER + length
        if end > max_size:
            raise ClientHelloError(
                f"ClientHello larger than the limit of {max_size} bytes "
                f"(its records run past byte {max_size})"
            )

        before = len(handshake)
        handshake += data[pos + _RECORD_HEADER : end]
        if message_size is None and len(handshake) >= 1 and handshake[0] != _CLIENT_HELLO:
            raise ClientHelloError(
                f"the first TLS handshake message is of type {handshake[0]}, not a ClientHello (1)"
            )
        if message_size is None and len(handshake) >= _HANDSHAKE_HEADER:
            message_size = _HANDSHAKE_HEADER + int.from_bytes(handshake[1:4], "big")
            if _RECORD_HEADER + message_size > max_size:
                raise ClientHelloError(
                    f"ClientHello larger than the limit of {max_size} bytes "
                    f"(the message alone announces {message_size} bytes)"
                )
        if message_size is not None and before + length > message_size:
            # A client sends nothing after its ClientHello until the server
            # answers, so extra handshake bytes in the last record are not a
            # second message but a length that lies.
            raise ClientHelloError(
                f"the TLS record at byte {pos} carries {before + length - message_size} "
                "bytes beyond the end of the ClientHello message"
            )
        if end > size:
            return NeedMoreData(_at_least(end, before + length, message_size))
        pos = end
        if message_size is not None and len(handshake) == message_size:
            break

    return _parse_body(bytes(handshake[_HANDSHAKE_HEADER:]), pos)


def _at_least(record_end: int, handshake_bytes: int, message_size: int | None) -> int:
    """Lower bound of the buffer size needed, given the records up to ``record_end``.

    ``handshake_bytes`` is what those records carry; whatever of the message
    they don't carry needs at least one more record header plus itself.
    """
    missing = (message_size or _HANDSHAKE_HEADER) - handshake_bytes
    return record_end if missing <= 0 else record_end + _RECORD_HEADER + missing


def _not_tls_message(data: bytes) -> str:
    """Explain, as usefully as the first bytes allow, why they are not TLS."""
    if data.startswith(_PROXY_V1_PREFIX) or (
        len(data) >= 4 and _PROXY_V2_SIGNATURE.startswith(data[:12])
    ):
        return (
            "a PROXY protocol header was sent to a listener that does not accept "
            f"one (accept_proxy_protocol = false): {show_bytes(data)}"
        )
    if _looks_like_http(data[:21]):
        return f"plain HTTP sent to a TLS port: {show_bytes(data)}"
    if data[0] & 0x80:
        # SSL 2.0 CLIENT-HELLO (and SSLv2-compatible SSLv3/TLS 1.0 hellos)
        # start with a two-byte length whose top bit is set; RFC 6176
        # prohibits SSL 2.0.
        return f"SSLv2-style hello (not supported): {show_bytes(data)}"
    return f"not a TLS handshake (first byte 0x{data[0]:02x}): {show_bytes(data)}"


class _Reader:
    """A cursor over one length-delimited TLS structure.

    Every read is bounds-checked and raises :class:`ClientHelloError` naming
    the field, so no malformed input can surface as an IndexError.
    """

    __slots__ = ("_data", "_end", "_pos", "what")

    def __init__(self, data: bytes, start: int, end: int, what: str) -> None:
        self._data = data
        self._pos = start
        self._end = end
        self.what = what

    @property
    def remaining(self) -> int:
        return self._end - self._pos

    def take(self, count: int, field: str) -> bytes:
        if count > self.remaining:
            raise ClientHelloError(
                f"ClientHello {field}: needs {count} bytes but the {self.what} "
                f"has only {self.remaining} left"
            )
        start = self._pos
        self._pos += count
        return self._data[start : self._pos]

    def uint(self, width: int, field: str) -> int:
        return int.from_bytes(self.take(width, field), "big")

    def vector(self, width: int, field: str, *, minimum: int = 0) -> _Reader:
        """Read a ``<minimum..2^(8*width)-1>`` vector: its length, then a reader over it."""
        length = self.uint(width, f"{field} length")
        if length > self.remaining:
            raise ClientHelloError(
                f"ClientHello {field}: length {length} overruns the {self.what}, "
                f"which has only {self.remaining} bytes left"
            )
        if length < minimum:
            raise ClientHelloError(
                f"ClientHello {field}: length {length} is below the minimum of {minimum}"
            )
        sub = _Reader(self._data, self._pos, self._pos + length, field)
        self._pos += length
        return sub

    def rest(self) -> bytes:
        return self.take(self.remaining, "rest")

    def expect_end(self) -> None:
        if self.remaining:
            raise ClientHelloError(
                f"ClientHello {self.what}: {self.remaining} unexpected bytes after its content"
            )


def _parse_body(body: bytes, size: int) -> ClientHello:
    """Decode a complete ClientHello body (RFC 8446 §4.1.2, RFC 5246 §7.4.1.2)."""
    msg = _Reader(body, 0, len(body), "message")
    legacy_version = msg.uint(2, "legacy_version")
    msg.take(32, "random")
    session_id = msg.vector(1, "legacy_session_id")
    if session_id.remaining > 32:
        # RFC 8446 §4.1.2: opaque legacy_session_id<0..32>
        raise ClientHelloError(
            f"ClientHello legacy_session_id: {session_id.remaining} bytes, over the maximum of 32"
        )
    suites = msg.vector(2, "cipher_suites", minimum=2)
    if suites.remaining % 2:
        raise ClientHelloError(
            f"ClientHello cipher_suites: odd length {suites.remaining} (2 bytes per suite)"
        )
    cipher_suites = tuple(suites.uint(2, "cipher suite") for _ in range(suites.remaining // 2))
    msg.vector(1, "legacy_compression_methods", minimum=1)

    server_name: str | None = None
    alpn: tuple[str, ...] = ()
    versions: tuple[int, ...] = ()
    types: list[int] = []
    # RFC 5246 §7.4.1.2: "the presence of extensions can be detected by
    # determining whether there are bytes following the compression_methods
    # at the end of the ClientHello" -- TLS 1.2 and older may omit the block.
    if msg.remaining:
        extensions = msg.vector(2, "extensions")
        msg.expect_end()
        while extensions.remaining:
            ext_type = extensions.uint(2, "extension type")
            ext = extensions.vector(2, _EXTENSION_NAMES.get(ext_type, f"extension {ext_type}"))
            # RFC 8446 §4.2: "There MUST NOT be more than one extension of
            # the same type in a given extension block."
            if ext_type in types:
                raise ClientHelloError(f"ClientHello: duplicate extension {ext_type}")
            types.append(ext_type)
            if ext_type == _EXT_SERVER_NAME:
                server_name = _parse_server_name(ext)
            elif ext_type == _EXT_ALPN:
                alpn = _parse_alpn(ext)
            elif ext_type == _EXT_SUPPORTED_VERSIONS:
                versions = _parse_supported_versions(ext)

    return ClientHello(
        server_name=server_name,
        alpn=alpn,
        supported_versions=versions,
        legacy_version=legacy_version,
        cipher_suites=cipher_suites,
        extensions=tuple(types),
        size=size,
    )


def _parse_server_name(ext: _Reader) -> str | None:
    """RFC 6066 §3: ``ServerName server_name_list<1..2^16-1>``."""
    names = ext.vector(2, "server_name list", minimum=1)
    ext.expect_end()
    host: str | None = None
    while names.remaining:
        name_type = names.uint(1, "server_name name_type")
        # Only host_name (0) is defined. Like most stacks, read any other
        # type with the same opaque<1..2^16-1> framing and ignore it.
        raw = names.vector(2, "server_name HostName", minimum=1).rest()
        if name_type != _NAME_TYPE_HOST_NAME:
            continue
        # RFC 6066 §3: "The ServerNameList MUST NOT contain more than one
        # name of the same name_type."
        if host is not None:
            raise ClientHelloError("ClientHello server_name: more than one host_name")
        host = _host_name(raw)
    return host


def _host_name(raw: bytes) -> str:
    # RFC 6066 §3: "HostName" contains the fully qualified DNS hostname of
    # the server [...] represented as a byte string using ASCII encoding
    # without a trailing dot." Trailing dots are tolerated (and removed)
    # because clients do send them and the name means the same.
    name = raw[:-1] if raw.endswith(b".") else raw
    if not _is_host_name(raw) or len(name) > _MAX_HOST_NAME:
        raise ClientHelloError(f"ClientHello server_name: not a DNS host name: {show_bytes(raw)}")
    return name.decode("ascii").lower()


def _parse_alpn(ext: _Reader) -> tuple[str, ...]:
    """RFC 7301 §3.1: ``ProtocolName protocol_name_list<2..2^16-1>``."""
    names = ext.vector(2, "ALPN protocol_name_list", minimum=2)
    ext.expect_end()
    protocols: list[str] = []
    while names.remaining:
        # opaque ProtocolName<1..2^8-1>: RFC 7301 §3.1 "Empty strings MUST
        # NOT be included".
        name = names.vector(1, "ALPN protocol name", minimum=1).rest()
        protocols.append(name.decode("latin-1"))
    return tuple(protocols)


def _parse_supported_versions(ext: _Reader) -> tuple[int, ...]:
    """RFC 8446 §4.2.1: ``ProtocolVersion versions<2..254>`` in a ClientHello."""
    versions = ext.vector(1, "supported_versions list", minimum=2)
    ext.expect_end()
    if versions.remaining % 2:
        raise ClientHelloError(
            f"ClientHello supported_versions: odd length {versions.remaining} (2 bytes per version)"
        )
    return tuple(versions.uint(2, "version") for _ in range(versions.remaining // 2))
