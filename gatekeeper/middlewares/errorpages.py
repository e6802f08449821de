"""Traefik's errors: error answers replaced by a page from another service."""
from __future__ import annotations

from typing import Any, Mapping

from gatekeeper.errors import ConfigError
from gatekeeper.middlewares.base import Context, Wrapper


def error_pages(options: Mapping[str, Any], context: Context) -> Wrapper:
    """Not built yet: refused, so a manifest naming it fails closed."""
    raise ConfigError("error_pages: not supported yet")
