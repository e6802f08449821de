"""Minting test tokens: ``gatekeeper token`` and :func:`mint`, so trying the gateway needs no other tool.

Signing is written here with ``hmac`` and ``cryptography`` directly, independently of the verifier in
``jws.py``, so a test that mints with one and verifies with the other checks both.

    >>> mint({"sub": "alice", "grp": "admin"}, secret="mysuperlongsecret").count(".")
    2

    $ gatekeeper token --secret mysuperlongsecret --claim grp=admin --exp 1h
"""
from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import re
import sys
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from gatekeeper.jwt.jws import EC_ALG_BY_CURVE, b64url_encode

_HASH_BITS: Dict[str, Tuple[Any, Callable[[], hashes.HashAlgorithm]]] = {
    "256": (hashlib.sha256, hashes.SHA256), "384": (hashlib.sha384, hashes.SHA384),
    "512": (hashlib.sha512, hashes.SHA512)}
_EC_SIZES = {"ES256": 32, "ES384": 48, "ES512": 66}
_DURATION = re.compile(r"(\d+)([smhd]?)\Z")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}

PartLike = Union[Mapping[str, Any], bytes, str]


def load_private_key(key_pem: Union[str, bytes]) -> Any:
    data = key_pem.encode() if isinstance(key_pem, str) else key_pem
    return load_pem_private_key(data, password=None)


def default_alg(*, secret: Any = None, key: Any = None) -> str:
    """HS256 for a secret; for a key, the algorithm its type implies (RS256, ES256/384/512, EdDSA)."""
    if secret is not None:
        return "HS256"
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return EC_ALG_BY_CURVE[key.curve.name]
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        return "EdDSA"
    raise ValueError("unsupported private key type")


def sign(alg: str, signing_input: bytes, *, secret: Optional[bytes] = None, key: Any = None) -> bytes:
    """The JWS signature of ``signing_input`` (ES*: raw ``R || S``, as RFC 7518 3.4 requires)."""
    if alg.startswith("HS"):
        if secret is None:
            raise ValueError(f"{alg} needs a secret")
        return hmac.new(secret, signing_input, _HASH_BITS[alg[2:]][0]).digest()
    if key is None:
        raise ValueError(f"{alg} needs a private key")
    if alg == "EdDSA":
        signature: bytes = key.sign(signing_input)
        return signature
    hash_alg = _HASH_BITS[alg[2:]][1]()
    if alg.startswith("RS"):
        signature = key.sign(signing_input, padding.PKCS1v15(), hash_alg)
        return signature
    if alg.startswith("PS"):
        pss = padding.PSS(mgf=padding.MGF1(hash_alg), salt_length=hash_alg.digest_size)
        signature = key.sign(signing_input, pss, hash_alg)
        return signature
    if alg.startswith("ES"):
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hash_alg)))
        size = _EC_SIZES[alg]
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    raise ValueError(f"unsupported alg {alg}")


def _part(value: PartLike) -> str:
    if isinstance(value, Mapping):
        value = json.dumps(value, separators=(",", ":"))
    if isinstance(value, str):
        value = value.encode("utf-8")
    return b64url_encode(value)


def _compact(header: PartLike, payload: PartLike, alg: str, secret: Union[str, bytes, None], key: Any) -> str:
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    signing_input = f"{_part(header)}.{_part(payload)}"
    signature = sign(alg, signing_input.encode("ascii"), secret=secret, key=key)
    return f"{signing_input}.{b64url_encode(signature)}"


def sign_compact(header: PartLike, payload: PartLike, *, alg: str, secret: Union[str, bytes, None] = None,
                 key_pem: Union[str, bytes, None] = None) -> str:
    """A compact JWS over arbitrary header/payload (dicts, or raw JSON text for malformed-token tests)."""
    key = load_private_key(key_pem) if key_pem is not None else None
    return _compact(header, payload, alg, secret, key)


