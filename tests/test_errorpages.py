"""The ``errors`` middleware through a real Gateway: a caught status is answered with the page service's
page (a GET of the query, placeholders filled) under the caught or rewritten status; what the chain after
it answers counts (a 401 from plugin.jwt); credentials never go to the page service; a reload follows the
page service's servers."""
from __future__ import annotations

import json
import time
from typing import Any, Callable, Dict, Iterator, List

import pytest
import requests

from gatekeeper.app import Gateway
from gatekeeper.jwt.mint import mint
from tests.middleware_gateway import built, config_errors, jwt_options, routes_yaml

SECRET = "errors-secret-0123456789abcdef012345"


class Pages:
    """A page service that records the requests it gets and answers 200 with a JSON page."""

    def __init__(self, name: str, status: str = "200 OK") -> None:
        self.name, self.status, self.seen = name, status, []  # type: str, str, List[Dict[str, Any]]

    def __call__(self, environ: Dict[str, Any], start_response: Callable) -> List[bytes]:
        seen = {"method": environ["REQUEST_METHOD"], "path": environ["PATH_INFO"],
                "query": environ.get("QUERY_STRING", ""), "body": environ["wsgi.input"].read(),
                "headers": {k[5:].lower(): v for k, v in environ.items() if k.startswith("HTTP_")}}
        self.seen.append(seen)
        body = json.dumps({"page": self.name, "path": seen["path"]}).encode()
        start_response(self.status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]


@pytest.fixture
def pages(wsgi_server):
    def start(name: str = "pages", status: str = "200 OK"):
        app = Pages(name, status)
        return app, wsgi_server(app).url
    return start


@pytest.fixture
def gateway(conf_d, wsgi_server, echo_upstream):
    """``gateway(errors_options, pages_url, chain)`` -> (Gateway, url)."""
    def start(options: str, pages_url: str, chain: str = "[errors]"):
        conf_d("routes.yaml", write_routes(options, pages_url, chain, echo_upstream.url))
        gw = built(conf_d.root)
        return gw, wsgi_server(gw).url
    return start


def write_routes(options: str, pages_url: str, chain: str, app_url: str) -> str:
    return routes_yaml(f"errors: {{errors: {options}}}\nauth: {jwt_options(SECRET)}", chain, app_url,
                       services=f'pages: {{loadBalancer: {{servers: [{{url: "{pages_url}"}}]}}}}')


CATCH_5XX = "{status: ['500-599', '404'], service: pages, query: '/{status}.html?o={originalStatus}&u={url}'}"


@pytest.mark.parametrize("sent, status, page", [
    ("/status/503?token=abc", 503, "/503.html"),
    ("/status/404", 404, "/404.html"),
    ("/status/418", 418, None),
    ("/status/200", 200, None),
], ids=["caught-5xx", "caught-404", "not-in-list", "ok"])
def test_a_caught_status_gets_the_page_with_that_status(gateway, pages, sent, status, page):
    page_app, page_url = pages()
    _, url = gateway(CATCH_5XX, page_url)
    response = requests.get(url + sent, timeout=5)
    assert response.status_code == status
    if page is None:
        assert response.json()["server"] == "echo" and page_app.seen == []
        return
    assert response.json() == {"page": "pages", "path": page}
    seen = page_app.seen[-1]
    path = sent.partition("?")[0]
    host = url.split("://")[1]
    assert seen["method"] == "GET"
    assert seen["query"] == f"o={status}&u=http%3A%2F%2F{host.replace(':', '%3A')}{path.replace('/', '%2F')}"


def test_status_rewrites_change_the_status_and_the_placeholder(gateway, pages):
    page_app, page_url = pages()
    _, url = gateway("{status: ['500-599'], statusRewrites: {'502-504': 500}, service: pages, "
                     "query: '/{status}/{originalStatus}'}", page_url)
    assert requests.get(url + "/status/503", timeout=5).status_code == 500
    assert page_app.seen[-1]["path"] == "/500/503"
    assert requests.get(url + "/status/501", timeout=5).status_code == 501


def test_the_page_request_is_a_get_without_the_body_or_credentials(gateway, pages):
    page_app, page_url = pages()
    _, url = gateway(CATCH_5XX, page_url)
    response = requests.post(url + "/status/500", data=b"x" * 5000, timeout=5,
                             headers={"Authorization": "Bearer s3cret-token", "Cookie": "session=s3cret",
                                      "Accept": "text/html", "X-Request-Id": "r1"})
    assert response.status_code == 500
    seen = page_app.seen[-1]
    assert seen["method"] == "GET" and seen["body"] == b""
    assert "authorization" not in seen["headers"] and "cookie" not in seen["headers"]
    assert seen["headers"]["accept"] == "text/html" and seen["headers"]["x_request_id"] == "r1"
    assert "s3cret" not in response.text


def test_error_request_headers_choose_what_the_page_service_gets(gateway, pages):
    page_app, page_url = pages()
    _, url = gateway("{status: ['500'], service: pages, errorRequestHeaders: [Accept, Authorization]}", page_url)
    requests.get(url + "/status/500", headers={"Authorization": "Bearer t", "Accept": "a/b", "X-Other": "1"},
                 timeout=5)
    headers = page_app.seen[-1]["headers"]
    assert headers["accept"] == "a/b" and headers["authorization"] == "Bearer t" and "x_other" not in headers
    assert page_app.seen[-1]["path"] == "/"


