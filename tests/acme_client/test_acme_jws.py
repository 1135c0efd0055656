"""JWS, JWK and thumbprints (RFC 7515, 7517/7518, 7638) and EAB (RFC 8555 §7.3.4): no network."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from tlsgate.acme import jws

# RFC 7515 Appendix A.3: the ES256 example key and JWS.
RFC7515_A3_JWK = {
    "kty": "EC",
    "crv": "P-256",
    "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
    "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
}
RFC7515_A3_D = "jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI"
RFC7515_A3_JWS = {
    "protected": "eyJhbGciOiJFUzI1NiJ9",
    "payload": (
        "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290"
        "Ijp0cnVlfQ"
    ),
    "signature": (
        "DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q"
    ),
}


def rfc_key() -> ec.EllipticCurvePrivateKey:
    d = int.from_bytes(jws.b64decode(RFC7515_A3_D), "big")
    return ec.derive_private_key(d, ec.SECP256R1())


def decode_part(part: str) -> dict[str, object]:
    value = json.loads(jws.b64decode(part))
    assert isinstance(value, dict)
    return value


def test_jwk_of_rfc7515_key_matches_the_rfc() -> None:
    assert jws.jwk(rfc_key()) == RFC7515_A3_JWK
    assert jws.jwk(rfc_key().public_key()) == RFC7515_A3_JWK


def test_verify_accepts_the_rfc7515_a3_signature() -> None:
    public = jws.public_key_from_jwk(RFC7515_A3_JWK)
    assert jws.verify(RFC7515_A3_JWS, public)
    tampered = dict(RFC7515_A3_JWS, payload=RFC7515_A3_JWS["payload"][:-2] + "fR")
    assert not jws.verify(tampered, public)


def test_thumbprint_hashes_required_members_in_lexicographic_order() -> None:
    # RFC 7638 §3.2: for EC keys the required members are crv, kty, x, y, in
    # that order, with no whitespace.
    expected_input = (
        b'{"crv":"P-256","kty":"EC",'
        b'"x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",'
        b'"y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}'
    )
    assert jws.jwk_thumbprint(rfc_key()) == hashlib.sha256(expected_input).digest()


def test_sign_with_jwk_for_new_account() -> None:
    key = rfc_key()
    body = jws.sign(key, url="https://ca.test/new-acct", nonce="n0nce", payload={"a": 1})
    assert set(body) == {"protected", "payload", "signature"}
    header = decode_part(body["protected"])
    assert header == {
        "alg": "ES256",
        "nonce": "n0nce",
        "url": "https://ca.test/new-acct",
        "jwk": RFC7515_A3_JWK,
    }
    assert decode_part(body["payload"]) == {"a": 1}
    assert len(jws.b64decode(body["signature"])) == 64  # R || S, not DER
    assert jws.verify(body, key.public_key())


def test_sign_with_kid_and_post_as_get() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    body = jws.sign(
        key, url="https://ca.test/order/1", nonce="x", payload=None, kid="https://ca.test/acct/1"
    )
    header = decode_part(body["protected"])
    assert header["kid"] == "https://ca.test/acct/1"
    assert "jwk" not in header  # RFC 8555 §6.2: jwk and kid are mutually exclusive
    assert body["payload"] == ""  # RFC 8555 §6.3: POST-as-GET
    assert jws.verify(body, key.public_key())
    assert not jws.verify(body, ec.generate_private_key(ec.SECP256R1()).public_key())


def test_p384_signs_es384_and_other_curves_are_refused() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    body = jws.sign(key, url="u", nonce="n", payload={})
    assert decode_part(body["protected"])["alg"] == "ES384"
    assert len(jws.b64decode(body["signature"])) == 96
    assert jws.verify(body, key.public_key())
    with pytest.raises(ValueError, match="P-256 or P-384"):
        jws.jwk(ec.generate_private_key(ec.SECP521R1()))


def test_eab_is_an_hs256_jws_over_the_account_jwk() -> None:
    key = rfc_key()
    mac_key = b"\x01" * 32
    eab = jws.eab_jws(key, kid="kid-1", hmac_key=mac_key, url="https://ca.test/new-acct")
    header = decode_part(eab["protected"])
    # RFC 8555 §7.3.4: alg, kid, url and "MUST NOT include a "nonce" field".
    assert header == {"alg": "HS256", "kid": "kid-1", "url": "https://ca.test/new-acct"}
    assert decode_part(eab["payload"]) == RFC7515_A3_JWK
    expected = hmac.new(mac_key, f"{eab['protected']}.{eab['payload']}".encode(), hashlib.sha256)
    assert jws.b64decode(eab["signature"]) == expected.digest()


@given(st.binary(max_size=200))
def test_b64_round_trip_without_padding(data: bytes) -> None:
    text = jws.b64encode(data)
    assert "=" not in text
    assert set(text) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert jws.b64decode(text) == data


@pytest.mark.parametrize("text", ["ab=", "a+b", "a/b", "a"])
def test_b64decode_rejects_non_base64url(text: str) -> None:
    with pytest.raises(ValueError, match="base64url"):
        jws.b64decode(text)
