"""Kubernetes manifests: Traefik's CRDs resolved against core objects, as the ``kubernetescrd`` provider does.

Lets a team run the same ``Middleware`` / ``IngressRoute`` / ``Secret`` / ``Service`` YAML with no cluster.
``read_documents(docs, out)`` works in two passes: first every object is indexed by kind, namespace and name
(the first in sorted file order wins), then Middlewares and IngressRoutes become definitions, with Secret
references and Service endpoints resolved right then. Because resolution happens at collect time, an edited
Secret or Endpoints file changes the definitions, and so the built pieces, on the next reload.

Names follow Traefik's:

- Middleware ``test-jwt`` in namespace ``apps``           -> ``apps-test-jwt@kubernetescrd``
- IngressRoute ``my-app`` in ``apps``, a route matching M  -> router and service
  ``apps-my-app-<first 10 hex digits of sha256(M)>@kubernetescrd``
- each member of a route with several services (weighted) -> ``<namespace>-<service>-<port>@kubernetescrd``

References across namespaces follow Traefik's ``allowCrossNamespace`` (default false): a route's middleware or
Service, or a chain member, in another namespace than the object naming it is an error unless
:class:`~gatekeeper.config.providers.k8s_objects.KubeOptions` allows it (``--allow-cross-namespace``).
Kinds gatekeeper does not read (Deployment, ConfigMap, ...) are skipped (``k8s_objects.refuse_unread``).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Tuple, Union

from gatekeeper.config.manifests import Document
from gatekeeper.config.model import FAIL_CLOSED_PRIORITY, RouterDef, ServiceDef, Source, qualify
from gatekeeper.config.providers import file as file_provider
from gatekeeper.config.providers.collector import Collector
from gatekeeper.config.providers.k8s_objects import (
    Cluster,
    KubeObject,
    KubeOptions,
    conflict,
    index_objects,
    resolve_secrets,
    secret_values,
)
from gatekeeper.config.providers.k8s_servers import resolve_servers
from gatekeeper.config.providers.service_options import read_health_check, read_sticky
from gatekeeper.errors import ConfigError
from gatekeeper.middlewares.htpasswd import sha_line
from gatekeeper.options import (
    line_of,
    pick,
    type_name,
    want_bool,
    want_int,
    want_list,
    want_str,
    want_str_list,
)

PROVIDER = "kubernetescrd"
INGRESS_ROUTE_FIELDS = ("entryPoints", "routes", "tls", "parentRefs")
ROUTE_FIELDS = ("match", "kind", "priority", "middlewares", "services", "syntax", "observability")
# fields Traefik knows on a route's service; sticky and healthCheck are read (service_options.py), the rest
# are checked by refuse_unsupported: none is accepted and ignored
ROUTE_SERVICE_FIELDS = ("name", "namespace", "kind", "port", "scheme", "passHostHeader", "weight", "sticky",
                        "healthCheck", "strategy", "responseForwarding", "serversTransport", "nativeLB", "nodePortLB")


def read_documents(docs: List[Document], out: Collector, options: Optional[KubeOptions] = None) -> Cluster:
    """Add the definitions the CRDs make to ``out`` (every problem is reported there); the indexed objects are
    returned for the Ingress provider (``ingress.py``), which resolves its Services the same way."""
    cluster = index_objects(docs, out, options)
    for obj in cluster.of_kind("Middleware"):
        read_middleware(obj, cluster, out)
    for obj in cluster.of_kind("IngressRoute"):
        read_ingress_route(obj, cluster, out)
    return cluster



# --- Middleware ------------------------------------------------------------------------------------------

def read_middleware(obj: KubeObject, cluster: Cluster, out: Collector) -> None:
    """A Middleware's ``spec`` read as a file-provider middleware, after resolving Secrets and chain members."""
    name = qualify(object_id(obj.namespace, obj.name), PROVIDER)
    source = Source(obj.doc.file, obj.line, PROVIDER)
    try:
        problem = conflict(cluster, "Middleware", obj.namespace, obj.name)
        if problem is not None:
            raise problem
        spec = pick(obj.body.get("spec"), file_provider.MIDDLEWARE_KINDS, "spec")
        if "plugin" in spec:
            spec["plugin"] = resolve_secrets(spec["plugin"], obj.namespace, cluster, "spec.plugin",
                                             line_of(obj.body.get("spec"), "plugin"))
        if "chain" in spec:
            spec["chain"] = {"middlewares": chain_members(spec["chain"], obj.namespace, cluster.options)}
        if "basicAuth" in spec:
            spec["basicAuth"] = basic_auth_users(spec["basicAuth"], obj.namespace, cluster)
        out.add("middleware", file_provider.read_middleware(name, spec, source))
    except ConfigError as err:
        out.fail("middleware", name, err.located(file=obj.doc.file, line=obj.line,
                                                 obj=f'{obj.ref} (middleware "{name}")'))


