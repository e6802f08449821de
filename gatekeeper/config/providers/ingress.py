"""Kubernetes ``Ingress`` (``networking.k8s.io/v1``) read as Traefik's Kubernetes Ingress provider reads it.

Which Ingresses are read (Traefik's ``shouldProcessIngress``, ``--ingress-class`` being its ``ingressClass``):

- ``spec.ingressClassName: X``: X names an ``IngressClass`` in conf.d whose ``spec.controller`` is
  ``traefik.io/ingress-controller`` (and X is ``--ingress-class`` when given). A conf.d rarely carries that
  cluster-scoped object, so with no IngressClass X in conf.d, X == ``--ingress-class`` (default ``traefik``)
  is taken as Traefik's.
- no class name: the ``kubernetes.io/ingress.class`` annotation equals ``--ingress-class``; with no option,
  the annotation is absent or ``traefik``.

Others belong to another controller and are skipped, as Traefik skips them. Each ``spec.rules[].http.paths[]``
becomes a router ``<namespace>-<ingress>-<host><path>@kubernetes`` (normalized; with ``-<sha256(rule)[:10]>``
when two paths share that name) over the service ``<namespace>-<service>-<port>@kubernetes``; an Ingress with no
rules and a ``defaultBackend`` is ``default-router@kubernetes`` (lowest priority) over
``default-backend@kubernetes``.
An Ingress or path in error answers 503 for what its rule matches; nothing is accepted and ignored.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Set, Tuple, Union

from gatekeeper.config.model import RouterDef, ServiceDef, Source, qualify
from gatekeeper.config.providers.collector import Collector
from gatekeeper.config.providers.k8s_objects import Cluster, KubeObject, conflict
from gatekeeper.config.providers.k8s_servers import resolve_servers
from gatekeeper.config.providers.kubernetes import object_id
from gatekeeper.errors import ConfigError
from gatekeeper.options import line_of, pick, type_name, want_int, want_list, want_str

PROVIDER = "kubernetes"
PREFIX = "traefik.ingress.kubernetes.io/"
CLASS_ANNOTATION = "kubernetes.io/ingress.class"
TRAEFIK_CLASS = "traefik"
TRAEFIK_CONTROLLER = "traefik.io/ingress-controller"
DEFAULT_PRIORITY = -(2 ** 31)    # Traefik's math.MinInt32: the default backend loses to every other router
INGRESS_FIELDS = ("ingressClassName", "defaultBackend", "rules", "tls")
PATH_TYPES = {"Exact": "Path", "Prefix": "PathPrefix"}   # ImplementationSpecific: router.pathmatcher
PATH_MATCHERS = ("Path", "PathPrefix", "PathRegexp")


@dataclass(frozen=True)
class RouterConfig:
    """The ``traefik.ingress.kubernetes.io/router.*`` annotations gatekeeper honours."""

    middlewares: Tuple[str, ...] = ()
    entry_points: Tuple[str, ...] = ()
    priority: int = 0
    path_matcher: str = "PathPrefix"


@dataclass(frozen=True)
class IngressPath:
    """One router an Ingress asks for: its name, rule and backend (or why it cannot be built)."""

    key: str                          # identity across reloads: the Ingress and the path's position
    name: str
    rule: str
    line: int
    backend: Any
    where: str
    priority: Optional[int] = None    # the default backend's own priority
    error: Optional[ConfigError] = None   # the path cannot be served: its router answers 503 for ``rule``


def read_ingresses(cluster: Cluster, out: Collector) -> None:
    """Every Ingress of Traefik's class -> routers and services in ``out``; every problem reported there."""
    classes = traefik_classes(cluster)
    made: Set[str] = set()
    default_taken = False
    for obj in cluster.of_kind("Ingress"):
        if not handled_here(obj, classes, cluster.options.ingress_class):
            continue
        paths, config, problem = read_ingress(obj, cluster, default_taken)
        twice = conflict(cluster, "Ingress", obj.namespace, obj.name)
        problem = obj.located(twice) if twice is not None else problem
        default_taken = default_taken or any(p.priority is not None for p in paths)
        for path in paths:
            add_path(obj, path, config, problem, cluster=cluster, out=out, made=made)
        if problem is not None and not paths:
            out.broken(problem)     # no router can be named: the file keeps its last good version


