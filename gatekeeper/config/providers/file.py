"""Traefik's file-provider dynamic configuration (``http: routers / middlewares / services``)."""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

from gatekeeper.config.manifests import Document
from gatekeeper.config.model import (
    FAIL_CLOSED_PRIORITY,
    MiddlewareDef,
    RouterDef,
    ServerDef,
    ServiceDef,
    Source,
    qualify,
)
from gatekeeper.config.providers.collector import Collector
from gatekeeper.config.providers.fields import expand_env
from gatekeeper.config.providers.service_options import (
    read_health_check,
    read_health_propagation,
    read_passive_health,
    read_sticky,
)
from gatekeeper.errors import ConfigError
from gatekeeper.options import (
    key_lines,
    line_of,
    pick,
    want_bool,
    want_int,
    want_list,
    want_str,
    want_str_list,
)

PROVIDER = "file"
ROUTER_FIELDS = ("rule", "entryPoints", "priority", "middlewares", "service", "tls", "ruleSyntax")
# Every Traefik v3 HTTP middleware (config/middlewares.py builds or refuses each by name), and plugins
MIDDLEWARE_KINDS = ("plugin", "addPrefix", "basicAuth", "buffering", "chain", "circuitBreaker", "compress",
                    "contentType", "digestAuth", "encodedCharacters", "errors", "forwardAuth", "grpcWeb", "headers",
                    "inFlightReq", "ipAllowList", "ipWhiteList", "passTLSClientCert", "rateLimit", "redirectRegex",
                    "redirectScheme", "replacePath", "replacePathRegex", "retry", "stripPrefix", "stripPrefixRegex")
PLUGINS = ("jwt", "distributedRateLimit")
SERVICE_KINDS = ("loadBalancer", "weighted", "failover", "mirroring")
UNSUPPORTED_SERVICE_KINDS: Tuple[str, ...] = ()


def read_document(doc: Document, out: Collector) -> None:
    """Add the routers, middlewares and services of one ``http:`` document to ``out``."""
    try:
        top = pick(doc.data, ("http", "tcp", "udp", "tls"), "top level")
    except ConfigError as err:
        out.broken(err.located(file=doc.file, line=doc.line))
        return
    for ignored in ("tcp", "udp", "tls"):
        if top.get(ignored):
            out.error(ConfigError(f"{ignored}: not supported (only http: is read); ignored",
                                  file=doc.file, line=line_of(doc.data, ignored)))
    try:
        http = pick(top.get("http"), ("routers", "middlewares", "services", "serversTransports"), "http")
    except ConfigError as err:
        out.broken(err.located(file=doc.file, line=doc.line))
        return
    readers: Dict[str, Callable[[str, Any, Source], Any]] = {
        "router": read_router, "middleware": read_middleware, "service": read_service}
    for kind, reader in readers.items():
        section = http.get(kind + "s")
        if section is None:
            continue
        if not isinstance(section, dict):
            out.broken(ConfigError(f"http.{kind}s: expected a mapping of names", file=doc.file,
                                  line=line_of(http, kind + "s")))
            continue
        for name, body in section.items():
            source = Source(doc.file, line_of(section, name) or doc.line, PROVIDER)
            qualified = qualify(str(name), PROVIDER)
            try:
                out.add(kind, reader(qualified, expand_env(body, f"http.{kind}s.{name}"), source))
            except ConfigError as err:
                err = err.located(file=doc.file, line=source.line, obj=f'{kind} "{qualified}"')
                out.fail(kind, qualified, err)
                salvaged = salvage_router(qualified, body, source, err.reason) if kind == "router" else None
                if salvaged is not None:
                    out.add("router", salvaged)


def read_router(name: str, body: Any, source: Source) -> RouterDef:
    fields = pick(body, ROUTER_FIELDS, "router")
    if "rule" not in fields:
        raise ConfigError("rule: required")
    if "service" not in fields:
        raise ConfigError("service: required")
    return RouterDef(
        name=name,
        rule=want_str(fields["rule"], "rule"),
        service=qualify(want_str(fields["service"], "service"), PROVIDER),
        middlewares=tuple(qualify(m, PROVIDER) for m in want_str_list(fields.get("middlewares", []), "middlewares")),
        entry_points=tuple(want_str_list(fields.get("entryPoints", []), "entryPoints")),
        priority=want_int(fields.get("priority", 0), "priority", minimum=0),
        source=source,
        lines=key_lines(body),
    )


