"""Documents -> one immutable :class:`Config`, collecting every error instead of stopping at the first.

Nothing that worked is lost: a file that no longer parses keeps its last good documents, an object that no
longer validates keeps its last good version, and a router whose middleware or service is missing or in error
answers 503 for what it matches instead of falling through to another router (fail closed). Built pieces whose
definition did not change (JWT key objects, upstream connection pools, compiled rules) are reused from the
previous configuration, so a reload costs what changed.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Dict, List, Mapping, Optional, Set, Tuple, Union

from gatekeeper.config import middlewares
from gatekeeper.config.manifests import FileResult, Snapshot
from gatekeeper.config.middlewares import Wrapper, compose
from gatekeeper.config.model import Definitions, MiddlewareDef, RouterDef, ServiceDef, Source
from gatekeeper.config.providers import collect
from gatekeeper.config.providers.transports import read_transports, transport_limits, with_transports
from gatekeeper.config.table import (
    BuiltMiddleware,
    BuiltService,
    CompiledRouter,
    Config,
    index_by_entrypoint,
    sorted_routers,
)
from gatekeeper.errors import ConfigError, ExpressionError
from gatekeeper.expr import RequestView, compile_rule
from gatekeeper.proxy.balancer import ProxyLimits, ServerSpec, make_failover, make_load_balancer, make_weighted
from gatekeeper.proxy.mirror import make_mirroring
from gatekeeper.wsgi import WSGIApp, error_response

__all__ = ["CompileOptions", "compile_config"]


@dataclass(frozen=True)
class CompileOptions:
    limits: ProxyLimits = field(default_factory=ProxyLimits)


def with_last_good_files(snapshot: Snapshot, previous: Optional[Config],
                         broken: Mapping[str, ConfigError] = {}) -> Snapshot:
    """Files that fail to read or parse, or hold a document of a broken shape (``broken``, by file), keep
    the documents they had in the previous configuration."""
    if previous is None:
        return snapshot
    before: Dict[str, FileResult] = {f.file: f for f in previous.snapshot.files}
    merged = []
    for result in snapshot.files:
        old = before.get(result.file)
        error = broken.get(result.file) if broken else result.error
        if error is not None and old is not None and old.documents:
            err = error.located(file=result.file)
            err = ConfigError(err.reason + " (serving the last good version of this file)",
                              file=err.file, line=err.line, obj=err.obj)
            merged.append(replace(old, error=err))
        else:
            merged.append(result)
    return replace(snapshot, files=tuple(merged))


class Rules:
    """Rule text -> compiled matcher, reusing the previous configuration's closures (a reload costs what
    changed); a rule that does not compile gives its ExpressionError."""

    def __init__(self, previous: Optional[Config]) -> None:
        self.known: Dict[str, "Callable[[RequestView], bool] | ExpressionError"] = (
            {r.definition.rule: r.matches for r in previous.routers} if previous else {})

    def get(self, rule: str) -> "Callable[[RequestView], bool] | ExpressionError":
        found = self.known.get(rule)
        if found is None:
            try:
                found = compile_rule(rule)
            except ExpressionError as err:
                found = err
            self.known[rule] = found
        return found


@dataclass
class LastGood:
    """Definitions after putting back the last good version of every object that failed this time.

    Objects are known by identity (``definition.identity``): the name, or for a Kubernetes route its
    IngressRoute and position, since its name changes with its match. A router in error, or whose rule no
    longer compiles, or that failed to read at all, serves its previous version (with the services it
    reaches that are gone from the new definitions); with no previous version a router in error whose rule
    compiles answers 503, and one without a usable rule is left out (it could match nothing).
    """

    routers: Dict[str, RouterDef]
    middlewares: Dict[str, MiddlewareDef]
    services: Dict[str, ServiceDef]
    stale: Set[Tuple[str, str]] = field(default_factory=set)
    errors: List[ConfigError] = field(default_factory=list)

    def definitions(self) -> Definitions:
        return Definitions(self.routers, self.middlewares, self.services)


def keep_last_good(defs: Definitions, failed: Mapping[Tuple[str, str], ConfigError], rules: Rules,
                   previous: Optional[Config]) -> LastGood:
    """Put back the last good version of each object that failed validation (see :class:`LastGood`)."""
    out = LastGood(dict(defs.routers), dict(defs.middlewares), dict(defs.services))
    old_routers = {r.definition.identity: r.definition for r in previous.routers
                   if r.definition.error is None} if previous else {}
    for kind, table in (("middleware", out.middlewares), ("service", out.services)):
        old = {b.definition.identity: b.definition for b in getattr(previous, kind + "s").values()} \
            if previous else {}
        for (failed_kind, identity), _ in failed.items():
            if failed_kind == kind and identity in old and old[identity].name not in table:
                table[old[identity].name] = old[identity]
                out.stale.add((kind, old[identity].name))
    present = {d.identity for d in out.routers.values()}
    for definition in list(out.routers.values()):
        problem = rules.get(definition.rule)
        if isinstance(problem, ExpressionError):
            out.errors.append(ConfigError(f"rule: {problem.render()}").located(
                file=definition.source.file, line=definition.source.line or None,
                obj=f'router "{definition.name}"'))
        if definition.error is not None or isinstance(problem, ExpressionError):
            restore_router(out, definition, old_routers, previous,
                           drop=isinstance(problem, ExpressionError))
    for (kind, identity), _ in failed.items():
        if kind == "router" and identity not in present and identity in old_routers:
            restore_router(out, None, old_routers, previous, drop=False, identity=identity)
    return out


def restore_router(out: LastGood, current: Optional[RouterDef], old_routers: Mapping[str, RouterDef],
                   previous: Optional[Config], *, drop: bool, identity: str = "") -> None:
    """Replace a failed router by its last good version, or drop it when it has none and cannot serve 503."""
    identity = current.identity if current is not None else identity
    old = old_routers.get(identity)
    if current is not None and (old is not None or drop):
        del out.routers[current.name]
    if old is None or old.name in out.routers:
        return
    out.routers[old.name] = old
    out.stale.add(("router", old.name))
    assert previous is not None
    restore_services(out, old.service, previous)


def restore_services(out: LastGood, name: str, previous: Config) -> None:
    """A restored router's service (and the services it is made of: members, failover, mirrors) when gone
    from the new definitions: a Kubernetes route's own service is named after its match, so it goes away with
    the match."""
    built = previous.services.get(name)
    if name in out.services or built is None:
        return
    out.services[name] = built.definition
    out.stale.add(("service", name))
    for child, _ in (*built.definition.children, *built.definition.mirrors):
        restore_services(out, child, previous)


class Builder:
    """Builds the runtime pieces of one configuration, reusing unchanged ones from the previous."""

    def __init__(self, defs: Definitions, previous: Optional[Config], options: CompileOptions,
                 stale: Set[Tuple[str, str]], *, root: str = "",
                 failed: Optional[Mapping[Tuple[str, str], ConfigError]] = None) -> None:
        self.root = root
        self.failed = failed or {}
        self.defs = defs
        self.previous = previous
        self.options = options
        self.stale = stale
        self.errors: List[ConfigError] = []
        self.services: Dict[str, BuiltService] = {}
        self.middlewares: Dict[str, BuiltMiddleware] = {}

    # -- services ---------------------------------------------------------------------------------
    def service(self, name: str, trail: Tuple[str, ...] = ()) -> Optional[BuiltService]:
        if name in self.services:
            return self.services[name]
        definition = self.defs.services.get(name)
        if definition is None:
            return None
        old = self.previous.services.get(name) if self.previous else None
        if old is not None and old.definition == definition and old.error is None \
                and definition.kind not in ("weighted", "mirroring", "failover"):
            built = old
        else:
            try:
                built = BuiltService(definition, self.build_service(definition, (*trail, name)),
                                     stale=("service", name) in self.stale)
            except ConfigError as err:
                self.report(err, definition.source, f'service "{name}"')
                built = BuiltService(definition, None, error=err.reason)
                if old is not None and old.app is not None and definition.kind == "loadBalancer" \
                        and definition.servers:
                    # a server URL in error (no scheme...): the last good version serves, as for every
                    # object; a service left with no servers is a state (no endpoints), not a mistake
                    built = BuiltService(old.definition, old.app, error=err.reason, stale=True)
        self.services[name] = built
        return built

    def build_service(self, definition: ServiceDef, trail: Tuple[str, ...]) -> WSGIApp:
        if definition.kind == "mirroring":
            return self.build_mirroring(definition, trail)
        if definition.kind == "loadBalancer":
            if not definition.servers:
                raise ConfigError(definition.empty_reason or "loadBalancer.servers: no server")
            specs = [ServerSpec(s.url, s.weight) for s in definition.servers]
            return make_load_balancer(specs, pass_host_header=definition.pass_host_header,
                                      limits=transport_limits(definition, self.options.limits), name=definition.name,
                                      health_check=definition.health_check, passive=definition.passive_health,
                                      sticky=definition.sticky)
        if definition.kind == "failover":
            return self.build_failover(definition, trail)
        children, names = [], []
        for child_name, weight in definition.children:
            if child_name in trail:
                raise ConfigError(f"weighted: service \"{child_name}\" refers back to itself")
            child = self.service(child_name, trail)
            if child is None:
                raise ConfigError(f"weighted: service \"{child_name}\" {self.missing('service', child_name)}")
            if child.app is None and child.definition.kind == "loadBalancer" and not child.definition.servers:
                continue  # no endpoints right now: the other members serve, as Traefik does
            if child.app is None:
                raise ConfigError(f"weighted: service \"{child_name}\" is in error")
            if definition.reports_health and not reports_health(child.definition):
                raise ConfigError(f"weighted.healthCheck: service \"{child_name}\" has no healthCheck, so whether "
                                  f"it is up cannot be known")
            children.append((child.app, weight))
            names.append(child_name)
        if not children:
            raise ConfigError("weighted: no member service has servers")
        return make_weighted(children, name=definition.name, sticky=definition.sticky,
                             skip_down=definition.reports_health, identities=names)

    def build_failover(self, definition: ServiceDef, trail: Tuple[str, ...]) -> WSGIApp:
        """``service`` while it is up, else ``fallback``: the main service must report its health (as in
        Traefik), and with ``failover.healthCheck`` the fallback too."""
        apps = []
        for role, (child_name, _) in zip(("service", "fallback"), definition.children):
            if child_name in trail:
                raise ConfigError(f'failover: {role} "{child_name}" refers back to itself')
            child = self.service(child_name, trail)
            if child is None:
                raise ConfigError(f'failover: {role} "{child_name}" {self.missing("service", child_name)}')
            if child.app is None:
                raise ConfigError(f'failover: {role} "{child_name}" is in error: {child.error}')
            if (role == "service" or definition.reports_health) and not reports_health(child.definition):
                raise ConfigError(f'failover: {role} "{child_name}" has no healthCheck, so whether it is up '
                                  f'cannot be known')
            apps.append(child.app)
        return make_failover(apps[0], apps[1])

    def build_mirroring(self, definition: ServiceDef, trail: Tuple[str, ...]) -> WSGIApp:
        """The main service answers; mirrors get copies. A mirror in error puts the service in error: a
        copy silently going nowhere would be a mirror accepted and ignored."""
        apps = []
        for role, (child_name, percent) in zip(("service", *("mirror",) * len(definition.mirrors)),
                                               (*definition.children, *definition.mirrors)):
            if child_name in trail:
                raise ConfigError(f'mirroring: {role} "{child_name}" refers back to itself')
            child = self.service(child_name, trail)
            if child is None:
                raise ConfigError(f'mirroring: {role} "{child_name}" {self.missing("service", child_name)}')
            if child.app is None:
                raise ConfigError(f'mirroring: {role} "{child_name}" is in error: {child.error}')
            apps.append((child.app, percent))
        return make_mirroring(apps[0][0], apps[1:], mirror_body=definition.mirror_body,
                              max_body_size=definition.max_body_size)

    # -- middlewares ------------------------------------------------------------------------------
    def middleware(self, name: str, trail: Tuple[str, ...] = ()) -> Optional[BuiltMiddleware]:
        if name in self.middlewares:
            return self.middlewares[name]
        definition = self.defs.middlewares.get(name)
        if definition is None:
            return None
        old = self.previous.middlewares.get(name) if self.previous else None
        if old is not None and old.definition == definition and old.error is None and definition.kind != "chain":
            built = old
        else:
            try:
                built = BuiltMiddleware(definition, self.build_middleware(definition, (*trail, name)),
                                        stale=("middleware", name) in self.stale)
            except ConfigError as err:
                self.report(err, definition.source, f'middleware "{name}"')
                if old is not None and old.wrapper is not None:
                    built = BuiltMiddleware(old.definition, old.wrapper, error=err.reason, stale=True)
                else:
                    built = BuiltMiddleware(definition, None, error=err.reason)
        self.middlewares[name] = built
        return built

    def build_middleware(self, definition: MiddlewareDef, trail: Tuple[str, ...]) -> Wrapper:
        return middlewares.build(definition, _Context(self, trail))

    def member(self, name: str, trail: Tuple[str, ...]) -> Union[Wrapper, str]:
        """A chain member's wrapper, built first if need be, or why there is none."""
        if name in trail:
            return "refers back to itself"
        built = self.middleware(name, trail)
        if built is None:
            return self.missing("middleware", name)
        if built.wrapper is None:
            return "is in error"
        return built.wrapper

    # -- routers ----------------------------------------------------------------------------------
    def router(self, definition: RouterDef, rules: Rules) -> Optional[CompiledRouter]:
        matches = rules.get(definition.rule)
        if isinstance(matches, ExpressionError):
            return None  # reported by keep_last_good, which also put back a previous version if any
        stale = ("router", definition.name) in self.stale
        if definition.error is not None:
            self.report(ConfigError("answers 503 for what its rule matches until the error is fixed"),
                        definition.source, f'router "{definition.name}"')
            return CompiledRouter(definition, matches, error_response(503, "Service Unavailable"),
                                  error=definition.error, stale=stale)
        problem, handler = self.router_handler(definition)
        return CompiledRouter(definition, matches, handler, error=problem, stale=stale)

    def router_handler(self, definition: RouterDef) -> Tuple[Optional[str], WSGIApp]:
        service = self.service(definition.service)
        problem = None
        if service is None:
            problem = f'service "{definition.service}" {self.missing("service", definition.service)}'
        elif service.app is None:
            problem = f'service "{definition.service}" is in error: {service.error}'
        wrappers = []
        for name in definition.middlewares:
            built = self.middleware(name)
            if built is None:
                problem = problem or f'middleware "{name}" {self.missing("middleware", name)}'
            elif built.wrapper is None:
                problem = problem or f'middleware "{name}" is in error: {built.error}'
            else:
                wrappers.append(built.wrapper)
        if problem is not None:
            self.report(ConfigError(f"answers 503: {problem}"), definition.source, f'router "{definition.name}"')
            return problem, error_response(503, "Service Unavailable")
        assert service is not None and service.app is not None
        return None, compose(wrappers, service.app)

    def missing(self, kind: str, name: str) -> str:
        """Why a referenced object is absent: it failed to read (and never worked), or it is not defined."""
        err = self.failed.get((kind, name))
        return f"is in error: {err.reason}" if err is not None else "does not exist"

    def report(self, err: ConfigError, source: Source, obj: str) -> None:
        self.errors.append(err.located(file=source.file, line=source.line or None, obj=obj))


