"""The whole gateway in-process: conf.d in a temp dir, real echo upstreams, real HTTP through a gevent server."""
import json
import platform

import pytest
import requests

from gatekeeper.app import Gateway
from gatekeeper.ops.echo import named_echo_app
from tests.conftest import exchange, status_of


@pytest.fixture
def gateway(wsgi_server, conf_d):
    """Factory: write conf.d text (with {a}, {b} replaced by two echo upstreams' URLs), serve a Gateway."""
    ups = {name: wsgi_server(named_echo_app(name)) for name in ("a", "b")}

    def start(text: str):
        conf_d("routes.yaml", text.replace("{a}", ups["a"].url).replace("{b}", ups["b"].url))
        gw = Gateway(conf_d.root)
        server = wsgi_server(gw)
        server.gateway = gw
        return server
    return start


ROUTES = """
http:
  routers:
    host-api:
      rule: Host(`api.example.com`) && PathPrefix(`/v1`)
      service: a
    any-v1:
      rule: PathPrefix(`/v1`)
      service: b
    exact:
      rule: Path(`/exact`)
      service: a
    low:
      rule: PathPrefix(`/`)
      priority: 1
      service: b
    forced:
      rule: PathPrefix(`/forced`)
      priority: 1000
      service: a
    forced-loser:
      rule: PathPrefix(`/forced`) && Method(`GET`)
      service: b
    methods:
      rule: Method(`DELETE`) && PathPrefix(`/m`)
      service: a
    hdr:
      rule: Header(`X-Env`, `canary`) && PathPrefix(`/h`)
      service: a
    query:
      rule: Query(`debug`, `1`) && PathPrefix(`/q`)
      service: a
  services:
    a: {loadBalancer: {servers: [{url: "{a}"}]}}
    b: {loadBalancer: {servers: [{url: "{b}"}]}}
"""


@pytest.mark.parametrize("method, path, headers, want", [
    ("GET", "/v1/users", {"Host": "api.example.com"}, "a"),
    ("GET", "/v1/users", {"Host": "API.example.com:8080"}, "a"),
    ("GET", "/v1/users", {"Host": "other.example.com"}, "b"),
    ("GET", "/exact", {}, "a"),
    ("GET", "/exact/more", {}, "b"),
    ("GET", "/forced/x", {}, "a"),
    ("DELETE", "/m/1", {}, "a"),
    ("GET", "/m/1", {}, "b"),
    ("GET", "/h", {"X-Env": "canary"}, "a"),
    ("GET", "/h", {"X-Env": "stable"}, "b"),
    ("GET", "/q?debug=1", {}, "a"),
    ("GET", "/q?debug=0", {}, "b"),
], ids=["host", "host-case-port", "other-host", "path-exact", "path-not-exact", "explicit-priority",
        "method", "method-miss", "header", "header-miss", "query", "query-miss"])
def test_routing_table(gateway, method, path, headers, want):
    server = gateway(ROUTES)
    assert not server.gateway.config.errors
    r = requests.request(method, server.url + path, headers=headers, timeout=5)
    assert r.status_code == 200
    assert r.json()["server"] == want


def test_priority_order_is_rule_length_then_name(gateway):
    server = gateway(ROUTES)
    names = [r.name for r in server.gateway.config.routers]
    assert names[0] == "forced@file"
    assert names[-1] == "low@file"
    lengths = [r.priority for r in server.gateway.config.routers]
    assert lengths == sorted(lengths, reverse=True)


def test_no_router_is_404(gateway):
    server = gateway("""
    http:
      routers:
        only: {rule: "Path(`/only`)", service: a}
      services:
        a: {loadBalancer: {servers: [{url: "{a}"}]}}
    """)
    r = requests.get(server.url + "/elsewhere", timeout=5)
    assert r.status_code == 404
    assert r.text.strip() == "Not Found" or "Not Found" in r.text


def test_router_with_missing_service_answers_503_not_fallthrough(gateway):
    server = gateway("""
    http:
      routers:
        broken: {rule: "PathPrefix(`/api`)", service: missing}
        catchall: {rule: "PathPrefix(`/`)", priority: 1, service: a}
      services:
        a: {loadBalancer: {servers: [{url: "{a}"}]}}
    """)
    assert requests.get(server.url + "/api/x", timeout=5).status_code == 503
    assert requests.get(server.url + "/other", timeout=5).json()["server"] == "a"
    assert any('service "missing@file" does not exist' in str(e) for e in server.gateway.config.errors)