def salvage_router(name: str, body: Any, source: Source, reason: str) -> Optional[RouterDef]:
    """A router in error whose ``rule`` can still be read: kept to answer 503 for what it matches.

    Without it a typo (``middleware: [jwt]``) would drop a protected router and let its requests fall
    through to a lower-priority one (a catch-all) without a token. Its entry points and priority are kept
    when readable; otherwise it serves on every entry point at the highest priority (fail closed).
    """
    if not isinstance(body, dict):
        return None
    fields = {str(k).lower(): v for k, v in body.items()}
    try:
        rule = want_str(expand_env(fields.get("rule"), "rule"), "rule")
    except ConfigError:
        return None
    try:
        entry_points = tuple(want_str_list(expand_env(fields.get("entrypoints", []), "entryPoints"), "entryPoints"))
    except ConfigError:
        entry_points = ()
    try:
        priority = want_int(expand_env(fields.get("priority", 0), "priority"), "priority", minimum=0)
    except ConfigError:
        priority = FAIL_CLOSED_PRIORITY
    return RouterDef(name=name, rule=rule, service="", middlewares=(), entry_points=entry_points,
                     priority=priority, source=source, error=reason)


def read_middleware(name: str, body: Any, source: Source) -> MiddlewareDef:
    fields = pick(body, MIDDLEWARE_KINDS, "middleware")
    if len(fields) != 1:
        raise ConfigError(f"expected exactly one middleware type ({', '.join(MIDDLEWARE_KINDS)}), "
                          f"got {len(fields)}")
    kind, options = next(iter(fields.items()))
    if kind == "plugin":
        plugins = pick(options, PLUGINS, "plugin")
        if len(plugins) != 1:
            raise ConfigError(f"plugin: expected exactly one of {', '.join(PLUGINS)}")
        (plugin, options), = plugins.items()
        kind = f"plugin.{plugin}"
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise ConfigError(f"{kind}: expected a mapping of options")
    return MiddlewareDef(name, kind, options, source)


def read_service(name: str, body: Any, source: Source) -> ServiceDef:
    fields = pick(body, SERVICE_KINDS + UNSUPPORTED_SERVICE_KINDS, "service")
    if len(fields) != 1:
        raise ConfigError(f"expected exactly one service type ({', '.join(SERVICE_KINDS)})")
    kind, spec = next(iter(fields.items()))
    if kind in UNSUPPORTED_SERVICE_KINDS:
        raise ConfigError(f"{kind}: not supported by gatekeeper")
    if kind == "weighted":
        return read_weighted(name, spec, source)
    if kind == "failover":
        return read_failover(name, spec, source)
    if kind == "mirroring":
        return read_mirroring(name, spec, source)
    return read_load_balancer(name, spec, source)


def read_load_balancer(name: str, spec: Any, source: Source) -> ServiceDef:
    fields = pick(spec, ("servers", "passHostHeader", "healthCheck", "passiveHealthCheck", "sticky",
                         "responseForwarding", "serversTransport"), "loadBalancer")
    servers = []
    for i, server in enumerate(want_list(fields.get("servers", []), "loadBalancer.servers")):
        where = f"loadBalancer.servers[{i}]"
        entry = pick(server, ("url", "weight", "preservePath"), where)
        if "url" not in entry:
            raise ConfigError(f"{where}.url: required")
        weight = want_int(entry.get("weight", 1), f"{where}.weight", minimum=0)
        servers.append(ServerDef(want_str(entry["url"], f"{where}.url"), weight))
    return ServiceDef(name=name, kind="loadBalancer", source=source, servers=tuple(servers),
                      pass_host_header=want_bool(fields.get("passHostHeader", True), "loadBalancer.passHostHeader"),
                      health_check=read_health_check(fields["healthCheck"], "loadBalancer.healthCheck")
                      if "healthCheck" in fields else None,
                      passive_health=read_passive_health(fields["passiveHealthCheck"],
                                                         "loadBalancer.passiveHealthCheck")
                      if "passiveHealthCheck" in fields else None,
                      sticky=read_sticky(fields["sticky"], "loadBalancer.sticky") if "sticky" in fields else None,
                      servers_transport=qualify(want_str(fields["serversTransport"], "loadBalancer.serversTransport"),
                                                PROVIDER) if "serversTransport" in fields else "")


