"""Remote key sets (docs/jwt.md "Remote key sets"): a real identity provider on 127.0.0.1 whose keys,
status, delay and Cache-Control the test controls, and whose hits it counts."""
from __future__ import annotations

import json
import logging
import shutil
import ssl
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import gevent
import gevent.pool
import pytest
import requests
from conftest import RunningServer, wait_until

from gatekeeper.app import Gateway
from gatekeeper.cli.main import main as cli_main
from gatekeeper.config.compile import compile_config
from gatekeeper.config.manifests import read_dir
from gatekeeper.errors import AuthError, ConfigError
from gatekeeper.jwt import fetch
from gatekeeper.jwt import remote as jwks
from gatekeeper.jwt.auth import JWTAuth
from gatekeeper.jwt.jws import b64url_encode
from gatekeeper.jwt.middleware import JWTMiddleware
from gatekeeper.jwt.mint import mint, new_key_pem, public_jwk
from gatekeeper.jwt.refusals import DESCRIPTIONS
from gatekeeper.ops.echo import named_echo_app
from gatekeeper.server import make_server
from gatekeeper.server.listen import listen_socket

DISCOVERY = "/.well-known/openid-configuration"
SEED = Path(__file__).resolve().parent / "data" / "seed"  # verbatim copy of shared/seed's YAML
FIGURES: Dict[str, Any] = {}  # printed at the end of the module (pytest -s) for the report


class IdP:
    """A controllable identity provider: its OpenID discovery document, and its JWKS at any other path."""

    def __init__(self, *keys: Dict[str, Any], cache_control: Optional[str] = None) -> None:
        self.keys = list(keys)
        self.status = 200
        self.delay = 0.0
        self.cache_control = cache_control
        self.garbage = False
        self.issuer = ""                       # its URL, once served
        self.claimed_issuer: Optional[str] = None  # set: the discovery document names this issuer instead
        self.hits: List[Tuple[str, float]] = []

    def fetches(self, path: str = "/keys") -> int:
        return sum(1 for hit, _ in self.hits if hit == path)

    def times(self, path: str = "/keys") -> List[float]:
        return [at for hit, at in self.hits if hit == path]

    def __call__(self, environ: dict, start_response: Any) -> List[bytes]:
        path = environ["PATH_INFO"]
        self.hits.append((path, time.monotonic()))
        if self.delay:
            gevent.sleep(self.delay)
        if path == DISCOVERY:
            body = json.dumps({"issuer": self.claimed_issuer or self.issuer, "jwks_uri": self.issuer + "/keys"})
        else:
            body = '{"keys": [{"kty": "RSA"' if self.garbage else json.dumps({"keys": self.keys})
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        if self.cache_control:
            headers.append(("Cache-Control", self.cache_control))
        start_response(f"{self.status} Status", headers)
        return [body.encode()]


@pytest.fixture(scope="module", autouse=True)
def print_figures():
    """The figures gathered by the tests, printed at the end of the module (visible with ``pytest -s``)."""
    yield
    for name, value in FIGURES.items():
        print(f"FIGURE {name}: {value}")


@pytest.fixture(autouse=True)
def fresh_key_sets(monkeypatch):
    """A registry of its own per test, and retries that do not wait half a second."""
    jwks.forget_all()
    monkeypatch.setattr(jwks, "RETRY_BACKOFF", 0.01)
    monkeypatch.setattr(jwks, "MAX_BACKOFF", 0.02)
    yield
    jwks.forget_all()


@pytest.fixture(scope="module")
def pems() -> Dict[str, bytes]:
    return {name: new_key_pem("ec256") for name in ("a", "b", "c")}


def jwk(pem: bytes, kid: str, **members: Any) -> Dict[str, Any]:
    return public_jwk(pem, **{"kid": kid, "alg": "ES256", "use": "sig", **members})


def token(pem: bytes, kid: Optional[str], **claims: Any) -> str:
    return mint(claims, key_pem=pem, kid=kid)