def traefik_classes(cluster: Cluster) -> Set[str]:
    """Names of the IngressClasses Traefik (``--ingress-class``) serves, by conf.d's IngressClass objects."""
    wanted = cluster.options.ingress_class
    controllers = {obj.name: (obj.body.get("spec") or {}).get("controller") for obj in cluster.of_kind("IngressClass")}
    names = {name for name, controller in controllers.items()
             if controller == TRAEFIK_CONTROLLER and (not wanted or name == wanted)}
    if (wanted or TRAEFIK_CLASS) not in controllers:
        names.add(wanted or TRAEFIK_CLASS)
    return names


def handled_here(obj: KubeObject, classes: Set[str], wanted: str) -> bool:
    spec = obj.body.get("spec")
    class_name = spec.get("ingressClassName") if isinstance(spec, dict) else None
    if class_name is not None:
        return str(class_name) in classes
    annotation = str(annotations_of(obj).get(CLASS_ANNOTATION, ""))
    return annotation == wanted or (not wanted and annotation == TRAEFIK_CLASS)


def annotations_of(obj: KubeObject) -> Dict[str, Any]:
    meta = obj.body.get("metadata") or {}
    annotations = meta.get("annotations") if isinstance(meta, dict) else None
    return annotations if isinstance(annotations, dict) else {}


# --- an Ingress -> its paths -----------------------------------------------------------------------------

def read_ingress(obj: KubeObject, cluster: Cluster, default_taken: bool
                 ) -> Tuple[List[IngressPath], RouterConfig, Optional[ConfigError]]:
    """The Ingress's paths, its annotations, and the first problem that puts the whole Ingress in error."""
    problems: List[ConfigError] = []
    config = RouterConfig()
    try:
        config = router_config(annotations_of(obj))
    except ConfigError as err:
        problems.append(obj.located(err))
    try:
        spec = pick(obj.body.get("spec"), INGRESS_FIELDS, "spec")
        paths = rule_paths(obj, spec, config)
    except ConfigError as err:      # no rule can be read: nothing to answer 503 for
        return [], config, [*problems, obj.located(err)][0]
    try:
        refuse_tls_secrets(spec.get("tls"))
    except ConfigError as err:
        problems.append(obj.located(err))
    if "defaultBackend" in spec:
        try:
            paths.extend(default_path(obj, spec, default_taken))
        except ConfigError as err:
            problems.append(obj.located(err))
    return paths, config, problems[0] if problems else None


def router_config(annotations: Dict[str, Any]) -> RouterConfig:
    """The router annotations, case-insensitive as Traefik's label decoder; any other Traefik one is refused."""
    values: Dict[str, str] = {}
    for key, value in annotations.items():
        if not str(key).startswith(PREFIX):
            continue
        name = str(key)[len(PREFIX):].lower()
        where = f"metadata.annotations.{key}"
        text = want_str(value, where, empty_ok=True)
        if name == "router.tls":
            annotation_bool(text, where)    # TLS is the entry point's (as a file-provider router's tls)
        elif name not in ("router.middlewares", "router.entrypoints", "router.priority", "router.pathmatcher"):
            raise ConfigError(f"{where}: not supported by gatekeeper (it reads router.middlewares, "
                              "router.entrypoints, router.priority, router.pathmatcher and router.tls)")
        values[name] = text
    matcher = values.get("router.pathmatcher") or "PathPrefix"
    if matcher not in PATH_MATCHERS:
        raise ConfigError(f"metadata.annotations: router.pathmatcher: must be one of Path, PathPrefix, PathRegexp, "
                          f"got {matcher!r}")
    priority = values.get("router.priority", "0").strip() or "0"
    if not priority.lstrip("-").isdigit():
        raise ConfigError(f"metadata.annotations: router.priority: expected a whole number, got {priority!r}")
    return RouterConfig(middlewares=tuple(qualify(m, PROVIDER) for m in split(values.get("router.middlewares"))),
                        entry_points=tuple(split(values.get("router.entrypoints"))), priority=int(priority),
                        path_matcher=matcher)


def annotation_bool(text: str, where: str) -> bool:
    """An annotation's ``"true"`` / ``"false"`` (annotations are strings)."""
    if text.strip().lower() not in ("true", "false"):
        raise ConfigError(f'{where}: expected "true" or "false", got {text!r}')
    return text.strip().lower() == "true"


