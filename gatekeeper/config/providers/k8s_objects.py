"""Kubernetes core objects as the CRD provider looks them up: Secrets, Services, Endpoints, EndpointSlices.

``index_objects(docs, out)`` is the first pass of ``kubernetes.read_documents``: every recognised manifest
indexed by kind, namespace and name (the first in sorted file order wins), Secret keys decoded and Service
ports and endpoints read, so the second pass (Middlewares, IngressRoutes) can resolve a ``urn:k8s:secret:``
reference or a route's Service port to its endpoints.
"""
from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

from gatekeeper.config.manifests import Document
from gatekeeper.config.providers.collector import Collector
from gatekeeper.errors import ConfigError
from gatekeeper.options import (
    line_of,
    type_name,
    want_bool,
    want_int,
    want_list,
    want_str,
    want_str_list,
)

TRAEFIK_API_VERSIONS = ("traefik.io/v1alpha1", "traefik.containo.us/v1alpha1")
KINDS = {
    **{(v, "Middleware"): "Middleware" for v in TRAEFIK_API_VERSIONS},
    **{(v, "IngressRoute"): "IngressRoute" for v in TRAEFIK_API_VERSIONS},
    ("v1", "Secret"): "Secret",
    ("v1", "Service"): "Service",
    ("v1", "Endpoints"): "Endpoints",
    ("discovery.k8s.io/v1", "EndpointSlice"): "EndpointSlice",
    ("networking.k8s.io/v1", "Ingress"): "Ingress",
    ("networking.k8s.io/v1", "IngressClass"): "IngressClass",
}
# kinds of Traefik's CRD group gatekeeper does not serve: routing intent, so reported rather than skipped
UNSUPPORTED_TRAEFIK_KINDS = ("IngressRouteTCP", "IngressRouteUDP", "MiddlewareTCP", "TraefikService", "TLSOption",
                             "TLSStore", "ServersTransport", "ServersTransportTCP")
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
URN_PREFIX = "urn:k8s:secret:"
# urn:k8s:secret:NAME:KEY with NAME a DNS subdomain and KEY a Secret data key, as Kubernetes allows them
URN = re.compile(r"urn:k8s:secret:([a-z0-9](?:[-a-z0-9.]*[a-z0-9])?):([-._a-zA-Z0-9]+)")


# --- the objects, indexed ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class KubeOptions:
    """The Kubernetes providers' options: Traefik's ``allowCrossNamespace`` (default false: a reference to a
    Middleware or Service in another namespace is an error) and the Ingress provider's ``ingressClass``.

    >>> KubeOptions()
    KubeOptions(allow_cross_namespace=False, ingress_class='')
    """

    allow_cross_namespace: bool = False
    ingress_class: str = ""


