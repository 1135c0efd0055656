"""The soak's traffic (``bench/soak.py``): one client process per kind, each with its counters.

How it works: ``python soak_traffic.py KIND ...`` (:func:`run_kind`) is one
child process of the soak. It starts a few threads that all run the same kind
of client in a paced loop until its standard input ends, and every two seconds
it prints a snapshot of that kind's :class:`Tally` (ok, failed with reasons,
closed on purpose with reasons, extra counters, the first events with their
wall-clock times) as a JSON line; the last one is marked ``final``. Each kind
lives in its own process so that the GIL of one busy client never delays
another's answer into a timeout, and a crashing client cannot take the others
down.

The kinds, all against one tlsgate node on 127.0.0.1 (names resolved by SNI and
``Host``, certificates verified against the soak's CA):

``keepalive``        GET ``/`` on long-lived HTTPS connections (httpx, one per
                     thread, each with its own SNI name); the bench nginx answers
                     100 bytes, checked byte for byte.
``handshake``        a new TLS connection per request (``Connection: close``) in
                     rounds over five variants (name, TLS 1.3, or TLS 1.2 forced
                     onto the ECDSA or the RSA certificate); every other round
                     resumes the sessions the round before got. Records which
                     certificate each full handshake got (fingerprints per name).
``upload``           POST ``/upload`` of 64 KiB-4 MiB (log-uniform) random bytes to
                     the echo app, checked by the echoed length and SHA-256.
``websocket``        long-lived ``wss`` connections to the echo app through
                     tlsgate, a text or binary message (1 B-64 KiB) every 0.25 s
                     checked on its way back; reconnects when closed. A close with
                     a close frame is counted as *on purpose*, one without it (the
                     TCP connection just ends) as a failure.
``passthrough``      a new TLS connection through the ``tls-passthrough`` listener
                     per exchange: the backend's own certificate is verified and a
                     line round-trips (the answer names the server).
``passthrough-long`` long-lived passthrough connections, one exchange every 0.5 s.
``http-redirect``    GET on the plain-HTTP listener, which must answer 308 with the
                     https ``Location``.

Every operation has a timeout (10 s, uploads 60 s), so a stop is always reached.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import random
import socket
import ssl
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

BODY = b"x" * 99 + b"\n"  # what the bench nginx answers (servers.BODY)
OP_TIMEOUT = 10.0
UPLOAD_TIMEOUT = 60.0
UPLOAD_MIN, UPLOAD_MAX = 64 * 1024, 4 * 1024 * 1024
WS_MAX_MESSAGE = 64 * 1024
SNAPSHOT_EVERY = 2.0
EVENTS_KEPT = 200  # per kind: the first failures/closes with their times, for the report

ECDSA_TLS12 = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305"
)
RSA_TLS12 = "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-CHACHA20-POLY1305"

# The https names (all in the soak's certificates) and the variants of the handshake kind.
SITE_NAMES = ("soak.test", "www.soak.test")
API_NAMES = ("api.soak.test", "v1.api.soak.test")
HANDSHAKE_VARIANTS = (
    ("www.soak.test", "tls13"),
    ("soak.test", "tls12-ecdsa"),
    ("www.soak.test", "tls12-rsa"),
    ("api.soak.test", "tls13"),
    ("v1.api.soak.test", "tls12-ecdsa"),
)
PT_NAMES = ("pt.soak.test", "a.pt.soak.test")


@dataclass(frozen=True)
class Target:
    """Where the node listens and what the clients trust (JSON on a client's command line)."""

    https_port: int
    http_port: int
    pt_port: int
    ca_pem: str  # the soak CA: every https certificate
    pt_ca_pem: str  # the passthrough backends' CA
    pt_servers: tuple[str, ...]  # the names the passthrough backends answer with
    seed: int


class ClientFailure(Exception):
    """An answer that arrived but was wrong (status, body, echo, certificate)."""


def describe(exc: BaseException) -> str:
    """A short, stable reason: the exception type and the start of its message."""
    text = str(exc).strip().replace("\n", " ") or repr(exc)
    return f"{type(exc).__name__}: {text[:110]}"


class Tally:
    """One kind's counters, shared by its threads."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._lock = threading.Lock()
        self.ok = 0
        self.failed: Counter[str] = Counter()
        self.on_purpose: Counter[str] = Counter()
        self.extra: Counter[str] = Counter()
        self.fingerprints: dict[str, set[str]] = {}
        self.events: list[tuple[float, str, str]] = []  # (time.time(), "failed"/"on purpose", why)

    def success(self, **extra: int) -> None:
        with self._lock:
            self.ok += 1
            self.extra.update(extra)

    def count(self, **extra: int) -> None:
        with self._lock:
            self.extra.update(extra)

    def fail(self, reason: str) -> None:
        with self._lock:
            self.failed[reason] += 1
            self._event("failed", reason)

    def purposeful(self, reason: str) -> None:
        with self._lock:
            self.on_purpose[reason] += 1
            self._event("on purpose", reason)

    def saw_certificate(self, name: str, der: bytes) -> None:
        with self._lock:
            self.fingerprints.setdefault(name, set()).add(fingerprint(der))

    def _event(self, what: str, reason: str) -> None:
        if len(self.events) < EVENTS_KEPT:
            self.events.append((time.time(), what, reason))

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "kind": self.kind,
                "ok": self.ok,
                "failed": dict(self.failed),
                "on_purpose": dict(self.on_purpose),
                "extra": dict(self.extra),
                "fingerprints": {k: sorted(v) for k, v in self.fingerprints.items()},
                "events": list(self.events),
            }


def fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


class Pacer:
    """Paces a loop at one iteration per ``interval`` s; falls back to now when behind."""

    def __init__(self, interval: float, stop: threading.Event) -> None:
        self.interval = interval
        self.stop = stop
        self.next = time.monotonic()

    def wait(self) -> bool:
        """Sleep until the next slot; False once the stop flag is set."""
        self.next += self.interval
        delay = self.next - time.monotonic()
        if delay < 0:
            self.next = time.monotonic()
            delay = 0.0
        return not self.stop.wait(delay) and not self.stop.is_set()


# --------------------------------------------------------------------------- TLS helpers


def client_context(ca_pem: str, variant: str = "tls13", *, alpn: bool = True) -> ssl.SSLContext:
    """A verifying client context; ``tls12-ecdsa``/``tls12-rsa`` force that certificate."""
    ctx = ssl.create_default_context(cadata=ca_pem)
    if alpn:
        ctx.set_alpn_protocols(["http/1.1"])
    if variant != "tls13":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(ECDSA_TLS12 if variant == "tls12-ecdsa" else RSA_TLS12)
    return ctx


@contextlib.contextmanager
def tls_connection(
    port: int, name: str, ctx: ssl.SSLContext, session: ssl.SSLSession | None = None
) -> Iterator[ssl.SSLSocket]:
    """A TLS connection to 127.0.0.1:``port`` with SNI ``name``, verified by ``ctx``."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=OP_TIMEOUT)
    try:
        tls = ctx.wrap_socket(raw, server_hostname=name, session=session)
    except BaseException:
        raw.close()
        raise
    with tls:
        yield tls


def read_http_response(sock: ssl.SSLSocket) -> tuple[int, dict[str, str], bytes]:
    """Read a ``Connection: close`` response to the end: (status, headers, body)."""
    data = bytearray()
    while chunk := sock.recv(65536):
        data += chunk
    head, sep, body = bytes(data).partition(b"\r\n\r\n")
    if not sep:
        raise ClientFailure(f"no complete response head ({len(data)} bytes)")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return status, headers, body


# --------------------------------------------------------------------------- the kinds


def _https_client(target: Target) -> httpx.Client:
    ctx = client_context(target.ca_pem)
    return httpx.Client(transport=httpx.HTTPTransport(verify=ctx), timeout=OP_TIMEOUT)


def _sni_request(
    client: httpx.Client, target: Target, method: str, name: str, path: str, **kw: Any
) -> httpx.Response:
    return client.request(
        method,
        f"https://127.0.0.1:{target.https_port}{path}",
        headers={"Host": name, **kw.pop("headers", {})},
        extensions={"sni_hostname": name},
        **kw,
    )


def keepalive_once(client: httpx.Client, target: Target, name: str) -> None:
    r = _sni_request(client, target, "GET", name, "/")
    if r.status_code != 200 or r.content != BODY:
        raise ClientFailure(f"GET /: status {r.status_code}, {len(r.content)} bytes")


def keepalive(
    target: Target, tally: Tally, stop: threading.Event, index: int, interval: float
) -> None:
    name = (*SITE_NAMES, *API_NAMES)[index % 4]
    pacer = Pacer(interval, stop)
    with _https_client(target) as client:
        while pacer.wait():
            try:
                keepalive_once(client, target, name)
            except Exception as exc:
                tally.fail(describe(exc))
            else:
                tally.success()


def handshake_once(
    target: Target, ctx: ssl.SSLContext, name: str, session: ssl.SSLSession | None
) -> tuple[bool, bytes, ssl.SSLSession | None]:
    """One request on a new connection: (resumed, server certificate DER, session)."""
    request = f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode()
    with tls_connection(target.https_port, name, ctx, session) as s:
        s.sendall(request)
        status, _, body = read_http_response(s)
        der = s.getpeercert(binary_form=True) or b""
        resumed, new_session = bool(s.session_reused), s.session
    if status != 200 or body != BODY:
        raise ClientFailure(f"GET / (Connection: close): status {status}, {len(body)} bytes")
    return resumed, der, new_session


def handshake(
    target: Target, tally: Tally, stop: threading.Event, index: int, interval: float
) -> None:
    variants = [
        (name, variant, client_context(target.ca_pem, variant))
        for name, variant in HANDSHAKE_VARIANTS
    ]
    sessions: dict[int, ssl.SSLSession | None] = {}
    pacer = Pacer(interval, stop)
    i = index
    while pacer.wait():
        i += 1
        slot = i % len(variants)
        name, variant, ctx = variants[slot]
        resume = sessions.get(slot) if (i // len(variants)) % 2 else None
        try:
            resumed, der, session = handshake_once(target, ctx, name, resume)
        except Exception as exc:
            tally.fail(describe(exc))
            sessions[slot] = None
            continue
        sessions[slot] = session
        if resume is None:
            tally.saw_certificate(f"{name} {variant}", der)
            tally.success(full=1)
        else:
            tally.success(resume_tried=1, resumed=int(resumed))


class Blob:
    """Random bytes that uploads slice (generated once per process)."""

    def __init__(self, seed: int) -> None:
        self.data = random.Random(seed).randbytes(2 * UPLOAD_MAX)

    def pick(self, rng: random.Random) -> bytes:
        size = int(math.exp(rng.uniform(math.log(UPLOAD_MIN), math.log(UPLOAD_MAX))))
        offset = rng.randrange(0, len(self.data) - size)
        return self.data[offset : offset + size]


def upload_once(client: httpx.Client, target: Target, name: str, body: bytes) -> None:
    r = _sni_request(
        client,
        target,
        "POST",
        name,
        "/upload",
        content=body,
        headers={"Content-Type": "application/octet-stream"},
        timeout=UPLOAD_TIMEOUT,
    )
    if r.status_code != 200:
        raise ClientFailure(f"POST /upload: status {r.status_code}")
    echoed = r.json()
    want = hashlib.sha256(body).hexdigest()
    if echoed.get("body_len") != len(body) or echoed.get("body_sha256") != want:
        raise ClientFailure(f"upload of {len(body)} bytes echoed as {echoed.get('body_len')} bytes")


def upload(
    target: Target, tally: Tally, stop: threading.Event, index: int, interval: float
) -> None:
    rng = random.Random(target.seed * 31 + index)
    blob = Blob(target.seed + index)
    pacer = Pacer(interval, stop)
    with _https_client(target) as client:
        while pacer.wait():
            body = blob.pick(rng)
            try:
                upload_once(client, target, SITE_NAMES[index % 2], body)
            except Exception as exc:
                tally.fail(describe(exc))
            else:
                tally.success(bytes=len(body))


def open_ws(target: Target, name: str, path: str) -> ClientConnection:
    """A ``wss`` connection through tlsgate (connected to 127.0.0.1; SNI and Host ``name``)."""
    sock = socket.create_connection(("127.0.0.1", target.https_port), timeout=OP_TIMEOUT)
    try:
        return connect(
            f"wss://{name}:{target.https_port}{path}",
            sock=sock,
            ssl=client_context(target.ca_pem),
            server_hostname=name,
            proxy=None,
            compression=None,
            open_timeout=OP_TIMEOUT,
            close_timeout=5,
            max_size=2 * WS_MAX_MESSAGE,
        )
    except BaseException:
        sock.close()
        raise


def ws_message(rng: random.Random) -> str | bytes:
    size = int(math.exp(rng.uniform(0, math.log(WS_MAX_MESSAGE))))
    if rng.random() < 0.5:
        return rng.choice("abcdefghijklmnopqrstuvwxyz") * size
    return rng.randbytes(size)


def ws_exchange(ws: ClientConnection, message: str | bytes) -> None:
    ws.send(message)
    got = ws.recv(timeout=OP_TIMEOUT)
    if got != message:
        raise ClientFailure(f"websocket echo of {len(message)} units came back different")


def websocket(
    target: Target, tally: Tally, stop: threading.Event, index: int, interval: float
) -> None:
    rng = random.Random(target.seed * 17 + index)
    name = SITE_NAMES[index % 2]
    while not stop.is_set():
        try:
            ws = open_ws(target, name, f"/ws/{index}")
        except Exception as exc:
            tally.fail(f"connect: {describe(exc)}")
            stop.wait(1.0)
            continue
        tally.count(connections=1)
        _ws_session(ws, rng, tally, stop, interval)


def _ws_session(
    ws: ClientConnection, rng: random.Random, tally: Tally, stop: threading.Event, interval: float
) -> None:
    """Exchange messages on one connection until the stop flag or the connection ends."""
    pacer = Pacer(interval, stop)
    try:
        with ws:
            while pacer.wait():
                ws_exchange(ws, ws_message(rng))
                tally.success()
    except ConnectionClosed as exc:
        if stop.is_set() and exc.sent is not None:
            return  # our own close at the end of the run
        if exc.rcvd is not None:
            # The protocol's way to end a connection (RFC 6455 7.1.5: 1001 going away).
            tally.purposeful(f"server closed with close frame {exc.rcvd.code}")
        else:
            tally.fail(f"closed without a close frame: {describe(exc)}")
    except Exception as exc:
        tally.fail(describe(exc))


def passthrough_once(sock: ssl.SSLSocket, target: Target, nonce: str) -> str:
    """One line through the passthrough listener and back; returns the server's name."""
    sock.sendall(f"ping {nonce}\n".encode())
    line = bytearray()
    while not line.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            raise ClientFailure(f"passthrough: connection closed after {len(line)} bytes")
        line += chunk
    server, _, rest = bytes(line).decode().partition(" ")
    if rest != f"ping {nonce}\n" or server not in target.pt_servers:
        raise ClientFailure(f"passthrough: unexpected answer {bytes(line)[:60]!r}")
    return server


def passthrough(
    target: Target, tally: Tally, stop: threading.Event, index: int, interval: float
) -> None:
    ctx = client_context(target.pt_ca_pem, alpn=False)
    pacer = Pacer(interval, stop)
    i = 0
    while pacer.wait():
        i += 1
        name = PT_NAMES[i % len(PT_NAMES)]
        try:
            with tls_connection(target.pt_port, name, ctx) as s:
                server = passthrough_once(s, target, f"{index}-{i}")
        except Exception as exc:
            tally.fail(describe(exc))
        else:
            tally.success(**{f"served by {server}": 1})


def passthrough_long(
    target: Target, tally: Tally, stop: threading.Event, index: int, interval: float
) -> None:
    ctx = client_context(target.pt_ca_pem, alpn=False)
    i = 0
    while not stop.is_set():
        try:
            with tls_connection(target.pt_port, PT_NAMES[index % 2], ctx) as s:
                tally.count(connections=1)
                pacer = Pacer(interval, stop)
                while pacer.wait():
                    i += 1
                    passthrough_once(s, target, f"long-{index}-{i}")
                    tally.success()
        except Exception as exc:
            tally.fail(describe(exc))
            stop.wait(1.0)


def redirect_once(client: httpx.Client, target: Target, name: str, path: str) -> None:
    r = client.get(f"http://127.0.0.1:{target.http_port}{path}", headers={"Host": name})
    want = f"https://{name}:{target.https_port}{path}"
    if r.status_code != 308 or r.headers.get("location") != want:
        raise ClientFailure(
            f"http {path}: status {r.status_code}, Location {r.headers.get('location')}"
        )


def http_redirect(
    target: Target, tally: Tally, stop: threading.Event, index: int, interval: float
) -> None:
    pacer = Pacer(interval, stop)
    i = 0
    with httpx.Client(timeout=OP_TIMEOUT) as client:
        while pacer.wait():
            i += 1
            try:
                redirect_once(client, target, SITE_NAMES[i % 2], f"/r/{index}/{i}?q=soak")
            except Exception as exc:
                tally.fail(describe(exc))
            else:
                tally.success()


ClientLoop = Callable[[Target, Tally, threading.Event, int, float], None]


@dataclass(frozen=True)
class Kind:
    loop: ClientLoop
    threads: int
    interval: float  # seconds between two operations of one thread, at --load 1
    what: str


KINDS: dict[str, Kind] = {
    "keepalive": Kind(keepalive, 4, 1 / 40, "GET / on 4 keep-alive connections, 40/s each"),
    "handshake": Kind(handshake, 2, 1 / 8, "new TLS connection per GET, half resumed, 2 x 8/s"),
    "upload": Kind(upload, 1, 0.3, "POST 64 KiB-4 MiB, echoed length + SHA-256"),
    "websocket": Kind(websocket, 4, 0.25, "4 long-lived wss connections, a message per 0.25 s"),
    "passthrough": Kind(passthrough, 1, 0.1, "new TLS connection through L4 per line, 10/s"),
    "passthrough-long": Kind(passthrough_long, 2, 0.5, "2 long-lived L4 connections, 2 lines/s"),
    "http-redirect": Kind(http_redirect, 1, 0.2, "plain HTTP GET -> 308 https, 5/s"),
}


def _guard(
    loop: ClientLoop,
    target: Target,
    tally: Tally,
    stop: threading.Event,
    index: int,
    interval: float,
) -> None:
    """Run a client loop; a bug in the client itself is counted, not lost with the thread."""
    try:
        loop(target, tally, stop, index, interval)
    except Exception as exc:
        tally.fail(f"client thread died: {describe(exc)}")


def run_kind(kind: str, target: Target, load: float, deadline: float) -> None:
    """The body of one traffic process: threads of ``kind``, JSON lines on stdout.

    Prints ``{"ready": ...}`` once its threads run, a snapshot every
    :data:`SNAPSHOT_EVERY` seconds and a last one marked ``final``. The threads stop
    when standard input ends (the soak closes it, or dies), or at ``deadline``
    (``time.time()``): a soak killed with SIGKILL leaves no client running.
    """
    spec = KINDS[kind]
    tally = Tally(kind)
    halt = threading.Event()
    threads = [
        threading.Thread(
            target=_guard,
            args=(spec.loop, target, tally, halt, i, spec.interval / load),
            name=f"{kind}-{i}",
            daemon=True,
        )
        for i in range(spec.threads)
    ]
    for t in threads:
        t.start()
    threading.Thread(target=_halt_on_eof, args=(halt,), daemon=True).start()
    _emit({"kind": kind, "ready": True})
    last = time.monotonic()
    while not halt.wait(0.2) and time.time() < deadline:
        if time.monotonic() - last >= SNAPSHOT_EVERY:
            _emit(tally.snapshot())
            last = time.monotonic()
    halt.set()
    join_by = time.monotonic() + UPLOAD_TIMEOUT + 10
    for t in threads:
        t.join(max(0.1, join_by - time.monotonic()))
    final = tally.snapshot()
    final["final"] = True
    final["threads_stuck"] = sum(t.is_alive() for t in threads)
    _emit(final)


def _halt_on_eof(halt: threading.Event) -> None:
    sys.stdin.buffer.read()  # returns at EOF: the soak closed the pipe or is gone
    halt.set()


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def prime(target: Target) -> list[str]:
    """One operation of every kind, before the soak: returns what failed (empty: all fine).

    The node has then opened every kind of descriptor it opens lazily (upstream pools,
    the L4 poller, WebSocket tunnels), so the at-rest descriptor count taken after this
    is the baseline the end of the run is compared with.
    """
    problems: list[str] = []
    rng = random.Random(target.seed)

    def attempt(what: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception as exc:
            problems.append(f"{what}: {describe(exc)}")

    with _https_client(target) as client:
        for name in (*SITE_NAMES, *API_NAMES):
            attempt(f"GET via {name}", functools.partial(keepalive_once, client, target, name))
        attempt(
            "upload",
            lambda: upload_once(client, target, "www.soak.test", rng.randbytes(UPLOAD_MIN)),
        )
    for name, variant in HANDSHAKE_VARIANTS:
        ctx = client_context(target.ca_pem, variant)
        attempt(
            f"handshake {name} {variant}",
            functools.partial(handshake_once, target, ctx, name, None),
        )

    def ws_round() -> None:
        with open_ws(target, "www.soak.test", "/ws/prime") as ws:
            ws_exchange(ws, "prime")

    attempt("websocket", ws_round)
    pt_ctx = client_context(target.pt_ca_pem, alpn=False)

    def pt_round(name: str) -> None:
        with tls_connection(target.pt_port, name, pt_ctx) as s:
            passthrough_once(s, target, "prime")

    for name in PT_NAMES:
        attempt(f"passthrough {name}", functools.partial(pt_round, name))
    with httpx.Client(timeout=OP_TIMEOUT) as http:
        attempt("http redirect", lambda: redirect_once(http, target, "www.soak.test", "/prime"))
    return problems


def main(argv: list[str] | None = None) -> int:
    """``soak_traffic.py KIND TARGET_JSON LOAD DEADLINE``: what soak.py starts per kind."""
    kind, target_json, load, deadline = argv if argv is not None else sys.argv[1:]
    fields = json.loads(target_json)
    fields["pt_servers"] = tuple(fields["pt_servers"])
    run_kind(kind, Target(**fields), float(load), float(deadline))
    return 0


def target_json(target: Target) -> str:
    return json.dumps(asdict(target))


if __name__ == "__main__":
    sys.exit(main())
