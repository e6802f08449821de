"""Bounds on a composed YAML document, so a hostile file cannot stall the reload greenlet or exhaust memory.

``manifests.py`` applies them: while composing with PyYAML's Python composer, and with :func:`check_graph` on
the node graph libyaml's C composer built (aliases are shared nodes there, so a billion-laughs file composes
in linear time and is refused before anything expands it).
"""
from __future__ import annotations

from typing import Any, Dict, List, Set, Tuple

import yaml

# A 527-byte "billion laughs" file (nested aliases) expands to 10^9 nodes: 60 s and 4 GB when walked.
# Aliases may bring in at most this many nodes beyond those the file spells out.
MAX_ALIAS_NODES = 100_000
MAX_DEPTH = 100            # nesting; PyYAML recurses per level (a RecursionError is not a YAMLError)


def refused(problem: str, mark: Any) -> yaml.composer.ComposerError:
    """A composition bound passed, reported as PyYAML reports its own errors (with the position)."""
    return yaml.composer.ComposerError(None, None, problem, mark)


def expanded_size(root: yaml.Node, sizes: Dict[int, int]) -> int:
    """Nodes under ``root`` counting each alias as a copy; ``sizes`` memoizes by node (iterative: no recursion)."""
    stack: List[Tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if children_done:
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children)
        else:
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(root)]


def _children(node: yaml.Node) -> List[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def check_graph(root: yaml.Node) -> None:
    """The bounds of ``manifests._Bounded`` on a composed document (iterative, each distinct node once).

    A node met again is an alias: its expanded size counts against :data:`MAX_ALIAS_NODES`, and one met
    inside itself is a recursive structure. Errors point at the collection holding the alias.
    """
    sizes: Dict[int, int] = {}
    seen: Set[int] = set()
    open_nodes: Set[int] = set()           # on the path from the root
    alias_nodes = 0
    stack: List[Tuple[yaml.Node, int, yaml.Node, bool]] = [(root, 1, root, False)]
    while stack:
        node, depth, parent, leaving = stack.pop()
        if leaving:
            open_nodes.discard(id(node))
            continue
        if id(node) in open_nodes:
            raise refused("an alias refers to a node that contains it (a recursive structure)", parent.start_mark)
        if id(node) in seen:
            alias_nodes += expanded_size(node, sizes)
            if alias_nodes > MAX_ALIAS_NODES:
                raise refused(f"aliases expand to more than {MAX_ALIAS_NODES:,} nodes (an alias bomb?); "
                              "refused: write the values out, or split the file", parent.start_mark)
            continue
        seen.add(id(node))
        if depth > MAX_DEPTH:
            raise refused(f"nested more than {MAX_DEPTH} levels deep", node.start_mark)
        children = _children(node)
        if children:
            open_nodes.add(id(node))
            stack.append((node, depth, parent, True))
            stack.extend((child, depth + 1, node, False) for child in reversed(children))


def check_depth(root: yaml.Node) -> None:
    """:func:`check_graph` for a document without aliases (a text with no ``*``: a tree), about twice as fast.

    Level by level, each level's nodes in document order: the first node past :data:`MAX_DEPTH` in that
    order is the first one :func:`check_graph`'s walk (document order, depth first) meets, so the error is
    the same, at the same line.
    """
    level = [root]
    for _ in range(MAX_DEPTH):
        level = [child for node in level if type(node.value) is list
                 for child in (_flat(node.value) if isinstance(node, yaml.MappingNode) else node.value)]
        if not level:
            return
    raise refused(f"nested more than {MAX_DEPTH} levels deep", level[0].start_mark)


def _flat(pairs: List[Tuple[yaml.Node, yaml.Node]]) -> List[yaml.Node]:
    return [n for pair in pairs for n in pair]
