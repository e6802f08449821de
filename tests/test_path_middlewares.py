"""replacePath, replacePathRegex and stripPrefixRegex through a real Gateway: the rewritten path is what the
upstream gets (raw and decoded in step), a rewrite that would resolve elsewhere is 400, and a normalising
upstream (Python's http.server) never serves a file the router did not route to."""
from __future__ import annotations

import posixpath
import time
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import unquote

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from gatekeeper.app import Gateway
from gatekeeper.jwt.mint import mint
from gatekeeper.middlewares.paths import rewritten
from gatekeeper.requestpath import PathPolicy, PathSettings
from tests.conftest import exchange, status_of
from tests.middleware_gateway import file_server, jwt_options, routes_yaml, serve_routes

SECRET = "paths-secret-0123456789abcdef0123456"
DEFAULT_POLICY = PathPolicy()


@pytest.fixture
def serve(conf_d, wsgi_server, echo_upstream) -> Callable[..., str]:
    """``serve(middlewares_yaml, chain)``: a gateway whose router ``app`` (PathPrefix /) applies ``chain``
    in front of ``upstream`` (the echo upstream unless given)."""
    def start(middlewares: str, chain: str, upstream: str = "", policy: PathPolicy = DEFAULT_POLICY) -> str:
        return serve_routes(conf_d, wsgi_server, routes_yaml(f"auth: {jwt_options(SECRET)}\n{middlewares}", chain,
                                                             upstream or echo_upstream.url),
                            request_path=PathSettings(policy))
    return start


def header(echoed: dict, name: str):
    values = [v for n, v in echoed["headers"] if n.lower() == name.lower()]
    return values[0] if len(values) == 1 else values or None


@pytest.mark.parametrize("middleware, sent, path, replaced", [
    ("{replacePath: {path: /v2/api}}", "/old/x?q=1", "/v2/api", "/old/x"),
    ("{replacePath: {path: /a%20b}}", "/x", "/a%20b", "/x"),
    ("{replacePathRegex: {regex: '^/foo/(.*)', replacement: '/bar/$1'}}", "/foo/a/b?q=1", "/bar/a/b", "/foo/a/b"),
    ("{replacePathRegex: {regex: '^/api/(?P<v>v[0-9]+)/(.*)', replacement: '/${v}-$2'}}", "/api/v3/users",
     "/v3-users", "/api/v3/users"),
    ("{replacePathRegex: {regex: '^/foo/(.*)', replacement: '/bar/$1'}}", "/other", "/other", None),
    ("{replacePathRegex: {regex: '%20', replacement: '_'}}", "/a%20b%20c", "/a_b_c", "/a%20b%20c"),
], ids=["replacePath", "replacePath-escaped", "regex", "regex-named-group", "regex-no-match",
        "regex-sees-escaped-path"])
def test_the_rewritten_path_is_forwarded(serve, middleware, sent, path, replaced):
    url = serve(f"rewrite: {middleware}", "[rewrite]")
    echoed = requests.get(url + sent, timeout=5).json()
    assert echoed["path"] == path
    assert echoed["query"] == (sent.partition("?")[2])
    assert header(echoed, "X-Replaced-Path") == replaced


@pytest.mark.parametrize("regexps, sent, path, prefix", [
    ("['^/api/v[0-9]+']", "/api/v2/users?x=1", "/users", "/api/v2"),
    ("['^/nope', '/t[0-9]+']", "/t42/x", "/x", "/t42"),
    ("['/t[0-9]+']", "/a/t42/x", "/a/t42/x", None),          # a match not at the start strips nothing
    ("['^/api']", "/api", "/", "/api"),
    ("['^/caf\u00e9']", "/caf%C3%A9/x", "/x", "/caf\u00c3\u00a9"),   # matched on the decoded bytes
], ids=["first-regex", "second-regex", "not-a-prefix", "whole-path", "decoded-utf8"])
def test_strip_prefix_regex(serve, regexps, sent, path, prefix):
    url = serve(f"strip: {{stripPrefixRegex: {{regex: {regexps}}}}}", "[strip]")
    echoed = requests.get(url + sent, timeout=5).json()
    assert echoed["path"] == path
    assert header(echoed, "X-Forwarded-Prefix") == prefix


