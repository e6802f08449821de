"""The JWT middleware's options and verification steps (docs/jwt.md), in-process on real keys."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Dict, Optional

import pytest
from conftest import wait_until

from gatekeeper.errors import AuthError, ConfigError
from gatekeeper.jwt.auth import JWTAuth
from gatekeeper.jwt.mint import mint, new_key_pem, public_jwk, public_key_pem
from gatekeeper.jwt.tokens import MAX_FORM_BYTES

SECRET = "mysuperlongsecret"
NOW = 1_700_000_000
KINDS = ("rsa", "ec256", "ec384", "ec521", "ed25519", "ed448")
ALGS_BY_KIND = {
    "rsa": ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"),
    "ec256": ("ES256",), "ec384": ("ES384",), "ec521": ("ES512",), "ed25519": ("EdDSA",), "ed448": ("EdDSA",),
}
ASYMMETRIC_CASES = [(kind, alg) for kind in KINDS for alg in ALGS_BY_KIND[kind]]


@pytest.fixture(scope="module")
def pems() -> Dict[str, bytes]:
    """Two private keys of every kind: ``rsa`` and ``rsa-other`` (a key the middleware does not know)."""
    made = {kind: new_key_pem(kind) for kind in KINDS}
    made.update({f"{kind}-other": new_key_pem(kind) for kind in KINDS})
    return made


def outcome(auth: JWTAuth, token: str, now: float = NOW) -> str:
    """``ok`` or the refusal reason."""
    try:
        auth.verify(token, now=now)
    except AuthError as err:
        return err.reason
    return "ok"


def request_outcome(auth: JWTAuth, environ: Dict[str, Any]) -> str:
    try:
        auth.authenticate(environ)
    except AuthError as err:
        return err.reason
    return "ok"


def key_source(kind_of_source: str, pem: bytes, tmp_path: Path, **jwk_members: Any) -> Dict[str, str]:
    if kind_of_source == "publicKey":
        return {"publicKey": public_key_pem(pem)}
    jwks = json.dumps({"keys": [public_jwk(pem, **jwk_members)]})
    if kind_of_source == "jwksInline":
        return {"jwksFile": jwks}
    path = tmp_path / "jwks.json"
    path.write_text(jwks)
    return {"jwksFile": str(path)}


# --- options --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("options, reason", [
    ({}, "no key source: set one of signingSecret, publicKey, jwksFile, jwksUrl, trustedIssuers"),
    ({"signingSecret": SECRET, "foo": 1}, 'unknown option "foo"'),
    ({"signingSecret": ""}, "signingSecret: expected a non-empty string"),
    ({"signingSecret": "not base64!", "signingSecretBase64Encoded": True}, "signingSecret: not valid base64"),
    ({"signingSecret": "urn:k8s:secret:jwt:signingSecret"}, "signingSecret: unresolved Kubernetes Secret"),
    ({"publicKey": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"},
     "publicKey: not a PEM public key"),
    ({"publicKey": "hello"}, "publicKey: not a PEM public key"),
    ({"jwksFile": "{not json"}, "jwksFile: not valid JSON"),
    ({"jwksFile": '{"keys": {}}'}, "jwksFile: not a JWK Set"),
    ({"jwksFile": '{"keys": []}'}, "jwksFile: the JWK Set holds no usable signature key"),
    ({"jwksFile": '{"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]}'}, "jwksFile: key 1: "),
    ({"jwksFile": "/nonexistent/jwks.json"}, "jwksFile: cannot read /nonexistent/jwks.json"),
    ({"jwksUrl": "/keys"}, "jwksUrl: a path (resolved against the token's issuer) is accepted only with"),
    ({"trustedIssuers": [{"issuer": "https://idp.example", "aud": "x"}]}, 'trustedIssuers[0]: unknown field "aud"'),
    ({"signingSecret": SECRET, "publicKey": "x"}, "signingSecret, publicKey: set only one key source"),
    ({"signingSecret": SECRET, "forwardAuthorization": "maybe"}, "forwardAuthorization: expected true or false"),
    ({"signingSecret": SECRET, "clockSkewSeconds": -1}, "clockSkewSeconds: expected a whole number"),
    ({"signingSecret": SECRET, "tokenSource": {"form": "x"}}, 'tokenSource: unknown field "form"'),
    ({"signingSecret": SECRET, "forwardHeaders": {"Host": "sub"}}, 'forwardHeaders: "Host" cannot be set'),
    ({"signingSecret": SECRET, "forwardHeaders": {"X Bad": "sub"}}, 'forwardHeaders: "X Bad" is not a header'),
    ({"signingSecret": SECRET, "forwardHeaders": {"X-A": "a..b"}}, "forwardHeaders.X-A: empty segment"),
    ({"signingSecret": SECRET, "claims": "Equals(`grp`"}, "claims: "),
    ({"signingSecret": SECRET, "tokenKey": "t", "tokenQueryKey": "u"}, "tokenKey: given twice"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_options_are_config_errors_naming_the_option(options, reason):
    with pytest.raises(ConfigError) as caught:
        JWTAuth.from_config(options)
    assert caught.value.reason.startswith(reason)


@pytest.mark.parametrize("options", [
    {"SigningSecret": SECRET, "FORWARDAUTHORIZATION": "true", "clockskewseconds": "5"},
    {"signingSecret": "bXlzdXBlcmxvbmdzZWNyZXQ=", "signingSecretBase64Encoded": "true"},
    {"signingSecret": SECRET, "tokenQueryKey": "jwt", "clientConfig": {"timeoutSeconds": 1}},
], ids=["case-insensitive-names", "base64-secret", "old-tokenQueryKey"])
def test_accepted_option_spellings(options):
    auth = JWTAuth.from_config(options)
    assert outcome(auth, mint({"sub": "a"}, secret=SECRET)) == "ok"


def test_short_rsa_key_is_refused():
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    short = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    with pytest.raises(ConfigError, match="publicKey: RSA key of 1024 bits is too short"):
        JWTAuth.from_config({"publicKey": short.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()})


def test_private_key_given_as_public_key_is_refused(pems):
    with pytest.raises(ConfigError, match=r"publicKey: not a PEM public key \(this is a private key"):
        JWTAuth.from_config({"publicKey": pems["rsa"].decode()})


# --- signature, per algorithm family and key source -------------------------------------------------

@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
@pytest.mark.parametrize("secret_form", ["plain", "base64"])
def test_secret_source(alg, secret_form):
    options = {"signingSecret": SECRET}
    if secret_form == "base64":
        options = {"signingSecret": "AAECA/8=", "signingSecretBase64Encoded": True}
    secret = SECRET.encode() if secret_form == "plain" else b"\x00\x01\x02\x03\xff"
    auth = JWTAuth.from_config(options)
    assert outcome(auth, mint({"sub": "a"}, secret=secret, alg=alg)) == "ok"
    assert outcome(auth, mint({"sub": "a"}, secret=b"other secret", alg=alg)) == "bad_signature"
    assert outcome(auth, mint({"sub": "a"}, secret=secret, alg=alg, kid="ignored")) == "ok"


@pytest.mark.parametrize("source", ["publicKey", "jwksInline", "jwksPath"])
@pytest.mark.parametrize("kind, alg", ASYMMETRIC_CASES, ids=[f"{k}-{a}" for k, a in ASYMMETRIC_CASES])
def test_public_key_sources(pems, tmp_path, source, kind, alg):
    auth = JWTAuth.from_config(key_source(source, pems[kind], tmp_path))
    good = mint({"sub": "a"}, key_pem=pems[kind], alg=alg)
    assert outcome(auth, good) == "ok"
    assert outcome(auth, mint({"sub": "a"}, key_pem=pems[f"{kind}-other"], alg=alg)) == "bad_signature"
    head, _, sig = good.split(".")
    tampered = mint({"sub": "b"}, secret="x").split(".")[1]
    assert outcome(auth, f"{head}.{tampered}.{sig}") == "bad_signature"
    assert outcome(auth, mint({"sub": "a"}, secret=public_key_pem(pems[kind]), alg="HS256")) == "alg_not_allowed"


@pytest.mark.parametrize("kind, token_kind, alg", [
    ("rsa", "ec256", "ES256"), ("ec256", "rsa", "RS256"), ("ec256", "ec384", "ES384"),
    ("ed25519", "ec256", "ES256"), ("rsa", "ed25519", "EdDSA"),
])
def test_key_type_must_fit_the_alg(pems, tmp_path, kind, token_kind, alg):
    for source in ("publicKey", "jwksInline"):
        auth = JWTAuth.from_config(key_source(source, pems[kind], tmp_path))
        assert outcome(auth, mint({}, key_pem=pems[token_kind], alg=alg)) == "alg_not_allowed"


# --- kid selection and JWK members ---------------------------------------------------------------------

def jwks_auth(*jwks: Dict[str, Any]) -> JWTAuth:
    return JWTAuth.from_config({"jwksFile": json.dumps({"keys": list(jwks)})})


@pytest.mark.parametrize("signer, kid, want", [
    ("rsa", "a", "ok"),
    ("rsa-other", "b", "ok"),
    ("rsa-other", "a", "bad_signature"),     # kid a chosen: b's signature does not verify with it
    ("rsa", None, "ok"),                     # no kid: every key that fits is tried
    ("rsa-other", None, "ok"),
    ("rsa", "c", "unknown_kid"),
    ("rsa", "../../etc/passwd", "unknown_kid"),
    ("rsa", "' OR 1=1 --", "unknown_kid"),
])
def test_kid_selects_the_key(pems, signer, kid, want):
    auth = jwks_auth(public_jwk(pems["rsa"], kid="a"), public_jwk(pems["rsa-other"], kid="b"))
    assert outcome(auth, mint({}, key_pem=pems[signer], kid=kid)) == want


@pytest.mark.parametrize("members, alg, want", [
    ({"alg": "RS256"}, "RS256", "ok"),
    ({"alg": "RS256"}, "PS256", "alg_not_allowed"),
    ({"alg": "PS384"}, "PS384", "ok"),
    ({}, "PS512", "ok"),                               # no alg: every alg of the key type
    ({"use": "sig"}, "RS256", "ok"),
    ({"key_ops": ["verify"]}, "RS256", "ok"),
])
def test_jwk_alg_and_use(pems, members, alg, want):
    auth = jwks_auth(public_jwk(pems["rsa"], kid="k", **members), public_jwk(pems["ec256"], kid="e"))
    assert outcome(auth, mint({}, key_pem=pems["rsa"], alg=alg, kid="k")) == want


@pytest.mark.parametrize("members", [{"use": "enc"}, {"key_ops": ["encrypt"]}, {"alg": "RSA-OAEP"}],
                         ids=["use-enc", "key_ops-encrypt", "alg-RSA-OAEP"])
def test_jwk_not_for_signatures_is_ignored(pems, members):
    auth = jwks_auth(public_jwk(pems["rsa"], kid="enc", **members), public_jwk(pems["ec256"], kid="e"))
    assert outcome(auth, mint({}, key_pem=pems["rsa"], kid="enc")) == "unknown_kid"
    assert outcome(auth, mint({}, key_pem=pems["rsa"])) == "alg_not_allowed"


def test_jwk_stating_an_alg_that_does_not_fit_its_type_is_a_config_error(pems):
    with pytest.raises(ConfigError, match=r"jwksFile: key 1 \(kid 'k'\): alg ES256 does not fit a RSA key"):
        jwks_auth(public_jwk(pems["rsa"], kid="k", alg="ES256"))


def replace_file(path: Path, text: str) -> None:
    """Atomically (write aside, rename), as docs/jwt.md asks: the source sees one change, never a half."""
    aside = path.with_name(path.name + ".new")
    aside.write_text(text)
    os.replace(aside, path)


def test_jwks_file_is_reread_when_it_changes(pems, tmp_path):
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [public_jwk(pems["ec256"], kid="old")]}))
    auth = JWTAuth.from_config({"jwksFile": str(path)})
    old, new = mint({}, key_pem=pems["ec256"], kid="old"), mint({}, key_pem=pems["ec256-other"], kid="new")
    assert outcome(auth, old) == "ok"
    assert outcome(auth, new) == "unknown_kid"
    replace_file(path, "{half written")
    assert wait_until(lambda: outcome(auth, old) and auth.source.generation == 1, timeout=5)
    assert outcome(auth, old) == "no_keys"  # bad content fails closed (was: the old keys kept serving)
    replace_file(path, json.dumps({"keys": [public_jwk(pems["ec256-other"], kid="new")]}))
    assert wait_until(lambda: outcome(auth, new) and auth.source.generation == 2, timeout=5)
    assert outcome(auth, new) == "ok"
    assert outcome(auth, old) == "unknown_kid"  # a key removed from the file stops verifying


# --- exp, nbf, iat ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("claims, skew, want", [
    ({"exp": NOW + 1}, 0, "ok"),
    ({"exp": NOW}, 0, "expired"),                     # exp == now is expired
    ({"exp": NOW - 1}, 0, "expired"),
    ({"exp": NOW - 1}, 5, "ok"),
    ({"exp": NOW - 5}, 5, "expired"),
    ({"exp": NOW + 0.5}, 0, "ok"),                    # floats allowed
    ({"exp": NOW - 0.5}, 0, "expired"),
    ({"nbf": NOW}, 0, "ok"),                          # nbf == now is valid
    ({"nbf": NOW + 1}, 0, "not_yet_valid"),
    ({"nbf": NOW + 3}, 5, "ok"),
    ({"iat": NOW}, 0, "ok"),
    ({"iat": NOW + 10}, 0, "not_yet_valid"),
    ({"iat": NOW + 10}, 10, "ok"),
    ({"exp": str(NOW + 100)}, 0, "bad_time_claim"),
    ({"exp": True}, 0, "bad_time_claim"),
    ({"exp": None}, 0, "bad_time_claim"),
    ({"nbf": [NOW]}, 0, "bad_time_claim"),
    ({"iat": {"t": NOW}}, 0, "bad_time_claim"),
    ({}, 0, "ok"),
], ids=lambda v: json.dumps(v) if isinstance(v, dict) else None)
def test_time_claims(claims, skew, want):
    auth = JWTAuth.from_config({"signingSecret": SECRET, "clockSkewSeconds": skew})
    assert outcome(auth, mint(claims, secret=SECRET)) == want


def test_huge_exponent_exp_is_not_a_usable_number():
    from gatekeeper.jwt.mint import sign_compact
    auth = JWTAuth.from_config({"signingSecret": SECRET})
    token = sign_compact({"alg": "HS256"}, '{"exp": 1e999}', alg="HS256", secret=SECRET)
    assert outcome(auth, token) == "bad_time_claim"


# --- token extraction ------------------------------------------------------------------------------------

def environ(token: Optional[str] = None, header: str = "Bearer", query: str = "", **extra: Any) -> Dict[str, Any]:
    env: Dict[str, Any] = {"REQUEST_METHOD": "GET", "QUERY_STRING": query, "wsgi.input": io.BytesIO(b"")}
    if token is not None:
        env["HTTP_AUTHORIZATION"] = f"{header} {token}".strip()
    env.update(extra)
    return env


GOOD = mint({"sub": "alice"}, secret=SECRET)
BAD = mint({"sub": "mallory"}, secret="wrong")


@pytest.mark.parametrize("options, env, want", [
    pytest.param({}, environ(GOOD), "ok", id="bearer"),
    pytest.param({}, environ(GOOD, header="bearer"), "ok", id="scheme-lower"),
    pytest.param({}, environ(GOOD, header="BEARER"), "ok", id="scheme-upper"),
    pytest.param({}, environ(GOOD, header=""), "missing_token", id="no-scheme-no-token"),
    pytest.param({}, environ(GOOD, header="Basic"), "missing_token", id="other-scheme-no-token"),
    pytest.param({}, environ("", header="Bearer"), "missing_token", id="empty-bearer"),
    pytest.param({}, environ(), "missing_token", id="nothing"),
    pytest.param({}, environ(query=f"token={GOOD}"), "missing_token", id="query-unread-without-tokenKey"),
    pytest.param({"tokenKey": "token"}, environ(query=f"a=1&token={GOOD}"), "ok", id="tokenKey-query"),
    pytest.param({"tokenQueryKey": "token"}, environ(query=f"token={GOOD}"), "ok", id="old-name"),
    pytest.param({"tokenKey": "token"}, environ(GOOD, header="Basic", query=f"token={GOOD}"), "ok",
                 id="other-scheme-header-then-query"),
    pytest.param({"tokenKey": "token"}, environ(query="token="), "missing_token", id="empty-query-value"),
    pytest.param({"tokenKey": "token"}, environ(GOOD, query="token="), "ok", id="empty-query-value-is-no-token"),
    pytest.param({"tokenSource": {"header": "X-Token"}}, environ(HTTP_X_TOKEN=GOOD), "ok", id="own-header"),
    pytest.param({"tokenSource": {"header": "X-Token"}}, environ(GOOD), "missing_token",
                 id="own-header-replaces-authorization"),
    pytest.param({"tokenSource": {"header": "X-Auth", "headerAuthScheme": "JWT"}},
                 environ(HTTP_X_AUTH=f"jwt {GOOD}"), "ok", id="own-header-own-scheme"),
    pytest.param({"tokenSource": {"header": "X-Auth", "headerAuthScheme": "JWT"}},
                 environ(HTTP_X_AUTH=GOOD), "missing_token", id="own-header-scheme-missing"),
    pytest.param({"tokenSource": {"query": "access_token"}}, environ(query=f"access_token={GOOD}"), "ok",
                 id="source-query"),
    pytest.param({"tokenSource": {"cookie": "jwt"}}, environ(HTTP_COOKIE=f"a=b; jwt={GOOD}"), "ok", id="cookie"),
    pytest.param({"tokenKey": "jwt", "tokenSource": {"query": "jwt"}}, environ(query=f"jwt={GOOD}"), "ok",
                 id="tokenKey-and-query-same-name-count-once"),
    # a token in two places is refused, whichever of them holds the good one (was: the header's judged)
    pytest.param({"tokenKey": "token"}, environ(BAD, query=f"token={GOOD}"), "ambiguous_token",
                 id="header-and-query"),
    pytest.param({"tokenKey": "token"}, environ(GOOD, query=f"token={BAD}"), "ambiguous_token",
                 id="good-header-and-query"),
    pytest.param({"tokenSource": {"cookie": "jwt"}}, environ(GOOD, HTTP_COOKIE=f"jwt={BAD}"), "ambiguous_token",
                 id="header-and-cookie"),
    pytest.param({"tokenKey": "t", "tokenSource": {"cookie": "jwt"}},
                 environ(query=f"t={BAD}", HTTP_COOKIE=f"jwt={GOOD}"), "ambiguous_token", id="query-and-cookie"),
])
def test_token_is_found_in_order(options, env, want):
    auth = JWTAuth.from_config({"signingSecret": SECRET, **options})
    assert request_outcome(auth, env) == want


@pytest.mark.parametrize("content_type, want", [
    ("application/x-www-form-urlencoded", "ok"),
    ("application/x-www-form-urlencoded; charset=utf-8", "ok"),
    ("text/plain", "missing_token"),
])
def test_token_key_in_a_form_body_keeps_the_body(content_type, want):
    body = f"name=caf%C3%A9&token={GOOD}&x=1".encode()
    auth = JWTAuth.from_config({"signingSecret": SECRET, "tokenKey": "token"})
    env = environ(REQUEST_METHOD="POST", CONTENT_TYPE=content_type, CONTENT_LENGTH=str(len(body)),
                  **{"wsgi.input": io.BytesIO(body)})
    assert request_outcome(auth, env) == want
    assert env["wsgi.input"].read() == body
    assert env["CONTENT_LENGTH"] == str(len(body))


@pytest.mark.parametrize("framing, header, want", [
    ("chunked", True, "ambiguous_token"), ("over-1MiB", True, "ambiguous_token"),
    ("chunked", False, "missing_token"), ("small", True, "ok"),
])
def test_a_form_body_not_read_beside_another_token_is_ambiguous(framing, header, want):
    """tokenKey: the gateway reads a urlencoded body of at most 1 MiB with a Content-Length. One it does not
    read (chunked, or longer) may hold a second token: with a header token beside it, the header's was
    judged while the upstream read the form's (an alg-none token for admin)."""
    body = b"pad=" + b"a" * (MAX_FORM_BYTES if framing == "over-1MiB" else 10) + b"&token=" + BAD.encode()
    if framing == "small":
        body = b"x=1"
    framed = {"HTTP_TRANSFER_ENCODING": "chunked"} if framing == "chunked" else {"CONTENT_LENGTH": str(len(body))}
    env = environ(GOOD if header else None, REQUEST_METHOD="POST", CONTENT_TYPE="application/x-www-form-urlencoded",
                  **framed, **{"wsgi.input": io.BytesIO(body)})
    auth = JWTAuth.from_config({"signingSecret": SECRET, "tokenKey": "token"})
    assert request_outcome(auth, env) == want