def serve_idp(wsgi_server, idp: IdP, **kwargs: Any) -> RunningServer:
    server = wsgi_server(idp, **kwargs)
    idp.issuer = server.url if "ssl_context" not in kwargs else f"https://127.0.0.1:{server.port}"
    return server


def outcome(auth: JWTAuth, jwt: str) -> str:
    try:
        auth.verify(jwt)
    except AuthError as err:
        return err.reason
    return "ok"


def bearer(jwt: str) -> Dict[str, str]:
    return {"Authorization": f"Bearer {jwt}"}


def remote_auth(url: str, **options: Any) -> JWTAuth:
    return JWTAuth.from_config({"jwksUrl": url, **options})


# --- rotation ------------------------------------------------------------------------------------------

def test_rotation_new_kid_after_one_fetch_old_kept_while_published_removed_after_refresh(wsgi_server, pems):
    idp = IdP(jwk(pems["a"], "a"))
    serve_idp(wsgi_server, idp)
    app = wsgi_server(JWTMiddleware.from_config(named_echo_app("api"), {"jwksUrl": idp.issuer + "/keys"}))
    old, new = bearer(token(pems["a"], "a")), bearer(token(pems["b"], "b"))
    assert requests.get(app.url, headers=old, timeout=5).status_code == 200
    assert idp.fetches() == 1

    idp.keys = [jwk(pems["a"], "a"), jwk(pems["b"], "b")]       # the provider publishes a new key
    started = time.perf_counter()
    answer = requests.get(app.url, headers=new, timeout=5)
    FIGURES["latency of a request that triggers a refresh (ms)"] = round((time.perf_counter() - started) * 1000, 2)
    assert (answer.status_code, idp.fetches()) == (200, 2)
    assert [requests.get(app.url, headers=h, timeout=5).status_code for h in (old, new)] == [200, 200]
    assert idp.fetches() == 2

    idp.keys = [jwk(pems["b"], "b")]                            # ... and retires the old one
    keyset = jwks.key_sets()[0]
    keyset.refresh().done.wait(5)
    answers = [requests.get(app.url, headers=h, timeout=5) for h in (old, new)]
    assert [a.status_code for a in answers] == [401, 200]
    assert "no key matches the token's kid" in answers[0].headers["WWW-Authenticate"]
    assert idp.fetches() == 3  # the old kid, now unknown, did not refetch within 10 s of the last kid refresh
    FIGURES["rotation fetches"] = idp.fetches()


def test_random_kids_burst_costs_at_most_one_fetch_and_valid_tokens_are_served_meanwhile(wsgi_server, pems):
    idp = IdP(jwk(pems["a"], "a"))
    serve_idp(wsgi_server, idp)
    app = wsgi_server(JWTMiddleware.from_config(named_echo_app("api"), {"jwksUrl": idp.issuer + "/keys"}))
    good = bearer(token(pems["a"], "a"))
    assert requests.get(app.url, headers=good, timeout=5).status_code == 200
    idp.delay = 0.3  # the refresh the burst triggers stays in flight a while
    forged = [bearer(token(pems["b"], uuid.uuid4().hex)) for _ in range(200)]

    started = time.monotonic()
    burst = gevent.spawn(lambda: gevent.pool.Pool(50).map(
        lambda headers: requests.get(app.url, headers=headers, timeout=5).status_code, forged))
    assert wait_until(lambda: idp.fetches() == 2, timeout=2)   # the refresh is in flight
    good_started = time.perf_counter()
    good_answer = requests.get(app.url, headers=good, timeout=5)
    good_ms = (time.perf_counter() - good_started) * 1000
    statuses = burst.get(timeout=5)
    elapsed = time.monotonic() - started

    assert statuses == [401] * 200 and elapsed < 2.0
    assert idp.fetches() - 1 <= 1
    assert good_answer.status_code == 200 and good_ms < idp.delay * 1000
    FIGURES["burst: 200 random kids, fetches"] = idp.fetches() - 1
    FIGURES["burst: seconds for 200 requests"] = round(elapsed, 3)
    FIGURES["burst: valid token latency during the refresh (ms)"] = round(good_ms, 2)


