"""ACME Renewal Information (RFC 9773) and the fallback renewal rule, without I/O.

How this works: a CA that supports ARI lists a ``renewalInfo`` URL in its
directory. The client names a certificate by its *certID* --
``base64url(AKI keyIdentifier) "." base64url(serial DER content octets)``
(§4.1) -- GETs ``<renewalInfo>/<certID>`` and receives a ``suggestedWindow``
(start, end) plus a Retry-After telling it when to ask again. The client picks
a uniformly random moment inside the window (§4.2), renewing at once if that
moment has passed, and puts the same certID in the new order's ``replaces``
field (§5) so the CA can link the renewal to its predecessor.

Without ARI, tlsgate renews when a third of the lifetime remains, minus a
small random jitter (:func:`default_renewal_time`). Both choices take the
clock and the random generator as arguments, so they are deterministic under
test; the scheduling loop that calls them lives in ``tlsgate.certs``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509

from tlsgate.acme.errors import AcmeProtocolError
from tlsgate.acme.jws import b64encode

__all__ = [
    "ARI_DEFAULT_RETRY_AFTER",
    "ARI_MAX_RETRY_AFTER",
    "ARI_MIN_RETRY_AFTER",
    "DEFAULT_JITTER_CAP",
    "RenewalInfo",
    "ari_cert_id",
    "choose_renewal_time",
    "default_renewal_time",
    "parse_rfc3339",
]

# RFC 9773 §4.3.2: "Clients SHOULD set reasonable limits on their checking
# interval. For example, values under one minute could be treated as if they
# were one minute, and values over one day could be treated as if they were one day."
ARI_MIN_RETRY_AFTER = 60.0
ARI_MAX_RETRY_AFTER = 86400.0
# RFC 9773 §4.3.3: on a long-term error (which includes "Retry-After is invalid
# or not present") "clients SHOULD perform the next RenewalInfo fetch as soon as
# possible after six hours have passed".
ARI_DEFAULT_RETRY_AFTER = 6 * 3600.0

# The fallback rule's jitter: uniform in [0, min(1% of the lifetime, 1 hour)].
# Certificates issued together (a fleet's first start) then renew spread over up
# to an hour instead of in one burst, while a short-lived certificate (days) is
# moved by at most 1% of its life -- never enough to matter for its expiry.
DEFAULT_JITTER_CAP = timedelta(hours=1)
_JITTER_FRACTION = 0.01


@dataclass(frozen=True)
class RenewalInfo:
    """A CA's renewal suggestion for one certificate (RFC 9773 §4.2).

    Attributes:
        start, end: the suggested window, timezone-aware, ``start < end``.
        explanation_url: a page explaining the window (to show to operators:
            "Conforming clients SHOULD provide this URL to their operator").
        retry_after: seconds until the next renewalInfo fetch, clamped to
            [60 s, 1 day]; None when the CA sent no usable Retry-After, in which
            case the caller should ask again after :data:`ARI_DEFAULT_RETRY_AFTER`.
    """

    start: datetime
    end: datetime
    explanation_url: str | None
    retry_after: float | None

    @classmethod
    def from_json(
        cls, document: object, *, retry_after: float | None = None, url: str | None = None
    ) -> RenewalInfo:
        """Parse a renewalInfo response body.

        Args:
            document: the decoded JSON body.
            retry_after: seconds from the response's Retry-After header, unclamped.
            url: the request URL, for error messages.

        Raises:
            AcmeProtocolError: the document is malformed -- RFC 9773 §4.2 names
                "an end timestamp which is equal to or precedes the start
                timestamp" -- and the client "SHOULD make its own determination
                of when to renew the certificate" (:func:`default_renewal_time`).
        """
        if not isinstance(document, Mapping):
            raise AcmeProtocolError("renewalInfo is not a JSON object", url=url)
        window = document.get("suggestedWindow")
        if not isinstance(window, Mapping):
            raise AcmeProtocolError("renewalInfo has no suggestedWindow object", url=url)
        try:
            start = parse_rfc3339(window.get("start"))
            end = parse_rfc3339(window.get("end"))
        except ValueError as exc:
            raise AcmeProtocolError(f"renewalInfo suggestedWindow: {exc}", url=url) from exc
        if end <= start:
            raise AcmeProtocolError(
                f"renewalInfo suggestedWindow ends ({end.isoformat()}) "
                f"no later than it starts ({start.isoformat()})",
                url=url,
            )
        explanation = document.get("explanationURL")
        if retry_after is not None:
            retry_after = min(max(retry_after, ARI_MIN_RETRY_AFTER), ARI_MAX_RETRY_AFTER)
        return cls(
            start=start,
            end=end,
            explanation_url=explanation if isinstance(explanation, str) else None,
            retry_after=retry_after,
        )


def parse_rfc3339(value: object) -> datetime:
    """A timezone-aware datetime from an RFC 3339 timestamp.

    Raises:
        ValueError: ``value`` is not a string or has no UTC offset.
    """
    if not isinstance(value, str):
        raise ValueError(f"timestamp must be a string, not {value!r}")
    moment = datetime.fromisoformat(value)  # 3.11 reads "Z" and nanoseconds
    if moment.tzinfo is None:
        raise ValueError(f"timestamp has no time zone: {value!r}")
    return moment


def ari_cert_id(cert_pem: bytes) -> str:
    """The RFC 9773 certID of the first certificate in ``cert_pem``.

    §4.1: "The unique identifier is constructed by concatenating the
    base64url-encoding [RFC4648] of the keyIdentifier field of the
    certificate's Authority Key Identifier (AKI) extension [RFC5280], the
    period character ".", and the base64url-encoding of the DER-encoded Serial
    Number field (without the tag and length bytes). All trailing "=" characters
    MUST be stripped from both parts."

    Raises:
        ValueError: the PEM holds no certificate, or it has no AKI keyIdentifier.
    """
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise ValueError(f"not a PEM certificate: {exc}") from exc
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        raise ValueError("certificate has no Authority Key Identifier: no ARI certID") from None
    if aki.key_identifier is None:
        raise ValueError("certificate's Authority Key Identifier has no keyIdentifier")
    serial = cert.serial_number
    # The content octets of a DER INTEGER: minimal two's complement, so a
    # serial whose top bit is set gets a leading 0x00 (0x87654321 -> 00 87 65 43 21).
    serial_der = serial.to_bytes((serial.bit_length() + 8) // 8, "big", signed=True)
    return f"{b64encode(aki.key_identifier)}.{b64encode(serial_der)}"


def choose_renewal_time(info: RenewalInfo, now: datetime, rng: random.Random) -> datetime:
    """When to renew, by RFC 9773 §4.2's RECOMMENDED algorithm.

    "1. Select a uniform random time within the suggested window. 2. If the
    selected time is in the past, attempt renewal immediately." -- so the result
    is ``now`` when the chosen moment has passed. Steps 3-5 (sleep until then,
    or re-check ARI at the next wake-up) are the scheduler's; it should also
    re-fetch the window after ``info.retry_after``, since the CA may move it.

    Args:
        info: the parsed window.
        now: the current time, timezone-aware.
        rng: the random source (a seeded one in tests).
    """
    span = (info.end - info.start).total_seconds()
    chosen = info.start + timedelta(seconds=rng.uniform(0.0, span)) if span > 0 else info.start
    return max(chosen, now)


def default_renewal_time(not_before: datetime, not_after: datetime, rng: random.Random) -> datetime:
    """When to renew without ARI: a third of the lifetime before ``not_after``, minus jitter.

    The jitter is uniform in [0, min(1% of the lifetime, :data:`DEFAULT_JITTER_CAP`)]
    (one hour): a 90-day certificate renews 30 days before expiry, up to an
    hour earlier; a 6-day one two days before, also up to an hour earlier; a
    1-day one 8 hours before, up to 14.4 minutes earlier. The result is never
    before ``not_before``.

    Raises:
        ValueError: ``not_after`` is not after ``not_before``.
    """
    lifetime = not_after - not_before
    if lifetime <= timedelta(0):
        raise ValueError(f"certificate lifetime is not positive: {not_before} .. {not_after}")
    cap = min(lifetime * _JITTER_FRACTION, DEFAULT_JITTER_CAP)
    jitter = timedelta(seconds=rng.uniform(0.0, cap.total_seconds()))
    return max(not_after - lifetime / 3 - jitter, not_before)