# --- claims, the Traefik Hub examples -------------------------------------------------------------------

HUB = {"signingSecret": SECRET, "claims": "Equals(`grp`, `admin`)", "forwardHeaders": {"Group": "grp"}}


@pytest.mark.parametrize("options, claims, secret, want", [
    (HUB, {"grp": "admin", "exp": NOW + 3600}, SECRET, "ok"),
    (HUB, {"grp": "admin", "exp": NOW - 60}, SECRET, "expired"),
    (HUB, {"sub": "alice"}, SECRET, "claims"),                          # missing group: 403
    (HUB, {"grp": "users"}, SECRET, "claims"),
    ({**HUB, "claims": "Equals(`user.name`, `John Snow`)"}, {"user": {"name": "John Snow"}}, SECRET, "ok"),
    ({**HUB, "claims": "Equals(`user.name`, `John Snow`)"}, {"user": {"name": "Arya"}}, SECRET, "claims"),
    (HUB, {"grp": "admin", "nbf": NOW + 60}, SECRET, "not_yet_valid"),
    (HUB, {"grp": "admin"}, "not the secret", "bad_signature"),
], ids=["valid", "expired", "missing-group", "wrong-group", "nested-claim", "nested-claim-mismatch",
        "not-yet-valid", "wrong-secret"])
