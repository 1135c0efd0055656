"""Small pieces the sans-IO parsers share.

How this works: a parser that reads the start of a connection (the TLS
ClientHello, a PROXY protocol header) is called with *everything received so
far*, each time more arrives. It returns the parsed value once the bytes are
complete, raises its own :class:`~tlsgate.errors.RemoteProtocolError` subclass
as soon as they can no longer become valid, and otherwise returns
:class:`NeedMoreData`, so the I/O layer knows to read again.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class NeedMoreData:
    """The bytes so far are a valid prefix; read more.

    ``at_least`` is the total number of bytes (counted from the start of the
    buffer, not in addition to it) known to be needed before the parser can
    answer, when that is known; ``None`` when it is not. It is a lower bound:
    the answer may still be another ``NeedMoreData`` once that many arrived.
    """

    at_least: int | None = None


def show_bytes(value: bytes | bytearray, limit: int = 24) -> str:
    """A short, safe rendering of untrusted bytes for an error message."""
    text = repr(bytes(value[:limit]))
    return text + ("..." if len(value) > limit else "")
