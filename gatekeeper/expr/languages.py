"""The two languages on the one grammar: claims functions and router matchers, and their entry points."""
from __future__ import annotations

from typing import Callable

from gatekeeper.expr import hosts
from gatekeeper.expr.claims import FUNCTIONS, Payload
from gatekeeper.expr.compiler import Language, compile_expression, compile_tree
from gatekeeper.expr.matchers import MATCHERS
from gatekeeper.expr.parser import parse
from gatekeeper.expr.request import RequestView

CLAIMS: Language[Payload] = Language("function", FUNCTIONS, {
    name: f" ({sig.name} is a router matcher, not a claims function)" for name, sig in MATCHERS.items()})
RULES: Language[RequestView] = Language("matcher", MATCHERS, {
    name: f" ({name} is a claims function, not a router matcher)" for name in FUNCTIONS})


def compile_claims(text: str) -> Callable[[Payload], bool]:
    """Compile a JWT ``claims`` expression into a predicate over a decoded payload.

        >>> allowed = compile_claims("Equals(`grp`, `admin`) || OneOf(`roles`, `ops`, `dev`)")
        >>> allowed({"grp": "user", "roles": ["dev"]})
        True

    Raises :class:`~gatekeeper.errors.ExpressionError` (message, expression, column).
    """
    return compile_expression(text, CLAIMS)


def compile_rule(text: str) -> Callable[[RequestView], bool]:
    """Compile a router ``rule`` into a predicate over a :class:`RequestView`.

        >>> matches = compile_rule("Host(`api.example.com`) && PathPrefix(`/v1`)")
        >>> matches(RequestView({"HTTP_HOST": "api.example.com", "RAW_URI": "/v1/users"}))
        True

    Raises :class:`~gatekeeper.errors.ExpressionError` (message, expression, column). The hosts the rule
    pins are remembered on the way (:func:`~gatekeeper.expr.hosts.rule_hosts`), for the routing index.
    """
    tree = parse(text)
    matches = compile_tree(text, tree, RULES)
    hosts.remember(text, tree)
    return matches
