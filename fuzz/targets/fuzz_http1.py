"""Fuzz target: ``tlsgate.proto.http1`` on heads framed by llhttp, and chunked encoding.

How this works: the first input byte chooses what the rest is and how it is
handled (the low two bits the mode, the others options), the rest is raw
bytes, framed by httptools (llhttp) exactly as the data plane frames them.

* **request** (modes 0 and 1): the first request head llhttp parses goes
  through ``validate_request``, with ``framed_by_llhttp`` both true and false
  -- the flag may only skip scans llhttp already made, so both must agree.
  An accepted head is rewritten (``rewrite_request_headers``, the framing
  field the exchange adds) and serialized (``request_head_bytes``); llhttp
  must parse those bytes back as exactly one head with exactly those fields,
  the target in origin-form, one Host, no hop-by-hop or framing field but
  the ones added, and ``validate_request`` must accept it again with the
  same routing and framing (what we send an app server means the same to
  us as what the client sent).
* **response** (mode 2): the first response head goes through
  ``rewrite_response_headers`` (both ``framed_by_llhttp`` values agree) and
  ``response_framing`` as ``net.upstream``/``net.exchange`` call them; the
  serialized head (``response_head_bytes``) must parse back with the same
  status and exactly the fields built, and the framing must be one of the
  documented shapes (no body for HEAD/204/304/101, at most one framing
  field, chunked only to HTTP/1.1, close-delimited only without keep-alive).
* **chunked** (mode 3): the bytes, cut into pieces by a length byte each, go
  through ``encode_chunk`` and ``last_chunk`` (trailers from a fixed list
  chosen by the bytes); llhttp must decode the same body and trailers, and
  find the message complete exactly at the end.
"""

from __future__ import annotations

import re

import httptools

from fuzz.targets._fuzzcommon import InvariantViolation, Reader, check, instrumented, main

with instrumented(__name__):
    from tlsgate.errors import ClientProtocolError, UpstreamProtocolError
    from tlsgate.proto import http1

Headers = list[tuple[bytes, bytes]]

_ABSOLUTE = re.compile(rb"[A-Za-z][A-Za-z0-9+.\-]*://[^/?]*(.*)", re.DOTALL)
_FRAMING = (b"content-length", b"transfer-encoding")
_REASON_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # RFC 9112 §4: HTAB / SP / VCHAR / obs-text
_CLIENTS = ("192.0.2.7", "2001:db8::7", "10.1.2.3")
_TRAILERS: list[Headers] = [
    [],
    [(b"Checksum", b"abc")],
    [(b"X-A", b"1"), (b"x-b", b"")],
    [(b"Expires", b"Wed, 21 Oct 2015 07:28:00 GMT")],
]


class _Message:
    """httptools callbacks: the first message's head, body and trailers."""

    def __init__(self) -> None:
        self.url = b""
        self.reason = b""
        self.headers: Headers = []
        self.trailers: Headers = []
        self.body = bytearray()
        self.head_done = False
        self.complete = False
        self.method = b""
        self.version = ""
        self.status = 0
        self.parser: httptools.HttpRequestParser | httptools.HttpResponseParser | None = None

    def on_url(self, url: bytes) -> None:
        if not self.head_done:
            self.url += url

    def on_status(self, status: bytes) -> None:
        if not self.head_done:
            self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.complete:
            return
        # as the data plane collects them (net.http_proxy, net.upstream): without OWS
        value = value.rstrip(b" \t")
        (self.trailers if self.head_done else self.headers).append((name, value))

    def on_headers_complete(self) -> None:
        if self.head_done:
            return
        self.head_done = True
        p = self.parser
        assert p is not None
        self.version = p.get_http_version()
        if isinstance(p, httptools.HttpRequestParser):
            self.method = p.get_method()
        else:
            self.status = p.get_status_code()

    def on_body(self, body: bytes) -> None:
        if not self.complete:
            self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


def _parse(data: bytes, *, response: bool) -> tuple[_Message, bool]:
    """The first message in ``data``, and whether llhttp refused the bytes."""
    msg = _Message()
    parser: httptools.HttpRequestParser | httptools.HttpResponseParser = (
        httptools.HttpResponseParser(msg) if response else httptools.HttpRequestParser(msg)
    )
    msg.parser = parser
    try:
        parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        return msg, False
    except httptools.HttpParserError:
        return msg, True
    return msg, False


