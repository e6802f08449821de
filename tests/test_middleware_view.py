"""Every middleware's options as ``/config`` and the dashboard show them: a real Gateway's configuration,
served by the real admin app, with one middleware of each kind that holds a secret; no secret value may
appear anywhere in the answers, while the harmless options stay readable."""
from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Iterator, List

import pytest
import requests

from gatekeeper.app import Gateway
from gatekeeper.ops.view import MASK, middleware_options, secret_values
from tests.conftest import RunningServer
from tests.middleware_gateway import new_conf_d

SIGNING = "view-signing-secret-0123456789abcdef"
PASSWORD = "alice-password-123"
SHA_HASH = "{SHA}" + base64.b64encode(hashlib.sha1(PASSWORD.encode()).digest()).decode()
REDIS_PASSWORD = "redis-pass-0987654321"
STORE_PASSWORD = "store-pass-1122334455"
TLS_KEY = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC-not-a-real-key\n-----END PRIVATE KEY-----"
URL_PASSWORD = "url-pass-5566778899"
API_KEY = "api-key-value-abcdef123456"
CLIENT_SECRET = "client-secret-value-778899"
SECRETS = [SIGNING, SHA_HASH, SHA_HASH[5:], REDIS_PASSWORD, STORE_PASSWORD, "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC",
           URL_PASSWORD, API_KEY, CLIENT_SECRET]


@pytest.fixture
def admin(tmp_path: Path, echo_upstream) -> Iterator[str]:
    root = new_conf_d(tmp_path, "mw.yaml", f"""
http:
  routers:
    r: {{rule: "PathPrefix(`/`)", service: app, middlewares: [jwt, basic, limit, shared, auth, hdr]}}
  middlewares:
    jwt: {{plugin: {{jwt: {{signingSecret: "{SIGNING}", tokenKey: "access_token"}}}}}}
    basic: {{basicAuth: {{users: ["alice:{SHA_HASH}"]}}}}
    limit: {{rateLimit: {{average: 5, redis: {{endpoints: ["127.0.0.1:1"], password: "{REDIS_PASSWORD}"}}}}}}
    shared:
      plugin:
        distributedRateLimit:
          limit: 5
          store: {{redis: {{endpoints: ["127.0.0.1:1"], password: "{STORE_PASSWORD}"}}}}
    auth:
      forwardAuth:
        address: "http://user:{URL_PASSWORD}@127.0.0.1:1/auth"
        tls: {{key: {json.dumps(TLS_KEY)}, cert: "/nowhere/cert.pem"}}
    hdr:
      headers:
        customRequestHeaders: {{X-Api-Key: "{API_KEY}"}}
        accessControlAllowOriginList: ["https://app.example"]
    odd: {{notAKind: {{clientSecret: "{CLIENT_SECRET}"}}}}
  services:
    app: {{loadBalancer: {{servers: [{{url: "{echo_upstream.url}"}}]}}}}
""")
    gateway = Gateway(root)
    from gatekeeper.ops.admin import make_admin_app

    server = RunningServer(make_admin_app(gateway.loader, lambda: (b"", "text/plain")))
    yield server.url
    server.stop()


def leaked(text: str) -> List[str]:
    return [secret for secret in SECRETS if secret in text]


def test_config_shows_no_secret_of_any_middleware(admin):
    response = requests.get(f"{admin}/config", timeout=5)
    assert response.status_code == 200
    assert leaked(response.text) == []
    middlewares = response.json()["middlewares"]
    assert set(middlewares) >= {"jwt@file", "basic@file", "limit@file", "shared@file", "auth@file", "hdr@file"}
    assert middlewares["jwt@file"]["options"] == {"tokenKey": "access_token", "keySource": "signingSecret"}
    assert middlewares["basic@file"]["options"] == {"users": ["alice"]}
    assert middlewares["limit@file"]["options"]["redis"] == {"endpoints": ["127.0.0.1:1"], "password": MASK}
    assert middlewares["shared@file"]["options"]["store"]["redis"]["password"] == MASK
    assert middlewares["auth@file"]["options"]["tls"] == {"key": MASK, "cert": "/nowhere/cert.pem"}
    assert middlewares["auth@file"]["options"]["address"] == "http://***@127.0.0.1:1/auth"
    assert middlewares["hdr@file"]["options"] == {"customRequestHeaders": ["X-Api-Key"],
                                                  "accessControlAllowOriginList": ["https://app.example"]}
    assert any("notAKind" in error for error in response.json()["errors"])  # refused, its secret not quoted


def test_dashboard_shows_no_secret_of_any_middleware(admin):
    texts = [requests.get(f"{admin}/dashboard/state.json", timeout=5).text,
             requests.get(f"{admin}/dashboard/", timeout=5).text]
    for name in ("jwt", "basic", "limit", "shared", "auth", "hdr"):
        for page in ("state.json", ""):
            answer = requests.get(f"{admin}/dashboard/{page}", params={"kind": "middleware", "name": f"{name}@file"},
                                  timeout=5)
            assert answer.status_code == 200
            texts.append(answer.text)
    assert [leaked(text) for text in texts] == [[]] * len(texts)
    assert any("alice" in text for text in texts)  # the user name is shown, its hash never


@pytest.mark.parametrize("kind, options, shown", [
    ("compress", {"minResponseBodyBytes": 10, "encodings": ["gzip"]}, {"minResponseBodyBytes": 10,
                                                                        "encodings": ["gzip"]}),
    ("headers", {"customResponseHeaders": {"X-A": "b"}, "stsSeconds": 60}, {"customResponseHeaders": ["X-A"],
                                                                            "stsSeconds": 60}),
    ("forwardAuth", {"tls": {"KEY": "k", "ca": "/ca.pem"}}, {"tls": {"KEY": MASK, "ca": "/ca.pem"}}),
    ("x", {"a": [{"Token": "t", "n": 1}], "apiKeys": ["k1"]}, {"a": [{"Token": MASK, "n": 1}], "apiKeys": MASK}),
    ("basicAuth", {"users": ["bob:$2y$05$abc"], "usersFile": "/etc/users"}, {"users": ["bob"], "usersFile": MASK}),
], ids=["harmless-as-is", "headers-names-and-security", "nested-any-case", "lists-at-any-depth", "users-names"])
def test_middleware_options_masked(kind, options, shown):
    assert middleware_options(kind, options) == shown


def test_secret_values_reach_every_depth():
    found = secret_values({"store": {"redis": {"Password": "deep-secret"}}, "users": ["bob:$2y$05$abcdef"],
                           "customRequestHeaders": {"X-Api-Key": "header-secret"}, "average": 100})
    assert set(found) >= {"deep-secret", "bob:$2y$05$abcdef", "$2y$05$abcdef", "header-secret"}
    assert "100" not in found
