"""Errors of the ACME client.

Every failure of :class:`tlsgate.acme.AcmeClient` is one of these, and every one
carries the URL it happened at. httpx's exceptions are mapped once, in the
client, with ``raise ... from exc``::

    TlsgateError
    └── AcmeError                   an ACME exchange failed (base; has .url)
        ├── AcmeProblem             the CA answered with an RFC 7807 problem document
        ├── AcmeTimeout             the CA did not answer, or a poll did not settle, in time
        ├── AcmeConnectionError     the CA could not be reached (DNS, refused, TLS trust)
        └── AcmeProtocolError       the CA sent something RFC 8555 does not allow

:class:`Identifier` lives here rather than in the client because problem
documents carry one (RFC 8555 §6.7.1) and this module must not import the client.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tlsgate.errors import TlsgateError

__all__ = [
    "ACME_ERROR_PREFIX",
    "AcmeConnectionError",
    "AcmeError",
    "AcmeProblem",
    "AcmeProtocolError",
    "AcmeTimeout",
    "Identifier",
]

# RFC 8555 §6.7: "This document defines the following standard error values for
# the "type" field, within the ACME URN namespace "urn:ietf:params:acme:error:"".
ACME_ERROR_PREFIX = "urn:ietf:params:acme:error:"


@dataclass(frozen=True)
class Identifier:
    """An ACME identifier (RFC 8555 §9.7.7): ``type`` is ``"dns"`` or ``"ip"`` (RFC 8738)."""

    type: str
    value: str

    @classmethod
    def for_name(cls, name: str) -> Identifier:
        """``ip`` for an IP literal, else ``dns`` (lower-cased, trailing dot dropped).

        RFC 8738 §3: "The value field of the identifier MUST contain the
        textual form of the address as defined in Section 2.1 of [RFC1123] for
        IPv4 and in Section 4 of [RFC5952] for IPv6" -- hence the normalized
        ``str(ip_address(...))``.
        """
        try:
            return cls("ip", str(ipaddress.ip_address(name)))
        except ValueError:
            return cls("dns", name.lower().rstrip("."))

    def to_json(self) -> dict[str, str]:
        return {"type": self.type, "value": self.value}

    @classmethod
    def from_json(cls, obj: object) -> Identifier | None:
        """The identifier in ``obj``, or None when it is not a well-formed one."""
        if not isinstance(obj, Mapping):
            return None
        typ, value = obj.get("type"), obj.get("value")
        if isinstance(typ, str) and isinstance(value, str):
            return cls(typ, value)
        return None


class AcmeError(TlsgateError):
    """An ACME exchange failed.

    Args:
        message: what went wrong, for the log and ``tlsgate certs list``.
        url: the ACME URL the failing request went to, when there was one.
    """

    def __init__(self, message: str, *, url: str | None = None) -> None:
        self.message = message
        self.url = url
        super().__init__(f"{message} ({url})" if url else message)


class AcmeTimeout(AcmeError):
    """The CA did not answer in time, or a polled object did not settle before the deadline."""


class AcmeConnectionError(AcmeError):
    """The CA could not be reached: name resolution, connection or TLS verification failed."""


class AcmeProtocolError(AcmeError):
    """The CA answered something that is not valid ACME (bad JSON, missing Location, ...)."""


class AcmeProblem(AcmeError):
    """The CA reported an error with an RFC 7807 problem document (RFC 8555 §6.7).

    Attributes:
        type: the problem type URI, e.g. ``urn:ietf:params:acme:error:rateLimited``;
            ``about:blank`` when the CA answered an error status without a
            problem document (RFC 7807 §4.2).
        detail: the CA's human-readable explanation ("" when it gave none).
        status: the HTTP status of the response (or the document's ``status``),
            None for problems found inside an object (a challenge's ``error``).
        subproblems: per-identifier problems (RFC 8555 §6.7.1), each an AcmeProblem.
        identifier: the identifier the problem is about, when known.
        challenge: the challenge type that failed (``http-01``...), for
            problems taken from a challenge's ``error``.
        retry_after: seconds from the response's Retry-After header (rate limits),
            uncapped; None when absent.
        document: the raw problem document, for logs.
    """

    def __init__(
        self,
        type: str,  # RFC 7807's member name, shadowing the builtin on purpose
        detail: str,
        *,
        status: int | None = None,
        subproblems: tuple[AcmeProblem, ...] = (),
        identifier: Identifier | None = None,
        challenge: str | None = None,
        url: str | None = None,
        retry_after: float | None = None,
        document: Mapping[str, Any] | None = None,
    ) -> None:
        self.type = type
        self.detail = detail
        self.status = status
        self.subproblems = subproblems
        self.identifier = identifier
        self.challenge = challenge
        self.retry_after = retry_after
        self.document: Mapping[str, Any] = document if document is not None else {}
        super().__init__(self._describe(), url=url)

    @property
    def code(self) -> str:
        """The short ACME error name (``rateLimited``), or the full type for non-ACME types."""
        if self.type.startswith(ACME_ERROR_PREFIX):
            return self.type[len(ACME_ERROR_PREFIX) :]
        return self.type

    def is_type(self, code: str) -> bool:
        """True when this problem is the ACME error ``code`` (e.g. ``"badNonce"``)."""
        return self.type == ACME_ERROR_PREFIX + code

    def _describe(self) -> str:
        head = self.code
        if self.identifier is not None:
            head = f"{head} for {self.identifier.value}"
        if self.challenge is not None:
            head = f"{head} ({self.challenge})"
        text = f"{head}: {self.detail}" if self.detail else head
        if self.status is not None:
            text = f"{text} [HTTP {self.status}]"
        for sub in self.subproblems:
            text = f"{text}; {sub.message}"
        return text

    def in_context(
        self,
        *,
        identifier: Identifier | None = None,
        challenge: str | None = None,
        url: str | None = None,
    ) -> AcmeProblem:
        """A copy with the identifier, challenge type and URL filled in where missing.

        A challenge's ``error`` names none of them; the authorization around it does.
        """
        return AcmeProblem(
            self.type,
            self.detail,
            status=self.status,
            subproblems=self.subproblems,
            identifier=self.identifier or identifier,
            challenge=self.challenge or challenge,
            url=self.url or url,
            retry_after=self.retry_after,
            document=self.document,
        )

    @classmethod
    def from_document(
        cls,
        document: object,
        *,
        status: int | None = None,
        url: str | None = None,
        retry_after: float | None = None,
    ) -> AcmeProblem:
        """Build the problem from a parsed problem document (tolerant of missing members).

        Args:
            document: the JSON object; anything else yields an ``about:blank`` problem.
            status: the HTTP status of the response that carried it, which wins
                over the document's own ``status`` member.
            url: the request URL.
            retry_after: seconds from the response's Retry-After header.
        """
        if not isinstance(document, Mapping):
            return cls(
                "about:blank",
                "the CA sent an error without a problem document",
                status=status,
                url=url,
                retry_after=retry_after,
            )
        # RFC 7807 §4.2: "When this member is not present, its value is assumed
        # to be "about:blank"."
        typ = document.get("type")
        detail = document.get("detail")
        doc_status = document.get("status")
        subs: list[AcmeProblem] = []
        raw_subs = document.get("subproblems")
        if isinstance(raw_subs, list):
            subs = [cls.from_document(s, url=url) for s in raw_subs if isinstance(s, Mapping)]
        if status is None and isinstance(doc_status, int):
            status = doc_status
        return cls(
            typ if isinstance(typ, str) and typ else "about:blank",
            detail if isinstance(detail, str) else "",
            status=status,
            subproblems=tuple(subs),
            identifier=Identifier.from_json(document.get("identifier")),
            url=url,
            retry_after=retry_after,
            document=document,
        )