def _validate(msg: _Message, framed: bool, limits: tuple[int, int, int]) -> object:
    try:
        return http1.validate_request(
            msg.method,
            msg.url,
            msg.version,
            msg.headers,
            max_headers=limits[0],
            max_header_size=limits[1],
            max_body_size=limits[2],
            framed_by_llhttp=framed,
        )
    except ClientProtocolError as exc:
        return (exc.status_hint, str(exc))


def _names(headers: Headers) -> list[bytes]:
    return [n.lower() for n, _ in headers]


def _request(r: Reader, options: int) -> None:
    limits = (8, 256, 64) if options & 0x04 else (100, 64 * 1024, 0)
    msg, _ = _parse(r.rest(), response=False)
    if not msg.head_done:
        return
    info = _validate(msg, True, limits)
    check(info == _validate(msg, False, limits), "framed_by_llhttp changed the verdict")
    if not isinstance(info, http1.RequestInfo):
        return
    fwd = http1.ForwardingContext(
        client_ip=_CLIENTS[options >> 3 & 1],
        peer_ip=_CLIENTS[(options >> 4 & 1) + 1],
        peer_trusted=bool(options & 0x20),
        proto="https" if options & 0x40 else "http",
        listener_port=8443,
        client_ip_header=b"X-Client-IP" if options & 0x80 else b"",
    )
    out = http1.rewrite_request_headers(msg.headers, info, fwd)
    if info.body == "length":
        out.append((b"Content-Length", b"%d" % (info.content_length or 0)))
    elif info.body == "chunked":
        out.append((b"Transfer-Encoding", b"chunked"))
    head = http1.request_head_bytes(info, out)

    names = _names(out)
    check(names.count(b"host") == 1, f"{names.count(b'host')} Host fields sent upstream")
    allowed = {b"connection", b"upgrade"} if info.upgrade is not None else set()
    for name in names:
        check(
            name not in http1.HOP_BY_HOP or name in allowed or name == b"transfer-encoding",
            f"hop-by-hop field {name!r} sent upstream",
        )
    check(
        names.count(b"content-length") == (info.body == "length")
        and names.count(b"transfer-encoding") == (info.body == "chunked"),
        f"framing fields {[n for n in names if n in _FRAMING]} for body {info.body!r}",
    )

    again, refused = _parse(head, response=False)
    check(not refused and again.head_done, f"llhttp refuses the head sent upstream: {head!r}")
    origin = msg.url
    if not (origin.startswith(b"/") or origin == b"*"):
        m = _ABSOLUTE.fullmatch(origin)
        assert m is not None  # validate_request accepted it
        origin = m.group(1) if m.group(1).startswith(b"/") else b"/" + m.group(1)
    check(
        (again.method, again.url, again.version) == (msg.method, origin, "1.1"),
        f"request line sent upstream: {(again.method, again.url, again.version)}",
    )
    check(again.headers == out, f"fields sent upstream parse as {again.headers!r}, not {out!r}")
    if info.upgrade is None:
        bodiless = info.body == "none" or info.content_length == 0
        check(again.complete == bodiless, "the head sent upstream mis-frames the body")
    info2 = _validate(again, False, (10_000, 1 << 20, 0))
    check(isinstance(info2, http1.RequestInfo), f"our own upstream head is refused: {info2}")
    assert isinstance(info2, http1.RequestInfo)
    fields = ("method", "path", "query", "host", "port", "body", "content_length", "upgrade")
    for attr in fields:
        check(
            getattr(info2, attr) == getattr(info, attr),
            f"{attr} changes upstream: {getattr(info, attr)!r} -> {getattr(info2, attr)!r}",
        )


