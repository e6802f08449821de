"""The PLY lexer, built once at import; :func:`new_lexer` hands each compilation its own clone.

Anything the language does not have (single quotes, bare numbers, ``==``, a lone ``&``) is reported here
with a message that says what to write instead, rather than as a generic "illegal character".
"""
from __future__ import annotations

from ply import lex
from ply.yacc import NullLogger

from gatekeeper.errors import ExpressionError

tokens = ("NAME", "STRING", "AND", "OR", "NOT", "LPAREN", "RPAREN", "COMMA")

t_ignore = " \t\r\n\f\v"
t_AND = r"&&"
t_OR = r"\|\|"
t_NOT = r"!"
t_LPAREN = r"\("
t_RPAREN = r"\)"
t_COMMA = r","
t_NAME = r"[A-Za-z_][A-Za-z0-9_]*"

_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t"}


class StringToken(str):
    """A STRING token's value: the decoded text, remembering whether it was a backtick (raw) string."""

    __slots__ = ("raw",)
    raw: bool


def t_RAW_STRING(t: lex.LexToken) -> lex.LexToken:
    r"`[^`]*`"
    t.type = "STRING"
    t.value = _string_value(t.value[1:-1], raw=True)
    return t


def t_QUOTED_STRING(t: lex.LexToken) -> lex.LexToken:
    r'"(?:[^"\\]|\\.)*"'
    t.type = "STRING"
    t.value = _string_value(_unescape(t.value[1:-1], t), raw=False)
    return t


def _string_value(text: str, *, raw: bool) -> StringToken:
    value = StringToken(text)
    value.raw = raw
    return value


def _unescape(body: str, t: lex.LexToken) -> str:
    """Decode ``\\" \\\\ \\n \\t``; any other escape is an error pointing at its backslash."""
    if "\\" not in body:
        return body
    out = []
    i = 0
    while i < len(body):
        char = body[i]
        if char == "\\":
            escaped = body[i + 1]  # the token regexp guarantees a character follows
            if escaped not in _ESCAPES:
                raise ExpressionError(
                    f'unknown escape "\\{escaped}" in a double-quoted string (use backticks for raw text)',
                    t.lexer.lexdata, t.lexpos + 2 + i)
            out.append(_ESCAPES[escaped])
            i += 2
        else:
            out.append(char)
            i += 1
    return "".join(out)


def _explain(rest: str) -> str:
    """Why the text at this position is not part of the language."""
    char = rest[0]
    if char == "'":
        return "single quotes are not allowed: quote arguments with `backticks` or \"double quotes\""
    if char.isdigit() or (char in "+-." and rest[1:2].isdigit()):
        return "bare numbers are not allowed: arguments are strings, write `1`"
    if rest.startswith("=="):
        return 'unexpected "==": compare with a function such as Equals(`claim`, `value`)'
    if char in "&|":
        return f'unexpected "{char}": write "{char * 2}"'
    if char == "`":
        return "unterminated string: missing closing `"
    if char == '"':
        return 'unterminated string: missing closing "'
    return f"unexpected character {char!r}"


def t_error(t: lex.LexToken) -> None:
    raise ExpressionError(_explain(t.value), t.lexer.lexdata, t.lexpos + 1)


_LEXER = lex.lex(debug=False, optimize=False, errorlog=NullLogger())


def new_lexer(text: str) -> lex.Lexer:
    """A fresh lexer over ``text``, so that compilations never share position state."""
    lexer = _LEXER.clone()
    lexer.input(text)
    return lexer
