"""A YAML syntax error explained: the line and column, the line itself with a caret, and a hint.

PyYAML's words (``expected <block end>, but found '<block mapping start>'``, libyaml's ``did not find
expected key``) name the parser's state, not the mistake. Almost every one in a hand-written conf.d file is an
indentation slip, a tab, or ``key:value`` without its space, so :func:`explain` looks at the text for those
and says which. The line shown never carries a secret: a value whose key sounds like one (``signingSecret``,
``password``, a Kubernetes ``Secret``'s data) and long base64-like runs are masked.

    >>> text = "http:\\n  routers:\\n    api:\\n      rule: Path(`/`)\\n     service: web\\n"
    >>> print(explain(text, "did not find expected key", 4, 5, context_line=2))  # doctest: +NORMALIZE_WHITESPACE
    did not find expected key (line 5, column 6)
         5 |      service: web
           |      ^
      hint: line 5 is indented 5 spaces, but the keys under line 3 start at 6 (line 4): keys of one
      mapping line up exactly; indent it like its siblings
"""
from __future__ import annotations

import re
from typing import List, Optional

_KEY_LINE = re.compile(r"(\s*(?:-\s+)?[^\s:#'\"][^:#]*?:)(\s+)(\S.*)$")
_NO_SPACE = re.compile(r"\s*(?:-\s+)?([A-Za-z_][\w.-]*):(?![\s/]|$)")
_SECRET_KEY = re.compile(r"secret|passw|token|key|credential|auth|cookie|private|cert|data", re.IGNORECASE)
_OPAQUE = re.compile(r"[A-Za-z0-9+/=_-]{24,}|://[^/\s]*@")  # a long base64-like run; a URL with user:password@
# a secret-sounding key inside the value: a flow mapping or a one-line JSON file (`{"signingSecret": "..."}`)
_INNER_SECRET_KEY = re.compile(r"(?:secret|passw|token|key|credential|auth|cookie|private|cert)[\w-]*[\"']?\s*:",
                               re.IGNORECASE)
_SECRET_KIND = re.compile(r"^kind:\s*Secret\s*$", re.MULTILINE)


def explain(text: str, problem: str, line: int, column: int, context_line: Optional[int] = None) -> str:
    """The message for a parser error at 0-based ``line``/``column`` of ``text`` (``context_line``: where the
    construct being parsed started, when the parser said)."""
    lines = text.splitlines()
    message = f"{problem} (line {line + 1}, column {column + 1})"
    if line < len(lines):
        shown = masked(lines[line], bool(_SECRET_KIND.search(text))).replace("\t", " ")
        gutter = f"{line + 1:>6} | "
        message += f"\n{gutter}{shown}\n{' ' * (len(gutter) - 2)}| {' ' * column}^"
    hint = hint_for(lines, problem, line, column, context_line)
    return message + (f"\n  hint: {hint}" if hint else "")


def masked(line: str, secret_file: bool) -> str:
    """``line`` with the value masked when it may be a credential.

    >>> masked("      signingSecret: mysuperlongsecret", False)
    '      signingSecret: ***'
    >>> masked("      rule: Path(`/`)", False)
    '      rule: Path(`/`)'
    >>> masked("  - url: http://user:pass@10.0.0.1/", False)
    '  - url: ***'
    >>> masked('{"http": {"middlewares": {"a": {"plugin": {"jwt": {"signingSecret": "s3"}}}}}', False)
    '{"http": ***'
    >>> masked("      middlewares: [jwt-auth]", False)
    '      middlewares: [jwt-auth]'
    """
    match = _KEY_LINE.match(line)
    key, value = (match.group(1), match.group(3)) if match else ("", line)
    if secret_file or _SECRET_KEY.search(key) or _OPAQUE.search(value) or _INNER_SECRET_KEY.search(value):
        return (match.group(1) + match.group(2) if match else line[:len(line) - len(line.lstrip())]) + "***"
    return line


def hint_for(lines: List[str], problem: str, line: int, column: int, context_line: Optional[int]) -> str:
    """What the mistake most likely is, in plain words; ``""`` when the text shows none of the common ones."""
    here = lines[line] if line < len(lines) else ""
    if "\t" in here[:column + 1] or "'\\t'" in problem or ("cannot start any token" in problem and "\t" in here):
        return (f"line {line + 1} has a tab character: YAML indents with spaces only (replace the tab with "
                "spaces)")
    start = context_line if context_line is not None and context_line <= line else max(line - 1, 0)
    for number in range(start, min(line, len(lines) - 1) + 1):
        slip = _NO_SPACE.match(lines[number])
        if slip is not None:
            return (f'line {number + 1}: "{slip.group(1)}:" has no space after the colon, so YAML reads the '
                    f'line as one string: write "{slip.group(1)}: ..."')
    if line >= len(lines) or not here.strip():
        return ""
    return _indentation_hint(lines, line)


def _indentation_hint(lines: List[str], line: int) -> str:
    """A key indented deeper than the key above it (which already has a value), or not like the first key
    under its parent (the nearest line above indented less)."""
    indent = _indent(lines[line])
    above = [(n, lines[n]) for n in range(line - 1, -1, -1) if lines[n].strip() and
             not lines[n].lstrip().startswith("#")]
    if above:
        number, previous = above[0]
        has_value = _KEY_LINE.match(previous) is not None
        if indent > _indent(previous) and has_value:
            return (f"line {line + 1} is indented deeper ({indent} spaces) than line {number + 1} "
                    f"({_indent(previous)}), which already has a value: line it up with its siblings, or write "
                    "the value on its own line if it is a mapping; a value containing \": \" must be quoted")
    parent = next(((n, text) for n, text in above if _indent(text) < indent), None)
    if parent is None:
        return ""
    children = [(n, text) for n, text in above if n > parent[0]]
    if children and _indent(children[-1][1]) != indent:
        first, text = children[-1]
        return (f"line {line + 1} is indented {indent} spaces, but the keys under line {parent[0] + 1} start at "
                f"{_indent(text)} (line {first + 1}): keys of one mapping line up exactly; indent it like its siblings")
    return ""


def _indent(text: str) -> int:
    return len(text) - len(text.lstrip(" "))
