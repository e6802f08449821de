"""Kubernetes Ingress (networking.k8s.io/v1) as Traefik's Ingress provider reads it: rules, names, classes,
annotations, the default backend, and every field gatekeeper cannot honour reported instead of ignored."""
import hashlib
import textwrap

import pytest
import requests

from gatekeeper.app import Gateway
from gatekeeper.config.compile import CompileOptions, compile_config
from gatekeeper.config.manifests import read_dir
from gatekeeper.config.providers.k8s_objects import KubeOptions
from gatekeeper.jwt.mint import mint
from gatekeeper.ops.echo import named_echo_app
from tests.test_kubernetes import endpoints_yaml, jwt_middleware, read_definitions

SECRET = "a-signing-secret-long-enough"
WEB = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: apps}
spec: {ports: [{name: http, port: 80}, {name: admin, port: 9000}]}
"""
WEB_ENDPOINTS = """
apiVersion: v1
kind: Endpoints
metadata: {name: web, namespace: apps}
subsets: [{addresses: [{ip: 10.0.0.1}], ports: [{name: http, port: 8080}, {name: admin, port: 9090}]}]
"""


def ingress(rules: str = "", *, name: str = "site", annotations: str = "", spec: str = "") -> str:
    meta = f"\n  annotations: {{{annotations}}}" if annotations else ""
    body = f"\n  rules:{textwrap.indent(textwrap.dedent(rules), '  ')}" if rules else ""
    return f"""
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {name}
  namespace: apps{meta}
spec:{spec}{body}
"""


def paths(*entries: str, host: str = "example.com") -> str:
    listed = "".join(f"\n      - {e}" for e in entries)
    return f"""
- host: {host}
  http:
    paths:{listed}
"""


def path(value: str = "/api", path_type: str = "Prefix", port: str = "number: 80", service: str = "web") -> str:
    return f"{{path: {value}, pathType: {path_type}, backend: {{service: {{name: {service}, port: {{{port}}}}}}}}}"


def hashed(name: str, rule: str) -> str:
    """Traefik's makeRouterKeyWithHash: ``<key>-<first 10 hex digits of sha256(rule)>``."""
    return f"{name}-{hashlib.sha256(rule.encode()).hexdigest()[:10]}@kubernetes"


# --- rules and names -------------------------------------------------------------------------------------

@pytest.mark.parametrize("rules, annotations, expected", [
    (paths(path()), "", [("apps-site-example-com-api@kubernetes", 'Host("example.com") && PathPrefix("/api")')]),
    (paths(path(path_type="Exact")), "", [("apps-site-example-com-api@kubernetes",
                                            'Host("example.com") && Path("/api")')]),
    (paths(path(path_type="ImplementationSpecific")), "",
     [("apps-site-example-com-api@kubernetes", 'Host("example.com") && PathPrefix("/api")')]),
    (paths(path(path_type="ImplementationSpecific")), "traefik.ingress.kubernetes.io/router.pathmatcher: Path",
     [("apps-site-example-com-api@kubernetes", 'Host("example.com") && Path("/api")')]),
    (paths(path(path_type="Prefix")), "traefik.ingress.kubernetes.io/router.pathmatcher: Path",
     [("apps-site-example-com-api@kubernetes", 'Host("example.com") && PathPrefix("/api")')]),
    (paths(path(), host='"*.example.com"'), "",
     [("apps-site-example-com-api@kubernetes", 'Host("*.example.com") && PathPrefix("/api")')]),
    ("\n- http: {paths: [" + path() + "]}", "", [("apps-site-api@kubernetes", 'PathPrefix("/api")')]),
    (paths(path("/"), host="foo.bar") + paths(path("/bar"), host="foo"), "",
     [(hashed("apps-site-foo-bar", 'Host("foo.bar") && PathPrefix("/")'), 'Host("foo.bar") && PathPrefix("/")'),
      (hashed("apps-site-foo-bar", 'Host("foo") && PathPrefix("/bar")'), 'Host("foo") && PathPrefix("/bar")')]),
], ids=["prefix", "exact", "implementation-specific", "pathmatcher-annotation", "pathmatcher-only-for-impl-specific",
        "wildcard-host", "no-host", "same-name-hashed"])
