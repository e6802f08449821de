"""What a router rule pins about the request's host, for the routing index (``config/table.py``).

A rule *pins* hosts when it can only match a request whose host is one of a known set: exact names, and
wildcard suffixes (``Host(`*.example.com`)`` is the suffix ``.example.com`` with exactly one label before
it). ``Host(a) && X`` pins ``a``; ``(Host(a) || Host(b)) && X`` pins ``a`` and ``b``; in an ``&&`` any
pinning operand is enough (the rule cannot match unless that operand does), in an ``||`` every operand
must pin. ``!``, ``HostRegexp``, ``Host(`*`)`` and every other matcher pin nothing (None: any host).

    >>> rule_hosts("Host(`API.example.com`) && PathPrefix(`/v1`)")
    HostPins(exact=frozenset({'api.example.com'}), suffixes=frozenset())
    >>> rule_hosts("(Host(`a.io`) || Host(`*.b.io`)) && Method(`GET`)")
    HostPins(exact=frozenset({'a.io'}), suffixes=frozenset({'.b.io'}))
    >>> rule_hosts("Host(`a.io`) || PathPrefix(`/x`)") is None
    True

Hosts are normalized by :func:`~gatekeeper.expr.matchers.host_argument`, the function ``Host`` itself uses,
so the index and the matcher can never disagree on a spelling.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, FrozenSet, Optional

from gatekeeper.expr.matchers import CANONICAL, MATCHERS, host_argument
from gatekeeper.expr.parser import parse
from gatekeeper.expr.tree import AllOf, AnyOf, Call, Node

_HOST = CANONICAL["Host"]
_MEMO_LIMIT = 65536  # rules remembered; past it the memo starts over (a reload re-derives what it needs)


@dataclass(frozen=True)
class HostPins:
    """The hosts a rule can match: exact names, and wildcard suffixes (``.example.com``)."""

    exact: FrozenSet[str]
    suffixes: FrozenSet[str]


def tree_hosts(node: Node) -> Optional[HostPins]:
    """The hosts pinned by a parsed (and compiled: arguments valid) rule, or None when any host may match."""
    if isinstance(node, Call):
        if MATCHERS.get(node.name) is not _HOST or len(node.args) != 1:
            return None
        host = host_argument(node.args[0].value)
        if host == "*":
            return None
        if host.startswith("*."):
            return HostPins(frozenset(), frozenset((host[1:],)))
        return HostPins(frozenset((host,)), frozenset())
    if isinstance(node, AllOf):
        for operand in node.operands:
            found = tree_hosts(operand)
            if found is not None:
                return found
        return None
    if isinstance(node, AnyOf):
        exact: FrozenSet[str] = frozenset()
        suffixes: FrozenSet[str] = frozenset()
        for operand in node.operands:
            found = tree_hosts(operand)
            if found is None:
                return None
            exact, suffixes = exact | found.exact, suffixes | found.suffixes
        return HostPins(exact, suffixes)
    return None  # Not: "!Host(a)" matches every other host


_memo: Dict[str, Optional[HostPins]] = {}


def remember(text: str, node: Node) -> None:
    """Called by ``compile_rule`` with the tree it just compiled, so the index need not parse it again."""
    if len(_memo) >= _MEMO_LIMIT:
        _memo.clear()
    _memo[text] = tree_hosts(node)


def rule_hosts(text: str) -> Optional[HostPins]:
    """The hosts pinned by a rule that compiles (see the module docstring); None when any host may match."""
    try:
        return _memo[text]
    except KeyError:
        remember(text, parse(text))
        return _memo[text]
