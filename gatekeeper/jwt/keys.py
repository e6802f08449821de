"""Key sources: where the JWT middleware's verification keys come from.

Every source turns its keys into signature-check closures once, at load time, indexed by algorithm and
``kid``; a request only looks up ``candidates(alg, kid)``. The algorithms a source accepts come from the
source and the key types, never from the token (an RSA key never verifies an HS or ES token).

    >>> source = SecretSource(b"mysuperlongsecret")
    >>> sorted(source.allowed_algs)
    ['HS256', 'HS384', 'HS512']

Remote key sets (``jwksUrl``, ``trustedIssuers``) are key sources too; they live in ``remote.py``, which
builds on the JWK parsing here (``read_jwk_set`` with ``skipped``: a remote set skips keys it cannot use).
``sources.py`` reads the options and builds whichever source they name.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Tuple

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from gatekeeper import jsontext
from gatekeeper.errors import ConfigError
from gatekeeper.jwt.jws import (
    ASYMMETRIC_ALGS,
    HMAC_ALGS,
    ParsedToken,
    Verifier,
    algorithms_for_key,
    b64url_decode,
    build_verifier,
    hmac_verifier,
)
from gatekeeper.jwt.refusals import unauthorized

log = logging.getLogger("gatekeeper.keys")

MIN_RSA_BITS = 2048
JWKS_RECHECK_SECONDS = 1.0

_EC_CURVES = {"P-256": (ec.SECP256R1, 32), "P-384": (ec.SECP384R1, 48), "P-521": (ec.SECP521R1, 66)}
_OKP_SIZES = {"Ed25519": 32, "Ed448": 57}


class KeyIndex:
    """Verifiers by algorithm and by (kid, algorithm), built once; immutable after construction."""

    def __init__(self, entries: Iterable[Tuple[Optional[str], str, Verifier]]) -> None:
        by_alg: Dict[str, List[Verifier]] = {}
        by_kid: Dict[Tuple[str, str], List[Verifier]] = {}
        kids = set()
        for kid, alg, verify in entries:
            by_alg.setdefault(alg, []).append(verify)
            if kid is not None:
                kids.add(kid)
                by_kid.setdefault((kid, alg), []).append(verify)
        self.by_alg = {alg: tuple(v) for alg, v in by_alg.items()}
        self.by_kid = {key: tuple(v) for key, v in by_kid.items()}
        self.kids = frozenset(kids)
        self.algs = frozenset(self.by_alg)

    def select(self, alg: str, kid: Optional[str]) -> Sequence[Verifier]:
        """With a ``kid``: that key (unknown: 401); without: every key that fits ``alg``."""
        if kid is None:
            found = self.by_alg.get(alg)
        else:
            if kid not in self.kids:
                raise unauthorized("unknown_kid")
            found = self.by_kid.get((kid, alg))
        if not found:
            raise unauthorized("alg_not_allowed")
        return found


class KeySource:
    """Base of every key source: ``allowed_algs`` and ``candidates(alg, kid)``.

    ``candidates_for(token)`` and ``check_payload(payload)`` are what the middleware calls: a source that
    picks keys by more than ``alg`` and ``kid`` (``trustedIssuers``: by ``iss``), or checks claims of its
    own after the signature (``audience``), overrides them.
    """

    option = ""
    allowed_algs: FrozenSet[str] = frozenset()

    def candidates(self, alg: str, kid: Optional[str]) -> Sequence[Verifier]:
        raise NotImplementedError

    def candidates_for(self, token: ParsedToken) -> Sequence[Verifier]:
        return self.candidates(token.alg, token.kid)

    def check_payload(self, payload: Mapping[str, Any]) -> None:
        """Called once the signature verified; raises ``Unauthorized`` to refuse."""


class SingleKeySource(KeySource):
    """One key with a verifier per algorithm its type allows; the token's ``kid`` plays no part."""


    def __init__(self, verifiers: Mapping[str, Verifier]) -> None:
        self._verifiers = {alg: (verify,) for alg, verify in verifiers.items()}
        self.allowed_algs = frozenset(verifiers)

    def candidates(self, alg: str, kid: Optional[str]) -> Sequence[Verifier]:
        try:
            return self._verifiers[alg]
        except KeyError:
            raise unauthorized("alg_not_allowed") from None


class SecretSource(SingleKeySource):
    """``signingSecret``: HS256/384/512 only."""

    option = "signingSecret"

    def __init__(self, secret: bytes) -> None:
        super().__init__({alg: hmac_verifier(secret, alg) for alg in HMAC_ALGS})


def _check_public_key(key: Any, where: str) -> Tuple[str, ...]:
    algs = algorithms_for_key(key)
    if not algs:
        raise ConfigError(f"{where}: unsupported key type or curve")
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise ConfigError(f"{where}: RSA key of {key.key_size} bits is too short (at least {MIN_RSA_BITS})")
    return algs


