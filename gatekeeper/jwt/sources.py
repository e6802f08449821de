"""The key-source options (``signingSecret``, ``publicKey``, ``jwksFile``, ``jwksUrl``, ``trustedIssuers``)
and the one :class:`~gatekeeper.jwt.keys.KeySource` they name.

A middleware validates tokens one way only (as Traefik Hub's JWT middleware does): exactly one key source,
except that ``trustedIssuers`` may take a top-level ``jwksUrl`` as its default. Static sources come from
``keys``, remote ones from ``remote`` (no network here: remote sets fetch on first use). The options are
described in docs/jwt.md.

    >>> source = build_key_source({"signingSecret": "mysuperlongsecret"})
    >>> type(source).__name__, sorted(source.allowed_algs)
    ('SecretSource', ['HS256', 'HS384', 'HS512'])
"""
from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, FrozenSet, Mapping, Optional, Sequence, Tuple

from gatekeeper.errors import ConfigError
from gatekeeper.jwt import keys
from gatekeeper.jwt.fetch import ClientConfig, is_http_url, parse_client_config
from gatekeeper.jwt.jws import ASYMMETRIC_ALGS, ParsedToken, Verifier
from gatekeeper.jwt.refusals import unauthorized
from gatekeeper.jwt.remote import RemoteKeySet, key_set
from gatekeeper.options import pick, refuse_secret_reference, safe_url, want_bool, want_text

# The options that name where keys come from; a middleware gives one (ops/ shows which, never its value).
KEY_SOURCES = ("signingSecret", "publicKey", "jwksFile", "jwksUrl", "trustedIssuers")
# Options that only qualify a key source.
KEY_SOURCE_MODIFIERS = ("signingSecretBase64Encoded", "clientConfig")


def build_key_source(opts: Mapping[str, Any]) -> keys.KeySource:
    """The one key source the options (canonical names) name; ConfigError names the option."""
    if "clientConfig" in opts:
        parse_client_config(opts["clientConfig"])  # validated even where no remote key set uses it
    given = [name for name in KEY_SOURCES if name in opts]
    if not given:
        raise ConfigError("no key source: set one of " + ", ".join(KEY_SOURCES))
    if len(given) > 1 and set(given) != {"jwksUrl", "trustedIssuers"}:
        raise ConfigError(f"{', '.join(given)}: set only one key source")
    if "signingSecret" in opts:
        return keys.SecretSource(secret_bytes(opts))
    if "signingSecretBase64Encoded" in opts:
        raise ConfigError("signingSecretBase64Encoded: only meaningful with signingSecret")
    if "publicKey" in opts:
        return keys.PublicKeySource(want_text(opts["publicKey"], "publicKey"))
    if "jwksFile" in opts:
        return keys.jwks_file_source(want_text(opts["jwksFile"], "jwksFile"))
    return remote_source(opts)  # jwksUrl and/or trustedIssuers: fetched later, never here


