"""Traefik's compress: gzip (and brotli) of answers worth compressing, streamed."""
from __future__ import annotations

from typing import Any, Mapping

from gatekeeper.errors import ConfigError
from gatekeeper.middlewares.base import Context, Wrapper


def compress(options: Mapping[str, Any], context: Context) -> Wrapper:
    """Not built yet: refused, so a manifest naming it fails closed."""
    raise ConfigError("compress: not supported yet")