def test_paths_become_traefik_rules_and_names(conf_d, rules, annotations, expected):
    defs, errors = read_definitions(conf_d, ingress(rules, annotations=annotations), WEB, WEB_ENDPOINTS)
    assert errors == []
    assert [(r.name, r.rule) for r in defs.routers.values()] == expected
    assert {r.service for r in defs.routers.values()} == {"apps-web-80@kubernetes"}


def test_backends_resolve_like_ingressroute_services(conf_d):
    rules = paths(path("/a"), path("/b"), path("/admin", port="name: admin"))
    defs, errors = read_definitions(conf_d, ingress(rules), WEB, WEB_ENDPOINTS)
    assert errors == []
    assert sorted(defs.services) == ["apps-web-80@kubernetes", "apps-web-admin@kubernetes"]  # shared per port
    assert [s.url for s in defs.services["apps-web-80@kubernetes"].servers] == ["http://10.0.0.1:8080"]
    assert [s.url for s in defs.services["apps-web-admin@kubernetes"].servers] == ["http://10.0.0.1:9090"]
    missing, _ = read_definitions(conf_d, ingress(paths(path(service="gone"))))
    assert missing.services["apps-gone-80@kubernetes"].empty_reason == "Kubernetes service apps/gone does not exist"


def test_router_annotations(conf_d):
    annotations = ("traefik.ingress.kubernetes.io/router.middlewares: 'apps-auth@kubernetescrd, strip@file', "
                   "traefik.ingress.kubernetes.io/router.entrypoints: 'web,websecure', "
                   "traefik.ingress.kubernetes.io/router.priority: '42', "
                   "traefik.ingress.kubernetes.io/router.tls: 'true'")
    defs, errors = read_definitions(conf_d, ingress(paths(path()), annotations=annotations), WEB, WEB_ENDPOINTS)
    assert errors == []
    (router,) = defs.routers.values()
    assert (router.middlewares, router.entry_points, router.priority) == (
        ("apps-auth@kubernetescrd", "strip@file"), ("web", "websecure"), 42)


# --- which Ingresses are read ----------------------------------------------------------------------------

def ingress_class(name: str, controller: str = "traefik.io/ingress-controller") -> str:
    return f"""
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {{name: {name}}}
spec: {{controller: {controller}}}
"""


@pytest.mark.parametrize("spec, annotations, option, classes, read", [
    ("", "", "", [], True),                                          # no class at all: Traefik's default reads it
    ("", "kubernetes.io/ingress.class: traefik", "", [], True),
    ("", "kubernetes.io/ingress.class: nginx", "", [], False),
    ("", "", "internal", [], False),
    ("", "kubernetes.io/ingress.class: internal", "internal", [], True),
    ("\n  ingressClassName: traefik", "", "", [], True),           # no IngressClass in conf.d: the default name
    ("\n  ingressClassName: nginx", "", "", [], False),
    ("\n  ingressClassName: edge", "", "", [ingress_class("edge")], True),
    ("\n  ingressClassName: nginx", "", "", [ingress_class("nginx", "k8s.io/ingress-nginx")], False),
    ("\n  ingressClassName: traefik", "", "", [ingress_class("traefik", "k8s.io/ingress-nginx")], False),
    ("\n  ingressClassName: edge", "", "internal", [ingress_class("edge"), ingress_class("internal")], False),
    ("\n  ingressClassName: internal", "", "internal", [], True),
], ids=["no-class", "annotation-traefik", "annotation-other", "option-needs-annotation", "annotation-matches-option",
        "class-name-traefik", "class-name-other", "traefik-ingressclass", "other-controller",
        "traefik-name-other-controller", "option-filters-classes", "class-name-is-option"])
def test_ingress_class_filter(conf_d, spec, annotations, option, classes, read):
    kube = KubeOptions(ingress_class=option)
    defs, errors = read_definitions(conf_d, ingress(paths(path()), annotations=annotations, spec=spec), WEB,
                                    *classes, kube=kube)
    assert errors == []
    assert bool(defs.routers) is read


# --- the default backend ---------------------------------------------------------------------------------

DEFAULT = "\n  defaultBackend: {service: {name: web, port: {number: 80}}}"