@dataclass(frozen=True)
class KubeObject:
    """One recognised manifest: its kind, namespace, name and the document it came from."""

    kind: str
    namespace: str
    name: str
    doc: Document

    @property
    def body(self) -> Any:
        return self.doc.data

    @property
    def line(self) -> int:
        return line_of(self.doc.data) or self.doc.line

    @property
    def ref(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"

    def located(self, err: ConfigError) -> ConfigError:
        return err.located(file=self.doc.file, line=self.line, obj=self.ref)


@dataclass(frozen=True)
class ServicePort:
    name: str
    port: int
    target_port: Union[int, str, None]


@dataclass(frozen=True)
class KubeService:
    namespace: str
    name: str
    ports: Tuple[ServicePort, ...] = ()
    external_name: Optional[str] = None     # set for type ExternalName
    problem: Optional[str] = None           # the manifest could not be read

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Endpoint:
    address: str
    ready: bool        # ready and not terminating: receives traffic
    serving: bool      # still able to serve (may be terminating): used only when nothing is ready


@dataclass(frozen=True)
class EndpointGroup:
    """Addresses sharing one set of ports: an Endpoints subset or an EndpointSlice. Ports by name."""

    ports: Tuple[Tuple[str, Optional[int]], ...]
    endpoints: Tuple[Endpoint, ...]


@dataclass
class Cluster:
    """Every recognised object of one snapshot, looked up the way the CRD provider looks them up."""

    objects: Dict[Tuple[str, str, str], KubeObject] = field(default_factory=dict)
    secrets: Dict[Tuple[str, str], Dict[str, Union[str, ConfigError]]] = field(default_factory=dict)
    services: Dict[Tuple[str, str], KubeService] = field(default_factory=dict)
    endpoints: Dict[Tuple[str, str], List[EndpointGroup]] = field(default_factory=dict)
    options: KubeOptions = field(default_factory=KubeOptions)
    conflicts: Dict[Tuple[str, str, str], str] = field(default_factory=dict)  # (kind, ns, name): defined twice

    def of_kind(self, kind: str) -> List[KubeObject]:
        return [obj for (k, _, _), obj in self.objects.items() if k == kind]


def index_objects(docs: List[Document], out: Collector, options: Optional[KubeOptions] = None) -> Cluster:
    cluster = Cluster(options=options or KubeOptions())
    readers = {"Secret": index_secret, "Service": index_service, "Endpoints": index_endpoints,
               "EndpointSlice": index_endpoint_slice}
    for doc in docs:
        kind = KINDS.get((str(doc.data.get("apiVersion")), str(doc.data.get("kind"))))
        if kind is None:
            refuse_unread(doc, out)
            continue
        try:
            namespace, name = metadata_names(doc.data)
        except ConfigError as err:
            out.broken(err.located(file=doc.file, line=line_of(doc.data) or doc.line, obj=kind))
            continue
        obj = KubeObject(kind, namespace, name, doc)
        first = cluster.objects.setdefault((kind, namespace, name), obj)
        if first is not obj:
            duplicate(first, obj, cluster, out)
            continue
        if kind in readers:
            try:
                readers[kind](obj, cluster)
            except ConfigError as err:
                out.error(obj.located(err))
    mark_conflicted_services(cluster)
    return cluster


def duplicate(first: KubeObject, again: KubeObject, cluster: Cluster, out: Collector) -> None:
    """An object defined twice: the same way, reported; differently, neither version is used (``conflicts``), so
    a stray copy sorting first cannot replace a Middleware, a Secret's signing key or a Service's endpoints."""
    if first.body == again.body:
        out.error(again.located(ConfigError(f"defined again, the same way (the definition in {first.doc.file} "
                                            "serves)")))
        return
    reason = (f"defined twice, differently ({first.doc.file} and {again.doc.file}): neither definition is used "
              "until one is renamed or removed")
    out.error(again.located(ConfigError(reason)))
    cluster.conflicts.setdefault((first.kind, first.namespace, first.name), reason)
    if first.kind == "EndpointSlice":  # the Services both versions name lose their endpoints
        for service in filter(None, map(slice_service, (first, again))):
            cluster.conflicts.setdefault(("Endpoints", first.namespace, service), reason)


def mark_conflicted_services(cluster: Cluster) -> None:
    """A Service, or its Endpoints, defined twice differently: the Service is in error (503, or last good)."""
    for (kind, namespace, name), reason in cluster.conflicts.items():
        if kind in ("Service", "Endpoints"):
            cluster.services[(namespace, name)] = KubeService(namespace, name, problem=reason)


def conflict(cluster: Cluster, kind: str, namespace: str, name: str) -> Optional[ConfigError]:
    """The error of an object defined twice differently (see :func:`duplicate`), or None."""
    reason = cluster.conflicts.get((kind, namespace, name))
    return ConfigError(reason) if reason is not None else None


def refuse_unread(doc: Document, out: Collector) -> None:
    """A kind gatekeeper does not read: routing intent it cannot serve is an error, anything else is skipped.

    A conf.d may hold a cluster's other manifests (Deployments, ConfigMaps, another controller's objects), which
    Traefik ignores too; but a Traefik kind or an Ingress of a removed API version would route nothing here.
    """
    api, kind = str(doc.data.get("apiVersion")), str(doc.data.get("kind"))
    if api in TRAEFIK_API_VERSIONS and kind in UNSUPPORTED_TRAEFIK_KINDS:
        reason = f"{api} {kind}: not supported by gatekeeper (it reads Middleware and IngressRoute: HTTP routes only)"
    elif kind == "Ingress" and api.startswith(("networking.k8s.io/", "extensions/")):
        reason = f"{api} Ingress: not supported (removed in Kubernetes 1.22): write networking.k8s.io/v1"
    else:
        return
    out.error(ConfigError(reason, file=doc.file, line=line_of(doc.data) or doc.line))


def metadata_names(data: Any) -> Tuple[str, str]:
    """(namespace, name) of a manifest; the namespace defaults to ``default`` as kubectl's does."""
    meta = data.get("metadata")
    if not isinstance(meta, dict):
        raise ConfigError("metadata: expected a mapping with a name")
    name = want_str(meta.get("name"), "metadata.name")
    namespace = meta.get("namespace")
    return (want_str(namespace, "metadata.namespace") if namespace else "default"), name


# --- Secret ----------------------------------------------------------------------------------------------

def index_secret(obj: KubeObject, cluster: Cluster) -> None:
    """Keys of a Secret: base64 ``data``, then ``stringData`` over it (as the API server merges them)."""
    values: Dict[str, Union[str, ConfigError]] = {}
    cluster.secrets[(obj.namespace, obj.name)] = values
    data = mapping_field(obj.body, "data")
    for key, encoded in data.items():
        values[str(key)] = decode_secret_value(obj, str(key), encoded, line_of(data, key))
    string_data = mapping_field(obj.body, "stringData")
    for key, text in string_data.items():
        values[str(key)] = want_str(text, f"stringData.{key}", empty_ok=True) if text is not None else ""
    bad = [v for v in values.values() if isinstance(v, ConfigError)]
    if bad:
        raise bad[0]


def decode_secret_value(obj: KubeObject, key: str, encoded: Any, line: Optional[int]) -> Union[str, ConfigError]:
    try:
        raw = base64.b64decode(want_str(encoded, f"data.{key}", empty_ok=True), validate=True)
        return raw.decode("utf-8")
    except (binascii.Error, ValueError) as exc:
        problem = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else "not valid base64"
        return ConfigError(f"data.{key}: {problem}", file=obj.doc.file, line=line, obj=obj.ref)
    except ConfigError as err:
        return err.located(file=obj.doc.file, line=line, obj=obj.ref)


def mapping_field(body: Any, key: str) -> Dict[Any, Any]:
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping, got {type_name(value)}", line=line_of(body, key))
    return value


def resolve_secrets(value: Any, namespace: str, cluster: Cluster, path: str, line: Optional[int]) -> Any:
    """``value`` with every string equal to ``urn:k8s:secret:NAME:KEY`` replaced by that Secret's key."""
    if isinstance(value, str):
        return secret_value(value, namespace, cluster, path, line) if value.startswith(URN_PREFIX) else value
    if isinstance(value, dict):
        return {k: resolve_secrets(v, namespace, cluster, f"{path}.{k}", line_of(value, k) or line)
                for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_secrets(v, namespace, cluster, f"{path}[{i}]", line) for i, v in enumerate(value)]
    return value


def secret_values(cluster: Cluster, namespace: str, name: str,
                  path: str) -> Optional[Dict[str, Union[str, ConfigError]]]:
    """A Secret's keys, None when it does not exist; ConfigError when it is defined twice differently."""
    problem = conflict(cluster, "Secret", namespace, name)
    if problem is not None:
        raise ConfigError(f"{path}: Secret {namespace}/{name} {problem.reason}")
    return cluster.secrets.get((namespace, name))


def secret_value(urn: str, namespace: str, cluster: Cluster, path: str, line: Optional[int]) -> str:
    match = URN.fullmatch(urn)
    if match is None:
        raise ConfigError(f'{path}: malformed Secret reference "{urn}" (expected urn:k8s:secret:NAME:KEY)',
                          line=line)
    name, key = match.groups()
    values = secret_values(cluster, namespace, name, path)
    if values is None:
        raise ConfigError(f"{path}: Secret {namespace}/{name} does not exist (wanted its key \"{key}\")", line=line)
    value = values.get(key)
    if value is None:
        raise ConfigError(f"{path}: Secret {namespace}/{name} has no key \"{key}\"", line=line)
    if isinstance(value, ConfigError):
        raise ConfigError(f"{path}: key \"{key}\" of Secret {namespace}/{name}: {value.reason}", line=line)
    return value


# --- Service, Endpoints, EndpointSlice ------------------------------------------------------------------

def index_service(obj: KubeObject, cluster: Cluster) -> None:
    key = (obj.namespace, obj.name)
    try:
        cluster.services[key] = read_service(obj)
    except ConfigError as err:
        cluster.services[key] = KubeService(obj.namespace, obj.name, problem=err.reason)
        raise


def read_service(obj: KubeObject) -> KubeService:
    spec = mapping_field(obj.body, "spec")
    ports = []
    for i, entry in enumerate(want_list(spec.get("ports") or [], "spec.ports")):
        where = f"spec.ports[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type_name(entry)}", line=line_of(spec, "ports"))
        try:
            ports.append(ServicePort(want_str(entry.get("name") or "", f"{where}.name", empty_ok=True),
                                     want_int(entry.get("port"), f"{where}.port", minimum=1),
                                     target_port(entry.get("targetPort"), f"{where}.targetPort")))
        except ConfigError as err:
            raise err.located(line=line_of(entry)) from None
    external = None
    if spec.get("type") == "ExternalName":
        external = want_str(spec.get("externalName"), "spec.externalName")
    return KubeService(obj.namespace, obj.name, tuple(ports), external)