def test_a_stripped_prefix_with_decoded_crlf_cannot_inject_a_header(serve):
    url = serve("strip: {stripPrefixRegex: {regex: ['^/[^/]+']}}", "[strip]")
    echoed = requests.get(url + "/a%0D%0AX-Evil:%201/rest", timeout=5).json()
    assert echoed["path"] == "/rest"
    assert header(echoed, "X-Forwarded-Prefix") == "/a%0D%0AX-Evil: 1"
    assert header(echoed, "X-Evil") is None


@pytest.mark.parametrize("middleware, sent", [
    ("{replacePathRegex: {regex: '^/public/(.*)', replacement: '/static/$1'}}", "/public/..%2Fadmin/secret.txt"),
    ("{replacePathRegex: {regex: '^/public/(.*)', replacement: '/static/$1'}}", "/public/x%2F%2Fy"),
    ("{replacePathRegex: {regex: '^/public/', replacement: '/static/../'}}", "/public/admin/secret.txt"),
    ("{stripPrefixRegex: {regex: ['^/public/[a-z]+']}}", "/public/x..%2F..%2Fadmin/secret.txt"),
    ("{stripPrefixRegex: {regex: ['^/public/']}}", "/public/%2Fadmin/secret.txt"),
], ids=["regex-dotdot-encoded", "regex-empty-segment", "replacement-dotdot", "strip-dotdot", "strip-double-slash"])
def test_a_rewrite_that_would_resolve_elsewhere_is_400(serve, files_upstream, middleware, sent):
    slash = PathPolicy(allowed=frozenset({"%2F"}))
    url = serve(f"rewrite: {middleware}", "[rewrite]", upstream=files_upstream, policy=slash)
    assert requests.get(files_upstream + "/admin/secret.txt", timeout=5).text == "admin secret"  # it would
    response = requests.get(url + sent, timeout=5)
    assert response.status_code == 400
    assert "admin secret" not in response.text


def test_a_clean_rewrite_reaches_the_normalising_upstream(serve, files_upstream):
    url = serve("rewrite: {replacePathRegex: {regex: '^/public/(.*)', replacement: '/static/$1'}}", "[rewrite]",
                upstream=files_upstream)
    assert requests.get(url + "/public/hello.txt", timeout=5).text == "hello"


@pytest.fixture
def files_upstream(tmp_path: Path) -> Iterator[str]:
    """Python's http.server over static/hello.txt and admin/secret.txt: it decodes and resolves ``..``."""
    with file_server(tmp_path / "files", {"static/hello.txt": "hello", "admin/secret.txt": "admin secret"}) as url:
        yield url


def test_replace_path_after_jwt_forwards_the_rewrite_only_for_a_valid_token(serve):
    url = serve("rewrite: {replacePath: {path: /internal}}", "[auth, rewrite]")
    assert requests.get(url + "/x", timeout=5).status_code == 401
    token = mint({"sub": "u", "exp": int(time.time()) + 300}, secret=SECRET)
    echoed = requests.get(url + "/x", headers={"Authorization": f"Bearer {token}"}, timeout=5).json()
    assert echoed["path"] == "/internal"


def test_later_middlewares_and_routing_metadata_see_the_rewritten_path(serve, echo_upstream):
    url = serve("a: {replacePathRegex: {regex: '^/one/(.*)', replacement: '/two/$1'}}\n"
                "b: {stripPrefixRegex: {regex: ['^/two']}}", "[a, b]")
    echoed = requests.get(url + "/one/three", timeout=5).json()
    assert echoed["path"] == "/three"
    assert header(echoed, "X-Forwarded-Prefix") == "/two"
    assert header(echoed, "X-Replaced-Path") == "/one/three"


