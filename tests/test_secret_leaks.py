"""No credential written into the configuration reaches what an operator reads: a real ``gatekeeper serve``'s
log and access log, ``gatekeeper check``'s output, ``/config``, the dashboard.

A credential can hide in a URL (``user:password@``, ``?key=``) or in a value taken from a Kubernetes Secret;
a message that quotes the option as written leaks it. Real files, sockets on 127.0.0.1 and processes.
"""
from __future__ import annotations

import base64
import json
import logging
import subprocess
import sys

import pytest
import requests
from conftest import wait_until
from serve_process import ROOT, Gatekeeper
from test_remote_keys import (  # noqa: F401 - fresh_key_sets, pems and tls_server_context are fixtures used here
    IdP,
    Redirector,
    fresh_key_sets,
    jwk,
    outcome,
    pems,
    remote_auth,
    serve_idp,
    tls_server_context,
    token,
)

from gatekeeper.errors import ConfigError
from gatekeeper.jwt.auth import JWTAuth
from gatekeeper.ops.view import mask
from gatekeeper.proxy.balancer import ServerSpec

UPSTREAM_PASSWORD = "upstream-pw-4c1d9e"
JWKS_PASSWORD = "jwks-pw-8a7b6c"
JWKS_QUERY_KEY = "jwks-apikey-5e4f3a"


def check_output(conf_d_root) -> str:
    """``gatekeeper check`` of a conf.d: what it prints, stdout and stderr."""
    check = subprocess.run([sys.executable, "-m", "gatekeeper", "check", str(conf_d_root)], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    return check.stdout + check.stderr


def admin_pages(gk: Gatekeeper, *paths: str) -> dict:
    """path -> body of each admin page, each answered 200 (a page that failed would hide nothing)."""
    answers = {path: requests.get(gk.admin + path, timeout=5) for path in paths}
    assert {path: answer.status_code for path, answer in answers.items()} == dict.fromkeys(paths, 200), gk.log()
    return {path: answer.text for path, answer in answers.items()}


def leaks(secret: str, texts: dict) -> list:
    """The names of the ``texts`` (name -> text) that hold ``secret``."""
    return [where for where, text in texts.items() if secret in text]


# --- server URLs ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("url", [
    f"http://admin:{UPSTREAM_PASSWORD}@127.0.0.1:9000",
    f"admin:{UPSTREAM_PASSWORD}@127.0.0.1:9000",               # no scheme: the whole text is suspect
    f"http://admin:{UPSTREAM_PASSWORD}@127.0.0.1:port",        # and a port that is not a number
    f"http://admin:pw/{UPSTREAM_PASSWORD}@127.0.0.1",          # a raw "/" in the password
    f"http://127.0.0.1:9000/?key={UPSTREAM_PASSWORD}",
    f"http://[::1:9000/?key={UPSTREAM_PASSWORD}",               # an unclosed "["
], ids=["userinfo", "no-scheme", "bad-port", "slash-in-password", "query", "bad-ipv6"])
def test_refused_server_url_message_hides_its_credential(url):
    """Every way a server URL is refused says why without quoting its userinfo or query."""
    with pytest.raises(ConfigError) as refused:
        ServerSpec(url)
    assert UPSTREAM_PASSWORD not in str(refused.value)


def test_refused_server_weight_message_hides_the_url_credential():
    with pytest.raises(ConfigError, match="weight") as refused:
        ServerSpec(f"http://admin:{UPSTREAM_PASSWORD}@127.0.0.1:9000", -1)
    assert UPSTREAM_PASSWORD not in str(refused.value)


