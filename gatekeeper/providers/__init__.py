"""Documents of both shapes -> :class:`~gatekeeper.model.Definitions`, collecting every error.

``collect(snapshot)`` hands each document to the provider that understands its shape (Traefik's file provider:
a top-level ``http``; Kubernetes: ``apiVersion`` + ``kind``) and merges what they define. Names are global;
the first definition in sorted file order wins and a later one is reported as a duplicate.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from ..errors import ConfigError
from ..manifests import Document, Snapshot
from ..model import Definitions, MiddlewareDef, RouterDef, ServiceDef

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

    def fail(self, kind: str, name: str, err: ConfigError) -> None:
        """An object that is defined but invalid: reported, and remembered so it is not taken as deleted."""
        self.errors.append(err)
        self.failed.setdefault((kind, name), err)

    def definitions(self) -> Definitions:
        return Definitions(dict(self.routers), dict(self.middlewares), dict(self.services))


def collect(snapshot: Snapshot) -> Collector:
    """Read every document of a snapshot into definitions; file read/parse errors are reported too."""
    from . import file as file_provider
    from . import kubernetes as kube_provider

    out = Collector()
    kube_docs: List[Document] = []
    for result in snapshot.files:
        if result.error is not None:
            out.error(result.error)
        for doc in result.documents:
            shape = document_shape(doc)
            if shape == "kubernetes":
                kube_docs.append(doc)
            elif shape == "file":
                file_provider.read_document(doc, out)
            elif shape == "jwks":
                continue  # a key file beside the manifests that use it (jwksFile: keys.json)
            else:
                out.error(ConfigError(shape_problem(doc), file=doc.file, line=doc.line))
    kube_provider.read_documents(kube_docs, out)
    return out


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