def test_router_with_broken_middleware_answers_503(gateway):
    server = gateway("""
    http:
      routers:
        api: {rule: "PathPrefix(`/api`)", service: a, middlewares: [strip]}
        catchall: {rule: "PathPrefix(`/`)", priority: 1, service: a}
      middlewares:
        strip: {stripPrefix: {prefixes: []}}
      services:
        a: {loadBalancer: {servers: [{url: "{a}"}]}}
    """)
    assert requests.get(server.url + "/api/x", timeout=5).status_code == 503


def test_path_middlewares_and_headers(gateway):
    server = gateway("""
    http:
      routers:
        api:
          rule: PathPrefix(`/api`)
          service: a
          middlewares: [strip, add, hdrs]
      middlewares:
        strip: {stripPrefix: {prefixes: [/api]}}
        add: {addPrefix: {prefix: /internal}}
        hdrs:
          headers:
            customRequestHeaders: {X-Added: yes-please, X-Remove-Me: ""}
            customResponseHeaders: {X-Served-By: gatekeeper, Content-Type: ""}
      services:
        a: {loadBalancer: {servers: [{url: "{a}"}]}}
    """)
    r = requests.get(server.url + "/api/v1/a%20b?x=1", headers={"X-Remove-Me": "1"}, timeout=5)
    body = r.json()
    assert body["uri"] == "/internal/v1/a%20b?x=1"
    sent = dict(body["headers"])
    assert sent["X-Added"] == "yes-please"
    assert sent["X-Forwarded-Prefix"] == "/api"
    assert "X-Remove-Me" not in sent
    assert r.headers["X-Served-By"] == "gatekeeper"
    assert "Content-Type" not in r.headers


def test_chain_middleware(gateway):
    server = gateway("""
    http:
      routers:
        api: {rule: "PathPrefix(`/api`)", service: a, middlewares: [both]}
      middlewares:
        both: {chain: {middlewares: [strip, add]}}
        strip: {stripPrefix: {prefixes: [/api]}}
        add: {addPrefix: {prefix: /v2}}
      services:
        a: {loadBalancer: {servers: [{url: "{a}"}]}}
    """)
    assert requests.get(server.url + "/api/x", timeout=5).json()["path"] == "/v2/x"


def test_weighted_service_across_upstreams(gateway):
    server = gateway("""
    http:
      routers:
        api: {rule: "PathPrefix(`/`)", service: split}
      services:
        split: {weighted: {services: [{name: a, weight: 3}, {name: b, weight: 1}]}}
        a: {loadBalancer: {servers: [{url: "{a}"}]}}
        b: {loadBalancer: {servers: [{url: "{b}"}]}}
    """)
    seen = [requests.get(server.url + "/", timeout=5).json()["server"] for _ in range(40)]
    assert seen.count("a") == 30 and seen.count("b") == 10


def test_env_substitution(gateway, monkeypatch):
    monkeypatch.setenv("GK_TEST_PREFIX", "/from-env")
    server = gateway("""
    http:
      routers:
        api: {rule: "PathPrefix(`/`)", service: a, middlewares: [add]}
      middlewares:
        add: {addPrefix: {prefix: '{{ env "GK_TEST_PREFIX" }}'}}
      services:
        a: {loadBalancer: {servers: [{url: "{a}"}]}}
    """)
    assert requests.get(server.url + "/x", timeout=5).json()["path"] == "/from-env/x"


RAW_TARGET_ROUTES = """
http:
  routers:
    api: {rule: "PathPrefix(`/api`)", service: b}
    admin: {rule: "PathPrefix(`/admin`)", service: a}
    root: {rule: "Path(`/`)", service: a}
  services:
    a: {loadBalancer: {servers: [{url: "{a}"}]}}
    b: {loadBalancer: {servers: [{url: "{b}"}]}}
"""
RAW_TARGET_UPSTREAM = {"admin": "a", "api": "b", "root": "a"}