def target_port(value: Any, where: str) -> Union[int, str, None]:
    """A targetPort: a number, or the name of a container port (which only pods could resolve)."""
    if value is None or (isinstance(value, str) and not value.isdigit()):
        return value
    return want_int(value, where, minimum=1)


def index_endpoints(obj: KubeObject, cluster: Cluster) -> None:
    """Endpoints (v1): each subset's ``addresses`` are ready, its ``notReadyAddresses`` are not."""
    groups = []
    for i, subset in enumerate(want_list(obj.body.get("subsets") or [], "subsets")):
        where = f"subsets[{i}]"
        if not isinstance(subset, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type_name(subset)}")
        ready = [Endpoint(address_ip(a, f"{where}.addresses"), True, True)
                 for a in want_list(subset.get("addresses") or [], f"{where}.addresses")]
        not_ready = [Endpoint(address_ip(a, f"{where}.notReadyAddresses"), False, False)
                     for a in want_list(subset.get("notReadyAddresses") or [], f"{where}.notReadyAddresses")]
        groups.append(EndpointGroup(read_endpoint_ports(subset.get("ports"), f"{where}.ports"),
                                    tuple(ready + not_ready)))
    cluster.endpoints.setdefault((obj.namespace, obj.name), []).extend(groups)


def address_ip(entry: Any, where: str) -> str:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a mapping with ip, got {type_name(entry)}")
    return want_str(entry.get("ip"), f"{where}.ip")


