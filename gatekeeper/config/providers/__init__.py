"""Documents of both shapes -> :class:`~gatekeeper.model.Definitions`, collecting every error.

``collect(snapshot)`` hands each document to the provider that understands its shape (Traefik's file provider:
a top-level ``http``; Kubernetes: ``apiVersion`` + ``kind``) and merges what they define. Names are global;
the first definition in sorted file order wins and a later one is reported as a duplicate.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from gatekeeper.config.manifests import Document, FileResult, Snapshot
from gatekeeper.config.model import Definitions, MiddlewareDef, RouterDef, ServiceDef
from gatekeeper.errors import ConfigError

KINDS = ("router", "middleware", "service")


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

    def add(self, kind: str, obj: "RouterDef | MiddlewareDef | ServiceDef") -> None:
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


def collect(snapshot: Snapshot) -> Collector:
    """Read every document of a snapshot into definitions; file read/parse errors are reported too."""
    from gatekeeper.config.providers import kubernetes as kube_provider

    out = Collector()
    kube_docs: List[Document] = []
    for problem in snapshot.problems:
        out.error(problem)
    for result in snapshot.files:
        if result.error is not None:
            out.error(result.error)
        kube_docs.extend(d for d in result.documents if document_shape(d) == "kubernetes")
        for op, args in file_operations(result):
            getattr(out, op)(*args)
    kube_provider.read_documents(kube_docs, out)
    return out


# (file, digest, documents id) -> what reading its non-Kubernetes documents did to a Collector. A file whose
# bytes did not change gives the same definitions, so a reload of 1,000 routers re-reads only what changed
# (measured: 46 ms -> 11 ms for a 1,000-router reload). Replaying in file order keeps duplicate reports exact.
_FILE_OPS: Dict[Tuple[str, str, int], List[Tuple[str, tuple]]] = {}
_FILE_OPS_LIMIT = 4096


class _Recorder(Collector):
    """A Collector that only writes down what was done to it."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: List[Tuple[str, tuple]] = []

    def add(self, kind, obj) -> None:  # type: ignore[override]
        self.ops.append(("add", (kind, obj)))

    def error(self, err) -> None:  # type: ignore[override]
        self.ops.append(("error", (err,)))

    def broken(self, err) -> None:  # type: ignore[override]
        self.ops.append(("broken", (err,)))

    def fail(self, kind, name, err, key="") -> None:  # type: ignore[override]
        self.ops.append(("fail", (kind, name, err, key)))


def file_operations(result: FileResult) -> List[Tuple[str, tuple]]:
    """The Collector calls the file-provider documents of one file make (cached by content)."""
    from gatekeeper.config.providers import file as file_provider

    key = (result.file, result.digest, len(result.documents))
    cached = _FILE_OPS.get(key) if result.digest else None
    if cached is not None:
        return cached
    recorder = _Recorder()
    for doc in result.documents:
        shape = document_shape(doc)
        if shape == "file":
            file_provider.read_document(doc, recorder)
        elif shape is None:
            recorder.broken(ConfigError(shape_problem(doc), file=doc.file, line=doc.line))
    if result.digest:
        if len(_FILE_OPS) >= _FILE_OPS_LIMIT:
            _FILE_OPS.clear()
        _FILE_OPS[key] = recorder.ops
    return recorder.ops


def document_shape(doc: Document) -> Optional[str]:
    data = doc.data
    if not isinstance(data, dict):
        return None
    if "apiVersion" in data and "kind" in data:
        return "kubernetes"
    if any(str(k).lower() in ("http", "tcp", "udp", "tls") for k in data):
        return "file"
    if list(data) == ["keys"] and isinstance(data["keys"], list):
        return "jwks"
    return None


def shape_problem(doc: Document) -> str:
    if not isinstance(doc.data, dict):
        return "expected a mapping with `http:` (Traefik file provider) or `apiVersion`/`kind` (Kubernetes)"
    keys = ", ".join(str(k) for k in list(doc.data)[:5])
    return f"not a manifest gatekeeper reads (top-level keys: {keys}); expected `http:` or `apiVersion`/`kind`"
