"""Traefik's redirectScheme and redirectRegex."""
from __future__ import annotations

from typing import Any, Mapping

from gatekeeper.errors import ConfigError
from gatekeeper.middlewares.base import Context, Wrapper


def redirect_scheme(options: Mapping[str, Any], context: Context) -> Wrapper:
    """Not built yet: refused, so a manifest naming it fails closed."""
    raise ConfigError("redirect_scheme: not supported yet")


def redirect_regex(options: Mapping[str, Any], context: Context) -> Wrapper:
    """Not built yet: refused, so a manifest naming it fails closed."""
    raise ConfigError("redirect_regex: not supported yet")
