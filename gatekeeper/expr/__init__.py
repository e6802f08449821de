"""The one expression language of router rules and JWT claims: PLY grammar, tree, closures.

    >>> from gatekeeper.expr import compile_rule, compile_claims, RequestView
    >>> compile_claims("Equals(`grp`, `admin`)")({"grp": "admin"})
    True

Text is parsed once, when a configuration loads, and compiled into plain closures; a request never
touches the parser. See docs/expressions.md for the language reference.
"""
from __future__ import annotations

from gatekeeper.expr.claims import MISSING, compile_claim_path
from gatekeeper.expr.languages import compile_claims, compile_rule
from gatekeeper.expr.request import RequestView, routing_path

__all__ = ["MISSING", "RequestView", "compile_claim_path", "compile_claims", "compile_rule", "routing_path"]
