"""Property tests: random expressions against a reference evaluator; random text only ever raises ExpressionError."""
from __future__ import annotations

import json
from typing import Any, List, Tuple

from hypothesis import given, settings
from hypothesis import strategies as st

from gatekeeper.errors import ExpressionError
from gatekeeper.expr import compile_claims, compile_rule
from gatekeeper.jsontext import JSONNumber

# -- random claim documents --------------------------------------------------------------------------------
KEYS = ["a", "b", "a.b", "x\\y", "k"]
TEXTS = ["x", "y", "x y", "", "1", "true", " x ", "x,y"]
NUMBERS = ["1", "1.0", "1e3", "-2", "0"]

scalars = st.one_of(
    st.sampled_from(TEXTS),
    st.sampled_from(NUMBERS).map(JSONNumber),
    st.sampled_from([1, 1.0, 2.5]),
    st.booleans(),
    st.none(),
)
values = st.recursive(
    st.one_of(scalars, st.lists(scalars, max_size=3)),
    lambda inner: st.dictionaries(st.sampled_from(KEYS), inner, max_size=3),
    max_leaves=6,
)
documents = st.dictionaries(st.sampled_from(KEYS), values, max_size=4)

# -- random expressions as trees: ("call", name, path_keys, args) | ("not", t) | ("and"/"or", l, r) -------------
paths = st.lists(st.sampled_from(KEYS), min_size=1, max_size=2)
calls = st.one_of(
    st.tuples(st.just("Equals"), paths, st.tuples(st.sampled_from(TEXTS + NUMBERS + ["false"]))),
    st.tuples(st.just("Prefix"), paths, st.tuples(st.sampled_from(TEXTS))),
    st.tuples(st.just("Contains"), paths, st.tuples(st.sampled_from(TEXTS + NUMBERS))),
    st.tuples(st.just("SplitContains"), paths, st.tuples(st.sampled_from([" ", ",", "x"]), st.sampled_from(TEXTS))),
    st.tuples(st.just("OneOf"), paths, st.lists(st.sampled_from(TEXTS + NUMBERS), min_size=1, max_size=3)
              .map(tuple)),
).map(lambda c: ("call", *c))
trees = st.recursive(
    calls,
    lambda inner: st.one_of(st.tuples(st.just("not"), inner),
                            st.tuples(st.sampled_from(["and", "or"]), inner, inner)),
    max_leaves=8,
)

PRECEDENCE = {"or": 1, "and": 2, "not": 3, "call": 4}


def quote(text: str, raw: bool) -> str:
    if raw and "`" not in text:
        return f"`{text}`"
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


def render(tree: Tuple, draw_bool) -> str:
    """Text for a tree with only the parentheses precedence needs, plus random extra ones and whitespace."""
    kind = tree[0]
    if kind == "call":
        _, name, keys, args = tree
        path = ".".join(key.replace("\\", "\\\\").replace(".", "\\.") for key in keys)
        texts = [quote(path, draw_bool())] + [quote(arg, draw_bool()) for arg in args]
        return f"{name}({(',' + (' ' if draw_bool() else '')).join(texts)})"
    if kind == "not":
        return "!" + operand(tree[1], PRECEDENCE["not"], draw_bool)
    space = " " if draw_bool() else "\n "
    symbol = "&&" if kind == "and" else "||"
    return operand(tree[1], PRECEDENCE[kind], draw_bool) + f"{space}{symbol}{space}" + \
        operand(tree[2], PRECEDENCE[kind], draw_bool)


def operand(tree: Tuple, parent: int, draw_bool) -> str:
    text = render(tree, draw_bool)
    if PRECEDENCE[tree[0]] < parent or draw_bool():
        return f"({text})"
    return text


# -- the reference evaluator, written from the spec independently of gatekeeper.expr.claims -------------------
MISSING = object()


def lookup(document: dict, keys: List[str]) -> Any:
    node: Any = document
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return MISSING
        node = node[key]
    return node


def as_text(value: Any) -> Any:
    if type(value) is JSONNumber:
        return str.__str__(value)
    if type(value) is str:
        return value
    if type(value) is bool:
        return "true" if value else "false"
    if type(value) in (int, float):
        return json.dumps(value)
    return MISSING


def reference(tree: Tuple, document: dict) -> bool:
    kind = tree[0]
    if kind == "not":
        return not reference(tree[1], document)
    if kind == "and":
        return reference(tree[1], document) and reference(tree[2], document)
    if kind == "or":
        return reference(tree[1], document) or reference(tree[2], document)
    _, name, keys, args = tree
    value = lookup(document, keys)
    is_string = type(value) is str
    if name == "Equals":
        return as_text(value) == args[0]
    if name == "Prefix":
        return is_string and value.startswith(args[0])
    if name == "Contains":
        if isinstance(value, list):
            return args[0] in [as_text(element) for element in value]
        return is_string and args[0] in value
    if name == "SplitContains":
        return is_string and args[1] in [part.strip() for part in value.split(args[0])]
    elements = value if isinstance(value, list) else [value]
    return any(as_text(element) in args for element in elements)


@settings(max_examples=300, deadline=None)
@given(tree=trees, document=documents, data=st.data())
def test_compiled_claims_agree_with_reference(tree: Tuple, document: dict, data: st.DataObject) -> None:
    text = render(tree, lambda: data.draw(st.booleans()))
    assert compile_claims(text)(document) is reference(tree, document), text


LANGUAGE_TEXT = st.lists(st.sampled_from([
    *"()!&|`\"'\\, \n\t.=0-",
    "Host", "Equals", "PathPrefix", "OneOf", "ClientIP", "`a`", '"b"', "`/`", "`10.0.0.0/8`", "&&", "||", "and",
    "`[`", "x"]), max_size=20).map("".join)


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(st.text(max_size=40), LANGUAGE_TEXT))
def test_random_text_only_raises_expression_error(text: str) -> None:
    for compile_ in (compile_rule, compile_claims):
        try:
            compile_(text)
        except ExpressionError as exc:
            assert 1 <= exc.column <= len(text) + 1
            assert str(exc).count("\n") == 2 and str(exc).endswith("^")