def test_concurrent_requests_on_a_cold_set_share_one_fetch(wsgi_server, pems):
    idp = IdP(jwk(pems["a"], "a"))
    idp.delay = 0.2
    serve_idp(wsgi_server, idp)
    app = wsgi_server(JWTMiddleware.from_config(named_echo_app("api"), {"jwksUrl": idp.issuer + "/keys"}))
    good = bearer(token(pems["a"], "a"))
    statuses = gevent.pool.Pool(20).map(lambda _: requests.get(app.url, headers=good, timeout=5).status_code,
                                        range(20))
    assert (statuses, idp.fetches()) == ([200] * 20, 1)
    FIGURES["cold start: 20 concurrent requests, fetches"] = idp.fetches()


@pytest.mark.parametrize("alg", ["HS256", "none"])
def test_a_remote_set_never_accepts_hmac_or_none(wsgi_server, pems, alg):
    idp = IdP(jwk(pems["a"], "a"))
    serve_idp(wsgi_server, idp)
    auth = remote_auth(idp.issuer + "/keys")
    if alg == "HS256":  # the published key's JSON used as an HMAC secret
        forged = mint({}, secret=json.dumps(idp.keys[0]), alg="HS256", kid="a")
    else:
        forged = b64url_encode(b'{"alg":"none","kid":"a"}') + ".e30."
    assert outcome(auth, forged) == "alg_not_allowed"
    assert outcome(auth, token(pems["a"], "a")) == "ok"


# --- failures: stale-if-error, cold start ----------------------------------------------------------------

def _break(idp: IdP, server: RunningServer, how: str) -> None:
    if how == "refused":
        server.stop()
    elif how == "slow":
        idp.delay = 1.0
    elif how == "500":
        idp.status = 500
    else:
        idp.garbage = True


@pytest.mark.parametrize("how", ["refused", "slow", "500", "garbage"])
def test_cached_keys_keep_serving_when_the_provider_fails(wsgi_server, pems, how, caplog):
    idp = IdP(jwk(pems["a"], "a"))
    server = serve_idp(wsgi_server, idp)
    auth = remote_auth(idp.issuer + "/keys", clientConfig={"timeoutSeconds": 0.3, "maxRetries": 2})
    good = token(pems["a"], "a")
    assert outcome(auth, good) == "ok"
    keyset = auth.source.keyset
    _break(idp, server, how)

    with caplog.at_level(logging.WARNING, logger="gatekeeper.jwks"):
        keyset.refresh().done.wait(5)
    status = keyset.status()
    assert outcome(auth, good) == "ok"
    assert (status["fetches"], status["failures"], status["keys"], status["stale"]) == (4, 3, 1, True)
    assert len([r for r in caplog.records if r.name == "gatekeeper.jwks"]) == 1  # once per failure streak
    started = time.monotonic()
    assert outcome(auth, token(pems["b"], "b")) == "unknown_kid"  # refresh attempt bounded by the timeout
    assert time.monotonic() - started < 0.3 + 0.2
    assert outcome(auth, good) == "ok"
    FIGURES[f"provider {how}: last_error"] = status["last_error"]


