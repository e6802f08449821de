"""Tree -> nested closures, checking every call against a table of functions at compile time.

The same compiler serves claims (closures over a decoded payload) and router rules (closures over a
:class:`~gatekeeper.expr.request.RequestView`); only the table differs. Nothing here runs per request:
the closures it returns are the whole evaluation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Generic, Optional, Sequence, TypeVar

from gatekeeper.errors import ExpressionError
from gatekeeper.expr.parser import parse
from gatekeeper.expr.tree import AllOf, Arg, Call, Node, Not

S = TypeVar("S")  # what a language's closures look at: a claims payload, or a RequestView
Predicate = Callable[[S], bool]
MAX_DEPTH = 64  # of nested "!" / groups of alternating operators: deeper closures would risk RecursionError


class ArgumentError(ValueError):
    """Raised by a builder for a bad argument; ``offset`` points inside the argument's text when known."""

    def __init__(self, message: str, index: int, offset: Optional[int] = None) -> None:
        super().__init__(message)
        self.message = message
        self.index = index
        self.offset = offset


@dataclass(frozen=True)
class Signature(Generic[S]):
    """A function of the language: its argument counts and how to build its closure from its arguments."""

    name: str
    min_args: int
    max_args: Optional[int]  # None: any number from min_args
    build: Callable[[Sequence[str]], Predicate[S]]
    arg_names: str  # for messages: "path, value"

    def arity_error(self, got: int) -> Optional[str]:
        """The message for a call with ``got`` arguments, or None when the count is right."""
        if got >= self.min_args and (self.max_args is None or got <= self.max_args):
            return None
        if self.max_args is None:
            wanted = f"at least {self.min_args} arguments"
        elif self.min_args == self.max_args:
            wanted = f"{self.min_args} argument" + ("" if self.min_args == 1 else "s")
        else:
            wanted = f"{self.min_args} or {self.max_args} arguments"
        return f"{self.name}({self.arg_names}) takes {wanted}, got {got}"


@dataclass(frozen=True)
class Language(Generic[S]):
    """A function table plus the word used in messages ("function" for claims, "matcher" for rules)."""

    kind: str
    functions: Dict[str, Signature[S]]  # every accepted spelling -> signature
    foreign: Dict[str, str]  # names of the other language -> a hint for the message


def compile_expression(text: str, language: Language[S]) -> Predicate[S]:
    """Parse and compile ``text`` against ``language``; raises :class:`ExpressionError`."""
    return compile_tree(text, parse(text), language)


def compile_tree(text: str, tree: Node, language: Language[S]) -> Predicate[S]:
    """Compile the tree :func:`~gatekeeper.expr.parser.parse` made of ``text`` (kept for messages)."""
    return _Compiler(text, language).compile(tree, 0)


class _Compiler(Generic[S]):
    """One compilation: the text (for error messages) and the language whose table calls are checked against."""

    def __init__(self, text: str, language: Language[S]) -> None:
        self.text = text
        self.language = language

    def error(self, message: str, column: int) -> ExpressionError:
        return ExpressionError(message, self.text, column)

    def compile(self, node: Node, depth: int) -> Predicate[S]:
        if depth > MAX_DEPTH:
            raise self.error(f"expression nested too deeply (more than {MAX_DEPTH} levels)", node.column)
        if isinstance(node, Call):
            return self.call(node)
        if isinstance(node, Not):
            return _negate(self.compile(node.operand, depth + 1))
        parts = [self.compile(operand, depth + 1) for operand in node.operands]
        return _all_of(parts) if isinstance(node, AllOf) else _any_of(parts)

    def call(self, node: Call) -> Predicate[S]:
        signature = self.language.functions.get(node.name)
        if signature is None:
            hint = self.language.foreign.get(node.name, "")
            raise self.error(f'unknown {self.language.kind} "{node.name}"{hint}', node.column)
        problem = signature.arity_error(len(node.args))
        if problem:
            raise self.error(problem, node.column)
        try:
            return signature.build([arg.value for arg in node.args])
        except ArgumentError as exc:
            raise self.error(f"{signature.name}: {exc.message}", _column_of(node.args[exc.index], exc.offset)) from None


def _column_of(arg: Arg, offset: Optional[int]) -> int:
    """The column of a character inside an argument: exact for raw strings, the opening quote otherwise."""
    if offset is None or not arg.raw:
        return arg.column
    return arg.column + 1 + min(offset, len(arg.value))


def _negate(operand: Predicate[S]) -> Predicate[S]:
    return lambda subject: not operand(subject)


def _all_of(parts: Sequence[Predicate[S]]) -> Predicate[S]:
    """One closure for an n-ary ``&&``; two operands (the common case) skip the loop."""
    if len(parts) == 2:
        first, second = parts
        return lambda subject: first(subject) and second(subject)
    steps = tuple(parts)

    def all_of(subject: S) -> bool:
        for part in steps:  # noqa: SIM110 - a plain loop: all() over a generator costs more per request
            if not part(subject):
                return False
        return True

    return all_of


def _any_of(parts: Sequence[Predicate[S]]) -> Predicate[S]:
    """One closure for an n-ary ``||``; two operands (the common case) skip the loop."""
    if len(parts) == 2:
        first, second = parts
        return lambda subject: first(subject) or second(subject)
    steps = tuple(parts)

    def any_of(subject: S) -> bool:
        for part in steps:  # noqa: SIM110 - a plain loop: any() over a generator costs more per request
            if part(subject):
                return True
        return False

    return any_of
