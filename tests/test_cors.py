"""The ``headers`` middleware's CORS and security options through a real Gateway and a real upstream: the
preflight answered by the gateway (allowed, refused and regex origins), CORS on actual answers, the
composition ``[cors, jwt]`` (preflight without a token, 401 readable by the browser), the security headers,
and ``gatekeeper check`` refusing what is not built."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, Iterator, Optional

import pytest
import requests

from gatekeeper.jwt.mint import mint
from tests.conftest import RunningServer
from tests.middleware_gateway import built, check_refuses, new_conf_d

SECRET = "cors-secret-0123456789abcdef0123456789"
APP = "https://app.example"


@pytest.fixture
def gateway(tmp_path: Path, echo_upstream) -> Iterator[str]:
    root = new_conf_d(tmp_path, "routes.yaml", f"""
http:
  routers:
    c: {{rule: "PathPrefix(`/c/`)", service: app, middlewares: [cors]}}
    s: {{rule: "PathPrefix(`/s/`)", service: app, middlewares: [anyorigin]}}
    j: {{rule: "PathPrefix(`/j/`)", service: app, middlewares: [cors, auth]}}
    h: {{rule: "PathPrefix(`/h/`)", service: app, middlewares: [secure]}}
    f: {{rule: "PathPrefix(`/f/`)", service: app, middlewares: [forcedsts]}}
    n: {{rule: "PathPrefix(`/n/`)", service: app, middlewares: [nocors]}}
  middlewares:
    cors:
      headers:
        accessControlAllowOriginList: ["{APP}"]
        accessControlAllowOriginListRegex: ['^https://[a-z]+\\.corp\\.example$']
        accessControlAllowMethods: [GET, POST]
        accessControlAllowHeaders: [Authorization, Content-Type]
        accessControlExposeHeaders: [X-Request-Id]
        accessControlMaxAge: 600
        accessControlAllowCredentials: true
        addVaryHeader: true
    nocors: {{headers: {{accessControlAllowCredentials: false, accessControlAllowOriginList: [], frameDeny: true}}}}
    anyorigin: {{headers: {{accessControlAllowOriginList: ["*"], accessControlAllowMethods: [GET]}}}}
    auth: {{plugin: {{jwt: {{signingSecret: "{SECRET}"}}}}}}
    secure:
      headers:
        stsSeconds: 31536000
        stsIncludeSubdomains: true
        frameDeny: true
        contentTypeNosniff: true
        browserXssFilter: true
        contentSecurityPolicy: "default-src 'self'"
        referrerPolicy: no-referrer
        permissionsPolicy: "camera=()"
        customResponseHeaders: {{X-Served-By: gatekeeper, Content-Type: ""}}
        customRequestHeaders: {{X-From-Gateway: "yes"}}
    forcedsts:
      headers: {{stsSeconds: 60, stsPreload: true, forceSTSHeader: true, customFrameOptionsValue: SAMEORIGIN}}
  services:
    app: {{loadBalancer: {{servers: [{{url: "{echo_upstream.url}"}}]}}}}
