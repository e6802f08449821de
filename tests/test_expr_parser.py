"""The grammar: trees, precedence, both string forms, error messages with columns, no noise, re-entrancy."""
from __future__ import annotations

import subprocess
import sys

import pytest
from gevent.threadpool import ThreadPool

from gatekeeper.errors import ExpressionError
from gatekeeper.expr import compile_claims, compile_rule
from gatekeeper.expr.parser import parse
from gatekeeper.expr.tree import AllOf, AnyOf, Arg, Call, Not


def call(name: str, column: int, *args: Arg) -> Call:
    return Call(name, tuple(args), column)


@pytest.mark.parametrize("text, tree", [
    ("A()", call("A", 1)),
    ("A(`x`)", call("A", 1, Arg("x", 3, True))),
    ('A("x")', call("A", 1, Arg("x", 3, False))),
    ("A(`x`, \"y\")", call("A", 1, Arg("x", 3, True), Arg("y", 8, False))),
    ("A() || B() && C()", AnyOf((call("A", 1), AllOf((call("B", 8), call("C", 15)))))),
    ("A() && B() || C()", AnyOf((AllOf((call("A", 1), call("B", 8))), call("C", 15)))),
    ("!A() && B()", AllOf((Not(call("A", 2), 1), call("B", 9)))),
    ("!(A() && B())", Not(AllOf((call("A", 3), call("B", 10))), 1)),
    ("(A() || B()) && C()", AllOf((AnyOf((call("A", 2), call("B", 9))), call("C", 17)))),
    ("A() && B() && C() && D()", AllOf((call("A", 1), call("B", 8), call("C", 15), call("D", 22)))),
    ("A() || (B() || C())", AnyOf((call("A", 1), call("B", 9), call("C", 16)))),
    ("!!A()", Not(Not(call("A", 3), 2), 1)),
    ("\n  A(\n`x`\n)\t&&\r\nB()  ", AllOf((call("A", 4, Arg("x", 7, True)), call("B", 17)))),
], ids=["empty-call", "raw", "quoted", "two-args", "and-binds-tighter-right", "and-binds-tighter-left",
        "not-binds-tightest", "not-group", "group", "and-chain-flat", "or-group-flat", "double-not", "whitespace"])
def test_tree(text: str, tree) -> None:
    assert parse(text) == tree


@pytest.mark.parametrize("text, value", [
    (r'A("a\"b")', 'a"b'),
    (r'A("a\\b")', "a\\b"),
    (r'A("a\nb")', "a\nb"),
    (r'A("a\tb")', "a\tb"),
    (r"A(`a\nb\`)", "a\\nb\\"),
    ("A(`it's \"raw\"`)", "it's \"raw\""),
    ('A("")', ""),
    ("A(``)", ""),
    ('A("`")', "`"),
    ("A(`日本`)", "日本"),
], ids=["quote", "backslash", "newline", "tab", "raw-keeps-backslashes", "raw-quotes", "empty-quoted", "empty-raw",
        "backtick-in-quoted", "unicode"])
def test_string_forms(text: str, value: str) -> None:
    assert parse(text).args[0].value == value


