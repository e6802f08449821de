"""The JWT middleware (``plugin: jwt:``): options, token extraction, verification, claims, headers.

Everything that can be decided when a configuration loads is decided in :meth:`JWTAuth.from_config`:
the key source and its keys, the algorithms allowed, the compiled ``claims`` expression and claim paths,
the environ keys to scrub, and the canned 401/403 answers. A request then runs the steps of
``spec/jwt.md`` ("Verifying a token") in order and either passes the request on with the claims in the
environ or answers itself.

    >>> auth = JWTAuth.from_config({"signingSecret": "mysuperlongsecret",
    ...                             "claims": "Equals(`grp`, `admin`)",
    ...                             "forwardHeaders": {"X-Group": "grp"}})
    >>> app = auth.wrap(upstream_app)  # doctest: +SKIP
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple
from urllib.parse import parse_qsl

from gatekeeper.errors import AuthError, ConfigError, ExpressionError, Forbidden, Unauthorized
from gatekeeper.expr import MISSING, compile_claim_path, compile_claims
from gatekeeper.jsontext import format_value, number_value
from gatekeeper.jwt import jws, keys
from gatekeeper.jwt import remote as jwks
from gatekeeper.jwt.tokencache import VerifiedTokens

WSGIApp = Callable[[dict, Callable], Iterable[bytes]]

MAX_FORM_BYTES = 1024 * 1024
REALM = "gatekeeper"

DESCRIPTIONS: Dict[str, str] = {
    **jws.DESCRIPTIONS,
    **keys.DESCRIPTIONS,
    "missing_token": "no bearer token in the request",
    "ambiguous_token": "the request carries more than one token (or a token in more than one place)",
    "bad_signature": "the token's signature does not verify",
    "bad_time_claim": "exp, nbf and iat must be numbers",
    "expired": "the token has expired",
    "not_yet_valid": "the token is not valid yet",
    "bad_header_value": "a claim forwarded as a header holds a forbidden character",
    "claims": "the token's claims do not grant access to this resource",
}

KEY_SOURCES = ("signingSecret", "publicKey", "jwksFile", "jwksUrl", "trustedIssuers")
OPTIONS = KEY_SOURCES + (
    "signingSecretBase64Encoded", "forwardAuthorization", "tokenKey", "tokenSource", "claims",
    "forwardHeaders", "usernameClaim", "clockSkewSeconds", "clientConfig",
)
OLD_NAMES = {"tokenQueryKey": "tokenKey"}
def cookie_values(header: Optional[str], name: str) -> List[str]:
    """Every non-empty value of the cookie ``name``; a Cookie header that is not UTF-8 has no token
    (werkzeug would raise on it). Two clients' Cookie headers joined by the server count twice."""
    if not header or name not in header:  # cheap pre-check: werkzeug keeps cookie names as written
        return []
    try:
        raw = header.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return []
    from werkzeug.http import parse_cookie  # only routes with a cookie token source pay its import (~11 MiB)
    return [value for value in parse_cookie(raw).getlist(name) if value]


TOKEN_SOURCE_FIELDS = ("header", "headerAuthScheme", "query", "cookie")
# Headers a claim must never set: they frame the request or name its target.
UNSETTABLE_HEADERS = frozenset({"Host", "Content-Length", "Content-Type", "Transfer-Encoding", "Connection",
                                "Authorization"})
_HEADER_NAME = re.compile(r"[!#$%&'*+.^`|~0-9A-Za-z-]+\Z")
_FORBIDDEN_IN_VALUE = re.compile("[\r\n\x00]")


def describe(reason: str) -> str:
    return DESCRIPTIONS.get(reason, "the token was refused")


# --- canned answers ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Refusal:
    """A prebuilt 401/403: status line, headers and body for one reason."""

    status: str
    headers: Tuple[Tuple[str, str], ...]
    body: bytes


def _build_refusal(reason: str) -> Refusal:
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
    return REFUSALS.get(reason) or _build_refusal(reason)


# --- option validation ---------------------------------------------------------------------------------