def basic_auth_users(options: Any, namespace: str, cluster: Cluster) -> Any:
    """A CRD basicAuth's ``secret`` read into ``users``, as Traefik does: a ``kubernetes.io/basic-auth``
    Secret's ``username`` and plain ``password`` (kept as a ``{SHA}`` hash), else htpasswd lines in the
    ``users`` key or the Secret's only key. The CRD has no ``users``/``usersFile`` (Traefik's neither)."""
    if not isinstance(options, dict):
        return options
    fields = pick(options, ("secret", "realm", "removeHeader", "headerField"), "spec.basicAuth")
    name = want_str(fields.pop("secret", None) or "", "spec.basicAuth.secret")
    secret = cluster.objects.get(("Secret", namespace, name))
    values = secret_values(cluster, namespace, name, "spec.basicAuth.secret")
    if secret is None or values is None:
        raise ConfigError(f"spec.basicAuth.secret: Secret {namespace}/{name} does not exist")
    bad = [v for v in values.values() if isinstance(v, ConfigError)]
    if bad:
        raise ConfigError(f"spec.basicAuth.secret: Secret {namespace}/{name}: {bad[0].reason}")
    if secret.body.get("type") == "kubernetes.io/basic-auth":
        if not values.get("username") or not values.get("password"):
            raise ConfigError(f"spec.basicAuth.secret: Secret {namespace}/{name}: a kubernetes.io/basic-auth "
                              "Secret needs username and password")
        return {**fields, "users": [sha_line(str(values["username"]), str(values["password"]))]}
    text = values.get("users", next(iter(values.values())) if len(values) == 1 else None)
    if not isinstance(text, str):
        raise ConfigError(f'spec.basicAuth.secret: Secret {namespace}/{name}: expected a "users" key or one key')
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return {**fields, "users": lines}


def chain_members(chain: Any, namespace: str, options: KubeOptions) -> List[str]:
    """A CRD chain's ``{name, namespace}`` members as qualified names (compile.py leaves those as they are)."""
    fields = pick(chain, ("middlewares",), "spec.chain")
    members = []
    for i, entry in enumerate(want_list(fields.get("middlewares") or [], "spec.chain.middlewares")):
        ref = pick(entry, ("name", "namespace"), f"spec.chain.middlewares[{i}]")
        members.append(middleware_ref(ref, namespace, f"spec.chain.middlewares[{i}]", options))
    return members


def middleware_ref(ref: Dict[str, Any], namespace: str, where: str, options: KubeOptions) -> str:
    """``{name, namespace}`` -> ``<namespace>-<name>@kubernetescrd``; a name with ``@`` is taken as it is.

    Without ``allowCrossNamespace``, Traefik refuses another namespace and any ``...@kubernetescrd`` name
    (whose namespace it cannot check); other providers' names (``strip@file``) are always allowed.
    """
    name = want_str(ref.get("name"), f"{where}.name")
    if "@" in name:
        if name.endswith("@" + PROVIDER) and not options.allow_cross_namespace:
            raise ConfigError(f'{where}.name: "{name}": a @{PROVIDER} reference may cross namespaces, so it is not '
                              "allowed; give name and namespace, or set --allow-cross-namespace")
        return name
    ns = want_str(ref["namespace"], f"{where}.namespace") if ref.get("namespace") else namespace
    same_namespace(ns, namespace, f"{where}: middleware {ns}/{name}", options)
    return qualify(object_id(ns, name), PROVIDER)