def test_default_backend_is_the_lowest_priority_router(conf_d):
    defs, errors = read_definitions(conf_d, ingress(spec=DEFAULT, name="fallback"), WEB, WEB_ENDPOINTS)
    assert errors == []
    router = defs.routers["default-router@kubernetes"]
    assert (router.rule, router.priority, router.service) == ('PathPrefix("/")', -(2 ** 31),
                                                             "default-backend@kubernetes")
    assert [s.url for s in defs.services["default-backend@kubernetes"].servers] == ["http://10.0.0.1:8080"]


def test_requests_reach_the_rule_then_the_default_backend_and_the_annotation_secures(conf_d, wsgi_server):
    api, fallback = wsgi_server(named_echo_app("api")), wsgi_server(named_echo_app("fallback"))
    secured = "traefik.ingress.kubernetes.io/router.middlewares: apps-test-jwt@kubernetescrd"
    conf_d("all.yaml", "\n---\n".join([
        ingress(paths(path("/api", service="api", port="number: 80"), host="127.0.0.1"), annotations=secured),
        ingress(spec=DEFAULT.replace("web", "fallback"), name="fallback"),
        jwt_middleware(f"signingSecret: {SECRET}"),
        *(f"apiVersion: v1\nkind: Service\nmetadata: {{name: {n}, namespace: apps}}\n"
          f"spec: {{ports: [{{name: http, port: 80}}]}}" for n in ("api", "fallback")),
        *(textwrap.dedent(endpoints_yaml(s.port, name=n, port_name="http")) for n, s in
          (("api", api), ("fallback", fallback)))]))
    gateway = Gateway(conf_d.root)
    assert gateway.config.errors == ()
    served = wsgi_server(gateway)
    token = {"Authorization": f"Bearer {mint({'sub': 'u1'}, secret=SECRET)}"}
    assert requests.get(served.url + "/api/x", timeout=5).status_code == 401
    answer = requests.get(served.url + "/api/x", headers=token, timeout=5)
    assert (answer.status_code, answer.json()["server"], answer.json()["path"]) == (200, "api", "/api/x")
    assert requests.get(served.url + "/other", timeout=5).json()["server"] == "fallback"


# --- what gatekeeper cannot honour is an error, and the path answers 503 ---------------------------------

@pytest.mark.parametrize("doc, expected", [
    (ingress(paths(path()), spec="\n  tls: [{hosts: [example.com], secretName: site-tls}]"),
     "spec.tls[0].secretName: serving a certificate from a Secret is not supported"),
    (ingress(paths(path()), annotations="traefik.ingress.kubernetes.io/router.tls.certresolver: le"),
     "metadata.annotations.traefik.ingress.kubernetes.io/router.tls.certresolver: not supported by gatekeeper"),
    (ingress(paths(path()), annotations="traefik.ingress.kubernetes.io/router.pathmatcher: Regex"),
     "router.pathmatcher: must be one of Path, PathPrefix, PathRegexp, got 'Regex'"),
    (ingress(paths(path()), annotations="traefik.ingress.kubernetes.io/router.priority: high"),
     "router.priority: expected a whole number, got 'high'"),
    (ingress(paths(path()), annotations="traefik.ingress.kubernetes.io/router.tls: yes"),
     'router.tls: expected "true" or "false"'),
    (ingress(paths("{path: /api, pathType: Prefix, backend: {resource: {kind: Bucket, name: b}}}")),
     "spec.rules[0].http.paths[0].backend.resource: resource backends are not supported"),
    (ingress(paths(path(port="number: 80, name: http"))),
     "spec.rules[0].http.paths[0].backend.service.port: give exactly one of number or name"),
    (ingress(paths(path())) + "---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: apps}\n"
     "spec: {type: ExternalName, externalName: web.example.com}",
     "Service apps/web is of type ExternalName, which Traefik's Ingress provider refuses"),
    (ingress(paths(path())).replace("namespace: apps", "namespace: apps\n  labels: {}") +
     "---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: apps, annotations: "
     "{traefik.ingress.kubernetes.io/service.sticky.cookie: 'true'}}\nspec: {ports: [{port: 80}]}",
     "Service apps/web: metadata.annotations.traefik.ingress.kubernetes.io/service.sticky.cookie: not supported"),
    (ingress(paths(path()), spec=DEFAULT), "spec.defaultBackend: Traefik uses a defaultBackend only on an Ingress "
                                           "without rules"),
    (ingress(spec=DEFAULT) + "---" + ingress(spec=DEFAULT, name="second"),
     "spec.defaultBackend: the default backend is already defined by another Ingress"),
    (ingress(paths(path(path_type="Regex"))), "spec.rules[0].http.paths[0].pathType: expected Exact, Prefix or "
                                              "ImplementationSpecific, got 'Regex'"),
    (ingress(paths("{pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}").replace(
        "host: example.com", "host: ''")), "spec.rules[0].http.paths[0]: a path needs a host or a path"),
    (ingress(paths(path()), spec="\n  backend: {}"), 'spec: unknown field "backend"'),
], ids=["tls-secret", "unsupported-annotation", "pathmatcher", "priority", "tls-annotation", "resource-backend",
        "port-number-and-name", "externalname", "service-annotation", "default-backend-with-rules",
        "second-default-backend", "path-type", "no-host-no-path", "unknown-field"])
