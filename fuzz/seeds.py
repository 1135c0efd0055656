"""Write the seed corpora, fuzz/corpus/<target>/, from real and hand-made inputs.

How this works: each target gets a few inputs that reach deep into its
parser at once -- real ClientHellos (the ``openssl s_client`` captures in
``tests/unit/proto/vectors``, plus fresh captures from this machine's
``openssl s_client`` and Python's ``ssl`` when they are there), PROXY v1/v2
headers (HAProxy's captures and ``build_v1``/``build_v2`` output), HTTP
requests and responses with Content-Length and chunked bodies, trailers,
pipelines and upgrades, the example configurations of ``docs/configuration.md``,
and store records. The fuzzer starts from these and writes what it finds to
a work directory, not here (``fuzz/run.py``), so the corpora stay small and
reviewable. Run it again after changing a target's input format::

    .venv/bin/python fuzz/seeds.py            # rewrite every corpus
    .venv/bin/python fuzz/seeds.py --check    # exit 1 if a corpus is out of date
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"
VECTORS = ROOT / "tests" / "unit" / "proto" / "vectors"

SEP = b"\xff\xfe"  # _fuzzhttp.SEP, repeated so this script imports no tlsgate module


def _vector(name: str) -> bytes:
    lines = (VECTORS / name).read_text().splitlines()
    return bytes.fromhex("".join(line for line in lines if not line.startswith("#")))


def _python_client_hello(server_name: str | None, alpn: list[str] | None) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def _openssl_client_hello(*args: str) -> bytes | None:
    """What ``openssl s_client ARGS`` sends first, captured on a loopback socket."""
    if shutil.which("openssl") is None:
        return None
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        got: list[bytes] = []

        def accept() -> None:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(5)
                data = b""
                while len(data) < 5 or len(data) < 5 + int.from_bytes(data[3:5], "big"):
                    more = conn.recv(65536)
                    if not more:
                        break
                    data += more
                got.append(data)

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args],
            input=b"",
            capture_output=True,
            timeout=10,
            check=False,
        )
        thread.join(5)
    return got[0] if got and got[0][:1] == b"\x16" else None


def clienthello() -> dict[str, bytes]:
    seeds = {
        "openssl-tls13-sni-alpn": _vector("openssl_s_client_tls13_sni_alpn.hex"),
        "openssl-tls12-nosni": _vector("openssl_s_client_tls12_nosni.hex"),
        "python-sni-alpn": _python_client_hello("www.example.org", ["h2", "http/1.1"]),
        "python-nosni": _python_client_hello(None, None),
    }
    live = {
        "live-openssl-sni-alpn": ("-servername", "www.example.com", "-alpn", "h2,http/1.1"),
        "live-openssl-tls12": ("-tls1_2", "-noservername"),
    }
    for name, args in live.items():
        captured = _openssl_client_hello(*args)
        if captured is not None:
            seeds[name] = captured
    hello = seeds["openssl-tls13-sni-alpn"]
    body = hello[5:]
    # the same message in two records (RFC 8446 §5.1 fragmentation)
    seeds["fragmented"] = (
        hello[:3] + (40).to_bytes(2, "big") + body[:40]
        + hello[:3] + (len(body) - 40).to_bytes(2, "big") + body[40:]
    )  # fmt: skip
    seeds["plain-http"] = b"GET / HTTP/1.1\r\n"
    return seeds


def proxy_protocol() -> dict[str, bytes]:
    from tlsgate.proto.proxy_protocol import build_v1, build_v2

    return {
        "haproxy-v1": _vector("haproxy_send_proxy_v1.hex"),
        "haproxy-v2-ssl-crc": _vector("haproxy_send_proxy_v2_ssl.hex"),
        "v1-tcp4": build_v1(("192.0.2.1", 56324), ("198.51.100.2", 443)) + b"payload",
        "v1-tcp6": build_v1(("2001:db8::1", 1), ("::ffff:192.0.2.9", 443)),
        "v1-unknown": b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n",
        "v2-tcp4-tlvs": build_v2(
            ("192.0.2.1", 1), ("192.0.2.2", 2), tlvs=[(1, b"h2"), (2, b"www.example.com")]
        ),
        "v2-tcp6-crc": build_v2(("2001:db8::1", 1), ("2001:db8::2", 443), crc32c=True),
        "v2-local": build_v2(None, None, command="LOCAL"),
        "v2-unix": bytes.fromhex("0d0a0d0a000d0a515549540a" "2131" "00d8") + b"\x00" * 216,
    }  # fmt: skip


def http1() -> dict[str, bytes]:
    req, resp, chunk = b"\x00", b"\x02", b"\x03"
    return {
        "req-get": req + b"GET /a?b=c HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n",
        "req-absolute": req + b"GET http://Example.COM:8080/p HTTP/1.1\r\nHost: x\r\n\r\n",
        "req-chunked": b"\x21"
        + b"POST /u HTTP/1.1\r\nHost: [::1]:80\r\nTransfer-Encoding: gzip, chunked\r\n"
        + b"X-Forwarded-For: 10.0.0.1\r\nForwarded: for=10.0.0.1\r\n\r\n",
        "req-upgrade": b"\xa1"
        + b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade, X-Hop\r\n"
        + b"Upgrade: websocket\r\nX-Hop: 1\r\nX-Client-IP: 192.0.2.9\r\nContent-Length: 0\r\n\r\n",
        "req-http10": b"\x05" + b"OPTIONS * HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        "resp-chunked": resp
        + b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: X-A\r\nX-A: 1\r\n\r\n",
        "resp-head-cl": b"\x16" + b"HTTP/1.1 304 Not Modified\r\nContent-Length: 12\r\n\r\n",
        "resp-101": b"\x32" + b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
        "resp-100": resp + b"HTTP/1.1 100 Continue\r\nStrict-Transport-Security: x\r\n\r\n",
        "chunks": chunk + b"\x03abc\x00\x05hello\x01\xff",
    }


def _http(scenario: int, *segments: bytes) -> bytes:
    return bytes((scenario,)) + SEP.join(segments)


def http_requests() -> dict[str, bytes]:
    get = b"GET /a HTTP/1.1\r\nHost: example.com\r\n\r\n"
    return {
        "get": _http(0, b"C" + get),
        "pipeline": _http(0, b"C" + get + get.replace(b"/a", b"/b"), b"T\x01", b"C" + get),
        "post-cl-split": _http(
            0,
            b"CPOST /f HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhello",
            b"T\x02",
            b"Cworld",
        ),
        "post-chunked-trailers": _http(
            1,
            b"CPOST /f HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n0\r\nX-Sum: 1\r\nTE: x\r\n\r\n",
        ),
        "head-http10": _http(
            0, b"CHEAD / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.0\r\n\r\n", b"E"
        ),
        "forwarded": _http(
            2,
            b"CGET /api/v1 HTTP/1.1\r\nHost: api.example.com\r\nX-Client-IP: 192.0.2.1\r\n"
            b"X-Forwarded-For: 10.0.0.9\r\nForwarded: for=10.0.0.9\r\nConnection: close, X-A\r\n"
            b"X-A: drop\r\n\r\n",
        ),
        "redirect": _http(3, b"CGET /x?y=1 HTTP/1.1\r\nHost: example.com:8080\r\n\r\n"),
        "smuggle-cl-te": _http(
            0,
            b"CPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n"
            b"\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
        "expect-upgrade": _http(
            0,
            b"CPUT /u HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
            b"T\x03",
            b"Cok",
            b"CGET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        ),
        "slow-head": _http(0, b"CGET / HTTP/1.1\r\nHo", b"T\x06", b"Cst: a\r\n\r\n"),
        # an upgrade request with a body (once a cross-client desync: llhttp ends the
        # message at the head while the head sent upstream announced the body)
        "upgrade-body": _http(
            0,
            b"CGET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: a\r\n"
            b"Content-Length: 1\r\n\r\nA",
        ),
    }


def http_responses() -> dict[str, bytes]:
    ok = b"UHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    return {
        "get-cl": _http(0 << 2, ok),
        "head": _http(1 << 2, b"UHTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: x\r\n\r\n"),
        "chunked-trailers": _http(
            0 << 2,
            b"UHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
            b"5\r\nhello\r\n",
            b"U0\r\nX-Sum: 1\r\nConnection: x\r\n\r\n",
        ),
        "http10-close-delimited": _http(
            2 << 2, b"UHTTP/1.1 200 OK\r\nX-A: 1\r\nConnection: X-A\r\n\r\nbody", b"F"
        ),
        "post-early-answer": _http(3 << 2, b"UHTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n"),
        "upgrade-101": _http(
            5 << 2,
            b"UHTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\n\r\nframe",
            b"Cclient",
            b"F",
        ),
        "pipeline": _http(6 << 2, ok, b"T\x01", ok.replace(b"hello", b"world")),
        "continue": _http(
            7 << 2, b"UHTTP/1.1 100 Continue\r\n\r\n", b"Cdata", b"UHTTP/1.1 201 Created\r\n\r\n"
        ),
        "stale-pooled": _http(0 << 2, b"F"),
        "malformed": _http(
            0 << 2, b"UHTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"
        ),
        "slow": _http(4 << 2, b"UHTTP/1.1 200 OK\r\n", b"T\x0b", b"U\r\n"),
        "redirect-listener": _http(3, ok),
    }


def config() -> dict[str, bytes]:
    docs = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    examples = [block.split("```", 1)[0] for block in docs.split("```toml\n")[1:]]
    seeds = {f"docs-{i}": b"\x00" + text.encode() for i, text in enumerate(examples[:6])}
    seeds["minimal"] = (
        b'\x00[[listeners]]\nname = "web"\nbind = ["127.0.0.1:8080"]\nprotocol = "http"\n'
        b'backend = "app"\n\n[[backends]]\nname = "app"\nservers = ["127.0.0.1:9000"]\n'
    )
    seeds["structured"] = bytes(range(1, 200, 3))
    return seeds


def store() -> dict[str, bytes]:
    from tlsgate.store import seal

    key = bytes(range(32))
    sealed = seal(key, b"-----BEGIN PRIVATE KEY-----\n", aad=b"a.key")
    return {
        "unseal-real": b"\x00\x05a.key" + sealed,
        "unseal-magic": b"\x00\x00tgs1" + b"\x00" * 28,
        "seal": b"\x01\x03aad\x00\x10\x05plaintext",
        "key": b"\x02\x10" + bytes(16),
        "records": b"\x03\x00\x01\x05hello\x01\x01\x04tgs1\x02\x01\x03\x01\x00",
        "prefix": b"\x04\x03\x01\x10\xff\xff\x00\x02\x03",
    }


TARGETS: dict[str, Callable[[], dict[str, bytes]]] = {
    "clienthello": clienthello,
    "proxy_protocol": proxy_protocol,
    "http1": http1,
    "http_requests": http_requests,
    "http_responses": http_responses,
    "config": config,
    "store": store,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report stale corpora")
    args = parser.parse_args()
    stale = 0
    for target, make in TARGETS.items():
        directory = CORPUS / target
        seeds = make()
        if args.check:
            have = {p.name for p in directory.glob("*")} if directory.is_dir() else set()
            missing = {n for n in set(seeds) - have if not n.startswith("live-")}
            if missing:
                print(f"{target}: missing {sorted(missing)}")
                stale += 1
            continue
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        for name, data in seeds.items():
            (directory / name).write_bytes(data)
        digest = hashlib.sha256(b"".join(seeds[n] for n in sorted(seeds))).hexdigest()[:12]
        print(f"{target}: {len(seeds)} seeds, {sum(map(len, seeds.values()))} bytes ({digest})")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
