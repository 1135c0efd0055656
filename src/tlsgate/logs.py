"""The error log (human-readable) and the access log (one JSON object per line).

Every process (supervisor and workers) writes its own lines to the same
destinations. Files are opened with O_APPEND and lines go out whole, in one
``write`` per batch, so lines from different processes never interleave.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from tlsgate.config.model import LogConfig

_FORMAT = "%(asctime)s %(levelname)s [%(role)s] %(message)s"


class _RoleFilter(logging.Filter):
    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def filter(self, record: logging.LogRecord) -> bool:
        record.role = self.role
        return True


class _UTCFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


def setup_error_log(cfg: LogConfig | None, role: str) -> None:
    """(Re)configure the ``tlsgate`` logger for this process."""
    logger = logging.getLogger("tlsgate")
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    handler: logging.Handler
    if cfg is None or cfg.error in ("", "-"):
        handler = logging.StreamHandler(sys.stderr)
    else:
        handler = logging.FileHandler(cfg.error, mode="a", encoding="utf-8")
    handler.setFormatter(_UTCFormatter(_FORMAT))
    handler.addFilter(_RoleFilter(role))
    logger.addHandler(handler)
    logger.setLevel((cfg.level if cfg else "info").upper())
    logger.propagate = False


@dataclass(slots=True, eq=False)
class AccessRecord:
    """One access-log line: an HTTP exchange (``kind="http"``) or an L4 session (``"stream"``).

    Both kinds share the identity fields; each writes its own extra fields, and
    ``None`` values are written as JSON ``null`` so every line of a kind has the
    same keys -- except an http line's ``request_id`` and ``error``, written only
    when set (an exchange that went wrong: the id its error page showed the
    client, and what happened).
    """

    kind: Literal["http", "stream"]
    client_ip: str
    peer_ip: str
    listener: str
    worker: int
    duration_ms: float
    backend: str | None = None
    server: str | None = None
    sni: str | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    # http
    tls_version: str | None = None
    method: str | None = None
    host: str | None = None
    path: str | None = None
    status: int = 0
    upstream_duration_ms: float | None = None
    error: str = ""  # what went wrong, for the operator (never shown to the client)
    request_id: str = ""  # the id an error page showed the client; "" = none
    # stream
    client_port: int = 0
    protocol: str = ""
    alpn: list[str] | None = None
    close_reason: str = ""

    def json_line(self, time: str) -> str:
        """The record as one JSON object (no newline), keys in a fixed order.

        Built with f-strings rather than ``json.dumps`` of a dict: a line per request
        is on the hot path, and most values are plain ASCII that need no escaping.
        """
        s = _json_str
        head = f'{{"time":"{time}","client_ip":{s(self.client_ip)}'
        if self.kind == "http":
            up = self.upstream_duration_ms
            line = (
                f'{head},"peer_ip":{s(self.peer_ip)},"listener":{s(self.listener)}'
                f',"sni":{s(self.sni)},"tls_version":{s(self.tls_version)}'
                f',"method":{s(self.method)},"host":{s(self.host)},"path":{s(self.path)}'
                f',"status":{self.status},"bytes_in":{self.bytes_in}'
                f',"bytes_out":{self.bytes_out},"backend":{s(self.backend)}'
                f',"server":{s(self.server)}'
                f',"upstream_duration_ms":{"null" if up is None else repr(up)}'
                f',"duration_ms":{self.duration_ms!r},"worker":{self.worker}'
            )
            if self.request_id:
                line += f',"request_id":{s(self.request_id)}'
            if self.error:
                line += f',"error":{s(self.error)}'
            return line + "}"
        alpn = "null" if self.alpn is None else "[" + ",".join(map(s, self.alpn)) + "]"
        return (
            f'{head},"client_port":{self.client_port},"peer_ip":{s(self.peer_ip)}'
            f',"listener":{s(self.listener)},"protocol":{s(self.protocol)}'
            f',"sni":{s(self.sni)},"alpn":{alpn},"backend":{s(self.backend)}'
            f',"server":{s(self.server)},"bytes_in":{self.bytes_in}'
            f',"bytes_out":{self.bytes_out},"duration_ms":{self.duration_ms!r}'
            f',"close_reason":{s(self.close_reason)},"worker":{self.worker}}}'
        )


_PLAIN = re.compile(r"[ !#-\[\]-~]*")  # printable ASCII but '"' and backslash


def _json_str(value: str | None) -> str:
    """A JSON string (or null); json.dumps only when something needs escaping."""
    if value is None:
        return "null"
    if _PLAIN.fullmatch(value):
        return '"' + value + '"'
    return json.dumps(value, ensure_ascii=False)


class AccessLog:
    """Appends JSON lines to stdout, a file, or nowhere; batched, at most 0.1 s late.

    ``enabled`` is False for ``""``: callers check it and build no record at all.
    With a ``loop``, lines are collected and written with one ``write`` at most
    ``FLUSH_AFTER`` seconds later (or once ``FLUSH_AT`` bytes wait, and on close), as
    nginx's ``access_log ... buffer= flush=`` does, so a busy worker makes one system
    call for many requests and its event loop never spins for the log; without a
    loop, each line is written at once. Time stamps are UTC with milliseconds; the formatted
    second is cached, so a line costs no ``datetime`` work.
    """

    FLUSH_AT = 64 * 1024
    FLUSH_AFTER = 0.1  # seconds: a line reaches the file this long after its request at most

    def __init__(self, destination: str, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.destination = destination
        self.loop = loop
        self.fd: int | None
        self._owned = False
        self._lines: list[bytes] = []
        self._pending = 0
        self._scheduled = False
        self._second = -1
        self._second_text = ""
        if destination == "":
            self.fd = None
        elif destination == "-":
            self.fd = sys.stdout.fileno()
        else:
            self.fd = os.open(destination, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            self._owned = True
        self.enabled = self.fd is not None

    def _now(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._second_text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._second_text}.{int((now - second) * 1000):03d}+00:00"

    def write(self, record: AccessRecord) -> None:
        """Log ``record`` (nothing when disabled)."""
        if self.fd is None:
            return
        data = (record.json_line(self._now()) + "\n").encode("utf-8")
        if self.loop is None:
            self._write(data)
            return
        self._lines.append(data)
        self._pending += len(data)
        if self._pending >= self.FLUSH_AT:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            self.loop.call_later(self.FLUSH_AFTER, self.flush)

    def flush(self) -> None:
        """Write what is collected, in one system call."""
        self._scheduled = False
        if not self._lines:
            return
        data = b"".join(self._lines)
        self._lines.clear()
        self._pending = 0
        self._write(data)

    def _write(self, data: bytes) -> None:
        if self.fd is None:
            return
        # an index, not a shrinking memoryview: the compiled build took `while view:`
        # for true after the last byte was written, and wrote the batch twice
        written = 0
        try:
            while written < len(data):
                written += os.write(self.fd, data[written:] if written else data)
        except OSError as exc:
            logging.getLogger("tlsgate").error("access log %s: %s", self.destination, exc)

    def close(self) -> None:
        self.flush()
        if self._owned and self.fd is not None:
            os.close(self.fd)
        self.fd = None
        self.enabled = False
