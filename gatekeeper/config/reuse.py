"""What a reload takes unchanged from the previous :class:`~gatekeeper.config.table.Config`.

A reload of one file among 100 (10,000 routers) must cost what changed, not a look at every router: a Python
loop over 10,000 objects alone costs milliseconds. So the questions "which definitions are the very objects
the previous configuration built from?" are answered with ``map``/``compress`` chains that run in C.
Definitions of files whose bytes did not change are the same objects as before (the providers replay them
from a cache keyed by the file's digest), so identity (``is``) answers for them; only the new objects (those
of an edited file) are compared for equality, one by one. What the next reload asks is carried from one
configuration to the next (:class:`~gatekeeper.config.table.ReuseMemo`).

    >>> list(unseen(["a", "b"], set()))
    ['a', 'b']
"""
from __future__ import annotations

from itertools import compress, islice, repeat
from operator import attrgetter, is_, not_
from typing import AbstractSet, Any, Dict, Iterable, Iterator, Mapping, Sequence, Tuple, TypeVar

from gatekeeper.config.table import CompiledRouter, ReuseMemo

__all__ = ["COMPOSITE_MIDDLEWARES", "COMPOSITE_SERVICES", "memo_of", "missing", "next_memo", "reusable_routers",
           "serving_definitions", "sound_definitions", "unchanged_built", "unseen"]

T = TypeVar("T")

# Kinds built from other built objects: rebuilt on every reload (their members may have been rebuilt), so a
# router using one is rebuilt too.
COMPOSITE_SERVICES = frozenset({"weighted", "mirroring", "failover"})
COMPOSITE_MIDDLEWARES = frozenset({"chain", "errors"})  # errors: its page service (compile.REBUILT_MIDDLEWARES)

