"""Fuzz target: the HTTP/1.1 data plane fed arbitrary client bytes (request heads, bodies).

How this works: ``_fuzzhttp.Driver`` runs one client connection of a
``tlsgate.net.testing.Harness`` -- the real ``ClientConnection``, ``Exchange``
and ``UpstreamConnection`` code, llhttp framing, pools and deadlines, on
in-memory transports and a fake clock -- and plays the input as a script of
client bytes, half-closes and pauses (format: ``_fuzzhttp``'s docstring).
Every request that reaches an upstream transport complete is answered by a
well-behaved app server (``_fuzzhttp.RESPONSES``). Checked at the end: no
exception escapes, the client gets well-formed responses or a close, the
upstream transports get exactly the client's requests (nothing smuggled),
and the connection ends once every timeout has passed.

The upstream bytes are checked by two parsers: llhttp (tlsgate's own, which
the answering app side uses too) and h11 as an app server that frames by
Content-Length and Transfer-Encoding alone; both must see the same requests,
h11 must accept every byte (``_fuzzhttp.Driver._check_upstream_side_h11``).
An upgrade request whose announced body never followed it upstream was
missed by llhttp alone: it ends such a request at its head, as tlsgate did.
"""

from __future__ import annotations

from fuzz.targets._fuzzcommon import instrumented, main

with instrumented(__name__, exclude=["tlsgate.config.loader"]):
    from fuzz.targets import _fuzzhttp


def test_one_input(data: bytes) -> None:
    _fuzzhttp.run(data, answer=True)


if __name__ == "__main__":
    _fuzzhttp.memoize_config()
    main(test_one_input)
