"""Request smuggling and header abuse: the corpus in ``smuggling_cases.toml``, sent
through tlsgate to an app server that records every byte it receives.

How this works: every ``[[case]]`` of the corpus is a request text with two
markers, the outer request's (in its target) and the inner one's (a request a
parser that frames the outer one wrongly would deliver separately), sent in one
write on a fresh connection, over plain HTTP and over TLS. tlsgate must answer
with one of the case's statuses and close the connection, and the inner marker
must never reach the app server: neither in a request head it parsed nor in the
raw bytes it received. When the fault is in the head (``head_detectable``), not
even the outer request may reach it. Every ``[[accepted]]`` request, valid but
looking like an attack, must reach the app exactly as the request(s) it is, with
the right body length, and leave the connection usable.

A second parser checks the first: what each upstream connection carried is parsed
again with h11, which frames by Content-Length and Transfer-Encoding alone (as
nginx does), and must give the very requests the app server (llhttp, like
tlsgate) parsed there. A framing tlsgate announces upstream but does not keep
would leave a pooled connection desynchronised for the next client's request.

To stay fast, the module sends the whole corpus once (a connection per case and
transport, eight at a time), waits once for anything forwarded to arrive, reads
what the app server saw once, and each test then checks one case, over both
transports, against that record. ``test_corpus_is_well_formed`` checks the TOML
itself. The loader, the renderer, the client side and ``check_refused`` are shared
with ``tests/peers/test_peer_nginx_smuggling.py``.
"""

from __future__ import annotations

