"""Why a token is refused: every reason word, what it tells the client, and the canned 401/403 answers.

One vocabulary for the whole JWT wing: the parser (``jws``), the key sources (``keys``, ``remote``) and the
middleware (``auth``) raise :func:`unauthorized` with a reason listed here, and :func:`refuse` answers it
with a response built once at import. The reasons and their answers are listed in docs/jwt.md.

    >>> err = unauthorized("expired")
    >>> err.reason, err.description
    ('expired', 'the token has expired')
    >>> refusal_for("claims").status
    '403 Forbidden'
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Dict, List, Tuple

from gatekeeper.errors import AuthError, Forbidden, Unauthorized
from gatekeeper.jsontext import MAX_DEPTH
from gatekeeper.wsgi import JWT_REASON, Environ, StartResponse

REALM = "gatekeeper"

DESCRIPTIONS: Dict[str, str] = {
    # the token's shape (jws), before any key is looked at
    "too_large": "the token is larger than 16 KiB",
    "encrypted": "encrypted tokens (JWE) are not accepted",
    "malformed": "the token is not a well-formed signed JWT",
    "too_nested": f"the token's JSON nests arrays and objects deeper than {MAX_DEPTH} levels",
    "unsupported_crit": "the token names critical header extensions this server does not implement",
    # the keys (keys, remote)
    "alg_not_allowed": "the token's algorithm is not accepted here",
    "unknown_kid": "no key matches the token's kid",
    "no_keys": "the key set is unavailable: no keys to verify the token with",
    "untrusted_issuer": "the token's issuer is not trusted here",
    "bad_audience": "the token's audience is not accepted here",
    # the request and the verification (auth)
    "missing_token": "no bearer token in the request",
    "ambiguous_token": "the request carries more than one token (or a token in more than one place)",
    "bad_signature": "the token's signature does not verify",
    "bad_time_claim": "exp, nbf and iat must be numbers",
    "expired": "the token has expired",
    "not_yet_valid": "the token is not valid yet",
    "bad_header_value": "a claim forwarded as a header holds a forbidden character",
    "claims": "the token's claims do not grant access to this resource",
}


def describe(reason: str) -> str:
    """What a reason tells the client; a reason not listed gets a generic description."""
    return DESCRIPTIONS.get(reason, "the token was refused")


def unauthorized(reason: str) -> Unauthorized:
    """The 401 error for ``reason`` (one of :data:`DESCRIPTIONS`)."""
    return Unauthorized(reason, DESCRIPTIONS[reason])


def forbidden() -> Forbidden:
    """The 403 error: a valid token whose claims do not satisfy the ``claims`` expression."""
    return Forbidden("claims", DESCRIPTIONS["claims"])


@dataclass(frozen=True)
class Refusal:
    """A prebuilt 401/403: status line, headers and body for one reason."""

    status: str
    headers: Tuple[Tuple[str, str], ...]
    body: bytes


def _build_refusal(reason: str) -> Refusal:
    """RFC 6750's answer: ``insufficient_scope`` for claims, ``invalid_request`` for no token, else
    ``invalid_token`` with the description in the challenge."""
    description = describe(reason)
    if reason == "claims":
        status, error, challenge = "403 Forbidden", "insufficient_scope", 'Bearer error="insufficient_scope"'
    elif reason == "missing_token":
        status, error, challenge = "401 Unauthorized", "invalid_request", f'Bearer realm="{REALM}"'
    else:
        status, error = "401 Unauthorized", "invalid_token"
        challenge = f'Bearer realm="{REALM}", error="invalid_token", error_description="{description}"'
    body = json.dumps({"error": error, "error_description": description}).encode() + b"\n"
    headers = (("Content-Type", "application/json"), ("Content-Length", str(len(body))),
               ("WWW-Authenticate", challenge), ("Cache-Control", "no-store"))
    return Refusal(status, headers, body)


REFUSALS: Dict[str, Refusal] = {reason: _build_refusal(reason) for reason in DESCRIPTIONS}


def refusal_for(reason: str) -> Refusal:
    """The canned answer for ``reason``, built once (built now for a reason not listed)."""
    return REFUSALS.get(reason) or _build_refusal(reason)


def refuse(environ: Environ, start_response: StartResponse, err: AuthError) -> List[bytes]:
    """Answer with the canned refusal for ``err.reason`` and note the reason for the access log."""
    environ[JWT_REASON] = err.reason
    refusal = refusal_for(err.reason)
    start_response(refusal.status, list(refusal.headers))
    return [refusal.body]