def mint(claims: Mapping[str, Any], *, secret: Union[str, bytes, None] = None,
         key_pem: Union[str, bytes, None] = None, alg: Optional[str] = None, kid: Optional[str] = None,
         headers: Optional[Mapping[str, Any]] = None) -> str:
    """A signed JWT with exactly ``claims`` (nothing added), from a secret (HS*) or a private key PEM.

        >>> mint({"grp": "admin"}, secret="s3cret", alg="HS384", kid="k1")  # doctest: +ELLIPSIS
        'eyJ...'
    """
    if (secret is None) == (key_pem is None):
        raise ValueError("give exactly one of secret or key_pem")
    key = load_private_key(key_pem) if key_pem is not None else None
    alg = alg or default_alg(secret=secret, key=key)
    header: Dict[str, Any] = {"alg": alg, "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    header.update(headers or {})
    return _compact(header, claims, alg, secret, key)


# --- keys for trying things out (and for the tests) ----------------------------------------------------

_NEW_KEYS: Dict[str, Callable[[], Any]] = {
    "rsa": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ec256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "ec384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "ec521": lambda: ec.generate_private_key(ec.SECP521R1()),
    "ed25519": ed25519.Ed25519PrivateKey.generate,
    "ed448": ed448.Ed448PrivateKey.generate,
}


def new_key_pem(kind: str) -> bytes:
    """A fresh unencrypted PKCS#8 private key: ``rsa``, ``ec256``, ``ec384``, ``ec521``, ``ed25519``, ``ed448``."""
    pem: bytes = _NEW_KEYS[kind]().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    return pem


def public_key_pem(private_pem: Union[str, bytes]) -> str:
    """The ``-----BEGIN PUBLIC KEY-----`` PEM for ``publicKey``."""
    public = load_private_key(private_pem).public_key()
    pem: bytes = public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    return pem.decode("ascii")


def _int_b64(value: int, size: Optional[int] = None) -> str:
    return b64url_encode(value.to_bytes(size or max(1, (value.bit_length() + 7) // 8), "big"))


def public_jwk(private_pem: Union[str, bytes], **members: Any) -> Dict[str, Any]:
    """The public JWK of a private key, plus ``members`` (``kid``, ``alg``, ``use``...)."""
    public = load_private_key(private_pem).public_key()
    if isinstance(public, rsa.RSAPublicKey):
        rsa_numbers = public.public_numbers()
        jwk: Dict[str, Any] = {"kty": "RSA", "n": _int_b64(rsa_numbers.n), "e": _int_b64(rsa_numbers.e)}
    elif isinstance(public, ec.EllipticCurvePublicKey):
        size = (public.curve.key_size + 7) // 8
        crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[public.curve.name]
        numbers = public.public_numbers()
        jwk = {"kty": "EC", "crv": crv, "x": _int_b64(numbers.x, size), "y": _int_b64(numbers.y, size)}
    else:
        crv = "Ed25519" if isinstance(public, ed25519.Ed25519PublicKey) else "Ed448"
        jwk = {"kty": "OKP", "crv": crv, "x": b64url_encode(public.public_bytes(Encoding.Raw, PublicFormat.Raw))}
    jwk.update(members)
    return jwk


# --- the CLI -------------------------------------------------------------------------------------------

def parse_duration(text: str) -> int:
    """``90``, ``30s``, ``15m``, ``1h``, ``7d`` -> seconds."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"not a duration (like 30s, 15m, 1h, 7d): {text!r}")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def parse_claim(text: str) -> Tuple[List[str], Any]:
    """``k=v`` -> (["k"], v): v as JSON when it parses, else the string; a dotted k nests objects."""
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise ValueError(f"--claim expects NAME=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return name.split("."), value


def set_claim(claims: Dict[str, Any], path: List[str], value: Any) -> None:
    node = claims
    for step in path[:-1]:
        child = node.get(step)
        if not isinstance(child, dict):
            child = node[step] = {}
        node = child
    node[path[-1]] = value


def build_claims(args: argparse.Namespace, now: int) -> Dict[str, Any]:
    claims: Dict[str, Any] = {"iat": now}
    if args.iss:
        claims["iss"] = args.iss
    if args.aud:
        claims["aud"] = args.aud
    for text in args.claim:
        path, value = parse_claim(text)
        set_claim(claims, path, value)
    if args.exp:
        claims["exp"] = now + parse_duration(args.exp)
    return claims


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``token`` to a CLI's subcommands (``func=run``)."""
    parser: argparse.ArgumentParser = subparsers.add_parser("token", help="mint a signed test JWT",
                                   description="Mint a signed JWT for trying the gateway.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--secret", help="HMAC secret (HS256/384/512)")
    source.add_argument("--key", metavar="PEM_FILE", help="private key PEM (RS*/PS*/ES*/EdDSA)")
    parser.add_argument("--alg", help="algorithm (default: HS256, or what the key's type implies)")
    parser.add_argument("--claim", action="append", default=[], metavar="NAME=VALUE",
                        help="a claim; VALUE parsed as JSON when it parses; a.b=v nests (repeatable)")
    parser.add_argument("--exp", metavar="DURATION", help="expiry from now: 30s, 15m, 1h, 7d")
    parser.add_argument("--kid", help="key id header")
    parser.add_argument("--iss", help="issuer claim")
    parser.add_argument("--aud", help="audience claim")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Print the token; a bad key, claim or duration prints one line to stderr and returns 2."""
    try:
        key_pem = None
        if args.key:
            with open(args.key, "rb") as handle:
                key_pem = handle.read()
        claims = build_claims(args, int(time.time()))
        print(mint(claims, secret=args.secret, key_pem=key_pem, alg=args.alg, kid=args.kid))
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        print(f"gatekeeper token: {_explain(exc)}", file=sys.stderr)
        return 2
    return 0


def _explain(exc: Exception) -> str:
    if isinstance(exc, OSError):
        return f"cannot read key: {exc.strerror or exc}"
    if isinstance(exc, KeyError):
        return f"unsupported algorithm or key: {exc}"
    return str(exc) or type(exc).__name__
