"""The loaded configuration as the request path reads it: :class:`Config`, its routers sorted by priority
and indexed by entry point, and :meth:`Config.match`.

``compile.py`` builds one; ``reload.py`` swaps it whole; a request reads the current one once into a local.
Nothing here is mutated after it is built.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Tuple

from gatekeeper.config.manifests import Snapshot
from gatekeeper.config.middlewares import Wrapper
from gatekeeper.config.model import MiddlewareDef, RouterDef, ServiceDef
from gatekeeper.errors import ConfigError
from gatekeeper.expr import RequestView
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


@dataclass(frozen=True)
class Config:
    """One loaded configuration. Never mutated: a reload builds a new one and swaps the reference.

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

    def routers_for(self, entrypoint: Optional[str]) -> Tuple[CompiledRouter, ...]:
        """Routers a listener serves: all of them, or those naming its entry point or none."""
        if entrypoint is None:
            return self.routers
        found = self.by_entrypoint.get(entrypoint)
        if found is None:
            found = tuple(r for r in self.routers if not r.definition.entry_points)
        return found

    def match(self, environ: Environ, entrypoint: Optional[str] = None) -> Optional[CompiledRouter]:
        """The highest-priority router whose rule matches the request, or None (404)."""
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
    return tuple(sorted(routers, key=lambda r: (-r.priority, r.name)))
