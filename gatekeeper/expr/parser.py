"""The LALR grammar (PLY), built once at import, and :func:`parse` which turns text into a tree.

Syntax errors are explained from the token stream: the parser only knows "unexpected token", so a small
:class:`_TokenStream` remembers the previous token, the open parentheses and whether we are inside an
argument list, which is enough to say "missing \\")\\"", "use && instead of and" or "arguments are strings".
"""
from __future__ import annotations

import json
from typing import List, Optional, Tuple

from ply import lex, yacc

from gatekeeper.errors import ExpressionError
from gatekeeper.expr import shapes
from gatekeeper.expr.lexer import new_lexer, tokens  # noqa: F401  (PLY reads ``tokens`` from here)
from gatekeeper.expr.tree import AllOf, AnyOf, Arg, Call, Node, Not

precedence = (
    ("left", "OR"),
    ("left", "AND"),
    ("right", "NOT"),
)

_WORD_OPERATORS = {"and": "&&", "or": "||", "not": "!"}
_SHOWN = {"AND": '"&&"', "OR": '"||"', "NOT": '"!"', "LPAREN": '"("', "RPAREN": '")"', "COMMA": '","'}


def p_expr_or(p: yacc.YaccProduction) -> None:
    "expr : expr OR expr"
    p[0] = AnyOf(_operands(p[1], AnyOf) + _operands(p[3], AnyOf))


def p_expr_and(p: yacc.YaccProduction) -> None:
    "expr : expr AND expr"
    p[0] = AllOf(_operands(p[1], AllOf) + _operands(p[3], AllOf))


def p_expr_not(p: yacc.YaccProduction) -> None:
    "expr : NOT expr"
    p[0] = Not(p[2], p.lexpos(1) + 1)


def p_expr_group(p: yacc.YaccProduction) -> None:
    "expr : LPAREN expr RPAREN"
    p[0] = p[2]


def p_expr_call(p: yacc.YaccProduction) -> None:
    "expr : NAME LPAREN args RPAREN"
    p[0] = Call(p[1], tuple(p[3]), p.lexpos(1) + 1)


def p_expr_call_empty(p: yacc.YaccProduction) -> None:
    "expr : NAME LPAREN RPAREN"
    p[0] = Call(p[1], (), p.lexpos(1) + 1)


def p_args_first(p: yacc.YaccProduction) -> None:
    "args : STRING"
    p[0] = [Arg(str(p[1]), p.lexpos(1) + 1, p[1].raw)]


def p_args_more(p: yacc.YaccProduction) -> None:
    "args : args COMMA STRING"
    p[0] = p[1] + [Arg(str(p[3]), p.lexpos(3) + 1, p[3].raw)]


def _operands(node: Node, kind: type[AllOf] | type[AnyOf]) -> Tuple[Node, ...]:
    """Flatten chains of the same operator (both are associative) into one n-ary node."""
    return node.operands if isinstance(node, kind) else (node,)


class _UnexpectedEnd(Exception):
    """Raised by :func:`p_error` at end of input; :func:`parse` turns it into an ExpressionError."""


def p_error(tok: Optional[lex.LexToken]) -> None:
    if tok is None:
        raise _UnexpectedEnd()
    stream: _TokenStream = tok.lexer
    message, column = stream.explain(tok)
    raise ExpressionError(message, stream.text, column)


_PARSER = yacc.yacc(debug=False, write_tables=False, errorlog=yacc.NullLogger())
# LRParser.parse keeps its stacks in locals; the attributes it also sets (statestack, symstack, token)
# serve only error recovery (errok/restart), which this grammar never uses: p_error raises. So one parser
# serves concurrent compilations with no lock (a lock would also be wrong under gevent's monkey-patching,
# where threading.Lock becomes a greenlet lock that native threads must not share).