def same_namespace(target: str, parent: str, what: str, options: KubeOptions) -> None:
    """Traefik's ``isNamespaceAllowed``: a reference stays in its object's namespace unless allowed."""
    if target != parent and not options.allow_cross_namespace:
        raise ConfigError(f"{what}: cross-namespace reference from namespace {parent} not allowed "
                          "(Traefik's allowCrossNamespace); set --allow-cross-namespace")


def object_id(*parts: str) -> str:
    """Traefik's ``provider.Normalize(namespace-name)``: runs of anything but letters and digits become ``-``."""
    return "-".join(p for p in re.split(r"[\W_]+", "-".join(parts)) if p)


# --- IngressRoute ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Backend:
    """One entry of a route's ``services``, resolved: its own name and servers, or a reference elsewhere."""

    name: str                               # qualified
    weight: int
    definition: Optional[ServiceDef]        # None: a reference to a service defined elsewhere (name@provider)


def read_ingress_route(obj: KubeObject, cluster: Cluster, out: Collector) -> None:
    try:
        spec = pick(obj.body.get("spec"), INGRESS_ROUTE_FIELDS, "spec")
        entry_points = tuple(want_str_list(spec.get("entryPoints") or [], "spec.entryPoints"))
        routes = want_list(spec.get("routes") or [], "spec.routes")
    except ConfigError as err:
        out.broken(obj.located(err))
        return
    if not routes:
        out.broken(obj.located(ConfigError("spec.routes: at least one route is required")))
    problem = conflict(cluster, "IngressRoute", obj.namespace, obj.name) or unsupported_route_options(spec)
    for i, route in enumerate(routes):
        read_route_at(obj, i, route, entry_points=entry_points, cluster=cluster, out=out, problem=problem)


def unsupported_route_options(spec: Dict[str, Any]) -> Optional[ConfigError]:
    """What the IngressRoute asks that gatekeeper cannot do: its routes then answer 503, never served without it.

    ``tls: {}`` is accepted as a file-provider router's ``tls`` (TLS is the entry point's); a certificate from
    a Secret, TLS options, stores and ACME resolvers are not."""
    if spec.get("parentRefs"):
        return ConfigError("spec.parentRefs: multi-layer routing is not supported by gatekeeper")
    tls = spec.get("tls") or {}
    if not isinstance(tls, dict):
        return ConfigError(f"spec.tls: expected a mapping, got {type_name(tls)}")
    for option in ("secretName", "options", "store", "certResolver", "domains"):
        if tls.get(option):
            return ConfigError(f"spec.tls.{option}: not supported: gatekeeper's TLS certificate is per entry point "
                               "(--entrypoint NAME=HOST:PORT,tls=CERT:KEY, a Secret mounted as files); remove it")
    return None


def route_key(obj: KubeObject, index: int) -> str:
    """A route's identity across reloads: its IngressRoute and position (its name changes with its match)."""
    return f"{obj.ref} spec.routes[{index}]"


def read_route_at(obj: KubeObject, index: int, route: Any, *, entry_points: Tuple[str, ...], cluster: Cluster,
                  out: Collector, problem: Optional[ConfigError] = None) -> None:
    """One route -> a router and its service; in error, a 503 router when its match can be read.

    A route in error keeps its last good version (compile.py, by :func:`route_key`); with none, its match
    still answers 503 so its requests never fall through to another route.
    """
    where = f"spec.routes[{index}]"
    line = line_of(route) or obj.line
    key = route_key(obj, index)
    name = ""
    try:
        fields = pick(route, ROUTE_FIELDS, where)
        match = want_str(fields.get("match"), f"{where}.match")
        name = route_name(obj, match)
        if problem is not None:
            raise problem
        router, backends = read_route(obj, fields, match=match, name=name, entry_points=entry_points,
                                       cluster=cluster, where=where, line=line)
    except ConfigError as err:
        err = err.located(file=obj.doc.file, line=line,
                          obj=f'{obj.ref} (router "{name}")' if name else obj.ref)
        out.fail("router", name, err, key=key)
        salvaged = salvage_route(obj, route, entry_points=entry_points, key=key, line=line,
                                 reason=err.reason)
        if salvaged is not None:
            out.add("router", salvaged)
        return
    add_backends([owned_by(b, name, key) for b in backends], router.service,
                 Source(obj.doc.file, line, PROVIDER), out, key)
    out.add("router", replace(router, key=key))