def echoed_raw(server, target: str, host: str) -> dict:
    """The echo upstream's report of a GET sent with ``target`` exactly as written (no client normalising)."""
    answer = exchange(server.port, f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    assert status_of(answer) == 200, answer[:300]
    return json.loads(answer.split(b"\r\n\r\n", 1)[1])


@pytest.mark.parametrize("target, routed_to, forwarded", [
    ("/api/%2E%2E/admin", "admin", "/admin"),
    ("/api/%2e%2e/admin/x?q=1", "admin", "/admin/x?q=1"),
    ("/api/../admin", "admin", "/admin"),
    ("/api/./v1/", "api", "/api/v1/"),
    ("/api/v1/..", "api", "/api/"),
    ("/../../api/x", "api", "/api/x"),
    ("/api//admin", "api", "/api/admin"),
    ("//admin/x", "admin", "/admin/x"),
], ids=["encoded-dotdot", "lower-encoded-with-query", "plain-dotdot", "single-dot", "trailing-dotdot",
        "above-root", "double-slash-merged", "leading-double-slash-merged"])
def test_dot_segments_are_resolved_before_routing(gateway, target, routed_to, forwarded):
    body = echoed_raw(gateway(RAW_TARGET_ROUTES), target, "x")
    assert body["server"] == RAW_TARGET_UPSTREAM[routed_to]
    assert body["uri"] == forwarded


@pytest.mark.parametrize("trusted, sent, seen", [
    ((), "6.6.6.6", "127.0.0.1"),
    (("10.0.0.0/8",), "6.6.6.6", "127.0.0.1"),
    (("127.0.0.0/8",), "6.6.6.6", "6.6.6.6, 127.0.0.1"),
    (("127.0.0.1",), "203.0.113.9, 10.1.2.3", "203.0.113.9, 10.1.2.3, 127.0.0.1"),
    (("::1", "127.0.0.1/32"), None, "127.0.0.1"),
], ids=["untrusted-replaced", "other-range-replaced", "trusted-kept", "trusted-chain-kept", "nothing-sent"])
def test_x_forwarded_for_kept_only_from_trusted_proxies(wsgi_server, conf_d, echo_upstream, trusted, sent, seen):
    conf_d("r.yaml", f"""
    http:
      routers:
        r: {{rule: "PathPrefix(`/`)", service: s}}
      services:
        s: {{loadBalancer: {{servers: [{{url: "{echo_upstream.url}"}}]}}}}
    """)
    server = wsgi_server(Gateway(conf_d.root, trusted_proxies=trusted))
    headers = {"X-Forwarded-For": sent, "X-Real-Ip": "6.6.6.6", "X-Forwarded-Proto": "https"} if sent else {}
    got = dict(requests.get(server.url + "/", headers=headers, timeout=5).json()["headers"])
    assert got["X-Forwarded-For"] == seen
    assert got["X-Real-Ip"] == "127.0.0.1"
    assert got["X-Forwarded-Proto"] == "http"


@pytest.mark.parametrize("target, host, routed_to, forwarded", [
    ("http://x/api/%2E%2E/admin", "x", "admin", "/admin"),
    ("http://other.example/api/v1?q=1", "other.example", "api", "/api/v1?q=1"),
    ("http://x?q=1", "x", "root", "/?q=1"),
], ids=["absolute-form-dot-segments", "absolute-form-host-wins", "absolute-form-no-path"])
def test_absolute_form_targets_route_as_origin_form(gateway, target, host, routed_to, forwarded):
    body = echoed_raw(gateway(RAW_TARGET_ROUTES), target, "ignored.example")
    assert body["server"] == RAW_TARGET_UPSTREAM[routed_to]
    assert body["uri"] == forwarded
    assert dict(body["headers"])["Host"] == host


@pytest.mark.skipif(platform.python_implementation() == "PyPy",
                    reason="PyPy's GC frees large buffers late (docs/performance.md, PyPy)")
def test_100mb_chunked_upload_through_the_whole_gateway_with_bounded_memory(gateway):
    """Through routing, a JWT middleware and the proxy: streamed, never held whole."""
    import hashlib

    from gatekeeper.jwt.mint import mint
    server = gateway("""
    http:
      routers:
        up: {rule: "PathPrefix(`/up`)", service: a, middlewares: [jwt]}
      middlewares:
        jwt: {plugin: {jwt: {signingSecret: big-upload-secret}}}
      services:
        a: {loadBalancer: {servers: [{url: "{a}"}]}}
    """)
    block = b"\x42" * (1 << 20)
    expected = hashlib.sha256()
    for _ in range(100):
        expected.update(block)

    def status_kib(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS
    except OSError:
        pytest.skip("cannot reset peak RSS here")
    before = status_kib("VmRSS")
    token = mint({"sub": "uploader"}, secret="big-upload-secret")
    r = requests.post(server.url + "/up", data=(block for _ in range(100)),
                      headers={"Authorization": f"Bearer {token}"}, timeout=60)
    body = r.json()
    assert (r.status_code, body["body_size"], body["body_sha256"]) == (200, 100 << 20, expected.hexdigest())
    assert dict(body["headers"]).get("Transfer-Encoding") == "chunked"
    assert (status_kib("VmHWM") - before) / 1024 < 60
