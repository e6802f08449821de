"""Reading manifest objects: ``{{ env "NAME" }}`` here; names, types and positions from ``gatekeeper.options``
(re-exported, so the providers read every field helper from one place)."""
from __future__ import annotations

import os
import re
from typing import Any

from gatekeeper.config.manifests import Mapping
from gatekeeper.errors import ConfigError
from gatekeeper.options import (
    line_of,
    pick,
    type_name,
    want_bool,
    want_int,
    want_list,
    want_str,
    want_str_list,
    want_str_map,
)

__all__ = ["expand_env", "line_of", "pick", "type_name", "want_bool", "want_int", "want_list", "want_str",
           "want_str_list", "want_str_map"]

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
