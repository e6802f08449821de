"""Documents -> one immutable :class:`Config`, collecting every error instead of stopping at the first.

Nothing that worked is lost: a file that no longer parses keeps its last good documents, an object that no
longer validates keeps its last good version, and a router whose middleware or service is missing or in error
answers 503 for what it matches instead of falling through to another router (fail closed). Built pieces whose
definition did not change (JWT key objects, upstream connection pools, compiled rules) are reused from the
previous configuration, so a reload costs what changed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, FrozenSet, List, Mapping, Optional, Set, Tuple, Union

from gatekeeper.config import middlewares
from gatekeeper.config.lastgood import Rules, keep_last_good, unknown_entry_points_in_error, with_last_good_files
from gatekeeper.config.manifests import Snapshot, paused_gc
from gatekeeper.config.middlewares import compose
from gatekeeper.config.model import Definitions, MiddlewareDef, RouterDef, ServiceDef, Source, qualify
from gatekeeper.config.providers import collect
from gatekeeper.config.providers.k8s_objects import KubeOptions
from gatekeeper.config.providers.transports import read_transports, transport_limits, with_transports
from gatekeeper.config.reuse import (
    memo_of,
    missing,
    next_memo,
    reusable_routers,
    unchanged_built,
    unseen,
)
from gatekeeper.config.table import (
    BuiltMiddleware,
    BuiltService,
    CompiledRouter,
    Config,
    index_by_entrypoint,
    merged_routers,
    sorted_routers,
)
from gatekeeper.errors import ConfigError, ExpressionError
from gatekeeper.middlewares.base import Wrapper
from gatekeeper.options import did_you_mean
from gatekeeper.proxy.balancer import ProxyLimits, ServerSpec, make_failover, make_load_balancer, make_weighted
from gatekeeper.proxy.mirror import make_mirroring
from gatekeeper.wsgi import WSGIApp, error_response

__all__ = ["CompileOptions", "compile_config"]


@dataclass(frozen=True)
class CompileOptions:
    limits: ProxyLimits = field(default_factory=ProxyLimits)
    kubernetes: KubeOptions = field(default_factory=KubeOptions)    # --allow-cross-namespace, --ingress-class
    entry_points: Optional[FrozenSet[str]] = None  # --entrypoint names (None: one listener serves every router)


# Middlewares built from other objects (a chain's members, an errors page's service): rebuilt on every load
REBUILT_MIDDLEWARES = ("chain", "errors")


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
        if old is not None and (old.definition is definition or old.definition == definition) \
                and old.error is None and definition.kind not in ("weighted", "mirroring", "failover"):
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
            child = self.service_member("weighted: service", child_name, trail)
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

    def service_member(self, where: str, name: str, trail: Tuple[str, ...]) -> BuiltService:
        """A composite service's member, built first; ConfigError ``{where} "{name}" ...`` when it refers back
        to a service being built or does not exist."""
        if name in trail:
            raise ConfigError(f'{where} "{name}" refers back to itself')
        child = self.service(name, trail)
        if child is None:
            raise ConfigError(f'{where} "{name}" {self.missing("service", name)}')
        return child

    def serving_app(self, where: str, name: str, child: BuiltService) -> WSGIApp:
        """A member's app: ConfigError ``{where} "{name}" is in error: ...`` when it has none."""
        if child.app is None:
            raise ConfigError(f'{where} "{name}" is in error: {child.error}')
        return child.app

    def build_failover(self, definition: ServiceDef, trail: Tuple[str, ...]) -> WSGIApp:
        """``service`` while it is up, else ``fallback``: the main service must report its health (as in
        Traefik), and with ``failover.healthCheck`` the fallback too."""
        apps = []
        for role, (child_name, _) in zip(("service", "fallback"), definition.children):
            child = self.service_member(f"failover: {role}", child_name, trail)
            app = self.serving_app(f"failover: {role}", child_name, child)
            if (role == "service" or definition.reports_health) and not reports_health(child.definition):
                raise ConfigError(f'failover: {role} "{child_name}" has no healthCheck, so whether it is up '
                                  f'cannot be known')
            apps.append(app)
        return make_failover(apps[0], apps[1])

    def build_mirroring(self, definition: ServiceDef, trail: Tuple[str, ...]) -> WSGIApp:
        """The main service answers; mirrors get copies. A mirror in error puts the service in error: a
        copy silently going nowhere would be a mirror accepted and ignored."""
        apps = []
        for role, (child_name, percent) in zip(("service", *("mirror",) * len(definition.mirrors)),
                                               (*definition.children, *definition.mirrors)):
            child = self.service_member(f"mirroring: {role}", child_name, trail)
            apps.append((self.serving_app(f"mirroring: {role}", child_name, child), percent))
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
        if old is not None and (old.definition is definition or old.definition == definition) \
                and old.error is None and definition.kind not in REBUILT_MIDDLEWARES:
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
        return middlewares.build(definition, _Context(self, trail, definition))

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
        uses = (self.services.get(definition.service), *map(self.middlewares.get, definition.middlewares))
        return CompiledRouter(definition, matches, handler, error=problem, stale=stale, uses=uses)

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
            field_name = "service" if problem.startswith("service ") else "middlewares"  # the reference's own line
            self.report(ConfigError(f"answers 503: {problem}", line=definition.line_of(field_name)),
                        definition.source, f'router "{definition.name}"')
            return problem, error_response(503, "Service Unavailable")
        assert service is not None and service.app is not None
        return None, compose(wrappers, service.app)

    def missing(self, kind: str, name: str) -> str:
        """Why a referenced object is absent: it failed to read (and never worked), or it is not defined."""
        err = self.failed.get((kind, name))
        if err is not None:
            return f"is in error: {err.reason}"
        defined = self.defs.services if kind == "service" else self.defs.middlewares
        return "does not exist" + did_you_mean(name, defined)

    def report(self, err: ConfigError, source: Source, obj: str) -> None:
        self.errors.append(err.located(file=source.file, line=source.line or None, obj=obj))