def test_the_page_service_answer_is_sent_with_the_caught_status_whatever_its_own(gateway, pages):
    _, page_url = pages(status="404 Not Found")
    _, url = gateway(CATCH_5XX, page_url)
    response = requests.get(url + "/status/502", timeout=5)
    assert response.status_code == 502 and response.json()["page"] == "pages"


def test_a_page_service_that_is_down_gives_the_caught_status_and_the_proxy_text(gateway, free_port):
    _, url = gateway(CATCH_5XX, f"http://127.0.0.1:{free_port}")
    response = requests.get(url + "/status/503", timeout=5)
    assert response.status_code == 503
    assert response.text.startswith("502 Bad Gateway"), response.text


def test_errors_before_jwt_pages_its_401(gateway, pages):
    page_app, page_url = pages()
    _, url = gateway("{status: ['401', '403'], service: pages, query: '/{status}'}", page_url, "[errors, auth]")
    response = requests.get(url + "/x", headers={"Authorization": "Bearer not-a-token"}, timeout=5)
    assert response.status_code == 401
    assert response.json()["path"] == "/401"
    assert "authorization" not in page_app.seen[-1]["headers"]
    token = mint({"sub": "u", "exp": int(time.time()) + 300}, secret=SECRET)
    assert requests.get(url + "/x", headers={"Authorization": f"Bearer {token}"}, timeout=5).json()["server"] == "echo"


def test_a_reload_follows_the_page_service_servers(gateway, pages, conf_d, echo_upstream):
    first, first_url = pages("first")
    second, second_url = pages("second")
    gw, url = gateway(CATCH_5XX, first_url)
    assert requests.get(url + "/status/500", timeout=5).json()["page"] == "first"
    conf_d("routes.yaml", write_routes(CATCH_5XX, second_url, "[errors]", echo_upstream.url))
    gw.loader.reload()
    assert not gw.config.errors
    assert requests.get(url + "/status/500", timeout=5).json()["page"] == "second"
    assert len(first.seen) == 1 and len(second.seen) == 1


@pytest.mark.parametrize("options, message", [
    ("{status: ['!500'], service: pages}", "errors.status[0]: '!500': Traefik v3 has no negation"),
    ("{status: ['700'], service: pages}", "errors.status[0]: '700': codes go from 100 to 599"),
    ("{status: [], service: pages}", "errors.status: at least one status code or range is required"),
    ("{status: ['500'], service: {name: pages, port: 80}}", "a Kubernetes Service reference ({name, port}) is not"),
    ("{status: ['500'], service: pages, statusRewrites: {'500': 999}}", "errors.statusRewrites.500: must be at"),
    ("{status: ['500'], service: pages, query: '/a b'}", "errors.query: must not hold spaces"),
], ids=["negation", "out-of-range", "empty", "kubernetes-service", "bad-rewrite", "query-space"])
def test_bad_options_fail_closed(conf_d, echo_upstream, wsgi_server, options, message):
    conf_d("routes.yaml", write_routes(options, echo_upstream.url, "[errors]", echo_upstream.url))
    gw = Gateway(conf_d.root)
    errors = config_errors(gw)
    assert errors and 'middleware "errors@file": ' in errors[0] and message in errors[0], errors
    assert requests.get(wsgi_server(gw).url + "/x", timeout=5).status_code == 503


def lazy_app(status: str) -> Callable:
    """A WSGI app that calls start_response only when its body is first iterated (allowed by PEP 3333)."""
    def app(environ: Dict[str, Any], start_response: Callable) -> Iterator[bytes]:
        start_response(status, [("Content-Length", "8")])
        yield b"original"
    return app


@pytest.mark.parametrize("status, body", [("500 Oops", b"page"), ("200 OK", b"original")], ids=["caught", "passed"])
def test_an_app_starting_its_answer_lazily_is_caught_too(status, body):
    from gatekeeper.middlewares.errorpages import ErrorPages

    page_app = Pages("p")
    wrapped = ErrorPages(((500, 599),), [], page_app, "/{status}", keeps=lambda key: True, name="e@file").wrap(
        lazy_app(status))
    started: List[str] = []
    result = wrapped({"REQUEST_METHOD": "GET", "PATH_INFO": "/x", "wsgi.input": None},
                     lambda s, h, *exc: started.append(s))
    sent = b"".join(result)
    assert started == [status[:3] + (" Internal Server Error" if body == b"page" else " OK")]
    assert (b'"page": "p"' in sent) if body == b"page" else sent == b"original"


def test_the_kubernetes_service_form_is_refused_with_why(conf_d):
    conf_d("mw.yaml", """
        apiVersion: traefik.io/v1alpha1
        kind: Middleware
        metadata: {name: pages, namespace: default}
        spec:
          errors: {status: ["500-599"], query: "/{status}.html", service: {name: whoami, port: 80}}
        """)
    errors = [str(e) for e in Gateway(conf_d.root).config.errors]
    assert errors == ['mw.yaml:2: middleware "default-pages@kubernetescrd": errors.service: a Kubernetes Service '
                      'reference ({name, port}) is not supported; define this middleware in a file-provider '
                      'manifest, naming a service (pages@file)'], errors
