"""failover, weighted with health, and sticky cookies, compiled from manifests and served by real upstreams."""
from __future__ import annotations

import textwrap
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from gatekeeper.config.compile import compile_config
from gatekeeper.config.manifests import read_dir
from gatekeeper.config.table import Config
from gatekeeper.proxy import health
from gatekeeper.proxy.balancer import ServerSpec, make_load_balancer
from gatekeeper.proxy.sticky import StickyDef, cookie_value, default_name
from tests.conftest import wait_until


@pytest.fixture
def compiled(conf_d) -> Iterator[Callable[[str], Config]]:
    """Compile a manifest; every service is closed (its checker stopped) at the end."""
    configs: List[Config] = []
    health.enable_checks()

    def compile_text(text: str) -> Config:
        conf_d("api.yaml", textwrap.dedent(text))
        config = compile_config(read_dir(conf_d.root))
        configs.append(config)
        return config
    yield compile_text
    health._REGISTRY.enabled = False
    for config in configs:
        for built in config.services.values():
            close = getattr(built.app, "close", None)
            if close is not None:
                close()
    assert wait_until(lambda: not health.running_checkers())


def call(app: Any, cookie: Optional[str] = None) -> Tuple[str, str, Optional[str]]:
    """(status code, body, Set-Cookie or None) of one GET through ``app``."""
    out: Dict[str, Any] = {}
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "QUERY_STRING": "", "SERVER_NAME": "gk",
               "SERVER_PORT": "80", "HTTP_HOST": "gk", "wsgi.input": None, "REMOTE_ADDR": "127.0.0.1",
               "wsgi.url_scheme": "http", "SERVER_PROTOCOL": "HTTP/1.1"}
    if cookie:
        environ["HTTP_COOKIE"] = cookie

    def start_response(status: str, headers: List[Tuple[str, str]], exc_info: Any = None) -> None:
        out["status"], out["headers"] = status, headers
    body = b"".join(app(environ, start_response)).decode()
    cookies = [v for k, v in out["headers"] if k.lower() == "set-cookie"]
    return out["status"][:3], body if out["status"].startswith("200") else "", cookies[0] if cookies else None


def lb(name: str, url: str, check: bool = True) -> str:
    hc = "\n        healthCheck: {path: /health, interval: 50ms, timeout: 1s}" if check else ""
    return f"""
    {name}:
      loadBalancer:
        servers: [{{url: "{url}"}}]{hc}"""


def services(*blocks: str) -> str:
    return "http:\n  services:" + "".join(textwrap.indent(textwrap.dedent(b), "    ") for b in blocks)


# --- failover ------------------------------------------------------------------------------------------

def test_failover_serves_fallback_while_main_is_down(upstreams, compiled):
    (main, sm), (_spare, ss) = upstreams("main", "spare")
    config = compiled(services(lb("main", sm.url), lb("spare", ss.url, check=False), """
    f:
      failover: {service: main, fallback: spare}"""))
    app = config.services["f@file"].app
    assert call(app)[:2] == ("200", "main")
    main.status = 500
    assert wait_until(lambda: call(app)[1] == "spare")
    main.status = 200
    assert wait_until(lambda: call(app)[1] == "main")


@pytest.mark.parametrize("text, message", [
    (services(lb("main", "http://127.0.0.1:9", check=False), lb("spare", "http://127.0.0.1:9"),
              "\nf:\n  failover: {service: main, fallback: spare}"),
     'failover: service "main@file" has no healthCheck'),
    (services(lb("main", "http://127.0.0.1:9"), lb("spare", "http://127.0.0.1:9", check=False),
              "\nf:\n  failover: {service: main, fallback: spare, healthCheck: {}}"),
     'failover: fallback "spare@file" has no healthCheck'),
    (services(lb("main", "http://127.0.0.1:9"), "\nf:\n  failover: {service: main, fallback: f}"),
     'failover: fallback "f@file" refers back to itself'),
    (services(lb("a", "http://127.0.0.1:9", check=False), lb("b", "http://127.0.0.1:9"),
              "\nw:\n  weighted: {services: [{name: a}, {name: b}], healthCheck: {}}"),
     'weighted.healthCheck: service "a@file" has no healthCheck'),
], ids=["main-unchecked", "fallback-unchecked-with-healthCheck", "cycle", "weighted-member-unchecked"])
def test_health_that_cannot_be_known_is_refused(compiled, text, message):
    config = compiled(text)
    assert any(message in str(err) for err in config.errors), [str(e) for e in config.errors]


def test_failover_of_failover_reports_health_up_the_tree(upstreams, compiled):
    (a, sa), (b, sb), (_c, sc) = upstreams("a", "b", "c")
    config = compiled(services(lb("a", sa.url), lb("b", sb.url), lb("c", sc.url, check=False), """
    inner:
      failover: {service: a, fallback: b, healthCheck: {}}
    outer:
      failover: {service: inner, fallback: c}"""))
    app = config.services["outer@file"].app
    assert call(app)[1] == "a"
    a.status = 500
    assert wait_until(lambda: call(app)[1] == "b")
    b.status = 500
    assert wait_until(lambda: call(app)[1] == "c")


# --- weighted with health -----------------------------------------------------------------------------

