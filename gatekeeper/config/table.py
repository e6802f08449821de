"""The loaded configuration as the request path reads it: :class:`Config`, its routers sorted by priority
and indexed by entry point and by host (:class:`RouteIndex`), and :meth:`Config.match`.

``compile.py`` builds one; ``reload.py`` swaps it whole; a request reads the current one once into a local.
Nothing here is mutated after it is built.
"""
from __future__ import annotations

from dataclasses import InitVar, dataclass, field
from functools import cached_property
from itertools import chain, compress
from operator import attrgetter
from typing import AbstractSet, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from gatekeeper.config.manifests import Snapshot
from gatekeeper.config.model import MiddlewareDef, RouterDef, ServiceDef
from gatekeeper.errors import ConfigError, ExpressionError
from gatekeeper.expr import RequestView
from gatekeeper.expr.hosts import HostPins, rule_hosts
from gatekeeper.middlewares.base import Wrapper
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
    # the built service and middlewares its handler wraps, in order: a reload reuses the router only while
    # they are the very objects the new configuration has (see config/reuse.py)
    uses: Tuple[object, ...] = field(default=(), compare=False, repr=False)

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def priority(self) -> int:
        return self.definition.effective_priority

    @cached_property
    def rank(self) -> Tuple[int, str]:
        """Its place in the priority order (highest priority first, then by name): unique in a Config, and
        the same in the next one while the router is reused, so an index can be updated in place."""
        definition = self.definition
        return (-(definition.priority or len(definition.rule)), definition.name)


Entry = Tuple[Tuple[int, str], CompiledRouter]   # (rank, router)


class RouteIndex:
    """Routers of one listener, looked up by the request's host instead of tried one by one.

    Routers whose rule pins hosts (:func:`~gatekeeper.expr.hosts.rule_hosts`) are filed under each exact
    host, and under each wildcard suffix (``.example.com`` for ``*.example.com``); the rest are
    host-agnostic. A request tries its host's candidates (exact ones merged with its suffix's at build time)
    and the host-agnostic routers, merged by their rank in the priority order, so the first that matches is
    the one the linear scan over all routers would find: a router left out of the candidates has a rule that
    cannot match this host. :meth:`updated` derives the next index from this one when a reload changed a
    few routers, redoing only their hosts.

        >>> RouteIndex(()).match(RequestView({"HTTP_HOST": "a.example.com"})) is None
        True
    """

    def __init__(self, routers: Tuple[CompiledRouter, ...]) -> None:
        self.routers = routers
        exact: Dict[str, List[Entry]] = {}
        wildcard: Dict[str, List[Entry]] = {}
        anywhere: List[Entry] = []
        for router in routers:
            entry = (router.rank, router)
            pins = rule_hosts(router.definition.rule)
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

    def updated(self, routers: Tuple[CompiledRouter, ...], added: Sequence[CompiledRouter],
                removed: Sequence[CompiledRouter]) -> "RouteIndex":
        """The index of ``routers`` (this index's routers less ``removed``, plus ``added``): the same lookups
        as ``RouteIndex(routers)``, redoing only the hosts those routers pin (a reused router keeps its
        rank). A wildcard router among them rebuilds it all."""
        changed = [(router, rule_hosts(router.definition.rule)) for router in (*added, *removed)]
        if any(pins is not None and pins.suffixes for _, pins in changed):
            return RouteIndex(routers)
        gone = {id(router) for router in removed}
        fresh: Dict[str, List[Entry]] = {}
        fresh_anywhere: List[Entry] = []
        anywhere_touched = False
        for number, (router, pins) in enumerate(changed):
            new = number < len(added)
            if pins is None:
                anywhere_touched = True
                if new:
                    fresh_anywhere.append((router.rank, router))
                continue
            for host in pins.exact:
                found = fresh.setdefault(host, [])
                if new:
                    found.append((router.rank, router))
        out = RouteIndex.__new__(RouteIndex)
        out.routers, out.wildcard = routers, self.wildcard
        out.anywhere = _merged(self.anywhere, gone, fresh_anywhere) if anywhere_touched else self.anywhere
        exact = out.exact = dict(self.exact)
        for host, extra in fresh.items():
            merged = _merged(self.candidates(host), gone, extra)
            if any(_pins_exactly(router, host) for _, router in merged):
                exact[host] = merged
            else:  # only wildcard routers left (or none): the suffix answers for this host, as in a full build
                exact.pop(host, None)
        return out

    def candidates(self, host: str) -> Tuple[Entry, ...]:
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


