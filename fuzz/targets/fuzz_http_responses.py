"""Fuzz target: the HTTP/1.1 data plane fed arbitrary app-server bytes (response heads, chunks).

How this works: like ``fuzz_http_requests``, but the client sends one of a
few well-formed requests (``_fuzzhttp.REQUESTS``: GET, HEAD, HTTP/1.0,
Content-Length and chunked bodies, an upgrade, a pipeline, Expect) and the
input is mostly what the app server answers: status lines, fields,
Content-Length and chunked bodies, trailers, 1xx, 101, early closes and
silence (format: ``_fuzzhttp``'s docstring). Checked at the end: no
exception escapes, the client gets well-formed responses (or a 502/504, or
a close), the upstream got exactly the client's requests, and the
connection ends once every timeout has passed.

What the client gets is checked by two parsers: a strict one that reads it
as tlsgate writes it, and h11 as a client that knows each request's method
(a response to HEAD has no body) and whether it proposed an upgrade; both
must see the same responses, and h11 must accept every byte up to a 101
(``_fuzzhttp.Driver._check_client_side_h11``).
"""

from __future__ import annotations

from fuzz.targets._fuzzcommon import instrumented, main

with instrumented(__name__, exclude=["tlsgate.config.loader"]):
    from fuzz.targets import _fuzzhttp


def test_one_input(data: bytes) -> None:
    _fuzzhttp.run(data, answer=False)


if __name__ == "__main__":
    _fuzzhttp.memoize_config()
    main(test_one_input)
