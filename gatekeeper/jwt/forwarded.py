"""``forwardHeaders``: claims passed to the upstream as request headers, and the scrubbing of client copies.

Each entry is compiled once (header name checked and canonicalised as Traefik writes it, claim path
compiled); a request then scrubs whatever the client sent under those names, in any spelling, and sets
them from the verified claims. A header a claim must never set (it frames the request or names its
target) is refused at load. The option is described in docs/jwt.md.

    >>> forwarded = build_forwarded({"forwardHeaders": {"x-group": "grp"}})
    >>> environ = {"HTTP_X_GROUP": "forged"}
    >>> forwarded.apply(environ, {"grp": "admin"})
    >>> environ
    {'HTTP_X_GROUP': 'admin'}
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, Mapping, Tuple

from gatekeeper.errors import ConfigError, ExpressionError
from gatekeeper.expr import MISSING, compile_claim_path
from gatekeeper.jsontext import format_value
from gatekeeper.jwt.refusals import unauthorized
from gatekeeper.options import HEADER_NAME, want_map, want_text
from gatekeeper.wsgi import Environ, environ_key

Claims = Dict[str, Any]

# Headers a claim must never set: they frame the request or name its target.
UNSETTABLE_HEADERS = frozenset({"Host", "Content-Length", "Content-Type", "Transfer-Encoding", "Connection",
                                "Authorization"})
_FORBIDDEN_IN_VALUE = re.compile("[\r\n\x00]")


@dataclass(frozen=True)
class ForwardedClaim:
    """One ``forwardHeaders`` entry, compiled: the environ key to set and the claim getter."""

    name: str
    key: str
    get: Callable[[Claims], Any]


def canonical_header_name(name: str) -> str:
    """``nested-Property`` -> ``Nested-Property`` (Go's CanonicalMIMEHeaderKey, as Traefik writes them).

    >>> canonical_header_name("x-USER-id")
    'X-User-Id'
    """
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def compile_path(option: str, path: Any) -> Callable[[Claims], Any]:
    """A claim path (``usernameClaim``, a ``forwardHeaders`` value) as a getter; ConfigError names the option."""
    text = want_text(path, option)
    try:
        return compile_claim_path(text)
    except ExpressionError as exc:
        raise ConfigError(f"{option}: {exc.message}") from exc


@dataclass(frozen=True)
class ForwardedHeaders:
    """Every ``forwardHeaders`` entry, and the environ keys a request must scrub, decided once."""

    entries: Tuple[ForwardedClaim, ...] = ()
    scrub: FrozenSet[str] = frozenset()

    def apply(self, environ: Environ, claims: Claims) -> None:
        """Drop the client's copies of the forwarded headers (any spelling: ``x-group`` and ``X_GROUP``
        reach the same environ key), then set each from the claims; a missing claim is an empty header."""
        scrub = self.scrub
        for key in [k for k in environ if k[:5] == "HTTP_" and k.upper().replace("-", "_") in scrub]:
            del environ[key]
        for item in self.entries:
            value = item.get(claims)
            text = "" if value is MISSING else format_value(value)
            if _FORBIDDEN_IN_VALUE.search(text):
                raise unauthorized("bad_header_value")
            environ[item.key] = _header_value(text)


NOTHING_FORWARDED = ForwardedHeaders()


def build_forwarded(opts: Mapping[str, Any]) -> ForwardedHeaders:
    """``forwardHeaders`` (header name -> claim path), checked and compiled."""
    result: Dict[str, ForwardedClaim] = {}
    for name, path in want_map(opts.get("forwardHeaders") or {}, "forwardHeaders").items():
        text = str(name)
        if not HEADER_NAME.match(text) or "_" in text:
            raise ConfigError(f'forwardHeaders: "{text}" is not a header name (letters, digits and "-")')
        canonical = canonical_header_name(text)
        if canonical in UNSETTABLE_HEADERS:
            raise ConfigError(f'forwardHeaders: "{canonical}" cannot be set from a claim')
        if canonical in result:
            raise ConfigError(f'forwardHeaders: "{canonical}" given twice')
        result[canonical] = ForwardedClaim(canonical, environ_key(canonical),
                                           compile_path(f"forwardHeaders.{canonical}", path))
    return ForwardedHeaders(tuple(result.values()), frozenset(item.key for item in result.values()))


def _header_value(text: str) -> str:
    """A claim's text as a WSGI header value: its UTF-8 bytes seen as latin-1 (PEP 3333)."""
    return text if text.isascii() else text.encode("utf-8").decode("latin-1")