@pytest.mark.parametrize("health_check, down_answers", [
    (True, {("200", "a")}),
    (False, {("200", "a"), ("503", "")}),
], ids=["healthCheck-skips-members-down", "without-it-a-member-down-answers-503"])
def test_weighted_with_health(upstreams, compiled, health_check, down_answers):
    (a, sa), (b, sb) = upstreams("a", "b")
    hc = ", healthCheck: {}" if health_check else ""
    config = compiled(services(lb("a", sa.url), lb("b", sb.url),
                               f"\nw:\n  weighted: {{services: [{{name: a}}, {{name: b, weight: 3}}]{hc}}}"))
    app = config.services["w@file"].app
    assert {call(app)[:2] for _ in range(8)} == {("200", "a"), ("200", "b")}
    b.status = 500
    assert wait_until(lambda: not config.services["b@file"].app.healthy())
    assert {call(app)[:2] for _ in range(12)} == down_answers
    a.status = 500
    assert wait_until(lambda: not config.services["a@file"].app.healthy())
    assert {call(app)[0] for _ in range(4)} == {"503"}


# --- sticky cookies -----------------------------------------------------------------------------------

@pytest.mark.parametrize("definition, attributes", [
    (StickyDef(), "; Path=/"),
    (StickyDef(name="srv", secure=True, http_only=True, same_site="lax", max_age=60),
     "; Path=/; Max-Age=60; Secure; HttpOnly; SameSite=Lax"),
    (StickyDef(name="srv", same_site="none", max_age=-1, path="/app", domain="example.com"),
     "; Path=/app; Domain=example.com; Max-Age=0; SameSite=None"),
], ids=["defaults", "secure-httponly-lax-maxage", "path-domain-expired"])
def test_sticky_cookie_attributes(upstreams, definition, attributes):
    (_a, sa), (_b, sb) = upstreams("a", "b")
    app = make_load_balancer([ServerSpec(sa.url), ServerSpec(sb.url)], name="s@file", sticky=definition)
    try:
        _, body, cookie = call(app)
        name = definition.name or default_name("s@file")
        server = sa.url if body == "a" else sb.url
        assert cookie == f"{name}={cookie_value(server)}{attributes}"
        for _ in range(6):  # the cookie keeps the client on its server, and is not set again
            assert call(app, cookie.split(";")[0]) == ("200", body, None)
    finally:
        app.close()


def test_sticky_cookie_never_picks_outside_the_service_nor_a_server_down(upstreams, compiled):
    (_a, sa), (b, sb) = upstreams("a", "b")
    config = compiled(services("""
    s:
      loadBalancer:
        servers: [{url: "%s"}, {url: "%s"}]
        healthCheck: {path: /health, interval: 50ms, timeout: 1s}
        sticky: {cookie: {name: srv}}""" % (sa.url, sb.url)))
    app = config.services["s@file"].app
    to_b = f"srv={cookie_value(sb.url)}"
    assert {call(app, to_b) for _ in range(4)} == {("200", "b", None)}
    outside = f"srv={cookie_value('http://10.0.0.1:80')}"   # a server of no service here
    status, body, cookie = call(app, outside)
    chosen = sa.url if body == "a" else sb.url
    assert status == "200" and cookie is not None and cookie.startswith(f"srv={cookie_value(chosen)}")
    b.status = 500
    assert wait_until(lambda: app.server_status()[sb.url] == "DOWN")
    assert {call(app, to_b)[:2] for _ in range(4)} == {("200", "a")}
    assert call(app, to_b)[2] == f"srv={cookie_value(sa.url)}; Path=/"   # moved to a server that is up


def test_weighted_sticky_cookie_names_a_member(upstreams, compiled):
    (a, sa), (b, sb) = upstreams("a", "b")
    config = compiled(services(lb("a", sa.url), lb("b", sb.url), """
    w:
      weighted:
        services: [{name: a}, {name: b}]
        sticky: {cookie: {name: member, httpOnly: true}}"""))
    app = config.services["w@file"].app
    _, body, cookie = call(app)
    assert cookie == f"member={cookie_value(body + '@file')}; Path=/; HttpOnly"
    assert {call(app, cookie.split(";")[0])[:2] for _ in range(6)} == {("200", body)}
    other = "b" if body == "a" else "a"
    (a if body == "a" else b).status = 500   # the member it names goes down: the other one serves
    assert wait_until(lambda: call(app, cookie.split(";")[0])[1] == other)


# --- the same options on an IngressRoute's services ------------------------------------------------------

@pytest.mark.parametrize("services, expected", [
    ("[{name: web, port: 80, sticky: {cookie: {name: srv, secure: true}}, healthCheck: {path: /ready}}]",
     (StickyDef(name="srv", secure=True), "/ready")),
    ("[{name: web, port: 80, sticky: {cookie: {sameSite: often}}}]", "sticky.cookie.sameSite: expected none"),
    ("[{name: x@file, kind: TraefikService, sticky: {cookie: {}}}]", "sticky: applies to a Service"),
], ids=["sticky-and-healthCheck-read", "bad-sticky-refused", "on-a-reference-refused"])
def test_ingress_route_service_options(conf_d, services, expected):
    from tests.test_kubernetes import WEB_ENDPOINTS, WEB_SERVICE, ingress_route, read_definitions
    defs, errors = read_definitions(conf_d, ingress_route(services), WEB_SERVICE, WEB_ENDPOINTS)
    if isinstance(expected, str):
        assert any(expected in e for e in errors), errors
        return
    assert errors == []
    (router,) = defs.routers.values()
    service = defs.services[router.service]
    assert (service.sticky, service.health_check.path) == expected
