"""``{{ env "NAME" }}`` in manifest values (Traefik's file-provider templating); the field helpers themselves
(names, types, positions) are :mod:`gatekeeper.options`."""
from __future__ import annotations

import os
import re
from typing import Any

from gatekeeper.config.manifests import Mapping
from gatekeeper.errors import ConfigError

__all__ = ["expand_env"]

_ENV = re.compile(r"""\{\{\s*env\s+"([^"]*)"\s*\}\}""")


def expand_env(value: Any, path: str = "") -> Any:
    """Replace ``{{ env "NAME" }}`` in every string of value; an unset variable is a ConfigError."""
    if isinstance(value, str):
        def substitute(match: "re.Match[str]") -> str:
            name = match.group(1)
            if name not in os.environ:
                raise ConfigError(f"{path or 'value'}: environment variable {name} is not set")
            return os.environ[name]
        return _ENV.sub(substitute, value) if "{{" in value else value
    if isinstance(value, dict):
        out = Mapping((k, expand_env(v, f"{path}.{k}" if path else str(k))) for k, v in value.items())
        out.line, out.key_lines = getattr(value, "line", 0), getattr(value, "key_lines", {})
        return out
    if isinstance(value, list):
        return [expand_env(v, f"{path}[{i}]") for i, v in enumerate(value)]
    return value