RE2 = "RE2 syntax, as Go's regexp: no backreferences or lookaround"  # the hint closing every regexp error
ERRORS = [
    # (id, language, text, message, column)
    ("unknown-matcher", "rule", "Hots(`example.com`) && PathPrefix(`/api`)", 'unknown matcher "Hots"', 1),
    ("unknown-function", "claims", "Equals(`a`, `b`) || Equal(`a`, `b`)", 'unknown function "Equal"', 21),
    ("claims-function-in-rule", "rule", "Host(`a`) && Equals(`grp`, `x`)",
     'unknown matcher "Equals" (Equals is a claims function, not a router matcher)', 14),
    ("matcher-in-claims", "claims", "Host(`a`)",
     'unknown function "Host" (Host is a router matcher, not a claims function)', 1),
    ("claims-names-case-sensitive", "claims", "equals(`a`, `b`)", 'unknown function "equals"', 1),
    ("arity-too-few", "claims", "Equals(`grp`)", "Equals(path, value) takes 2 arguments, got 1", 1),
    ("arity-too-many", "rule", "Host(`a`) && Host(`a`, `b`)", "Host(host) takes 1 argument, got 2", 14),
    ("arity-none", "claims", "OneOf(`roles`)", "OneOf(path, value, ...) takes at least 2 arguments, got 1", 1),
    ("arity-query", "rule", "Query(`a`, `b`, `c`)", "Query(name[, value]) takes 1 or 2 arguments, got 3", 1),
    ("arity-split", "claims", "SplitContains(`a`, `b`)",
     "SplitContains(path, separator, value) takes 3 arguments, got 2", 1),
    ("single-quotes", "rule", "Host('example.com')",
     "single quotes are not allowed: quote arguments with `backticks` or \"double quotes\"", 6),
    ("bare-number", "claims", "Equals(`level`, 3)", "bare numbers are not allowed: arguments are strings, write `1`",
     17),
    ("bare-negative-number", "claims", "Equals(`level`, -3)",
     "bare numbers are not allowed: arguments are strings, write `1`", 17),
    ("double-equals", "claims", "grp == `admin`",
     'unexpected "==": compare with a function such as Equals(`claim`, `value`)', 5),
    ("word-and", "claims", "Equals(`a`, `b`) and Equals(`c`, `d`)", 'unexpected "and": write "&&"', 18),
    ("word-or", "rule", "Host(`a`) OR Host(`b`)", 'unexpected "OR": write "||"', 11),
    ("word-not", "rule", "not Host(`a`)", 'unexpected "not": write "!"', 1),
    ("single-ampersand", "rule", "Host(`a`) & Path(`/`)", 'unexpected "&": write "&&"', 11),
    ("single-pipe", "rule", "Host(`a`) | Path(`/`)", 'unexpected "|": write "||"', 11),
    ("unclosed-paren", "rule", "(Host(`a`) || Host(`b`)", 'unbalanced parentheses: "(" is never closed', 1),
    ("unclosed-inner-paren", "rule", "(Host(`a`) && (Host(`b`))", 'unbalanced parentheses: "(" is never closed', 1),
    ("extra-close-paren", "rule", "Host(`a`))", 'unbalanced parentheses: ")" without a matching "("', 10),
    ("unclosed-call", "rule", "Host(`a`", 'unterminated argument list: missing ")"', 9),
    ("trailing-and", "rule", "Host(`a`) &&", 'expression ends after "&&"', 11),
    ("trailing-or", "rule", "Host(`a`) ||  ", 'expression ends after "||"', 11),
    ("trailing-not", "rule", "Host(`a`) && !", 'expression ends after "!"', 14),
    ("leading-operator", "rule", "&& Host(`a`)", 'unexpected "&&"', 1),
    ("empty", "rule", "", "empty expression", 1),
    ("blank", "claims", "  \n ", "empty expression", 1),
    ("empty-group", "rule", "()", 'unexpected ")"', 2),
    ("name-without-call", "rule", "Host && Path(`/`)", 'expected "(" after Host, got "&&"', 6),
    ("missing-operator", "rule", "Host(`a`) Path(`/`)", 'missing "&&" or "||" before "Path"', 11),
    ("missing-comma", "rule", "Header(`a` `b`)", 'expected "," or ")" after an argument, got `b`', 12),
    ("call-as-argument", "rule", "Host(Path(`/`))",
     'arguments must be strings in `backticks` or "double quotes", got "Path"', 6),
    ("bare-word-argument", "claims", "Equals(grp, `a`)",
     'arguments must be strings in `backticks` or "double quotes", got "grp"', 8),
    ("stray-string", "rule", "`a` && Host(`a`)",
     "unexpected string `a`: strings are only allowed as function arguments", 1),
    ("unterminated-raw", "rule", "Host(`a) && Path(`/`)", "unexpected character '/'", 19),
    ("unterminated-raw-at-end", "rule", "Host(`a)", "unterminated string: missing closing `", 6),
    ("unterminated-quoted", "claims", 'Equals(`a`, "b)', 'unterminated string: missing closing "', 13),
    ("unknown-escape", "rule", r'PathRegexp("\d+")',
     'unknown escape "\\d" in a double-quoted string (use backticks for raw text)', 13),
    ("bad-regex", "rule", "PathRegexp(`^/a(`)", "PathRegexp: invalid regular expression: "
     f"missing ): this ( is never closed ({RE2})", 16),
    ("bad-regex-quoted", "rule", 'HeaderRegexp(`X`, "[a-")',
     f"HeaderRegexp: invalid regular expression: missing ]: [a- ({RE2})", 19),
    # RE2 (Go's syntax) refuses what only a backtracking engine can run; the caret is under the culprit
    ("regex-backreference", "rule", r"PathRegexp(`^/(\w+)/\1$`)",
     rf"PathRegexp: invalid regular expression: invalid escape sequence: \1 ({RE2})", 21),
    ("regex-lookahead", "rule", "PathRegexp(`^/api/(?!admin)`)",
     f"PathRegexp: invalid regular expression: invalid perl operator: (?! ({RE2})", 19),
    ("regex-lookbehind", "rule", "HostRegexp(`(?<=www\\.)example`)",
     f"HostRegexp: invalid regular expression: invalid perl operator: (?<= ({RE2})", 13),
    ("regex-atomic-group", "rule", "HeaderRegexp(`X`, `^(?>a+)b`)",
     f"HeaderRegexp: invalid regular expression: invalid perl operator: (?> ({RE2})", 21),
    ("regex-possessive", "rule", "QueryRegexp(`q`, `^a++$`)",
     f"QueryRegexp: invalid regular expression: bad repetition operator: ++ ({RE2})", 21),
    ("regex-python-end-anchor", "rule", r"PathRegexp(`^/a\Z`)",
     rf"PathRegexp: invalid regular expression: invalid escape sequence: \Z: write \z for the end of the text "
     f"({RE2})", 16),
    ("regex-inner-unclosed-group", "rule", "PathRegexp(`^/(a|(b)`)",
     f"PathRegexp: invalid regular expression: missing ): this ( is never closed ({RE2})", 15),
    ("regex-stray-close", "rule", "PathRegexp(`^/[)]a)`)",
     f"PathRegexp: invalid regular expression: unexpected ): no ( before it to close ({RE2})", 19),
    ("regex-too-large", "rule", r"PathRegexp(`^/\pL{1000}$`)",
     f"PathRegexp: invalid regular expression: pattern too large for RE2's memory budget: simplify it or split "
     f"the rule ({RE2})", 12),
    ("regex-too-many-repeats", "rule", "PathRegexp(`^/a{1001}`)",
     f"PathRegexp: invalid regular expression: invalid repetition size: {{1001}}: at most 1000, nested counts "
     f"multiplied ({RE2})", 16),
    ("bad-cidr", "rule", "ClientIP(`10.0.0.0/33`)", "ClientIP: not an IP address or CIDR range: '10.0.0.0/33'", 10),
    ("bad-ip", "rule", "ClientIP(`10.0.0.256`)", "ClientIP: not an IP address or CIDR range: '10.0.0.256'", 10),
    ("relative-path", "rule", "PathPrefix(`api`)", "PathPrefix: the path must start with '/': 'api'", 12),
    ("bad-host-wildcard", "rule", "Host(`a.*.com`)",
     "Host: not a host name: 'a.*.com' (a wildcard is only allowed as `*` or `*.domain`)", 6),
    ("bad-method", "rule", "Method(`GE T`)", "Method: not an HTTP method: 'GE T'", 8),
    ("bad-header-name", "rule", "Header(`X Y`, `1`)", "Header: not a header name: 'X Y'", 8),
    ("empty-claim-path", "claims", "Equals(``, `a`)", "Equals: empty claim path", 9),
    ("empty-claim-segment", "claims", "Prefix(`a..b`, `x`)", 'Prefix: empty segment in claim path "a..b"', 11),
    ("trailing-dot-path", "claims", "Contains(`a.`, `x`)", 'Contains: empty segment in claim path "a."', 12),
    ("empty-separator", "claims", "SplitContains(`scope`, ``, `x`)", "SplitContains: the separator must not be empty",
     24),
]


