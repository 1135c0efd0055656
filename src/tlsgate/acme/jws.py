"""JSON Web Signatures as ACME uses them (RFC 8555 §6.2), on ``cryptography``.

How this works: every ACME POST body is a JWS in the flattened JSON
serialization (RFC 7515 §7.2.2) with exactly three members, ``protected``,
``payload`` and ``signature``. The protected header names the algorithm, a
fresh anti-replay ``nonce``, the request ``url`` and either the account's
public key (``jwk``, for newAccount and revokeCert by certificate key) or the
account URL (``kid``, for everything else). The signing input is
``base64url(protected) "." base64url(payload)``; for ECDSA the signature is
the fixed-width ``R || S`` (RFC 7518 §3.4), not the DER that ``cryptography``
produces. An empty payload (POST-as-GET, RFC 8555 §6.3) is the empty string.

Account keys are ECDSA P-256 (ES256) or P-384 (ES384). The JWK thumbprint
(RFC 7638) is SHA-256 over the key's required members, in lexicographic order,
serialized without whitespace. External account binding (RFC 8555 §7.3.4) is
an inner JWS over the account JWK, MACed with HS256 under the CA-issued key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

__all__ = [
    "b64decode",
    "b64encode",
    "canonical_json",
    "eab_jws",
    "jwk",
    "jwk_thumbprint",
    "jws_alg",
    "public_key_from_jwk",
    "sign",
    "verify",
]

# curve name -> (JWK "crv", JWS "alg", hash, coordinate size in bytes)
_CURVES: dict[str, tuple[str, str, hashes.HashAlgorithm, int]] = {
    "secp256r1": ("P-256", "ES256", hashes.SHA256(), 32),
    "secp384r1": ("P-384", "ES384", hashes.SHA384(), 48),
}
_CRV_TO_CURVE: dict[str, ec.EllipticCurve] = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1()}


def b64encode(data: bytes) -> str:
    """base64url without padding (RFC 7515 §2: "with all trailing '=' characters omitted")."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64decode(text: str) -> bytes:
    """Inverse of :func:`b64encode`. Raises ValueError on anything that is not base64url."""
    if "=" in text or "+" in text or "/" in text:
        raise ValueError(f"not unpadded base64url: {text!r}")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not unpadded base64url: {text!r}") from exc


def canonical_json(obj: Mapping[str, Any]) -> bytes:
    """Compact JSON with sorted keys: what RFC 7638 §3 hashes, and what we send."""
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode("utf-8")


def _params(key: ec.EllipticCurvePublicKey) -> tuple[str, str, hashes.HashAlgorithm, int]:
    try:
        return _CURVES[key.curve.name]
    except KeyError:
        raise ValueError(
            f"ACME account keys must be ECDSA P-256 or P-384, not {key.curve.name}"
        ) from None