def secret_bytes(opts: Mapping[str, Any]) -> bytes:
    """``signingSecret`` as key bytes: its UTF-8, or its base64 decoding with ``signingSecretBase64Encoded``."""
    secret = refuse_secret_reference(want_text(opts["signingSecret"], "signingSecret"), "signingSecret")
    if not want_bool(opts.get("signingSecretBase64Encoded", False), "signingSecretBase64Encoded"):
        return secret.encode("utf-8")
    try:
        raw = base64.b64decode(secret.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigError("signingSecret: not valid base64 (signingSecretBase64Encoded is true)") from exc
    if not raw:
        raise ConfigError("signingSecret: decodes to nothing")
    return raw


# --- remote key sets: jwksUrl and trustedIssuers ---------------------------------------------------------

class RemoteSource(keys.KeySource):
    """``jwksUrl``: one shared :class:`RemoteKeySet`; a request waits at most ``wait`` seconds for it."""

    option = "jwksUrl"

    def __init__(self, keyset: RemoteKeySet, wait: float) -> None:
        self.keyset = keyset
        self.wait = wait
        self.allowed_algs = frozenset(ASYMMETRIC_ALGS)  # the set's keys narrow it per token

    def candidates(self, alg: str, kid: Optional[str]) -> Sequence[Verifier]:
        return self.keyset.candidates(alg, kid, self.wait)


@dataclass(frozen=True)
class TrustedIssuer:
    """One ``trustedIssuers`` entry, built: its key source and the audiences it accepts (empty: any)."""

    issuer: str
    source: RemoteSource
    audiences: FrozenSet[str]


def token_audiences(payload: Mapping[str, Any]) -> Tuple[str, ...]:
    """``aud`` as a tuple of strings (a JSON number is not a string, though JSONNumber subclasses str)."""
    aud = payload.get("aud")
    if type(aud) is str:
        return (aud,)
    if isinstance(aud, list):
        return tuple(item for item in aud if type(item) is str)
    return ()


class IssuerSource(keys.KeySource):
    """``trustedIssuers``: the token's ``iss`` (exact match) picks the issuer, its key set and audiences.

    ``audience`` is any-of, as Envoy's ``audiences``: the token's ``aud`` must hold at least one of them
    (KrakenD and Oathkeeper require all of them).
    """

    option = "trustedIssuers"

    def __init__(self, issuers: Sequence[TrustedIssuer]) -> None:
        self.issuers = {entry.issuer: entry for entry in issuers}
        self.allowed_algs = frozenset(ASYMMETRIC_ALGS)

    def issuer_of(self, payload: Mapping[str, Any]) -> TrustedIssuer:
        iss = payload.get("iss")
        found = self.issuers.get(iss) if type(iss) is str else None
        if found is None:
            raise unauthorized("untrusted_issuer")
        return found

    def candidates(self, alg: str, kid: Optional[str]) -> Sequence[Verifier]:
        raise unauthorized("untrusted_issuer")  # keys depend on the token's iss: see candidates_for

    def candidates_for(self, token: ParsedToken) -> Sequence[Verifier]:
        return self.issuer_of(token.payload).source.candidates(token.alg, token.kid)

    def check_payload(self, payload: Mapping[str, Any]) -> None:
        wanted = self.issuer_of(payload).audiences
        if wanted and wanted.isdisjoint(token_audiences(payload)):
            raise unauthorized("bad_audience")


def _url_option(where: str, value: Any, *, path_allowed: bool) -> str:
    """A key set URL (or, with ``path_allowed``, a path), else a ConfigError that shows the value only as
    :func:`safe_url` does: it may come from a Kubernetes Secret, and a URL may carry a password or a key."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: expected a URL")
    text: str = refuse_secret_reference(value.strip(), where)
    if text.startswith("/"):
        if not path_allowed:
            raise ConfigError(f"{where}: a path (resolved against the token's issuer) is accepted only with "
                              "trustedIssuers, which says which issuers to trust")
        return text
    if not is_http_url(text):
        raise ConfigError(f"{where}: expected an http or https URL, got {safe_url(text)}")
    return text


def _audiences(where: str, value: Any) -> FrozenSet[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(i, str) and i for i in items):
        raise ConfigError(f"{where}: expected a string or a list of strings")
    return frozenset(items)


def _trusted_issuer(where: str, entry: Any, default_url: Optional[str], client: ClientConfig) -> TrustedIssuer:
    fields = pick(entry, ("issuer", "jwksUrl", "audience"), where)
    issuer = fields.get("issuer")
    if not isinstance(issuer, str) or not issuer.strip():
        raise ConfigError(f"{where}.issuer: expected the issuer's URL (the tokens' iss)")
    url = _url_option(f"{where}.jwksUrl", fields["jwksUrl"], path_allowed=True) if "jwksUrl" in fields \
        else default_url
    if (url is None or url.startswith("/")) and not is_http_url(issuer):
        raise ConfigError(f"{where}.issuer: {safe_url(issuer)} is not an http(s) URL, so its keys cannot be "
                          "found from it: give jwksUrl")
    if url is None:
        keyset = key_set(issuer=issuer, client=client)
    else:
        keyset = key_set(issuer.rstrip("/") + url if url.startswith("/") else url, client=client)
    audiences = _audiences(f"{where}.audience", fields["audience"]) if "audience" in fields else frozenset()
    return TrustedIssuer(issuer, RemoteSource(keyset, client.timeout), audiences)


def remote_source(opts: Mapping[str, Any]) -> keys.KeySource:
    """The source for ``jwksUrl`` and/or ``trustedIssuers`` (canonical option names); no network here.

    With ``trustedIssuers``, a top-level ``jwksUrl`` is the default for issuers that give none: a URL is
    used as is, a path is appended to each issuer.
    """
    client = parse_client_config(opts.get("clientConfig"))
    trusted = opts.get("trustedIssuers")
    if trusted is None:
        url = _url_option("jwksUrl", opts["jwksUrl"], path_allowed=False)
        return RemoteSource(key_set(url, client=client), client.timeout)
    if not isinstance(trusted, list) or not trusted:
        raise ConfigError("trustedIssuers: expected a list of {issuer, jwksUrl?, audience?}")
    default_url = _url_option("jwksUrl", opts["jwksUrl"], path_allowed=True) if "jwksUrl" in opts else None
    issuers = [_trusted_issuer(f"trustedIssuers[{n}]", entry, default_url, client) for n, entry in enumerate(trusted)]
    names = [entry.issuer for entry in issuers]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"trustedIssuers: issuer {safe_url(name)} is listed twice")
    return IssuerSource(issuers)
