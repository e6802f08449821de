"""A configuration mistake never opens a route: at start, a protected router in error answers 503 for what it
matches; on a live edit, every object keeps its last good version. Real gateway, real upstream, real files.
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Callable, Dict, Tuple

import pytest
import requests

from gatekeeper.app import Gateway
from gatekeeper.jwt.mint import mint
from tests.conftest import RunningServer

SECRET = "a-signing-secret-long-enough-for-hs256"


def token() -> str:
    return mint({"sub": "alice"}, secret=SECRET, alg="HS256")


def file_manifests(upstream: str, api_router: str = "", api_service: str = "") -> Dict[str, str]:
    """A public catch-all (PathPrefix(`/`)) and a JWT-protected /api router, in the file-provider shape."""
    api_router = api_router or "{rule: 'PathPrefix(`/api`)', middlewares: [jwt], service: api}"
    api_service = api_service or f"{{loadBalancer: {{servers: [{{url: '{upstream}'}}]}}}}"
    return {
        "public.yaml": f"""
            http:
              routers:
                public: {{rule: 'PathPrefix(`/`)', service: public}}
              services:
                public: {{loadBalancer: {{servers: [{{url: '{upstream}'}}]}}}}
            """,
        "api.yaml": f"""
            http:
              routers:
                api: {api_router}
              middlewares:
                jwt: {{plugin: {{jwt: {{signingSecret: {SECRET}}}}}}}
              services:
                api: {api_service}
            """,
    }


PROTECTED_ROUTE = """
  - match: PathPrefix(`/api`)
    middlewares: [{name: test-jwt}]
    services: [{name: whoami, port: 80}]"""


def kube_manifests(port: int, protected_route: str = PROTECTED_ROUTE) -> Dict[str, str]:
    """An IngressRoute whose routes[0] is protected by a JWT Middleware and routes[1] is a public catch-all."""
    return {"app.yaml": f"""
        apiVersion: traefik.io/v1alpha1
        kind: Middleware
        metadata: {{name: test-jwt, namespace: apps}}
        spec: {{plugin: {{jwt: {{signingSecret: {SECRET}}}}}}}
        ---
        apiVersion: v1
        kind: Service
        metadata: {{name: whoami, namespace: apps}}
        spec: {{ports: [{{name: http, port: 80}}]}}
        ---
        apiVersion: v1
        kind: Endpoints
        metadata: {{name: whoami, namespace: apps}}
        subsets: [{{addresses: [{{ip: 127.0.0.1}}], ports: [{{name: http, port: {port}}}]}}]
        ---
        apiVersion: traefik.io/v1alpha1
        kind: IngressRoute
        metadata: {{name: my-app, namespace: apps}}
        spec:
          routes:""" + textwrap.indent(textwrap.dedent(protected_route), " " * 10) + """
          - match: PathPrefix(`/`)
            services: [{name: whoami, port: 80}]
        """}


def write(root: Path, files: Dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).write_text(textwrap.dedent(text))


def status(url: str, auth: bool = False) -> int:
    headers = {"Authorization": f"Bearer {token()}"} if auth else {}
    return requests.get(url, headers=headers, timeout=5).status_code


def protected_gateway(root: Path, wsgi_server: Callable[..., RunningServer],
                      files: Dict[str, str]) -> Tuple[Gateway, RunningServer]:
    """``files`` written and served; /api checks tokens (401 without one, 200 with)."""
    write(root, files)
    gateway = Gateway(root)
    server = wsgi_server(gateway)
    assert (status(server.url + "/api/x"), status(server.url + "/api/x", auth=True)) == (401, 200)
    return gateway, server


def reload(gateway: Gateway) -> None:
    """A reload of conf.d as the watcher makes one, waited for."""
    before = gateway.loader.generation
    gateway.loader.reload("test")
    assert gateway.loader.wait_for_generation(before + 1, 5)


def files_at_start(upstream: str, port: int, case: str) -> Dict[str, str]:
    return {
        "middleware-typo": file_manifests(upstream, "{rule: 'PathPrefix(`/api`)', middleware: [jwt], service: api}"),
        "service-missing": file_manifests(upstream, "{rule: 'PathPrefix(`/api`)', middlewares: [jwt]}"),
        "unset-env-in-middlewares": file_manifests(
            upstream, "{rule: 'PathPrefix(`/api`)', middlewares: ['{{ env \"GK_SURELY_UNSET\" }}'], service: api}"),
        "priority-unreadable": file_manifests(
            upstream, "{rule: 'PathPrefix(`/api`)', middlewares: [jwt], service: api, priority: high}"),
        "kube-route-middleware-typo": kube_manifests(port, PROTECTED_ROUTE.replace("middlewares:", "middleware:")),
        "kube-route-bad-port": kube_manifests(port, PROTECTED_ROUTE.replace("port: 80", "port: [80]")),
    }[case]


@pytest.mark.parametrize("case", ["middleware-typo", "service-missing", "unset-env-in-middlewares",
                                  "priority-unreadable", "kube-route-middleware-typo", "kube-route-bad-port"])
def test_protected_router_in_error_at_start_answers_503(conf_d, wsgi_server, echo_upstream, case):
    """Before: the router was left out, and the catch-all served /api/... without a token (200)."""
    write(conf_d.root, files_at_start(echo_upstream.url, echo_upstream.port, case))
    gateway = Gateway(conf_d.root)
    server = wsgi_server(gateway)
    assert status(server.url + "/api/x") == 503
    assert status(server.url + "/api/x", auth=True) == 503
    assert status(server.url + "/other") == 200          # the rest still serves
    assert any("answers 503" in str(e) for e in gateway.config.errors), [str(e) for e in gateway.config.errors]


def test_router_in_error_answers_503_at_the_highest_priority_when_its_own_is_unreadable(conf_d):
    conf_d("routes.yaml", """
        http:
          routers:
            catch-all: {rule: 'PathPrefix(`/`)', service: s, priority: 1000}
            api: {rule: 'PathPrefix(`/api`)', service: s, priority: high}
          services:
            s: {loadBalancer: {servers: [{url: 'http://127.0.0.1:9'}]}}
        """)
    config = Gateway(conf_d.root).config
    match = config.match({"PATH_INFO": "/api/x", "REQUEST_METHOD": "GET", "HTTP_HOST": "h"})
    assert match is not None and match.name == "api@file" and match.error is not None


def kube_edit(port: int, route: str) -> Dict[str, str]:
    return kube_manifests(port, route)


EDITS = {
    # an IngressRoute route's name is derived from its match: the last good copy is kept by position
    "kube-match-does-not-compile": lambda up, port: kube_edit(port, PROTECTED_ROUTE.replace(
        "PathPrefix(`/api`)", "PathPrefix(/api")),
    "kube-match-field-typo": lambda up, port: kube_edit(port, PROTECTED_ROUTE.replace("match:", "matc:")),
    "kube-middleware-field-typo": lambda up, port: kube_edit(port, PROTECTED_ROUTE.replace(
        "middlewares:", "middleware:")),
    "kube-match-changed-and-middleware-typo": lambda up, port: kube_edit(port, PROTECTED_ROUTE.replace(
        "middlewares:", "middleware:").replace("PathPrefix(`/api`)", "PathPrefix(`/api/`)")),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_live_edit_in_error_keeps_the_protected_route(conf_d, wsgi_server, echo_upstream, edit):
    """Before: the route disappeared and /api/... fell through to the public route: 200 without a token."""
    gateway, server = protected_gateway(conf_d.root, wsgi_server, kube_manifests(echo_upstream.port))
    write(conf_d.root, EDITS[edit](echo_upstream.url, echo_upstream.port))
    reload(gateway)
    assert gateway.config.errors, "the mistake is reported"
    assert status(server.url + "/api/x") in (401, 503)
    assert status(server.url + "/other") == 200


def test_live_edit_of_a_server_url_keeps_the_last_good_service(conf_d, wsgi_server, echo_upstream):
    """Before: every router on the service answered 503."""
    write(conf_d.root, file_manifests(echo_upstream.url))
    gateway = Gateway(conf_d.root)
    server = wsgi_server(gateway)
    assert status(server.url + "/api/x", auth=True) == 200
    no_scheme = echo_upstream.url.replace("http://", "")
    api_service = f"{{loadBalancer: {{servers: [{{url: '{no_scheme}'}}]}}}}"
    write(conf_d.root, file_manifests(echo_upstream.url, api_service=api_service))
    reload(gateway)
    built = gateway.config.services["api@file"]
    assert (built.stale, built.definition.servers[0].url) == (True, echo_upstream.url)
    assert any('service "api@file"' in str(e) for e in gateway.config.errors)
    assert status(server.url + "/api/x", auth=True) == 200
    assert status(server.url + "/api/x") == 401



def broken_kube_spec(port: int) -> Dict[str, str]:
    files = kube_manifests(port)
    text = files["app.yaml"]
    head, sep, _ = text.rpartition("spec:\n")
    return {"app.yaml": head + sep.replace("spec:\n", "spec: [routes]\n")}


DOCUMENT_EDITS = {
    # the document's shape is broken: no object in it can be named, so none may count as deleted
    "file-top-level-typo": lambda up, port: {"api.yaml": file_manifests(up)["api.yaml"].replace(
        "http:", "htp:", 1)},
    "file-section-not-a-mapping": lambda up, port: {"api.yaml": f"""
        http:
          routers: [api]
          services:
            api: {{loadBalancer: {{servers: [{{url: '{up}'}}]}}}}
        """},
    "kube-spec-not-a-mapping": lambda up, port: broken_kube_spec(port),
}


@pytest.mark.parametrize("edit", list(DOCUMENT_EDITS))
def test_live_edit_breaking_a_document_keeps_the_files_last_good_version(conf_d, wsgi_server, echo_upstream,
                                                                       edit):
    """Before: every object of the document vanished and /api/... fell to the public catch-all: 200."""
    kube = edit.startswith("kube")
    files = kube_manifests(echo_upstream.port) if kube else file_manifests(echo_upstream.url)
    gateway, server = protected_gateway(conf_d.root, wsgi_server, files)
    write(conf_d.root, DOCUMENT_EDITS[edit](echo_upstream.url, echo_upstream.port))
    reload(gateway)
    errors = [str(e) for e in gateway.config.errors]
    assert any("serving the last good version of this file" in e for e in errors), errors
    assert (status(server.url + "/api/x"), status(server.url + "/api/x", auth=True)) == (401, 200)
    assert status(server.url + "/other") == 200
