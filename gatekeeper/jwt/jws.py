"""Strict compact-JWS parsing and the per-algorithm signature checks.

A token is read one way only: three base64url parts in the strict alphabet with no padding and no stray
bits, a header and a payload that are JSON objects with no duplicate member names (see ``jsontext``), and
a header whose ``crit`` names nothing (we implement no JWS extension). Anything else is refused before a
key is even looked at, so no library below ever sees an ambiguous token.

The signature checks are built once per key at load time (:func:`build_verifier`) and return a plain
``verify(signing_input, signature) -> bool`` closure; the hot path only calls closures.

    >>> token = parse_compact("eyJhbGciOiJIUzI1NiJ9.e30.c2ln")
    >>> token.alg, token.payload
    ('HS256', {})
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from jose.backends.cryptography_backend import CryptographyECKey, CryptographyRSAKey

from gatekeeper import jsontext
from gatekeeper.jwt.refusals import unauthorized

MAX_TOKEN_BYTES = 16 * 1024
MAX_JSON_DEPTH = jsontext.MAX_DEPTH  # levels of arrays/objects in the header or the payload
MAX_KID_CHARS = 256  # real kids are ids, thumbprints or URLs; a longer one only costs hashing and log room

HMAC_ALGS = ("HS256", "HS384", "HS512")
RSA_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_ALG_BY_CURVE = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
EC_ALGS = tuple(EC_ALG_BY_CURVE.values())
EDDSA_ALGS = ("EdDSA",)
ASYMMETRIC_ALGS = RSA_ALGS + EC_ALGS + EDDSA_ALGS

_B64URL = re.compile(r"[A-Za-z0-9_-]*\Z")
_HASHES = {"256": hashlib.sha256, "384": hashlib.sha384, "512": hashlib.sha512}
_CRYPTO_HASHES: Dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
# ECDSA curve orders: r and s must lie in (0, n).
_EC_ORDER = {
    "ES256": 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    "ES384": int("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F437"
                 "2DDF581A0DB248B0A77AECEC196ACCC52973", 16),
    "ES512": int("01FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF"
                 "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFA51868783BF2F966B7FCC0148F709A5D0"
                 "3BB5C9B8899C47AEBB6FB71E91386409", 16),
}
_EC_COORD_BYTES = {"ES256": 32, "ES384": 48, "ES512": 66}

Verifier = Callable[[bytes, bytes], bool]


@dataclass(frozen=True)
class ParsedToken:
    """A compact JWS that passed the structural checks; its signature is not yet verified."""

    header: Dict[str, Any]
    payload: Dict[str, Any]
    signing_input: bytes
    signature: bytes

    @property
    def alg(self) -> str:
        alg: str = self.header["alg"]  # a string: checked by parse_compact
        return alg

    @property
    def kid(self) -> Optional[str]:
        return self.header.get("kid")


def b64url_decode(part: str) -> bytes:
    """Decode one base64url part strictly: RFC 7515 alphabet, no padding, no non-zero spare bits."""
    if not _B64URL.match(part) or len(part) % 4 == 1:
        raise ValueError("not base64url")
    try:
        raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except binascii.Error as exc:
        raise ValueError("not base64url") from exc
    # "QR" and "QQ" both decode to b"A"; only the canonical form is accepted.
    if base64.urlsafe_b64encode(raw).rstrip(b"=") != part.encode("ascii"):
        raise ValueError("non-canonical base64url")
    return raw


def b64url_encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _json_object(part: str) -> Dict[str, Any]:
    try:
        value = jsontext.loads(b64url_decode(part), max_depth=MAX_JSON_DEPTH)
    except jsontext.TooDeepError as exc:
        raise unauthorized("too_nested") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise unauthorized("malformed") from exc
    if not isinstance(value, dict):
        raise unauthorized("malformed")
    return value


def _check_header(header: Dict[str, Any]) -> None:
    """``alg`` must be a string, ``kid`` a string of at most 256 characters; ``crit`` and ``b64`` name
    extensions we do not implement (RFC 7515 4.1.11)."""
    if not isinstance(header.get("alg"), str):
        raise unauthorized("malformed")
    kid = header.get("kid")
    if kid is not None and (not isinstance(kid, str) or len(kid) > MAX_KID_CHARS):
        raise unauthorized("malformed")
    if "crit" in header or "b64" in header:
        raise unauthorized("unsupported_crit")


def parse_compact(token: str) -> ParsedToken:
    """Split and decode a compact JWS, refusing (``Unauthorized``) anything that is not strictly one."""
    if len(token) > MAX_TOKEN_BYTES:
        raise unauthorized("too_large")
    dots = token.count(".")
    if dots == 4:
        raise unauthorized("encrypted")
    if dots != 2:
        raise unauthorized("malformed")
    head, body, sig = token.split(".")
    header = _json_object(head)
    _check_header(header)
    payload = _json_object(body)
    try:
        signature = b64url_decode(sig)
    except ValueError as exc:
        raise unauthorized("malformed") from exc
    return ParsedToken(header, payload, f"{head}.{body}".encode("ascii"), signature)


# --- signature checks, one closure per (key, alg), built at load time ---------------------------------

def hmac_verifier(secret: bytes, alg: str) -> Verifier:
    """HS*: hmac + compare_digest (measured faster than python-jose's HMACKey, same result)."""
    digestmod = _HASHES[alg[2:]]

    def verify(signing_input: bytes, signature: bytes) -> bool:
        return hmac.compare_digest(hmac.new(secret, signing_input, digestmod).digest(), signature)
    return verify


def _rsa_pkcs1_verifier(key: rsa.RSAPublicKey, alg: str) -> Verifier:
    """RS*: python-jose's key object with the one algorithm this closure is for."""
    verify: Verifier = CryptographyRSAKey(key, alg).verify
    return verify


def _rsa_pss_verifier(key: rsa.RSAPublicKey, alg: str) -> Verifier:
    """PS*: python-jose has none, so ``cryptography`` directly; salt length = hash length (RFC 7518 3.5)."""
    hash_cls = _CRYPTO_HASHES[alg[2:]]
    pss = padding.PSS(mgf=padding.MGF1(hash_cls()), salt_length=hash_cls().digest_size)
    size = (key.key_size + 7) // 8

    def verify(signing_input: bytes, signature: bytes) -> bool:
        if len(signature) != size:
            return False
        try:
            key.verify(signature, signing_input, pss, hash_cls())
        except InvalidSignature:
            return False
        return True
    return verify


def ecdsa_signature_ok(alg: str, signature: bytes) -> bool:
    """Raw ``R || S`` of the curve's exact length with 0 < r, s < n; DER or anything else is refused."""
    size = _EC_COORD_BYTES[alg]
    if len(signature) != 2 * size:
        return False
    order = _EC_ORDER[alg]
    r = int.from_bytes(signature[:size], "big")
    s = int.from_bytes(signature[size:], "big")
    return 0 < r < order and 0 < s < order


def _ecdsa_verifier(key: ec.EllipticCurvePublicKey, alg: str) -> Verifier:
    """ES*: our own raw-signature checks first, then python-jose's key object."""
    jose_verify = CryptographyECKey(key, alg).verify

    def verify(signing_input: bytes, signature: bytes) -> bool:
        return ecdsa_signature_ok(alg, signature) and jose_verify(signing_input, signature)
    return verify


def _eddsa_verifier(key: "ed25519.Ed25519PublicKey | ed448.Ed448PublicKey", alg: str) -> Verifier:
    size = 64 if isinstance(key, ed25519.Ed25519PublicKey) else 114

    def verify(signing_input: bytes, signature: bytes) -> bool:
        if len(signature) != size:
            return False
        try:
            key.verify(signature, signing_input)
        except InvalidSignature:
            return False
        return True
    return verify


def algorithms_for_key(key: Any) -> Tuple[str, ...]:
    """The algorithms a public key's type can verify: an RSA key never verifies ES or HS."""
    if isinstance(key, rsa.RSAPublicKey):
        return RSA_ALGS
    if isinstance(key, ec.EllipticCurvePublicKey):
        alg = EC_ALG_BY_CURVE.get(key.curve.name)
        return (alg,) if alg else ()
    if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return EDDSA_ALGS
    return ()


def build_verifier(key: Any, alg: str) -> Verifier:
    """The check for ``alg`` with public ``key``; the caller has made sure the pair fits."""
    if alg.startswith("RS"):
        return _rsa_pkcs1_verifier(key, alg)
    if alg.startswith("PS"):
        return _rsa_pss_verifier(key, alg)
    if alg.startswith("ES"):
        return _ecdsa_verifier(key, alg)
    if alg == "EdDSA":
        return _eddsa_verifier(key, alg)
    raise ValueError(f"no verifier for {alg}")