def test_traefik_hub_examples(options, claims, secret, want):
    assert outcome(JWTAuth.from_config(options), mint(claims, secret=secret)) == want


VECTORS = json.loads((Path(__file__).resolve().parent / "data" / "claims-docs.json").read_text())


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["expr"])
def test_documented_claims_examples(case):
    auth = JWTAuth.from_config({"signingSecret": SECRET, "claims": case["expr"]})
    assert (outcome(auth, mint(VECTORS["claims"], secret=SECRET)) == "ok") is case["want"]


# --- forwardHeaders, usernameClaim, Authorization ------------------------------------------------------

@pytest.mark.parametrize("raw_claim, header", [
    ('"admin"', "admin"),
    ("42", "42"),
    ("1.50", "1.50"),                      # numbers as written in the token
    ("1e3", "1e3"),
    ("true", "true"),
    ("false", "false"),
    ('["a", 1, true]', "a, 1, true"),
    ("[]", ""),
    ('{"a": 1, "b": [1, 2]}', '{"a":1,"b":[1,2]}'),
    ('"caf\\u00e9"', "café".encode().decode("latin-1")),  # UTF-8 bytes, latin-1 in the WSGI environ
    (None, ""),                            # missing claim: empty header
])
def test_forward_header_values(raw_claim, header):
    from gatekeeper.jwt.mint import sign_compact
    payload = "{}" if raw_claim is None else '{"v": %s}' % raw_claim
    auth = JWTAuth.from_config({"signingSecret": SECRET, "forwardHeaders": {"x-claim-VALUE": "v"}})
    env = environ(sign_compact({"alg": "HS256"}, payload, alg="HS256", secret=SECRET))
    assert request_outcome(auth, env) == "ok"
    assert env["HTTP_X_CLAIM_VALUE"] == header