def index_endpoint_slice(obj: KubeObject, cluster: Cluster) -> None:
    """EndpointSlice (discovery.k8s.io/v1): belongs to the Service named by its ``kubernetes.io/service-name``."""
    service = slice_service(obj)
    if not service:
        raise ConfigError(f"metadata.labels: {SERVICE_NAME_LABEL} is required (it names the Service)")
    endpoints = []
    for i, entry in enumerate(want_list(obj.body.get("endpoints") or [], "endpoints")):
        where = f"endpoints[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type_name(entry)}")
        ready, serving = endpoint_conditions(entry.get("conditions"), f"{where}.conditions")
        for address in want_str_list(entry.get("addresses") or [], f"{where}.addresses"):
            endpoints.append(Endpoint(address, ready, serving))
    group = EndpointGroup(read_endpoint_ports(obj.body.get("ports"), "ports"), tuple(endpoints))
    cluster.endpoints.setdefault((obj.namespace, service), []).append(group)


def slice_service(obj: KubeObject) -> Optional[str]:
    """The Service an EndpointSlice belongs to, by its ``kubernetes.io/service-name`` label; None without."""
    labels = (obj.body.get("metadata") or {}).get("labels") or {}
    service = labels.get(SERVICE_NAME_LABEL) if isinstance(labels, dict) else None
    return str(service) if service else None


def endpoint_conditions(conditions: Any, where: str) -> Tuple[bool, bool]:
    """(ready, serving) as Kubernetes defines them: ready unset means ready, terminating unset means not,
    serving unset defers to ready; a terminating endpoint is never ready."""
    conditions = conditions or {}
    if not isinstance(conditions, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type_name(conditions)}")
    ready = want_bool(conditions.get("ready", True), f"{where}.ready")
    terminating = want_bool(conditions.get("terminating", False), f"{where}.terminating")
    serving = want_bool(conditions["serving"], f"{where}.serving") if "serving" in conditions else ready
    return ready and not terminating, serving


def read_endpoint_ports(ports: Any, where: str) -> Tuple[Tuple[str, Optional[int]], ...]:
    found = []
    for i, entry in enumerate(want_list(ports or [], where)):
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}[{i}]: expected a mapping, got {type_name(entry)}")
        number = entry.get("port")
        found.append((want_str(entry.get("name") or "", f"{where}[{i}].name", empty_ok=True),
                      want_int(number, f"{where}[{i}].port", minimum=1) if number is not None else None))
    return tuple(found)
