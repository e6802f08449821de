"""Reading manifest objects: case-insensitive field names, types, ``{{ env "NAME" }}``, positions in errors."""
from __future__ import annotations

import os
import re
from typing import Any, Dict, Iterable, List, Optional

from gatekeeper.config.manifests import Mapping
from gatekeeper.errors import ConfigError

_ENV = re.compile(r"""\{\{\s*env\s+"([^"]*)"\s*\}\}""")


def line_of(value: Any, key: Any = None) -> Optional[int]:
    """The line a mapping (or one of its keys) is on, when the loader recorded it."""
    if isinstance(value, Mapping):
        return value.line_of(key) if key is not None else value.line
    return None


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


def pick(obj: Any, allowed: Iterable[str], where: str) -> Dict[str, Any]:
    """Fields of a mapping keyed by their canonical name, matching names case-insensitively like Traefik.

    Unknown names are an error naming the path: ``http.routers.api: unknown field "rul"``.
    """
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type_name(obj)}", line=line_of(obj))
    canonical = {name.lower(): name for name in allowed}
    out: Dict[str, Any] = {}
    for key, value in obj.items():
        name = canonical.get(str(key).lower())
        if name is None:
            raise ConfigError(f"{where}: unknown field \"{key}\"", line=line_of(obj, key))
        if name in out:
            raise ConfigError(f"{where}: field \"{key}\" given twice", line=line_of(obj, key))
        out[name] = value
    return out


def type_name(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", Mapping: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def want_str(value: Any, where: str, *, empty_ok: bool = False) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"{where}: expected a string, got {type_name(value)}")
    text = str(value)
    if not text and not empty_ok:
        raise ConfigError(f"{where}: must not be empty")
    return text


def want_int(value: Any, where: str, *, minimum: Optional[int] = None) -> int:
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: expected a whole number, got {type_name(value)}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{where}: must be at least {minimum}")
    return value


def want_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ConfigError(f"{where}: expected true or false, got {type_name(value)}")


def want_list(value: Any, where: str) -> List[Any]:
    if isinstance(value, str):  # Traefik accepts a comma-separated string for lists in labels; files use lists
        return [value]
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list, got {type_name(value)}")
    return value


def want_str_list(value: Any, where: str) -> List[str]:
    return [want_str(v, f"{where}[{i}]") for i, v in enumerate(want_list(value, where))]


def want_str_map(value: Any, where: str) -> Dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type_name(value)}")
    return {want_str(k, where): want_str(v, f"{where}.{k}", empty_ok=True) if v is not None else ""
            for k, v in value.items()}