def jws_alg(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> str:
    """The JWS ``alg`` for ``key``: ``ES256`` for P-256, ``ES384`` for P-384."""
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return _params(public)[1]


def jwk(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The public JWK of ``key`` (RFC 7518 §6.2.1): kty, crv, x, y, nothing else."""
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    crv, _, _, size = _params(public)
    numbers = public.public_numbers()
    return {
        "kty": "EC",
        "crv": crv,
        # RFC 7518 §6.2.1.2: "The length of this octet string MUST be the full
        # size of a coordinate for the curve specified in the "crv" parameter."
        "x": b64encode(numbers.x.to_bytes(size, "big")),
        "y": b64encode(numbers.y.to_bytes(size, "big")),
    }


def jwk_thumbprint(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> bytes:
    """RFC 7638 thumbprint: SHA-256 of the required members (crv, kty, x, y) in order."""
    return hashlib.sha256(canonical_json(jwk(key))).digest()


def public_key_from_jwk(obj: Mapping[str, Any]) -> ec.EllipticCurvePublicKey:
    """Rebuild an EC public key from its JWK (used by tests playing the server)."""
    if obj.get("kty") != "EC" or obj.get("crv") not in _CRV_TO_CURVE:
        raise ValueError(f"unsupported JWK: {dict(obj)!r}")
    curve = _CRV_TO_CURVE[obj["crv"]]
    x = int.from_bytes(b64decode(obj["x"]), "big")
    y = int.from_bytes(b64decode(obj["y"]), "big")
    return ec.EllipticCurvePublicNumbers(x, y, curve).public_key()


def sign(
    key: ec.EllipticCurvePrivateKey,
    *,
    url: str,
    nonce: str,
    payload: Mapping[str, Any] | None,
    kid: str | None = None,
) -> dict[str, str]:
    """A flattened JWS for an ACME request.

    Args:
        key: the account key.
        url: the request URL (RFC 8555 §6.4: "The "url" header parameter ...
            MUST be set to the URL to which the client is directing the request").
        nonce: a Replay-Nonce the server gave us.
        payload: the JSON payload, or None for POST-as-GET (empty payload).
        kid: the account URL; when None the header carries the ``jwk`` instead
            (RFC 8555 §6.2: "The "jwk" and "kid" fields are mutually exclusive").

    Returns:
        ``{"protected": ..., "payload": ..., "signature": ...}``, ready for ``json.dumps``.
    """
    header: dict[str, Any] = {"alg": jws_alg(key), "nonce": nonce, "url": url}
    if kid is None:
        header["jwk"] = jwk(key)
    else:
        header["kid"] = kid
    protected = b64encode(canonical_json(header))
    # RFC 8555 §6.3: for POST-as-GET "the "payload" field of the JWS object
    # MUST be present and set to the empty string ("")".
    body = "" if payload is None else b64encode(canonical_json(payload))
    signing_input = f"{protected}.{body}".encode("ascii")
    _, _, hash_alg, size = _params(key.public_key())
    r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hash_alg)))
    signature = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    return {"protected": protected, "payload": body, "signature": b64encode(signature)}


def verify(jws_obj: Mapping[str, Any], key: ec.EllipticCurvePublicKey) -> bool:
    """True when ``jws_obj``'s ECDSA signature is valid under ``key`` (tests play server)."""
    _, _, hash_alg, size = _params(key)
    raw = b64decode(jws_obj["signature"])
    if len(raw) != 2 * size:
        return False
    der = encode_dss_signature(int.from_bytes(raw[:size], "big"), int.from_bytes(raw[size:], "big"))
    signing_input = f"{jws_obj['protected']}.{jws_obj['payload']}".encode("ascii")
    try:
        key.verify(der, signing_input, ec.ECDSA(hash_alg))
    except InvalidSignature:
        return False
    return True


def eab_jws(
    account_key: ec.EllipticCurvePrivateKey, *, kid: str, hmac_key: bytes, url: str
) -> dict[str, str]:
    """The ``externalAccountBinding`` member of a newAccount request (RFC 8555 §7.3.4).

    "The "externalAccountBinding" field MUST contain a JWS object... The JWS
    Protected Header MUST include the "alg" ... "kid" ... "url" ... fields and
    MUST NOT include a "nonce" field. ... The "payload" field of the JWS MUST
    contain the public key of the account key". The MAC algorithm is HS256.

    Args:
        account_key: the ACME account key whose public JWK is bound.
        kid: the key identifier the CA gave out with the MAC key.
        hmac_key: the MAC key, already decoded from the CA's base64url form.
        url: the newAccount URL.
    """
    protected = b64encode(canonical_json({"alg": "HS256", "kid": kid, "url": url}))
    payload = b64encode(canonical_json(jwk(account_key)))
    mac = hmac.new(hmac_key, f"{protected}.{payload}".encode("ascii"), hashlib.sha256).digest()
    return {"protected": protected, "payload": payload, "signature": b64encode(mac)}
