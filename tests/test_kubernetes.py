"""Kubernetes manifests: the seed folders run as written, CRD naming, Secret references, endpoint selection."""
import json
import shutil
import textwrap
from pathlib import Path

import pytest
import requests
import yaml

from gatekeeper.app import Gateway
from gatekeeper.config.compile import CompileOptions, compile_config
from gatekeeper.config.manifests import read_dir
from gatekeeper.config.providers import collect
from gatekeeper.config.providers.k8s_objects import KubeOptions
from gatekeeper.jwt.mint import mint, new_key_pem, public_jwk
from gatekeeper.ops.echo import named_echo_app

SEED = Path(__file__).resolve().parent / "data" / "seed"  # verbatim copy of shared/seed's YAML
SECRET = "mysuperlongsecret"
ROUTER = "apps-my-app-ed682b1cf5@kubernetescrd"    # namespace-name-sha256(match)[:10], as Traefik names it
CROSS = KubeOptions(allow_cross_namespace=True)    # --allow-cross-namespace (tests/test_cross_namespace.py)


def endpoints_yaml(port: int, *, kind: str = "Endpoints", name: str = "whoami", namespace: str = "apps",
                   port_name: str = "whoami", address: str = "127.0.0.1") -> str:
    if kind == "Endpoints":
        return f"""
        apiVersion: v1
        kind: Endpoints
        metadata: {{name: {name}, namespace: {namespace}}}
        subsets:
        - addresses: [{{ip: "{address}"}}]
          ports: [{{name: {port_name}, port: {port}}}]
        """
    return f"""
    apiVersion: discovery.k8s.io/v1
    kind: EndpointSlice
    metadata:
      name: {name}-abc12
      namespace: {namespace}
      labels: {{kubernetes.io/service-name: {name}}}
    addressType: IPv4
    ports: [{{name: {port_name}, port: {port}, protocol: TCP}}]
    endpoints:
    - addresses: ["{address}"]
      conditions: {{ready: true}}
    """


def seed_conf_d(tmp_path: Path, folder: str, upstream_port: int, kind: str = "Endpoints") -> Path:
    """A conf.d holding one seed folder verbatim plus the one manifest a cluster would have made."""
    root = tmp_path / "conf.d"
    shutil.copytree(SEED / folder, root)
    (root / "whoami-endpoints.yaml").write_text(textwrap.dedent(endpoints_yaml(upstream_port, kind=kind)))
    return root


def compile_dir(root, previous=None):
    return compile_config(read_dir(root), previous)


def messages(config):
    return [str(e) for e in config.errors]


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


# --- the seed, as written --------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["Endpoints", "EndpointSlice"])
def test_seed_secret_folder_checks_clean(tmp_path, kind):
    config = compile_dir(seed_conf_d(tmp_path, "secret", 8000, kind))
    assert messages(config) == []
    router = config.routers[0]
    assert (router.name, router.definition.entry_points, router.error) == (ROUTER, ("websecure",), None)
    assert [s.url for s in config.services[ROUTER].definition.servers] == ["http://127.0.0.1:8000"]
    assert config.middlewares["apps-test-jwt@kubernetescrd"].definition.options == {"signingSecret": SECRET}


@pytest.mark.parametrize("folder", ["idp-azure", "idp-keycloak"])
def test_seed_idp_folders_report_only_key_set_problems(tmp_path, folder):
    config = compile_dir(seed_conf_d(tmp_path, folder, 8000))
    problems = messages(config)
    assert all("jwksUrl" in m or "key set" in m.lower() for m in problems), problems
    assert config.routers[0].name == ROUTER


