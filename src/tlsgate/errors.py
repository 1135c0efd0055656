"""The whole tlsgate exception tree.

Every error tlsgate raises is one of these; foreign exceptions (ssl, OSError,
httptools, tomllib) are mapped once, at the boundary where they occur, with
``raise ... from exc``::

    TlsgateError
    ├── ConfigError                 a config file is wrong; carries every ConfigProblem
    ├── ProtocolError               someone broke a wire protocol; has a status hint
    │   ├── LocalProtocolError      we were asked to do something the protocol forbids
    │   └── RemoteProtocolError     the peer sent something the protocol forbids
    │       ├── ClientProtocolError     a client did (400, 408, 413, 414, 431, 501)
    │       └── UpstreamProtocolError   an app server did (502)
    ├── UpstreamError               an app server could not be used
    │   ├── UpstreamConnectError    connecting failed (502)
    │   ├── UpstreamTimeout         connect or read timed out (504)
    │   └── NoServerAvailable       every server of the backend is down (503)
    ├── CertificateError            a certificate or key is unusable
    └── StoreError                  the state store failed
"""

from __future__ import annotations

from dataclasses import dataclass


class TlsgateError(Exception):
    """Base of every error tlsgate raises."""


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a config file.

    ``key_path`` is dotted with list indices, e.g. ``listeners[1].bind[0]``.
    """

    file: str
    key_path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.key_path}" if self.key_path else self.file
        return f"{where}: {self.message}"


class ConfigError(TlsgateError):
    """A config file is invalid. ``problems`` lists everything found, not just the first."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        lines = "\n".join(str(p) for p in problems)
        super().__init__(f"{len(problems)} problem(s) in the configuration:\n{lines}")


class ProtocolError(TlsgateError):
    """A wire protocol rule was broken.

    Args:
        message: what was wrong, phrased for the log and for an error page.
        status_hint: the HTTP status to answer with, when one is answered.
    """

    status_hint: int = 400

    def __init__(self, message: str, *, status_hint: int | None = None) -> None:
        super().__init__(message)
        if status_hint is not None:
            self.status_hint = status_hint


class LocalProtocolError(ProtocolError):
    """We were about to break the protocol (a bug or a misuse of a parser)."""

    status_hint = 500


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol."""


class ClientProtocolError(RemoteProtocolError):
    """A client sent a malformed or disallowed request."""

    status_hint = 400


class UpstreamProtocolError(RemoteProtocolError):
    """An app server sent a malformed response."""

    status_hint = 502


class UpstreamError(TlsgateError):
    """An app server could not be used for a request."""

    status_hint: int = 502


class UpstreamConnectError(UpstreamError):
    """Connecting to an app server failed."""

    status_hint = 502


class LocalResourceError(UpstreamConnectError):
    """tlsgate itself could not open a connection (out of file descriptors or memory):
    no fault of the app server, which is neither ejected nor retried elsewhere."""

    status_hint = 503


class UpstreamTimeout(UpstreamError):
    """An app server did not connect or answer in time."""

    status_hint = 504


class NoServerAvailable(UpstreamError):
    """No server of the backend is up."""

    status_hint = 503


class CertificateError(TlsgateError):
    """A certificate or private key cannot be used."""


class StoreError(TlsgateError):
    """The state store failed or holds something unreadable."""