def _rank(entry: Entry) -> Tuple[int, str]:
    return entry[0]


def _merged(entries: Iterable[Entry], gone: "set[int]", extra: List[Entry]) -> Tuple[Entry, ...]:
    """``entries`` without the routers whose id is in ``gone``, plus ``extra``, in rank order."""
    kept = [entry for entry in entries if id(entry[1]) not in gone]
    kept.extend(extra)
    kept.sort(key=_rank)
    return tuple(kept)


def _pins_exactly(router: CompiledRouter, host: str) -> bool:
    pins: Optional[HostPins] = rule_hosts(router.definition.rule)
    return pins is not None and host in pins.exact


@dataclass(frozen=True)
class Config:
    """One loaded configuration. Never mutated: a reload builds a new one and swaps the reference.

    ``routers`` are in priority order; ``by_entrypoint`` holds, per entry point some router names, the
    routers its listeners serve. The routing indexes (:class:`RouteIndex`) are built with the Config; given
    the ``previous`` Config (not kept), they are derived from its indexes when few routers changed.

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
    rules: Mapping[str, Union[Callable[[RequestView], bool], ExpressionError]] = field(
        default_factory=dict, repr=False, compare=False)  # rule text -> what compiling it gave (reused)
    memo: Optional["ReuseMemo"] = field(default=None, repr=False, compare=False)
    indexes: Mapping[Optional[str], RouteIndex] = field(init=False, repr=False, compare=False)
    previous: InitVar[Optional["Config"]] = None
    changes: InitVar[Optional[Tuple[Sequence[CompiledRouter], Sequence[CompiledRouter]]]] = None

    def __post_init__(self, previous: Optional["Config"],
                      changes: Optional[Tuple[Sequence[CompiledRouter], Sequence[CompiledRouter]]]) -> None:
        # None: every router (a listener with no entry point); "": those naming no entry point (a listener
        # whose entry point no router names); then one per entry point some router names. ``changes``:
        # (added, removed) routers since ``previous``, found by identity when not given
        if previous is not None and changes is None:
            changes = _router_changes(previous.routers, self.routers)
        if changes is not None and len(changes[0]) + len(changes[1]) > 64 + len(self.routers) // 8:
            changes = None  # building afresh costs less than updating
        old = previous.indexes if previous is not None else {}

        def index(key: Optional[str], routers: Tuple[CompiledRouter, ...]) -> RouteIndex:
            if changes is None or key not in old:
                return RouteIndex(routers)
            added, removed = changes
            if key is not None:
                added = [r for r in added if _serves(r, key)]
                removed = [r for r in removed if _serves(r, key)]
            return old[key].updated(routers, added, removed)

        indexes: Dict[Optional[str], RouteIndex] = {None: index(None, self.routers)}
        if self.by_entrypoint or names_entry_points(self.routers, previous, changes[0] if changes else None):
            indexes[""] = index("", tuple(r for r in self.routers if not r.definition.entry_points))
            indexes.update((name, index(name, found)) for name, found in self.by_entrypoint.items())
        else:
            indexes[""] = indexes[None]
        object.__setattr__(self, "indexes", indexes)

    @cached_property
    def router_named(self) -> Mapping[str, CompiledRouter]:
        """Routers by name (a reload looks up the previous version of an edited router here)."""
        return dict(zip(map(_NAME, self.routers), self.routers))

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


def _router_changes(before: Tuple[CompiledRouter, ...], after: Tuple[CompiledRouter, ...]
                    ) -> Tuple[List[CompiledRouter], List[CompiledRouter]]:
    """(added, removed) routers, by identity, between two Configs."""
    old_ids, new_ids = set(map(id, before)), set(map(id, after))
    added_ids, removed_ids = new_ids - old_ids, old_ids - new_ids
    return (list(compress(after, map(added_ids.__contains__, map(id, after)))),
            list(compress(before, map(removed_ids.__contains__, map(id, before)))))


def _serves(router: CompiledRouter, key: str) -> bool:
    """Whether the index of entry point ``key`` ("": a listener whose entry point no router names) has it."""
    entry_points = router.definition.entry_points
    return not entry_points or key in entry_points


def names_entry_points(routers: Sequence[CompiledRouter], previous: Optional[Config] = None,
                       added: Optional[Sequence[CompiledRouter]] = None) -> bool:
    """Whether some router names an entry point; when ``routers`` are those of ``previous`` plus ``added``
    (less some), asked of ``added`` only if no router of ``previous`` named one."""
    if previous is not None and added is not None and previous.indexes[""] is previous.indexes[None]:
        return any(map(_ENTRY_POINTS, added))
    return any(map(_ENTRY_POINTS, routers))


def index_by_entrypoint(routers: Tuple[CompiledRouter, ...], previous: Optional[Config] = None,
                        added: Optional[Sequence[CompiledRouter]] = None) -> Mapping[str, Tuple[CompiledRouter, ...]]:
    """Per entry point named by some router: the routers it serves (those naming it, and those naming none),
    in priority order, so a request does not filter the list. ``previous``, ``added``: see
    :func:`names_entry_points`."""
    if not names_entry_points(routers, previous, added):
        return {}
    entrypoints = set(chain.from_iterable(map(_ENTRY_POINTS, routers)))
    return {ep: tuple(r for r in routers if not r.definition.entry_points or ep in r.definition.entry_points)
            for ep in entrypoints}


@dataclass(frozen=True)
class ReuseMemo:
    """What the next reload asks of a configuration, carried from one to the next so that a reload costs
    what changed (``config/reuse.py``). Ids are of definitions this configuration holds, so they stay
    valid while it lives."""

    by_definition: Mapping[int, CompiledRouter]  # id(router.definition) -> router, every router
    by_name: Mapping[str, CompiledRouter]
    serving: AbstractSet[int]       # definitions of the routers serving without error, not stale
    services: AbstractSet[int]      # definitions of the built services a reload may take back as they are
    middlewares: AbstractSet[int]   # ... and middlewares


def merged_routers(previous: Tuple[CompiledRouter, ...], by_definition: Mapping[int, CompiledRouter],
                   kept: AbstractSet[int], added: List[CompiledRouter]
                   ) -> Tuple[Tuple[CompiledRouter, ...], List[CompiledRouter], Dict[int, CompiledRouter]]:
    """(the routers in priority order, the removed ones, the new ``by_definition``): the ``previous``
    routers (``by_definition``: the same, by id of definition) whose definition's id is in ``kept``, with
    ``added`` put in their places; only the routers that come and go are looked at."""
    table = dict(by_definition)
    removed = [table.pop(gone) for gone in by_definition.keys() - kept]
    routers = list(previous)
    if len(added) + len(removed) > 64 + len(routers) // 8:
        routers = [*table.values(), *added]
        table.update(zip(map(id, map(_DEFINITION, added)), added))
        return sorted_routers(routers), removed, table
    for router in removed:
        del routers[rank_position(routers, router.rank)]
    for router in added:
        routers.insert(rank_position(routers, router.rank, after_equal=True), router)
        table[id(router.definition)] = router
    return tuple(routers), removed, table


def rank_position(routers: Sequence[CompiledRouter], rank: Tuple[int, str], after_equal: bool = False) -> int:
    """``bisect_left`` (``bisect_right`` with ``after_equal``) over the routers' ranks: bisect's ``key=`` is
    Python 3.10's, and gatekeeper runs on 3.9 (PyPy 3.9, scripts/install-pypy)."""
    low, high = 0, len(routers)
    while low < high:
        middle = (low + high) // 2
        if routers[middle].rank < rank or (after_equal and routers[middle].rank == rank):
            low = middle + 1
        else:
            high = middle
    return low


def sorted_routers(routers: "list[CompiledRouter]") -> Tuple[CompiledRouter, ...]:
    """Highest priority first; equal priorities by name, so the order never depends on file order."""
    return tuple(sorted(routers, key=_order))


_order = attrgetter("rank")
_DEFINITION = attrgetter("definition")
_ENTRY_POINTS = attrgetter("definition.entry_points")
_NAME = attrgetter("definition.name")  # computed once per router, and kept while the router is reused