def test_cold_start_with_the_provider_down_refuses_within_the_timeout_then_recovers(wsgi_server, free_port,
                                                                                    pems, monkeypatch):
    monkeypatch.setattr(jwks, "FAILURE_RETRY", 0.2)
    url = f"http://127.0.0.1:{free_port}/keys"
    app = wsgi_server(JWTMiddleware.from_config(named_echo_app("api"),
                                                {"jwksUrl": url, "clientConfig": {"timeoutSeconds": 0.5}}))
    good = bearer(token(pems["a"], "a"))
    started = time.monotonic()
    refused = requests.get(app.url, headers=good, timeout=5)
    assert time.monotonic() - started < 0.5 + 0.3
    assert refused.status_code == 401
    assert refused.json()["error_description"].startswith("the key set is unavailable")

    idp = IdP(jwk(pems["a"], "a"))
    provider = make_server(listen_socket("127.0.0.1", free_port), idp)   # the provider comes back
    provider.start()
    try:
        keyset = jwks.key_sets()[0]
        assert wait_until(lambda: keyset.status()["keys"] == 1, timeout=3)   # no request needed
        assert requests.get(app.url, headers=good, timeout=5).status_code == 200
    finally:
        provider.stop(timeout=1)


def test_a_set_of_unusable_keys_is_a_failure_and_unusable_keys_are_skipped(wsgi_server, pems):
    rsa_pem = new_key_pem("rsa")
    idp = IdP({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "kid": "broken"},
              jwk(pems["c"], "enc", use="enc"),
              public_jwk(rsa_pem, kid="mismatch", alg="ES256"),
              jwk(pems["a"], "a"),
              public_jwk(rsa_pem, kid="rs", alg="RS256"))
    serve_idp(wsgi_server, idp)
    auth = remote_auth(idp.issuer + "/keys")
    assert outcome(auth, token(pems["a"], "a")) == "ok"
    assert outcome(auth, mint({}, key_pem=rsa_pem, kid="rs", alg="RS256")) == "ok"
    assert outcome(auth, mint({}, key_pem=rsa_pem, kid="rs", alg="PS256")) == "alg_not_allowed"  # JWK alg
    assert outcome(auth, token(pems["c"], "enc")) == "unknown_kid"
    assert auth.source.keyset.status()["keys"] == 2

    idp.keys = [jwk(pems["c"], "enc", use="enc")]            # nothing usable: keep what we had
    auth.source.keyset.refresh().done.wait(5)
    assert outcome(auth, token(pems["a"], "a")) == "ok"
    assert "no usable signature key" in auth.source.keyset.status()["last_error"]


# --- cache lifetime ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("headers, seconds", [
    ({}, 300),
    ({"Cache-Control": "public, max-age=120"}, 120),
    ({"Cache-Control": "max-age=5"}, 30),
    ({"Cache-Control": "max-age=99999"}, 3600),
    ({"Cache-Control": "no-store"}, 30),
    ({"Expires": "Tue, 14 Nov 2023 22:23:20 GMT", "Date": "Tue, 14 Nov 2023 22:13:20 GMT"}, 600),
    ({"Expires": "0"}, 30),
], ids=["absent-5min", "max-age", "clamped-up", "clamped-down", "no-store", "expires-minus-date", "bad-expires"])
def test_cache_lifetime_uses_the_spec_bounds(headers, seconds):
    assert (fetch.MIN_TTL, fetch.MAX_TTL, fetch.DEFAULT_TTL, jwks.UNKNOWN_KID_INTERVAL) == (30, 3600, 300, 10)
    assert fetch.cache_lifetime(headers) == seconds


@pytest.mark.parametrize("cache_control, lifetime", [
    ("max-age=0", 0.3), ("max-age=1", 1.0), ("max-age=3600", 1.2), (None, 0.6),
], ids=["clamped-to-min", "honoured", "clamped-to-max", "absent"])
def test_background_refresh_before_expiry_follows_max_age(wsgi_server, pems, monkeypatch, cache_control, lifetime):
    """Bounds lowered to [0.3 s, 1.2 s] and the default to 0.6 s; the refresher fetches at 90% of the life."""
    for name, value in (("MIN_TTL", 0.3), ("MAX_TTL", 1.2), ("DEFAULT_TTL", 0.6)):
        monkeypatch.setattr(fetch, name, value)
    idp = IdP(jwk(pems["a"], "a"), cache_control=cache_control)
    serve_idp(wsgi_server, idp)
    auth = remote_auth(idp.issuer + "/keys")
    assert outcome(auth, token(pems["a"], "a")) == "ok"
    assert wait_until(lambda: idp.fetches() >= 2, timeout=3)
    first, second = idp.times()[:2]
    assert lifetime * 0.9 - 0.05 <= second - first <= lifetime + 0.3
    assert outcome(auth, token(pems["a"], "a")) == "ok"


