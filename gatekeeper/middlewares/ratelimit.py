"""Traefik's rateLimit (in process, or shared through Redis) and Traefik Hub's plugin.distributedRateLimit."""
from __future__ import annotations

from typing import Any, Mapping

from gatekeeper.errors import ConfigError
from gatekeeper.middlewares.base import Context, Wrapper


def rate_limit(options: Mapping[str, Any], context: Context) -> Wrapper:
    """Not built yet: refused, so a manifest naming it fails closed."""
    raise ConfigError("rate_limit: not supported yet")


def distributed_rate_limit(options: Mapping[str, Any], context: Context) -> Wrapper:
    """Not built yet: refused, so a manifest naming it fails closed."""
    raise ConfigError("distributed_rate_limit: not supported yet")
