"""gatekeeper.options: the one option-validation toolkit, value by value and message by message."""
from __future__ import annotations

from typing import Any, Callable

import pytest

from gatekeeper.config.manifests import Mapping as ManifestMapping
from gatekeeper.errors import ConfigError
from gatekeeper.options import (
    canonical_options,
    line_of,
    pick,
    pick_case_insensitive,
    refuse_secret_reference,
    type_name,
    want_bool,
    want_int,
    want_list,
    want_map,
    want_number,
    want_pem,
    want_seconds,
    want_str,
    want_str_list,
    want_str_map,
    want_text,
)

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"


def whole(value: Any, where: str) -> Any:
    return want_number(value, where, whole=True, minimum=0)


def timeout(value: Any, where: str) -> Any:
    return want_number(value, where, minimum=0.001)


def port(value: Any, where: str) -> int:
    return want_int(value, where, minimum=1)


ACCEPTED = [
    (want_str, "web", "web"), (want_str, 80, "80"), (want_str, 1.5, "1.5"),
    (want_text, "s3cret", "s3cret"),
    (want_bool, True, True), (want_bool, "false", False), (want_bool, " TRUE ", True),
    (want_int, "8080", 8080), (want_int, -3, -3), (port, " 443 ", 443),
    (timeout, "0.5", 0.5), (timeout, 2, 2), (whole, "3", 3), (whole, 0, 0),
    (want_seconds, 0, 0), (want_seconds, "30", 30),
    (want_map, {"a": 1}, {"a": 1}),
    (want_list, ["a"], ["a"]), (want_list, "a", ["a"]),
    (want_str_list, ["a", 2], ["a", "2"]),
    (want_str_map, {"X-A": "1", "X-B": None}, {"X-A": "1", "X-B": ""}), (want_str_map, None, {}),
    (want_pem, None, None), (want_pem, PEM + "\n\n", PEM + "\n"),
    (refuse_secret_reference, "plain", "plain"),
]


@pytest.mark.parametrize("check, value, expected", ACCEPTED,
                         ids=[f"{c.__name__}-{v!r}" for c, v, _ in ACCEPTED])
def test_accepted_values(check: Callable[[Any, str], Any], value: Any, expected: Any) -> None:
    assert check(value, "opt") == expected


REFUSED = [
    (want_str, None, "opt: expected a string, got nothing"),
    (want_str, True, "opt: expected a string, got a boolean"),
    (want_str, "", "opt: must not be empty"),
    (want_text, "  ", "opt: expected a non-empty string"),
    (want_text, 5, "opt: expected a non-empty string"),
    (want_bool, "maybe", "opt: expected true or false, got a string"),
    (want_bool, 1, "opt: expected true or false, got 1"),
    (want_int, "abc", "opt: expected a whole number, got a string"),
    (want_int, True, "opt: expected a whole number, got True"),
    (want_int, 1.5, "opt: expected a whole number, got 1.5"),
    (port, 0, "opt: must be at least 1"),
    (timeout, "fast", "opt: expected a number, got a string"),
    (timeout, 0, "opt: must be at least 0.001"),
    (whole, "-1", "opt: must be at least 0"),
    (want_seconds, -1, "opt: expected a whole number of seconds >= 0, got -1"),
    (want_seconds, "1m", "opt: expected a whole number of seconds >= 0, got a string"),
    (want_map, ["a"], "opt: expected a mapping, got a list"),
    (want_list, {"a": 1}, "opt: expected a list, got a mapping"),
    (want_str_list, ["a", None], "opt[1]: expected a string, got nothing"),
    (want_str_map, "x", "opt: expected a mapping, got a string"),
    (want_pem, 3, "opt: expected a file path or PEM text"),
    (want_pem, "/no/such/ca.pem", "opt: no such file /no/such/ca.pem"),
    (refuse_secret_reference, "urn:k8s:secret:jwt:key", "opt: unresolved Kubernetes Secret reference"),
]


@pytest.mark.parametrize("check, value, message", REFUSED,
                         ids=[f"{c.__name__}-{v!r}" for c, v, _ in REFUSED])
def test_refused_values_name_the_option(check: Callable[[Any, str], Any], value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check(value, "opt")
    assert caught.value.reason == message


def test_pem_may_be_a_file_path(tmp_path) -> None:
    path = tmp_path / "ca.pem"
    path.write_text(PEM)
    assert want_pem(str(path), "clientConfig.tls.ca") == str(path)


@pytest.mark.parametrize("obj, expected", [
    (None, {}),
    ({"Rule": "x", "SERVICE": "web"}, {"rule": "x", "service": "web"}),
], ids=["none-is-empty", "any-case"])
def test_pick_matches_names_case_insensitively(obj: Any, expected: Any) -> None:
    assert pick(obj, ("rule", "service"), "router") == expected


@pytest.mark.parametrize("obj, message", [
    ({"rul": "x"}, 'router: unknown field "rul"; did you mean "rule"?'),
    ({"rule": "x", "Rule": "y"}, 'router: field "Rule" given twice'),
    (["rule"], "router: expected a mapping, got a list"),
], ids=["unknown", "twice", "not-a-mapping"])
def test_pick_refuses(obj: Any, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        pick(obj, ("rule",), "router")
    assert caught.value.reason == message


def test_pick_errors_know_the_manifest_line() -> None:
    obj = ManifestMapping({"rule": "x", "rul": "y"})
    obj.line, obj.key_lines = 3, {"rule": 4, "rul": 5}
    with pytest.raises(ConfigError) as caught:
        pick(obj, ("rule",), "router")
    assert caught.value.line == 5
    assert (line_of(obj), line_of(obj, "rule"), line_of({"a": 1})) == (3, 4, None)


@pytest.mark.parametrize("options, expected", [
    ({"signingsecret": "s"}, {"signingSecret": "s"}),
    ({"TokenQueryKey": "jwt"}, {"tokenKey": "jwt"}),
], ids=["any-case", "old-name"])
def test_canonical_options(options: Any, expected: Any) -> None:
    assert canonical_options(options, ("signingSecret", "tokenKey"), {"tokenQueryKey": "tokenKey"}) == expected


@pytest.mark.parametrize("options, message", [
    ({"foo": 1}, 'unknown option "foo"'),
    ({"tokenKey": "a", "tokenQueryKey": "b"}, 'tokenKey: given twice (as "tokenQueryKey" too)'),
], ids=["unknown", "twice-under-an-old-name"])
def test_canonical_options_refuses(options: Any, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        canonical_options(options, ("tokenKey",), {"tokenQueryKey": "tokenKey"})
    assert caught.value.reason == message


def test_pick_case_insensitive_never_refuses() -> None:
    options = {"ClaimS": "x", "unknown": 1, "TOKENKEY": "jwt"}
    assert pick_case_insensitive(options, ("claims", "tokenKey", "usernameClaim")) == {"claims": "x", "tokenKey": "jwt"}


@pytest.mark.parametrize("value, name", [
    (None, "nothing"), ({}, "a mapping"), (ManifestMapping(), "a mapping"), ([], "a list"), ("s", "a string"),
    (True, "a boolean"), (3, "a number"), (2.5, "a number"), (b"x", "bytes"),
], ids=["none", "dict", "manifest-mapping", "list", "str", "bool", "int", "float", "other"])
def test_type_names_never_echo_the_value(value: Any, name: str) -> None:
    assert type_name(value) == name