def read_weighted(name: str, spec: Any, source: Source) -> ServiceDef:
    fields = pick(spec, ("services", "sticky", "healthCheck"), "weighted")
    children = []
    for i, child in enumerate(want_list(fields.get("services", []), "weighted.services")):
        where = f"weighted.services[{i}]"
        entry = pick(child, ("name", "weight"), where)
        if "name" not in entry:
            raise ConfigError(f"{where}.name: required")
        children.append((qualify(want_str(entry["name"], f"{where}.name"), PROVIDER),
                         want_int(entry.get("weight", 1), f"{where}.weight", minimum=0)))
    if not children:
        raise ConfigError("weighted.services: at least one service is required")
    return ServiceDef(name=name, kind="weighted", source=source, children=tuple(children),
                      sticky=read_sticky(fields["sticky"], "weighted.sticky") if "sticky" in fields else None,
                      reports_health="healthCheck" in fields
                      and read_health_propagation(fields["healthCheck"], "weighted.healthCheck"))


def read_failover(name: str, spec: Any, source: Source) -> ServiceDef:
    """``failover``: ``service`` while it is up (it needs a health check), else ``fallback``."""
    fields = pick(spec, ("service", "fallback", "healthCheck"), "failover")
    for required in ("service", "fallback"):
        if required not in fields:
            raise ConfigError(f"failover.{required}: required")
    main = qualify(want_str(fields["service"], "failover.service"), PROVIDER)
    fallback = qualify(want_str(fields["fallback"], "failover.fallback"), PROVIDER)
    return ServiceDef(name=name, kind="failover", source=source, children=((main, 1), (fallback, 1)),
                      reports_health="healthCheck" in fields
                      and read_health_propagation(fields["healthCheck"], "failover.healthCheck"))


def read_mirroring(name: str, spec: Any, source: Source) -> ServiceDef:
    """``mirroring``: ``service`` answers; each of ``mirrors`` (``name``, ``percent`` 0-100) gets copies."""
    fields = pick(spec, ("service", "mirrors", "mirrorBody", "maxBodySize", "healthCheck"), "mirroring")
    if "healthCheck" in fields:
        raise ConfigError("mirroring.healthCheck: not supported (health is not propagated through mirroring)")
    if "service" not in fields:
        raise ConfigError("mirroring.service: required")
    mirrors = []
    for i, mirror in enumerate(want_list(fields.get("mirrors") or [], "mirroring.mirrors")):
        where = f"mirroring.mirrors[{i}]"
        entry = pick(mirror, ("name", "percent"), where)
        if "name" not in entry:
            raise ConfigError(f"{where}.name: required")
        percent = want_int(entry.get("percent", 0), f"{where}.percent", minimum=0)
        if percent > 100:
            raise ConfigError(f"{where}.percent: must be from 0 to 100, not {percent}")
        mirrors.append((qualify(want_str(entry["name"], f"{where}.name"), PROVIDER), percent))
    max_body_size = want_int(fields.get("maxBodySize", -1), "mirroring.maxBodySize", minimum=-1)
    return ServiceDef(name=name, kind="mirroring", source=source,
                      children=((qualify(want_str(fields["service"], "mirroring.service"), PROVIDER), 1),),
                      mirrors=tuple(mirrors), mirror_body=want_bool(fields.get("mirrorBody", True),
                                                                    "mirroring.mirrorBody"),
                      max_body_size=max_body_size)
