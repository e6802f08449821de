"""The loaded configuration as the request path reads it: :class:`Config`, its routers sorted by priority
and indexed by entry point and by host (:class:`RouteIndex`), and :meth:`Config.match`.

``compile.py`` builds one; ``reload.py`` swaps it whole; a request reads the current one once into a local.
Nothing here is mutated after it is built.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Tuple

from gatekeeper.config.manifests import Snapshot
from gatekeeper.config.middlewares import Wrapper
from gatekeeper.config.model import MiddlewareDef, RouterDef, ServiceDef
from gatekeeper.errors import ConfigError
from gatekeeper.expr import RequestView
from gatekeeper.expr.hosts import rule_hosts
from gatekeeper.wsgi import Environ, WSGIApp


@dataclass(frozen=True)
class BuiltMiddleware:
    """A middleware definition and the wrapper built from it (or why there is none)."""

    definition: MiddlewareDef
    wrapper: Optional[Wrapper]          # None when in error and no good version was ever built
    error: Optional[str] = None
    stale: bool = False                 # serving a previous good version while the new one is in error


@dataclass(frozen=True)
class BuiltService:
    """A service definition and the WSGI app (load balancer, weighted) built from it."""

    definition: ServiceDef
    app: Optional[WSGIApp]
    error: Optional[str] = None
    stale: bool = False


@dataclass(frozen=True)
class CompiledRouter:
    """A router ready to serve: its compiled rule and its handler (middlewares around the service)."""

    definition: RouterDef
    matches: Callable[[RequestView], bool]
    handler: WSGIApp
    error: Optional[str] = None         # why it answers 503, when it does
    stale: bool = False

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def priority(self) -> int:
        return self.definition.effective_priority


class RouteIndex:
    """Routers of one listener, looked up by the request's host instead of tried one by one.

    Routers whose rule pins hosts (:func:`~gatekeeper.expr.hosts.rule_hosts`) are filed under each exact
    host, and under each wildcard suffix (``.example.com`` for ``*.example.com``); the rest are
    host-agnostic. A request tries its host's candidates (exact ones merged with its suffix's at build time)
    and the host-agnostic routers, merged by their rank in the priority order, so the first that matches is
    the one the linear scan over all routers would find: a router left out of the candidates has a rule that
    cannot match this host.

        >>> RouteIndex(()).match(RequestView({"HTTP_HOST": "a.example.com"})) is None
        True
    """

    def __init__(self, routers: Tuple[CompiledRouter, ...]) -> None:
        self.routers = routers
        exact: Dict[str, List[Tuple[int, CompiledRouter]]] = {}
        wildcard: Dict[str, List[Tuple[int, CompiledRouter]]] = {}
        anywhere: List[Tuple[int, CompiledRouter]] = []
        for entry in enumerate(routers):
            pins = rule_hosts(entry[1].definition.rule)
            if pins is None:
                anywhere.append(entry)
                continue
            for host in pins.exact:
                found = exact.get(host)
                if found is None:
                    exact[host] = [entry]
                else:
                    found.append(entry)
            for suffix in pins.suffixes:
                wildcard.setdefault(suffix, []).append(entry)
        for host, found in exact.items() if wildcard else ():
            dot = host.find(".")
            extra = wildcard.get(host[dot:]) if dot > 0 else None
            if extra:  # the wildcard routers that also match this exact host, in rank order
                found.extend(extra)
                found.sort(key=_rank)
        self.exact = {host: tuple(found) for host, found in exact.items()}
        self.wildcard = {suffix: tuple(found) for suffix, found in wildcard.items()}
        self.anywhere = tuple(anywhere)

    def candidates(self, host: str) -> Tuple[Tuple[int, CompiledRouter], ...]:
        """The host-pinning routers that may match ``host`` (as :attr:`RequestView.host` gives it)."""
        found = self.exact.get(host)
        if found is not None:
            return found
        dot = host.find(".")
        if dot > 0:  # Host(`*.example.com`): exactly one non-empty label before the suffix
            return self.wildcard.get(host[dot:], ())
        return ()

    def match(self, view: RequestView) -> Optional[CompiledRouter]:
        """The highest-priority router whose rule matches, exactly as a scan of :attr:`routers` finds it."""
        anywhere = self.anywhere
        pinned = self.candidates(view.host) if (self.exact or self.wildcard) else ()
        i, count = 0, len(anywhere)
        for rank, router in pinned:
            while i < count and anywhere[i][0] < rank:
                if anywhere[i][1].matches(view):
                    return anywhere[i][1]
                i += 1
            if router.matches(view):
                return router
        while i < count:
            if anywhere[i][1].matches(view):
                return anywhere[i][1]
            i += 1
        return None


def _rank(entry: Tuple[int, CompiledRouter]) -> int:
    return entry[0]


@dataclass(frozen=True)
class Config:
    """One loaded configuration. Never mutated: a reload builds a new one and swaps the reference.

    ``routers`` are in priority order; ``by_entrypoint`` holds, per entry point some router names, the
    routers its listeners serve. The routing indexes (:class:`RouteIndex`) are built with the Config.

    >>> Config().match({"PATH_INFO": "/", "HTTP_HOST": "example.com"}) is None
    True
    """

    routers: Tuple[CompiledRouter, ...] = ()
    middlewares: Mapping[str, BuiltMiddleware] = field(default_factory=dict)
    services: Mapping[str, BuiltService] = field(default_factory=dict)
    errors: Tuple[ConfigError, ...] = ()
    snapshot: Snapshot = field(default_factory=lambda: Snapshot(""))
    generation: int = 0
    by_entrypoint: Mapping[str, Tuple[CompiledRouter, ...]] = field(default_factory=dict)
    indexes: Mapping[Optional[str], RouteIndex] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # None: every router (a listener with no entry point); "": those naming no entry point (a listener
        # whose entry point no router names); then one per entry point some router names
        indexes: Dict[Optional[str], RouteIndex] = {None: RouteIndex(self.routers)}
        if self.by_entrypoint or any(r.definition.entry_points for r in self.routers):
            indexes[""] = RouteIndex(tuple(r for r in self.routers if not r.definition.entry_points))
            indexes.update((name, RouteIndex(found)) for name, found in self.by_entrypoint.items())
        else:
            indexes[""] = indexes[None]
        object.__setattr__(self, "indexes", indexes)

    def routers_for(self, entrypoint: Optional[str]) -> Tuple[CompiledRouter, ...]:
        """Routers a listener serves: all of them, or those naming its entry point or none."""
        return self._index(entrypoint).routers

    def _index(self, entrypoint: Optional[str]) -> RouteIndex:
        if entrypoint is None:
            return self.indexes[None]
        found = self.indexes.get(entrypoint)
        return found if found is not None else self.indexes[""]

    def match(self, environ: Environ, entrypoint: Optional[str] = None) -> Optional[CompiledRouter]:
        """The highest-priority router whose rule matches the request, or None (404)."""
        return self._index(entrypoint).match(RequestView(environ))

    def match_linear(self, environ: Environ, entrypoint: Optional[str] = None) -> Optional[CompiledRouter]:
        """:meth:`match` by trying every router in priority order: the reference the index must agree with."""
        view = RequestView(environ)
        for router in self.routers_for(entrypoint):
            if router.matches(view):
                return router
        return None


def index_by_entrypoint(routers: Tuple[CompiledRouter, ...]) -> Mapping[str, Tuple[CompiledRouter, ...]]:
    """Per entry point named by some router: the routers it serves (those naming it, and those naming none),
    in priority order, so a request does not filter the list."""
    entrypoints = {ep for r in routers for ep in r.definition.entry_points}
    return {ep: tuple(r for r in routers if not r.definition.entry_points or ep in r.definition.entry_points)
            for ep in entrypoints}


def sorted_routers(routers: "list[CompiledRouter]") -> Tuple[CompiledRouter, ...]:
    """Highest priority first; equal priorities by name, so the order never depends on file order."""
    return tuple(sorted(routers, key=_order))


def _order(router: CompiledRouter) -> Tuple[int, str]:
    definition = router.definition  # effective_priority and name, without two property calls each
    return (-(definition.priority or len(definition.rule)), definition.name)
