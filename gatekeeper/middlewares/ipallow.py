"""Traefik's ipAllowList: only clients from ``sourceRange``."""
from __future__ import annotations

from typing import Any, Mapping

from gatekeeper.errors import ConfigError
from gatekeeper.middlewares.base import Context, Wrapper


def ip_allow_list(options: Mapping[str, Any], context: Context) -> Wrapper:
    """Not built yet: refused, so a manifest naming it fails closed."""
    raise ConfigError("ip_allow_list: not supported yet")
