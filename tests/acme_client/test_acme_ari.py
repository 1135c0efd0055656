"""RFC 9773 (ARI) certIDs and renewal windows, and the no-ARI lifetime rule: no network."""

from __future__ import annotations

import random
import statistics
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from tlsgate.acme import (
    AcmeProtocolError,
    RenewalInfo,
    ari_cert_id,
    choose_renewal_time,
    default_renewal_time,
)

# RFC 9773 Appendix A: the example end-entity certificate of §4.1, whose AKI
# keyIdentifier is 69:88:5B:...:C8:D4 and serial 0x87654321.
RFC9773_CERT = b"""-----BEGIN CERTIFICATE-----
MIIBQzCB66ADAgECAgUAh2VDITAKBggqhkjOPQQDAjAVMRMwEQYDVQQDEwpFeGFt
cGxlIENBMCIYDzAwMDEwMTAxMDAwMDAwWhgPMDAwMTAxMDEwMDAwMDBaMBYxFDAS
BgNVBAMTC2V4YW1wbGUuY29tMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEeBZu
7cbpAYNXZLbbh8rNIzuOoqOOtmxA1v7cRm//AwyMwWxyHz4zfwmBhcSrf47NUAFf
qzLQ2PPQxdTXREYEnKMjMCEwHwYDVR0jBBgwFoAUaYhba4dGQEHhs3uEe6CuLN4B
yNQwCgYIKoZIzj0EAwIDRwAwRAIge09+S5TZAlw5tgtiVvuERV6cT4mfutXIlwTb
+FYN/8oCIClDsqBklhB9KAelFiYt9+6FDj3z4KGVelYM5MdsO3pK
-----END CERTIFICATE-----
"""

T0 = datetime(2021, 1, 1, tzinfo=UTC)


def make_cert(serial: int, aki: bytes | None = b"\x01\x02\x03") -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(T0)
        .not_valid_after(T0 + timedelta(days=1))
    )
    if aki is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier(aki, None, None), critical=False
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


# --------------------------------------------------------------------------- certID


def test_cert_id_of_the_rfc9773_example() -> None:
    # §4.1: "the unique identifier is therefore aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"
    assert ari_cert_id(RFC9773_CERT) == "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"


@pytest.mark.parametrize(
    ("serial", "encoded"),
    [
        (0x7F, "fw"),  # 7f: top bit clear, no padding byte
        (0x80, "AIA"),  # 00 80: leading zero keeps it positive
        (0x0102, "AQI"),
        (0x87654321, "AIdlQyE"),  # the RFC's serial
    ],
)
def test_cert_id_serial_is_der_integer_content(serial: int, encoded: str) -> None:
    assert ari_cert_id(make_cert(serial)) == f"AQID.{encoded}"


def test_cert_id_needs_an_aki() -> None:
    with pytest.raises(ValueError, match="Authority Key Identifier"):
        ari_cert_id(make_cert(5, aki=None))
    with pytest.raises(ValueError, match="not a PEM certificate"):
        ari_cert_id(b"garbage")


# --------------------------------------------------------------------------- renewalInfo


def test_renewal_info_from_the_rfc_example() -> None:
    doc = {
        "suggestedWindow": {"start": "2021-01-03T00:00:00Z", "end": "2021-01-07T00:00:00Z"},
        "explanationURL": "https://example.com/docs/ari",
    }
    info = RenewalInfo.from_json(doc, retry_after=21600)
    assert info.start == datetime(2021, 1, 3, tzinfo=UTC)
    assert info.end == datetime(2021, 1, 7, tzinfo=UTC)
    assert info.explanation_url == "https://example.com/docs/ari"
    assert info.retry_after == 21600


@pytest.mark.parametrize(
    ("sent", "kept"), [(None, None), (0, 60), (5, 60), (3600, 3600), (7 * 86400, 86400)]
)
def test_retry_after_is_clamped_between_a_minute_and_a_day(
    sent: float | None, kept: float | None
) -> None:
    doc = {"suggestedWindow": {"start": "2021-01-03T00:00:00Z", "end": "2021-01-04T00:00:00Z"}}
    assert RenewalInfo.from_json(doc, retry_after=sent).retry_after == kept


