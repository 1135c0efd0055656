"""Fuzz target: ``tlsgate.proto.clienthello.parse_client_hello`` on arbitrary bytes.

How this works: the input is what a client sent on a ``tls-passthrough``
listener. The parser may answer a :class:`ClientHello`, :class:`NeedMoreData`
or raise :class:`ClientHelloError`, nothing else; and because the data plane
calls it again with every read, its answers must agree across prefixes:

* a ClientHello of ``size`` bytes parses the same from ``data[:size]`` and from
  ``data`` plus any tail (bytes after its records are not looked at); every
  strict prefix of it -- a few are tried -- is NeedMoreData, whose ``at_least``
  is past the prefix and no further than ``size``; it is accepted with
  ``max_size = size`` and refused with ``max_size = size - 1``;
* NeedMoreData's ``at_least`` is more than the bytes given;
* an error stays an error whatever follows (the parser rejects only what can
  no longer become a ClientHello);
* bytes, bytearray and memoryview give the same answer;
* the decoded fields keep their documented shape (a lower-case host name
  without a trailing dot, at most 253 bytes; ``size`` within the buffer).

Every input gets the first check; a fixed quarter of them (by CRC,
``_fuzzcommon.sampled``) also the others, which re-parse it a dozen times.
"""

from __future__ import annotations

from fuzz.targets._fuzzcommon import check, check_incremental_parse, instrumented, main

with instrumented(__name__):
    from tlsgate.proto.clienthello import (
        ClientHello,
        ClientHelloError,
        NeedMoreData,
        parse_client_hello,
    )

Result = ClientHello | NeedMoreData | ClientHelloError


def _parse(data: bytes | bytearray | memoryview, max_size: int = 16384) -> Result:
    try:
        return parse_client_hello(data, max_size=max_size)
    except ClientHelloError as exc:
        return exc


def _same(a: Result, b: Result) -> bool:
    if isinstance(a, ClientHelloError) or isinstance(b, ClientHelloError):
        return type(a) is type(b) and str(a) == str(b)
    return a == b


def test_one_input(data: bytes) -> None:
    result = check_incremental_parse(
        data,
        _parse,
        error=ClientHelloError,
        need_more=NeedMoreData,
        grow=b"\x16\x03\x01\x00\x01\x01",
        tail=b"\x17\x03\x03",
        cuts=(0, 1, 5),
        what="the ClientHello",
    )
    if result is None:
        return
    assert isinstance(result, ClientHello)
    size = result.size
    check(_same(result, _parse(data, max_size=size)), "max_size = size refused it")
    check(
        isinstance(_parse(data, max_size=size - 1), ClientHelloError),
        "max_size = size - 1 accepted it",
    )
    name = result.server_name
    if name is not None:
        check(name == name.lower() and not name.endswith("."), f"server_name {name!r}")
        check(0 < len(name) <= 253, f"server_name of {len(name)} bytes")
    check(all(0 <= v <= 0xFFFF for v in result.supported_versions), "version out of range")
    check(all(0 <= s <= 0xFFFF for s in result.cipher_suites), "cipher suite out of range")
    check(len(set(result.extensions)) == len(result.extensions), "duplicate extension types")


if __name__ == "__main__":
    main(test_one_input)