def test_seed_secret_folder_serves_a_good_token_and_refuses_a_bad_one(tmp_path, echo_upstream, wsgi_server):
    gateway = wsgi_server(Gateway(seed_conf_d(tmp_path, "secret", echo_upstream.port)))
    good = requests.get(gateway.url + "/my-app", headers=bearer(mint({"sub": "u1"}, secret=SECRET)), timeout=5)
    assert good.status_code == 200, good.text
    assert (good.json()["server"], good.json()["path"]) == ("echo", "/my-app")
    assert "Authorization" not in dict(good.json()["headers"])
    for headers in (bearer(mint({"sub": "u1"}, secret="not-the-secret-at-all")), {}):
        assert requests.get(gateway.url + "/my-app", headers=headers, timeout=5).status_code == 401
    assert requests.get(gateway.url + "/elsewhere", timeout=5).status_code == 404


def test_seed_keycloak_folder_checks_claims_and_forwards_group(tmp_path, echo_upstream, wsgi_server):
    key = new_key_pem("rsa")
    body = json.dumps({"keys": [public_jwk(key, kid="k1", alg="RS256", use="sig")]}).encode()
    jwks = wsgi_server(lambda environ, start: (start("200 OK", [("Content-Type", "application/json")]), [body])[1])
    root = seed_conf_d(tmp_path, "idp-keycloak", echo_upstream.port)
    manifest = root / "middleware.yaml"
    manifest.write_text(manifest.read_text().replace(
        "https://KEYCLOAK_URL/realms/REALM_NAME/protocol/openid-connect/certs", jwks.url + "/certs"))
    gateway = wsgi_server(Gateway(root))
    admin = requests.get(gateway.url + "/my-app", headers=bearer(mint({"grp": "admin"}, key_pem=key, kid="k1")),
                         timeout=5)
    assert admin.status_code == 200, admin.text
    assert ["Group", "admin"] in admin.json()["headers"]
    dev = requests.get(gateway.url + "/my-app", headers=bearer(mint({"grp": "dev"}, key_pem=key, kid="k1")),
                       timeout=5)
    assert dev.status_code == 403


def test_seed_without_endpoints_answers_503_and_says_why(tmp_path, wsgi_server):
    root = tmp_path / "conf.d"
    shutil.copytree(SEED / "secret", root)
    gateway = Gateway(root)
    reason = "Kubernetes service apps/whoami has no ready endpoints for port 80"
    assert any(reason in m and "ingressroute.yaml:" in m for m in messages(gateway.config)), messages(gateway.config)
    served = wsgi_server(gateway)
    token = mint({"sub": "u1"}, secret=SECRET)
    assert requests.get(served.url + "/my-app", headers=bearer(token), timeout=5).status_code == 503


# --- Service -> servers ----------------------------------------------------------------------------------

WEB_SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: apps}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: web}
  - {name: metrics, port: 9090, targetPort: 9100}
"""


def web_slice(endpoints: str, ports: str = "[{name: metrics, port: 9100}, {name: http, port: 8080}]",
              namespace: str = "apps", suffix: str = "x1") -> str:
    return f"""
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-{suffix}, namespace: {namespace}, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: {ports}
endpoints:
{endpoints}
"""


MIXED_ENDPOINTS = """
- addresses: [10.0.0.1]
- addresses: [10.0.0.2]
  conditions: {ready: false, serving: true, terminating: true}
- addresses: [10.0.0.3]
  conditions: {ready: false}
"""
TERMINATING_ONLY = """
- addresses: [10.0.0.2]
  conditions: {ready: false, serving: true, terminating: true}
- addresses: [10.0.0.4]
  conditions: {ready: false, serving: false, terminating: true}
"""
WEB_ENDPOINTS = """
apiVersion: v1
kind: Endpoints
metadata: {name: web, namespace: apps}
subsets:
- addresses: [{ip: 10.0.1.1}, {ip: 10.0.1.2}]
  notReadyAddresses: [{ip: 10.0.1.9}]
  ports: [{name: http, port: 8080}, {name: metrics, port: 9100}]