def load_public_pem(text: str, option: str = "publicKey") -> Any:
    """A ``cryptography`` public key from PEM (SubjectPublicKeyInfo, PKCS#1 RSA, or a certificate)."""
    data = text.strip().encode("utf-8")
    if b"PRIVATE KEY-----" in data:
        raise ConfigError(f"{option}: not a PEM public key (this is a private key: give its public half)")
    try:
        if data.startswith(b"-----BEGIN CERTIFICATE-----"):
            return x509.load_pem_x509_certificate(data).public_key()
        return load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{option}: not a PEM public key") from exc


class PublicKeySource(SingleKeySource):
    """``publicKey``: one PEM key; its type decides the algorithms (RSA: RS*/PS*, EC: ES by curve, EdDSA)."""

    option = "publicKey"

    def __init__(self, pem: str) -> None:
        key = load_public_pem(pem)
        super().__init__({alg: build_verifier(key, alg) for alg in _check_public_key(key, "publicKey")})


# --- JWK Sets -------------------------------------------------------------------------------------------

def _jwk_bytes(jwk: Mapping[str, Any], name: str, size: Optional[int] = None) -> bytes:
    value = jwk.get(name)
    if not isinstance(value, str):
        raise ValueError(f'"{name}" missing')
    raw = b64url_decode(value.rstrip("="))
    if size is not None and len(raw) != size:
        raise ValueError(f'"{name}" has {len(raw)} bytes, expected {size}')
    return raw


def jwk_public_key(jwk: Mapping[str, Any]) -> Any:
    """A ``cryptography`` public key from an RSA, EC or OKP JWK (private members are ignored)."""
    kty = jwk.get("kty")
    if kty == "RSA":
        n = int.from_bytes(_jwk_bytes(jwk, "n"), "big")
        e = int.from_bytes(_jwk_bytes(jwk, "e"), "big")
        return rsa.RSAPublicNumbers(e, n).public_key()
    if kty == "EC":
        if jwk.get("crv") not in _EC_CURVES:
            raise ValueError(f"unsupported curve {jwk.get('crv')!r}")
        curve, size = _EC_CURVES[jwk["crv"]]
        x = int.from_bytes(_jwk_bytes(jwk, "x", size), "big")
        y = int.from_bytes(_jwk_bytes(jwk, "y", size), "big")
        return ec.EllipticCurvePublicNumbers(x, y, curve()).public_key()
    if kty == "OKP":
        if jwk.get("crv") not in _OKP_SIZES:
            raise ValueError(f"unsupported curve {jwk.get('crv')!r}")
        size = _OKP_SIZES[jwk["crv"]]
        raw = _jwk_bytes(jwk, "x", size)
        if jwk["crv"] == "Ed25519":
            return ed25519.Ed25519PublicKey.from_public_bytes(raw)
        return ed448.Ed448PublicKey.from_public_bytes(raw)
    raise ValueError(f"unsupported kty {kty!r}")


def _usable_for_signatures(jwk: Mapping[str, Any]) -> bool:
    """A JWK with ``use`` other than ``sig`` (or ``key_ops`` without ``verify``) is not used (RFC 7517 4.2/4.3)."""
    use = jwk.get("use")
    if use is not None and use != "sig":
        return False
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return False
    return jwk.get("kty") in ("RSA", "EC", "OKP")


def _jwk_entries(jwk: Any, where: str) -> List[Tuple[Optional[str], str, Verifier]]:
    """(kid, alg, verifier) for one JWK: none for keys not meant for signatures, ConfigError if unusable."""
    if not isinstance(jwk, dict):
        raise ConfigError(f"{where}: not a JSON object")
    if not _usable_for_signatures(jwk):
        return []
    kid = jwk.get("kid")
    if isinstance(kid, str):
        where += f" (kid {kid!r})"
    elif kid is not None:
        raise ConfigError(f"{where}: kid is not a string")
    try:
        key = jwk_public_key(jwk)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    algs = _check_public_key(key, where)
    stated = jwk.get("alg")
    if stated is not None:
        if stated not in ASYMMETRIC_ALGS:
            return []  # e.g. RSA-OAEP: an encryption key, never a signature key
        if stated not in algs:
            raise ConfigError(f"{where}: alg {stated} does not fit a {jwk['kty']} key")
        algs = (stated,)
    return [(kid, alg, build_verifier(key, alg)) for alg in algs]


