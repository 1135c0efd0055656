"""The smuggling corpus through tlsgate to nginx, a second parser, and to nginx directly.

How this works: one nginx with two ``server {}`` blocks that answer every request
with 200 and log each request they parsed (``$request``, ``$request_uri``,
``$request_length``, ``$content_length``, ``$http_transfer_encoding``): one is the
app server behind tlsgate (the same http and https listeners as
``tests/integration/test_it_smuggling.py``), the other is sent the corpus
directly. Through tlsgate, nginx must never log a case's inner (smuggled) marker,
and must log its outer marker only for a case that is not head-detectable (whose
head tlsgate may stream on before the body shows the fault): tlsgate forwards
nothing nginx could read another way. tlsgate's own answers must be the case's
statuses, as with the recording app. A valid look-alike (``[[accepted]]``) must
reach nginx as exactly the request(s) it is.

Sent directly, nginx's own answers are recorded, not judged: the two parsers may
differ, and ``test_nginx_direct_answers`` prints where (run with ``-rP`` or ``-s``
to see the table). Corpus loading, markers and the client side come from the
integration module.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import Pki, RawConn, Tlsgate, free_port
from test_it_smuggling import (
    CORPUS,
    SETTLE,
    Accepted,
    Case,
    Front,
    Sent,
    case_params,
    check_refused,
    gate_config,
    new_markers,
    over_each_transport,
    read_responses,
    render,
    send_all,
)

from peers.peers import Peer, log_lines, start_nginx

pytestmark = [pytest.mark.peers, pytest.mark.integration, pytest.mark.timeout(120)]

# nginx waits no longer than this for the rest of a head or body (defaults: 60 s)
NGINX_TIMEOUT = "2s"
# a direct answer is read until nginx closes (it sees the client's half-close) or this
DIRECT_READ_TIMEOUT = 5.0


def nginx_http(behind: tuple[int, Path], direct: tuple[int, Path]) -> str:
    """The ``http {}`` body: two servers that answer 200 and log what they parsed."""
    servers = ""
    for name, (port, log) in (("behind", behind), ("direct", direct)):
        servers += f"""
    server {{
        listen 127.0.0.1:{port};
        access_log {log} smuggling;
        location / {{
            return 200 "{name}\\n";
        }}
    }}
"""
    return f"""
    log_format smuggling '$status $request_length "$content_length" '
                         '"$http_transfer_encoding" "$http_x_marker" "$request" '
                         '"$request_uri"';
    client_header_timeout {NGINX_TIMEOUT};
    client_body_timeout {NGINX_TIMEOUT};
{servers}"""


@dataclass
class NginxStack:
    front: Front  # tlsgate's listeners, nginx behind them
    nginx: Peer
    direct_port: int
    behind_log: Path
    direct_log: Path


@pytest.fixture(scope="module")
def stack(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxStack]:
    root = tmp_path_factory.mktemp("nginx-smuggling")
    behind_port, direct_port = free_port(), free_port()
    behind_log, direct_log = root / "behind.log", root / "direct.log"
    nginx = start_nginx(
        root,
        "nginx",
        [behind_port, direct_port],
        http=nginx_http((behind_port, behind_log), (direct_port, direct_log)),
    )
    front = Front(free_port(), free_port(), pki)
    gate = Tlsgate(root / "gate", gate_config(front, f"127.0.0.1:{behind_port}"))
    try:
        gate.start()
        yield NginxStack(front, nginx, direct_port, behind_log, direct_log)
    finally:
        gate.kill()
        nginx.stop()


@dataclass(repr=False)
class NginxBatch:
    """The corpus through tlsgate (both transports) and directly, and nginx's logs after."""

    cases: dict[tuple[str, str], Sent]
    accepted: dict[tuple[str, str], Sent]
    direct_cases: dict[str, Sent]
    direct_accepted: dict[str, Sent]
    behind: list[str]  # nginx's log lines for the requests tlsgate forwarded
    direct: list[str]  # and for those sent to it directly

    def behind_saw(self, marker: str) -> bool:
        return any(marker in line for line in self.behind)


def lines_with(lines: list[str], marker: str) -> list[str]:
    """The log lines (one per request nginx parsed) that hold ``marker``."""
    return [line for line in lines if marker in line]


def send_direct(port: int, text: str) -> Sent:
    """Send a corpus request to nginx itself, half-close, read every answer until it closes."""
    sent = Sent(*new_markers())
    with RawConn(port, timeout=DIRECT_READ_TIMEOUT) as c:
        c.send(render(text, sent.outer, sent.inner))
        c.sock.shutdown(socket.SHUT_WR)  # nginx answers what it has, then closes
        read_responses(c, sent, 50)
        unread = bytes(c.buf)
    if sent.error == "closed":
        # the end of nginx's answers, or its HTTP/0.9 answer (no status line)
        sent.error = "an HTTP/0.9 answer" if unread and not sent.statuses else ""
    return sent