def test_a_raw_request_line_never_carries_what_a_replacement_adds(serve, echo_upstream):
    url = serve("rewrite: {replacePathRegex: {regex: '^/p/(.*)', replacement: '/q/$1'}}", "[rewrite]")
    port = int(url.rsplit(":", 1)[1])
    answer = exchange(port, b"GET /p/a%0D%0Ab HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status_of(answer) == 200
    assert b'"path": "/q/a%0D%0Ab"' in answer


@pytest.mark.parametrize("middleware, message", [
    ("{replacePath: {path: 'no-slash'}}", "replacePath.path: must start with /"),
    ("{replacePath: {path: '/a b'}}", "replacePath.path: must start with /"),
    ("{replacePath: {path: '/a/../b'}}", "replacePath.path: must not hold"),
    ("{replacePath: {path: '/a%zz'}}", "a % must start an escape"),
    ("{replacePath: {}}", "replacePath.path: expected a string"),
    ("{replacePathRegex: {regex: '^/(a', replacement: '/'}}", "replacePathRegex.regex: missing ): this ( is never"),
    ("{replacePathRegex: {regex: '(a)\\1', replacement: '/'}}", "replacePathRegex.regex: invalid escape sequence"),
    ("{stripPrefixRegex: {regex: []}}", "stripPrefixRegex.regex: at least one regexp is required"),
    ("{stripPrefixRegex: {regex: ['^/a', '(?<=x)b']}}", "stripPrefixRegex.regex[1]: "),
    ("{stripPrefixRegex: {regexp: ['^/a']}}", 'stripPrefixRegex: unknown field "regexp"'),
], ids=["no-slash", "space", "dotdot", "bad-escape", "missing", "unbalanced", "backreference", "empty-list",
        "lookbehind", "unknown-option"])
def test_bad_options_fail_closed_with_the_reason(conf_d, echo_upstream, wsgi_server, middleware, message):
    conf_d("routes.yaml", f"""
        http:
          routers:
            app: {{rule: "PathPrefix(`/`)", service: app, middlewares: [bad]}}
          middlewares:
            bad: {middleware}
          services:
            app: {{loadBalancer: {{servers: [{{url: "{echo_upstream.url}"}}]}}}}
        """)
    gateway = Gateway(conf_d.root)
    errors = [str(e) for e in gateway.config.errors]
    assert errors[0].startswith('routes.yaml:6: middleware "bad@file": ') and message in errors[0], errors
    assert errors[1:] == [f'routes.yaml:4: router "app@file": answers 503: middleware "bad@file" is in error: '
                          f'{errors[0].split(": ", 2)[2]}'], errors
    assert requests.get(wsgi_server(gateway).url + "/x", timeout=5).status_code == 503


SEGMENT = st.sampled_from(["a", "b", ".", "..", "", "%2F", "%2e", "%2E%2E", "%25", "x%20y", "%0D%0A", "?", " "])


@settings(max_examples=300, deadline=None)
@given(st.lists(SEGMENT, max_size=6))
def test_whatever_a_rewrite_forwards_a_normalising_upstream_resolves_to_itself(segments):
    """The promise in one property: a path ``rewritten`` accepts decodes to a path ``posixpath.normpath``
    (as http.server and most frameworks resolve it) leaves as it is; the raw path is well formed."""
    environ: dict = {}
    raw = "/" + "/".join(segments)
    if not rewritten(environ, raw, "?q"):
        return
    forwarded, query = environ["RAW_URI"].partition("?")[::2]
    decoded = unquote(forwarded)
    assert query == "q" and environ["PATH_INFO"] == unquote(forwarded, "latin-1")
    assert posixpath.normpath(decoded) == decoded.rstrip("/") or decoded == "/"
    assert " " not in forwarded and "\r" not in forwarded and "?" not in forwarded
