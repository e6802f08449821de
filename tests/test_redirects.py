"""redirectScheme and redirectRegex through a real Gateway: Traefik's status codes, the URL as the gateway
sees it (entry scheme, X-Forwarded-Proto from a trusted proxy only, the Host header), a Location that never
carries CR/LF, and ``gatekeeper check`` refusing bad options of this wing's middlewares."""
from __future__ import annotations

import ssl
from typing import Callable, Sequence

import pytest
import requests

from gatekeeper.app import Gateway
from tests.conftest import exchange, status_of
from tests.middleware_gateway import NOWHERE, check_refuses, jwt_options, one_middleware, routes_yaml, serve_routes

SECRET = "redirect-secret-0123456789abcdef0123"


@pytest.fixture
def serve(conf_d, wsgi_server, echo_upstream) -> Callable[..., str]:
    """``serve(middleware_yaml, chain)``: router ``app`` (PathPrefix /) with ``chain`` before the echo upstream."""
    def start(middlewares: str, chain: str = "[redirect]", trusted: Sequence[str] = ()) -> str:
        return serve_routes(conf_d, wsgi_server, routes_yaml(f"auth: {jwt_options(SECRET)}\n{middlewares}", chain,
                                                             echo_upstream.url), trusted_proxies=trusted)
    return start


def send(url: str, method: str = "GET", path: str = "/x?q=1", **headers: str) -> requests.Response:
    return requests.request(method, url + path, headers=headers, allow_redirects=False, timeout=5)


@pytest.mark.parametrize("options, method, host, status, location", [
    ("scheme: https", "GET", "foo", 302, "https://foo/x?q=1"),
    ("scheme: https", "POST", "foo", 307, "https://foo/x?q=1"),
    ("{scheme: https, permanent: true}", "GET", "foo", 301, "https://foo/x?q=1"),
    ("{scheme: https, permanent: true}", "PUT", "foo", 308, "https://foo/x?q=1"),
    ("scheme: https", "GET", "foo:8080", 302, "https://foo/x?q=1"),
    ("{scheme: https, port: '8443'}", "GET", "foo:8080", 302, "https://foo:8443/x?q=1"),
    ("{scheme: https, port: 443}", "GET", "[::1]:80", 302, "https://[::1]/x?q=1"),
    ("{scheme: http, port: 8181}", "GET", "foo:8080", 302, "http://foo:8181/x?q=1"),
    ("{scheme: http, port: 80}", "GET", "foo:80", 200, None),
    ("scheme: http", "GET", "foo", 200, None),
], ids=["get-302", "post-307", "permanent-get-301", "permanent-put-308", "port-dropped", "port-set", "ipv6",
        "port-only", "already-there-port-80", "already-there"])
def test_redirect_scheme(serve, options, method, host, status, location):
    url = serve(f"redirect: {{redirectScheme: {{{options.strip('{}')}}}}}")
    response = send(url, method, Host=host)
    assert response.status_code == status
    assert response.headers.get("Location") == location
    if location is None:
        assert response.json()["path"] == "/x"


@pytest.mark.parametrize("trusted, status", [((), 302), (("127.0.0.1/32",), 200)], ids=["untrusted", "trusted"])
def test_x_forwarded_proto_counts_only_from_a_trusted_proxy(serve, trusted, status):
    url = serve("redirect: {redirectScheme: {scheme: https}}", trusted=trusted)
    assert send(url, Host="foo", **{"X-Forwarded-Proto": "https"}).status_code == status


@pytest.mark.parametrize("target, status", [("https", 200), ("http", 302)])
def test_a_tls_entry_point_is_https(conf_d, wsgi_server, echo_upstream, tls_files, target, status):
    ca, cert, key = tls_files
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    conf_d("routes.yaml", one_middleware("redirectScheme", f"{{scheme: {target}}}", "redirect", echo_upstream.url))
    server = wsgi_server(Gateway(conf_d.root), ssl_context=context)
    response = requests.get(f"https://127.0.0.1:{server.port}/x", headers={"Host": "foo"}, verify=str(ca),
                            allow_redirects=False, timeout=5)
    assert response.status_code == status
    assert response.headers.get("Location") == (None if status == 200 else "http://foo/x")


def test_the_location_host_is_the_host_header_never_x_forwarded_host(serve):
    url = serve("redirect: {redirectScheme: {scheme: https}}", trusted=("127.0.0.1/32",))
    response = send(url, Host="foo", **{"X-Forwarded-Host": "evil.example"})
    assert response.headers["Location"] == "https://foo/x?q=1"


def test_a_malformed_host_is_400_not_a_redirect_elsewhere(serve):
    port = int(serve("redirect: {redirectScheme: {scheme: https}}").rsplit(":", 1)[1])
    answer = exchange(port, b"GET /x HTTP/1.1\r\nHost: evil.example/@foo\r\nConnection: close\r\n\r\n")
    assert status_of(answer) == 400
    assert b"Location" not in answer


@pytest.mark.parametrize("regex, replacement, path, status, location", [
    (r"^http://([^/]+)/old/(.*)", "https://${1}/new/$2", "/old/a?q=1", 302, "https://{host}/new/a?q=1"),
    (r"^http://[^/]+/old/(?P<rest>.*)", "https://example.com/${rest}", "/old/b", 302, "https://example.com/b"),
    (r"^http://[^/]+/old/(.*)", "https://example.com/$1", "/other", 200, None),
    (r"^(http://.*)$", "$1", "/same", 200, None),
    (r"/old/", "/new/", "/old/x/old/y", 302, "http://{host}/new/x/new/y"),
], ids=["groups", "named-group", "no-match", "unchanged-url", "every-match"])
def test_redirect_regex(serve, regex, replacement, path, status, location):
    url = serve(f"redirect: {{redirectRegex: {{regex: '{regex}', replacement: '{replacement}'}}}}")
    response = send(url, path=path)
    assert response.status_code == status
    host = url.split("://", 1)[1]
    assert response.headers.get("Location") == (location.format(host=host) if location else None)


