"""Kubernetes manifests (Middleware, IngressRoute, Secret, Service, Endpoints, EndpointSlice)."""
from __future__ import annotations

from typing import List

from ..manifests import Document
from . import Collector


def read_documents(docs: List[Document], out: Collector) -> None:
    """Placeholder until the Kubernetes provider lands: other kinds are skipped silently, as Traefik does."""
    return None
