"""``{{ env "NAME" }}`` in manifest values (Traefik's file-provider templating); the field helpers themselves
(names, types, positions) are :mod:`gatekeeper.options`."""
from __future__ import annotations

import os
import re
from typing import Any, List, Union

from gatekeeper.config.manifests import Mapping
from gatekeeper.errors import ConfigError

__all__ = ["expand_env"]

_ENV = re.compile(r"""\{\{\s*env\s+"([^"]*)"\s*\}\}""")


class _Unset(Exception):
    """An unset variable, carrying the keys and indexes from the value's root (innermost first)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name
        self.parts: List[Union[str, int]] = []


def expand_env(value: Any, path: str = "") -> Any:
    """Replace ``{{ env "NAME" }}`` in every string of value; an unset variable is a ConfigError.

    What has no template is returned as it is (the same object): a cold load walks every router's and
    service's body, and building a copy of each (with its dotted path per field) cost more than the walk.
    A mapping read from a file whose text has no ``{{`` (``Mapping.templated`` False) is not walked at all.

    >>> body = Mapping(rule="Host(`a`)", servers=[{"url": "http://b"}])
    >>> expand_env(body) is body
    True
    >>> expand_env({"servers": [{"url": '{{ env "NO_SUCH_VARIABLE_HERE" }}'}]}, "http.services.s")
    Traceback (most recent call last):
    gatekeeper.errors.ConfigError: http.services.s.servers[0].url: environment variable NO_SUCH_VARIABLE_HERE is not set
    """
    try:
        return _expand(value)
    except _Unset as unset:
        for part in reversed(unset.parts):
            path = f"{path}[{part}]" if isinstance(part, int) else f"{path}.{part}" if path else str(part)
        raise ConfigError(f"{path or 'value'}: environment variable {unset.name} is not set") from None


def _substitute(match: "re.Match[str]") -> str:
    name = match.group(1)
    if name not in os.environ:
        raise _Unset(name)
    return os.environ[name]


def _expand(value: Any) -> Any:
    if isinstance(value, Mapping) and not value.templated:
        return value
    if isinstance(value, str):
        return _ENV.sub(_substitute, value) if "{{" in value else value
    if isinstance(value, dict):
        out = None
        for key, item in value.items():
            try:
                new = _expand(item)
            except _Unset as unset:
                unset.parts.append(str(key))
                raise
            if new is not item:
                if out is None:
                    out = Mapping(value)
                    out.line, out.key_lines = getattr(value, "line", 0), getattr(value, "key_lines", {})
                out[key] = new
        return value if out is None else out
    if isinstance(value, list):
        copy = None
        for index, item in enumerate(value):
            try:
                new = _expand(item)
            except _Unset as unset:
                unset.parts.append(index)
                raise
            if new is not item:
                if copy is None:
                    copy = list(value)
                copy[index] = new
        return value if copy is None else copy
    return value
