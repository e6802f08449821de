"""The :class:`Collector` every provider writes into: definitions by kind and name, and every problem.

Its own module so that the providers (``file``, ``kubernetes``) and ``collect`` (in the package) share it
without importing each other in a circle.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple, Union

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

    def add(self, kind: str, obj: Definition) -> None:
        table = getattr(self, kind + "s")
        if obj.name in table:
            first = table[obj.name].source
            self.error(ConfigError(f"defined again (first definition in {first} wins)",
                                   file=obj.source.file, line=obj.source.line, obj=f'{kind} "{obj.name}"'))
            return
        table[obj.name] = obj

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
        return Definitions(dict(self.routers), dict(self.middlewares), dict(self.services))


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