def test_server_url_with_credentials_is_not_echoed_in_the_log_or_check(conf_d, tmp_path, free_port):
    """A server URL with userinfo is refused (its router answers 503); the refusal names the server
    without its password in the serve log, the access log's router_error, ``check`` and /config."""
    conf_d("api.yaml", f"""
        http:
          routers:
            api: {{rule: 'PathPrefix(`/api`)', service: api}}
          services:
            api: {{loadBalancer: {{servers: [{{url: 'http://admin:{UPSTREAM_PASSWORD}@127.0.0.1:{free_port}'}}]}}}}
        """)
    checked = check_output(conf_d.root)
    gk = Gatekeeper(conf_d.root, tmp_path / "gk.log", "--admin", "127.0.0.1:0")
    try:
        assert requests.get(gk.url + "/api/x", timeout=5).status_code == 503
        shown = admin_pages(gk, "/config")
    finally:
        gk.stop()
    assert f"127.0.0.1:{free_port}" in checked, checked  # the server is still named
    access = "\n".join(gk.access_lines())
    assert leaks(UPSTREAM_PASSWORD, {**shown, "check": checked, "log": gk.log(), "access log": access}) == [], \
        gk.log()


# --- key set URLs (jwksUrl) ----------------------------------------------------------------------------

def with_credentials(base: str) -> str:
    """``base`` (scheme://host:port) as a key set URL with a password and an API key in its query."""
    scheme, _, authority = base.partition("://")
    return f"{scheme}://jwks:{JWKS_PASSWORD}@{authority}/keys?api_key={JWKS_QUERY_KEY}"


def failing_key_server(how: str, wsgi_server, free_port, pems, tls_server_context) -> str:  # noqa: F811
    """The base URL of a key server that fails ``how``."""
    if how == "down":
        return f"http://127.0.0.1:{free_port}"
    if how in ("redirect-without-location", "too-many-redirects"):
        redirector = Redirector()
        server = wsgi_server(redirector)
        redirector.location = with_credentials(server.url) if how == "too-many-redirects" else ""
        return server.url
    idp = IdP(jwk(pems["c"], "enc", use="enc") if how == "no-usable-key" else jwk(pems["a"], "a"))
    idp.status = 500 if how == "http-500" else 200
    idp.garbage = how == "not-json"
    serve_idp(wsgi_server, idp, **({"ssl_context": tls_server_context} if how == "tls-untrusted" else {}))
    return idp.issuer


@pytest.mark.parametrize("how", ["down", "http-500", "not-json", "no-usable-key", "redirect-without-location",
                                 "too-many-redirects", "tls-untrusted"])
def test_key_set_failure_names_the_url_without_its_credentials(wsgi_server, free_port, pems,  # noqa: F811
                                                               tls_server_context, caplog, how):  # noqa: F811
    """However a fetch fails, its error (the key set's lastError, shown on the dashboard) and gatekeeper's log
    lines name the key set by host and path only: no password, no query."""
    url = with_credentials(failing_key_server(how, wsgi_server, free_port, pems, tls_server_context))
    auth = remote_auth(url, clientConfig={"maxRetries": 0, "timeoutSeconds": 2})
    with caplog.at_level(logging.DEBUG, logger="gatekeeper"):
        assert outcome(auth, token(pems["a"], "a")) == "no_keys"
        keyset = auth.source.keyset
        assert wait_until(lambda: keyset.last_error is not None, 5)
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("gatekeeper"))
    shown = f"{keyset.name} {keyset.status()} {logged}"
    assert "127.0.0.1" in keyset.last_error and "/keys" in keyset.last_error, keyset.last_error
    assert [secret for secret in (JWKS_PASSWORD, JWKS_QUERY_KEY) if secret in shown] == [], shown


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def rs256_token() -> str:
    """A token naming RS256 and a kid (its signature does not matter: the key set is fetched first)."""
    return ".".join([b64(json.dumps({"alg": "RS256", "kid": "k1", "typ": "JWT"}).encode()),
                     b64(json.dumps({"sub": "alice"}).encode()), b64(b"x" * 256)])


