"""Claims functions over payloads decoded by gatekeeper.jsontext: the documented vectors and our own tables."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from gatekeeper.errors import ExpressionError
from gatekeeper.expr import MISSING, compile_claim_path, compile_claims
from gatekeeper.jsontext import JSONNumber, loads

VECTORS_FILE = Path(__file__).resolve().parent / "data" / "claims-docs.json"  # from shared/spec/vectors
VECTORS = json.loads(VECTORS_FILE.read_text()) if VECTORS_FILE.exists() else None

PAYLOAD = loads("""{
  "str": "admin", "empty": "", "num": 1, "float": 1.0, "exp": 1e3, "neg": -2, "t": true, "f": false, "nul": null,
  "strs": ["office", "home"], "nums": [1, 2.0, 1e3], "bools": [true], "mixed": ["x", 7, false, null, ["y"], {"z": 1}],
  "nested": ["a", ["b"]], "obj": {"k": "v"}, "user": {"name": "John Snow", "status": "undead",
  "address": {"city": "Winterfell"}}, "scope": "reader writer  deploy", "csv": " a , b ,c", "colons": "a::b:c",
  "a.b": "dotted", "a": {"b": "nested-ab"}, "back\\\\slash": "one backslash", "x\\\\": {"y": "backslash then dot"},
  "dot.": {"": "never reached"}, "numtext": "1", "ref": "http://example.com/foo/bar"
}""")


def vector_cases():
    if VECTORS is None:
        return []
    return [pytest.param(case["expr"], case["want"], id=case["expr"]) for case in VECTORS["cases"]]


@pytest.mark.skipif(VECTORS is None, reason="tests/data/claims-docs.json not found")
@pytest.mark.parametrize("expression, want", vector_cases())
def test_documented_vectors(expression: str, want: bool) -> None:
    payload = loads(json.dumps(VECTORS["claims"]))
    assert compile_claims(expression)(payload) is want


TABLE = [
    # Equals: strings, numbers as written, booleans as true/false, never arrays/objects/null
    ("Equals(`str`, `admin`)", True),
    ("Equals(`str`, `Admin`)", False),
    ("Equals(`str`, `admi`)", False),
    ("Equals(`empty`, ``)", True),
    ("Equals(`num`, `1`)", True),
    ("Equals(`num`, `1.0`)", False),
    ("Equals(`float`, `1.0`)", True),
    ("Equals(`float`, `1`)", False),
    ("Equals(`exp`, `1e3`)", True),
    ("Equals(`exp`, `1000`)", False),
    ("Equals(`neg`, `-2`)", True),
    ("Equals(`numtext`, `1`)", True),
    ("Equals(`t`, `true`)", True),
    ("Equals(`t`, `True`)", False),
    ("Equals(`t`, `1`)", False),
    ("Equals(`f`, `false`)", True),
    ("Equals(`nul`, `null`)", False),
    ("Equals(`nul`, ``)", False),
    ("Equals(`strs`, `office`)", False),
    ("Equals(`obj`, `{\"k\":\"v\"}`)", False),
    ("Equals(`missing`, ``)", False),
    ("Equals(`user.name`, `John Snow`)", True),
    ("Equals(`user.address.city`, `Winterfell`)", True),
    ("Equals(`user.address`, `Winterfell`)", False),
    ("Equals(`user.name.first`, `John`)", False),
    ("Equals(`strs.0`, `office`)", False),
    # escaped paths: \. is a dot inside a name, \\ a backslash, other backslashes stay
    (r"Equals(`a\.b`, `dotted`)", True),
    ("Equals(`a.b`, `nested-ab`)", True),
    (r"Equals(`back\\slash`, `one backslash`)", True),
    (r"Equals(`back\slash`, `one backslash`)", True),
    (r"Equals(`x\\.y`, `backslash then dot`)", True),
    (r'Equals("a\\.b", "dotted")', True),
    # Prefix: strings only
    ("Prefix(`ref`, `http://example.com`)", True),
    ("Prefix(`ref`, `HTTP://`)", False),
    ("Prefix(`str`, ``)", True),
    ("Prefix(`num`, `1`)", False),
    ("Prefix(`strs`, `off`)", False),
    ("Prefix(`t`, `t`)", False),
    ("Prefix(`missing`, ``)", False),
    # Contains: substring of a string, or an array element that Equals
    ("Contains(`ref`, `/foo/`)", True),
    ("Contains(`ref`, `/FOO/`)", False),
    ("Contains(`strs`, `home`)", True),
    ("Contains(`strs`, `hom`)", False),
    ("Contains(`nums`, `2.0`)", True),
    ("Contains(`nums`, `2`)", False),
    ("Contains(`nums`, `1e3`)", True),
    ("Contains(`bools`, `true`)", True),
    ("Contains(`mixed`, `7`)", True),
    ("Contains(`mixed`, `false`)", True),
    ("Contains(`mixed`, `null`)", False),
    ("Contains(`mixed`, `y`)", False),
    ("Contains(`nested`, `b`)", False),
    ("Contains(`num`, `1`)", False),
    ("Contains(`obj`, `k`)", False),
    ("Contains(`missing`, ``)", False),
    # SplitContains: split on the whole separator, parts stripped
    ("SplitContains(`scope`, ` `, `writer`)", True),
    ("SplitContains(`scope`, ` `, `deploy`)", True),
    ("SplitContains(`scope`, ` `, `write`)", False),
    ("SplitContains(`csv`, `,`, `b`)", True),
    ("SplitContains(`csv`, `,`, ` b `)", False),
    ("SplitContains(`colons`, `::`, `b:c`)", True),
    ("SplitContains(`colons`, `::`, `b`)", False),
    ("SplitContains(`colons`, `:`, `b`)", True),
    ("SplitContains(`strs`, ` `, `home`)", False),
    ("SplitContains(`num`, `,`, `1`)", False),
    ("SplitContains(`missing`, `,`, ``)", False),
    # OneOf: the claim (or any element of an array claim) Equals one of the values
    ("OneOf(`str`, `ops`, `admin`)", True),
    ("OneOf(`str`, `ops`, `dev`)", False),
    ("OneOf(`strs`, `lab`, `home`)", True),
    ("OneOf(`strs`, `lab`)", False),
    ("OneOf(`num`, `1.0`, `1`)", True),
    ("OneOf(`nums`, `2`, `1000`)", False),
    ("OneOf(`nums`, `2`, `2.0`)", True),
    ("OneOf(`t`, `yes`, `true`)", True),
    ("OneOf(`bools`, `true`)", True),
    ("OneOf(`nul`, `null`, ``)", False),
    ("OneOf(`obj`, `k`, `v`)", False),
    ("OneOf(`missing`, ``)", False),
    # combinations
    ("Equals(`str`, `admin`) && Equals(`t`, `true`)", True),
    ("Equals(`str`, `x`) || Equals(`t`, `true`)", True),
    ("!Equals(`str`, `x`)", True),
    ("!Equals(`missing`, `x`)", True),
]


@pytest.mark.parametrize("expression, want", TABLE, ids=[case[0] for case in TABLE])
def test_functions(expression: str, want: bool) -> None:
    assert compile_claims(expression)(PAYLOAD) is want


@pytest.mark.parametrize("payload, expression, want", [
    ({"n": 1}, "Equals(`n`, `1`)", True),
    ({"n": 1.0}, "Equals(`n`, `1.0`)", True),
    ({"n": 1.5}, "OneOf(`n`, `1.5`)", True),
    ({"n": 1000.0}, "Equals(`n`, `1e3`)", False),
    ({"b": True}, "Equals(`b`, `true`)", True),
    ({"b": True}, "Equals(`b`, `1`)", False),
    ({"ns": [1, 2]}, "Contains(`ns`, `2`)", True),
    ({"ns": [False]}, "OneOf(`ns`, `false`)", True),
    ({"n": JSONNumber("1e3")}, "Equals(`n`, `1e3`)", True),
], ids=["int", "float", "float-oneof", "float-written-differently", "bool", "bool-not-number", "int-array",
        "bool-array", "jsonnumber"])
def test_plain_python_payloads(payload: dict, expression: str, want: bool) -> None:
    assert compile_claims(expression)(payload) is want


@pytest.mark.parametrize("expression, claims, want", [
    # A || B && C  is  A || (B && C)
    ("Equals(`a`, `1`) || Equals(`b`, `1`) && Equals(`c`, `1`)", {"a": "1", "b": "0", "c": "0"}, True),
    ("(Equals(`a`, `1`) || Equals(`b`, `1`)) && Equals(`c`, `1`)", {"a": "1", "b": "0", "c": "0"}, False),
    # !A && B  is  (!A) && B
    ("!Equals(`a`, `1`) && Equals(`b`, `1`)", {"a": "0", "b": "0"}, False),
    ("!(Equals(`a`, `1`) && Equals(`b`, `1`))", {"a": "0", "b": "0"}, True),
    ("!!Equals(`a`, `1`)", {"a": "1"}, True),
], ids=["and-over-or", "grouped-or", "not-over-and", "not-group", "double-not"])
def test_precedence(expression: str, claims: dict, want: bool) -> None:
    assert compile_claims(expression)(claims) is want


class CountingPayload(dict):
    """A payload recording which claims were looked up, to prove short-circuiting."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.looked_up: list = []

    def get(self, key, default=None):
        self.looked_up.append(key)
        return super().get(key, default)


