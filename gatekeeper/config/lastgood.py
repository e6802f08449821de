"""What survives a mistake: the last good version of a file, of an object, and compiled rules reused by text.

``compile.py`` calls these before building anything: a file that no longer parses keeps its previous documents
(:func:`with_last_good_files`), an object that no longer validates keeps its previous definition
(:func:`keep_last_good`), and a rule already compiled is not compiled again (:class:`Rules`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import AbstractSet, Callable, Dict, List, Mapping, MutableMapping, Optional, Set, Tuple

from gatekeeper.config.manifests import FileResult, Snapshot
from gatekeeper.config.model import Definitions, MiddlewareDef, RouterDef, ServiceDef
from gatekeeper.config.reuse import unseen
from gatekeeper.config.table import Config
from gatekeeper.errors import ConfigError, ExpressionError
from gatekeeper.expr import RequestView, compile_rule
from gatekeeper.options import did_you_mean

__all__ = ["LastGood", "Rules", "keep_last_good", "unknown_entry_points_in_error", "with_last_good_files"]


def with_last_good_files(snapshot: Snapshot, previous: Optional[Config],
                         broken: Mapping[str, ConfigError] = {}) -> Snapshot:
    """Files that fail to read or parse, hold a document of a broken shape (``broken``, by file), or turned
    blank keep the documents they had in the previous configuration.

    A blank file is most likely caught between the truncate and the write of an in-place save (``>``,
    many editors); taking it as "delete everything here" would drop a protected router, and its requests
    could fall through to a catch-all. Deleting the file is how its objects go away."""
    if previous is None:
        return snapshot
    before: Dict[str, FileResult] = {f.file: f for f in previous.snapshot.files}
    merged = []
    for result in snapshot.files:
        old = before.get(result.file)
        error = broken.get(result.file) if broken else result.error
        if error is None and result.blank and not broken:
            error = ConfigError("the file is empty (caught mid-write?); delete it to remove what it defined")
        if error is not None and old is not None and old.documents:
            err = error.located(file=result.file)
            err = ConfigError(err.reason + " (serving the last good version of this file)",
                              file=err.file, line=err.line, obj=err.obj)
            merged.append(replace(old, error=err))
        else:
            merged.append(result)
    return replace(snapshot, files=tuple(merged))


def unknown_entry_points_in_error(routers: MutableMapping[str, RouterDef], known: Optional[AbstractSet[str]],
                                  serving: AbstractSet[int] = frozenset()) -> List[ConfigError]:
    """Routers naming an entry point this gateway does not have (``known``; None: not known, as for
    ``check`` without ``--entrypoint``) are put in error, on every entry point: a typo (``wbe``) would
    otherwise serve the router on no listener, and what it protects would fall through to a catch-all. So
    its rule answers 503 everywhere, unless its last good version serves (:func:`keep_last_good`).
    ``serving``: as for :func:`keep_last_good` (those were checked when they were new)."""
    if not known:
        return []
    errors = []
    for router in list(unseen(routers.values(), serving)):
        name = router.name
        unknown = [ep for ep in router.entry_points if ep not in known]
        if not unknown:
            continue
        reason = (f'entryPoints: "{unknown[0]}" is not an entry point of this gateway'
                  f"{did_you_mean(unknown[0], known)} (it has {', '.join(sorted(known))}); answers 503 on every "
                  "entry point until fixed")
        routers[name] = replace(router, error=router.error or reason, entry_points=())
        errors.append(ConfigError(reason, file=router.source.file, line=router.line_of("entryPoints") or None,
                                  obj=f'router "{name}"'))
    return errors


class Rules:
    """Rule text -> compiled matcher, reusing the previous configuration's closures (a reload costs what
    changed); a rule that does not compile gives its ExpressionError. The previous configuration keeps its
    ``rules`` (what this held), trimmed to its routers' rules when it grows past twice their number."""

    def __init__(self, previous: Optional[Config]) -> None:
        self.known: Dict[str, "Callable[[RequestView], bool] | ExpressionError"] = {}
        if previous is not None:
            known = previous.rules
            if len(known) > 2 * len(previous.routers) + 1024:
                known = {r.definition.rule: r.matches for r in previous.routers}
            self.known.update(known)

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
                   previous: Optional[Config], serving: AbstractSet[int] = frozenset()) -> LastGood:
    """Put back the last good version of each object that failed validation (see :class:`LastGood`).

    ``serving``: ids of router definitions the previous configuration served without error; such a router
    needs no look (its rule compiled, it had no error), so a reload looks only at what changed."""
    out = LastGood(dict(defs.routers), dict(defs.middlewares), dict(defs.services))
    lazy: Dict[str, RouterDef] = {}

    def old_routers() -> Dict[str, RouterDef]:
        if previous is not None and not lazy:
            lazy.update((r.definition.identity, r.definition) for r in previous.routers
                        if r.definition.error is None)
        return lazy

    for kind, table in (("middleware", out.middlewares), ("service", out.services)):
        if previous is None or not any(failed_kind == kind for failed_kind, _ in failed):
            continue
        old = {b.definition.identity: b.definition for b in getattr(previous, kind + "s").values()}
        for (failed_kind, identity), _ in failed.items():
            if failed_kind == kind and identity in old and old[identity].name not in table:
                table[old[identity].name] = old[identity]
                out.stale.add((kind, old[identity].name))
    present = {d.identity for d in out.routers.values()} if failed else set()
    for definition in list(unseen(out.routers.values(), serving)):
        problem = rules.get(definition.rule)
        if isinstance(problem, ExpressionError):
            out.errors.append(ConfigError(f"rule: {problem.render()}").located(
                file=definition.source.file, line=definition.source.line or None,
                obj=f'router "{definition.name}"'))
        if definition.error is not None or isinstance(problem, ExpressionError):
            restore_router(out, definition, old_routers(), previous,
                           drop=isinstance(problem, ExpressionError))
    for (kind, identity), _ in failed.items():
        if kind == "router" and identity not in present and identity in old_routers():
            restore_router(out, None, old_routers(), previous, drop=False, identity=identity)
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