def test_jwks_url_credentials_never_logged_nor_shown(conf_d, tmp_path, free_port):
    """A gateway whose key set host is down: its log, /config and the dashboard name the key set without
    the password or the query's API key."""
    url = f"http://jwks:{JWKS_PASSWORD}@127.0.0.1:{free_port}/keys?api_key={JWKS_QUERY_KEY}"
    conf_d("api.yaml", f"""
        http:
          routers:
            api: {{rule: 'PathPrefix(`/api`)', middlewares: [jwt], service: api}}
          middlewares:
            jwt: {{plugin: {{jwt: {{jwksUrl: '{url}'}}}}}}
          services:
            api: {{loadBalancer: {{servers: [{{url: 'http://127.0.0.1:{free_port}'}}]}}}}
        """)
    gk = Gatekeeper(conf_d.root, tmp_path / "gk.log", "--admin", "127.0.0.1:0")
    try:
        answer = requests.get(gk.url + "/api/x", headers={"Authorization": f"Bearer {rs256_token()}"}, timeout=10)
        assert answer.status_code == 401
        assert wait_until(lambda: "fetching the key set failed" in gk.log(), 10), gk.log()
        shown = admin_pages(gk, "/config", "/dashboard/state.json", "/dashboard/?kind=middleware&name=jwt%40file")
    finally:
        gk.stop()
    found = [(secret, where) for secret in (JWKS_PASSWORD, JWKS_QUERY_KEY)
             for where in leaks(secret, {**shown, "log": gk.log()})]
    assert found == [], gk.log()


# --- forwardAuth address, URLs shown on /config and the dashboard, third-party debug lines ------------------

AUTH_QUERY_KEY = "fwd-apikey-2b9c7d"


@pytest.fixture
def auth_says_yes(wsgi_server) -> str:
    """The URL of an auth server saying yes to everything."""
    def yes(environ, start_response):
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]
    return wsgi_server(yes).url


@pytest.mark.parametrize("level", ["info", "debug"])
def test_forward_auth_address_query_key_not_shown(conf_d, tmp_path, free_port, auth_says_yes, level):
    """A forwardAuth address with an API key in its query: /config, the dashboard and the log (at debug
    too, where urllib3 would log each request's URL) show the address without the key's value."""
    conf_d("api.yaml", f"""
        http:
          routers:
            api: {{rule: 'PathPrefix(`/api`)', middlewares: [fa], service: api}}
          middlewares:
            fa: {{forwardAuth: {{address: '{auth_says_yes}/check?key={AUTH_QUERY_KEY}'}}}}
          services:
            api: {{loadBalancer: {{servers: [{{url: 'http://127.0.0.1:{free_port}'}}]}}}}
        """)
    gk = Gatekeeper(conf_d.root, tmp_path / "gk.log", "--admin", "127.0.0.1:0", "--log-level", level)
    try:
        assert requests.get(gk.url + "/api/x", timeout=10).status_code == 502  # auth said 200, api is down
        shown = admin_pages(gk, "/config", "/dashboard/state.json", "/dashboard/?kind=middleware&name=fa%40file")
    finally:
        gk.stop()
    assert "/check?key=***" in shown["/config"], shown["/config"]  # the option is still shown, masked
    assert leaks(AUTH_QUERY_KEY, {**shown, "log": gk.log()}) == [], gk.log()


@pytest.mark.parametrize("text, shown", [
    ("http://admin:pw@10.0.0.5:8080/", "http://***@10.0.0.5:8080/"),
    ("https://auth/check?key=s3cret&v=2", "https://auth/check?key=***&v=***"),
    ("https://idp/cb#access_token=s3cret", "https://idp/cb#access_token=***"),
    ("http://x/?s3cret", "http://x/?***"),
    ('{"address": "http://u:p@auth/c?key=s3cret", "n": "a=b"}', '{"address": "http://***@auth/c?key=***", "n": "a=b"}'),
    ("server url 'http://x/?q=s3cret': no query", "server url 'http://x/?q=***': no query"),
    ('"{\\"a\\": \\"http://x/?k=s3cret\\"}"', '"{\\"a\\": \\"http://x/?k=***\\"}"'),
    ("<http://x/?k=s3cret>", "<http://x/?k=***>"),
    ("no URL here?key=value", "no URL here?key=value"),
], ids=["userinfo", "query", "fragment", "bare-query-item", "json", "quoted-in-a-message", "json-in-json",
        "angle-brackets", "not-a-url"])
def test_view_masks_url_credentials_anywhere_in_a_text(text, shown):
    """What /config and the dashboard show of any text (options as written, error messages)."""
    assert mask(text) == shown