def split(value: Optional[str]) -> List[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def refuse_tls_secrets(tls: Any) -> None:
    """``spec.tls[].secretName``: gatekeeper's certificates are per entry point, never taken from a Secret."""
    for i, entry in enumerate(want_list(tls or [], "spec.tls")):
        fields = pick(entry, ("hosts", "secretName"), f"spec.tls[{i}]")
        if fields.get("secretName"):
            raise ConfigError(f"spec.tls[{i}].secretName: serving a certificate from a Secret is not supported: "
                              "gatekeeper's TLS certificate is per entry point (--entrypoint NAME=HOST:PORT,"
                              "tls=CERT:KEY, the Secret mounted as files); remove spec.tls")


def rule_paths(obj: KubeObject, spec: Dict[str, Any], config: RouterConfig) -> List[IngressPath]:
    found: List[IngressPath] = []
    for i, rule in enumerate(want_list(spec.get("rules") or [], "spec.rules")):
        fields = pick(rule, ("host", "http"), f"spec.rules[{i}]")
        host = want_str(fields["host"], f"spec.rules[{i}].host") if fields.get("host") else ""
        if fields.get("http") is None:
            continue
        http = pick(fields["http"], ("paths",), f"spec.rules[{i}].http")
        for j, entry in enumerate(want_list(http.get("paths") or [], f"spec.rules[{i}].http.paths")):
            where = f"spec.rules[{i}].http.paths[{j}]"
            error: Optional[ConfigError] = None
            try:
                rule_text = path_rule(host, pick(entry, ("path", "pathType", "backend"), where), config, where)
            except ConfigError as err:
                rule_text, error = salvage_rule(host, entry, err), err
            path = entry.get("path") if isinstance(entry.get("path"), str) else ""
            name = object_id(obj.namespace, obj.name, host + path)
            found.append(IngressPath(f"{obj.ref} {where}", name, rule_text, line_of(entry) or obj.line,
                                     entry.get("backend"), f"{where}.backend", error=error))
    return with_unique_names(found)


def salvage_rule(host: str, entry: Any, err: ConfigError) -> str:
    """A path in error still answers 503 for what it would match: its host and the prefix of its path (the
    widest it could mean). With neither to read, the Ingress has nothing to answer for: ``err`` is raised."""
    path = entry.get("path") if isinstance(entry, dict) else None
    parts = ([f"Host({go_quote(host)})"] if host else []) + ([f"PathPrefix({go_quote(path)})"]
                                                             if isinstance(path, str) and path else [])
    if not parts:
        raise err
    return " && ".join(parts)


def path_rule(host: str, path: Dict[str, Any], config: RouterConfig, where: str) -> str:
    """Traefik's rule: ``Host("h") && PathPrefix("/p")`` (Exact: ``Path``; ImplementationSpecific or no type:
    the ``router.pathmatcher`` annotation, default PathPrefix). ``*.example.com`` matches one label, as in
    Kubernetes, because gatekeeper's ``Host`` takes that wildcard."""
    parts = [f"Host({go_quote(host)})"] if host else []
    value = want_str(path["path"], f"{where}.path") if path.get("path") else ""
    if value:
        kind = path.get("pathType") or "ImplementationSpecific"
        if kind != "ImplementationSpecific" and kind not in PATH_TYPES:
            raise ConfigError(f"{where}.pathType: expected Exact, Prefix or ImplementationSpecific, got {kind!r}")
        matcher = PATH_TYPES.get(kind, config.path_matcher)
        parts.append(f"{matcher}({go_quote(value)})")
    if not parts:
        raise ConfigError(f"{where}: a path needs a host or a path to make a rule")
    return " && ".join(parts)


def go_quote(text: str) -> str:
    """Go's ``%q`` for the text Kubernetes allows in hosts and paths (so rules, and hashed names, are Traefik's)."""
    return json.dumps(text, ensure_ascii=False)


def with_unique_names(paths: List[IngressPath]) -> List[IngressPath]:
    """Paths sharing a name get ``-<first 10 hex digits of sha256(rule)>``, as Traefik's makeRouterKeyWithHash."""
    counts: Dict[str, int] = {}
    for path in paths:
        counts[path.name] = counts.get(path.name, 0) + 1
    return [path if counts[path.name] == 1 else
            replace(path, name=f"{path.name}-{hashlib.sha256(path.rule.encode()).hexdigest()[:10]}")
            for path in paths]


def default_path(obj: KubeObject, spec: Dict[str, Any], taken: bool) -> List[IngressPath]:
    """``defaultBackend``: Traefik reads it only from an Ingress without rules, once for all Ingresses."""
    if spec.get("rules"):
        raise ConfigError("spec.defaultBackend: Traefik uses a defaultBackend only on an Ingress without rules; "
                          "move it to an Ingress of its own")
    if taken:
        raise ConfigError("spec.defaultBackend: the default backend is already defined by another Ingress")
    line = line_of(spec, "defaultBackend") or obj.line
    return [IngressPath(f"{obj.ref} spec.defaultBackend", "default-router", 'PathPrefix("/")', line,
                        spec["defaultBackend"], "spec.defaultBackend", DEFAULT_PRIORITY)]


# --- a path -> a router and its service ------------------------------------------------------------------

def add_path(obj: KubeObject, path: IngressPath, config: RouterConfig, problem: Optional[ConfigError], *,
             cluster: Cluster, out: Collector, made: Set[str]) -> None:
    """A path's router and (once per name) its service; in error, a router answering 503 for its rule."""
    name = qualify(path.name, PROVIDER)
    source = Source(obj.doc.file, path.line, PROVIDER)
    router = RouterDef(name=name, rule=path.rule, service="", middlewares=config.middlewares,
                       entry_points=config.entry_points,
                       priority=config.priority if path.priority is None else path.priority, source=source,
                       key=path.key)
    try:
        error = path.error or problem
        if error is not None:
            raise error
        service = backend_service(obj, path, cluster, source)
    except ConfigError as err:
        err = err.located(file=obj.doc.file, line=path.line, obj=f'{obj.ref} (router "{name}")')
        out.fail("router", name, err, key=path.key)
        out.add("router", RouterDef(name=name, rule=router.rule, service="", middlewares=(),
                                    entry_points=router.entry_points, priority=router.priority, source=source,
                                    error=err.reason, key=path.key))
        return
    if service.name not in made:
        made.add(service.name)
        out.add("service", service)
    out.add("router", RouterDef(name=name, rule=router.rule, service=service.name, middlewares=router.middlewares,
                                entry_points=router.entry_points, priority=router.priority, source=source,
                                key=path.key))


def backend_service(obj: KubeObject, path: IngressPath, cluster: Cluster, source: Source) -> ServiceDef:
    """A backend's Service port as a loadBalancer over its endpoints (``resource`` backends are refused)."""
    fields = pick(path.backend, ("service", "resource"), path.where)
    if "resource" in fields:
        raise ConfigError(f"{path.where}.resource: resource backends are not supported (Traefik neither)")
    service = pick(fields.get("service"), ("name", "port"), f"{path.where}.service")
    name = want_str(service.get("name"), f"{path.where}.service.name")
    port = backend_port(service.get("port"), f"{path.where}.service.port")
    kube = cluster.services.get((obj.namespace, name))
    if kube is not None and kube.external_name is not None:
        raise ConfigError(f"{path.where}.service: Service {obj.namespace}/{name} is of type ExternalName, which "
                          "Traefik's Ingress provider refuses (allowExternalNameServices is off)")
    scheme, pass_host = service_annotations(cluster, obj.namespace, name)
    servers, empty_reason = resolve_servers(cluster, obj.namespace, name, port, scheme)
    own = qualify("default-backend" if path.priority is not None else object_id(obj.namespace, name, str(port)),
                  PROVIDER)
    return ServiceDef(own, "loadBalancer", source, servers, pass_host, empty_reason=empty_reason)


def backend_port(value: Any, where: str) -> Union[int, str]:
    """``port: {number: 80}`` or ``port: {name: http}``: exactly one of them."""
    fields = pick(value, ("number", "name"), where)
    if ("number" in fields) == ("name" in fields):
        raise ConfigError(f"{where}: give exactly one of number or name, got {type_name(value)}")
    if "number" in fields:
        return want_int(fields["number"], f"{where}.number", minimum=1)
    return want_str(fields["name"], f"{where}.name")


def service_annotations(cluster: Cluster, namespace: str, name: str) -> Tuple[Optional[str], bool]:
    """The backend Service's ``traefik.ingress.kubernetes.io/service.*`` annotations: serversscheme and
    passhostheader are honoured; any other (sticky, serverstransport, nativelb, ...) is refused."""
    obj = cluster.objects.get(("Service", namespace, name))
    scheme: Optional[str] = None
    pass_host = True
    for key, value in (annotations_of(obj) if obj is not None else {}).items():
        if not str(key).startswith(PREFIX):
            continue
        option = str(key)[len(PREFIX):].lower()
        where = f"Service {namespace}/{name}: metadata.annotations.{key}"
        if option == "service.serversscheme" and str(value) in ("http", "https"):
            scheme = str(value)
        elif option == "service.passhostheader":
            pass_host = annotation_bool(str(value), where)
        else:
            raise ConfigError(f"{where}: not supported by gatekeeper (it reads service.serversscheme: http or "
                              "https, and service.passhostheader)")
    return scheme, pass_host
