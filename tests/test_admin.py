"""The admin listener of a real ``gatekeeper serve``: health, readiness, metrics after traffic, /config."""
import json
import signal

import pytest
import requests
from serve_process import Gatekeeper, jwt_middleware, lb_manifest, metric_value, wait_for

from gatekeeper.jwt.mint import mint

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
    from gatekeeper.ops.view import middleware_options
    assert middleware_options(kind, options) == shown


def test_urls_credentials_masked():
    from gatekeeper.ops.admin import json_body
    body = json_body({"error": "server url 'http://user:pw@host:1': credentials in the url are not supported"})
    assert b"pw@" not in body and b"http://***@host:1" in body
    assert json.loads(body)


# --- Host check (DNS rebinding) ---------------------------------------------------------------------

ADMIN_PATHS = ["/healthz", "/readyz", "/metrics", "/config", "/dashboard/", "/nope"]


def admin_status(url: str, path: str, host, method: str = "GET") -> int:
    """The admin listener's status for ``path`` with exactly this Host header (None: no Host at all)."""
    from tests.conftest import exchange, status_of
    head = f"{method} {path} HTTP/1.1\r\n" + (f"Host: {host}\r\n" if host is not None else "")
    return status_of(exchange(int(url.rsplit(":", 1)[1]), (head + "Connection: close\r\n\r\n").encode()))


@pytest.mark.parametrize("host", [
    "attacker.example", "attacker.example:9901", "localhost.attacker.example", "127.0.0.1.nip.io",
    "ATTACKER.example", "evil@127.0.0.1", "127.0.0.1:abc", "::1", "[::1", "", None,
], ids=["name", "name-with-port", "localhost-prefixed-name", "ip-like-name", "upper-case-name", "userinfo",
        "bad-port", "unbracketed-ipv6", "unclosed-bracket", "empty", "missing"])
def test_admin_refuses_other_hosts_on_every_path(gateway, host):
    for path in ADMIN_PATHS:
        assert admin_status(gateway.admin, path, host) == 421, path
    assert admin_status(gateway.admin, "/healthz", host, method="POST") == 421
    response = requests.get(gateway.admin + "/config", headers={"Host": "attacker.example"}, timeout=5)
    assert "--admin-host" in response.json()["error"] and "routers" not in response.json()


@pytest.mark.parametrize("host", [
    "127.0.0.1", "127.0.0.1:9901", "127.3.4.5", "localhost", "LocalHost:9901", "localhost.", "[::1]",
    "[::1]:9901", "10.244.1.7:9901", "[fd00::7]:9901",
], ids=["loopback", "loopback-port", "loopback-range", "localhost", "localhost-mixed-case", "localhost-dot",
        "ipv6-loopback", "ipv6-loopback-port", "pod-ip-kubelet-probe", "ipv6-literal"])
def test_admin_answers_loopback_and_ip_literal_hosts(gateway, host):
    assert [admin_status(gateway.admin, path, host) for path in ADMIN_PATHS] == [200, 200, 200, 200, 200, 404]


@pytest.fixture
def admin_with_names(conf_d, wsgi_server):
    """The admin app (real loader, real server) accepting ``gk-admin.internal`` besides IPs and localhost."""
    from gatekeeper.config.reload import ConfigLoader
    from gatekeeper.ops.admin import make_admin_app
    conf_d("api.yaml", lb_manifest('open: {rule: "PathPrefix(`/`)", service: s}', "http://127.0.0.1:1"))
    loader = ConfigLoader(conf_d.root)
    loader.load()
    return wsgi_server(make_admin_app(loader, lambda: (b"", "text/plain"), hosts=["GK-Admin.Internal"]))


@pytest.mark.parametrize("host, status", [
    ("gk-admin.internal", 200), ("gk-admin.internal:9901", 200), ("GK-ADMIN.internal", 200),
    ("gk-admin.internal.", 200), ("127.0.0.1", 200), ("other.internal", 421), ("admin.internal", 421),
    ("x.gk-admin.internal", 421),
], ids=["name", "name-port", "name-case", "name-dot", "ip", "other-name", "suffix-of-name", "sub-name"])
def test_admin_host_names(admin_with_names, host, status):
    assert admin_status(admin_with_names.url, "/config", host) == status


@pytest.mark.parametrize("argv, expected", [
    (["--admin", "127.0.0.1:9901"], []),
    (["--admin", "0.0.0.0:9901", "--admin-host", "GK.example", "--admin-host", "gk.local."],
     ["gk.example", "gk.local"]),
    (["--admin", "gk-admin.internal:9901"], ["gk-admin.internal"]),
    (["--admin", "[::]:9901", "--admin-host", "a.b"], ["a.b"]),
], ids=["loopback-bind", "names", "bind-name", "ipv6-bind"])
def test_admin_hosts_from_arguments(argv, expected):
    from gatekeeper.cli.main import build_parser
    from gatekeeper.ops.admin import admin_hosts
    assert admin_hosts(build_parser().parse_args(["serve", *argv])) == expected


@pytest.mark.parametrize("value", ["gk.example:9901", "http://gk.example", "gk/example", "", "-gk.example", "a b"],
                         ids=["port", "scheme", "slash", "empty", "leading-hyphen", "space"])
def test_bad_admin_host_argument_exits_2(value, capsys):
    from gatekeeper.cli.main import main
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", f"--admin-host={value}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--admin-host" in err[0] and "not a host name" in err[0]


def test_admin_host_argument_reaches_the_listener(conf_d, tmp_path):
    conf_d("empty.yaml", "http: {}\n")
    gk = Gatekeeper(conf_d.root, tmp_path / "gk.log", "--admin", "127.0.0.1:0", "--admin-host", "gk-admin.internal")
    try:
        assert admin_status(gk.admin, "/healthz", "gk-admin.internal:9901") == 200
        assert admin_status(gk.admin, "/healthz", "attacker.example") == 421
    finally:
        assert gk.stop() == 0
