"""Router matchers over RequestView: each matcher, name spellings, the routing path, and a real pywsgi environ."""
from __future__ import annotations

import ipaddress
from typing import Dict, List

import pytest
import requests

from gatekeeper.expr import RequestView, compile_rule, routing_path


def environ(**overrides: str) -> Dict[str, str]:
    """A WSGI environ as gevent's pywsgi builds it for ``GET /api/users?page=2`` from 10.1.2.3."""
    base = {
        "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "/api/users", "QUERY_STRING": "page=2",
        "RAW_URI": "/api/users?page=2", "SERVER_NAME": "gateway.local", "SERVER_PORT": "8080",
        "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "10.1.2.3", "REMOTE_PORT": "51234",
        "HTTP_HOST": "api.example.com:8080", "HTTP_USER_AGENT": "curl/8.5", "HTTP_ACCEPT": "*/*",
        "wsgi.url_scheme": "http",
    }
    base.update(overrides)
    return base


CASES = [
    # Host
    ("Host(`api.example.com`)", {}, True),
    ("Host(`API.Example.COM`)", {}, True),
    ("Host(`api.example.com`)", {"HTTP_HOST": "API.EXAMPLE.COM."}, True),
    ("Host(`api.example.com.`)", {"HTTP_HOST": "api.example.com"}, True),
    ("Host(`example.com`)", {}, False),
    ("Host(`*.example.com`)", {}, True),
    ("Host(`*.example.com`)", {"HTTP_HOST": "a.b.example.com"}, False),
    ("Host(`*.example.com`)", {"HTTP_HOST": "example.com"}, False),
    ("Host(`*.example.com`)", {"HTTP_HOST": "badexample.com"}, False),
    ("Host(`*`)", {"HTTP_HOST": "anything.test"}, True),
    ("Host(`gateway.local`)", {"HTTP_HOST": ""}, True),
    ("Host(`::1`)", {"HTTP_HOST": "[::1]:8080"}, True),
    ("Host(`[::1]`)", {"HTTP_HOST": "[::1]"}, True),
    ("Host(`127.0.0.1`)", {"HTTP_HOST": "127.0.0.1:80"}, True),
    # HostRegexp searches the normalized host
    ("HostRegexp(`^[a-z]+\\.example\\.com$`)", {}, True),
    ("HostRegexp(`example`)", {}, True),
    ("HostRegexp(`^example`)", {}, False),
    # Path / PathPrefix / PathRegexp on the routing path
    ("Path(`/api/users`)", {}, True),
    ("Path(`/api`)", {}, False),
    ("Path(`/api/users`)", {"RAW_URI": "/api/%75sers?x=1"}, True),
    ("Path(`/a%2Fb`)", {"RAW_URI": "/a%2fb"}, True),
    ("Path(`/a/b`)", {"RAW_URI": "/a%2Fb"}, False),
    ("Path(`/~me`)", {"RAW_URI": "/%7Eme"}, True),
    ("Path(`/%7eme`)", {"RAW_URI": "/~me"}, True),
    ("Path(`/api/users`)", {"RAW_URI": "http://api.example.com/api/users?page=2"}, True),
    ("PathPrefix(`/api`)", {}, True),
    ("PathPrefix(`/api`)", {"RAW_URI": "/apix"}, True),
    ("PathPrefix(`/api/`)", {"RAW_URI": "/apix"}, False),
    ("PathPrefix(`/`)", {"RAW_URI": "/"}, True),
    ("PathPrefix(`/users`)", {}, False),
    ("PathRegexp(`^/api/[a-z]+$`)", {}, True),
    ("PathRegexp(`users`)", {}, True),
    ("PathRegexp(`^/users`)", {}, False),
    # Method
    ("Method(`GET`)", {}, True),
    ("Method(`get`)", {}, True),
    ("Method(`POST`)", {}, False),
    ("Method(`DELETE`)", {"REQUEST_METHOD": "DELETE"}, True),
    # Header / HeaderRegexp: the joined value and each comma-separated value
    ("Header(`User-Agent`, `curl/8.5`)", {}, True),
    ("Header(`user-agent`, `curl/8.5`)", {}, True),
    ("Header(`User-Agent`, `curl`)", {}, False),
    ("Header(`X-Role`, `admin`)", {"HTTP_X_ROLE": "guest,admin"}, True),
    ("Header(`X-Role`, `guest,admin`)", {"HTTP_X_ROLE": "guest,admin"}, True),
    ("Header(`X-Role`, `admin`)", {}, False),
    ("Header(`Content-Type`, `application/json`)", {"CONTENT_TYPE": "application/json"}, True),
    ("Header(`Content-Length`, `12`)", {"CONTENT_LENGTH": "12"}, True),
    ("HeaderRegexp(`User-Agent`, `^curl/`)", {}, True),
    ("HeaderRegexp(`User-Agent`, `^Mozilla`)", {}, False),
    ("HeaderRegexp(`X-Missing`, `.*`)", {}, False),
    # Query / QueryRegexp
    ("Query(`page`, `2`)", {}, True),
    ("Query(`page`, `3`)", {}, False),
    ("Query(`page`)", {}, False),
    ("Query(`debug`)", {"QUERY_STRING": "debug&page=2"}, True),
    ("Query(`debug`)", {"QUERY_STRING": "debug="}, True),
    ("Query(`debug`)", {"QUERY_STRING": "page=2"}, False),
    ("Query(`tag`, `b`)", {"QUERY_STRING": "tag=a&tag=b"}, True),
    ("Query(`q`, `a b`)", {"QUERY_STRING": "q=a+b"}, True),
    ("Query(`q`, `é`)", {"QUERY_STRING": "q=%C3%A9"}, True),
    ("QueryRegexp(`page`, `^[0-9]+$`)", {}, True),
    ("QueryRegexp(`page`, `^[a-z]+$`)", {}, False),
    # ClientIP: the peer address, never X-Forwarded-For
    ("ClientIP(`10.1.2.3`)", {}, True),
    ("ClientIP(`10.0.0.0/8`)", {}, True),
    ("ClientIP(`10.1.2.3/8`)", {}, True),
    ("ClientIP(`192.168.0.0/16`)", {}, False),
    ("ClientIP(`192.168.0.0/16`)", {"HTTP_X_FORWARDED_FOR": "192.168.1.1"}, False),
    ("ClientIP(`::1`)", {"REMOTE_ADDR": "::1"}, True),
    ("ClientIP(`2001:db8::/32`)", {"REMOTE_ADDR": "2001:db8::7"}, True),
    ("ClientIP(`10.0.0.0/8`)", {"REMOTE_ADDR": "::ffff:10.9.9.9"}, True),
    ("ClientIP(`10.0.0.0/8`)", {"REMOTE_ADDR": "2001:db8::7"}, False),
    ("ClientIP(`10.0.0.0/8`)", {"REMOTE_ADDR": ""}, False),
    # combinations
    ("Host(`api.example.com`) && PathPrefix(`/api`) && Method(`GET`)", {}, True),
    ("Host(`other`) || PathPrefix(`/api`) && !Method(`POST`)", {}, True),
    ("(Host(`other`) || PathPrefix(`/api`)) && Method(`POST`)", {}, False),
]


