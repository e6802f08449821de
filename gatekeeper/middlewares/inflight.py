"""Traefik's inFlightReq: at most ``amount`` requests at once per source."""
from __future__ import annotations

from typing import Any, Mapping

from gatekeeper.errors import ConfigError
from gatekeeper.middlewares.base import Context, Wrapper


def in_flight_req(options: Mapping[str, Any], context: Context) -> Wrapper:
    """Not built yet: refused, so a manifest naming it fails closed."""
    raise ConfigError("in_flight_req: not supported yet")