def read_jwk_set(document: Any, option: str, skipped: Optional[List[str]] = None
                 ) -> Tuple[List[Tuple[Optional[str], str, Verifier]], int]:
    """(kid, alg, verifier) for every usable signing key of a JWK Set, and how many keys gave them.

    A key that fails to parse is a ConfigError, unless ``skipped`` is given (remote sets, which the
    provider may fill with keys we cannot use): then the problem is appended there and the key left out.
    A set without a single usable key is always a ConfigError.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ConfigError(f'{option}: not a JWK Set (a JSON object with a "keys" array)')
    entries: List[Tuple[Optional[str], str, Verifier]] = []
    count = 0
    for number, jwk in enumerate(document["keys"], 1):
        try:
            found = _jwk_entries(jwk, f"{option}: key {number}")
        except ConfigError as exc:
            if skipped is None:
                raise
            skipped.append(exc.reason)
            continue
        entries.extend(found)
        count += bool(found)
    if not entries:
        raise ConfigError(f"{option}: the JWK Set holds no usable signature key")
    return entries, count


def jwks_entries(document: Any, option: str) -> List[Tuple[Optional[str], str, Verifier]]:
    """(kid, alg, verifier) for every usable signing key of a JWK Set; problems are ConfigErrors."""
    return read_jwk_set(document, option)[0]


def parse_jwks(text: "str | bytes", option: str = "jwksFile") -> KeyIndex:
    """A :class:`KeyIndex` from JWK Set JSON (strict: duplicate member names are an error)."""
    try:
        document = jsontext.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{option}: not valid JSON ({exc})") from exc
    return KeyIndex(jwks_entries(document, option))


class IndexedSource(KeySource):
    """A key set held as a :class:`KeyIndex`; ``candidates`` honours ``kid``."""

    option = "jwksFile"

    def __init__(self, index: KeyIndex) -> None:
        self._index: Optional[KeyIndex] = index  # None (a jwksFile gone bad): no keys, every token refused
        self.allowed_algs = frozenset(ASYMMETRIC_ALGS)  # what a key set may hold; the index narrows it

    def candidates(self, alg: str, kid: Optional[str]) -> Sequence[Verifier]:
        index = self._index
        if index is None:
            raise unauthorized("no_keys")
        return index.select(alg, kid)


class JWKSFileSource(IndexedSource):
    """``jwksFile`` given as a path: read at load (errors are ConfigErrors) and re-read when it changes.

    The file's stat is looked at no more than once a second. The file is the list of trusted keys, so
    it fails closed: emptied (``{"keys": []}``), deleted, or no longer a usable JWK Set, it leaves no
    keys and every token is refused (401 ``no_keys``) until it is usable again; each such change is
    logged once. Replace the file atomically (write aside, then rename) so no reader sees it half written.
    ``generation`` counts the changes seen, so a caller (a test) can wait for one.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: Optional[Tuple[int, int, int]] = self._stat()
        super().__init__(parse_jwks(self._read(), "jwksFile"))
        self.generation = 0
        self.last_error: Optional[str] = None
        self._next_check = time.monotonic() + JWKS_RECHECK_SECONDS
        self._lock = threading.Lock()

    def _stat(self) -> Tuple[int, int, int]:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise ConfigError(f"jwksFile: cannot read {self.path}: {exc.strerror}") from exc
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _read(self) -> bytes:
        try:
            with open(self.path, "rb") as handle:
                data = handle.read(jsontext.MAX_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"jwksFile: cannot read {self.path}: {exc.strerror}") from exc
        if len(data) > jsontext.MAX_BYTES:
            raise ConfigError(f"jwksFile: {self.path} is larger than {jsontext.MAX_BYTES} bytes")
        return data

    def refresh_if_changed(self) -> None:
        """Re-read the file when its stat changed; anything but a usable JWK Set leaves no keys."""
        try:
            stamp: Optional[Tuple[int, int, int]] = self._stat()
        except ConfigError as exc:
            stamp, gone = None, exc  # deleted (or unreadable): no keys until it is back
        if stamp == self._stamp:
            return
        self._stamp = stamp
        self.generation += 1
        try:
            if stamp is None:
                raise gone
            self._index = parse_jwks(self._read(), "jwksFile")
        except ConfigError as exc:
            self._index = None
            self.last_error = exc.reason
            log.error("jwksFile %s: %s: every token is refused (no_keys) until it holds a usable JWK Set",
                      self.path, exc.reason.replace("jwksFile: ", "", 1))
            return
        self.last_error = None
        log.info("jwksFile %s re-read", self.path)

    def candidates(self, alg: str, kid: Optional[str]) -> Sequence[Verifier]:
        now = time.monotonic()
        if now >= self._next_check and self._lock.acquire(blocking=False):
            try:
                self._next_check = now + JWKS_RECHECK_SECONDS
                self.refresh_if_changed()
            finally:
                self._lock.release()
        return super().candidates(alg, kid)


def jwks_file_source(value: str) -> IndexedSource:
    """``jwksFile`` is either the JWK Set JSON itself (starts with ``{``) or a path to a file."""
    if value.lstrip().startswith("{"):
        return IndexedSource(parse_jwks(value, "jwksFile"))
    return JWKSFileSource(value)
