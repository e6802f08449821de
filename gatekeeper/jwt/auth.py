"""The JWT middleware (``plugin: jwt:``): options in, a request checked, claims out.

Everything that can be decided when a configuration loads is decided in :meth:`JWTAuth.from_config`,
each part by the module that owns it: the key source and its keys (``sources``), where the token is
(``tokens``), the compiled ``claims`` expression, the forwarded headers (``forwarded``) and the canned
401/403 answers (``refusals``). A request then runs the steps of docs/jwt.md ("Verifying a token") in
order and either passes the request on with the claims in the environ or answers itself.

    >>> auth = JWTAuth.from_config({"signingSecret": "mysuperlongsecret",
    ...                             "claims": "Equals(`grp`, `admin`)",
    ...                             "forwardHeaders": {"X-Group": "grp"}})
    >>> sorted(auth.source.allowed_algs)
    ['HS256', 'HS384', 'HS512']
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Dict, Iterable, Mapping, Optional

from gatekeeper.errors import AuthError, ExpressionError
from gatekeeper.expr import MISSING, compile_claims
from gatekeeper.jsontext import format_value, number_value
from gatekeeper.jwt import jws, keys
from gatekeeper.jwt.forwarded import NOTHING_FORWARDED, ForwardedHeaders, build_forwarded, compile_path
from gatekeeper.jwt.refusals import forbidden, refuse, unauthorized
from gatekeeper.jwt.sources import KEY_SOURCE_MODIFIERS, KEY_SOURCES, build_key_source
from gatekeeper.jwt.tokencache import VerifiedTokens
from gatekeeper.jwt.tokens import TokenPlaces, build_token_places
from gatekeeper.options import canonical_options, want_bool, want_map, want_seconds, want_text
from gatekeeper.wsgi import CLAIMS, CREDENTIAL_HEADERS, USER, Environ, StartResponse, WSGIApp

OPTIONS = KEY_SOURCES + KEY_SOURCE_MODIFIERS + (
    "forwardAuthorization", "tokenKey", "tokenSource", "claims", "forwardHeaders", "usernameClaim",
    "clockSkewSeconds",
)
OLD_NAMES = {"tokenQueryKey": "tokenKey"}

Claims = Dict[str, Any]


def _compile_claims_option(opts: Mapping[str, Any]) -> Optional[Callable[[Claims], bool]]:
    if "claims" not in opts:
        return None
    text = want_text(opts["claims"], "claims")
    try:
        return compile_claims(text)
    except ExpressionError as exc:
        raise ExpressionError(f"claims: {exc.message}", exc.expression, exc.column) from exc


class JWTAuth:
    """One configured JWT middleware: ``authenticate(environ)`` and ``wrap(app)``.

        >>> auth = JWTAuth.from_config({"signingSecret": "s3cret"})
        >>> protected = auth.wrap(lambda environ, start_response: [b"hello"])
        >>> protected({}, lambda status, headers: None)[0][:25]
        b'{"error": "invalid_reques'
    """

    def __init__(self, *, source: keys.KeySource, places: TokenPlaces,
                 claims: Optional[Callable[[Claims], bool]] = None,
                 forwarded: ForwardedHeaders = NOTHING_FORWARDED,
                 username: Optional[Callable[[Claims], Any]] = None,
                 clock_skew: int = 0, forward_authorization: bool = False) -> None:
        self.source = source
        self.places = places
        self.claims = claims
        self.forwarded = forwarded
        self.username = username
        self.clock_skew = clock_skew
        self.forward_authorization = forward_authorization
        self._allowed = source.allowed_algs
        self._verified = VerifiedTokens()  # per configuration: a reload starts empty

    @classmethod
    def from_config(cls, options: Mapping[str, Any]) -> JWTAuth:
        """Validate manifest options (camelCase) and build everything once; ConfigError names the option."""
        opts = canonical_options(want_map(options, "options"), OPTIONS, OLD_NAMES)
        return cls(
            source=build_key_source(opts),
            places=build_token_places(opts),
            claims=_compile_claims_option(opts),
            forwarded=build_forwarded(opts),
            username=compile_path("usernameClaim", opts["usernameClaim"]) if "usernameClaim" in opts else None,
            clock_skew=want_seconds(opts.get("clockSkewSeconds", 0), "clockSkewSeconds"),
            forward_authorization=want_bool(opts.get("forwardAuthorization", False), "forwardAuthorization"),
        )

    # -- step 1: find the token --------------------------------------------------------------------------

    def find_token(self, environ: Environ) -> Optional[str]:
        """The request's one token, from the header, tokenKey (query, form), query or cookie
        (``ambiguous_token`` for more than one: see ``tokens``). Its header is noted as a credential's, so an
        errors middleware never sends it to a page service."""
        environ.setdefault(CREDENTIAL_HEADERS, set()).add(self.places.header_key)
        return self.places.find(environ)

    # -- steps 2-6: verify ------------------------------------------------------------------------------

    def verify(self, token: str, now: Optional[float] = None) -> Dict[str, Any]:
        """The payload of a token that passes every check, else ``Unauthorized``/``Forbidden``."""
        parsed = self._verified_before(token)
        if parsed is None:
            parsed = jws.parse_compact(token)
            alg = parsed.alg
            if alg not in self._allowed:
                raise unauthorized("alg_not_allowed")
            for check in self.source.candidates_for(parsed):
                if check(parsed.signing_input, parsed.signature):
                    break
            else:
                raise unauthorized("bad_signature")
            self._verified.remember(token, parsed, check)
        payload = _claims_copy(parsed.payload)  # whoever reads gatekeeper.claims cannot alter the cache
        self.source.check_payload(payload)  # trustedIssuers: audience
        self._check_times(payload, time.time() if now is None else now)
        if self.claims is not None and not self._claims_hold(payload):
            raise forbidden()
        return payload

    def _verified_before(self, token: str) -> Optional[jws.ParsedToken]:
        """A token whose signature verified earlier, while the key source still offers the verifier that
        accepted it (a rotated key set builds new verifiers, so its tokens verify afresh); else None.
        Only the signature check is skipped: times, claims and headers are judged on every request."""
        hit = self._verified.lookup(token)
        if hit is not None and hit[1] in self.source.candidates_for(hit[0]):
            return hit[0]
        return None

    def _check_times(self, payload: Mapping[str, Any], now: float) -> None:
        """exp: valid while now < exp; nbf, iat: valid from that instant; all with clockSkewSeconds."""
        skew = self.clock_skew
        exp = _time_claim(payload, "exp")
        if exp is not None and now >= exp + skew:
            raise unauthorized("expired")
        nbf = _time_claim(payload, "nbf")
        if nbf is not None and now < nbf - skew:
            raise unauthorized("not_yet_valid")
        iat = _time_claim(payload, "iat")
        if iat is not None and now < iat - skew:
            raise unauthorized("not_yet_valid")

    def _claims_hold(self, payload: Dict[str, Any]) -> bool:
        try:
            return bool(self.claims(payload))  # type: ignore[misc]
        except Exception:  # a claims function that fails must deny, never let through
            return False

    # -- step 7: pass on ---------------------------------------------------------------------------------

    def forward(self, environ: Environ, claims: Claims) -> None:
        """Scrub client copies of forwarded headers, set them from claims, drop the token header."""
        if self.forwarded.entries:
            self.forwarded.apply(environ, claims)
        if self.username is not None:
            user = self.username(claims)
            if user is not MISSING and user is not None:
                environ[USER] = format_value(user)
        if not self.forward_authorization:
            environ.pop(self.places.header_key, None)
        environ[CLAIMS] = claims

    def authenticate(self, environ: Environ) -> Claims:
        """Run every step on a request; the claims on success, ``AuthError`` on refusal."""
        token = self.find_token(environ)
        if token is None:
            raise unauthorized("missing_token")
        claims = self.verify(token)
        self.forward(environ, claims)
        return claims

    def wrap(self, app: WSGIApp) -> WSGIApp:
        """``app`` behind this middleware: refused requests are answered here and never reach it."""
        def jwt_protected(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
            try:
                self.authenticate(environ)
            except AuthError as err:
                return refuse(environ, start_response, err)
            return app(environ, start_response)
        return jwt_protected


def _claims_copy(payload: Dict[str, Any]) -> Dict[str, Any]:
    """A copy of the verified payload that shares no list or object with the cached one: an app that
    edits ``gatekeeper.claims["roles"]`` in place must not change what the next request's claims say.
    Flat payloads (the common case) take a plain dict copy; nesting is at most 32 deep (jsontext)."""
    for value in payload.values():
        if isinstance(value, (dict, list)):
            copied: Dict[str, Any] = _deep_copy(payload)
            return copied
    return dict(payload)


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value  # str (JSONNumber included), bool, None: immutable


def _time_claim(payload: Mapping[str, Any], name: str) -> Optional[float]:
    if name not in payload:
        return None
    try:
        value = number_value(payload[name])
    except (TypeError, ValueError):
        raise unauthorized("bad_time_claim") from None
    if not math.isfinite(value):
        raise unauthorized("bad_time_claim")
    return value