@pytest.mark.parametrize("value", ["a\r\nX-Admin: 1", "a\nb", "a\rb", "a\x00b", ["ok", "x\ny"]],
                         ids=["crlf", "lf", "cr", "nul", "in-array"])
def test_forward_header_refuses_line_breaks_and_nul(value):
    auth = JWTAuth.from_config({"signingSecret": SECRET, "forwardHeaders": {"X-Group": "grp"}})
    env = environ(mint({"grp": value}, secret=SECRET))
    assert request_outcome(auth, env) == "bad_header_value"


def test_client_copies_of_forwarded_headers_are_removed():
    auth = JWTAuth.from_config({"signingSecret": SECRET, "forwardHeaders": {"X-Group": "grp", "X-Team": "team"}})
    env = environ(mint({"grp": "users"}, secret=SECRET), HTTP_X_GROUP="admin", **{
        "HTTP_x_group": "admin", "HTTP_X-GROUP": "admin", "HTTP_X_Group": "admin", "HTTP_X_TEAM": "ops",
        "HTTP_X_OTHER": "kept"})
    assert request_outcome(auth, env) == "ok"
    http = {k: v for k, v in env.items() if k.startswith("HTTP_")}
    assert http == {"HTTP_X_GROUP": "users", "HTTP_X_TEAM": "", "HTTP_X_OTHER": "kept"}


