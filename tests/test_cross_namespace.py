"""Traefik's ``allowCrossNamespace`` (default false): which references may leave their object's namespace."""
import signal
import subprocess
import sys
import textwrap

import pytest
import requests

from gatekeeper.app import Gateway
from gatekeeper.config.compile import CompileOptions
from gatekeeper.config.providers.k8s_objects import KubeOptions
from gatekeeper.jwt.mint import mint
from tests.test_kubernetes import endpoints_yaml, ingress_route, jwt_middleware, read_definitions

CROSS = KubeOptions(allow_cross_namespace=True)
FROM_APPS = "cross-namespace reference from namespace apps"
REFUSED = "not allowed (Traefik's allowCrossNamespace); set --allow-cross-namespace"
SECRET = "a-signing-secret-long-enough"
WHOAMI = """
apiVersion: v1
kind: Service
metadata: {name: whoami, namespace: apps}
spec: {ports: [{name: whoami, port: 80}]}
"""


def chain(members: str, namespace: str = "apps") -> str:
    return f"""
apiVersion: traefik.io/v1alpha1
kind: Middleware
metadata: {{name: secured, namespace: {namespace}}}
spec:
  chain:
    middlewares: {members}
"""


@pytest.mark.parametrize("docs, refused", [
    ([ingress_route("[{name: web, port: 80}]", extra="\n    middlewares: [{name: auth, namespace: edge}]")],
     f"spec.routes[0].middlewares[0]: middleware edge/auth: {FROM_APPS} {REFUSED}"),
    ([ingress_route("[{name: web, port: 80}]", extra="\n    middlewares: [{name: edge-auth@kubernetescrd}]")],
     'spec.routes[0].middlewares[0].name: "edge-auth@kubernetescrd": a @kubernetescrd reference may cross '
     "namespaces, so it is not allowed"),
    ([ingress_route("[{name: web, port: 80, namespace: backend}]")],
     f"spec.routes[0].services[0]: service backend/web: {FROM_APPS} {REFUSED}"),
    ([ingress_route("[{name: web, port: 80}, {name: web, port: 80, namespace: backend}]")],
     f"spec.routes[0].services[1]: service backend/web: {FROM_APPS} {REFUSED}"),
    ([chain("[{name: auth, namespace: edge}]")], f"spec.chain.middlewares[0]: middleware edge/auth: {FROM_APPS}"),
    ([chain("[{name: apps-auth@kubernetescrd}]")], "a @kubernetescrd reference may cross namespaces"),
], ids=["route-middleware", "route-middleware-crd-name", "route-service", "weighted-member", "chain-member",
        "chain-member-crd-name"])
def test_cross_namespace_references_are_refused_by_default_and_allowed_by_the_option(conf_d, docs, refused):
    _, errors = read_definitions(conf_d, *docs)
    assert len(errors) == 1 and refused in errors[0], errors
    assert errors[0].startswith("all.yaml:"), errors       # file and line of the object
    _, allowed = read_definitions(conf_d, *docs, kube=CROSS)
    assert allowed == []


@pytest.mark.parametrize("docs", [
    [ingress_route("[{name: web, port: 80}]", extra="\n    middlewares: [{name: a}, {name: a, namespace: apps}]")],
    [ingress_route("[{name: web, port: 80}]", extra="\n    middlewares: [{name: strip@file}]")],
    [ingress_route("[{name: backend@file, kind: TraefikService}]")],
    [ingress_route("[{name: web, port: 80, namespace: apps}]")],
    [chain("[{name: auth}, {name: strip@file}]")],
], ids=["same-namespace", "other-provider-middleware", "other-provider-service", "own-namespace-spelt-out",
        "chain-same-namespace-and-other-provider"])
def test_references_within_the_namespace_or_to_another_provider_are_allowed(conf_d, docs):
    _, errors = read_definitions(conf_d, *docs)
    assert errors == []


def cross_namespace_conf_d(conf_d, upstream_port: int):
    """A route in ``edge`` secured by the JWT middleware of ``apps``: the layout allowCrossNamespace governs."""
    route = ingress_route("[{name: whoami, port: 80}]", namespace="edge",
                          extra="\n    middlewares: [{name: test-jwt, namespace: apps}]")
    service = WHOAMI.replace("apps", "edge")
    conf_d("all.yaml", "\n---\n".join([
        jwt_middleware(f"signingSecret: {SECRET}"), route, service,
        textwrap.dedent(endpoints_yaml(upstream_port, namespace="edge"))]))
    return conf_d.root


def test_a_refused_reference_fails_closed_and_the_option_serves_it(conf_d, echo_upstream, wsgi_server):
    root = cross_namespace_conf_d(conf_d, echo_upstream.port)
    good = {"Authorization": f"Bearer {mint({'sub': 'u1'}, secret=SECRET)}"}
    gateway = Gateway(root)
    assert any(REFUSED in str(e) for e in gateway.config.errors)
    refused = wsgi_server(gateway)
    answer = requests.get(refused.url + "/app", headers=good, timeout=5)
    assert answer.status_code == 503                       # the route answers 503: never served unsecured
    gateway = Gateway(root, options=CompileOptions(kubernetes=CROSS))
    assert gateway.config.errors == ()
    allowed = wsgi_server(gateway)
    assert requests.get(allowed.url + "/app", headers=good, timeout=5).status_code == 200
    assert requests.get(allowed.url + "/app", timeout=5).status_code == 401


def test_check_takes_the_option(conf_d, echo_upstream):
    root = cross_namespace_conf_d(conf_d, echo_upstream.port)

    def check(*options: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "gatekeeper", "check", str(root), *options],
                              capture_output=True, text=True, timeout=60)

    refused, allowed = check(), check("--allow-cross-namespace")
    assert refused.returncode == 1 and REFUSED in refused.stdout, refused.stdout
    assert allowed.returncode == 0 and allowed.stdout.strip().endswith(": ok"), allowed.stdout


@pytest.mark.parametrize("options, errors, status", [
    ((), "2 errors", 503), (("--allow-cross-namespace",), "0 errors", 401)], ids=["default", "allowed"])
def test_serve_takes_the_option(conf_d, echo_upstream, free_port, options, errors, status):
    """``serve`` threads the flag to the provider: the route answers 503 without it, 401 (secured) with it."""
    root = cross_namespace_conf_d(conf_d, echo_upstream.port)
    with subprocess.Popen([sys.executable, "-m", "gatekeeper", "serve", "--conf-d", str(root), "--listen",
                           f"127.0.0.1:{free_port}", *options], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as proc:
        try:
            line = proc.stdout.readline()
            assert line.startswith("gatekeeper listening on") and f"1 routers, {errors}" in line, line
            assert requests.get(f"http://127.0.0.1:{free_port}/app", timeout=5).status_code == status
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