def _response(r: Reader, options: int) -> None:
    head_request = bool(options & 0x04)
    client_version = "1.0" if options & 0x08 else "1.1"
    wanted = bool(options & 0x10)
    hsts = "max-age=63072000" if options & 0x20 else ""
    msg, refused = _parse(r.rest(), response=True)
    if not msg.head_done or not 100 <= msg.status <= 999:
        return  # (a status < 100 is net.upstream's to refuse: KNOWN_ISSUES)
    status = msg.status
    if status == 101 and refused:
        return  # httptools refuses a 101 without Upgrade after its head: net.upstream's 502
    if status < 200 and status != 101:
        out = http1.rewrite_response_headers(msg.headers, hsts="", keep_alive=True)
        framing: Headers = []
        mode, reusable = http1.BODY_NONE, True
    else:
        content_length: bytes | None = None
        chunked = False
        for n, v in msg.headers:
            if n.lower() == b"content-length":
                content_length = v
            elif n.lower() == b"transfer-encoding":
                chunked = True
        mode, framing, reusable = http1.response_framing(
            status,
            content_length,
            chunked,
            head_request=head_request,
            client_version=client_version,
        )
        keep_alive = wanted and reusable

        def rewrite(framed: bool) -> Headers:
            return http1.rewrite_response_headers(
                msg.headers,
                hsts=hsts,
                keep_alive=keep_alive,
                upgrade=status == 101,
                client_version=client_version,
                framed_by_llhttp=framed,
            )

        out = rewrite(True)
        try:
            slow = rewrite(False)
        except UpstreamProtocolError as exc:
            raise InvariantViolation(f"llhttp let through what the scan refuses: {exc}") from exc
        check(slow == out, "framed_by_llhttp changed the response fields")
        no_body = head_request or status in (204, 304, 101)
        check((mode == http1.BODY_NONE) == no_body, f"mode {mode} for status {status}")
        check(mode != http1.BODY_CHUNKED or client_version == "1.1", "chunked to HTTP/1.0")
        check(reusable or mode == http1.BODY_RAW, "not reusable, yet framed")
        fnames = _names(framing)
        check(len(fnames) <= 1 and set(fnames) <= set(_FRAMING), f"framing {framing!r}")
        if mode == http1.BODY_RAW and not fnames:
            check(not reusable and client_version == "1.0", "close-delimited but reusable")
            check((b"Connection", b"close") in out, "close-delimited without Connection: close")
        connection = [v for n, v in out if n.lower() == b"connection"]
        check(len(connection) <= 1, f"Connection fields {connection!r}")

    for name in _names(out):
        check(name not in _FRAMING, f"framing field {name!r} copied from upstream")
    fields = out + framing
    raw = http1.response_head_bytes(status, msg.reason, fields)
    line = raw.split(b"\r\n", 1)[0]
    check(_REASON_CTL.search(line) is None, f"control characters in the status line {line!r}")
    again, refused = _parse(raw, response=True)
    check(not refused and again.head_done, f"llhttp refuses the head sent to the client: {raw!r}")
    check(again.status == status, f"status {status} became {again.status}")
    check(again.headers == fields, f"client fields parse as {again.headers!r}, not {fields!r}")
    if msg.reason and _REASON_CTL.search(msg.reason) is None:  # else: the standard phrase
        check(again.reason == msg.reason, f"reason {msg.reason!r} became {again.reason!r}")


def _chunked(r: Reader, options: int) -> None:
    trailers = _TRAILERS[options >> 2 & 3]
    pieces: list[bytes] = []
    while r.remaining:
        pieces.append(r.chunk())
    body = b"".join(http1.encode_chunk(p) for p in pieces) + http1.last_chunk(trailers)
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    msg, refused = _parse(raw, response=True)
    check(not refused and msg.complete, f"llhttp refuses our chunked body {body!r}")
    check(bytes(msg.body) == b"".join(pieces), "the chunked body decodes differently")
    check(msg.trailers == trailers, f"trailers {trailers!r} decode as {msg.trailers!r}")
    extra, _ = _parse(raw + b"X", response=True)
    check(bytes(extra.body) == bytes(msg.body), "bytes after the last chunk joined the body")


def test_one_input(data: bytes) -> None:
    r = Reader(data)
    options = r.byte()
    mode = options & 3
    if mode < 2:
        _request(r, options)
    elif mode == 2:
        _response(r, options)
    else:
        _chunked(r, options)


if __name__ == "__main__":
    main(test_one_input)
