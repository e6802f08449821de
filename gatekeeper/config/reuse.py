"""What a reload takes unchanged from the previous :class:`~gatekeeper.config.table.Config`.

A reload of one file among 100 (10,000 routers) must cost what changed, not a look at every router: a Python
loop over 10,000 objects alone costs milliseconds. So the questions "which definitions are the very objects
the previous configuration built from?" are answered with ``map``/``compress`` chains that run in C.
Definitions of files whose bytes did not change are the same objects as before (the providers replay them
from a cache keyed by the file's digest), so identity (``is``) is the test, never equality: an edited object
is a new object.

    >>> list(unseen(["a", "b"], set()))
    ['a', 'b']
"""
from __future__ import annotations

from itertools import compress, repeat
from operator import attrgetter, is_, not_
from typing import AbstractSet, Any, Dict, Iterable, Iterator, List, Mapping, TypeVar

__all__ = ["COMPOSITE_MIDDLEWARES", "COMPOSITE_SERVICES", "missing", "reusable_routers", "serving_definitions",
           "unchanged_built", "unseen"]

T = TypeVar("T")
B = TypeVar("B")

# Kinds built from other built objects: rebuilt on every reload (their members may have been rebuilt), so a
# router using one is rebuilt too.
COMPOSITE_SERVICES = frozenset({"weighted", "mirroring", "failover"})
COMPOSITE_MIDDLEWARES = frozenset({"chain"})

_DEFINITION = attrgetter("definition")
_ERROR = attrgetter("error")
_KIND = attrgetter("kind")
_STALE = attrgetter("stale")
_SERVICE = attrgetter("service")
_MIDDLEWARES = attrgetter("middlewares")


class _Missing:
    """Stands for an object the previous configuration did not have."""

    definition = None
    error = "missing"


_MISSING = _Missing()


def unseen(items: Iterable[T], ids: AbstractSet[int]) -> Iterator[T]:
    """``items`` whose ``id`` is not in ``ids``, in order."""
    items = list(items)
    return compress(items, map(not_, map(ids.__contains__, map(id, items))))


def serving_definitions(routers: Iterable[Any]) -> "set[int]":
    """ids of the definitions of the routers that serve without error and are not a last good version
    standing in (the previous configuration's)."""
    routers = list(routers)
    flags = zip(map(is_, map(_ERROR, routers), repeat(None)), map(not_, map(_STALE, routers)))
    return set(map(id, map(_DEFINITION, compress(routers, map(all, flags)))))


def unchanged_built(definitions: Mapping[str, Any], built: Mapping[str, B], composite: AbstractSet[str]
                    ) -> Dict[str, B]:
    """The previous built objects (services or middlewares) that building ``definitions`` would give back
    unchanged, by name: the rule ``Builder.service`` and ``Builder.middleware`` apply one by one (an equal
    definition, not in error, not a composite kind), asked first by identity in C, then by equality for
    the few definitions that are new objects (those of an edited file)."""
    names = list(definitions)
    values = list(definitions.values())
    olds: List[Any] = list(map(built.get, names, repeat(_MISSING)))
    sound = map(is_, map(_ERROR, olds), repeat(None))
    simple = map(not_, map(composite.__contains__, map(_KIND, values)))
    candidates = list(map(all, zip(sound, simple)))
    same = list(map(is_, values, map(_DEFINITION, olds)))
    found = dict(compress(zip(names, olds), map(all, zip(same, candidates))))
    for name, value, old in compress(zip(names, values, olds), map(all, zip(map(not_, same), candidates))):
        if old.definition == value:
            found[name] = old
    return found


def reusable_routers(definitions: Mapping[str, Any], serving: AbstractSet[int], services: Mapping[str, Any],
                     middlewares: Mapping[str, Any], *, stale: AbstractSet[str], previous: Any) -> "set[int]":
    """ids of the router definitions whose previous router can serve as is, and of that router's
    definition: it served without error from this very definition (``serving``) or an equal one, and its
    service and every middleware are reused unchanged (``services``, ``middlewares``: see
    :func:`unchanged_built`), so it wraps the very objects a rebuild would wrap. A middleware rebuilt
    because its options changed (a JWT secret rotated) is not among them, so every router using it is
    rebuilt. ``stale``: names of routers put back as last good versions, rebuilt so they are marked stale.
    ``previous``: the previous Config, whose ``router_named`` finds the router of an equal definition."""
    values = list(definitions.values())
    kept = set(middlewares)
    pieces = list(map(all, zip(map(services.__contains__, map(_SERVICE, values)),
                               map(kept.issuperset, map(_MIDDLEWARES, values)))))
    same = list(map(serving.__contains__, map(id, values)))
    reusable = list(compress(values, map(all, zip(same, pieces))))
    others = list(compress(values, map(all, zip(map(not_, same), pieces))))
    ids = set(map(id, reusable))
    if others:
        named = previous.router_named
        for definition in others:
            old = named.get(definition.name)
            if old is not None and old.error is None and not old.stale and old.definition == definition:
                ids.update((id(definition), id(old.definition)))
    for name in stale:
        ids.discard(id(definitions.get(name)))
        ids.discard(id(previous.router_named.get(name, _MISSING).definition))
    return ids


def missing(names: Iterable[str], built: Mapping[str, Any]) -> Iterator[str]:
    """``names`` not (yet) in ``built``, in order; asked as the iteration reaches each name."""
    names = list(names)
    return compress(names, map(not_, map(built.__contains__, names)))