def reports_health(definition: ServiceDef) -> bool:
    """Whether a service can tell a parent it is down: a loadBalancer with a healthCheck (or a
    passiveHealthCheck), a weighted or failover service with ``healthCheck: {}``."""
    if definition.kind == "loadBalancer":
        return definition.health_check is not None or definition.passive_health is not None
    return definition.reports_health


def compile_config(snapshot: Snapshot, previous: Optional[Config] = None,
                   options: Optional[CompileOptions] = None) -> Config:
    """Build a new configuration from a snapshot of conf.d, keeping last good versions from ``previous``."""
    options = options or CompileOptions()
    snapshot = with_last_good_files(snapshot, previous)
    collected = collect(snapshot)
    if previous is not None and collected.broken_files:
        snapshot = with_last_good_files(snapshot, previous, collected.broken_files)
        collected = collect(snapshot)
    rules = Rules(previous)
    kept = keep_last_good(collected.definitions(), collected.failed_keys, rules, previous)
    transports, transport_errors, failed_transports = read_transports(snapshot)
    defs = with_transports(kept.definitions(), transports, failed_transports)
    builder = Builder(defs, previous, options, kept.stale, root=snapshot.root, failed=collected.failed)
    builder.errors.extend([*kept.errors, *transport_errors])
    routers = [r for r in (builder.router(d, rules) for d in defs.routers.values()) if r is not None]
    for name in defs.services:
        builder.service(name)
    for name in defs.middlewares:
        builder.middleware(name)
    ordered = sorted_routers(routers)
    return Config(ordered, builder.middlewares, builder.services,
                  tuple(collected.errors) + tuple(builder.errors), snapshot,
                  (previous.generation + 1) if previous else 1, index_by_entrypoint(ordered))


@dataclass(frozen=True)
class _Context:
    """The :class:`~gatekeeper.config.middlewares.BuildContext` of one middleware being built."""

    builder: Builder
    trail: Tuple[str, ...]

    @property
    def root(self) -> str:
        return self.builder.root

    def member(self, name: str) -> Union[Wrapper, str]:
        return self.builder.member(name, self.trail)