"""
EXTERNAL = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: apps}
spec: {type: ExternalName, externalName: api.example.com, ports: [{name: http, port: 80}, {port: 443}]}
"""
UNNAMED = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: apps}
spec: {ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Endpoints
metadata: {name: web, namespace: apps}
subsets: [{addresses: [{ip: 10.0.2.1}], ports: [{port: 8080}]}]
"""


def ingress_route(services: str, namespace: str = "apps", extra: str = "") -> str:
    return f"""
apiVersion: traefik.io/v1alpha1
kind: IngressRoute
metadata: {{name: my-app, namespace: {namespace}}}
spec:
  routes:
  - match: PathPrefix(`/app`)
    kind: Rule{extra}
    services: {services}
"""


def read_definitions(conf_d, *docs, kube=None):
    conf_d("all.yaml", "\n---\n".join(docs))
    collected = collect(read_dir(conf_d.root), kube)
    return collected.definitions(), [str(e) for e in collected.errors]


@pytest.mark.parametrize("docs, services, urls, reason", [
    ([WEB_SERVICE, web_slice(MIXED_ENDPOINTS)], "[{name: web, port: 80}]", ["http://10.0.0.1:8080"], None),
    ([WEB_SERVICE, web_slice(MIXED_ENDPOINTS)], "[{name: web, port: metrics}]", ["http://10.0.0.1:9100"], None),
    ([WEB_SERVICE, web_slice(MIXED_ENDPOINTS)], "[{name: web, port: 80, scheme: https}]",
     ["https://10.0.0.1:8080"], None),
    ([WEB_SERVICE, web_slice(TERMINATING_ONLY)], "[{name: web, port: 80}]", ["http://10.0.0.2:8080"], None),
    ([WEB_SERVICE, web_slice("- addresses: [10.0.0.4]\n  conditions: {serving: false, terminating: true}")],
     "[{name: web, port: 80}]", [], "Kubernetes service apps/web has no ready endpoints for port 80"),
    ([WEB_SERVICE, WEB_ENDPOINTS], "[{name: web, port: 80}]", ["http://10.0.1.1:8080", "http://10.0.1.2:8080"], None),
    ([WEB_SERVICE, WEB_ENDPOINTS, web_slice("- addresses: [10.0.1.1, 10.0.1.3]")], "[{name: web, port: 80}]",
     ["http://10.0.1.1:8080", "http://10.0.1.2:8080", "http://10.0.1.3:8080"], None),
    ([WEB_SERVICE, web_slice("- addresses: [10.0.0.1]", ports="[{name: http}]")], "[{name: web, port: 80}]",
     ["http://10.0.0.1:80"], None),
    ([WEB_SERVICE, web_slice("- addresses: [10.0.0.1]", ports="[{name: web, port: 8080}]")],
     "[{name: web, port: 80}]", [], 'none named "http" among web'),
    ([WEB_SERVICE, web_slice("- addresses: ['fd00::1']")], "[{name: web, port: 80}]", ["http://[fd00::1]:8080"], None),
    ([UNNAMED], "[{name: web, port: 80}]", ["http://10.0.2.1:8080"], None),
    ([EXTERNAL], "[{name: web, port: http}]", ["http://api.example.com:80"], None),
    ([EXTERNAL], "[{name: web, port: 443}]", ["https://api.example.com:443"], None),
    ([EXTERNAL], "[{name: web, port: 8443}]", ["http://api.example.com:8443"], None),
    ([WEB_SERVICE.replace("apps", "backend"), web_slice("- addresses: [10.0.3.1]", namespace="backend")],
     "[{name: web, port: 80}]", [], "Kubernetes service apps/web does not exist"),
    ([WEB_SERVICE], "[{name: web, port: 81}]", [], "Kubernetes service apps/web has no port 81"),
    ([WEB_SERVICE], "[{name: web, port: 80}]", [], "no Endpoints or EndpointSlice for it"),
], ids=["port-number-to-name", "port-by-name", "scheme-https", "terminating-serving-fallback",
        "terminating-not-serving", "endpoints-v1-not-ready-excluded", "endpoints-and-slice-merged",
        "slice-port-without-number", "port-name-mismatch", "ipv6", "unnamed-port", "externalname",
        "externalname-443-https", "externalname-any-port", "namespace-defaults-to-route's",
        "missing-port", "no-endpoints"])
def test_route_service_resolves_to_servers(conf_d, docs, services, urls, reason):
    defs, errors = read_definitions(conf_d, ingress_route(services), *docs)
    assert errors == []
    (router,) = defs.routers.values()
    service = defs.services[router.service]
    assert [s.url for s in service.servers] == urls
    assert (service.empty_reason is None) if reason is None else (reason in service.empty_reason), service.empty_reason


def test_several_services_make_a_weighted_service(conf_d, wsgi_server):
    upstreams = {name: wsgi_server(named_echo_app(name)) for name in ("a", "b")}
    docs = [ingress_route("[{name: a, port: 80, weight: 3}, {name: b, port: http, namespace: other}]")]
    for name, namespace in (("a", "apps"), ("b", "other")):
        docs.append(f"""
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {namespace}}}
spec: {{ports: [{{name: http, port: 80}}]}}
""")
        docs.append(endpoints_yaml(upstreams[name].port, name=name, namespace=namespace, port_name="http"))
    defs, errors = read_definitions(conf_d, *docs, kube=CROSS)
    assert errors == []
    (router,) = defs.routers.values()
    weighted = defs.services[router.service]
    assert (weighted.kind, weighted.children) == ("weighted", (("apps-a-80@kubernetescrd", 3),
                                                             ("other-b-http@kubernetescrd", 1)))
    gateway = wsgi_server(Gateway(conf_d.root, options=CompileOptions(kubernetes=CROSS)))
    servers = [requests.get(gateway.url + "/app", timeout=5).json()["server"] for _ in range(8)]
    assert sorted(servers) == ["a"] * 6 + ["b"] * 2



def test_weighted_members_are_shared_and_conflicts_refused(conf_d):
    first = ingress_route("[{name: web, port: 80}, {name: web, port: metrics}]")
    second = first.replace("my-app", "other").replace("port: metrics}", "port: metrics, scheme: https}")
    defs, errors = read_definitions(conf_d, first, second, WEB_SERVICE, web_slice("- addresses: [10.0.0.1]"))
    assert "apps-web-metrics@kubernetescrd" not in defs.services  # two schemes for one port: neither is guessed
    assert len(defs.routers) == 2 and "apps-web-80@kubernetescrd" in defs.services
    assert errors == ['all.yaml:20: service "apps-web-metrics@kubernetescrd": defined again, differently (first '
                      'definition in all.yaml:9): neither definition serves until one is renamed or removed; names '
                      'are global across conf.d (Kubernetes objects are namespace-name@kubernetescrd)']


def test_a_traefik_service_reference_reaches_another_provider(conf_d):
    defs, errors = read_definitions(conf_d, ingress_route("[{name: backend@file, kind: TraefikService}]"))
    assert errors == []
    (router,) = defs.routers.values()
    assert router.service == "backend@file" and dict(defs.services) == {}


# --- Secret references -----------------------------------------------------------------------------------

def jwt_middleware(options: str, namespace: str = "apps", api: str = "traefik.io/v1alpha1") -> str:
    return f"""
