"""expr/shapes.py: a tree made from a remembered shape is the tree PLY makes, for any text; anything the
shape tokenizer does not know goes to PLY (so errors keep PLY's messages)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatekeeper.errors import ExpressionError
from gatekeeper.expr import shapes
from gatekeeper.expr.parser import parse, parse_ply


@pytest.mark.parametrize("text, other", [
    ("Host(`a.io`) && PathPrefix(`/api`)", "Host(`tenant-42.example.com`) && PathPrefix(`/v2/x`)"),
    ("Host(`a`)", "Host(``)"),
    ('Host("a") || !Path(`/`)', 'Host("bbb")   ||   !Path(`/x y`)'),
    ("(Host(`a`) || Host(`b`)) && Query(`k`, `v`)", "(Host(`c`) || Host(`d`)) && Query(`kk`, `vv`)"),
    ("A(`x`) && B(`y`) && C(`z`)", "\tA(`1`)\n&& B(`2`) && C(`3`) "),
], ids=["tenant", "empty-string", "quoted-and-not", "host-set", "n-ary-whitespace"])
def test_same_shape_same_tree(text: str, other: str) -> None:
    shapes.learn(text, parse_ply(text))
    assert shapes.parse_by_shape(other) == parse_ply(other)


@pytest.mark.parametrize("text", [
    'Host("a\\"b")', "Host('a')", "Host(`a`) & Path(`/`)", "Host(`a`) Path(`/`)", "Héllo(`a`)",
], ids=["escape", "single-quotes", "single-ampersand", "missing-operator", "non-ascii-name"])
def test_unusual_text_goes_to_ply(text: str) -> None:
    assert shapes.parse_by_shape(text) is None


def test_errors_keep_plys_message() -> None:
    with pytest.raises(ExpressionError) as first:
        parse("Host(`a`) Path(`/`)")
    shapes.learn("Host(`a`) && Path(`/`)", parse_ply("Host(`a`) && Path(`/`)"))
    with pytest.raises(ExpressionError) as again:
        parse("Host(`a`) Path(`/`)")
    assert str(again.value) == str(first.value)


names = st.sampled_from(["Host", "PathPrefix", "Method", "Header", "host"])
strings = st.one_of(st.text(alphabet="ab./ -*\\\"", max_size=4).map(lambda s: "`" + s.replace("`", "") + "`"),
                    st.text(alphabet="ab./ ", max_size=4).map(lambda s: f'"{s}"'))
space = st.sampled_from(["", " ", "  ", "\t", "\n"])
calls = st.tuples(names, st.lists(strings, min_size=0, max_size=2), space).map(
    lambda t: f"{t[0]}({', '.join(t[1])}){t[2]}")
texts = st.recursive(calls, lambda inner: st.one_of(
    st.tuples(inner, st.sampled_from(["&&", "||", "", "&"]), inner).map(lambda t: f"{t[0]} {t[1]} {t[2]}"),
    inner.map(lambda r: f"!{r}"),
    inner.map(lambda r: f"({r})"),
), max_leaves=5)


@settings(max_examples=300, deadline=None)
@given(st.lists(texts, min_size=2, max_size=6))
def test_shapes_agree_with_ply(batch: "list[str]") -> None:
    for text in batch:
        try:
            expected = parse_ply(text)
        except ExpressionError:
            with pytest.raises(ExpressionError):
                parse(text)
            continue
        shapes.learn(text, expected)
        assert parse(text) == expected
    for text in batch:  # now with every shape of the batch learned
        found = shapes.parse_by_shape(text)
        if found is not None:
            assert found == parse_ply(text)
