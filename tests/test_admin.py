"""The admin listener of a real ``gatekeeper serve``: health, readiness, metrics after traffic, /config."""
import json
import signal
import subprocess
import sys
import time

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
                                                          "generation": 1, "routers": 2, "stale": []}
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


# --- Werkzeug routes -----------------------------------------------------------------------------------

@pytest.mark.parametrize("method, path, status, expected", [
    ("GET", "/", 302, {"Location": "/dashboard/"}),
    ("HEAD", "/", 302, {"Location": "/dashboard/"}),
    ("GET", "/dashboard", 308, {"Location": "/dashboard/"}),
    ("HEAD", "/readyz", 200, {"Content-Type": "application/json"}),
    ("POST", "/config", 405, {"Allow": "GET, HEAD"}),
    ("DELETE", "/", 405, {"Allow": "GET, HEAD"}),
    ("PUT", "/dashboard/", 405, {"Allow": "GET, HEAD"}),
    ("GET", "/healthz/", 200, {"Content-Type": "application/json"}),
    ("GET", "/config/x", 404, {"Content-Type": "application/json"}),
    ("GET", "/%2e%2e/config", 404, {"Content-Type": "application/json"}),
], ids=["root-redirects", "root-head", "dashboard-slash", "head", "post-405", "delete-root-405",
        "put-dashboard-405", "trailing-slash-tolerated", "below-endpoint-404", "dot-dot-404"])
def test_werkzeug_routes(admin_with_names, method, path, status, expected):
    response = requests.request(method, admin_with_names.url + path, allow_redirects=False, timeout=5)
    assert response.status_code == status
    for name, value in expected.items():
        assert response.headers[name].endswith(value) if name == "Location" else response.headers[name] == value
    if status in (404, 405) and method != "HEAD":
        body = response.json()
        assert body["error"] and (status != 404 or body["endpoints"][0] == "/healthz")


TYPO = "signingSecrt"


def test_a_live_typo_is_stale_in_readyz_config_and_metrics(gateway, conf_d):
    """A live edit in error: the last good version serves (200), and /readyz, /config and the gauge say so."""
    good = mint({"sub": "alice"}, secret=SECRET)
    edited = (conf_d.root / "api.yaml").read_text().replace("signingSecret", TYPO)
    (conf_d.root / "api.yaml").write_text(edited)
    before = time.time()
    assert wait_for(lambda: requests.get(gateway.admin + "/readyz", timeout=5).json()["generation"] == 2)
    ready = requests.get(gateway.admin + "/readyz", timeout=5)
    assert ready.status_code == 200 and ready.json()["ready"] is True
    [stale] = ready.json()["stale"]
    assert (stale["kind"], stale["name"]) == ("middleware", "jwt@file") and TYPO in stale["error"]
    assert before - 1 <= stale["since"] <= time.time()
    assert send(gateway, "/locked", good) == 200 and send(gateway, "/locked") == 401   # still guarded
    doc = requests.get(gateway.admin + "/config", timeout=5).json()
    assert doc["middlewares"]["jwt@file"]["state"] == "stale" and TYPO in doc["middlewares"]["jwt@file"]["error"]
    assert doc["stale"] == [stale]
    text = gateway.metrics()
    assert metric_value(text, "gatekeeper_config_stale_objects", kind="middleware") == 1
    assert metric_value(text, "gatekeeper_config_stale_objects", kind="router") == 0
    for body in (ready.text, text, json.dumps(doc)):
        assert SECRET not in body
    # the same files in a fresh process: that router answers 503, and check says so per router
    checked = subprocess.run([sys.executable, "-m", "gatekeeper", "check", str(conf_d.root)], capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 1
    assert ('router "locked@file" (api.yaml:4): a fresh process answers 503: middleware "jwt@file" is in error'
            in checked.stdout), checked.stdout
    assert "would not serve 1 router(s):" in checked.stdout and SECRET not in checked.stdout


def test_strict_refuses_to_start_with_errors(conf_d, tmp_path, echo_upstream):
    conf_d("api.yaml", lb_manifest("""
        locked: {rule: "PathPrefix(`/locked`)", service: s, middlewares: [jwt]}
        bad: {rule: "Path(`/x`", service: s}
    """, echo_upstream.url, jwt_middleware(SECRET).replace("signingSecret", TYPO)))
    done = subprocess.run([sys.executable, "-m", "gatekeeper", "serve", "--strict", "--conf-d", str(conf_d.root),
                           "--listen", "127.0.0.1:0", "--log-level", "error"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert lines[-1] == "gatekeeper: --strict: 3 configuration error(s); not starting"
    errors = lines[-4:-1]
    assert any('middleware "jwt@file": unknown option "signingSecrt"' in line for line in errors)
    assert any('router "bad@file": rule:' in line for line in errors)
    assert any('router "locked@file": answers 503' in line for line in errors)
    assert SECRET not in done.stderr


def test_strict_keeps_the_last_good_version_on_a_live_edit(conf_d, tmp_path, echo_upstream):
    conf_d("api.yaml", lb_manifest('locked: {rule: "PathPrefix(`/locked`)", service: s, middlewares: [jwt]}',
                                   echo_upstream.url, jwt_middleware(SECRET)))
    gk = Gatekeeper(conf_d.root, tmp_path / "gk.log", "--admin", "127.0.0.1:0", "--strict")
    try:
        (conf_d.root / "api.yaml").write_text((conf_d.root / "api.yaml").read_text().replace("signingSecret", TYPO))
        assert wait_for(lambda: requests.get(gk.admin + "/readyz", timeout=5).json()["stale"] != [])
        assert send(gk, "/locked", mint({"sub": "a"}, secret=SECRET)) == 200 and send(gk, "/locked") == 401
    finally:
        assert gk.stop() == 0
