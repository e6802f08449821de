"""Parsing by shape: the tree of a rule whose shape (its tokens, string values left out) was parsed before.

A conf.d of 10,000 tenants holds 10,000 rules ``Host(`tN.example.com`) && PathPrefix(`/api`)`` that differ
only in their strings. The LALR parser's tree depends on the token kinds and the function names alone, so
the tree of one is the tree of all with other strings and columns: :func:`parse_by_shape` tokenizes with one
regular expression, looks the shape up, and fills the remembered builder with this text's strings and
columns (about 10x cheaper than PLY). Anything unusual (a backslash escape, a character the language does not
have, a shape never seen, a syntax error) returns None, and the caller parses with PLY, which explains errors.

    >>> from gatekeeper.expr.parser import parse
    >>> learn("Host(`a.io`) && Path(`/`)", parse("Host(`a.io`) && Path(`/`)"))
    >>> parse_by_shape("Host(`b.io`)  && Path(`/x`)") == parse("Host(`b.io`)  && Path(`/x`)")
    True
"""
from __future__ import annotations

import re
from typing import Callable, Dict, List, Optional, Tuple

from gatekeeper.expr.tree import AllOf, AnyOf, Arg, Call, Node, Not

# The lexer's tokens (lexer.py), strings without escapes only; whitespace is exactly its t_ignore.
_TOKEN = re.compile(r"[ \t\r\n\f\v]*(?:(&&|\|\||[!(),])|([A-Za-z_][A-Za-z0-9_]*)|`([^`]*)`|\"([^\"\\]*)\")")
_TRAILING = re.compile(r"[ \t\r\n\f\v]*\Z")
_LIMIT = 1024  # shapes remembered; past it the table starts over

Token = Tuple[str, int, bool]  # (text or string value, 1-based column, raw string): Arg's fields, in order
Builder = Callable[[List[Token]], Node]  # a shape's tree, filled with one text's tokens

_builders: Dict[str, Builder] = {}


def _tokens(text: str) -> Optional[Tuple[str, List[Token]]]:
    """The shape key and the tokens of ``text``, or None when it needs the real lexer."""
    tokens: List[Token] = []
    key: List[str] = []
    pos = 0
    match = _TOKEN.match
    while True:
        found = match(text, pos)
        if found is None:
            break
        operator, name, raw, quoted = found.groups()
        if operator is not None:
            key.append(operator)
            tokens.append((operator, found.start(1) + 1, False))
        elif name is not None:
            key.append(name)
            tokens.append((name, found.start(2) + 1, False))
        elif raw is not None:  # a string's column is its opening quote's (start of the body - 1, 1-based)
            key.append("`")
            tokens.append((raw, found.start(3), True))
        else:
            key.append("`")
            tokens.append((quoted, found.start(4), False))
        pos = found.end()
    if _TRAILING.match(text, pos) is None:
        return None
    return " ".join(key), tokens


def parse_by_shape(text: str) -> Optional[Node]:
    """The tree of ``text`` from a remembered shape, or None (then parse with PLY and :func:`learn`)."""
    scanned = _tokens(text)
    if scanned is None:
        return None
    build = _builders.get(scanned[0])
    return build(scanned[1]) if build is not None else None


def learn(text: str, tree: Node) -> None:
    """Remember the shape of ``text``, which PLY parsed into ``tree``."""
    scanned = _tokens(text)
    if scanned is None:
        return
    key, tokens = scanned
    by_column = {column: index for index, (_, column, _) in enumerate(tokens)}
    try:
        build = _builder(tree, by_column)
    except KeyError:  # a column that is no token's: do not guess
        return
    if build(tokens) != tree:
        return
    if len(_builders) >= _LIMIT:
        _builders.clear()
    _builders[key] = build


def _builder(node: Node, by_column: Dict[int, int]) -> Builder:
    """The shape of ``node`` as a closure over token positions (compiled once per shape, as rules are)."""
    if isinstance(node, Call):
        name = by_column[node.column]
        args = tuple(by_column[arg.column] for arg in node.args)
        if len(args) == 1:
            (arg,) = args
            return lambda t: Call(t[name][0], (Arg(*t[arg]),), t[name][1])
        return lambda t: Call(t[name][0], tuple([Arg(*t[i]) for i in args]), t[name][1])
    if isinstance(node, Not):
        bang, operand = by_column[node.column], _builder(node.operand, by_column)
        return lambda t: Not(operand(t), t[bang][1])
    parts = tuple(_builder(operand, by_column) for operand in node.operands)
    if isinstance(node, AllOf):
        return lambda t: AllOf(tuple([part(t) for part in parts]))
    return lambda t: AnyOf(tuple([part(t) for part in parts]))