def reports_health(definition: ServiceDef) -> bool:
    """Whether a service can tell a parent it is down: a loadBalancer with a healthCheck (or a
    passiveHealthCheck), a weighted or failover service with ``healthCheck: {}``."""
    if definition.kind == "loadBalancer":
        return definition.health_check is not None or definition.passive_health is not None
    return definition.reports_health


@paused_gc()  # it would walk all that was built so far again and again (manifests.paused_gc)
def compile_config(snapshot: Snapshot, previous: Optional[Config] = None,
                   options: Optional[CompileOptions] = None, *, reuse: bool = True) -> Config:
    """Build a new configuration from a snapshot of conf.d, keeping last good versions from ``previous``.

    With ``previous``, routers whose definition, service and middlewares are unchanged are taken from it
    as they are (``config/reuse.py``) and its routing indexes are updated rather than rebuilt.
    ``reuse=False`` builds every router again (the reference the tests compare a reload with)."""
    options = options or CompileOptions()
    snapshot = with_last_good_files(snapshot, previous)
    collected = collect(snapshot, options.kubernetes)
    if previous is not None and collected.broken_files:
        snapshot = with_last_good_files(snapshot, previous, collected.broken_files)
        collected = collect(snapshot, options.kubernetes)
    rules = Rules(previous)
    memo = None
    if previous is not None and reuse:
        memo = previous.memo or memo_of(previous.routers, previous.services, previous.middlewares)
    serving = memo.serving if memo is not None else frozenset()
    entry_point_errors = unknown_entry_points_in_error(collected.routers, options.entry_points, serving)
    kept = keep_last_good(collected.definitions(), collected.failed_keys, rules, previous, serving)
    transports, transport_errors, failed_transports = read_transports(snapshot)
    defs = with_transports(kept.definitions(), transports, failed_transports)
    builder = Builder(defs, previous, options, kept.stale, root=snapshot.root, failed=collected.failed)
    builder.errors.extend([*entry_point_errors, *kept.errors, *transport_errors])
    reused: Set[int] = set()
    if previous is not None and memo is not None:  # what the previous configuration built, unchanged
        found_services = unchanged_built(defs.services, previous.services, memo.services)
        found_middlewares = unchanged_built(defs.middlewares, previous.middlewares, memo.middlewares)
        builder.services.update(found_services)
        builder.middlewares.update(found_middlewares)
        all_kept = (len(found_services) == len(previous.services)
                    and len(found_middlewares) == len(previous.middlewares))
        reused = reusable_routers(defs.routers, memo, (all_kept, found_services, found_middlewares),
                                  stale={name for kind, name in kept.stale if kind == "router"})
    added = [r for r in (builder.router(d, rules) for d in unseen(defs.routers.values(), reused)) if r is not None]
    for name in missing(defs.services, builder.services):
        builder.service(name)
    for name in missing(defs.middlewares, builder.middlewares):
        builder.middleware(name)
    changes = None
    if previous is not None and memo is not None:
        ordered, removed, by_definition = merged_routers(previous.routers, memo.by_definition, reused, added)
        changes = (added, removed)
        memo = next_memo(memo, by_definition, added, removed, services=(found_services, builder.services),
                         middlewares=(found_middlewares, builder.middlewares))
    else:
        ordered = sorted_routers(added)
        memo = memo_of(ordered, builder.services, builder.middlewares)
    return Config(ordered, builder.middlewares, builder.services,
                  tuple(collected.errors) + tuple(builder.errors), snapshot,
                  (previous.generation + 1) if previous else 1,
                  index_by_entrypoint(ordered, previous, changes[0] if changes else None), rules.known,
                  memo, previous, changes)


@dataclass(frozen=True)
class _Context:
    """The :class:`~gatekeeper.config.middlewares.BuildContext` of one middleware being built."""

    builder: Builder
    trail: Tuple[str, ...]

    definition: MiddlewareDef

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def root(self) -> str:
        return self.builder.root

    @property
    def manifest(self) -> str:
        return self.definition.source.file

    def member(self, name: str) -> Union[Wrapper, str]:
        return self.builder.member(name, self.trail)

    def service(self, name: str) -> Union[WSGIApp, str]:
        qualified = qualify(name, self.definition.source.provider)
        built = self.builder.service(qualified)
        if built is None:
            return self.builder.missing("service", qualified)
        return "is in error" if built.app is None else built.app