def owned_by(backend: Backend, route: str, key: str) -> Backend:
    """The route's own service (named after the route, so after its match) takes the route's key."""
    if backend.definition is None or backend.name != route:
        return backend
    return replace(backend, definition=replace(backend.definition, key=key))


def salvage_route(obj: KubeObject, route: Any, *, entry_points: Tuple[str, ...], key: str, line: int,
                  reason: str) -> Optional[RouterDef]:
    """A route in error whose ``match`` can be read, as a router answering 503 (see file.salvage_router)."""
    if not isinstance(route, dict):
        return None
    fields = {str(k).lower(): v for k, v in route.items()}
    try:
        match = want_str(fields.get("match"), "match")
    except ConfigError:
        return None
    try:
        priority = want_int(fields.get("priority", 0), "priority", minimum=0)
    except ConfigError:
        priority = FAIL_CLOSED_PRIORITY
    return RouterDef(name=route_name(obj, match), rule=match, service="", middlewares=(),
                     entry_points=entry_points, priority=priority, source=Source(obj.doc.file, line, PROVIDER),
                     error=reason, key=key)


def route_name(obj: KubeObject, match: str) -> str:
    """Traefik's router name: ``<namespace>-<name>-<first 10 hex digits of sha256(match)>@kubernetescrd``."""
    return qualify(object_id(obj.namespace, obj.name, hashlib.sha256(match.encode()).hexdigest()[:10]), PROVIDER)


def read_route(obj: KubeObject, fields: Dict[str, Any], *, match: str, name: str, entry_points: Tuple[str, ...],
               cluster: Cluster, where: str, line: int) -> Tuple[RouterDef, List[Backend]]:
    kind = fields.get("kind", "Rule")
    if kind != "Rule":
        raise ConfigError(f'{where}.kind: only "Rule" is supported, got {kind!r}')
    middlewares = tuple(
        middleware_ref(pick(ref, ("name", "namespace"), f"{where}.middlewares[{i}]"), obj.namespace,
                       f"{where}.middlewares[{i}]", cluster.options)
        for i, ref in enumerate(want_list(fields.get("middlewares") or [], f"{where}.middlewares")))
    entries = want_list(fields.get("services") or [], f"{where}.services")
    if not entries:
        raise ConfigError(f"{where}.services: at least one service is required")
    several = len(entries) > 1
    backends = [read_backend(entry, obj.namespace, cluster, f"{where}.services[{i}]", route_name=name,
                             several=several, source=Source(obj.doc.file, line_of(entry) or line, PROVIDER))
                for i, entry in enumerate(entries)]
    service = backends[0].name if not several else name
    router = RouterDef(name=name, rule=match, service=service, middlewares=middlewares, entry_points=entry_points,
                       priority=want_int(fields.get("priority", 0), f"{where}.priority", minimum=0),
                       source=Source(obj.doc.file, line, PROVIDER))
    return router, backends


