"""More configuration mistakes that fail closed (test_fail_closed.py has the first ones): a name defined twice,
a Kubernetes object written twice, an entry point that does not exist, a file caught blank. Each of them used
to let ``/api`` answer 200 without a token. Real files, real sockets, a real ``gatekeeper serve`` for the entry
points.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import requests
from serve_process import ROOT, Gatekeeper
from test_fail_closed import SECRET, file_manifests, kube_manifests, protected_gateway, reload, status, write

from gatekeeper.app import Gateway
from gatekeeper.jwt.mint import mint

DUPLICATES = {
    # a copied file that sorts first redefines the JWT middleware as something harmless
    "middleware": "http:\n  middlewares:\n    jwt: {headers: {customResponseHeaders: {X-Frame-Options: DENY}}}\n",
    # ... or the protected router without its middleware
    "router": "http:\n  routers:\n    api: {rule: 'PathPrefix(`/api`)', service: api}\n",
}


@pytest.mark.parametrize("kind", list(DUPLICATES))
def test_a_name_defined_again_differently_keeps_the_last_good_version(conf_d, wsgi_server, echo_upstream, kind):
    gateway, server = protected_gateway(conf_d.root, wsgi_server, file_manifests(echo_upstream.url))
    (conf_d.root / "00-copy.yaml").write_text(DUPLICATES[kind])
    reload(gateway)
    assert any("defined again, differently" in str(e) for e in gateway.config.errors)
    assert (status(server.url + "/api/x"), status(server.url + "/api/x", auth=True)) == (401, 200)


@pytest.mark.parametrize("kind", list(DUPLICATES))
def test_a_name_defined_twice_differently_at_start_answers_503(conf_d, wsgi_server, echo_upstream, kind):
    """No last good version: the router (or the one using the middleware) is in error."""
    write(conf_d.root, {**file_manifests(echo_upstream.url), "00-copy.yaml": DUPLICATES[kind]})
    server = wsgi_server(Gateway(conf_d.root))
    assert (status(server.url + "/api/x"), status(server.url + "/api/x", auth=True)) == (503, 503)
    assert status(server.url + "/other") == 200


COLLIDING = {
    "other-namespace": "metadata: {name: jwt, namespace: apps-test}",  # apps-test + jwt == apps + test-jwt
    "dotted-name": "metadata: {name: test.jwt, namespace: apps}",      # test.jwt == test-jwt
}


@pytest.mark.parametrize("case", list(COLLIDING))
def test_a_kubernetes_name_that_normalizes_alike_does_not_replace_the_jwt(conf_d, wsgi_server, echo_upstream,
                                                                          case):
    gateway, server = protected_gateway(conf_d.root, wsgi_server, kube_manifests(echo_upstream.port))
    (conf_d.root / "00-other.yaml").write_text(
        f"apiVersion: traefik.io/v1alpha1\nkind: Middleware\n{COLLIDING[case]}\n"
        "spec: {headers: {customResponseHeaders: {X-Frame-Options: DENY}}}\n")
    reload(gateway)
    assert (status(server.url + "/api/x"), status(server.url + "/api/x", auth=True)) == (401, 200)


KUBE_SECRET = "apiVersion: v1\nkind: Secret\nmetadata: {{name: jwt-key, namespace: apps}}\nstringData: {{key: {key}}}\n"


def test_a_kubernetes_secret_written_twice_differently_is_not_used(conf_d, wsgi_server, echo_upstream):
    """A second ``Secret apps/jwt-key`` in a file that sorts first must not swap the signing key: a token of
    the attacker's own key would pass. Neither copy is used: the last good version serves, a fresh start
    answers 503."""
    app = kube_manifests(echo_upstream.port)["app.yaml"]
    app = textwrap.dedent(app).replace(f"signingSecret: {SECRET}", "signingSecret: 'urn:k8s:secret:jwt-key:key'")
    write(conf_d.root, {"app.yaml": app + "---\n" + KUBE_SECRET.format(key=SECRET)})
    forged = "another-key-the-attacker-knows-long-enough"
    attacker = {"Authorization": f"Bearer {mint({'sub': 'mallory'}, secret=forged, alg='HS256')}"}
    gateway = Gateway(conf_d.root)
    server = wsgi_server(gateway)
    assert status(server.url + "/api/x", auth=True) == 200
    (conf_d.root / "00-other.yaml").write_text(KUBE_SECRET.format(key=forged))
    reload(gateway)
    assert requests.get(server.url + "/api/x", headers=attacker, timeout=5).status_code == 401
    assert status(server.url + "/api/x", auth=True) == 200
    fresh = wsgi_server(Gateway(conf_d.root))
    assert requests.get(fresh.url + "/api/x", headers=attacker, timeout=5).status_code == 503
    assert status(fresh.url + "/api/x", auth=True) == 503


def test_a_router_naming_an_entry_point_that_does_not_exist_answers_503(conf_d, tmp_path, echo_upstream):
    """A typo (``wbe`` for ``web``) would serve the router on no listener, and /api would fall through to the
    public catch-all on ``web``. It answers 503 there, and ``check`` says why."""
    typo = "{rule: 'PathPrefix(`/api`)', entryPoints: [wbe], middlewares: [jwt], service: api}"
    write(conf_d.root, file_manifests(echo_upstream.url, typo))
    check = subprocess.run([sys.executable, "-m", "gatekeeper", "check", str(conf_d.root), "--entrypoint",
                            "web=127.0.0.1:8080"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    gk = Gatekeeper(conf_d.root, tmp_path / "gk.log", "--entrypoint", "web=127.0.0.1:0")
    try:
        answers = status(gk.url + "/api/x"), status(gk.url + "/api/x", auth=True), status(gk.url + "/other")
    finally:
        gk.stop()
    assert answers == (503, 503, 200), gk.log()
    assert check.returncode == 1
    assert 'router "api@file": entryPoints: "wbe" is not an entry point of this gateway; did you mean "web"?' \
           in check.stdout, check.stdout


def test_a_file_caught_blank_keeps_the_protected_route(conf_d, wsgi_server, echo_upstream):
    """An in-place save caught between its truncate and its write: a blank file is not taken as "delete
    everything here" (the protected router would go, and /api would fall through to the catch-all)."""
    gateway, server = protected_gateway(conf_d.root, wsgi_server, file_manifests(echo_upstream.url))
    (conf_d.root / "api.yaml").write_text("\n")
    reload(gateway)
    assert status(server.url + "/api/x") == 401
    assert any("the file is empty" in str(e) for e in gateway.config.errors)
    (conf_d.root / "api.yaml").unlink()  # deleting the file is how its objects go
    reload(gateway)
    assert status(server.url + "/api/x") == 200  # the catch-all now
