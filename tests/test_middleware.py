"""JWTMiddleware around Flask and plain WSGI apps, served for real on 127.0.0.1."""
from __future__ import annotations

import hashlib
import json
import os
from typing import Callable, Iterable

import flask
import gevent
import pytest
import requests
from conftest import wait_until

from gatekeeper.errors import ConfigError
from gatekeeper.jwt.middleware import JWTMiddleware, camel_case
from gatekeeper.jwt.mint import mint, new_key_pem, public_jwk, sign_compact

SECRET = "mysuperlongsecret"
ADMIN = mint({"sub": "alice", "grp": "admin", "user": {"name": "Alice"}}, secret=SECRET)
USER = mint({"sub": "bob", "grp": "users"}, secret=SECRET)


def plain_app(environ: dict, start_response: Callable) -> Iterable[bytes]:
    """Says who it saw and which headers reached it."""
    body = json.dumps({
        "claims": environ.get("gatekeeper.claims"),
        "user": environ.get("gatekeeper.user"),
        "x_group": environ.get("HTTP_X_GROUP"),
        "authorization": environ.get("HTTP_AUTHORIZATION"),
    }).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def flask_app(**options) -> flask.Flask:
    app = flask.Flask("protected")

    @app.get("/whoami")
    def whoami():
        return {"sub": flask.request.environ["gatekeeper.claims"]["sub"],
                "group": flask.request.headers.get("X-Group")}

    app.wsgi_app = JWTMiddleware(app.wsgi_app, **options)  # type: ignore[method-assign]
    return app


OPTIONS = {"signing_secret": SECRET, "claims": "Equals(`grp`, `admin`)", "forward_headers": {"X-Group": "grp"},
           "username_claim": "user.name"}


@pytest.mark.parametrize("token, status", [(ADMIN, 200), (USER, 403), (None, 401), ("x.y.z", 401)],
                         ids=["admin", "user", "none", "garbage"])
def test_flask(wsgi_server, token, status):
    server = wsgi_server(flask_app(**OPTIONS))
    headers = {"Authorization": f"Bearer {token}", "X-Group": "admin"} if token else {"X-Group": "admin"}
    response = requests.get(server.url + "/whoami", headers=headers, timeout=5)
    assert response.status_code == status
    if status == 200:
        assert response.json() == {"sub": "alice", "group": "admin"}
    else:
        assert response.json()["error"] in ("invalid_token", "insufficient_scope", "invalid_request")
        assert "Bearer" in response.headers["WWW-Authenticate"]


@pytest.mark.parametrize("make", [
    lambda app: JWTMiddleware(app, **OPTIONS),
    lambda app: JWTMiddleware.from_config(app, {"signingSecret": SECRET, "Claims": "Equals(`grp`, `admin`)",
                                                "forwardHeaders": {"x-group": "grp"}, "usernameClaim": "user.name"}),
], ids=["snake_case", "from_config"])
def test_plain_wsgi(wsgi_server, make):
    server = wsgi_server(make(plain_app))
    seen = requests.get(server.url, headers={"Authorization": f"Bearer {ADMIN}", "X-Group": "spoof"},
                        timeout=5).json()
    assert seen["claims"]["grp"] == "admin" and seen["x_group"] == "admin"
    assert seen["authorization"] is None
    refused = requests.get(server.url, headers={"Authorization": f"Bearer {USER}"}, timeout=5)
    assert (refused.status_code, refused.headers["WWW-Authenticate"]) == (403, 'Bearer error="insufficient_scope"')


def test_snake_case_inside_token_source(wsgi_server):
    app = JWTMiddleware(plain_app, signing_secret=SECRET, forward_authorization=True,
                        token_source={"header": "X-Api-Token", "header_auth_scheme": "Token"})
    server = wsgi_server(app)
    ok = requests.get(server.url, headers={"X-Api-Token": f"Token {USER}"}, timeout=5)
    assert ok.status_code == 200 and ok.json()["claims"]["sub"] == "bob"
    assert requests.get(server.url, headers={"Authorization": f"Bearer {USER}"}, timeout=5).status_code == 401


@pytest.mark.parametrize("options, reason", [({"signing_secret": SECRET, "colour": "blue"}, 'unknown option "colour"'),
                                             ({}, "no key source")])
def test_bad_options_raise_at_construction(options, reason):
    with pytest.raises(ConfigError, match=reason):
        JWTMiddleware(plain_app, **options)


@pytest.mark.parametrize("name, camel", [("signing_secret_base64_encoded", "signingSecretBase64Encoded"),
                                         ("jwks_file", "jwksFile"), ("clockSkewSeconds", "clockSkewSeconds")])