@pytest.mark.parametrize("rule, overrides, want", CASES, ids=[f"{c[0]}-{sorted(c[1].values())}" for c in CASES])
def test_matchers(rule: str, overrides: Dict[str, str], want: bool) -> None:
    assert compile_rule(rule)(RequestView(environ(**overrides))) is want


# Where RE2 (Go's regexp, Traefik's engine) and Python's re disagree: each row is RE2's answer, the opposite
# of (or an error in) what re gave.
RE2_SEMANTICS = [
    ("dollar-not-before-final-newline", "QueryRegexp(`id`, `^[0-9]+$`)", {"QUERY_STRING": "id=42%0A"}, False),
    ("digit-class-is-ascii", "QueryRegexp(`n`, `^\\d+$`)", {"QUERY_STRING": "n=%D9%A3"}, False),
    ("word-class-is-ascii", "QueryRegexp(`q`, `^\\w+$`)", {"QUERY_STRING": "q=caf%C3%A9"}, False),
    ("brace-without-min-is-literal", "PathRegexp(`^/a{,3}$`)", {"RAW_URI": "/a{,3}"}, True),
    ("brace-without-min-repeats-nothing", "PathRegexp(`^/a{,3}$`)", {"RAW_URI": "/aa"}, False),
    ("end-of-text-z", "PathRegexp(`^/api/users\\z`)", {}, True),
    ("unicode-class", "QueryRegexp(`q`, `^\\p{Greek}+$`)", {"QUERY_STRING": "q=%CE%B1%CE%B2"}, True),
    ("posix-class", "PathRegexp(`^/[[:alpha:]]+/[[:alpha:]]+$`)", {}, True),
]


@pytest.mark.parametrize("rule, overrides, want", [case[1:] for case in RE2_SEMANTICS],
                         ids=[case[0] for case in RE2_SEMANTICS])
def test_regexps_have_go_semantics(rule: str, overrides: Dict[str, str], want: bool) -> None:
    assert compile_rule(rule)(RequestView(environ(**overrides))) is want


@pytest.mark.parametrize("rule, host, want", [
    ("HostRegexp(`^api\\.example\\.com$`)", "API.Example.COM:8080", True),
    ("HostRegexp(`^API\\.`)", "API.example.com", False),
    ("HostRegexp(`(?i)^API\\.`)", "api.example.com", True),
], ids=["host-lower-cased-first", "upper-case-pattern-never-matches", "case-insensitive-flag"])
def test_host_regexp_sees_the_lower_cased_host(rule: str, host: str, want: bool) -> None:
    assert compile_rule(rule)(RequestView(environ(HTTP_HOST=host))) is want


@pytest.mark.parametrize("name", ["PathPrefix", "pathprefix", "PATHPREFIX", "Pathprefix"])
def test_matcher_name_spellings(name: str) -> None:
    assert compile_rule(f"{name}(`/api`)")(RequestView(environ())) is True