@pytest.mark.parametrize("method, status", [("GET", 301), ("POST", 308)])
def test_redirect_regex_permanent(serve, method, status):
    url = serve("redirect: {redirectRegex: {regex: '^http://[^/]+/(.*)', replacement: 'https://a/$1', "
                "permanent: true}}")
    assert send(url, method).status_code == status


def test_crlf_in_the_path_never_reaches_the_location_header(serve):
    url = serve(r"redirect: {redirectRegex: {regex: '^http://[^/]+/old/(.*)', replacement: 'https://a/$1'}}")
    port = int(url.rsplit(":", 1)[1])
    answer = exchange(port, b"GET /old/x%0d%0aSet-Cookie:%20stolen=1 HTTP/1.1\r\nHost: h\r\n"
                            b"Connection: close\r\n\r\n")
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    assert status_of(answer) == 302
    assert b"\r\nlocation: https://a/x%0d%0aset-cookie:%20stolen=1" in head
    assert b"\r\nset-cookie" not in head


def test_a_redirect_before_jwt_needs_no_token_and_after_it_does(serve):
    before = serve("redirect: {redirectScheme: {scheme: https}}", chain="[redirect, auth]")
    assert send(before, Host="foo").status_code == 302
    after = serve("redirect: {redirectScheme: {scheme: https}}", chain="[auth, redirect]")
    assert send(after, Host="foo").status_code == 401


def test_gatekeeper_check_refuses_bad_options_with_the_reason(conf_d):
    check_refuses(conf_d, "", [
        ("{redirectRegex: {regex: '^(a', replacement: '/'}}", "redirectRegex.regex: missing ): this ( is never closed"),
        ("{redirectScheme: {port: 443}}", "redirectScheme.scheme: expected a string, got nothing"),
        ("""{redirectRegex: {regex: 'x', replacement: "a\\r\\nb"}}""",
         "redirectRegex.replacement: must not hold spaces or control"),
        ("{errors: {status: ['500-4xx'], service: pages, query: '/{status}'}}",
         "errors.status[0]: '500-4xx' is not a status code or a range"),
        ("{errors: {status: ['500'], service: nowhere, query: '/{status}'}}",
         'errors.service: service "nowhere" does not exist'),
        ("{errors: {status: ['599-500'], service: pages}}",
         "errors.status[0]: '599-500': codes go from 100 to 599, low to high"),
        ("{buffering: {retryExpression: 'IsNetworkError() && Attempts() < 2'}}",
         "buffering.retryExpression: not supported"),
    ], file="bad.yaml", services=f'pages: {{loadBalancer: {{servers: [{{url: "{NOWHERE}"}}]}}}}')


def test_outcomes_are_counted_and_logged_without_credentials(conf_d, wsgi_server, tmp_path):
    from gatekeeper.ops.echo import named_echo_app
    from tests.serve_process import Gatekeeper, metric_value, wait_for

    upstream = wsgi_server(named_echo_app("echo"))
    conf_d("routes.yaml", f"""
        http:
          routers:
            moved: {{rule: "PathPrefix(`/moved`)", service: app, middlewares: [redirect]}}
            rewrite: {{rule: "PathPrefix(`/rw`)", service: app, middlewares: [rewrite]}}
            pages: {{rule: "PathPrefix(`/status`)", service: app, middlewares: [pages]}}
            upload: {{rule: "PathPrefix(`/up`)", service: app, middlewares: [buffer]}}
          middlewares:
            redirect: {{redirectRegex: {{regex: '^http://[^/]+/moved/(.*)', replacement: 'https://a/$1'}}}}
            rewrite: {{replacePathRegex: {{regex: '^/rw/', replacement: '/../'}}}}
            pages: {{errors: {{status: ['500-599'], service: app, query: '/page/{{status}}'}}}}
            buffer: {{buffering: {{maxRequestBodyBytes: 10}}}}
          services:
            app: {{loadBalancer: {{servers: [{{url: "{upstream.url}"}}]}}}}
        """)
    gk = Gatekeeper(conf_d.root, tmp_path / "gk.log", "--admin", "127.0.0.1:0")
    try:
        secret = {"Authorization": "Bearer s3cret-credential", "Cookie": "sid=s3cret-credential"}
        sent = [requests.get(gk.url + "/moved/x", headers=secret, allow_redirects=False, timeout=5),
                requests.get(gk.url + "/rw/x", headers=secret, timeout=5),
                requests.get(gk.url + "/status/503", headers=secret, timeout=5),
                requests.post(gk.url + "/up", data=b"x" * 100, headers=secret, timeout=5)]
        assert [r.status_code for r in sent] == [302, 400, 503, 413]
        expected = {("redirect@file", "redirected"), ("rewrite@file", "bad_rewrite"), ("pages@file", "error_page"),
                    ("buffer@file", "body_too_large")}
        for middleware, outcome in expected:
            assert wait_for(lambda m=middleware, o=outcome: metric_value(
                gk.metrics(), "gatekeeper_middleware_outcomes_total", middleware=m, outcome=o) == 1), (middleware,
                                                                                                       outcome)
        assert wait_for(lambda: len(gk.access_lines()) >= 4)
        assert "s3cret" not in gk.log() and all("s3cret" not in r.text for r in sent)
    finally:
        gk.stop()