@pytest.fixture(scope="module")
def batch(stack: NginxStack) -> NginxBatch:
    cases, accepted = send_all(stack.front.connectors())
    direct_cases = {c.name: send_direct(stack.direct_port, c.request) for c in CORPUS.cases}
    direct_accepted = {a.name: send_direct(stack.direct_port, a.request) for a in CORPUS.accepted}
    time.sleep(SETTLE)
    return NginxBatch(
        cases,
        accepted,
        direct_cases,
        direct_accepted,
        log_lines(stack.behind_log),
        log_lines(stack.direct_log),
    )


@pytest.mark.parametrize("case", case_params(CORPUS.cases))
def test_nginx_behind_tlsgate_sees_nothing_ambiguous(batch: NginxBatch, case: Case) -> None:
    over_each_transport(lambda t: check_refused(case, batch.cases[t, case.name], batch.behind_saw))


@pytest.mark.parametrize("case", case_params(CORPUS.accepted))
def test_nginx_behind_tlsgate_gets_each_lookalike_as_it_is(
    batch: NginxBatch, case: Accepted
) -> None:
    over_each_transport(lambda t: check_lookalike(case, batch.accepted[t, case.name], batch))


def check_lookalike(case: Accepted, sent: Sent, batch: NginxBatch) -> None:
    assert not sent.error, sent.summary()
    assert len(sent.statuses) == case.responses
    # every answer is nginx's own (whatever its status): none is a refusal of tlsgate's
    servers = [r.header("server") or "" for r in sent.responses]
    assert all(s.startswith("nginx") for s in servers), f"{sent.summary()} from {servers}"
    if all(s == 200 for s in sent.statuses):
        # (a request nginx refuses, OPTIONS *, is logged without its fields)
        assert len(lines_with(batch.behind, sent.outer)) == case.responses
    # the request inside a body (inner_is_body) is never one nginx parsed
    assert not batch.behind_saw(sent.inner)
    if case.keeps_alive:
        assert sent.after_status == 200
        assert len(lines_with(batch.behind, sent.after)) == 1


_XFAILED = {c.name for c in CORPUS.cases if c.xfail}

# how tlsgate sends every request upstream: origin-form (or *), HTTP/1.1
_FORWARDED = re.compile(r'"(?:[A-Z]+) (/[^ "]*|\*) HTTP/1\.1" "[^"]*"$')


def test_nginx_parsed_only_what_tlsgate_meant_to_forward(batch: NginxBatch) -> None:
    """Every request nginx logged behind tlsgate is one tlsgate sent: a request line
    as tlsgate writes them, holding a marker of this batch (or the fixed target of a
    pipelined first request). A framing the two parsers read differently makes nginx
    parse bytes of one request as another (its log then shows a mangled request line),
    the next client's on a pooled connection."""
    known = [s.outer for s in [*batch.cases.values(), *batch.accepted.values()]]
    known += [s.after for s in batch.accepted.values() if s.after]
    known += ["/pipelined-first"]
    # a known defect (xfail) may forward its inner request: that case fails on its own
    known += [sent.inner for (_, name), sent in batch.cases.items() if name in _XFAILED]
    assert batch.behind, "nginx logged nothing behind tlsgate"
    for line in batch.behind:
        assert _FORWARDED.search(line), f"nginx parsed a request tlsgate did not send: {line}"
        assert any(k in line for k in known) or '"OPTIONS * HTTP/1.1"' in line, line


def _row(name: str, tlsgate: Sent, direct: Sent, batch: NginxBatch) -> str:
    smuggled = " + inner request" if lines_with(batch.direct, direct.inner) else ""
    return f"| {name} | {tlsgate.summary()} | {direct.summary()}{smuggled} |"


def test_nginx_direct_answers(batch: NginxBatch) -> None:
    """nginx's own answers to the corpus, next to tlsgate's (over http, with this nginx
    behind it: a relayed or accepted case's status is nginx's answer through tlsgate):
    a record of where the two parsers differ, not a judgement of nginx. "+ inner
    request" means nginx also parsed the smuggled request as one of its own. The
    control: nginx logged every valid look-alike sent to it directly, so the direct
    log is complete."""
    for case in CORPUS.accepted:
        direct = batch.direct_accepted[case.name]
        if direct.statuses and all(s == 200 for s in direct.statuses):
            assert lines_with(batch.direct, direct.outer), case.name
    rows = ["| case | tlsgate (nginx behind) | nginx direct |", "|---|---|---|"]
    rows += [
        _row(c.name, batch.cases["http", c.name], batch.direct_cases[c.name], batch)
        for c in CORPUS.cases
    ]
    rows += [
        _row(
            f"{a.name} (accepted)",
            batch.accepted["http", a.name],
            batch.direct_accepted[a.name],
            batch,
        )
        for a in CORPUS.accepted
    ]
    assert len(rows) == 2 + len(CORPUS.cases) + len(CORPUS.accepted)
    print("\n".join(rows))