@pytest.mark.parametrize("language, text, message, column", [case[1:] for case in ERRORS],
                         ids=[case[0] for case in ERRORS])
def test_errors_carry_message_and_column(language: str, text: str, message: str, column: int) -> None:
    compile_ = compile_rule if language == "rule" else compile_claims
    with pytest.raises(ExpressionError) as caught:
        compile_(text)
    assert (caught.value.message, caught.value.column) == (message, column)
    assert caught.value.expression == text


def test_error_renders_caret_under_the_column() -> None:
    with pytest.raises(ExpressionError) as caught:
        compile_rule("Hots(`example.com`) && PathPrefix(`/api`)")
    assert str(caught.value) == ('unknown matcher "Hots" at column 1\n'
                                 "  Hots(`example.com`) && PathPrefix(`/api`)\n"
                                 "  ^")


def test_caret_on_a_multi_line_expression_stays_under_the_column() -> None:
    text = "Host(`a`) &&\n  Pth(`/`)"
    with pytest.raises(ExpressionError) as caught:
        compile_rule(text)
    lines = str(caught.value).split("\n")
    assert lines[1] == "  Host(`a`) &&   Pth(`/`)"
    assert lines[2].index("^") == lines[1].index("Pth")


def test_deep_nesting_is_an_error_not_a_recursion_crash() -> None:
    with pytest.raises(ExpressionError) as caught:
        compile_rule("!" * 200 + "Host(`a`)")
    assert caught.value.message.startswith("expression nested too deeply")


