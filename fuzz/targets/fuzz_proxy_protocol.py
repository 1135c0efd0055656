"""Fuzz target: ``tlsgate.proto.proxy_protocol.parse_proxy_header`` (v1 and v2).

How this works: the input is what a peer sent on a listener with
``accept_proxy_protocol = true``. The parser may answer a :class:`ProxyHeader`,
:class:`NeedMoreData` or raise :class:`ProxyProtocolError`, nothing else, and
its answers must agree across the prefixes the data plane feeds it:

* a header of ``size`` bytes parses the same from ``data[:size]`` and with any
  payload after it; every strict prefix of it -- a few are tried -- is
  NeedMoreData (with an ``at_least`` past the prefix and no further than
  ``size``);
* an error stays an error whatever follows; NeedMoreData's ``at_least`` is
  more than the bytes given;
* bytes, bytearray and memoryview give the same answer;
* a header is self-consistent (addresses exactly for PROXY TCP4/TCP6, TLVs
  only in v2, ``authority`` decodes) and survives the builders: the
  addresses (and v2 TLVs) of a parsed PROXY TCP4/TCP6 header, rebuilt with
  ``build_v1``/``build_v2`` (with and without CRC32C), parse back to the
  same header.

Every input gets the first check; a fixed quarter of them (by CRC,
``_fuzzcommon.sampled``) also the others, which re-parse it a dozen times.
"""

from __future__ import annotations

from fuzz.targets._fuzzcommon import check, check_incremental_parse, instrumented, main

with instrumented(__name__):
    from tlsgate.proto.proxy_protocol import (
        MAX_TLV_BYTES,
        PP2_TYPE_CRC32C,
        NeedMoreData,
        ProxyHeader,
        ProxyProtocolError,
        build_v1,
        build_v2,
        client_address_of,
        parse_proxy_header,
    )

Result = ProxyHeader | NeedMoreData | ProxyProtocolError


def _parse(data: bytes | bytearray | memoryview) -> Result:
    try:
        return parse_proxy_header(data)
    except ProxyProtocolError as exc:
        return exc


def _check_rebuilt(header: ProxyHeader) -> None:
    if header.command != "PROXY" or header.protocol == "UNKNOWN":
        return
    assert header.source is not None
    assert header.destination is not None
    if header.version == 1:
        again = _parse(build_v1(header.source, header.destination))
        check(
            isinstance(again, ProxyHeader)
            and (again.protocol, again.source, again.destination)
            == (header.protocol, header.source, header.destination),
            f"build_v1 of {header!r} parses as {again!r}",
        )
        return
    tlvs = [(t, v) for t, v in header.tlvs if t != PP2_TYPE_CRC32C]
    room = MAX_TLV_BYTES - sum(3 + len(v) for _, v in tlvs)
    for crc in (False, True):
        if crc and room < 7:
            continue
        again = _parse(build_v2(header.source, header.destination, tlvs=tlvs, crc32c=crc))
        check(
            isinstance(again, ProxyHeader)
            and (again.protocol, again.source, again.destination)
            == (header.protocol, header.source, header.destination)
            and [(t, v) for t, v in again.tlvs if t != PP2_TYPE_CRC32C] == tlvs,
            f"build_v2(crc32c={crc}) of {header!r} parses as {again!r}",
        )


def test_one_input(data: bytes) -> None:
    result = check_incremental_parse(
        data,
        _parse,
        error=ProxyProtocolError,
        need_more=NeedMoreData,
        grow=b"\r\n\x00\r\nQUIT\n \r\n",
        tail=b"\x16\x03\x01",
        cuts=(0, 1, 6, 13, 15),
        what="the header",
    )
    if result is None:
        return
    assert isinstance(result, ProxyHeader)

    addressed = result.command == "PROXY" and result.protocol != "UNKNOWN"
    check(
        (result.source is not None and result.destination is not None) == addressed,
        f"addresses do not match command/protocol: {result!r}",
    )
    check(result.version == 2 or not result.tlvs, "TLVs in a v1 header")
    check(result.command == "PROXY" or result.version == 2, "LOCAL in a v1 header")
    _ = result.authority, result.alpn  # documented never to raise
    peer = ("192.0.2.1", 1)
    address = client_address_of(result, peer)
    check(address == (result.source if addressed else peer), f"client_address_of: {address}")
    _check_rebuilt(result)


if __name__ == "__main__":
    main(test_one_input)