""")
    gw = built(root)
    server = RunningServer(gw)
    yield server.url
    server.stop()


def preflight(url: str, origin: Optional[str], method: str = "POST") -> requests.Response:
    headers: Dict[str, str] = {"Access-Control-Request-Method": method,
                               "Access-Control-Request-Headers": "authorization"}
    if origin is not None:
        headers["Origin"] = origin
    return requests.options(url, headers=headers, timeout=5)


@pytest.mark.parametrize("origin", [APP, "https://team.corp.example"], ids=["listed", "regex"])
def test_preflight_for_an_allowed_origin_is_answered_by_the_gateway(gateway, origin):
    response = preflight(f"{gateway}/c/data", origin)
    assert response.status_code == 200 and response.content == b""  # the echo upstream never answered
    assert response.headers["Access-Control-Allow-Origin"] == origin
    assert response.headers["Access-Control-Allow-Methods"] == "GET,POST"
    assert response.headers["Access-Control-Allow-Headers"] == "Authorization,Content-Type"
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    assert response.headers["Access-Control-Max-Age"] == "600"
    assert response.headers["Vary"] == "Origin"


@pytest.mark.parametrize("origin", ["https://evil.example", "https://app.example.evil.net",
                                    "https://team.corp.example.evil.net", "null"],
                         ids=["other", "suffix-of-listed", "suffix-of-regex", "null"])
def test_preflight_for_a_refused_origin_allows_nothing(gateway, origin):
    response = preflight(f"{gateway}/c/data", origin)
    assert response.status_code == 200
    assert not [h for h in response.headers if h.lower().startswith("access-control-")]


def test_options_without_origin_goes_to_the_service(gateway):
    response = preflight(f"{gateway}/c/data", None)
    assert response.status_code == 200 and response.json()["method"] == "OPTIONS"  # the echo answered


def test_cors_options_without_a_value_answer_no_preflight(gateway):
    response = preflight(f"{gateway}/n/data", APP)
    assert response.status_code == 200 and response.json()["method"] == "OPTIONS"  # the echo answered
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "Access-Control-Allow-Origin" not in response.headers


@pytest.mark.parametrize("origin, allowed", [(APP, APP), ("https://evil.example", None), (None, None)],
                         ids=["allowed", "refused", "no-origin"])
def test_cors_on_the_actual_answer(gateway, origin, allowed):
    headers = {"Origin": origin} if origin else {}
    response = requests.get(f"{gateway}/c/data", headers=headers, timeout=5)
    assert response.status_code == 200 and response.json()["method"] == "GET"
    assert response.headers.get("Access-Control-Allow-Origin") == allowed
    assert response.headers.get("Access-Control-Allow-Credentials") == ("true" if allowed else None)
    assert response.headers.get("Access-Control-Expose-Headers") == ("X-Request-Id" if allowed else None)
    assert "Origin" in response.headers["Vary"]


def test_any_origin_answers_star(gateway):
    response = preflight(f"{gateway}/s/x", "https://whoever.example", "GET")
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in response.headers
    actual = requests.get(f"{gateway}/s/x", headers={"Origin": "https://whoever.example"}, timeout=5)
    assert actual.headers["Access-Control-Allow-Origin"] == "*"


def test_cors_before_jwt_preflight_needs_no_token_but_the_request_does(gateway):
    response = preflight(f"{gateway}/j/private", APP, "GET")
    assert response.status_code == 200 and response.headers["Access-Control-Allow-Origin"] == APP
    refused = requests.get(f"{gateway}/j/private", headers={"Origin": APP}, timeout=5)
    assert refused.status_code == 401
    assert refused.headers["Access-Control-Allow-Origin"] == APP  # the browser can read the 401
    assert "method" not in refused.text  # the upstream was not reached
    token = mint({"sub": "alice", "exp": int(time.time()) + 60}, secret=SECRET)
    ok = requests.get(f"{gateway}/j/private", headers={"Origin": APP, "Authorization": f"Bearer {token}"},
                      timeout=5)
    assert ok.status_code == 200 and ok.json()["path"] == "/j/private"
    assert ok.headers["Access-Control-Allow-Origin"] == APP
    # a request dressed as a preflight but not OPTIONS is an actual request: it needs its token
    sneaky = requests.get(f"{gateway}/j/private", headers={"Origin": APP, "Access-Control-Request-Method": "GET"},
                          timeout=5)
    assert sneaky.status_code == 401


def test_security_headers(gateway):
    response = requests.get(f"{gateway}/h/x", timeout=5)
    assert response.status_code == 200
    headers = response.headers
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-XSS-Protection"] == "1; mode=block"
    assert headers["Content-Security-Policy"] == "default-src 'self'"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["Permissions-Policy"] == "camera=()"
    assert headers["X-Served-By"] == "gatekeeper"
    assert "Content-Type" not in headers  # an empty custom value removes the upstream's header
    assert "Strict-Transport-Security" not in headers  # plain HTTP, not forced
    assert ("X-From-Gateway", "yes") in [tuple(h) for h in response.json()["headers"]]


def test_forced_sts_and_custom_frame_options(gateway):
    response = requests.get(f"{gateway}/f/x", timeout=5)
    assert response.headers["Strict-Transport-Security"] == "max-age=60; preload"
    assert response.headers["X-Frame-Options"] == "SAMEORIGIN"


BAD_OPTIONS = [
    ('{accessControlAllowOriginList: ["*"], accessControlAllowCredentials: true}', '"*" with accessControlAllow'),
    ("{accessControlAllowOriginListRegex: ['https://.*\\\\.example\\\\.com']}", "anchor the pattern"),
    ("{accessControlAllowOriginListRegex: ['^(a$']}", "accessControlAllowOriginListRegex[0]: "),
    ("{accessControlAllowHeaders: ['bad header']}", "accessControlAllowHeaders[0]: not a header name"),
    ("{accessControlMaxAge: -5}", "accessControlMaxAge: must be at least 0"),
    ("{accessControlAllowCredentials: maybe}", "accessControlAllowCredentials: expected true or false"),
    ("{allowedHosts: [a.example]}", "allowedHosts: not supported by gatekeeper"),
    ("{sslRedirect: true}", "sslRedirect: removed in Traefik v3"),
    ("{featurePolicy: x}", "featurePolicy: removed in Traefik v3: use permissionsPolicy"),
    ("{publicKey: x}", "publicKey: not supported"),
    ('{customResponseHeaders: {"X-A": "a\\r\\nSet-Cookie: x"}}', "must not hold CR, LF or NUL"),
    ("{frameDenny: true}", 'unknown field "frameDenny"'),
]


def test_check_refuses_bad_options(conf_d):
    """One ``gatekeeper check`` run (a real subprocess) over one middleware per mistake."""
    check_refuses(conf_d, "headers", BAD_OPTIONS, prefix="h")