# --- sharing -----------------------------------------------------------------------------------------------

def test_key_sets_are_shared_by_url_and_tls_and_survive_a_rebuild(wsgi_server, pems):
    idp = IdP(jwk(pems["a"], "a"))
    serve_idp(wsgi_server, idp)
    url = idp.issuer + "/keys"
    first = remote_auth(url)
    assert outcome(first, token(pems["a"], "a")) == "ok"
    rebuilt = remote_auth(url, clientConfig={"timeoutSeconds": 2})  # a reload building it anew
    other_tls = remote_auth(url, clientConfig={"tls": {"insecureSkipVerify": True}})
    assert rebuilt.source.keyset is first.source.keyset
    assert other_tls.source.keyset is not first.source.keyset
    assert outcome(rebuilt, token(pems["a"], "a")) == "ok" and idp.fetches() == 1
    assert len(jwks.key_sets()) == 2


# --- trustedIssuers ---------------------------------------------------------------------------------------

@pytest.fixture
def two_issuers(wsgi_server, pems):
    """Issuers A and B, each with its own key, both trusted on one route (B wants audience api or other)."""
    idps = {name: IdP(jwk(pems[name], name)) for name in ("a", "b")}
    for idp in idps.values():
        serve_idp(wsgi_server, idp)
    options = {"trustedIssuers": [{"issuer": idps["a"].issuer},
                                  {"issuer": idps["b"].issuer, "audience": ["api", "other"]}]}
    app = wsgi_server(JWTMiddleware.from_config(named_echo_app("api"), options))
    return app, idps


@pytest.mark.parametrize("iss, key, claims, expected", [
    ("a", "a", {}, "ok"),
    ("b", "b", {"aud": "api"}, "ok"),
    ("b", "b", {"aud": ["elsewhere", "other"]}, "ok"),
    ("b", "b", {"aud": "elsewhere"}, "bad_audience"),
    ("b", "b", {"aud": ["x", "y"]}, "bad_audience"),
    ("b", "b", {}, "bad_audience"),
    ("a", "b", {}, "unknown_kid"),            # A's iss, B's key and kid: A's set has no such key
    ("b", "a", {"aud": "api"}, "unknown_kid"),
    ("https://evil.example", "a", {}, "untrusted_issuer"),
    (None, "a", {}, "untrusted_issuer"),
], ids=["A", "B-aud", "B-aud-any-of", "B-wrong-aud", "B-no-common-aud", "B-no-aud", "A-signed-by-B",
        "B-signed-by-A", "unlisted-issuer", "no-iss"])
def test_two_issuers_on_one_route_found_by_discovery(two_issuers, pems, iss, key, claims, expected):
    app, idps = two_issuers
    if iss in idps:
        claims = {"iss": idps[iss].issuer, **claims}
    elif iss is not None:
        claims = {"iss": iss, **claims}
    answer = requests.get(app.url, headers=bearer(token(pems[key], key, **claims)), timeout=5)
    got = "ok" if answer.status_code == 200 else answer.json()["error_description"]
    assert got == ("ok" if expected == "ok" else DESCRIPTIONS[expected])
    assert all(idp.fetches(DISCOVERY) <= 1 for idp in idps.values())


