"""Claims functions: ``Equals``, ``Prefix``, ``Contains``, ``SplitContains``, ``OneOf`` over a JWT payload.

Payloads come from :func:`gatekeeper.jsontext.loads`, where numbers are :class:`JSONNumber` (a ``str``
subclass holding the JSON text), so a claim "is a string" only when ``type(v) is str``; a number's text
compares as written (``1.0`` is not ``1``). Plain ``int``/``float`` (payloads built in Python) compare as
``json.dumps`` writes them.

    >>> from gatekeeper.expr import compile_claims
    >>> compile_claims("OneOf(`roles`, `ops`, `dev`)")({"roles": ["dev", "qa"]})
    True
"""
from __future__ import annotations

import json
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple

from gatekeeper.errors import ExpressionError
from gatekeeper.expr.compiler import ArgumentError, Predicate, Signature


class _Missing:
    """The value of a claim path that leads nowhere; falsy, and distinct from JSON ``null`` (None)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING = _Missing()
Payload = Dict[str, Any]  # a decoded JWT payload, as jsontext.loads returns it
Getter = Callable[[Payload], object]
Claims = Predicate[Payload]


# -- claim paths ------------------------------------------------------------------------------------------

def split_claim_path(path: str) -> Tuple[List[str], Optional[Tuple[str, int]]]:
    """``a.b\\.c`` -> (["a", "b.c"], None), or ([], (message, 0-based offset)) when it is not a path.

    ``\\.`` is a literal dot, ``\\\\`` a literal backslash, a backslash before anything else stays.
    """
    if path == "":
        return [], ("empty claim path", 0)
    keys: List[str] = []
    current: List[str] = []
    i = 0
    while i < len(path):
        char = path[i]
        if char == "\\" and path[i + 1:i + 2] in (".", "\\"):
            current.append(path[i + 1])
            i += 2
            continue
        if char == ".":
            if not current:
                return [], (f"empty segment in claim path {_shown(path)}", i)
            keys.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    if not current:
        return [], (f"empty segment in claim path {_shown(path)}", len(path) - 1)
    keys.append("".join(current))
    return keys, None


def _shown(path: str) -> str:
    """A path quoted for a one-line message."""
    return f'"{path}"' if path.isprintable() else json.dumps(path, ensure_ascii=False)


def compile_claim_path(path: str) -> Getter:
    """A function returning the value at a dotted claim path in a payload, or :data:`MISSING`.

    Each step must be an object (no array indexing). The last value is returned as it is, objects included
    (callers such as ``forwardHeaders`` format it); the claims functions treat an object as no match.

        >>> compile_claim_path(r"user.name")({"user": {"name": "John Snow"}})
        'John Snow'
    """
    keys, problem = split_claim_path(path)
    if problem:
        message, offset = problem
        raise ExpressionError(message, path, offset + 1)
    return _getter(keys)


def _getter(keys: Sequence[str]) -> Getter:
    if len(keys) == 1:
        (key,) = keys

        def get_one(payload: Payload) -> object:
            return payload.get(key, MISSING) if isinstance(payload, dict) else MISSING

        return get_one
    steps = tuple(keys)

    def get_nested(payload: Payload) -> object:
        node: object = payload
        for key in steps:
            if not isinstance(node, dict):
                return MISSING
            node = node.get(key, MISSING)
        return node

    return get_nested


def _path_argument(path: str) -> Getter:
    keys, problem = split_claim_path(path)
    if problem:
        message, offset = problem
        raise ArgumentError(message, 0, offset)
    return _getter(keys)


# -- comparison -------------------------------------------------------------------------------------------

def scalar_text(value: object) -> Optional[str]:
    """The text ``Equals`` compares: strings as-is, numbers as written, booleans true/false, else None."""
    if isinstance(value, str):  # str, and JSONNumber whose text is the number as written
        return value
    if value is True:
        return "true"
    if value is False:
        return "false"
    if type(value) in (int, float):
        return json.dumps(value)
    return None


def _equals(args: Sequence[str]) -> Claims:
    get, want = _path_argument(args[0]), args[1]

    def equals(payload: Payload) -> bool:
        value = get(payload)
        if isinstance(value, str):
            return value == want
        return scalar_text(value) == want

    return equals


def _prefix(args: Sequence[str]) -> Claims:
    get, prefix = _path_argument(args[0]), args[1]

    def prefix_of(payload: Payload) -> bool:
        value = get(payload)
        return type(value) is str and value.startswith(prefix)

    return prefix_of


def _contains(args: Sequence[str]) -> Claims:
    get, want = _path_argument(args[0]), args[1]

    def contains(payload: Payload) -> bool:
        value = get(payload)
        if type(value) is str:
            return want in value
        if isinstance(value, list):
            return any(scalar_text(element) == want for element in value)
        return False

    return contains


def _split_contains(args: Sequence[str]) -> Claims:
    get, separator, want = _path_argument(args[0]), args[1], args[2]
    if separator == "":
        raise ArgumentError("the separator must not be empty", 1)

    def split_contains(payload: Payload) -> bool:
        value = get(payload)
        if type(value) is not str:
            return False
        return any(part.strip() == want for part in value.split(separator))

    return split_contains


def _one_of(args: Sequence[str]) -> Claims:
    get = _path_argument(args[0])
    wanted: FrozenSet[str] = frozenset(args[1:])

    def one_of(payload: Payload) -> bool:
        value = get(payload)
        if isinstance(value, list):
            return any(scalar_text(element) in wanted for element in value)
        return scalar_text(value) in wanted

    return one_of


FUNCTIONS: Dict[str, Signature[Payload]] = {
    sig.name: sig
    for sig in (
        Signature("Equals", 2, 2, _equals, "path, value"),
        Signature("Prefix", 2, 2, _prefix, "path, prefix"),
        Signature("Contains", 2, 2, _contains, "path, value"),
        Signature("SplitContains", 3, 3, _split_contains, "path, separator, value"),
        Signature("OneOf", 2, None, _one_of, "path, value, ..."),
    )
}

