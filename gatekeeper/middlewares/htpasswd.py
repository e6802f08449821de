"""htpasswd lines (``name:hash``) as Traefik's basicAuth reads them, and the password checks they need.

Three hash kinds, as Traefik documents (MD5, SHA1, bcrypt): bcrypt (``$2y$``, ``$2a$``, ``$2b$``, by the
``bcrypt`` package), Apache's apr1 MD5 (``$apr1$``, written here: no kept library does it) and SHA1
(``{SHA}``). Anything else (plain text, ``crypt``, ``$1$``, ``$5$``/``$6$``) is refused when the
configuration loads, naming the user and the line, never the hash: a plain-text "hash" would be a password.

    >>> user = parse_line("test:$apr1$H6uskkkW$IgXLP6ewTrSuBkTrqE8wj/", "users[0]")
    >>> user.name, user.kind, verify(b"test", user.hashed), verify(b"nope", user.hashed)
    ('test', 'apr1', True, False)
    >>> verify(b"password", "{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=")
    True
"""
from __future__ import annotations

import base64
import hashlib
import hmac
from typing import NamedTuple, Optional

from gatekeeper.errors import ConfigError

BCRYPT_PREFIXES = ("$2y$", "$2a$", "$2b$")
APR1_PREFIX = "$apr1$"
SHA_PREFIX = "{SHA}"
BCRYPT_MAX_BYTES = 72  # bcrypt reads no further; the bcrypt package refuses longer passwords
_ITOA64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


class User(NamedTuple):
    """One htpasswd entry: the name, its hash (never shown) and the hash's kind (``bcrypt``, ``apr1``, ``sha``)."""

    name: str
    hashed: str
    kind: str


def hash_kind(hashed: str) -> Optional[str]:
    """``bcrypt``, ``apr1`` or ``sha`` by the hash's prefix; None for a kind gatekeeper does not check.

    >>> hash_kind("$2y$05$abc"), hash_kind("{SHA}abc"), hash_kind("secret")
    ('bcrypt', 'sha', None)
    """
    if hashed.startswith(BCRYPT_PREFIXES):
        return "bcrypt"
    if hashed.startswith(APR1_PREFIX):
        return "apr1"
    if hashed.startswith(SHA_PREFIX):
        return "sha"
    return None


def parse_line(line: str, where: str) -> User:
    """One ``name:hash`` line (surrounding blanks ignored); ConfigError naming ``where`` and the user.

    >>> parse_line("alice:hunter2", "users[1]")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    gatekeeper.errors.ConfigError: users[1]: user "alice": the password is not hashed with bcrypt ($2y$), ...
    """
    name, sep, hashed = line.strip().partition(":")
    if not sep or not name or not hashed or ":" in hashed:
        raise ConfigError(f"{where}: expected name:hashed-password (one colon)")
    kind = hash_kind(hashed)
    if kind is None:
        raise ConfigError(f'{where}: user "{name}": the password is not hashed with bcrypt ($2y$), apr1 MD5 '
                          "($apr1$) or SHA1 ({SHA}): hash it with htpasswd -nB")
    if kind == "apr1" and not _well_formed_apr1(hashed):
        raise ConfigError(f'{where}: user "{name}": not a well-formed $apr1$ hash')
    if kind == "bcrypt" and len(hashed) != 60:
        raise ConfigError(f'{where}: user "{name}": not a well-formed bcrypt hash (60 characters)')
    return User(name, hashed, kind)


def _well_formed_apr1(hashed: str) -> bool:
    parts = hashed.split("$")  # ['', 'apr1', salt, digest]
    return len(parts) == 4 and 0 < len(parts[2]) <= 8 and len(parts[3]) == 22


def verify(password: bytes, hashed: str) -> bool:
    """Whether ``password`` matches ``hashed`` (compared in constant time). bcrypt takes tens of
    milliseconds on purpose: call it off the event loop (basicauth.py does)."""
    kind = hash_kind(hashed)
    if kind == "bcrypt":
        import bcrypt  # loaded only when a bcrypt user is checked

        if len(password) > BCRYPT_MAX_BYTES:
            return False
        return bool(bcrypt.checkpw(password, hashed.encode("ascii", "replace")))
    if kind == "apr1":
        salt = hashed.split("$")[2]
        return hmac.compare_digest(apr1(password, salt.encode("ascii", "replace")), hashed.encode("ascii", "replace"))
    if kind == "sha":
        digest = SHA_PREFIX.encode() + base64.b64encode(hashlib.sha1(password).digest())
        return hmac.compare_digest(digest, hashed.encode("ascii", "replace"))
    return False


def sha_line(name: str, password: str) -> str:
    """``name:{SHA}...``: how a Kubernetes ``basic-auth`` Secret's plain password is kept (as Traefik does).

    >>> sha_line("user", "password")
    'user:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g='
    """
    return f"{name}:{SHA_PREFIX}{base64.b64encode(hashlib.sha1(password.encode()).digest()).decode()}"


def apr1(password: bytes, salt: bytes) -> bytes:
    """Apache's ``$apr1$`` MD5-crypt of ``password`` with ``salt`` (at most 8 characters), as htpasswd -m.

    >>> apr1(b"test", b"H6uskkkW")
    b'$apr1$H6uskkkW$IgXLP6ewTrSuBkTrqE8wj/'
    """
    salt = salt[:8]
    magic = APR1_PREFIX.encode()
    alternate = hashlib.md5(password + salt + password).digest()
    context = password + magic + salt
    for left in range(len(password), 0, -16):
        context += alternate[:min(16, left)]
    bits = len(password)
    while bits:
        context += b"\0" if bits & 1 else password[:1]
        bits >>= 1
    digest = hashlib.md5(context).digest()
    for round_ in range(1000):  # the fixed 1,000 rounds of MD5-crypt
        mixed = password if round_ & 1 else digest
        if round_ % 3:
            mixed += salt
        if round_ % 7:
            mixed += password
        mixed += digest if round_ & 1 else password
        digest = hashlib.md5(mixed).digest()
    return magic + salt + b"$" + _encode64(digest).encode()


def _encode64(digest: bytes) -> str:
    """MD5-crypt's own base-64 of the digest: bytes taken in a fixed shuffled order, low bits first."""
    out = []
    for first, second, third in ((0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)):
        out.append(_to64((digest[first] << 16) | (digest[second] << 8) | digest[third], 4))
    out.append(_to64(digest[11], 2))
    return "".join(out)


def _to64(value: int, count: int) -> str:
    chars = []
    for _ in range(count):
        chars.append(_ITOA64[value & 0x3F])
        value >>= 6
    return "".join(chars)