_DEFINITION = attrgetter("definition")
_ERROR = attrgetter("error")
_KIND = attrgetter("kind")
_STALE = attrgetter("stale")
_SERVICE = attrgetter("service")
_MIDDLEWARES = attrgetter("middlewares")
_NAME = attrgetter("definition.name")


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
    standing in."""
    routers = list(routers)
    flags = zip(map(is_, map(_ERROR, routers), repeat(None)), map(not_, map(_STALE, routers)))
    return set(map(id, map(_DEFINITION, compress(routers, map(all, flags)))))


def sound_definitions(built: Iterable[Any], composite: AbstractSet[str]) -> "set[int]":
    """ids of the definitions of built services or middlewares a reload may take back as they are: not in
    error (so not stale either), not of a composite kind."""
    built = list(built)
    flags = zip(map(is_, map(_ERROR, built), repeat(None)),
                map(not_, map(composite.__contains__, map(_KIND, map(_DEFINITION, built)))))
    return set(map(id, map(_DEFINITION, compress(built, map(all, flags)))))


def memo_of(routers: Sequence[CompiledRouter], services: Mapping[str, Any], middlewares: Mapping[str, Any]
            ) -> ReuseMemo:
    """The :class:`ReuseMemo` of a configuration, worked out from all of it (a cold compile's)."""
    return ReuseMemo(dict(zip(map(id, map(_DEFINITION, routers)), routers)),
                     dict(zip(map(_NAME, routers), routers)), serving_definitions(routers),
                     sound_definitions(services.values(), COMPOSITE_SERVICES),
                     sound_definitions(middlewares.values(), COMPOSITE_MIDDLEWARES))


def next_memo(memo: ReuseMemo, by_definition: Dict[int, CompiledRouter], added: Sequence[CompiledRouter],
              removed: Sequence[CompiledRouter], *, services: Tuple[Mapping[str, Any], Mapping[str, Any]],
              middlewares: Tuple[Mapping[str, Any], Mapping[str, Any]]) -> ReuseMemo:
    """The memo of the configuration a reload built from one with ``memo``: ``by_definition`` already
    updated, ``added`` and ``removed`` routers, ``services`` and ``middlewares`` as (the ones taken back
    as they were, all the new configuration has; those taken back come first)."""
    by_name = dict(memo.by_name)
    for router in removed:
        by_name.pop(router.definition.name, None)
    by_name.update(zip(map(_NAME, added), added))
    serving = set(memo.serving)
    serving.difference_update(map(id, map(_DEFINITION, removed)))
    serving.update(serving_definitions(added))
    return ReuseMemo(by_definition, by_name, serving, _next_sound(memo.services, *services, COMPOSITE_SERVICES),
                     _next_sound(memo.middlewares, *middlewares, COMPOSITE_MIDDLEWARES))


def _next_sound(before: AbstractSet[int], found: Mapping[str, Any], built: Mapping[str, Any],
                composite: AbstractSet[str]) -> "set[int]":
    # when every object that could be taken back was, the set is the same
    sound = set(before) if len(found) == len(before) else set(map(id, map(_DEFINITION, found.values())))
    sound.update(sound_definitions(islice(built.values(), len(found), None), composite))
    return sound


def unchanged_built(definitions: Mapping[str, Any], built: Mapping[str, Any], sound: AbstractSet[int]
                    ) -> Dict[str, Any]:
    """The previous built objects (services or middlewares) that building ``definitions`` would give back
    unchanged, by name: the rule ``Builder.service`` and ``Builder.middleware`` apply one by one (an equal
    definition, not in error, not a composite kind: ``sound``, see :func:`sound_definitions`), asked first
    by identity in C, then by equality for the few definitions that are new objects (an edited file's)."""
    found = dict(built)
    if built.keys() != definitions.keys():  # compared without building a set (the usual answer: equal)
        for name in built.keys() - definitions.keys():
            del found[name]
    for name, value in compress(definitions.items(), map(not_, map(sound.__contains__, map(id, definitions.values())))):
        old = found.pop(name, None)
        if old is not None and id(old.definition) in sound and old.definition == value:
            found[name] = old
    return found


def reusable_routers(definitions: Mapping[str, Any], memo: ReuseMemo, pieces: Tuple[bool, Any, Any], *,
                     stale: AbstractSet[str]) -> "set[int]":
    """ids of the router definitions whose previous router can serve as is, and of that router's
    definition: it served without error from this very definition (``memo.serving``) or an equal one, and
    its service and every middleware are taken back unchanged (``pieces``: whether all of the previous
    ones were, then the services and the middlewares taken back, see :func:`unchanged_built`), so it wraps
    the very objects a rebuild would wrap. A middleware rebuilt because its options changed (a JWT secret
    rotated) is not taken back, so every router using it is rebuilt. ``stale``: names of routers put back
    as last good versions, rebuilt so they are marked stale."""
    values = list(definitions.values())
    same = list(map(memo.serving.__contains__, map(id, values)))
    all_kept, services, middlewares = pieces
    if all_kept:  # each router that served had its pieces in the previous configuration: all taken back
        ids = set(map(id, compress(values, same)))
        others = list(compress(values, map(not_, same)))
    else:
        kept = set(middlewares)
        usable = list(map(all, zip(map(services.__contains__, map(_SERVICE, values)),
                                   map(kept.issuperset, map(_MIDDLEWARES, values)))))
        ids = set(map(id, compress(values, map(all, zip(same, usable)))))
        others = list(compress(values, map(all, zip(map(not_, same), usable))))
    for definition in others:
        old = memo.by_name.get(definition.name)
        if old is not None and old.error is None and not old.stale and old.definition == definition:
            ids.update((id(definition), id(old.definition)))
    for name in stale:
        ids.discard(id(definitions.get(name)))
        ids.discard(id(memo.by_name.get(name, _MISSING).definition))
    return ids


def missing(names: Iterable[str], built: Mapping[str, Any]) -> Iterator[str]:
    """``names`` not (yet) in ``built``, in order; asked as the iteration reaches each name."""
    names = list(names)
    return compress(names, map(not_, map(built.__contains__, names)))
