"""Frozen definitions of routers, middlewares and services, as read from manifests.

Both manifest shapes (Traefik file provider, Kubernetes) become these same objects; ``compile.py`` turns them
into the runtime configuration. Each object knows where it came from so every message can say so.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Tuple

from gatekeeper.options import line_in
from gatekeeper.proxy.health import HealthCheckDef, PassiveHealthDef
from gatekeeper.proxy.sticky import StickyDef

__all__ = ["Definitions", "HealthCheckDef", "MiddlewareDef", "PassiveHealthDef", "RouterDef", "ServerDef",
           "ServiceDef", "Source", "StickyDef", "TransportDef", "qualify"]


@dataclass(frozen=True)
class Source:
    """Where an object was defined: file relative to conf.d, line, provider (``file`` or ``kubernetescrd``)."""

    file: str
    line: int = 0
    provider: str = "file"

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


# The priority of a router in error whose own priority could not be read: above every other, so what its
# rule matches answers 503 rather than reaching a router it was meant to win against (fail closed).
FAIL_CLOSED_PRIORITY = 2 ** 63 - 1


def qualify(name: str, provider: str) -> str:
    """``name`` -> ``name@provider`` unless already qualified (Traefik's naming)."""
    return name if "@" in name else f"{name}@{provider}"


@dataclass(frozen=True)
class RouterDef:
    name: str                       # qualified: api@file, apps-my-app-...@kubernetescrd
    rule: str
    service: str                    # qualified reference
    middlewares: Tuple[str, ...]    # qualified references, in order
    entry_points: Tuple[str, ...]
    priority: int                   # as configured; 0 means "length of the rule"
    source: Source
    # A router whose rule could be read but another field not: it answers 503 for what its rule matches
    # (unless a last good version serves), so a typo never lets a request fall through to another router.
    error: Optional[str] = None
    key: str = ""                   # identity across reloads when the name derives from content (see identity)
    # the line of each field as written, when the provider knows it (the manifest's own map, not copied)
    lines: Mapping[Any, int] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def effective_priority(self) -> int:
        return self.priority or len(self.rule)

    def line_of(self, field_name: str) -> int:
        """The line of a field (``middlewares``) for a message about it, else the router's own line."""
        return line_in(self.lines, field_name) or self.source.line

    @property
    def identity(self) -> str:
        """What the last good version is kept by: ``key`` when set (an IngressRoute route: object and
        position), else the name. A Kubernetes route's name changes with its match, its position does not."""
        return self.key or self.name


@dataclass(frozen=True)
class MiddlewareDef:
    name: str
    kind: str                       # "plugin.jwt", "stripPrefix", "addPrefix", "headers", "chain"
    options: Mapping[str, Any]
    source: Source

    @property
    def identity(self) -> str:
        return self.name


@dataclass(frozen=True)
class ServerDef:
    url: str
    weight: int = 1


@dataclass(frozen=True)
class TransportDef:
    """An ``http.serversTransports`` entry: TLS towards HTTPS servers, idle pool size and timeouts (seconds;
    0 keeps the gateway's own setting)."""

    name: str
    source: Source
    server_name: str = ""
    insecure_skip_verify: bool = False
    root_cas: Tuple[str, ...] = ()
    certificates: Tuple[Tuple[str, str], ...] = ()
    max_idle_conns_per_host: int = 0
    dial_timeout: float = 0.0
    response_header_timeout: float = 0.0
    idle_conn_timeout: float = 0.0


@dataclass(frozen=True)
class ServiceDef:
    name: str
    kind: str                                   # "loadBalancer", "weighted", "failover" or "mirroring"
    source: Source
    servers: Tuple[ServerDef, ...] = ()
    pass_host_header: bool = True
    children: Tuple[Tuple[str, int], ...] = ()  # weighted: (qualified service name, weight);
                                                # failover: ((service, 1), (fallback, 1))
    empty_reason: Optional[str] = None          # why a resolved service has no servers (Kubernetes)
    key: str = ""                               # as RouterDef.key: a route's own service shares its key
    health_check: Optional[HealthCheckDef] = None       # loadBalancer: active checks
    passive_health: Optional[PassiveHealthDef] = None   # loadBalancer: passiveHealthCheck
    sticky: Optional[StickyDef] = None                  # loadBalancer, weighted
    reports_health: bool = False                # weighted, failover: ``healthCheck: {}`` (skip members down)
    mirrors: Tuple[Tuple[str, int], ...] = ()   # mirroring: (qualified service name, percent); main in children
    mirror_body: bool = True                    # mirroring: copy the body too
    max_body_size: int = -1                     # mirroring: a larger body is not mirrored (-1: no own limit)
    servers_transport: str = ""                 # loadBalancer: a serversTransport's qualified name
    transport: Optional["TransportDef"] = None  # ... resolved by compile (so a changed transport rebuilds)
    transport_error: str = ""                   # ... or why it could not be (missing, in error)

    @property
    def identity(self) -> str:
        return self.key or self.name


@dataclass(frozen=True)
class Definitions:
    """Everything the manifests define, before compilation; duplicates already resolved."""

    routers: Mapping[str, RouterDef] = field(default_factory=dict)
    middlewares: Mapping[str, MiddlewareDef] = field(default_factory=dict)
    services: Mapping[str, ServiceDef] = field(default_factory=dict)