apiVersion: {api}
kind: Middleware
metadata: {{name: test-jwt, namespace: {namespace}}}
spec:
  plugin:
    jwt: {{{options}}}
"""


def secret(body: str, namespace: str = "apps") -> str:
    return f"""
apiVersion: v1
kind: Secret
metadata: {{name: jwt, namespace: {namespace}}}
type: Opaque
{body}
"""


@pytest.mark.parametrize("options, secret_body, expected", [
    ('signingSecret: "urn:k8s:secret:jwt:signingSecret"', "stringData: {signingSecret: mysuperlongsecret}",
     {"signingSecret": SECRET}),
    ('signingSecret: "urn:k8s:secret:jwt:signingSecret"', "data: {signingSecret: bXlzdXBlcmxvbmdzZWNyZXQ=}",
     {"signingSecret": SECRET}),
    ('signingSecret: "urn:k8s:secret:jwt:signingSecret"',
     "data: {signingSecret: b2xk}\nstringData: {signingSecret: mysuperlongsecret}", {"signingSecret": SECRET}),
    ('signingSecret: plain, tokenSource: {header: "urn:k8s:secret:jwt:h", query: [x, "urn:k8s:secret:jwt:q"]}',
     "stringData: {h: X-Token, q: tok}",
     {"signingSecret": "plain", "tokenSource": {"header": "X-Token", "query": ["x", "tok"]}}),
], ids=["stringData", "base64-data", "stringData-over-data", "nested-anywhere"])
def test_secret_references_are_resolved(conf_d, options, secret_body, expected):
    defs, errors = read_definitions(conf_d, jwt_middleware(options), secret(secret_body))
    assert errors == []
    assert defs.middlewares["apps-test-jwt@kubernetescrd"].options == expected


@pytest.mark.parametrize("options, docs, expected", [
    ('signingSecret: "urn:k8s:secret:nope:signingSecret"', [secret("stringData: {signingSecret: x}")],
     'Secret apps/nope does not exist (wanted its key "signingSecret")'),
    ('signingSecret: "urn:k8s:secret:jwt:other"', [secret("stringData: {signingSecret: x}")],
     'Secret apps/jwt has no key "other"'),
    ('signingSecret: "urn:k8s:secret:jwt"', [secret("stringData: {signingSecret: x}")],
     'malformed Secret reference "urn:k8s:secret:jwt" (expected urn:k8s:secret:NAME:KEY)'),
    ('signingSecret: "urn:k8s:secret:jwt:signingSecret"', [secret("stringData: {signingSecret: x}", "other")],
     "Secret apps/jwt does not exist"),
    ('signingSecret: "urn:k8s:secret:jwt:signingSecret"', [secret("data: {signingSecret: 'not base64!'}")],
     'key "signingSecret" of Secret apps/jwt: data.signingSecret: not valid base64'),
], ids=["missing-secret", "missing-key", "malformed-urn", "secret-in-another-namespace", "invalid-base64"])
def test_secret_problems_put_the_middleware_in_error(conf_d, options, docs, expected):
    route = ingress_route("[{name: web, port: 80}]", extra="\n    middlewares: [{name: test-jwt}]")
    conf_d("all.yaml", "\n---\n".join([jwt_middleware(options), route, *docs, WEB_SERVICE,
                                        web_slice("- addresses: [10.0.0.1]")]))
    config = compile_dir(conf_d.root)
    where = 'all.yaml:7: Middleware apps/test-jwt (middleware "apps-test-jwt@kubernetescrd"): ' \
            "spec.plugin.jwt.signingSecret: "
    assert any(m.startswith(where) and expected in m for m in messages(config)), messages(config)
    assert "apps-test-jwt@kubernetescrd" not in config.middlewares
    assert "apps-test-jwt@kubernetescrd" in config.routers[0].error  # the route answers 503


def test_editing_a_secret_re_resolves_its_middleware_on_reload(tmp_path, echo_upstream, wsgi_server):
    root = seed_conf_d(tmp_path, "secret", echo_upstream.port)
    gateway = Gateway(root)
    served = wsgi_server(gateway)
    old, new = mint({"sub": "u1"}, secret=SECRET), mint({"sub": "u1"}, secret="a-brand-new-longer-secret")
    assert requests.get(served.url + "/my-app", headers=bearer(old), timeout=5).status_code == 200
    manifest = root / "secret.yaml"
    manifest.write_text(manifest.read_text().replace(SECRET, "a-brand-new-longer-secret"))
    assert gateway.loader.reload("test") and gateway.config.generation == 2
    assert messages(gateway.config) == []
    assert requests.get(served.url + "/my-app", headers=bearer(new), timeout=5).status_code == 200
    assert requests.get(served.url + "/my-app", headers=bearer(old), timeout=5).status_code == 401


# --- both shapes together, chains, references across namespaces and providers ----------------------------

@pytest.mark.parametrize("api", ["traefik.io/v1alpha1", "traefik.containo.us/v1alpha1"])
def test_kubernetes_and_file_provider_objects_reference_each_other(conf_d, echo_upstream, wsgi_server, api):
    conf_d("file.yaml", f"""
    http:
      routers:
        files:
          rule: PathPrefix(`/files`)
          middlewares: [apps-test-jwt@kubernetescrd]
          service: echo
      middlewares:
        strip: {{stripPrefix: {{prefixes: [/chained]}}}}
      services:
        echo: {{loadBalancer: {{servers: [{{url: "{echo_upstream.url}"}}]}}}}
    """)
    chain = f"""