@pytest.mark.parametrize("name", ["pathPrefix", "PathPREFIX", "Path_Prefix"])
def test_other_spellings_are_unknown(name: str) -> None:
    with pytest.raises(Exception, match=f'unknown matcher "{name}"'):
        compile_rule(f"{name}(`/api`)")


@pytest.mark.parametrize("raw, routed", [
    ("/plain/path", "/plain/path"),
    ("/%41%62%63", "/Abc"),
    ("/%7e%2d%2e%5f", "/~-._"),
    ("/a%2fb", "/a%2Fb"),
    ("/a%3f%23%25", "/a%3F%23%25"),
    ("/%c3%a9", "/%C3%A9"),
    ("/%zz%4", "/%zz%4"),
    ("/a;b=c", "/a;b=c"),
], ids=["plain", "unreserved-letters", "unreserved-marks", "slash-kept", "reserved-kept", "utf8-kept", "bad-escape",
        "sub-delims"])
def test_routing_path(raw: str, routed: str) -> None:
    assert routing_path(raw) == routed


@pytest.mark.parametrize("overrides, path", [
    ({"RAW_URI": "/a%2Fb?x=%41"}, "/a%2Fb"),
    ({"RAW_URI": "*"}, "*"),
    ({"RAW_URI": "https://h.example/x/%7Ey?z"}, "/x/~y"),
    ({"RAW_URI": "http://h.example"}, "/"),
    ({"PATH_INFO": "/caf\u00c3\u00a9/a b"}, "/caf%C3%A9/a%20b"),
    ({"PATH_INFO": "/a;b/c:d@e"}, "/a;b/c:d@e"),
    ({"PATH_INFO": "", "SCRIPT_NAME": ""}, "/"),
], ids=["raw-uri", "asterisk", "absolute-form", "absolute-no-path", "path-info-latin1", "path-info-sub-delims",
        "path-info-empty"])
def test_request_view_path(overrides: Dict[str, str], path: str) -> None:
    env = environ(**overrides)
    if "PATH_INFO" in overrides:
        del env["RAW_URI"]
    assert RequestView(env).path == path


def test_request_view_attributes() -> None:
    view = RequestView(environ(HTTP_X_TAGS="a, b", QUERY_STRING="a=1&a=2&empty="))
    assert view.host == "api.example.com"
    assert view.method == "GET"
    assert view.query == {"a": ["1", "2"], "empty": [""]}
    assert view.client_ip == ipaddress.ip_address("10.1.2.3")
    assert view.header_values("x-tags") == ("a, b", "a", "b")
    assert view.header_values("X-None") == ()


class ExplodingEnviron(dict):
    """An environ whose lookups of ``forbidden`` keys fail loudly: evaluation must not reach them."""

    def __init__(self, forbidden: List[str], **values: str) -> None:
        super().__init__(**values)
        self.forbidden = forbidden

    def get(self, key, default=None):
        if key in self.forbidden:
            raise AssertionError(f"short-circuit failed: {key} was read")
        return super().get(key, default)


@pytest.mark.parametrize("rule", [
    "Method(`GET`) || Header(`X-Boom`, `1`)",
    "Method(`POST`) && Header(`X-Boom`, `1`)",
    "Method(`GET`) || Header(`X-Boom`, `1`) && Header(`X-Boom`, `2`)",
    "!Method(`GET`) && (Header(`X-Boom`, `1`) || Header(`X-Boom`, `2`))",
    "Method(`POST`) && Header(`X-Boom`, `1`) && Header(`X-Boom`, `2`) || Method(`GET`)",
], ids=["or", "and", "or-of-and", "not-and-group", "chain"])
def test_rules_short_circuit(rule: str) -> None:
    env = ExplodingEnviron(["HTTP_X_BOOM"], REQUEST_METHOD="GET")
    compile_rule(rule)(RequestView(env))  # raises if the right side is evaluated


def test_request_view_is_lazy() -> None:
    view = RequestView(ExplodingEnviron(["RAW_URI", "PATH_INFO", "QUERY_STRING", "REMOTE_ADDR"], HTTP_HOST="a"))
    assert compile_rule("Host(`a`) || PathPrefix(`/`)")(view) is True


def test_request_view_on_a_real_pywsgi_environ(wsgi_server) -> None:
    rule = compile_rule("Host(`localhost`) && Path(`/a%2Fb/~x`) && Method(`PUT`) && Header(`X-Role`, `ops`)"
                        " && Query(`flag`) && Query(`q`, `1 2`) && ClientIP(`127.0.0.0/8`)")
    seen: List[tuple] = []

    def app(env, start_response):
        view = RequestView(env)
        seen.append((view.host, view.path, rule(view)))
        start_response("200 OK", [("Content-Length", "0")])
        return [b""]

    server = wsgi_server(app)
    response = requests.put(f"{server.url}/a%2fb/%7Ex?flag&q=1+2",
                            headers={"Host": f"LocalHost:{server.port}", "X-Role": "guest, ops"}, timeout=5)
    assert response.status_code == 200
    assert seen == [("localhost", "/a%2Fb/~x", True)]
