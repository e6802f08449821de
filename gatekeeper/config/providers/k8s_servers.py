"""A Service port's servers, as Traefik's Kubernetes providers resolve them: Endpoints/EndpointSlices matched by
port name, ready endpoints first (terminating-but-serving ones when none is), ExternalName as one server.

Shared by the CRD provider (``kubernetes.py``: IngressRoute services) and the Ingress provider (``ingress.py``).
"""
from __future__ import annotations

from typing import List, Optional, Tuple, Union

from gatekeeper.config.model import ServerDef
from gatekeeper.config.providers.k8s_objects import Cluster, Endpoint, EndpointGroup, KubeService, ServicePort


def resolve_servers(cluster: Cluster, namespace: str, name: str, port: Union[int, str],
                    scheme: Optional[str]) -> Tuple[Tuple[ServerDef, ...], Optional[str]]:
    """Servers of a Service port, or none and the reason (the route then answers 503 and ``check`` says why)."""
    service = cluster.services.get((namespace, name))
    what = f"Kubernetes service {namespace}/{name}"
    if service is None:
        return (), f"{what} does not exist"
    if service.problem is not None:
        return (), f"{what} is in error: {service.problem}"
    service_port = find_port(service, port)
    if service_port is None:
        return (), f"{what} has no port {port if isinstance(port, int) else repr(port)}"
    scheme = scheme or default_scheme(service_port)
    if service.external_name is not None:
        return (ServerDef(f"{scheme}://{host_port(service.external_name, service_port.port)}"),), None
    groups = cluster.endpoints.get((namespace, name), [])
    candidates = [(e, p) for g in groups for e, p in group_endpoints(g, service_port)]
    chosen = [c for c in candidates if c[0].ready] or [c for c in candidates if c[0].serving]
    urls = dict.fromkeys(f"{scheme}://{host_port(e.address, p)}" for e, p in chosen)
    if urls:
        return tuple(ServerDef(url) for url in urls), None
    return (), no_endpoints_reason(what, service_port, groups, candidates)


def find_port(service: KubeService, port: Union[int, str]) -> Optional[ServicePort]:
    """The Service port a route names, by number or by name; an ExternalName Service takes any number."""
    for candidate in service.ports:
        if (candidate.port == port) if isinstance(port, int) else (candidate.name == port):
            return candidate
    if service.external_name is not None and isinstance(port, int):
        return ServicePort("", port, None)
    return None


def default_scheme(port: ServicePort) -> str:
    """Traefik's default: https for port 443 or a port named ``https...``, else http."""
    return "https" if port.port == 443 or port.name.startswith("https") else "http"


def group_endpoints(group: EndpointGroup, service_port: ServicePort) -> List[Tuple[Endpoint, int]]:
    """The endpoints of a group for one Service port: the group's port of the same name, as Kubernetes names
    them (a port given without a number falls back to the Service's numeric targetPort, then its port)."""
    fallback = service_port.target_port if isinstance(service_port.target_port, int) else service_port.port
    for port_name, number in group.ports:
        if port_name == service_port.name:
            return [(e, fallback if number is None else number) for e in group.endpoints]
    return []


def no_endpoints_reason(what: str, port: ServicePort, groups: List[EndpointGroup],
                        candidates: List[Tuple[Endpoint, int]]) -> str:
    reason = f"{what} has no ready endpoints for port {port.port}"
    if groups and not candidates:
        names = sorted({n or "(unnamed)" for g in groups for n, _ in g.ports})
        wanted = f'named "{port.name}"' if port.name else "without a name"
        reason += (f" (endpoint ports are matched by the Service port's name: none {wanted} among "
                   f"{', '.join(names) or 'no ports'})")
    elif not groups:
        reason += " (no Endpoints or EndpointSlice for it)"
    return reason


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