def test_errors_name_file_line_and_field(conf_d, doc, expected):
    _, errors = read_definitions(conf_d, doc, *(() if "kind: Service" in doc else (WEB,)))  # its own Service
    assert any(expected in e for e in errors), errors
    assert all(e.startswith("all.yaml:") for e in errors), errors


def test_an_ingress_in_error_answers_503_not_unsecured(conf_d, echo_upstream, wsgi_server):
    """A TLS secret gatekeeper cannot serve puts the Ingress in error: its rules answer 503, never a 404 that
    lets the request reach another router, and never the backend without the configured middleware."""
    tls = "\n  tls: [{secretName: site-tls}]"
    conf_d("all.yaml", "\n---\n".join([
        ingress(paths(path("/api"), host="127.0.0.1"), spec=tls,
                annotations="traefik.ingress.kubernetes.io/router.middlewares: apps-test-jwt@kubernetescrd"),
        ingress(paths(path("/"), host="127.0.0.1"), name="catch-all"),
        WEB, textwrap.dedent(endpoints_yaml(echo_upstream.port, name="web", port_name="http"))]))
    gateway = Gateway(conf_d.root, options=CompileOptions())
    assert [e.reason.split(":")[0] for e in gateway.config.errors][:1] == ["spec.tls[0].secretName"]
    served = wsgi_server(gateway)
    assert requests.get(served.url + "/api/x", timeout=5).status_code == 503
    assert requests.get(served.url + "/other", timeout=5).status_code == 200


def test_a_path_in_error_answers_503_for_its_prefix_and_a_live_edit_keeps_the_last_good(conf_d):
    good = ingress(paths(path("/api")))
    conf_d("all.yaml", "\n---\n".join([good, WEB, WEB_ENDPOINTS]))
    first = compile_config(read_dir(conf_d.root))
    assert first.errors == ()
    conf_d("all.yaml", "\n---\n".join([good.replace("pathType: Prefix", "pathType: Regex"), WEB, WEB_ENDPOINTS]))
    edited = compile_config(read_dir(conf_d.root), first)
    assert any("pathType: expected Exact, Prefix or ImplementationSpecific" in str(e) for e in edited.errors)
    (router,) = edited.routers
    assert (router.name, router.error) == ("apps-site-example-com-api@kubernetes", None)   # last good serves
    fresh = compile_config(read_dir(conf_d.root))
    (router,) = fresh.routers
    assert router.definition.rule == 'Host("example.com") && PathPrefix("/api")' and router.error


@pytest.mark.parametrize("options, routers", [((), 1), (("--ingress-class", "internal"), 0)], ids=["default", "option"])
def test_check_takes_the_ingress_class(conf_d, capsys, options, routers):
    from gatekeeper.cli.main import main

    conf_d("all.yaml", "\n---\n".join([ingress(paths(path())), WEB, WEB_ENDPOINTS]))
    assert main(["check", *options, str(conf_d.root)]) == 0
    assert f"{routers} router(s)" in capsys.readouterr().out