class _TokenStream:
    """Feeds the parser from a fresh lexer and keeps the context needed to explain a syntax error.

    ``previous`` is the token before the one the parser is looking at; ``open_parens`` and ``in_args``
    describe the input up to and including ``previous``.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.lexer = new_lexer(text)
        self.previous: Optional[lex.LexToken] = None
        self.current: Optional[lex.LexToken] = None
        self.open_parens: List[int] = []  # 1-based columns of "(" not yet closed
        self.in_args = False

    def token(self) -> Optional[lex.LexToken]:
        tok = self.lexer.token()
        if self.current is not None:
            self._account(self.current, self.previous)
        self.previous, self.current = self.current, tok
        if tok is not None:
            tok.lexer = self  # p_error reaches the stream through the token
        return tok

    def _account(self, tok: lex.LexToken, before: Optional[lex.LexToken]) -> None:
        if tok.type == "LPAREN":
            self.open_parens.append(tok.lexpos + 1)
            self.in_args = before is not None and before.type == "NAME"
        elif tok.type == "RPAREN":
            if self.open_parens:
                self.open_parens.pop()
            self.in_args = False

    def explain(self, tok: lex.LexToken) -> Tuple[str, int]:
        """Why ``tok`` cannot come after ``self.previous``, and the column to point at."""
        message = self._explain(tok)
        prev = self.previous
        if prev is not None and prev.type == "NAME" and prev.value.lower() == "not":
            return message, prev.lexpos + 1
        return message, tok.lexpos + 1

    def _explain(self, tok: lex.LexToken) -> str:
        prev = self.previous
        shown = _show(tok)
        if tok.type == "NAME" and tok.value.lower() in _WORD_OPERATORS:
            return f'unexpected "{tok.value}": write "{_WORD_OPERATORS[tok.value.lower()]}"'
        if prev is not None and prev.type == "NAME":
            if prev.value.lower() == "not":
                return f'unexpected "{prev.value}": write "!"'
            return f'expected "(" after {prev.value}, got {shown}'
        if self.in_args:
            if prev is not None and prev.type == "STRING":
                return f'expected "," or ")" after an argument, got {shown}'
            return f"arguments must be strings in `backticks` or \"double quotes\", got {shown}"
        if tok.type == "RPAREN" and not self.open_parens:
            return 'unbalanced parentheses: ")" without a matching "("'
        if prev is not None and prev.type == "RPAREN" and tok.type in ("NAME", "NOT", "LPAREN", "STRING"):
            return f'missing "&&" or "||" before {shown}'
        if tok.type == "STRING":
            return f"unexpected string {shown}: strings are only allowed as function arguments"
        return f"unexpected {shown}"

    def explain_end(self) -> ExpressionError:
        """The error for input that stops before the expression is complete."""
        prev = self.previous
        if prev is None:
            return ExpressionError("empty expression", self.text, 1)
        end = len(self.text.rstrip()) + 1
        if prev.type == "NAME":
            return ExpressionError(f'expected "(" after {prev.value}', self.text, end)
        if self.in_args:
            return ExpressionError('unterminated argument list: missing ")"', self.text, end)
        if prev.type in ("AND", "OR", "NOT"):
            return ExpressionError(f"expression ends after {_show(prev)}", self.text, prev.lexpos + 1)
        if self.open_parens:
            return ExpressionError('unbalanced parentheses: "(" is never closed', self.text, self.open_parens[-1])
        return ExpressionError("unexpected end of expression", self.text, end)


def _show(tok: lex.LexToken) -> str:
    if tok.type == "STRING":
        text = str(tok.value)
        short = text if len(text) <= 24 else text[:21] + "..."
        if tok.value.raw and short.isprintable():
            return f"`{short}`"
        return json.dumps(short, ensure_ascii=False)
    if tok.type == "NAME":
        return f'"{tok.value}"'
    return _SHOWN[tok.type]


def parse(text: str) -> Node:
    """Parse an expression into a tree; raises :class:`ExpressionError` with the column of the problem.

    A text of a shape parsed before (the same tokens with other strings: 10,000 tenants' rules) is built
    from that shape (:mod:`~gatekeeper.expr.shapes`); any other goes through the PLY parser.
    """
    if not isinstance(text, str):
        raise ExpressionError(f"expression must be a string, not {type(text).__name__}", repr(text), 1)
    if not text.strip():
        raise ExpressionError("empty expression", text, 1)
    tree = shapes.parse_by_shape(text)
    if tree is None:
        tree = parse_ply(text)
        shapes.learn(text, tree)
    return tree


def parse_ply(text: str) -> Node:
    """:func:`parse` by the PLY parser alone (the reference the shapes are checked against)."""
    stream = _TokenStream(text)
    try:
        tree: Node = _PARSER.parse(lexer=stream.lexer, tokenfunc=stream.token)
    except _UnexpectedEnd:
        raise stream.explain_end() from None
    return tree
