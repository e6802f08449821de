"""Strict JSON for token headers and payloads.

Claims compare numbers as the JSON text they were written with (``1.0`` is not ``1``), so numbers are
kept as :class:`JSONNumber`, a ``str`` subclass holding the original text. Duplicate member names make
the document invalid: two parsers could read them two ways. ``NaN``/``Infinity`` are not JSON.

Documents are bounded before they are parsed: at most ``MAX_BYTES``, and at most ``MAX_DEPTH`` levels of
arrays and objects. Depth matters twice: Python's decoder recurses once per level (1,000 levels raise
``RecursionError``, which no caller expects), and so does everything that later walks the value (claims
functions, forwarded-header rendering). A token or a key set needs a handful of levels.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any, Dict, List, Tuple

MAX_DEPTH = 32
MAX_BYTES = 1 << 20

_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_SQUARE = bytes.maketrans(b"{}", b"[]")


class JSONNumber(str):
    """A JSON number kept as the exact text of the token (``"1e3"``, ``"1.0"``).

    ``float(n)`` gives its value where arithmetic is needed (``exp``, ``nbf``, ``iat``).
    """

    __slots__ = ()


class DuplicateKeyError(ValueError):
    """An object names the same member twice."""


class LimitError(ValueError):
    """A document larger or deeper than the bounds given to :func:`loads`."""


class TooDeepError(LimitError):
    """Arrays and objects nested deeper than allowed."""


class TooLargeError(LimitError):
    """More bytes than allowed."""


def _object_without_duplicates(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
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


@lru_cache(maxsize=8)
def _balanced_within(depth: int) -> "re.Pattern[bytes]":
    r"""Brackets only, balanced, nested at most ``depth`` deep: a regular language for a fixed depth,
    ``(?:\[(?:\[ ... \])*\])*``. Each character decides the path, so a mismatch fails in O(1) and the
    match is linear."""
    pattern = b""
    for _ in range(depth):
        pattern = rb"(?:\[" + pattern + rb"\])*"
    return re.compile(pattern)


def deeper_than(data: bytes, max_depth: int) -> bool:
    """Whether arrays and objects in the JSON ``data`` nest deeper than ``max_depth`` (brackets in strings
    do not count). Only C-speed operations, linear in the text: at most ~0.3 ms for a hostile 12 KB
    token, less than decoding a flat array of that size. (A Python character loop, repeated
    ``replace("[]", "")`` rounds, or a string regex that can fail and backtrack each cost milliseconds.)
    Meant for valid JSON; on text that is not, it may answer True, which refuses it all the same."""
    if b"\\" in data:  # escapes: drop \\ pairs first, then \" (left to right, as a JSON reader pairs them)
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(data.split(b'"')[::2])  # string contents are the odd pieces
    brackets = outside.translate(_SQUARE, _NOT_BRACKETS)
    return _balanced_within(max_depth).fullmatch(brackets) is None


def check_depth(data: bytes, max_depth: int = MAX_DEPTH) -> None:
    """``TooDeepError`` if ``data`` nests deeper than ``max_depth``. Counting brackets first costs ~1 us,
    so a document with no more brackets than that (every ordinary token) is never scanned."""
    if data.count(b"[") + data.count(b"{") > max_depth and deeper_than(data, max_depth):
        raise TooDeepError(f"arrays and objects nested deeper than {max_depth} levels")


def loads(text: "str | bytes", *, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """Parse strict JSON, numbers as :class:`JSONNumber`; raises ``ValueError`` on anything else,
    :class:`LimitError` (a ``ValueError``) for more than ``max_bytes`` or deeper than ``max_depth``."""
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    if len(data) > max_bytes:
        raise TooLargeError(f"larger than {max_bytes} bytes")
    check_depth(data, max_depth)
    try:
        return _DECODER.decode(data.decode("utf-8"))
    except RecursionError:  # not reachable within the bound above; kept so no caller ever sees it
        raise TooDeepError("arrays and objects nested too deeply") from None


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