def test_camel_case(name, camel):
    assert camel_case(name) == camel


# --- tokenKey through a real server, with the body forwarded to an echo upstream -----------------------

def forwarding_app(upstream: str) -> Callable:
    """A tiny proxy standing in for the gateway's: rebuilds the request from the environ it is given."""
    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        headers = {k[5:].replace("_", "-").title(): v for k, v in environ.items() if k.startswith("HTTP_")}
        headers.pop("Host", None)
        if environ.get("CONTENT_TYPE"):
            headers["Content-Type"] = environ["CONTENT_TYPE"]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        url = upstream + environ.get("RAW_URI", environ["PATH_INFO"])
        answer = requests.request(environ["REQUEST_METHOD"], url, headers=headers, data=body, timeout=5)
        start_response(f"{answer.status_code} X", [("Content-Type", "application/json")])
        return [answer.content]
    return app


@pytest.fixture
def gateway(wsgi_server, echo_upstream):
    app = JWTMiddleware(forwarding_app(echo_upstream.url), signing_secret=SECRET, token_key="access_token",
                        forward_headers={"X-Group": "grp"})
    return wsgi_server(app)


def test_token_key_in_query(gateway):
    echoed = requests.get(f"{gateway.url}/api?access_token={ADMIN}&x=1", timeout=5).json()
    assert echoed["query"] == f"access_token={ADMIN}&x=1"
    assert dict(echoed["headers"])["X-Group"] == "admin"


@pytest.mark.parametrize("size", [0, 70_000], ids=["small", "over-64KiB"])
def test_token_key_in_form_body_reaches_upstream_byte_identical(gateway, size):
    body = b"note=caf%C3%A9+%26+more&access_token=" + ADMIN.encode() + b"&blob=" + b"z" * size
    response = requests.post(gateway.url + "/form", data=body, timeout=5,
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200
    echoed = response.json()
    assert (echoed["body_size"], echoed["body_sha256"]) == (len(body), hashlib.sha256(body).hexdigest())
    assert dict(echoed["headers"])["X-Group"] == "admin"


def test_form_without_token_is_refused_and_never_forwarded(gateway):
    response = requests.post(gateway.url + "/form", data={"access_token": USER[:-2] + "AA"}, timeout=5)
    assert response.status_code == 401
    assert response.json()["error_description"] == "the token's signature does not verify"
    assert requests.post(gateway.url + "/form", data={"a": "b"}, timeout=5).status_code == 401


# --- hostile tokens and revoked keys through a real server -----------------------------------------------

@pytest.mark.parametrize("header, payload", [
    ('{"alg":"HS256"}', '{"grp":' + "[" * 1000 + "]" * 1000 + "}"),
    ('{"alg":"HS256"}', '{"grp":' + '{"a":' * 1000 + "1" + "}" * 1000 + "}"),
    ('{"alg":"HS256","x":' + "[" * 1000 + "]" * 1000 + "}", '{"grp":"admin"}'),
], ids=["payload-arrays", "payload-objects", "header-arrays"])
@pytest.mark.parametrize("engine", ["fast", "pywsgi"])
def test_deeply_nested_token_is_a_401_not_a_500(wsgi_server, engine, header, payload):
    """Signed with the right secret, so only the nesting is wrong (was: RecursionError, 500)."""
    token = sign_compact(header, payload, alg="HS256", secret=SECRET)
    server = wsgi_server(JWTMiddleware(plain_app, **OPTIONS), server=engine)
    response = requests.get(server.url, headers={"Authorization": f"Bearer {token}"}, timeout=5)
    assert response.status_code == 401
    assert "deeper than 32 levels" in response.json()["error_description"]


def test_emptied_key_file_refuses_a_token_it_accepted(wsgi_server, tmp_path):
    key = new_key_pem("ec256")
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [public_jwk(key, kid="k")]}))
    middleware = JWTMiddleware(plain_app, jwks_file=str(path))
    server = wsgi_server(middleware)
    headers = {"Authorization": f"Bearer {mint({'sub': 'alice'}, key_pem=key, kid='k')}"}
    for _ in range(2):  # the second is a verified-token cache hit
        assert requests.get(server.url, headers=headers, timeout=5).status_code == 200
    aside = tmp_path / "jwks.json.new"
    aside.write_text('{"keys": []}')
    os.replace(aside, path)
    gevent.get_hub().loop.update_now()
    assert wait_until(lambda: requests.get(server.url, headers=headers, timeout=5).status_code == 401
                      and middleware.auth.source.generation == 1, timeout=5)
    refused = requests.get(server.url, headers=headers, timeout=5)
    assert refused.json()["error_description"] == "the key set is unavailable: no keys to verify the token with"