def read_backend(entry: Any, namespace: str, cluster: Cluster, where: str, *, route_name: str, several: bool,
                 source: Source) -> Backend:
    fields = pick(entry, ROUTE_SERVICE_FIELDS, where)
    name = want_str(fields.get("name"), f"{where}.name")
    weight = want_int(fields.get("weight", 1), f"{where}.weight", minimum=0)
    kind = fields.get("kind", "Service")
    if kind == "TraefikService":
        if "@" not in name:
            raise ConfigError(f"{where}: TraefikService objects are not supported; name@provider references are")
        for option in ("sticky", "healthCheck"):
            if option in fields:
                raise ConfigError(f"{where}.{option}: applies to a Service; set it on the service {name} itself")
        return Backend(name, weight, None)
    if kind != "Service":
        raise ConfigError(f'{where}.kind: expected Service or TraefikService, got {kind!r}')
    refuse_unsupported(fields, where)
    port = route_port(fields, where)
    ns = want_str(fields["namespace"], f"{where}.namespace") if fields.get("namespace") else namespace
    same_namespace(ns, namespace, f"{where}: service {ns}/{name}", cluster.options)
    scheme = want_str(fields["scheme"], f"{where}.scheme") if fields.get("scheme") else None
    if scheme not in (None, "http", "https"):
        raise ConfigError(f"{where}.scheme: expected http or https, got {scheme!r}")
    servers, empty_reason = resolve_servers(cluster, ns, name, port, scheme)
    own_name = qualify(object_id(ns, name, str(port)), PROVIDER) if several else route_name
    definition = ServiceDef(own_name, "loadBalancer", source, servers,
                            want_bool(fields.get("passHostHeader", True), f"{where}.passHostHeader"),
                            empty_reason=empty_reason,
                            health_check=read_health_check(fields["healthCheck"], f"{where}.healthCheck")
                            if "healthCheck" in fields else None,
                            sticky=read_sticky(fields["sticky"], f"{where}.sticky") if "sticky" in fields else None)
    return Backend(own_name, weight, definition)


def refuse_unsupported(fields: Dict[str, Any], where: str) -> None:
    """A route service's options gatekeeper cannot honour are errors, never accepted and ignored.

    ``strategy`` may name the one strategy there is (weighted round robin); ``responseForwarding`` is how
    answers always travel (streamed as they arrive), so it is read by being true already.
    """
    if "serversTransport" in fields:
        raise ConfigError(f"{where}.serversTransport: ServersTransport objects are not supported; "
                          "give the service a file-provider serversTransport instead (docs/configuration.md)")
    for option in ("nativeLB", "nodePortLB"):
        if want_bool(fields.get(option, False), f"{where}.{option}"):
            raise ConfigError(f"{where}.{option}: not supported: gatekeeper balances over the Service's endpoints")
    strategy = fields.get("strategy")
    if strategy is not None and str(strategy).lower() not in ("wrr", "roundrobin"):
        raise ConfigError(f"{where}.strategy: only wrr (weighted round robin) is supported, got {strategy!r}")


def route_port(fields: Dict[str, Any], where: str) -> Union[int, str]:
    """A route service's ``port``: a number, or a Service port name (digits only are a number: names have a letter)."""
    if "port" not in fields:
        raise ConfigError(f"{where}.port: required (a Service port number or name)")
    port = fields["port"]
    port = int(port) if isinstance(port, str) and port.isdigit() else port
    if isinstance(port, bool) or not isinstance(port, (int, str)) or port == "":
        raise ConfigError(f"{where}.port: expected a port number or name, got {type_name(port)}")
    return port


def add_backends(backends: List[Backend], name: str, source: Source, out: Collector, key: str = "") -> None:
    """A route's services: one loadBalancer under the route's name, or a weighted service over its members.

    Members are shared between routes (Traefik names them by Service and port); the first definition stands.
    The route's own service (named after its match) shares the route's ``key``.
    """
    if len(backends) == 1:
        if backends[0].definition is not None:
            out.add("service", backends[0].definition)
        return
    for backend in backends:
        known = out.services.get(backend.name)
        if backend.definition is None or (known is not None and same_servers(known, backend.definition)):
            continue
        out.add("service", backend.definition)
    out.add("service", ServiceDef(name, "weighted", source, children=tuple((b.name, b.weight) for b in backends),
                                  key=key))


def same_servers(a: ServiceDef, b: ServiceDef) -> bool:
    return (a.servers, a.pass_host_header, a.empty_reason) == (b.servers, b.pass_host_header, b.empty_reason)
