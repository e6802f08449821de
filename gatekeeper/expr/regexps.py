"""Regular expressions of router rules: RE2, linear in the input whatever the pattern, as Traefik's Go regexps.

Python's ``re`` backtracks: ``^/files/(\\w+/?)+$`` against ``/files/aaaa...a!`` took 5.5 s of CPU on one
request and stalled every other client (gevent runs one thread). RE2 answers in time linear in the text,
and its syntax is Go's, so a Traefik rule means the same here. Patterns that need backtracking
(backreferences, lookaround) are refused when the configuration loads.

    >>> matches = compile_search(r"^/users/[0-9]+$")
    >>> matches("/users/42"), matches("/users/42\\n"), matches("/users/x")
    (True, False, False)

The public ``re2`` wrapper of google-re2 builds a match object per call (4.6 us for a path pattern against
0.23 us for ``re``); a routing decision only needs "does it match", so the closures call the compiled RE2
object of its extension module directly (0.7 us).
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

try:
    import re2
    from re2 import _re2
except ImportError as exc:  # pragma: no cover - google-re2 is an install requirement
    raise ImportError("gatekeeper needs google-re2 for router regexps: pip install 'google-re2>=1.1,<2'") from exc

HINT = "RE2 syntax, as Go's regexp: no backreferences or lookaround"
_UNANCHORED = _re2.RE2.Anchor.UNANCHORED


class RegexpError(ValueError):
    """A pattern RE2 refuses; ``position`` is the index of the offending character in the pattern, if known."""

    def __init__(self, message: str, position: Optional[int]) -> None:
        super().__init__(message)
        self.message = message
        self.position = position


def _options() -> "re2.Options":
    options = re2.Options()
    options.log_errors = False  # RE2 would print every refused pattern to stderr
    options.never_capture = True  # only "does it match" is ever asked: no submatch bookkeeping
    # The lazy DFA grows its cache with the inputs it sees, up to this budget: 20 state-heavy patterns
    # (`[ab]*a[ab]{20}c`) fed random text grew by 42 MiB at RE2's 8 MiB default, 8.8 MiB at 2 MiB, at
    # the same speed. Everyday patterns compile in a few KiB; `\pL{1000}` is too large at either budget.
    options.max_mem = 2 << 20
    return options


_OPTIONS = _options()


def compile_search(pattern: str) -> Callable[[str], bool]:
    """A predicate true when ``pattern`` matches somewhere in the text (Go's ``MatchString``); anchor with
    ``^``...``$`` for a whole match. Raises :class:`RegexpError` for a pattern RE2 does not accept."""
    try:
        encoded = pattern.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RegexpError(f"not valid text at character {exc.start} ({HINT})", exc.start) from None
    regexp = _re2.RE2(encoded, _OPTIONS)
    if not regexp.ok():
        raise RegexpError(*_describe(pattern, regexp.error()))
    match = regexp.Match

    def search(text: str) -> bool:
        try:
            data = text.encode()
        except UnicodeEncodeError:  # a lone surrogate (not from a WSGI server): match, never raise per request
            data = text.encode("utf-8", "surrogatepass")
        start: int = match(_UNANCHORED, data, 0, len(data))[0][0]  # -1: no match
        return start >= 0

    return search


def compile_capturing(pattern: str) -> Any:
    """A compiled RE2 regexp over bytes, with submatches (``search``, ``groupindex``), for middlewares that
    rewrite with ``$1``/``${name}``; :class:`RegexpError` as :func:`compile_search`."""
    encoded = pattern.encode("utf-8", "surrogatepass")
    options = re2.Options()
    options.log_errors, options.max_mem = False, _OPTIONS.max_mem
    checked = _re2.RE2(encoded, options)
    if not checked.ok():
        raise RegexpError(*_describe(pattern, checked.error()))
    return re2.compile(encoded, options)


def _describe(pattern: str, error: bytes) -> Tuple[str, Optional[int]]:
    """RE2's ``"code: fragment"`` -> a message with the hint, and where in the pattern the problem is."""
    text = error.decode("utf-8", "replace")
    code, _, fragment = text.partition(": ")
    if code == "missing )":
        return f"missing ): this ( is never closed ({HINT})", _unbalanced(pattern)[0]
    if code == "unexpected )":
        return f"unexpected ): no ( before it to close ({HINT})", _unbalanced(pattern)[1]
    if code == "trailing \\":
        return f"trailing \\ at the end of the pattern ({HINT})", len(pattern) - 1
    if code.startswith("pattern too large"):
        return f"pattern too large for RE2's memory budget: simplify it or split the rule ({HINT})", None
    found = pattern.find(fragment) if fragment else -1
    advice = _ADVICE.get(fragment if code == "invalid escape sequence" else code, "")
    message = f"{code}: {fragment}{advice}" if fragment else f"{code}{advice}"
    return f"{message} ({HINT})", found if found >= 0 else None


_ADVICE = {
    "\\Z": ": write \\z for the end of the text",
    "invalid repetition size": ": at most 1000, nested counts multiplied",
}


def _unbalanced(pattern: str) -> Tuple[Optional[int], Optional[int]]:
    """(index of the first ``(`` never closed, index of the first ``)`` without an opening one), skipping
    escapes, ``\\Q...\\E`` and character classes, for the caret under a parenthesis error."""
    open_at = []
    stray = None
    i, end = 0, len(pattern)
    while i < end:
        char = pattern[i]
        if char == "\\":
            if pattern.startswith("\\Q", i):
                close = pattern.find("\\E", i + 2)
                i = end if close < 0 else close + 2
                continue
            i += 2
            continue
        if char == "[":
            i = _class_end(pattern, i)
            continue
        if char == "(":
            open_at.append(i)
        elif char == ")":
            if open_at:
                open_at.pop()
            elif stray is None:
                stray = i
        i += 1
    return (open_at[0] if open_at else None), stray


def _class_end(pattern: str, start: int) -> int:
    """The index after the ``]`` closing the class opened at ``start`` (``[]a]`` and ``[[:alpha:]]`` too)."""
    i = start + 1
    if pattern.startswith("^", i):
        i += 1
    if pattern.startswith("]", i):
        i += 1
    while i < len(pattern):
        if pattern[i] == "\\":
            i += 2
        elif pattern.startswith("[:", i) and pattern.find(":]", i + 2) > 0:
            i = pattern.find(":]", i + 2) + 2
        elif pattern[i] == "]":
            return i + 1
        else:
            i += 1
    return len(pattern)
