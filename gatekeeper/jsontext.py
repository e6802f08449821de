"""Strict JSON for token headers and payloads.

Claims compare numbers as the JSON text they were written with (``1.0`` is not ``1``), so numbers are
kept as :class:`JSONNumber`, a ``str`` subclass holding the original text. Duplicate member names make
the document invalid: two parsers could read them two ways. ``NaN``/``Infinity`` are not JSON.
"""
from __future__ import annotations

import json
from typing import Any, List, Tuple


class JSONNumber(str):
    """A JSON number kept as the exact text of the token (``"1e3"``, ``"1.0"``).

    ``float(n)`` gives its value where arithmetic is needed (``exp``, ``nbf``, ``iat``).
    """

    __slots__ = ()


class DuplicateKeyError(ValueError):
    """An object names the same member twice."""


def _object_without_duplicates(pairs: List[Tuple[str, Any]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKeyError(f"duplicate member {key!r}")
            seen.add(key)
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(
    object_pairs_hook=_object_without_duplicates,
    parse_int=JSONNumber,
    parse_float=JSONNumber,
    parse_constant=_reject_constant,
)


def loads(text: "str | bytes") -> Any:
    """Parse strict JSON, numbers as :class:`JSONNumber`; raises ``ValueError`` on anything else."""
    if isinstance(text, (bytes, bytearray)):
        text = text.decode("utf-8")
    return _DECODER.decode(text)


def number_value(value: Any) -> float:
    """The numeric value of a JSON number claim; ``TypeError`` for anything that is not a number."""
    if isinstance(value, JSONNumber):
        return float(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise TypeError("not a number")


def format_value(value: Any) -> str:
    """A claim as a header value: strings as-is, numbers as written, booleans true/false,
    arrays joined with ``, ``, objects as compact JSON, null as empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):  # JSONNumber included: its text as written
        return str.__str__(value)
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if isinstance(value, list):
        return ", ".join(format_value(v) for v in value)
    return compact(value)


def compact(value: Any) -> str:
    """Compact JSON with no whitespace, numbers written exactly as they came in."""
    if isinstance(value, JSONNumber):
        return str.__str__(value)
    if isinstance(value, dict):
        return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + compact(v) for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(compact(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)