def canonical_options(options: Mapping[str, Any]) -> Dict[str, Any]:
    """Option names matched case-insensitively (as Traefik does), old names mapped; unknown ones refused."""
    known = {name.lower(): name for name in OPTIONS}
    known.update({old.lower(): new for old, new in OLD_NAMES.items()})
    result: Dict[str, Any] = {}
    for name, value in options.items():
        canonical = known.get(str(name).lower())
        if canonical is None:
            raise ConfigError(f'unknown option "{name}"')
        if canonical in result:
            raise ConfigError(f'{canonical}: given twice (as "{name}" too)')
        result[canonical] = value
    return result


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ConfigError(f"{name}: expected true or false, got {value!r}")


def _as_seconds(name: str, value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name}: expected a whole number of seconds >= 0, got {value!r}")
    return value


def _as_text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{name}: expected a non-empty string")
    return value


def _as_map(name: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name}: expected a map")
    return value


def _secret_bytes(opts: Mapping[str, Any]) -> bytes:
    secret = _as_text("signingSecret", opts["signingSecret"])
    if secret.startswith("urn:k8s:secret:"):
        raise ConfigError("signingSecret: unresolved Kubernetes Secret reference")
    if not _as_bool("signingSecretBase64Encoded", opts.get("signingSecretBase64Encoded", False)):
        return secret.encode("utf-8")
    try:
        raw = base64.b64decode(secret.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigError("signingSecret: not valid base64 (signingSecretBase64Encoded is true)") from exc
    if not raw:
        raise ConfigError("signingSecret: decodes to nothing")
    return raw


def build_key_source(opts: Mapping[str, Any]) -> keys.KeySource:
    """The one key source the options name (Hub allows a single way to validate tokens)."""
    given = [name for name in KEY_SOURCES if name in opts]
    if not given:
        raise ConfigError("no key source: set one of " + ", ".join(KEY_SOURCES))
    if len(given) > 1 and set(given) != {"jwksUrl", "trustedIssuers"}:
        raise ConfigError(f"{', '.join(given)}: set only one key source")
    if "signingSecret" in opts:
        return keys.SecretSource(_secret_bytes(opts))
    if "signingSecretBase64Encoded" in opts:
        raise ConfigError("signingSecretBase64Encoded: only meaningful with signingSecret")
    if "publicKey" in opts:
        return keys.PublicKeySource(_as_text("publicKey", opts["publicKey"]))
    if "jwksFile" in opts:
        return keys.jwks_file_source(_as_text("jwksFile", opts["jwksFile"]))
    return jwks.remote_source(opts)  # jwksUrl and/or trustedIssuers: fetched later, never here


@dataclass(frozen=True)
class TokenPlaces:
    """Where a token is looked for, in order: header, tokenKey query, tokenKey form, query, cookie."""

    header_key: str = "HTTP_AUTHORIZATION"
    scheme: Optional[str] = "bearer"          # lower-cased; None: the whole header value is the token
    token_key: Optional[str] = None
    query: Optional[str] = None
    cookie: Optional[str] = None


def environ_key(header: str) -> str:
    return "HTTP_" + header.upper().replace("-", "_")


def build_token_places(opts: Mapping[str, Any]) -> TokenPlaces:
    token_key = _as_text("tokenKey", opts["tokenKey"]) if "tokenKey" in opts else None
    source = _as_map("tokenSource", opts.get("tokenSource") or {})
    fields = {name.lower(): name for name in TOKEN_SOURCE_FIELDS}
    given: Dict[str, str] = {}
    for name, value in source.items():
        canonical = fields.get(str(name).lower())
        if canonical is None:
            raise ConfigError(f'tokenSource: unknown field "{name}"')
        given[canonical] = _as_text(f"tokenSource.{canonical}", value)
    if "header" in given:
        header = given["header"]
        if not _HEADER_NAME.match(header):
            raise ConfigError(f'tokenSource.header: "{header}" is not a header name')
        scheme = given.get("headerAuthScheme")
        return TokenPlaces(environ_key(header), scheme.strip().lower() if scheme else None, token_key,
                           given.get("query"), given.get("cookie"))
    if "headerAuthScheme" in given:
        return TokenPlaces(scheme=given["headerAuthScheme"].strip().lower(), token_key=token_key,
                           query=given.get("query"), cookie=given.get("cookie"))
    return TokenPlaces(token_key=token_key, query=given.get("query"), cookie=given.get("cookie"))


def canonical_header_name(name: str) -> str:
    """``nested-Property`` -> ``Nested-Property`` (Go's CanonicalMIMEHeaderKey, as Traefik writes them)."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


@dataclass(frozen=True)
class ForwardedClaim:
    """One ``forwardHeaders`` entry, compiled: the environ key to set and the claim getter."""

    name: str
    key: str
    get: Callable[[dict], Any]


def _compile_path(option: str, path: Any) -> Callable[[dict], Any]:
    text = _as_text(option, path)
    try:
        return compile_claim_path(text)
    except ExpressionError as exc:
        raise ConfigError(f"{option}: {exc.message}") from exc


def build_forwarded(opts: Mapping[str, Any]) -> Tuple[ForwardedClaim, ...]:
    result: Dict[str, ForwardedClaim] = {}
    for name, path in _as_map("forwardHeaders", opts.get("forwardHeaders") or {}).items():
        name = str(name)
        if not _HEADER_NAME.match(name) or "_" in name:
            raise ConfigError(f'forwardHeaders: "{name}" is not a header name (letters, digits and "-")')
        canonical = canonical_header_name(name)
        if canonical in UNSETTABLE_HEADERS:
            raise ConfigError(f'forwardHeaders: "{canonical}" cannot be set from a claim')
        if canonical in result:
            raise ConfigError(f'forwardHeaders: "{canonical}" given twice')
        result[canonical] = ForwardedClaim(canonical, environ_key(canonical),
                                           _compile_path(f"forwardHeaders.{canonical}", path))
    return tuple(result.values())


def _compile_claims_option(opts: Mapping[str, Any]) -> Optional[Callable[[dict], bool]]:
    if "claims" not in opts:
        return None
    text = _as_text("claims", opts["claims"])
    try:
        return compile_claims(text)
    except ExpressionError as exc:
        raise ExpressionError(f"claims: {exc.message}", exc.expression, exc.column) from exc


def _check_remote_only_options(opts: Mapping[str, Any]) -> None:
    if "clientConfig" in opts:
        jwks.parse_client_config(opts["clientConfig"])  # validated even where no remote key set uses it


def _header_value(text: str) -> str:
    """A claim's text as a WSGI header value: its UTF-8 bytes seen as latin-1 (PEP 3333)."""
    return text if text.isascii() else text.encode("utf-8").decode("latin-1")


def _normalised_environ_key(key: str) -> str:
    return key.upper().replace("-", "_")


# --- the middleware ------------------------------------------------------------------------------------

class JWTAuth:
    """One configured JWT middleware: ``authenticate(environ)`` and ``wrap(app)``.

        >>> auth = JWTAuth.from_config({"signingSecret": "s3cret"})
        >>> protected = auth.wrap(app)  # doctest: +SKIP
    """

    def __init__(self, *, source: keys.KeySource, places: TokenPlaces,
                 claims: Optional[Callable[[dict], bool]] = None,
                 forwarded: Tuple[ForwardedClaim, ...] = (),
                 username: Optional[Callable[[dict], Any]] = None,
                 clock_skew: int = 0, forward_authorization: bool = False) -> None:
        self.source = source
        self.places = places
        self.claims = claims
        self.forwarded = forwarded
        self.username = username
        self.clock_skew = clock_skew
        self.forward_authorization = forward_authorization
        self._allowed = source.allowed_algs
        self._scrub = frozenset(f.key for f in forwarded)
        self._verified = VerifiedTokens()  # per configuration: a reload starts empty

    @classmethod
    def from_config(cls, options: Mapping[str, Any]) -> "JWTAuth":
        """Validate manifest options (camelCase) and build everything once; ConfigError names the option."""
        opts = canonical_options(_as_map("options", options))
        _check_remote_only_options(opts)
        return cls(
            source=build_key_source(opts),
            places=build_token_places(opts),
            claims=_compile_claims_option(opts),
            forwarded=build_forwarded(opts),
            username=_compile_path("usernameClaim", opts["usernameClaim"]) if "usernameClaim" in opts else None,
            clock_skew=_as_seconds("clockSkewSeconds", opts.get("clockSkewSeconds", 0)),
            forward_authorization=_as_bool("forwardAuthorization", opts.get("forwardAuthorization", False)),
        )

    # -- step 1: find the token --------------------------------------------------------------------------

    def find_token(self, environ: dict) -> Optional[str]:
        """The request's one token, from the header, tokenKey (query, form), query or cookie.

        Every configured place is looked at: a token in two places, or twice in one (two Authorization
        headers, ``?jwt=a&jwt=b``, two cookies), is ``ambiguous_token``. Judging one while the upstream
        may read the other would let an unverified token through. Empty values are no token.
        """
        places = self.places
        found = self._header_tokens(environ.get(places.header_key))
        if places.token_key is not None:
            found += _query_values(environ, places.token_key) + _form_values(environ, places.token_key)
        if places.query is not None and places.query != places.token_key:
            found += _query_values(environ, places.query)
        if places.cookie is not None:
            found += cookie_values(environ.get("HTTP_COOKIE"), places.cookie)
        if len(found) > 1:
            raise _unauthorized("ambiguous_token")
        return found[0] if found else None

    def _header_tokens(self, value: Optional[str]) -> List[str]:
        """The header's token, as a list. Servers join repeated headers with "," (which no token holds),
        so a "," beside a token of our scheme means two headers, or one forged to look like two."""
        if not value:
            return []
        if "," in value:
            if any(map(self._scheme_token, value.split(","))):
                raise _unauthorized("ambiguous_token")
            return []
        token = self._scheme_token(value)
        return [token] if token else []

    def _scheme_token(self, value: str) -> Optional[str]:
        if self.places.scheme is None:
            return value.strip() or None
        parts = value.strip().split(None, 1)
        if len(parts) != 2 or parts[0].lower() != self.places.scheme:
            return None  # no token, or not our scheme: counts as no token
        return parts[1].strip() or None

    # -- steps 2-6: verify ------------------------------------------------------------------------------

    def verify(self, token: str, now: Optional[float] = None) -> Dict[str, Any]:
        """The payload of a token that passes every check, else ``Unauthorized``/``Forbidden``."""
        parsed = self._verified_before(token)
        if parsed is None:
            parsed = jws.parse_compact(token)
            alg = parsed.alg
            if alg not in self._allowed:
                raise _unauthorized("alg_not_allowed")
            for check in self.source.candidates_for(parsed):
                if check(parsed.signing_input, parsed.signature):
                    break
            else:
                raise _unauthorized("bad_signature")
            self._verified.remember(token, parsed, check)
        payload = _claims_copy(parsed.payload)  # whoever reads gatekeeper.claims cannot alter the cache
        self.source.check_payload(payload)  # trustedIssuers: audience
        self._check_times(payload, time.time() if now is None else now)
        if self.claims is not None and not self._claims_hold(payload):
            raise Forbidden("claims", DESCRIPTIONS["claims"])
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
            raise _unauthorized("expired")
        nbf = _time_claim(payload, "nbf")
        if nbf is not None and now < nbf - skew:
            raise _unauthorized("not_yet_valid")
        iat = _time_claim(payload, "iat")
        if iat is not None and now < iat - skew:
            raise _unauthorized("not_yet_valid")

    def _claims_hold(self, payload: Dict[str, Any]) -> bool:
        try:
            return bool(self.claims(payload))  # type: ignore[misc]
        except Exception:  # a claims function that fails must deny, never let through
            return False

    # -- step 7: pass on ---------------------------------------------------------------------------------

    def forward(self, environ: dict, claims: Dict[str, Any]) -> None:
        """Scrub client copies of forwarded headers, set them from claims, drop the token header."""
        if self._scrub:
            for key in [k for k in environ if k[:5] == "HTTP_" and _normalised_environ_key(k) in self._scrub]:
                del environ[key]
            for item in self.forwarded:
                value = item.get(claims)
                text = "" if value is MISSING else format_value(value)
                if _FORBIDDEN_IN_VALUE.search(text):
                    raise _unauthorized("bad_header_value")
                environ[item.key] = _header_value(text)
        if self.username is not None:
            user = self.username(claims)
            if user is not MISSING and user is not None:
                environ["gatekeeper.user"] = format_value(user)
        if not self.forward_authorization:
            environ.pop(self.places.header_key, None)
        environ["gatekeeper.claims"] = claims

    def authenticate(self, environ: dict) -> Dict[str, Any]:
        """Run every step on a request; the claims on success, ``AuthError`` on refusal."""
        token = self.find_token(environ)
        if token is None:
            raise _unauthorized("missing_token")
        claims = self.verify(token)
        self.forward(environ, claims)
        return claims

    def wrap(self, app: WSGIApp) -> WSGIApp:
        """``app`` behind this middleware: refused requests are answered here and never reach it."""
        def jwt_protected(environ: dict, start_response: Callable) -> Iterable[bytes]:
            try:
                self.authenticate(environ)
            except AuthError as err:
                return refuse(environ, start_response, err)
            return app(environ, start_response)
        return jwt_protected


def refuse(environ: dict, start_response: Callable, err: AuthError) -> List[bytes]:
    """Answer with the canned refusal for ``err.reason`` and note the reason for the access log."""
    environ["gatekeeper.jwt.reason"] = err.reason
    refusal = refusal_for(err.reason)
    start_response(refusal.status, list(refusal.headers))
    return [refusal.body]


def _claims_copy(payload: Dict[str, Any]) -> Dict[str, Any]:
    """A copy of the verified payload that shares no list or object with the cached one: an app that
    edits ``gatekeeper.claims["roles"]`` in place must not change what the next request's claims say.
    Flat payloads (the common case) take a plain dict copy; nesting is at most 32 deep (jsontext)."""
    for value in payload.values():
        if isinstance(value, (dict, list)):
            return _deep_copy(payload)
    return dict(payload)


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value  # str (JSONNumber included), bool, None: immutable


def _unauthorized(reason: str) -> Unauthorized:
    return Unauthorized(reason, DESCRIPTIONS[reason])


def _time_claim(payload: Mapping[str, Any], name: str) -> Optional[float]:
    if name not in payload:
        return None
    try:
        value = number_value(payload[name])
    except (TypeError, ValueError):
        raise _unauthorized("bad_time_claim") from None
    if not math.isfinite(value):
        raise _unauthorized("bad_time_claim")
    return value


def _query_values(environ: dict, name: str) -> List[str]:
    """Every non-empty value of ``name`` in the query (names percent-decoded, as upstreams read them).

    Split on "&" as Go and today's Python do; where splitting on ";" too (old Python, some frameworks)
    would find other values, the query is read two ways: ``ambiguous_token``."""
    query = environ.get("QUERY_STRING")
    if not query or not _may_name(query, name):
        return []
    values = _pairs_named(query, name)
    if ";" in query and _pairs_named(query.replace(";", "&"), name) != values:
        raise _unauthorized("ambiguous_token")
    return values


@lru_cache(maxsize=64)
def _spellings(name: str) -> "re.Pattern[str]":
    """``name`` as a query may spell it: each character as itself or percent-encoded (``j%77t``), a space
    as ``+`` too. Built once per name; searching a query with it costs ~0.3 us, unquoting it ~6 us."""
    def char(c: str) -> str:
        encoded = "".join("%" + "".join(f"[{d}{d.lower()}]" if d.isalpha() else d for d in f"{b:02X}")
                          for b in c.encode("utf-8"))
        return "(?:" + "|".join([re.escape(c), encoded] + ([r"\+"] if c == " " else [])) + ")"
    return re.compile("".join(map(char, name)))


def _may_name(query: str, name: str) -> bool:
    """Cheap pre-check (most requests carry no token in the query): ``name`` appears, maybe encoded."""
    return name in query or (("%" in query or "+" in query) and _spellings(name).search(query) is not None)


def _pairs_named(text: str, name: str) -> List[str]:
    return [value for key, value in parse_qsl(text, keep_blank_values=True) if key == name and value]


def _form_values(environ: dict, name: str) -> List[str]:
    """Every non-empty value of a field of a urlencoded body (at most 1 MiB); the body is put back so
    the upstream gets it intact."""
    media_type = (environ.get("CONTENT_TYPE") or "").split(";", 1)[0].strip().lower()
    if media_type != "application/x-www-form-urlencoded":
        return []
    try:
        length = int(environ.get("CONTENT_LENGTH") or "")
    except ValueError:
        return []
    if not 0 < length <= MAX_FORM_BYTES:
        return []
    body = _read_exactly(environ["wsgi.input"], length)
    environ["wsgi.input"] = io.BytesIO(body)
    return _pairs_named(body.decode("latin-1"), name)


def _read_exactly(stream: Any, length: int) -> bytes:
    chunks, left = [], length
    while left > 0:
        chunk = stream.read(min(left, 65536))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
