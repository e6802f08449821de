"""The admin listener of a real ``gatekeeper serve``: health, readiness, metrics after traffic, /config."""
import json
import signal

import pytest
import requests

from gatekeeper.token import mint
from serve_process import Gatekeeper, jwt_middleware, lb_manifest, metric_value, wait_for

SECRET = "admin-test-secret-value-0123456789"


@pytest.fixture
def gateway(conf_d, echo_upstream, tmp_path):
    conf_d("api.yaml", lb_manifest("""
        open: {rule: "PathPrefix(`/open`)", service: s}
        locked: {rule: "PathPrefix(`/locked`)", service: s, middlewares: [jwt]}
    """, echo_upstream.url, jwt_middleware(SECRET)))
    gk = Gatekeeper(conf_d.root, tmp_path / "gk.log", "--admin", "127.0.0.1:0")
    yield gk
    assert gk.stop() == 0


def send(gk, path, token=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(gk.url + path, headers=headers, timeout=5).status_code


def test_metrics_count_what_was_sent(gateway):
    good = mint({"sub": "alice"}, secret=SECRET)
    forged = mint({"sub": "mallory"}, secret="not-the-secret")
    sent = ([send(gateway, "/open/a") for _ in range(3)] + [send(gateway, "/nowhere") for _ in range(2)]
            + [send(gateway, "/locked") for _ in range(2)] + [send(gateway, "/locked", good)]
            + [send(gateway, "/locked", forged)])
    assert sent == [200] * 3 + [404] * 2 + [401] * 2 + [200] + [401]
    text = gateway.metrics()
    cases = {
        ("gatekeeper_requests_total", (("router", "open@file"), ("status", "200"), ("method", "GET"))): 3,
        ("gatekeeper_requests_total", (("router", "none"), ("status", "404"))): 2,
        ("gatekeeper_requests_total", (("router", "locked@file"), ("status", "401"))): 3,
        ("gatekeeper_requests_total", (("router", "locked@file"), ("status", "200"))): 1,
        ("gatekeeper_request_duration_seconds_count", (("router", "open@file"),)): 3,
        ("gatekeeper_jwt_outcomes_total", (("outcome", "missing_token"),)): 2,
        ("gatekeeper_jwt_outcomes_total", (("outcome", "accepted"),)): 1,
        ("gatekeeper_jwt_outcomes_total", (("outcome", "bad_signature"),)): 1,
        ("gatekeeper_requests_in_flight", ()): 0,
        ("gatekeeper_config_generation", ()): 1,
        ("gatekeeper_config_reloads_total", ()): 1,
    }
    for (name, labels), expected in cases.items():
        assert metric_value(text, name, **dict(labels)) == expected, (name, labels)


def test_health_ready_and_unknown_paths(gateway):
    health = requests.get(gateway.admin + "/healthz", timeout=5)
    assert health.status_code == 200 and health.json()["pid"] == gateway.proc.pid
    ready = requests.get(gateway.admin + "/readyz", timeout=5)
    assert ready.status_code == 200 and ready.json() == {"ready": True, "pid": gateway.proc.pid,
                                                          "generation": 1, "routers": 2}
    assert requests.get(gateway.admin + "/nope", timeout=5).status_code == 404
    assert requests.post(gateway.admin + "/healthz", timeout=5).status_code == 405
    # The admin endpoints are not on the traffic port.
    assert requests.get(gateway.url + "/healthz", timeout=5).status_code == 404


def test_config_shows_objects_but_no_secret(gateway):
    response = requests.get(gateway.admin + "/config", timeout=5)
    assert response.status_code == 200
    doc = response.json()
    assert [r["name"] for r in doc["routers"]] == ["locked@file", "open@file"]
    assert doc["routers"][0]["middlewares"] == ["jwt@file"] and doc["routers"][0]["state"] == "ok"
    assert doc["services"]["s@file"]["state"] == "ok"
    assert doc["middlewares"]["jwt@file"]["options"] == {"keySource": "signingSecret", "usernameClaim": "sub"}
    assert doc["generation"] == 1 and doc["errors"] == []
    assert SECRET not in response.text


def test_reload_seen_in_metrics_and_config(gateway, conf_d):
    conf_d("broken.yaml", "http: [\n")
    gateway.signal(signal.SIGHUP)
    assert wait_for(lambda: metric_value(gateway.metrics(), "gatekeeper_config_generation") == 2)
    text = gateway.metrics()
    assert metric_value(text, "gatekeeper_config_reloads_total") == 2
    assert metric_value(text, "gatekeeper_config_reload_errors_total") == 1
    assert metric_value(text, "gatekeeper_config_errors") == 1
    doc = requests.get(gateway.admin + "/config", timeout=5).json()
    assert doc["generation"] == 2 and len(doc["errors"]) == 1 and "broken.yaml" in doc["errors"][0]


def test_readyz_503_without_routers(conf_d, tmp_path):
    conf_d("empty.yaml", "http: {}\n")
    gk = Gatekeeper(conf_d.root, tmp_path / "gk.log", "--admin", "127.0.0.1:0")
    try:
        ready = requests.get(gk.admin + "/readyz", timeout=5)
        assert ready.status_code == 503 and ready.json()["ready"] is False
        assert requests.get(gk.admin + "/healthz", timeout=5).status_code == 200
    finally:
        assert gk.stop() == 0


@pytest.mark.parametrize("kind, options, shown", [
    ("plugin.jwt", {"signingSecret": "s3", "tokenKey": "tk", "clientConfig": {"clientSecret": "x"}},
     {"tokenKey": "tk", "keySource": "signingSecret"}),
    ("plugin.jwt", {"JWKSFILE": "/etc/keys.json"}, {"keySource": "jwksFile"}),
    ("headers", {"customRequestHeaders": {"X-Api-Key": "hunter2"}}, {"customRequestHeaders": ["X-Api-Key"]}),
    ("stripPrefix", {"prefixes": ["/api"]}, {"prefixes": ["/api"]}),
], ids=["jwt-secret-summarised", "jwt-case-insensitive", "headers-names-only", "other-kinds-as-is"])
def test_middleware_options_summary(kind, options, shown):
    from gatekeeper.admin import middleware_options
    assert middleware_options(kind, options) == shown


def test_urls_credentials_masked():
    from gatekeeper.admin import json_body
    body = json_body({"error": "server url 'http://user:pw@host:1': credentials in the url are not supported"})
    assert b"pw@" not in body and b"http://***@host:1" in body
    assert json.loads(body)
