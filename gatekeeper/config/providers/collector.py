"""The :class:`Collector` every provider writes into: definitions by kind and name, and every problem.

Its own module so that the providers (``file``, ``kubernetes``) and ``collect`` (in the package) share it
without importing each other in a circle.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Sequence, Set, Tuple, Union

from gatekeeper.config.model import Definitions, MiddlewareDef, RouterDef, ServiceDef
from gatekeeper.errors import ConfigError

KINDS = ("router", "middleware", "service")
Definition = Union[RouterDef, MiddlewareDef, ServiceDef]
Operation = Tuple[str, Tuple[Any, ...]]   # a Collector method's name and its arguments


@dataclass
class Collector:
    """Definitions gathered so far, plus every problem found, in file order."""

    routers: Dict[str, RouterDef] = field(default_factory=dict)
    middlewares: Dict[str, MiddlewareDef] = field(default_factory=dict)
    services: Dict[str, ServiceDef] = field(default_factory=dict)
    errors: List[ConfigError] = field(default_factory=list)
    # objects that failed validation, by (kind, qualified name): compile keeps their last good version
    failed: Dict[Tuple[str, str], ConfigError] = field(default_factory=dict)
    # the same by (kind, identity): a Kubernetes route is known by its IngressRoute and position
    failed_keys: Dict[Tuple[str, str], ConfigError] = field(default_factory=dict)
    # files with a document whose structure is broken (no object can be named): compile keeps the file's
    # last good version, as for a file that does not parse; the first such error of each file
    broken_files: Dict[str, ConfigError] = field(default_factory=dict)
    # names defined twice with different contents: no version from this snapshot serves (fail closed)
    conflicted: Set[Tuple[str, str]] = field(default_factory=set)

    def add(self, kind: str, obj: Definition) -> None:
        """A definition; a name already taken is a conflict unless both definitions say the same thing.

        Which of two different definitions was meant cannot be known, and the one in the file that sorts
        first is not a safe guess: a file added beside ``api.yaml`` could redefine ``jwt`` or ``api`` and
        open the route. So neither serves: see :meth:`conflict`.
        """
        table = getattr(self, kind + "s")
        first = table.get(obj.name)
        if first is None and (kind, obj.name) not in self.conflicted:
            table[obj.name] = obj
            return
        if first is not None and same_definition(first, obj):
            self.error(defined_at(kind, obj, f"defined again, the same way (the definition in {first.source} serves)"))
            return
        self.conflict(kind, obj.name, defined_at(kind, obj, (
            f"defined again, differently (first definition in {first.source if first else 'an earlier file'}): "
            "neither definition serves until one is renamed or removed; names are global across conf.d "
            "(Kubernetes objects are namespace-name@kubernetescrd)")))

    def conflict(self, kind: str, name: str, err: ConfigError) -> None:
        """No definition of ``name`` from this snapshot serves: compile keeps its last good version; without
        one a router answers 503 for what its first definition's rule matches, and the routers that use a
        middleware or service of that name answer 503 (both are in error)."""
        self.conflicted.add((kind, name))
        table = getattr(self, kind + "s")
        first = table.pop(name, None)
        if kind == "router" and first is not None:
            table[name] = replace(first, error=err.reason)
        self.fail(kind, name, err, key=first.identity if first is not None else "")

    def failed_elsewhere(self) -> None:
        """A name that failed to validate in one place and is defined validly in another is a conflict too:
        the valid one may be the stray copy. (A router salvaged from its own failure is in error already.)"""
        for kind, name in list(self.failed):
            found = getattr(self, kind + "s").get(name)
            if found is not None and (kind, name) not in self.conflicted \
                    and not (kind == "router" and found.error is not None):
                self.conflict(kind, name, ConfigError(
                    f"defined again in {found.source}, while this definition is in error: neither serves until "
                    "one is fixed, renamed or removed", file=self.failed[kind, name].file,
                    line=self.failed[kind, name].line, obj=f'{kind} "{name}"'))

    def error(self, err: ConfigError) -> None:
        self.errors.append(err)

    def broken(self, err: ConfigError) -> None:
        """A document whose shape is wrong (``htp:``, a ``spec`` that is not a mapping): none of its objects
        can be read, so none may be taken as deleted."""
        self.errors.append(err)
        if err.file:
            self.broken_files.setdefault(err.file, err)

    def fail(self, kind: str, name: str, err: ConfigError, key: str = "") -> None:
        """An object that is defined but invalid: reported, and remembered so it is not taken as deleted.

        ``key`` is its identity when its name derives from content (or could not be read at all: ``name``
        empty); compile keeps the last good version by ``key or name``.
        """
        self.errors.append(err)
        if name:
            self.failed.setdefault((kind, name), err)
        self.failed_keys.setdefault((kind, key or name), err)

    def definitions(self) -> Definitions:
        """The tables themselves, not copies (10,000 routers: a copy costs a reload about a millisecond); the
        collector is done with once they are asked for."""
        return Definitions(self.routers, self.middlewares, self.services)

    def replay(self, recorded: "Recorded") -> None:
        """Do again what :class:`Recorder` wrote down. When no name it adds is taken yet (no duplicate to
        report), its definitions go in by one ``dict.update`` per kind, in C: a reload of 10,000 routers
        replays 20,000 unchanged definitions. Otherwise one call per operation, so duplicates are reported
        exactly as the first time (the same errors in the same order)."""
        tables = [(getattr(self, kind + "s"), added) for kind, added in recorded.added]
        if recorded.batch is not None and not self.conflicted \
                and all(table.keys().isdisjoint(added) for table, added in tables):
            for table, added in tables:
                table.update(added)
            operations: Sequence[Operation] = recorded.batch
        else:
            operations = recorded.ops
        for op, args in operations:
            getattr(self, op)(*args)


def defined_at(kind: str, obj: Definition, reason: str) -> ConfigError:
    """``reason`` about ``obj``, located where it is defined."""
    return ConfigError(reason, file=obj.source.file, line=obj.source.line, obj=f'{kind} "{obj.name}"')


def same_definition(first: Definition, second: Definition) -> bool:
    """Whether two definitions of one name say the same thing, wherever they are written."""
    return type(first) is type(second) and replace(second, source=first.source) == first


class Recorder(Collector):
    """A Collector that only writes down what was done to it."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: List[Operation] = []

    def add(self, kind: str, obj: Definition) -> None:
        self.ops.append(("add", (kind, obj)))

    def error(self, err: ConfigError) -> None:
        self.ops.append(("error", (err,)))

    def broken(self, err: ConfigError) -> None:
        self.ops.append(("broken", (err,)))

    def fail(self, kind: str, name: str, err: ConfigError, key: str = "") -> None:
        self.ops.append(("fail", (kind, name, err, key)))

    def recorded(self) -> "Recorded":
        """What was written down, with the adds grouped by kind for :meth:`Collector.replay`."""
        added: Dict[str, Dict[str, Definition]] = {}
        batch: "List[Operation] | None" = []
        for op, args in self.ops:
            if op != "add":
                assert batch is not None
                batch.append((op, args))
                continue
            kind, obj = args
            table = added.setdefault(kind, {})
            if obj.name in table:  # a name defined twice in one file: reported by replaying one by one
                batch = None
                break
            table[obj.name] = obj
        return Recorded(tuple(self.ops), tuple(added.items()), None if batch is None else tuple(batch))


@dataclass(frozen=True)
class Recorded:
    """What reading one file did to a Collector: every operation in order (``ops``); and, unless the file
    defines a name twice, its definitions by kind in order (``added``) and the other operations
    (``batch``: errors and failures), which replayed after them give the same Collector."""

    ops: Tuple[Operation, ...]
    added: Tuple[Tuple[str, Dict[str, Definition]], ...]
    batch: "Tuple[Operation, ...] | None"