import json
import re
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import appserver
import h11
import pytest
from appserver import AppServer
from harness import (
    PeerClosed,
    Pki,
    RawConn,
    RawResponse,
    Tlsgate,
    app_admin,
    app_saw,
    client_context,
    free_port,
    table,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CASES_FILE = Path(__file__).with_name("smuggling_cases.toml")
# The listener limits the corpus's length cases are written against (tlsgate's
# defaults, set explicitly so that a change of default does not silently move them).
MAX_HEADER_SIZE = 64 * 1024
MAX_HEADERS = 100
HEADER_TIMEOUT = "2s"
MARKER_LEN = 38  # "outer-"/"inner-" and 32 hex digits: the corpus's lengths rely on it
TRANSPORTS = ("http", "https")
# Long enough for anything tlsgate forwarded to have reached the app server (loopback).
SETTLE = 0.3
SENDERS = 8  # client connections in flight at once while the corpus is sent
# What the app server keeps of each connection here (its default is 64 KiB).
CAPTURE = 64 * 1024 * 1024

# ------------------------------------------------------------------------------ the corpus

_CASE_KEYS = {
    "name",
    "request",
    "status",
    "why",
    "head_detectable",
    "closes",
    "before",
    "relayed",
    "xfail",
}
_ACCEPTED_KEYS = {
    "name",
    "request",
    "why",
    "status",
    "responses",
    "body_len",
    "app_headers",
    "app_lacks",
    "inner_is_body",
    "keeps_alive",
    "xfail",
}


@dataclass(frozen=True)
class Case:
    """A request tlsgate must refuse (see the header of ``smuggling_cases.toml``)."""

    name: str
    request: str
    status: tuple[int, ...]
    why: str
    head_detectable: bool
    closes: bool = True
    before: tuple[int, ...] = ()
    relayed: bool = False
    xfail: str | None = None


@dataclass(frozen=True)
class Accepted:
    """A valid request that looks like an attack and must be forwarded as it is."""

    name: str
    request: str
    why: str
    status: tuple[int, ...] = (200,)
    responses: int = 1
    body_len: tuple[int, ...] | None = None
    app_headers: tuple[tuple[str, str], ...] = ()
    app_lacks: tuple[str, ...] = ()
    inner_is_body: bool = False
    keeps_alive: bool = True
    xfail: str | None = None


@dataclass(frozen=True)
class Corpus:
    cases: tuple[Case, ...]
    accepted: tuple[Accepted, ...]


def _typed(entry: dict[str, Any], key: str, kind: type, default: Any = None) -> Any:
    """``entry[key]`` checked against ``kind`` (``default`` when absent and given)."""
    if key not in entry:
        if default is None:
            raise ValueError(f"{entry.get('name', '?')}: missing {key!r}")
        return default
    value = entry[key]
    # bool is an int subclass: a status of `true` must not pass as 1
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{entry.get('name', '?')}: {key!r} must be {kind.__name__}")
    return value


def _int_list(entry: dict[str, Any], key: str, default: list[int] | None) -> tuple[int, ...]:
    values = _typed(entry, key, list, default)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{entry['name']}: {key!r} must be a list of integers")
    return tuple(values)


def _check_keys(entry: dict[str, Any], allowed: set[str]) -> None:
    unknown = set(entry) - allowed
    if unknown:
        raise ValueError(f"{entry.get('name', '?')}: unknown keys {sorted(unknown)}")


def _xfail(entry: dict[str, Any]) -> str | None:
    value = entry.get("xfail")
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{entry.get('name', '?')}: 'xfail' must be a string")
    return value


def _case(entry: dict[str, Any]) -> Case:
    _check_keys(entry, _CASE_KEYS)
    return Case(
        name=_typed(entry, "name", str),
        request=_typed(entry, "request", str),
        status=_int_list(entry, "status", None),
        why=_typed(entry, "why", str),
        head_detectable=_typed(entry, "head_detectable", bool),
        closes=_typed(entry, "closes", bool, True),
        before=_int_list(entry, "before", []),
        relayed=_typed(entry, "relayed", bool, False),
        xfail=_xfail(entry),
    )


def _accepted(entry: dict[str, Any]) -> Accepted:
    _check_keys(entry, _ACCEPTED_KEYS)
    headers = _typed(entry, "app_headers", dict, {})
    lacks = _typed(entry, "app_lacks", list, [])
    if not all(isinstance(v, str) for v in [*headers.values(), *lacks]):
        raise ValueError(f"{entry['name']}: app_headers values and app_lacks must be strings")
    return Accepted(
        name=_typed(entry, "name", str),
        request=_typed(entry, "request", str),
        why=_typed(entry, "why", str),
        status=_int_list(entry, "status", [200]),
        responses=_typed(entry, "responses", int, 1),
        body_len=_int_list(entry, "body_len", []) or None,
        app_headers=tuple(sorted(headers.items())),
        app_lacks=tuple(lacks),
        inner_is_body=_typed(entry, "inner_is_body", bool, False),
        keeps_alive=_typed(entry, "keeps_alive", bool, True),
        xfail=_xfail(entry),
    )


def load_corpus(path: Path = CASES_FILE) -> Corpus:
    """Parse the corpus; raises ValueError on unknown keys, missing keys or wrong types."""
    with path.open("rb") as f:
        data = tomllib.load(f)
    unknown = set(data) - {"case", "accepted"}
    if unknown:
        raise ValueError(f"unknown top-level keys {sorted(unknown)}")
    return Corpus(
        tuple(_case(e) for e in data.get("case", [])),
        tuple(_accepted(e) for e in data.get("accepted", [])),
    )


CORPUS = load_corpus()

_MARKER = re.compile(r"\{(outer|inner|pad:\d+|fields:\d+)\}")
_LEFTOVER = re.compile(r"\{[a-z_]+(?::[^}]*)?\}")


def render(template: str, outer: str, inner: str) -> bytes:
    """The bytes to send: the markers of ``template`` expanded (see the corpus header).

    Raises:
        ValueError: a ``{word}`` that is no known marker (a typo would send it as is).
    """

    def expand(m: re.Match[str]) -> str:
        key = m.group(1)
        if key == "outer":
            return outer
        if key == "inner":
            return inner
        kind, _, n = key.partition(":")
        if kind == "pad":
            return "a" * int(n)
        return "".join(f"X-Pad-{i}: v\r\n" for i in range(int(n)))

    text = _MARKER.sub(expand, template)
    if leftover := _LEFTOVER.search(text):
        raise ValueError(f"unknown marker {leftover.group(0)!r}")
    return text.encode("latin-1")


def new_markers() -> tuple[str, str]:
    """A fresh (outer, inner) pair, each MARKER_LEN characters."""
    return f"outer-{uuid.uuid4().hex}", f"inner-{uuid.uuid4().hex}"


def case_params(items: tuple[Any, ...]) -> list[Any]:
    """pytest params with the case names as ids; a case's ``xfail`` becomes a strict xfail."""
    return [
        pytest.param(
            item,
            id=item.name,
            marks=[pytest.mark.xfail(strict=True, reason=item.xfail)] if item.xfail else [],
        )
        for item in items
    ]


# ------------------------------------------------------------------------------ the client side


@dataclass
class Sent:
    """What one client saw after sending one corpus entry."""

    outer: str
    inner: str
    statuses: list[int] = field(default_factory=list)
    interim: list[int] = field(default_factory=list)
    responses: list[RawResponse] = field(default_factory=list)
    error: str = ""  # the connection ended before every expected response
    closed: bool | None = None  # the server closed after the answer (when checked)
    after: str = ""  # the follow-up request's marker, when one was sent
    after_status: int | None = None

    def summary(self) -> str:
        """The statuses, for messages and the report: "400", "200 400", "- (closed)"."""
        text = " ".join(str(s) for s in self.statuses) or "-"
        return text + (f" ({self.error})" if self.error else "")


ConnFactory = Callable[[], RawConn]


def read_responses(c: RawConn, sent: Sent, n: int) -> None:
    """Read up to ``n`` responses into ``sent``; a close before that is noted in ``error``."""
    for _ in range(n):
        try:
            resp = c.read_response()
        except PeerClosed:
            sent.error = "closed"
            return
        except (TimeoutError, OSError) as exc:
            sent.error = type(exc).__name__
            return
        except ValueError as exc:  # not an HTTP/1.1 status line (nginx's HTTP/0.9 answer)
            sent.error = f"no status line: {str(exc)[:40]}"
            return
        sent.responses.append(resp)
        sent.statuses.append(resp.status)
        sent.interim += [status for status, _ in resp.interim]


def send_case(connect: ConnFactory, case: Case, *, close_wait: float = 3.0) -> Sent:
    """Send ``case`` on a new connection: read its answers, see whether it closes."""
    sent = Sent(*new_markers())
    with connect() as c:
        c.send(render(case.request, sent.outer, sent.inner))
        read_responses(c, sent, len(case.before) + 1)
        if sent.error:
            sent.closed = sent.error == "closed"
        elif case.closes:
            sent.closed = c.closed_by_peer(close_wait)
        else:
            follow_up(c, sent)
    return sent


def follow_up(c: RawConn, sent: Sent) -> None:
    """One more request on the same connection: it must be answered (keep-alive works
    and nothing of the earlier request is left to be misparsed)."""
    sent.after = f"after-{uuid.uuid4().hex}"
    try:
        c.send(f"GET /{sent.after} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        sent.after_status = c.read_response().status
    except (PeerClosed, OSError, ValueError):
        sent.after_status = None


def send_accepted(connect: ConnFactory, case: Accepted) -> Sent:
    sent = Sent(*new_markers())
    with connect() as c:
        c.send(render(case.request, sent.outer, sent.inner))
        read_responses(c, sent, case.responses)
        if case.keeps_alive and not sent.error:
            follow_up(c, sent)
    return sent


# ------------------------------------------------------------------------------ the app's record


@dataclass(frozen=True, repr=False)
class Seen:
    """What the app server received, read once after a batch (no repr: it is large)."""

    heads: list[dict[str, Any]]  # parsed request heads (method, target, version, headers)
    raw: dict[int, str]  # the raw bytes of every connection (by conn_id), Latin-1
    texts: list[str] = field(init=False)  # each head as JSON, for marker searches

    def __post_init__(self) -> None:
        object.__setattr__(self, "texts", [json.dumps(h) for h in self.heads])

    @classmethod
    def read(cls, app: AppServer) -> Seen:
        seen = app_admin(app.address, "/admin/seen")
        return cls(seen["requests"], {int(k): v for k, v in seen["raw"].items()})

    def heads_with(self, marker: str) -> list[dict[str, Any]]:
        return [h for h, text in zip(self.heads, self.texts, strict=True) if marker in text]

    def anywhere(self, marker: str) -> bool:
        return any(marker in t for t in self.texts) or any(marker in r for r in self.raw.values())


# ------------------------------------------------------------------------------ the stack


@dataclass(frozen=True)
class Front:
    """tlsgate's two listeners, as clients reach them."""

    http_port: int
    https_port: int
    pki: Pki

    def connector(self, transport: str) -> ConnFactory:
        if transport == "http":
            return lambda: RawConn(self.http_port)
        tls = client_context(self.pki.ca_pem)
        return lambda: RawConn(self.https_port, tls=tls, server_hostname="localhost")

    def connectors(self) -> dict[str, ConnFactory]:
        return {t: self.connector(t) for t in TRANSPORTS}


@dataclass
class SmugStack:
    gate: Tlsgate
    app: AppServer
    front: Front


def gate_config(front: Front, backend: str) -> str:
    """An http and an https listener in front of ``backend``, with the corpus's limits."""
    pki, http_port, https_port = front.pki, front.http_port, front.https_port
    limits = {
        "max_header_size": f"{MAX_HEADER_SIZE // 1024}KiB",
        "max_headers": MAX_HEADERS,
        # a head that never ends is answered 408 after this: short, so that a case
        # tlsgate leaves waiting costs the batch little
        "header_timeout": HEADER_TIMEOUT,
    }
    return (
        pki.toml()
        + table(
            "listeners",
            name="http",
            bind=[f"127.0.0.1:{http_port}"],
            protocol="http",
            backend="app",
            **limits,
        )
        + table(
            "listeners",
            name="https",
            bind=[f"127.0.0.1:{https_port}"],
            protocol="https",
            backend="app",
            default_certificate="main-ecdsa",
            **limits,
        )
        + table("backends", name="app", servers=[backend])
    )


@pytest.fixture(scope="module")
def stack(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmugStack]:
    # the app keeps the first 64 KiB of each connection; tlsgate pools its upstream
    # connections, so one may carry much of the corpus: capture all of it
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(appserver, "RAW_CAPTURE_PER_CONN", CAPTURE)
        app = AppServer("smuggling").start()
        front = Front(free_port(), free_port(), pki)
        gate = Tlsgate(tmp_path_factory.mktemp("smuggling"), gate_config(front, app.address))
        try:
            gate.start()
            yield SmugStack(gate, app, front)
        finally:
            gate.kill()
            app.stop()


@dataclass(repr=False)
class Batch:
    """The whole corpus sent once per transport, and what the app server saw after
    (no repr: pytest would print all of it with every failure)."""

    cases: dict[tuple[str, str], Sent]  # (transport, name) -> what the client saw
    accepted: dict[tuple[str, str], Sent]
    seen: Seen


def send_all(
    connectors: dict[str, ConnFactory],
) -> tuple[dict[tuple[str, str], Sent], dict[tuple[str, str], Sent]]:
    """Send the whole corpus over each transport, a few connections at a time (each
    case has its own markers and connection, so the order does not matter; cases
    tlsgate leaves waiting overlap instead of adding up)."""
    with ThreadPoolExecutor(max_workers=SENDERS) as pool:
        cases = {
            (transport, case.name): pool.submit(send_case, connect, case)
            for transport, connect in connectors.items()
            for case in CORPUS.cases
        }
        accepted = {
            (transport, ok.name): pool.submit(send_accepted, connect, ok)
            for transport, connect in connectors.items()
            for ok in CORPUS.accepted
        }
        return (
            {key: f.result() for key, f in cases.items()},
            {key: f.result() for key, f in accepted.items()},
        )


@pytest.fixture(scope="module")
def batch(stack: SmugStack) -> Batch:
    cases, accepted = send_all(stack.front.connectors())
    time.sleep(SETTLE)  # once for the batch: anything forwarded has arrived by now
    return Batch(cases, accepted, Seen.read(stack.app))


# ------------------------------------------------------------------------------ the checks


def check_refused(case: Case, sent: Sent, saw: Callable[[str], bool]) -> None:
    """The safety properties of a refused case; ``saw(marker)``: did the server behind
    tlsgate receive it (shared with the nginx peers test, where it reads nginx's log)."""
    assert not sent.error, f"the connection ended early: {sent.summary()}"
    assert sent.statuses[:-1] == list(case.before), sent.summary()
    assert sent.statuses[-1] in case.status, sent.summary()
    if case.closes:
        assert sent.closed, "the connection must be closed after the answer"
    else:
        assert sent.after_status == 200, "the connection must stay usable"
    assert not saw(sent.inner), "the smuggled request reached the server"
    if case.head_detectable:
        assert not saw(sent.outer), "a malformed head reached the server"
        assert not sent.interim, f"an interim response before the refusal: {sent.interim}"


def header_values(head: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in head["headers"] if k.lower() == name]


def check_accepted(case: Accepted, sent: Sent, seen: Seen) -> None:
    assert not sent.error, f"the connection ended early: {sent.summary()}"
    assert len(sent.statuses) == case.responses
    assert all(s in case.status for s in sent.statuses), sent.summary()
    heads = seen.heads_with(sent.outer)
    assert len(heads) == case.responses, f"the app server got {len(heads)} requests"
    for head in heads:
        assert sent.inner not in json.dumps(head), "a request inside a body became a request"
    if not case.inner_is_body:
        assert not seen.anywhere(sent.inner)
    elif case.body_len is not None:
        # the app read the body holding it: the raw check does see body bytes
        assert any(sent.inner in r for r in seen.raw.values())
    if case.body_len is not None:
        lengths = [r.json()["body_len"] for r in sent.responses]
        assert lengths == list(case.body_len)
    for name, value in case.app_headers:
        assert header_values(heads[0], name) == [value], heads[0]["headers"]
    for name in case.app_lacks:
        assert not header_values(heads[0], name), heads[0]["headers"]
    if case.keeps_alive:
        assert sent.after_status == 200, "the connection is not usable after the request"
        assert len(seen.heads_with(sent.after)) == 1


def over_each_transport(check: Callable[[str], None]) -> None:
    """Run ``check(transport)`` for http and https; fail with what failed on each."""
    failures = []
    for transport in TRANSPORTS:
        try:
            check(transport)
        except AssertionError as exc:
            failures.append(f"over {transport}: {exc}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("case", case_params(CORPUS.cases))
def test_smuggling_case_is_refused_and_never_forwarded(batch: Batch, case: Case) -> None:
    over_each_transport(
        lambda t: check_refused(case, batch.cases[t, case.name], batch.seen.anywhere)
    )


@pytest.mark.parametrize("case", case_params(CORPUS.accepted))
def test_lookalike_is_forwarded_as_it_is(batch: Batch, case: Accepted) -> None:
    over_each_transport(lambda t: check_accepted(case, batch.accepted[t, case.name], batch.seen))


def test_the_raw_capture_is_complete(batch: Batch) -> None:
    """The "never seen in the raw bytes" checks above are only as good as the capture."""
    assert batch.seen.raw, "the app server recorded no connection"
    assert all(len(r) < CAPTURE for r in batch.seen.raw.values())
    # every request the app parsed is in the raw bytes too: the capture covers the batch
    reached = [s.outer for s in batch.accepted.values() if batch.seen.heads_with(s.outer)]
    assert reached
    for outer in reached:
        assert any(outer in r for r in batch.seen.raw.values()), outer


def h11_targets(raw: bytes) -> tuple[list[str], str]:
    """The request targets an independent parser, h11, finds in what one upstream
    connection carried, and the error that stopped it ("" for none).

    h11 frames by Content-Length and Transfer-Encoding whatever else the head says
    (an Upgrade too), as nginx does, where llhttp (tlsgate's parser, and the app
    server's) stops at an upgrade request's head: a framing tlsgate announces but
    does not keep shows up here as a different list of requests. A body cut short at
    the end (tlsgate closes the connection after a body error) is no error.
    """
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=4 * MAX_HEADER_SIZE)
    if raw:  # (b"" would mean the end of the stream to h11)
        conn.receive_data(raw)
    targets: list[str] = []
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            return targets, f"h11: {exc}"
        if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
            return targets, ""
        if isinstance(event, h11.Request):
            targets.append(event.target.decode("latin-1"))
        elif event is h11.PAUSED:
            # the request is over: answer it, so that h11 reads the next one
            conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
            conn.send(h11.EndOfMessage())
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                rest = conn.trailing_data[0]
                return (
                    targets,
                    f"h11: {len(rest)} bytes after a request that closes" if rest else "",
                )


def test_every_upstream_connection_parses_the_same_with_h11(batch: Batch) -> None:
    """What tlsgate sent on each upstream connection is, for a second parser, exactly
    the requests the app server parsed there: no framing that two parsers read
    differently reached a connection (pooled ones carry many clients' requests)."""
    by_conn: dict[int, list[str]] = {}
    for head in batch.seen.heads:
        by_conn.setdefault(head["conn_id"], []).append(head["target"])
    assert len(batch.seen.raw) > 1
    for conn_id, raw in batch.seen.raw.items():
        targets, error = h11_targets(raw.encode("latin-1"))
        # the app server records no head of its own /admin/ requests
        targets = [t for t in targets if not t.startswith("/admin/")]
        assert not error, f"upstream connection {conn_id}: {error}"
        assert targets == by_conn.get(conn_id, []), f"upstream connection {conn_id}"


_BY_NAME = {c.name: c for c in CORPUS.cases}


@pytest.mark.parametrize("name", ["cl-then-te", "duplicate-cl", "te-obs-fold"])
def test_smuggling_over_tls(stack: SmugStack, name: str) -> None:
    """The same shapes over TLS, each checked on its own (not from the batch)."""
    case = _BY_NAME[name]
    sent = send_case(stack.front.connector("https"), case)
    time.sleep(0.2)  # anything forwarded would have reached the app by now
    check_refused(case, sent, lambda marker: app_saw(stack.app.address, marker))


def test_valid_requests_after_a_rejected_one_still_work(stack: SmugStack) -> None:
    """Control: a well-formed chunked request with a marker is forwarded, and the
    marker check does find it."""
    marker = f"fine-{uuid.uuid4().hex}"
    with RawConn(stack.front.http_port) as c:
        c.send(
            (
                f"POST /{marker} HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
                "5\r\nhello\r\n0\r\n\r\n"
            ).encode()
        )
        resp = c.read_response()
    assert resp.status == 200
    assert resp.json()["body_len"] == 5
    assert app_saw(stack.app.address, marker)


# ------------------------------------------------------------------------------ the corpus itself

_NAME = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


def test_corpus_is_well_formed() -> None:
    names = [c.name for c in CORPUS.cases] + [a.name for a in CORPUS.accepted]
    assert len(names) == len(set(names)), "names must be unique"
    assert all(_NAME.fullmatch(n) for n in names), "names are kebab-case"
    assert len(CORPUS.cases) >= 60
    outer, inner = new_markers()
    assert len(outer) == len(inner) == MARKER_LEN
    requests = set()
    for case in CORPUS.cases:
        data = render(case.request, outer, inner)  # every marker is known
        requests.add(data)
        assert "{inner}" in case.request, f"{case.name}: no smuggled request"
        assert "{outer}" in case.request, f"{case.name}: no outer marker"
        assert case.why.strip(), case.name
        assert case.status, case.name
        if case.relayed:
            # the app server answered: its head reached it
            assert not case.head_detectable, case.name
            assert all(100 <= s <= 599 for s in case.status), case.name
        else:
            assert all(400 <= s <= 599 for s in case.status), f"{case.name}: 4xx/5xx only"
        assert all(200 <= s <= 299 for s in case.before), case.name
        assert case.xfail is None or case.xfail.startswith("defect: "), case.name
        if {414, 431} & set(case.status):
            # the head or the trailer section: the longest block of field lines
            block = max(data.split(b"\r\n\r\n"), key=len)
            assert len(block) > MAX_HEADER_SIZE or block.count(b"\r\n") > MAX_HEADERS, (
                f"{case.name}: within the limits it is about"
            )
    for ok in CORPUS.accepted:
        data = render(ok.request, outer, inner)
        requests.add(data)
        assert ok.request.count("{outer}") >= ok.responses, ok.name
        assert ok.why.strip(), ok.name
        assert ok.responses >= 1, ok.name
        assert ok.body_len is None or len(ok.body_len) == ok.responses, ok.name
        assert ("{inner}" in ok.request) == ok.inner_is_body, f"{ok.name}: inner_is_body"
        assert all(name == name.lower() for name, _ in ok.app_headers), ok.name
        assert ok.xfail is None or ok.xfail.startswith("defect: "), ok.name
    assert len(requests) == len(names), "two entries send the same bytes"


def test_the_loader_refuses_a_malformed_corpus(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    base = 'name = "x"\nrequest = "GET /{outer} {inner}"\nwhy = "w"\nhead_detectable = true\n'
    for extra in ("status = [400]\ntypo = 1\n", 'status = ["400"]\n', "status = [true]\n", ""):
        bad.write_text("[[case]]\n" + base + extra)
        with pytest.raises(ValueError, match="x"):
            load_corpus(bad)
    with pytest.raises(ValueError, match="unknown marker"):
        render("GET /{iner}", "o", "i")
