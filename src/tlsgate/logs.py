"""The error log (human-readable) and the access log (one JSON object per line).

Every process (supervisor and workers) writes its own lines to the same
destinations. Files are opened with O_APPEND and each line goes out in one
``write``, so lines from different processes never interleave.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any

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


class AccessLog:
    """Appends JSON lines to stdout, a file, or nowhere."""

    def __init__(self, destination: str) -> None:
        self.destination = destination
        self.fd: int | None
        self._owned = False
        if destination == "":
            self.fd = None
        elif destination == "-":
            self.fd = sys.stdout.fileno()
        else:
            self.fd = os.open(destination, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            self._owned = True

    def write(self, entry: dict[str, Any]) -> None:
        if self.fd is None:
            return
        line = json.dumps(entry, separators=(",", ":"), ensure_ascii=False) + "\n"
        try:
            os.write(self.fd, line.encode("utf-8"))
        except OSError as exc:
            logging.getLogger("tlsgate").error("access log %s: %s", self.destination, exc)

    def close(self) -> None:
        if self._owned and self.fd is not None:
            os.close(self.fd)
        self.fd = None