@pytest.mark.parametrize("options, kept", [({}, False), ({"forwardAuthorization": True}, True),
                                           ({"forwardAuthorization": "false"}, False)])
def test_authorization_removed_unless_forwarded(options, kept):
    auth = JWTAuth.from_config({"signingSecret": SECRET, **options})
    env = environ(GOOD)
    assert request_outcome(auth, env) == "ok"
    assert ("HTTP_AUTHORIZATION" in env) is kept


def test_claims_and_user_in_the_environ():
    auth = JWTAuth.from_config({"signingSecret": SECRET, "usernameClaim": "user.name"})
    env = environ(mint({"user": {"name": "jsnow"}, "n": 1}, secret=SECRET))
    assert request_outcome(auth, env) == "ok"
    assert env["gatekeeper.user"] == "jsnow"
    assert env["gatekeeper.claims"] == {"user": {"name": "jsnow"}, "n": "1"}


# --- answers ---------------------------------------------------------------------------------------------

def call(auth: JWTAuth, env: Dict[str, Any]):
    seen = {}

    def start_response(status, headers):
        seen.update(status=status, headers=dict(headers))

    def app(environ, start_response):
        start_response("200 OK", [])
        return [b"upstream"]

    body = b"".join(auth.wrap(app)(env, start_response))
    return seen["status"], seen["headers"], body