def test_issuer_a_with_b_kid_signed_by_b_is_refused(two_issuers, pems):
    app, idps = two_issuers
    forged = mint({"iss": idps["a"].issuer}, key_pem=pems["b"], kid="a")   # A's kid, B's key
    answer = requests.get(app.url, headers=bearer(forged), timeout=5)
    assert answer.status_code == 401 and "signature does not verify" in answer.json()["error_description"]


@pytest.mark.parametrize("entry, expected", [
    ({"jwksUrl": "/keys"}, "ok"),                                   # a path: resolved against the issuer
    ({"jwksUrl": "{issuer}/keys"}, "ok"),
    ({"claimed": "https://other.example"}, "no_keys"),              # discovery names another issuer
], ids=["path", "url", "discovery-issuer-mismatch"])
def test_issuer_key_set_location(wsgi_server, pems, entry, expected):
    idp = IdP(jwk(pems["a"], "a"))
    serve_idp(wsgi_server, idp)
    idp.claimed_issuer = entry.get("claimed")
    config = {"issuer": idp.issuer, **{k: v.format(issuer=idp.issuer) for k, v in entry.items() if k != "claimed"}}
    auth = JWTAuth.from_config({"trustedIssuers": [config], "clientConfig": {"maxRetries": 0}})
    assert outcome(auth, token(pems["a"], "a", iss=idp.issuer)) == expected
    assert idp.fetches(DISCOVERY) == (0 if "jwksUrl" in entry else 1)
    if expected != "ok":
        assert "names issuer 'https://other.example'" in auth.source.issuers[idp.issuer].source.keyset.last_error


# --- TLS towards the key server -----------------------------------------------------------------------------

@pytest.mark.parametrize("tls, client_cert_required, expected", [
    ({"ca": "ca"}, False, "ok"),
    ({"ca": "inline ca"}, False, "ok"),
    ({}, False, "no_keys"),
    ({"insecureSkipVerify": True}, False, "ok"),
    ({"ca": "ca", "cert": "client", "key": "client.key"}, True, "ok"),
    ({"ca": "ca"}, True, "no_keys"),
], ids=["ca-file", "ca-inline", "system-cas-refuse", "insecureSkipVerify", "client-cert", "client-cert-missing"])
@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_tls_towards_the_key_server(wsgi_server, pems, pki, tls, client_cert_required, expected):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki["server"], pki["server.key"])
    if client_cert_required:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(pki["ca"])
    idp = IdP(jwk(pems["a"], "a"))
    serve_idp(wsgi_server, idp, ssl_context=context)
    options = {name: (Path(pki["ca"]).read_text() if value == "inline ca" else pki.get(value, value))
               for name, value in tls.items()}
    auth = remote_auth(idp.issuer + "/keys", clientConfig={"tls": options, "maxRetries": 0, "timeoutSeconds": 2})
    assert outcome(auth, token(pems["a"], "a")) == expected
    if expected == "no_keys":
        assert auth.source.keyset.last_error.endswith("connection failed") or "TLS" in auth.source.keyset.last_error


class Redirector:
    """A server answering every request with ``status`` and ``Location: location`` (counted in ``hits``)."""

    def __init__(self, location: str = "", status: int = 302) -> None:
        self.location, self.status, self.hits = location, status, 0

    def __call__(self, environ: dict, start_response: Any) -> List[bytes]:
        self.hits += 1
        start_response(f"{self.status} Moved", [("Location", self.location), ("Content-Length", "0")])
        return [b""]


@pytest.fixture
def tls_server_context(pki) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki["server"], pki["server.key"])
    return context