@pytest.mark.parametrize("expression, claims, looked_up", [
    ("Equals(`a`, `1`) || Equals(`b`, `1`)", {"a": "1"}, ["a"]),
    ("Equals(`a`, `1`) && Equals(`b`, `1`)", {"a": "0"}, ["a"]),
    ("Equals(`a`, `0`) && Equals(`b`, `1`) && Equals(`c`, `1`)", {"a": "0", "b": "0"}, ["a", "b"]),
    ("Equals(`a`, `1`) || Equals(`b`, `1`) || Equals(`c`, `1`)", {"b": "1"}, ["a", "b"]),
    ("!Equals(`a`, `1`) || Equals(`b`, `1`)", {"a": "0"}, ["a"]),
], ids=["or-stops-at-true", "and-stops-at-false", "and-chain", "or-chain", "not-then-or"])
def test_short_circuit(expression: str, claims: dict, looked_up: list) -> None:
    payload = CountingPayload(claims)
    compile_claims(expression)(payload)
    assert payload.looked_up == looked_up


@pytest.mark.parametrize("path, want", [
    ("str", "admin"),
    ("user.name", "John Snow"),
    ("user.address", {"city": "Winterfell"}),
    ("num", "1"),
    ("nul", None),
    ("strs", ["office", "home"]),
    (r"a\.b", "dotted"),
    ("a.b", "nested-ab"),
    (r"back\\slash", "one backslash"),
    ("nope", MISSING),
    ("user.nope", MISSING),
    ("str.deeper", MISSING),
    ("strs.0", MISSING),
], ids=str)
def test_claim_path(path: str, want: object) -> None:
    assert compile_claim_path(path)(PAYLOAD) == want


def test_claim_path_keeps_number_text_and_missing_is_falsy() -> None:
    assert type(compile_claim_path("exp")(PAYLOAD)) is JSONNumber
    assert not MISSING and repr(MISSING) == "MISSING"
    assert compile_claim_path("a")("not a dict") is MISSING


@pytest.mark.parametrize("path, message, column", [
    ("", "empty claim path", 1),
    ("a..b", 'empty segment in claim path "a..b"', 3),
    (".a", 'empty segment in claim path ".a"', 1),
    ("a.", 'empty segment in claim path "a."', 2),
], ids=["empty", "double-dot", "leading-dot", "trailing-dot"])
def test_claim_path_errors(path: str, message: str, column: int) -> None:
    with pytest.raises(ExpressionError) as caught:
        compile_claim_path(path)
    assert (caught.value.message, caught.value.column) == (message, column)