@pytest.mark.parametrize(
    "doc",
    [
        [],
        {},
        {"suggestedWindow": "soon"},
        {"suggestedWindow": {"start": "2021-01-03T00:00:00Z"}},
        {"suggestedWindow": {"start": "2021-01-03T00:00:00", "end": "2021-01-04T00:00:00"}},
        {"suggestedWindow": {"start": "yesterday", "end": "2021-01-04T00:00:00Z"}},
        # §4.2: "an end timestamp which is equal to or precedes the start timestamp"
        {"suggestedWindow": {"start": "2021-01-03T00:00:00Z", "end": "2021-01-03T00:00:00Z"}},
        {"suggestedWindow": {"start": "2021-01-04T00:00:00Z", "end": "2021-01-03T00:00:00Z"}},
    ],
)
def test_malformed_renewal_info_is_a_protocol_error(doc: object) -> None:
    with pytest.raises(AcmeProtocolError, match="renewalInfo"):
        RenewalInfo.from_json(doc, url="https://ca.test/ari/x")


# --------------------------------------------------------------------------- choosing


def window(start: datetime, hours: float) -> RenewalInfo:
    return RenewalInfo(start, start + timedelta(hours=hours), None, None)


def test_choice_is_uniform_within_a_future_window() -> None:
    info = window(T0 + timedelta(days=2), 96)
    rng = random.Random(1)
    picks = [(choose_renewal_time(info, T0, rng) - info.start).total_seconds() for _ in range(4000)]
    span = 96 * 3600
    assert all(0 <= p <= span for p in picks)
    assert statistics.mean(picks) == pytest.approx(span / 2, rel=0.05)
    # each quarter of the window gets about a quarter of the picks
    quarters = [sum(1 for p in picks if q * span / 4 <= p < (q + 1) * span / 4) for q in range(4)]
    assert all(800 < n < 1200 for n in quarters), quarters


def test_window_in_the_past_means_renew_now() -> None:
    # §4.2: "If the selected time is in the past, attempt renewal immediately."
    info = window(T0, 24)
    now = T0 + timedelta(days=3)
    assert choose_renewal_time(info, now, random.Random(0)) == now


@given(
    start_offset=st.integers(-10 * 86400, 10 * 86400),
    span=st.integers(1, 30 * 86400),
    seed=st.integers(0, 2**32),
)
def test_choice_is_never_before_now_nor_outside_the_window(
    start_offset: int, span: int, seed: int
) -> None:
    info = RenewalInfo(
        T0 + timedelta(seconds=start_offset),
        T0 + timedelta(seconds=start_offset + span),
        None,
        None,
    )
    chosen = choose_renewal_time(info, T0, random.Random(seed))
    assert chosen >= T0
    if info.end <= T0:
        assert chosen == T0
    else:
        assert max(info.start, T0) <= chosen <= info.end


# --------------------------------------------------------------------------- no ARI


@pytest.mark.parametrize(
    ("lifetime", "before_expiry", "max_jitter"),
    [
        (timedelta(days=90), timedelta(days=30), timedelta(hours=1)),
        (timedelta(days=6), timedelta(days=2), timedelta(hours=1)),
        (timedelta(days=1), timedelta(hours=8), timedelta(minutes=14.4)),
    ],
)
def test_default_rule_is_a_third_of_the_lifetime_minus_jitter(
    lifetime: timedelta, before_expiry: timedelta, max_jitter: timedelta
) -> None:
    not_after = T0 + lifetime
    target = not_after - before_expiry
    rng = random.Random(7)
    picks = [default_renewal_time(T0, not_after, rng) for _ in range(500)]
    assert all(target - max_jitter <= p <= target for p in picks)
    # the jitter really spreads renewals over (most of) its range
    assert max(picks) - min(picks) > max_jitter * 0.9


@given(lifetime_s=st.integers(1, 400 * 86400), seed=st.integers(0, 2**32))
def test_default_rule_bounds(lifetime_s: int, seed: int) -> None:
    lifetime = timedelta(seconds=lifetime_s)
    chosen = default_renewal_time(T0, T0 + lifetime, random.Random(seed))
    target = T0 + lifetime * 2 / 3
    assert T0 <= chosen <= target
    assert target - chosen <= min(lifetime / 100, timedelta(hours=1))


def test_default_rule_needs_a_positive_lifetime() -> None:
    with pytest.raises(ValueError, match="lifetime"):
        default_renewal_time(T0, T0, random.Random(0))