def test_debug_level_keeps_other_libraries_quiet_below_info():
    """``--log-level debug`` is gatekeeper's debug: urllib3's debug lines (each request's URL, query included)
    stay out, its warnings and gatekeeper's own debug lines come through."""
    script = (
        "import logging; from gatekeeper.ops.logs import configure_logging; configure_logging('text', 'debug'); "
        f"logging.getLogger('urllib3.connectionpool').debug('GET /check?key={AUTH_QUERY_KEY} 200'); "
        "logging.getLogger('urllib3.connectionpool').warning('a library warning'); "
        "logging.getLogger('gatekeeper.watch').debug('a gatekeeper debug line')")
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert AUTH_QUERY_KEY not in run.stderr
    assert "WARNING urllib3.connectionpool: a library warning" in run.stderr
    assert "DEBUG gatekeeper.watch: a gatekeeper debug line" in run.stderr


# --- invalid key set options, which may come from a Kubernetes Secret --------------------------------------

SECRET_URL_TOKEN = "idp-token-9d8e7f6a"


@pytest.mark.parametrize("options, reason", [
    ({"jwksUrl": f"idp.example/keys?token={SECRET_URL_TOKEN}"}, "jwksUrl: expected an http or https URL"),
    ({"jwksUrl": f"ftp://jwks:{SECRET_URL_TOKEN}@idp.example/keys"}, "jwksUrl: expected an http or https URL"),
    ({"jwksUrl": "urn:k8s:secret:idp:url"}, "jwksUrl: unresolved Kubernetes Secret reference"),
    ({"trustedIssuers": [{"issuer": "https://a.example", "jwksUrl": f"a.example/k?token={SECRET_URL_TOKEN}"}]},
     "trustedIssuers[0].jwksUrl: expected an http or https URL"),
    ({"trustedIssuers": [{"issuer": f"urn:{SECRET_URL_TOKEN}"}]}, "trustedIssuers[0].issuer: "),
    ({"trustedIssuers": [{"issuer": f"https://a.example/?t={SECRET_URL_TOKEN}"}] * 2},
     "trustedIssuers: issuer https://a.example/ is listed twice"),
], ids=["jwksUrl-without-scheme", "jwksUrl-ftp-with-password", "jwksUrl-unresolved-secret",
        "issuer-jwksUrl-without-scheme", "issuer-not-a-url", "issuer-twice"])
def test_invalid_key_set_option_is_refused_without_showing_its_value(options, reason):
    """The refusal says what is wrong with a jwksUrl or an issuer without quoting it (options.py's rule:
    values are echoed by their type, URLs only by scheme, host, port and path)."""
    with pytest.raises(ConfigError) as refused:
        JWTAuth.from_config(options)
    assert refused.value.reason.startswith(reason), refused.value.reason
    assert SECRET_URL_TOKEN not in str(refused.value)


def test_secret_jwks_url_value_not_echoed_when_invalid(conf_d, tmp_path):
    """jwksUrl taken from a Kubernetes Secret (urn:k8s:secret:...) whose value lacks its scheme: the
    refusal in the log, on /config and on the dashboard does not quote the Secret's value."""
    url = f"idp.example/keys?token={SECRET_URL_TOKEN}"
    conf_d("app.yaml", f"""
        apiVersion: v1
        kind: Secret
        metadata: {{name: idp, namespace: apps}}
        stringData: {{url: '{url}'}}
        ---
        apiVersion: traefik.io/v1alpha1
        kind: Middleware
        metadata: {{name: test-jwt, namespace: apps}}
        spec: {{plugin: {{jwt: {{jwksUrl: 'urn:k8s:secret:idp:url'}}}}}}
        """)
    gk = Gatekeeper(conf_d.root, tmp_path / "gk.log", "--admin", "127.0.0.1:0")
    try:
        shown = admin_pages(gk, "/config", "/dashboard/state.json")
    finally:
        gk.stop()
    assert "jwksUrl: expected an http or https URL" in gk.log(), gk.log()
    assert leaks(SECRET_URL_TOKEN, {**shown, "log": gk.log()}) == [], gk.log()