@pytest.mark.parametrize("env_token, claims, status, challenge, reason", [
    (None, None, "401 Unauthorized", 'Bearer realm="gatekeeper"', "missing_token"),
    ("expired", None, "401 Unauthorized",
     'Bearer realm="gatekeeper", error="invalid_token", error_description="the token has expired"', "expired"),
    ("garbage", None, "401 Unauthorized", 'Bearer realm="gatekeeper", error="invalid_token", '
     'error_description="the token is not a well-formed signed JWT"', "malformed"),
    ("good", "Equals(`grp`, `admin`)", "403 Forbidden", 'Bearer error="insufficient_scope"', "claims"),
])
def test_refusals(env_token, claims, status, challenge, reason):
    token = {"expired": mint({"exp": 1}, secret=SECRET), "garbage": "abc.def", "good": GOOD}.get(env_token)
    options = {"signingSecret": SECRET, **({"claims": claims} if claims else {})}
    env = environ(token)
    got_status, headers, body = call(JWTAuth.from_config(options), env)
    assert (got_status, headers["WWW-Authenticate"]) == (status, challenge)
    assert env["gatekeeper.jwt.reason"] == reason
    document = json.loads(body)
    assert set(document) == {"error", "error_description"}
    assert headers["Content-Length"] == str(len(body)) and headers["Content-Type"] == "application/json"
    if token:
        assert token not in body.decode() and token.split(".")[0] not in body.decode()


def test_success_reaches_the_app():
    status, _, body = call(JWTAuth.from_config({"signingSecret": SECRET}), environ(GOOD))
    assert (status, body) == ("200 OK", b"upstream")