def test_long_chains_compile_flat_and_evaluate() -> None:
    rule = compile_claims(" || ".join(f"Equals(`k{i}`, `v`)" for i in range(3000)))
    assert rule({"k2999": "v"}) is True
    assert rule({}) is False


def test_parser_prints_nothing_and_writes_no_files(tmp_path) -> None:
    script = (
        "from gatekeeper.errors import ExpressionError\n"
        "from gatekeeper.expr import compile_rule\n"
        "for text in ['Host(`a`', ')', 'Host(1)', '', '&&', 'Host(`a`) Host(`b`)']:\n"
        "    try:\n"
        "        compile_rule(text)\n"
        "    except ExpressionError:\n"
        "        pass\n"
        "print('done')\n"
    )
    done = subprocess.run([sys.executable, "-W", "error", "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert (done.stdout, done.stderr, done.returncode) == ("done\n", "", 0)
    assert list(tmp_path.iterdir()) == []


def test_compilation_is_reentrant_across_os_threads() -> None:
    def compile_many(n: int) -> list:
        results = []
        for i in range(150):
            predicate = compile_claims(f"Equals(`k`, `{n}-{i}`) || (Prefix(`p`, `{n}`) && !OneOf(`o`, `x`, `y`))")
            results.append((predicate({"k": f"{n}-{i}"}), predicate({"k": "no", "p": f"{n}z", "o": "x"})))
        try:
            compile_claims(f"Equals(`k`, `{n}`) &&")
        except ExpressionError as exc:
            results.append(exc.column)
        return results

    pool = ThreadPool(4)  # native threads, not greenlets
    try:
        outcomes = pool.map(compile_many, range(8))
    finally:
        pool.kill()
    for n, outcome in enumerate(outcomes):
        assert outcome == [(True, False)] * 150 + [len(f"Equals(`k`, `{n}`) ") + 1]