@pytest.mark.parametrize("first, to, status, expected, error", [
    ("https", "http", 302, "no_keys", "redirect from https to http refused"),
    ("https", "http", 308, "no_keys", "redirect from https to http refused"),
    ("https", "https", 301, "ok", None),
    ("http", "http", 307, "ok", None),
    ("https", "loop", 302, "no_keys", "more than 5 redirects"),
    ("https", "file", 302, "no_keys", "redirect to a non-http(s) URL refused"),
], ids=["https-to-http-302", "https-to-http-308", "https-to-https", "http-to-http", "loop", "to-file"])
def test_key_set_redirects_never_downgrade_to_http(wsgi_server, pems, pki, tls_server_context,
                                                   first, to, status, expected, error):
    idp = IdP(jwk(pems["a"], "a"))
    tls = {"ssl_context": tls_server_context} if to == "https" else {}
    serve_idp(wsgi_server, idp, **tls)
    redirector = Redirector(status=status)
    entry = wsgi_server(redirector, **({"ssl_context": tls_server_context} if first == "https" else {}))
    entry_url = f"{first}://127.0.0.1:{entry.port}/keys"
    redirector.location = {"loop": entry_url, "file": "file:///etc/passwd"}.get(to, idp.issuer + "/keys")
    auth = remote_auth(entry_url, clientConfig={"tls": {"ca": pki["ca"]}, "maxRetries": 0, "timeoutSeconds": 2})
    assert outcome(auth, token(pems["a"], "a")) == expected
    if error is None:
        assert idp.fetches() == 1
    else:
        assert error in auth.source.keyset.last_error
        assert idp.fetches() == 0              # the downgraded URL was never asked


def test_discovery_redirect_to_http_is_refused(wsgi_server, pems, pki, tls_server_context):
    """The OpenID discovery document is fetched the same way: an https issuer cannot be sent to http."""
    idp = IdP(jwk(pems["a"], "a"))
    serve_idp(wsgi_server, idp)
    issuer = f"https://127.0.0.1:{wsgi_server(Redirector(idp.issuer + DISCOVERY), ssl_context=tls_server_context).port}"
    idp.claimed_issuer = issuer
    auth = JWTAuth.from_config({"trustedIssuers": [{"issuer": issuer}],
                                "clientConfig": {"tls": {"ca": pki["ca"]}, "maxRetries": 0}})
    assert outcome(auth, token(pems["a"], "a", iss=issuer)) == "no_keys"
    assert "redirect from https to http refused" in auth.source.issuers[issuer].source.keyset.last_error
    assert idp.hits == []


# --- configuration ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("options, reason", [
    ({"jwksUrl": "/keys"}, "jwksUrl: a path (resolved against the token's issuer) is accepted only with"),
    ({"jwksUrl": "ftp://idp.example/keys"}, "jwksUrl: expected an http or https URL"),
    ({"trustedIssuers": []}, "trustedIssuers: expected a list"),
    ({"trustedIssuers": [{"issuer": "https://a.example", "jwks": "x"}]}, 'trustedIssuers[0]: unknown field "jwks"'),
    ({"trustedIssuers": [{"jwksUrl": "https://a.example/k"}]}, "trustedIssuers[0].issuer: expected"),
    ({"trustedIssuers": [{"issuer": "urn:a"}]}, "trustedIssuers[0].issuer: (unreadable URL, not shown) is not an"),
    ({"trustedIssuers": [{"issuer": "https://a.example", "audience": 3}]}, "trustedIssuers[0].audience: expected"),
    ({"trustedIssuers": [{"issuer": "https://a.example"}, {"issuer": "https://a.example"}]}, "trustedIssuers: issuer"),
    ({"jwksUrl": "https://a.example/k", "clientConfig": {"timeoutSeconds": "soon"}},
     "clientConfig.timeoutSeconds: expected a number"),
    ({"jwksUrl": "https://a.example/k", "clientConfig": {"maxRetries": -1}}, "clientConfig.maxRetries: must be at"),
    ({"jwksUrl": "https://a.example/k", "clientConfig": {"tls": {"ca": "/nonexistent/ca.pem"}}},
     "clientConfig.tls.ca: no such file"),
    ({"jwksUrl": "https://a.example/k", "clientConfig": {"tls": {"key": "-----BEGIN PRIVATE KEY-----"}}},
     "clientConfig.tls.key: given without"),
    ({"jwksUrl": "https://a.example/k", "clientConfig": {"retries": 1}}, 'clientConfig: unknown field "retries"'),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_remote_options_are_config_errors(options, reason):
    with pytest.raises(ConfigError) as caught:
        JWTAuth.from_config(options)
    assert caught.value.reason.startswith(reason)