apiVersion: {api}
kind: Middleware
metadata: {{name: secured, namespace: edge}}
spec:
  chain:
    middlewares: [{{name: test-jwt, namespace: apps}}, {{name: strip@file}}]
"""
    route = ingress_route("[{name: whoami, namespace: apps, port: 80}]", namespace="edge",
                         extra="\n    priority: 50\n    middlewares: [{name: secured}]").replace("/app`", "/chained`")
    conf_d("k8s/all.yaml", "\n---\n".join([
        jwt_middleware('signingSecret: "urn:k8s:secret:jwt:signingSecret"', api=api),
        secret(f"stringData: {{signingSecret: {SECRET}}}"), chain, route.replace("traefik.io/v1alpha1", api),
        (SEED / "secret" / "whoami.yaml").read_text(), textwrap.dedent(endpoints_yaml(echo_upstream.port))]))
    gateway = Gateway(conf_d.root, options=CompileOptions(kubernetes=CROSS))   # edge's chain and route use apps'
    assert messages(gateway.config) == []
    assert gateway.config.middlewares["edge-secured@kubernetescrd"].definition.options == {
        "middlewares": ["apps-test-jwt@kubernetescrd", "strip@file"]}
    router = next(r for r in gateway.config.routers if r.name.startswith("edge-my-app-"))
    assert router.definition.priority == 50
    served = wsgi_server(gateway)
    good, bad = bearer(mint({"sub": "u1"}, secret=SECRET)), bearer(mint({"sub": "u1"}, secret="wrong-secret-value"))
    for path, upstream_path in (("/files/a", "/files/a"), ("/chained/app/x", "/app/x")):
        ok = requests.get(served.url + path, headers=good, timeout=5)
        assert (ok.status_code, ok.json()["path"]) == (200, upstream_path)
        assert requests.get(served.url + path, headers=bad, timeout=5).status_code == 401


# --- what is reported, and what is skipped ---------------------------------------------------------------

@pytest.mark.parametrize("doc, expected", [
    (ingress_route("[{name: web, port: 80}]").replace("match: PathPrefix(`/app`)", "priority: 1"),
     "all.yaml:7: IngressRoute apps/my-app: spec.routes[0].match: expected a string, got nothing"),
    (ingress_route("[{name: web, port: 80}]").replace("kind: Rule", "kind: Regex"),
     'all.yaml:7: IngressRoute apps/my-app (router "apps-my-app-7ad4766185@kubernetescrd"): '
     "spec.routes[0].kind: only \"Rule\" is supported, got 'Regex'"),
    (ingress_route("[{name: web, port: true}]"), "spec.routes[0].services[0].port: expected a port number or name"),
    (ingress_route("[{name: web}]"), "spec.routes[0].services[0].port: required"),
    (ingress_route("[{name: web, port: 80, scheme: h2c}]"),
     "spec.routes[0].services[0].scheme: expected http or https"),
    (ingress_route("[{name: web, port: 80, kind: TraefikService}]"), "TraefikService objects are not supported"),
    (ingress_route("[]"), "spec.routes[0].services: at least one service is required"),
    (ingress_route("[{name: web, port: 80}]").replace("kind: Rule", "servces: []"),
     'all.yaml:8: IngressRoute apps/my-app: spec.routes[0]: unknown field "servces"'),
    (ingress_route("[{name: web, port: 80}]", extra="\n    middlewares: [auth]"),
     "spec.routes[0].middlewares[0]: expected a mapping, got a string"),
    (jwt_middleware("signingSecret: x").replace("plugin:\n    jwt:", "rateLimiter:\n    users:"),
     'all.yaml:6: Middleware apps/test-jwt (middleware "apps-test-jwt@kubernetescrd"): '
     'spec: unknown field "rateLimiter"'),
    ("apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: apps}\nspec: {ports: [{port: http}]}",
     "all.yaml:4: Service apps/web: spec.ports[0].port: expected a whole number, got a string"),
    (web_slice("- addresses: [10.0.0.1]").replace("labels: {kubernetes.io/service-name: web}", "labels: {}"),
     "EndpointSlice apps/web-x1: metadata.labels: kubernetes.io/service-name is required"),
    ("apiVersion: v1\nkind: Secret\nmetadata: {namespace: apps}\n",
     "all.yaml:1: Secret: metadata.name: expected a string"),
    (WEB_SERVICE + "---" + WEB_SERVICE,
     "all.yaml:11: Service apps/web: defined again, the same way (the definition in all.yaml serves)"),
    (ingress_route("[{name: web, port: 80, serversTransport: mytransport}]"),
     "spec.routes[0].services[0].serversTransport: ServersTransport objects are not supported"),
    (ingress_route("[{name: web, port: 80, nativeLB: true}]"),
     "spec.routes[0].services[0].nativeLB: not supported"),
    (ingress_route("[{name: web, port: 80, nodePortLB: true}]"),
     "spec.routes[0].services[0].nodePortLB: not supported"),
    (ingress_route("[{name: web, port: 80, strategy: p2c}]"),
     "spec.routes[0].services[0].strategy: only wrr (weighted round robin) is supported, got 'p2c'"),
], ids=["route-without-match", "route-kind", "port-type", "port-missing", "scheme", "traefik-service",
        "no-services", "unknown-route-field", "middleware-ref-not-a-mapping", "unsupported-middleware",
        "service-port", "slice-without-label", "no-name", "duplicate", "servers-transport", "native-lb",
        "node-port-lb", "strategy"])
def test_errors_name_file_line_object_and_reason(conf_d, doc, expected):
    _, errors = read_definitions(conf_d, doc)
    assert any(expected in m for m in errors), errors


@pytest.mark.parametrize("options", ["nativeLB: false", "nodePortLB: false", "strategy: wrr", "strategy: RoundRobin",
                                     "responseForwarding: {flushInterval: 100ms}"])
def test_route_service_options_that_change_nothing_are_accepted(conf_d, options):
    _, errors = read_definitions(conf_d, ingress_route(f"[{{name: web, port: 80, {options}}}]"), WEB_SERVICE)
    assert not any("services[0]" in m for m in errors), errors


def test_other_kinds_are_skipped_silently(conf_d):
    """A cluster's other manifests are not gatekeeper's business (Traefik ignores them too)."""
    defs, errors = read_definitions(conf_d, (SEED / "secret" / "whoami.yaml").read_text(), """
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {a: b}
""", """
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: whoami, namespace: apps}
spec: {template: {spec: {containers: [{image: traefik/whoami}]}}}
""", """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: other-controller}
spec: {rules: [{backendRefs: [{name: whoami, port: 80}]}]}
""")
    assert (errors, dict(defs.routers), dict(defs.middlewares), dict(defs.services)) == ([], {}, {}, {})


@pytest.mark.parametrize("doc, expected", [
    ("apiVersion: traefik.io/v1alpha1\nkind: IngressRouteTCP\nmetadata: {name: tcp}\n"
     "spec: {routes: [{match: HostSNI(`*`)}]}",
     "all.yaml:1: traefik.io/v1alpha1 IngressRouteTCP: not supported by gatekeeper"),
    ("apiVersion: traefik.containo.us/v1alpha1\nkind: TLSOption\nmetadata: {name: tls}\nspec: {minVersion: x}",
     "all.yaml:1: traefik.containo.us/v1alpha1 TLSOption: not supported by gatekeeper"),
    ("apiVersion: networking.k8s.io/v1beta1\nkind: Ingress\nmetadata: {name: old}\nspec: {}",
     "all.yaml:1: networking.k8s.io/v1beta1 Ingress: not supported (removed in Kubernetes 1.22)"),
], ids=["ingressroute-tcp", "tls-option", "ingress-v1beta1"])
def test_routing_kinds_gatekeeper_cannot_serve_are_reported(conf_d, doc, expected):
    """Routing intent is never dropped silently: a Traefik kind gatekeeper does not serve is an error."""
    _, errors = read_definitions(conf_d, doc)
    assert len(errors) == 1 and errors[0].startswith(expected), errors


def test_namespace_defaults_to_default(conf_d):
    defs, errors = read_definitions(conf_d, jwt_middleware("signingSecret: x").replace("namespace: apps", "labels: {}"),
                                    ingress_route("[{name: web, port: 80}]", namespace="default",
                                                  extra="\n    middlewares: [{name: test-jwt}]"))
    assert errors == []
    (router,) = defs.routers.values()
    assert router.middlewares == ("default-test-jwt@kubernetescrd",)
    assert "default-test-jwt@kubernetescrd" in defs.middlewares
    assert defs.services[router.service].empty_reason.startswith("Kubernetes service default/web does not exist")


def test_deployment_example_conf_d_checks_clean(tmp_path):
    """docs/examples/kubernetes/deployment.yaml: its projected conf.d, laid out as the kubelet does (..data)."""
    example = Path(__file__).resolve().parents[1] / "docs" / "examples" / "kubernetes" / "deployment.yaml"
    objects = {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(example.read_text())}
    files = {**objects[("ConfigMap", "gatekeeper-conf")]["data"],
             **objects[("Secret", "gatekeeper-secrets")]["stringData"]}
    root = tmp_path / "conf.d"
    (root / "..2026_01_01_00_00_00.1").mkdir(parents=True)
    (root / "..data").symlink_to("..2026_01_01_00_00_00.1")
    for name, text in files.items():
        (root / "..data" / name).write_text(text)
        (root / name).symlink_to(Path("..data") / name)
    config = compile_dir(root)
    assert messages(config) == []
    assert [s.url for s in config.services[ROUTER].definition.servers] == ["http://whoami.apps.svc.cluster.local:80"]
    assert config.middlewares["apps-test-jwt@kubernetescrd"].definition.options == {"signingSecret": SECRET}


@pytest.mark.parametrize("spec, expected", [
    ("tls: {secretName: site-tls}", "spec.tls.secretName: not supported: gatekeeper's TLS certificate is per entry"),
    ("tls: {certResolver: le}", "spec.tls.certResolver: not supported"),
    ("tls: {options: {name: modern}}", "spec.tls.options: not supported"),
    ("parentRefs: [{name: parent}]", "spec.parentRefs: multi-layer routing is not supported"),
    ("tls: {}", None),
], ids=["secret-name", "cert-resolver", "tls-options", "parent-refs", "tls-on"])
def test_ingressroute_options_gatekeeper_cannot_honour_make_its_routes_answer_503(conf_d, spec, expected):
    route = ingress_route("[{name: web, port: 80}]").replace("spec:\n", f"spec:\n  {spec}\n")
    defs, errors = read_definitions(conf_d, route, WEB_SERVICE)
    (router,) = defs.routers.values()
    if expected is None:
        assert (errors, router.error) == ([], None)
    else:
        assert len(errors) == 1 and expected in errors[0] and errors[0].startswith("all.yaml:"), errors
        assert expected.split(": ")[0] in router.error     # the route answers 503, never served without it
