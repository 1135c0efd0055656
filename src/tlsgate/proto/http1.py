"""HTTP/1.1 policy on top of llhttp framing: validate, rewrite, serialize.

How this works: the data plane lets httptools (llhttp) do the framing -- the
request line, header lines, Content-Length and chunked bodies -- and hands the
parsed pieces to :func:`validate_request`. That applies tlsgate's policy
(limits, target forms, the Host rules, message-body framing) and returns a
:class:`RequestInfo`, the summary the data plane routes and frames by. Then
:func:`rewrite_request_headers` / :func:`rewrite_response_headers` build the
header list for the other side (hop-by-hop fields out, forwarding fields in,
framing fields out -- the caller re-adds the framing it actually uses), and the
``*_bytes`` / chunk / response helpers serialize. Everything works on raw bytes,
decodes only what routing needs, and performs no I/O.

Headers are ``list[tuple[bytes, bytes]]``: names in the case they arrived in,
values without surrounding whitespace (OWS), one tuple per field line.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Literal

from tlsgate.errors import ClientProtocolError, LocalProtocolError, UpstreamProtocolError

Headers = list[tuple[bytes, bytes]]
BodyKind = Literal["none", "length", "chunked"]

# Fields that describe one connection, never the message, lower-case.
#
# RFC 9110 §7.6.1: "intermediaries SHOULD remove or replace fields that are known
# to require removal before forwarding, whether or not they appear as a
# connection-option [...]. This includes but is not limited to: Proxy-Connection,
# Keep-Alive, TE, Transfer-Encoding, and Upgrade" -- plus Connection itself.
#
# Proxy-Authenticate / Proxy-Authorization are in the set too, although §7.6.1
# does not list them: §11.7.1 says Proxy-Authenticate "applies only to the next
# outbound client on the response chain" -- for an app server's response that
# is tlsgate, which does no proxy authentication, so it is consumed here. And
# §11.7.2 says Proxy-Authorization "applies only to the next inbound proxy that
# demanded authentication using the Proxy-Authenticate header field"; since we
# never relay Proxy-Authenticate, no server behind us can have demanded it, so
# forwarding it would only leak a proxy credential to app servers. (Go's
# httputil.ReverseProxy strips both for the same reason.)
#
# Trailer is NOT in the set: RFC 9110 §6.6.2 makes it an end-to-end field (the
# RFC 2616 list that named "Trailers" was a typo for TE's "trailers").
HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"proxy-connection",
        b"keep-alive",
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)

# RFC 9110 §5.6.2: tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" /
# "." / "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA
_TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_is_token_match = re.compile(_TCHAR + rb"+").fullmatch
# All header names at once, joined with ":" (never a tchar): one regex call per
# request instead of one per field.
_all_tokens_match = re.compile(_TCHAR + rb"+(?::" + _TCHAR + rb"+)*").fullmatch

# Request targets are URIs (RFC 9112 §3.2): visible ASCII only. "#" starts a
# fragment, which is never part of a request-target; HAProxy rejects it too,
# because a backend that reads it differently from us is a routing bypass.
_find_bad_target = re.compile(rb"[^\x21-\x7e]|#").search

# absolute-form: scheme "://" authority [path-abempty] ["?" query]
_ABSOLUTE_FORM = re.compile(rb"([A-Za-z][A-Za-z0-9+.\-]*)://([^/?]*)(.*)", re.DOTALL)

# Host reg-name. RFC 3986 also allows sub-delims ("!$&'()*+,;="), but no DNS
# name contains them and "," ";" "=" would corrupt the X-Forwarded-Host and
# Forwarded lists we derive from Host, so they are rejected as invalid values.
_REG_NAME = re.compile(rb"(?:[A-Za-z0-9\-._~]|%[0-9A-Fa-f]{2})*")

# 405 responses MUST carry Allow (RFC 9110 §15.5.6); tlsgate forwards every
# method except CONNECT, so list the registered ones the backends may serve.
_ALLOW_ALL_BUT_CONNECT = b"GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE, PATCH"

# Longest Content-Length we convert (llhttp rejects values beyond 2**64 anyway);
# also keeps int() far from its 4300-digit guard.
_MAX_LENGTH_DIGITS = 18


def _show(value: bytes, limit: int = 64) -> str:
    """Render untrusted bytes safely for an error message."""
    text = value[:limit].decode("ascii", "backslashreplace")
    return text + ("..." if len(value) > limit else "")


def _is_token(value: bytes) -> bool:
    return _is_token_match(value) is not None


def _has_nul_cr_lf(value: bytes) -> bool:
    # RFC 9110 §5.5: "a recipient of CR, LF, or NUL within a field value MUST
    # either reject the message or replace each of those characters with SP"
    # -- we reject. Three memchr scans beat one regex search.
    return b"\n" in value or b"\r" in value or b"\x00" in value


def _split_list(values: Iterable[bytes]) -> list[bytes]:
    """Split comma-separated list fields into lower-case members.

    RFC 9110 §5.6.1: "a recipient MUST parse and ignore a reasonable number of
    empty list elements".
    """
    out: list[bytes] = []
    for value in values:
        for raw in value.split(b","):
            member = raw.strip(b" \t").lower()
            if member:
                out.append(member)
    return out


def _serialize(headers: Headers) -> bytes:
    if not headers:
        return b""
    return b"\r\n".join([name + b": " + value for name, value in headers]) + b"\r\n"


@functools.lru_cache(maxsize=128)
def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


_date_cache: tuple[int, bytes] = (0, b"")


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _http_date() -> bytes:
    """IMF-fixdate (RFC 9110 §5.6.7) for the Date field, computed at most once a second.

    Formatted here rather than with email.utils, which imports socket (this
    package must not, even indirectly).
    """
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        t = time.gmtime(now)
        text = (
            f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
        )
        _date_cache = (now, text.encode("ascii"))
    return _date_cache[1]


@dataclass
class RequestInfo:
    """What tlsgate needs to know about a validated request (read-only by convention).

    Not a frozen dataclass: one is made per request, and a frozen dataclass's
    ``__init__`` stores each field through ``object.__setattr__``, which the
    compiled build can't turn into plain stores (measured: ~1.5 % of a worker's
    samples).

    Attributes:
        method: the method token, as received.
        target: the request-target, as received.
        path: the path part (no query), ASCII with percent-encoding left as
            received; ``"/"`` for ``*`` or an absolute-form target without a path.
        query: the query without ``?``; ``""`` if none.
        host: lower-case, port stripped, IPv6 without brackets; from an
            absolute-form target if there is one, else from Host; ``""`` when an
            HTTP/1.0 request had no Host (or Host was empty).
        port: the port from the target authority or Host, when one was given.
        http_version: ``"1.0"`` or ``"1.1"``.
        body: how the request body is framed. ``"length"`` includes
            ``Content-Length: 0`` (kept so POSTs keep their explicit zero).
        content_length: the Content-Length value, for ``body == "length"``.
        keep_alive: whether the client wants the connection kept open.
        expect_continue: ``Expect: 100-continue`` on an HTTP/1.1 request.
        upgrade: the lower-cased Upgrade list (e.g. ``b"websocket"``) when an
            HTTP/1.1 request carries Upgrade AND Connection lists ``upgrade``.
    """

    method: bytes
    target: bytes
    path: str
    query: str
    host: str
    port: int | None
    http_version: str
    body: BodyKind
    content_length: int | None
    keep_alive: bool
    expect_continue: bool
    upgrade: bytes | None

    @property
    def absolute_form(self) -> bool:
        """True when the target was absolute-form (``http://host/path``)."""
        return not (self.target.startswith(b"/") or self.target == b"*")


@functools.lru_cache(maxsize=1024)
def parse_host(value: bytes) -> tuple[str, int | None]:
    """Parse a Host field value or a URI authority (without userinfo).

    Accepts ``reg-name`` (letters, digits, ``-._~`` and %-escapes), IPv4
    dotted quads (which are reg-names) and bracketed IPv6 literals, each with an
    optional ``:port`` (0-65535; an empty port means none, as RFC 3986 allows).
    An empty value is valid and yields ``("", None)``: RFC 9112 §3.2 has clients
    send an empty Host when the target URI has no authority.

    Returns:
        ``(host, port)``: host lower-cased, IPv6 without brackets. Results are
        cached (a server sees the same few Host values over and over); errors
        are not.

    Raises:
        ClientProtocolError: (400) the value is not a valid host.
    """
    v = value.strip(b" \t")
    if v.startswith(b"["):
        end = v.find(b"]")
        literal, rest = v[1:end], v[end + 1 :]
        # No zone IDs ("%25eth0"): meaningless in a Host header.
        if end < 0 or not literal.isascii() or b"%" in literal:
            raise ClientProtocolError(f"invalid host {_show(value)!r}")
        try:
            ipaddress.IPv6Address(literal.decode("ascii"))
        except ValueError as exc:
            raise ClientProtocolError(f"invalid IPv6 host {_show(value)!r}") from exc
        host = literal
        if rest and not rest.startswith(b":"):
            raise ClientProtocolError(f"invalid host {_show(value)!r}")
        port_b = rest[1:]
    else:
        host, sep, port_b = v.partition(b":")
        if not _REG_NAME.fullmatch(host) or (sep and not host):
            raise ClientProtocolError(f"invalid host {_show(value)!r}")
    port: int | None = None
    if port_b:
        if not port_b.isdigit() or len(port_b) > 5 or int(port_b) > 65535:
            raise ClientProtocolError(f"invalid port in host {_show(value)!r}")
        port = int(port_b)
    return host.decode("ascii").lower(), port


_INTERESTING = (
    b"host",
    b"content-length",
    b"transfer-encoding",
    b"connection",
    b"expect",
    b"upgrade",
)
_INTERESTING_LENGTHS = frozenset(len(n) for n in _INTERESTING)


def validate_request(
    method: bytes,
    target: bytes,
    http_version: str,
    headers: Headers,
    *,
    max_headers: int,
    max_header_size: int,
    max_body_size: int,
    framed_by_llhttp: bool = False,
) -> RequestInfo:
    """Apply tlsgate's request policy to a request head llhttp has framed.

    Args:
        method: the method token.
        target: the request-target bytes.
        http_version: ``"1.0"`` or ``"1.1"`` (``"0.9"``, a request line without a
            version, is refused with 400, anything else with 505).
        headers: the header field lines, in order.
        max_headers: most header lines allowed (431 beyond).
        max_header_size: most bytes for request line + headers (431 beyond;
            414 when the target alone is longer).
        max_body_size: largest Content-Length allowed (413 beyond); 0 = no limit.
        framed_by_llhttp: the head came from httptools' (llhttp's) strict parser,
            which already refuses invalid method and header-name tokens and NUL,
            CR or LF in header values (``tests/unit/proto/test_llhttp_guarantees.py``
            proves it for the installed version), so those scans are skipped.

    Returns:
        The :class:`RequestInfo` summary.

    Raises:
        ClientProtocolError: with ``status_hint`` 400, 405 (CONNECT), 413, 414,
            431, 501 (a transfer coding other than chunked) or 505.
    """
    if http_version not in ("1.0", "1.1"):
        if http_version == "0.9":
            # llhttp's name for a request line without a version (HTTP/0.9, RFC 1945
            # §4.1); HAProxy answers it with 400 too
            raise ClientProtocolError("HTTP/0.9 request line (no HTTP version)")
        raise ClientProtocolError(
            f"HTTP version {http_version[:16]!r} is not supported", status_hint=505
        )
    if not framed_by_llhttp and not _is_token(method):
        raise ClientProtocolError(f"invalid method {_show(method)!r}")
    if len(target) > max_header_size:
        raise ClientProtocolError(
            f"request target is {len(target)} bytes, more than {max_header_size}",
            status_hint=414,
        )
    if len(headers) > max_headers:
        raise ClientProtocolError(
            f"{len(headers)} header fields, more than {max_headers}", status_hint=431
        )
    names = b":".join([name for name, _ in headers])
    # HTAB is legal in values, so it cannot create a false NUL/CR/LF hit
    values = b"\t".join([value for _, value in headers])
    # request line: METHOD SP target SP HTTP/1.1 CRLF; each field: name ": " value CRLF
    size = len(method) + len(target) + 12
    if headers:
        size += len(names) + len(values) + 2 * (1 - len(headers)) + 4 * len(headers)
    if size > max_header_size:
        raise ClientProtocolError(
            f"request head is {size} bytes, more than {max_header_size}", status_hint=431
        )
    if not framed_by_llhttp and (
        (
            headers
            # the count catches a ":" inside a name, which the join would hide
            and (_all_tokens_match(names) is None or names.count(b":") != len(headers) - 1)
        )
        or _has_nul_cr_lf(values)
    ):
        # slow path, only to name the culprit
        for name, value in headers:
            if not _is_token(name):
                raise ClientProtocolError(f"invalid header name {_show(name)!r}")
            if _has_nul_cr_lf(value):
                raise ClientProtocolError(
                    f"header {_show(name)!r} contains NUL, CR or LF in its value"
                )

    hosts: list[bytes] = []
    content_lengths: list[bytes] = []
    transfer_encodings: list[bytes] = []
    connection: list[bytes] = []
    expect: list[bytes] = []
    upgrade: list[bytes] = []
    for name, value in headers:
        # the names that matter are 4 to 17 bytes long; most others are skipped unlowered
        if len(name) in _INTERESTING_LENGTHS:
            lname = name.lower()
            if lname == b"host":
                hosts.append(value)
            elif lname == b"content-length":
                content_lengths.append(value)
            elif lname == b"transfer-encoding":
                transfer_encodings.append(value)
            elif lname == b"connection":
                connection.append(value)
            elif lname == b"expect":
                expect.append(value)
            elif lname == b"upgrade":
                upgrade.append(value)

    # --- request-target (RFC 9112 §3.2) ---
    if method == b"CONNECT":
        raise ClientProtocolError("CONNECT is not supported", status_hint=405)
    if not target or _find_bad_target(target):
        raise ClientProtocolError(f"invalid request target {_show(target)!r}")
    authority: tuple[str, int | None] | None = None
    if target[0] == 0x2F:  # "/": origin-form
        path_b, _, query_b = target.partition(b"?")
    elif target == b"*":
        # RFC 9112 §3.2.4: asterisk-form "is only used for a server-wide
        # OPTIONS request".
        if method != b"OPTIONS":
            raise ClientProtocolError("request target '*' is only allowed for OPTIONS")
        path_b, query_b = b"/", b""
    else:
        m = _ABSOLUTE_FORM.fullmatch(target)
        if m is None or m.group(1).lower() not in (b"http", b"https"):
            raise ClientProtocolError(
                f"request target {_show(target)!r} is neither origin-form nor an "
                "http(s) absolute-form URI"
            )
        raw_authority, rest = m.group(2), m.group(3)
        # RFC 9110 §4.2.4: "Before making use of an "http" or "https" URI
        # reference received from an untrusted source, a recipient SHOULD parse
        # for userinfo and treat its presence as an error".
        if b"@" in raw_authority:
            raise ClientProtocolError("userinfo is not allowed in a request target")
        authority = parse_host(raw_authority)
        # RFC 9110 §4.2.1: "A recipient that processes such a URI reference [with
        # an empty host identifier] MUST reject it as invalid."
        if not authority[0]:
            raise ClientProtocolError("request target has an empty host")
        path_b, _, query_b = rest.partition(b"?")
        path_b = path_b or b"/"

    # --- Host (RFC 9112 §3.2) ---
    # "A server MUST respond with a 400 (Bad Request) status code to any HTTP/1.1
    # request message that lacks a Host header field and to any request message
    # that contains more than one Host header field line or a Host header field
    # with an invalid field value."
    if len(hosts) > 1:
        raise ClientProtocolError("more than one Host header field")
    if hosts:
        host, port = parse_host(hosts[0])
    elif http_version == "1.1":
        raise ClientProtocolError("HTTP/1.1 request without a Host header field")
    else:
        host, port = "", None
    if authority is not None:
        # RFC 9112 §3.2.2: "When a proxy receives a request with an absolute-form
        # of request-target, the proxy MUST ignore the received Host header field
        # (if any) and instead replace it with the host information of the
        # request-target."
        host, port = authority

    # --- message body framing (RFC 9112 §6) ---
    body: BodyKind = "none"
    content_length: int | None = None
    if transfer_encodings:
        # "A server or client that receives an HTTP/1.0 message containing a
        # Transfer-Encoding header field MUST treat the message as if the framing
        # is faulty" (§6.1).
        if http_version == "1.0":
            raise ClientProtocolError("Transfer-Encoding in an HTTP/1.0 request")
        # "A server MAY reject a request that contains both Content-Length and
        # Transfer-Encoding [...]" (§6.1) -- a smuggling vector, so we do.
        if content_lengths:
            raise ClientProtocolError("both Transfer-Encoding and Content-Length")
        codings = _split_list(transfer_encodings)
        # "If a Transfer-Encoding header field is present in a request and the
        # chunked transfer coding is not the final encoding, the message body
        # length cannot be determined reliably; the server MUST respond with the
        # 400 (Bad Request) status code" (§6.3).
        if not codings or codings[-1] != b"chunked":
            raise ClientProtocolError("Transfer-Encoding must end in chunked")
        # "A sender MUST NOT apply the chunked transfer coding more than once to
        # a message body" (§6.1).
        if codings.count(b"chunked") > 1:
            raise ClientProtocolError("chunked applied more than once")
        # "A server that receives a request message with a transfer coding it
        # does not understand SHOULD respond with 501 (Not Implemented)" (§6.1);
        # we forward bodies without decoding them, so only chunked is understood.
        if len(codings) > 1:
            raise ClientProtocolError(
                f"transfer coding {codings[0].decode('ascii', 'replace')!r} is not supported",
                status_hint=501,
            )
        body = "chunked"
    elif content_lengths:
        # §6.3: several Content-Length values (or a list) MUST be either rejected
        # or reduced to one valid value; we reject, as llhttp does.
        if len(content_lengths) > 1:
            raise ClientProtocolError("more than one Content-Length header field")
        value = content_lengths[0]
        if not value.isdigit():
            raise ClientProtocolError(f"invalid Content-Length {_show(value)!r}")
        digits = value.lstrip(b"0") or b"0"
        if len(digits) > _MAX_LENGTH_DIGITS:
            raise ClientProtocolError(
                "Content-Length is too large", status_hint=413 if max_body_size > 0 else 400
            )
        content_length = int(digits)
        if max_body_size > 0 and content_length > max_body_size:
            raise ClientProtocolError(
                f"request body of {content_length} bytes exceeds the limit of {max_body_size}",
                status_hint=413,
            )
        body = "length"

    # --- connection management (RFC 9112 §9.3) ---
    options = _split_list(connection)
    # llhttp (as httptools drives it) takes any request with an Upgrade field and the
    # "upgrade" connection option for an upgrade, whatever its version, and ends the
    # message with its head: what follows is left to a tunnel, which a server that
    # declines the upgrade never opens. A body there would not be forwarded, while the
    # head sent upstream announces it (the framing is re-added from this RequestInfo):
    # the server, reading it on, would take the next request on that connection --
    # another client's, once the connection is pooled -- for this body. Such a body
    # cannot be framed reliably here (RFC 9112 §6.3: 400, and close).
    if upgrade and b"upgrade" in options and (body == "chunked" or content_length):
        raise ClientProtocolError("an upgrade request with a body is not supported")
    if http_version == "1.1":
        keep_alive = b"close" not in options
    else:
        keep_alive = b"keep-alive" in options and b"close" not in options
    # RFC 9110 §10.1.1: "A server that receives a 100-continue expectation in an
    # HTTP/1.0 request MUST ignore that expectation."
    expect_continue = http_version == "1.1" and b"100-continue" in _split_list(expect)
    # RFC 9110 §7.8: "A server MUST ignore an Upgrade header field that is
    # received in an HTTP/1.0 request", and "When Upgrade is sent, the sender
    # MUST also send a Connection header field that contains an "upgrade"
    # connection option".
    upgrade_value: bytes | None = None
    if http_version == "1.1" and upgrade and b"upgrade" in options:
        upgrade_value = b", ".join(_split_list(upgrade)) or None

    return RequestInfo(
        method=method,
        target=target,
        path=path_b.decode("ascii"),
        query=query_b.decode("ascii"),
        host=host,
        port=port,
        http_version=http_version,
        body=body,
        content_length=content_length,
        keep_alive=keep_alive,
        expect_continue=expect_continue,
        upgrade=upgrade_value,
    )


def _origin_form(target: bytes) -> bytes:
    """The origin-form (or ``*``) equivalent of a validated request target."""
    if target.startswith(b"/") or target == b"*":
        return target
    m = _ABSOLUTE_FORM.fullmatch(target)
    if m is None:
        raise LocalProtocolError(f"not a validated request target: {_show(target)!r}")
    rest = m.group(3)
    return rest if rest.startswith(b"/") else b"/" + rest


def _authority(host: str, port: int | None) -> bytes:
    bracketed = f"[{host}]" if ":" in host else host
    return (bracketed if port is None else f"{bracketed}:{port}").encode("ascii")


def request_head_bytes(info: RequestInfo, headers: Headers) -> bytes:
    """Serialize the request head sent upstream.

    Always HTTP/1.1; an absolute-form target is sent in origin-form (servers
    need not expect absolute-form; RFC 9112 §3.2.2 says clients send it only to
    proxies). ``headers`` is what :func:`rewrite_request_headers` returned plus
    the framing field the caller chose.
    """
    return b"".join(
        (
            info.method,
            b" ",
            _origin_form(info.target),
            b" HTTP/1.1\r\n",
            _serialize(headers),
            b"\r\n",
        )
    )


@dataclass(frozen=True, slots=True)
class ForwardingContext:
    """Who sent a request, as far as tlsgate believes.

    Attributes:
        client_ip: the client address the caller decided to believe (from the
            TCP peer, an accepted PROXY header or a trusted client-IP header).
        peer_ip: the hop that wrote this request's headers: the TCP peer, or
            the PROXY protocol source when a PROXY header was accepted.
        peer_trusted: ``peer_ip`` is in the listener's trusted_proxies, so its
            forwarding headers are kept and appended to.
        proto: the scheme the client used to reach us.
        listener_port: the port the client connected to.
        client_ip_header: the listener's configured client-IP header (e.g.
            ``b"CF-Connecting-IP"``), removed from untrusted peers' requests.
        authority: the Host sent upstream for a request that has none (an
            HTTP/1.0 request without Host): the authority RFC 9112 §3.3
            reconstructs for it, the name the client asked for by SNI or else the
            connection's local address (see :func:`default_authority`). An empty
            Host, which is what RFC 9112 §3.2 has a client send without one, is
            refused by common servers (nginx answers 400).
    """

    client_ip: str
    peer_ip: str
    peer_trusted: bool
    proto: Literal["http", "https"]
    listener_port: int
    client_ip_header: bytes = b""
    authority: bytes = b""
    # encoded once per connection, used by every request on it
    _client: bytes = field(init=False, repr=False)
    _peer: bytes = field(init=False, repr=False)
    _proto_line: bytes = field(init=False, repr=False)
    _port_line: bytes = field(init=False, repr=False)
    _for_client: bytes = field(init=False, repr=False)
    _for_peer: bytes = field(init=False, repr=False)
    _ip_header: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        setattr_ = object.__setattr__  # frozen: the derived fields are set once, here
        setattr_(self, "_client", self.client_ip.encode("ascii", "replace"))
        setattr_(self, "_peer", self.peer_ip.encode("ascii", "replace"))
        setattr_(self, "_proto_line", self.proto.encode("ascii"))
        setattr_(self, "_port_line", b"%d" % self.listener_port)
        setattr_(self, "_for_client", b"for=" + _forwarded_node(self.client_ip))
        setattr_(self, "_for_peer", b"for=" + _forwarded_node(self.peer_ip))
        setattr_(self, "_ip_header", self.client_ip_header.lower())


def default_authority(
    server_name: str | None, local_ip: str, local_port: int, *, tls: bool
) -> bytes:
    """The authority of a request that names none (RFC 9112 §3.3: "the default name
    configured for the server or, if no such name is configured, the connection's
    local IP address"): the SNI name, else ``local_ip:local_port``, the port left out
    when it is the scheme's default."""
    if server_name:
        try:
            return server_name.encode("idna")
        except UnicodeError:
            pass  # not a name OpenSSL would have let through; use the address
    host = f"[{local_ip}]" if ":" in local_ip else local_ip
    if not host:
        return b""
    if local_port and local_port != (443 if tls else 80):
        host = f"{host}:{local_port}"
    return host.encode("ascii", "replace")


@functools.lru_cache(maxsize=1024)
def _forwarded_value(value: bytes) -> bytes:
    """RFC 7239 §4: value = token / quoted-string."""
    if _is_token(value):
        return value
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def _forwarded_node(ip: str) -> bytes:
    # RFC 7239 §6: "Note that as ":" and "[]" are not valid characters in
    # "token", IPv6 addresses are written as "quoted-string"", e.g.
    # for="[2001:db8:cafe::17]".
    if ":" in ip and not ip.startswith("["):
        return b'"[' + ip.encode("ascii", "replace") + b']"'
    return _forwarded_value(ip.encode("ascii", "replace"))


# Client-address headers anyone can forge (besides X-Forwarded-*); an untrusted
# peer's copies are removed.
_CLIENT_ADDRESS_HEADERS = frozenset({b"forwarded", b"x-real-ip"})
# Names rewrite_request_headers must look at; all others are copied as they are.
_REQUEST_SPECIAL = HOP_BY_HOP | _CLIENT_ADDRESS_HEADERS | {b"host", b"content-length"}
_RESPONSE_SPECIAL = HOP_BY_HOP | {b"content-length", b"strict-transport-security"}


def _connection_options(headers: Headers) -> set[bytes]:
    """Connection-options naming fields to drop, lower-case, minus HOP_BY_HOP.

    Hop-by-hop names are left out: the rewrite loops drop those anyway (and
    must still see Upgrade to keep it for an upgrade).
    """
    # len() first: a cheap filter before lower() on every name
    values = [v for n, v in headers if len(n) == 10 and n.lower() == b"connection"]
    return set(_split_list(values)) - HOP_BY_HOP if values else set()


def rewrite_request_headers(headers: Headers, info: RequestInfo, fwd: ForwardingContext) -> Headers:
    """Build the header list sent upstream.

    - Removes :data:`HOP_BY_HOP` fields and every field named in Connection
      (RFC 9110 §7.6.1: "a proxy or gateway MUST parse a received Connection
      header field before a message is forwarded and, for each
      connection-option in this field, remove any header or trailer field(s)
      from the message with the same name as the connection-option"), except
      Host, which the HTTP/1.1 request we send must carry (RFC 9112 §3.2). For
      an upgrade request, ``Connection: upgrade`` and the Upgrade fields are
      put back.
    - Removes Content-Length and Transfer-Encoding: the caller adds the framing
      it really uses.
    - An absolute-form target replaces Host with its authority (RFC 9112
      §3.2.2); a request without Host gets ``fwd.authority`` (RFC 9112 §3.3),
      since the HTTP/1.1 request we send must carry one.
    - Forwarding: from an untrusted peer every X-Forwarded-*, Forwarded,
      X-Real-IP and ``fwd.client_ip_header`` field is removed, then
      ``X-Forwarded-For: <client_ip>`` and a one-element Forwarded are set.
      From a trusted peer the incoming X-Forwarded-For / Forwarded lists are
      merged into one field each and the peer (the hop that talked to us) is
      appended -- so X-Forwarded-For always ends with ``peer_ip``; when the
      peer sent none and ``client_ip`` differs from it, the list starts with
      ``client_ip``. X-Forwarded-Proto/-Host/-Port are kept from a trusted peer
      when present, else set from ``fwd``. The host used for X-Forwarded-Host
      and ``Forwarded: host=`` is the Host we route by (the target authority
      for absolute-form).

    Returns:
        A new list; ``headers`` is not modified.
    """
    options = _connection_options(headers)
    options.discard(b"host")
    if options:
        headers = [(n, v) for n, v in headers if n.lower() not in options]
    trusted = fwd.peer_trusted
    ip_header = fwd._ip_header
    absolute = info.absolute_form
    host_value = _authority(info.host, info.port) if absolute else b""

    out: Headers = []
    upgrade_lines: Headers = []
    xff: list[bytes] = []
    forwarded: list[bytes] = []
    seen_host = absolute
    keep_proto = keep_host = keep_port = False
    for name, value in headers:
        lname = name.lower()
        if (
            lname not in _REQUEST_SPECIAL
            and not lname.startswith(b"x-forwarded-")
            and lname != ip_header
        ):
            out.append((name, value))  # the common case: an end-to-end field
            continue
        if lname == b"host":
            if not absolute:
                seen_host = True
                host_value = value
                out.append((name, value))
            continue
        if lname in HOP_BY_HOP or lname == b"content-length":
            if lname == b"upgrade":
                upgrade_lines.append((name, value))
            continue
        # a client-address field: X-Forwarded-*, Forwarded, X-Real-IP, ip_header
        if not trusted:
            continue
        if lname == b"x-forwarded-for":
            if value:
                xff.append(value)
            continue
        if lname == b"forwarded":
            if value:
                forwarded.append(value)
            continue
        if lname == b"x-forwarded-proto":
            keep_proto = True
        elif lname == b"x-forwarded-host":
            keep_host = True
        elif lname == b"x-forwarded-port":
            keep_port = True
        out.append((name, value))

    if not seen_host:
        out.insert(0, (b"Host", fwd.authority))
    elif absolute:
        out.insert(0, (b"Host", host_value))

    client = fwd._client
    peer = fwd._peer
    proto = fwd._proto_line
    element = (fwd._for_peer if trusted else fwd._for_client) + b";proto=" + proto
    if host_value:
        element += b";host=" + _forwarded_value(host_value)
    if trusted:
        if xff:
            out.append((b"X-Forwarded-For", b", ".join(xff) + b", " + peer))
        elif client != peer:
            out.append((b"X-Forwarded-For", client + b", " + peer))
        else:
            out.append((b"X-Forwarded-For", peer))
        if forwarded:
            element = b", ".join(forwarded) + b", " + element
        elif client != peer:
            element = fwd._for_client + b", " + element
    else:
        out.append((b"X-Forwarded-For", client))
    if not keep_proto:
        out.append((b"X-Forwarded-Proto", proto))
    if not keep_host and host_value:
        out.append((b"X-Forwarded-Host", host_value))
    if not keep_port:
        out.append((b"X-Forwarded-Port", fwd._port_line))
    out.append((b"Forwarded", element))

    if info.upgrade is not None:
        out.append((b"Connection", b"upgrade"))
        out.extend(upgrade_lines)
    return out


@functools.lru_cache(maxsize=16)
def _encode_hsts(hsts: str) -> bytes:
    try:
        encoded = hsts.encode("ascii")
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(f"HSTS value {hsts!r} is not ASCII") from exc
    if _has_nul_cr_lf(encoded):
        raise LocalProtocolError(f"HSTS value {hsts!r} contains CR, LF or NUL")
    return encoded


def rewrite_response_headers(
    headers: Headers,
    *,
    hsts: str,
    keep_alive: bool,
    upgrade: bool = False,
    client_version: str = "1.1",
    framed_by_llhttp: bool = False,
) -> Headers:
    """Build the header list sent to the client for an app server's response.

    Removes hop-by-hop and Connection-named fields (RFC 9110 §7.6.1) and the
    framing fields (the caller re-adds its own); adds ``Strict-Transport-Security:
    <hsts>`` when ``hsts`` is set and the app server sent none (pass ``""`` on
    plain-http listeners: RFC 6797 §7.2 "An HSTS Host MUST NOT include the STS
    header field in HTTP responses conveyed over non-secure transport"); adds
    ``Connection: close`` when not ``keep_alive``, or ``Connection: keep-alive``
    for a kept HTTP/1.0 client (which closes otherwise). With ``upgrade`` (a 101
    response) ``Connection: upgrade`` and the Upgrade fields are kept instead.

    ``framed_by_llhttp``: the fields come from httptools' response parser, which
    refuses NUL, CR and LF in values itself, so the scan is skipped.

    Raises:
        UpstreamProtocolError: (502) a field value contains NUL, CR or LF.
    """
    if not framed_by_llhttp and _has_nul_cr_lf(b"\t".join([value for _, value in headers])):
        for name, value in headers:
            if _has_nul_cr_lf(value):
                raise UpstreamProtocolError(
                    f"upstream header {_show(name)!r} contains NUL, CR or LF in its value"
                )
    options = _connection_options(headers)
    if options:
        headers = [(n, v) for n, v in headers if n.lower() not in options]
    out: Headers = []
    upgrade_lines: Headers = []
    has_sts = False
    for name, value in headers:
        lname = name.lower()
        if lname in _RESPONSE_SPECIAL:
            if lname == b"strict-transport-security":
                has_sts = True
            else:
                if lname == b"upgrade":
                    upgrade_lines.append((name, value))
                continue
        out.append((name, value))
    if hsts and not has_sts:
        out.append((b"Strict-Transport-Security", _encode_hsts(hsts)))
    if upgrade:
        out.append((b"Connection", b"upgrade"))
        out.extend(upgrade_lines)
    elif not keep_alive:
        out.append((b"Connection", b"close"))
    elif client_version == "1.0":
        out.append((b"Connection", b"keep-alive"))
    return out


# How a response body travels to the client (see :func:`response_framing`).
BODY_NONE = 0  # no body: HEAD, 1xx/101, 204, 304
BODY_RAW = 1  # bytes as they come: Content-Length, or close-delimited to HTTP/1.0
BODY_CHUNKED = 2  # re-chunked: the app server sent chunked or close-delimited to HTTP/1.1


def response_framing(
    status: int,
    content_length: bytes | None,
    chunked: bool,
    *,
    head_request: bool,
    client_version: str,
) -> tuple[int, Headers, bool]:
    """Choose how an app server's response body is framed for the client.

    Framing is rebuilt, never copied (RFC 9112 §6): Content-Length passes through;
    a chunked or close-delimited body is re-chunked for an HTTP/1.1 client and sent
    close-delimited to an HTTP/1.0 one, which then can't keep the connection. A
    response to HEAD, a 1xx/101, 204 or 304 has no body (RFC 9110 §6.4.1), but a
    HEAD/304 response keeps its Content-Length (and a HEAD response its
    Transfer-Encoding), which describe the body a GET would have had.

    Args:
        status: the final status code.
        content_length: the app server's Content-Length value, if it sent one.
        chunked: the app server sent Transfer-Encoding.
        head_request: the request was HEAD.
        client_version: ``"1.0"`` or ``"1.1"``.

    Returns:
        ``(mode, fields, reusable)``: one of ``BODY_NONE``/``BODY_RAW``/``BODY_CHUNKED``,
        the framing fields to add to the head, and False when the body's end can only
        be signalled by closing the client connection.
    """
    if head_request or status in (204, 304) or status == 101:
        if content_length is not None and status != 204:
            return BODY_NONE, [(b"Content-Length", content_length)], True
        if chunked and head_request:
            return BODY_NONE, [(b"Transfer-Encoding", b"chunked")], True
        return BODY_NONE, [], True
    if content_length is not None:
        return BODY_RAW, [(b"Content-Length", content_length)], True
    if client_version == "1.1":
        return BODY_CHUNKED, [(b"Transfer-Encoding", b"chunked")], True
    return BODY_RAW, [], False


def client_keep_alive(
    *,
    wanted: bool,
    request_done: bool,
    upgrade_requested: bool,
    status: int,
    draining: bool,
) -> bool:
    """Whether the client connection stays open after this response.

    Args:
        wanted: the client asked to keep it (RFC 9112 §9.3) and nothing local said
            to close after this exchange.
        request_done: the whole request body was read; otherwise the rest of it
            would be taken for the next request.
        upgrade_requested: the request asked to switch protocols. llhttp then stops
            parsing requests on this connection, so unless the app server agrees
            (101, and the connection becomes a tunnel) it must close.
        status: the final status code.
        draining: the worker is shutting down.
    """
    if not wanted or not request_done or draining:
        return False
    if status == 101:
        return upgrade_requested
    return not upgrade_requested


def response_head_bytes(status: int, reason: bytes, headers: Headers) -> bytes:
    """Serialize ``HTTP/1.1 <status> <reason>`` and the headers.

    An empty (or unsafe) reason is replaced by the standard phrase, or left
    empty for an unregistered status code.

    Raises:
        LocalProtocolError: ``status`` is not a three-digit code.
    """
    if not 100 <= status <= 999:
        raise LocalProtocolError(f"invalid status code {status}")
    if not _safe_reason(reason):
        reason = _reason(status)
    return b"HTTP/1.1 %d %s\r\n%s\r\n" % (status, reason, _serialize(headers))


# RFC 9112 §4: reason-phrase = 1*( HTAB / SP / VCHAR / obs-text ): no other control
_REASON_CONTROLS = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


@functools.lru_cache(maxsize=256)  # app servers send the same few phrases over and over
def _safe_reason(reason: bytes) -> bool:
    """Whether an app server's reason phrase may be relayed as it is (not empty, and
    no control character but HTAB: llhttp lets the others through)."""
    return bool(reason) and _REASON_CONTROLS.search(reason) is None


def encode_chunk(data: bytes) -> bytes:
    """One chunk of a chunked body; ``b""`` for empty data.

    An empty chunk would be the last-chunk and end the body early, so it is
    never emitted here; use :func:`last_chunk` to finish.
    """
    if not data:
        return b""
    return b"%x\r\n%s\r\n" % (len(data), data)


def last_chunk(trailers: Headers) -> bytes:
    """The chunked-body terminator with ``trailers`` (RFC 9112 §7.1)."""
    return b"0\r\n" + _serialize(trailers) + b"\r\n"


def _check_own_headers(headers: Headers) -> None:
    for name, value in headers:
        if not _is_token(name) or _has_nul_cr_lf(value):
            raise LocalProtocolError(f"invalid header {_show(name)!r}: {_show(value)!r}")


def error_response(
    status: int,
    detail: str,
    *,
    close: bool = True,
    extra_headers: Headers | None = None,
    head: bool = False,
    request_id: str = "",
) -> bytes:
    """A complete small text/plain response tlsgate answers on its own.

    The body is ``"<status> <reason>: <detail>\\n"``, or ``"<status> <reason>\\n"``
    when ``detail`` is empty; ``detail`` is shown to the client as it is, so callers
    pass only what the client may know (see ``net.exchange``: 5xx pages carry no
    detail at all). A ``request_id`` is added as a ``request id: <id>`` line and an
    ``X-Request-Id`` field, so a client can quote it and an operator find the log
    lines. ``head`` omits the body (the response to a HEAD request) while keeping
    its Content-Length. A 405 gets an Allow field unless ``extra_headers`` has one
    (RFC 9110 §15.5.6: "The origin server MUST generate an Allow header field in a
    405 response").

    Raises:
        LocalProtocolError: ``status``, ``extra_headers`` or ``request_id`` is invalid.
    """
    extra = extra_headers or []
    _check_own_headers(extra)
    reason = _reason(status)
    phrase = reason.decode("ascii")
    text = f"{status} {phrase}: {detail}\n" if detail else f"{status} {phrase}\n"
    rid = request_id.encode("ascii", "replace")
    if rid:
        if not _is_token(rid):
            raise LocalProtocolError(f"invalid request id {request_id!r}")
        text += f"request id: {request_id}\n"
    body = text.encode("utf-8", "replace")
    headers: Headers = [
        (b"Content-Type", b"text/plain; charset=utf-8"),
        (b"Content-Length", b"%d" % len(body)),
        (b"Cache-Control", b"no-store"),
        # The detail may echo client input; never let a browser sniff it as HTML.
        (b"X-Content-Type-Options", b"nosniff"),
        (b"Date", _http_date()),
    ]
    if rid:
        headers.append((b"X-Request-Id", rid))
    if status == 405 and not any(n.lower() == b"allow" for n, _ in extra):
        headers.append((b"Allow", _ALLOW_ALL_BUT_CONNECT))
    if close:
        headers.append((b"Connection", b"close"))
    headers.extend(extra)
    head_bytes = response_head_bytes(status, reason, headers)
    return head_bytes if head else head_bytes + body


def redirect_response(location: str, *, status: int = 308, close: bool = False) -> bytes:
    """A complete redirect response with an empty body (safe for HEAD too).

    Raises:
        LocalProtocolError: ``status`` is not 3xx or ``location`` is not a
            printable ASCII URI reference.
    """
    if not 300 <= status <= 399:
        raise LocalProtocolError(f"{status} is not a redirect status")
    encoded = location.encode("ascii", "replace")
    if not location.isascii() or _find_bad_target(encoded.replace(b"#", b"")):
        raise LocalProtocolError(f"invalid redirect location {location!r}")
    headers: Headers = [
        (b"Location", encoded),
        (b"Content-Length", b"0"),
        (b"Date", _http_date()),
    ]
    if close:
        headers.append((b"Connection", b"close"))
    return response_head_bytes(status, b"", headers)


def https_redirect_location(info: RequestInfo, port: int) -> str:
    """``https://host[:port]/path?query`` for the same resource over TLS.

    ``port`` is omitted when 443; an IPv6 host is bracketed; path and query are
    the request's, byte for byte (an OPTIONS ``*`` redirects to ``/``).

    Raises:
        ClientProtocolError: (400) the request named no host to redirect to.
    """
    if not info.host:
        raise ClientProtocolError("cannot redirect to https: the request names no host")
    origin = _origin_form(info.target)
    if origin == b"*":
        origin = b"/"
    authority = _authority(info.host, None if port == 443 else port).decode("ascii")
    return f"https://{authority}{origin.decode('ascii')}"