# --- the seed, through the gateway; and `gatekeeper check` stays offline ----------------------------------

KEYCLOAK_URL = "https://KEYCLOAK_URL/realms/REALM_NAME/protocol/openid-connect/certs"


def keycloak_conf_d(tmp_path: Path, jwks_url: str, upstream_port: int) -> Path:
    root = tmp_path / "conf.d"
    shutil.copytree(SEED / "idp-keycloak", root)
    manifest = root / "middleware.yaml"
    assert KEYCLOAK_URL in manifest.read_text()
    manifest.write_text(manifest.read_text().replace(KEYCLOAK_URL, jwks_url))
    (root / "whoami-endpoints.yaml").write_text(textwrap.dedent(f"""
        apiVersion: v1
        kind: Endpoints
        metadata: {{name: whoami, namespace: apps}}
        subsets:
        - addresses: [{{ip: "127.0.0.1"}}]
          ports: [{{name: whoami, port: {upstream_port}}}]
        """))
    return root


def test_seed_keycloak_through_the_gateway(tmp_path, wsgi_server, echo_upstream, pems):
    idp = IdP(jwk(pems["a"], "a"))
    serve_idp(wsgi_server, idp)
    gateway = wsgi_server(Gateway(keycloak_conf_d(tmp_path, idp.issuer + "/realms/r/certs", echo_upstream.port)))
    idp.hits.clear()
    admin = requests.get(gateway.url + "/my-app", headers=bearer(token(pems["a"], "a", grp="admin")), timeout=5)
    assert admin.status_code == 200, admin.text
    assert ["Group", "admin"] in admin.json()["headers"]
    dev = bearer(token(pems["a"], "a", grp="dev"))
    assert requests.get(gateway.url + "/my-app", headers=dev, timeout=5).status_code == 403
    assert idp.fetches("/realms/r/certs") == 1 and len(idp.hits) == 1

    manifest = tmp_path / "conf.d" / "middleware.yaml"          # a reload rebuilds the middleware ...
    manifest.write_text(manifest.read_text().replace("`grp`, `admin`", "`grp`, `dev`"))
    gateway.server.application.loader.reload()
    assert requests.get(gateway.url + "/my-app", headers=dev, timeout=5).status_code == 200
    assert len(idp.hits) == 1                                  # ... and keeps the keys it had


def test_check_and_loading_never_touch_the_network(tmp_path, wsgi_server, pems, capsys):
    idp = IdP(jwk(pems["a"], "a"))
    serve_idp(wsgi_server, idp)
    root = keycloak_conf_d(tmp_path, idp.issuer + "/certs", 8000)
    assert cli_main(["check", str(root)]) == 0, capsys.readouterr().out
    config = compile_config(read_dir(root))   # what check does, kept alive to look at its key set
    assert list(config.errors) == []
    statuses = [keyset.status() for keyset in jwks.key_sets()]
    assert [(s["url"], s["fetches"], s["started"]) for s in statuses] == [(idp.issuer + "/certs", 0, False)]
    assert not wait_until(lambda: idp.hits, timeout=0.2)


def test_prefetch_fetches_as_the_configuration_loads(wsgi_server, pems):
    idp = IdP(jwk(pems["a"], "a"))
    serve_idp(wsgi_server, idp)
    jwks.enable_prefetch()
    auth = remote_auth(idp.issuer + "/keys")
    assert wait_until(lambda: auth.source.keyset.status()["keys"] == 1, timeout=3)
    assert idp.fetches() == 1 and outcome(auth, token(pems["a"], "a")) == "ok" and idp.fetches() == 1

