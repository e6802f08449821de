"""The parse tree: a few small immutable node classes, one per construct of the language.

``&&`` and ``||`` chains are kept n-ary (``A && B && C`` is one :class:`AllOf` with three operands) so
that a long chain compiles to one loop instead of a tower of nested closures.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple, Union


@dataclass(frozen=True)
class Arg:
    """A string argument as written; ``raw`` for backtick strings, whose text maps 1:1 onto columns."""

    value: str
    column: int
    raw: bool


@dataclass(frozen=True)
class Call:
    """``Name(args...)``; ``column`` is the column of the name."""

    name: str
    args: Tuple[Arg, ...]
    column: int


@dataclass(frozen=True)
class Not:
    """``!operand``; ``column`` is the column of the ``!``."""

    operand: "Node"
    column: int


@dataclass(frozen=True)
class AllOf:
    """``a && b && ...``: true when every operand is (evaluated left to right, stopping at the first false)."""

    operands: Tuple["Node", ...]

    @property
    def column(self) -> int:
        return self.operands[0].column


@dataclass(frozen=True)
class AnyOf:
    """``a || b || ...``: true when some operand is (evaluated left to right, stopping at the first true)."""

    operands: Tuple["Node", ...]

    @property
    def column(self) -> int:
        return self.operands[0].column


Node = Union[Call, Not, AllOf, AnyOf]
