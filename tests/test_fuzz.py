"""Fuzz targets (hypothesis): whatever comes in, only the project's own errors or clean HTTP answers.

CI runs a bounded number of examples per target (``GATEKEEPER_FUZZ_EXAMPLES``, default small);
``scripts/fuzz`` runs the same targets with many more. The invariants:

- the expression parser raises only ExpressionError;
- the compact-JWS parser and token extraction raise only the project's error types (AuthError);
- the manifest loader never raises: read_dir/compile_config report ConfigErrors;
- the request path, over a raw socket to a real Gateway, answers well-formed HTTP that is never a 500,
  and never hangs.
"""
from __future__ import annotations

import os
import string
from pathlib import Path
from typing import Iterator

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatekeeper.app import Gateway
from gatekeeper.config.compile import compile_config
from gatekeeper.config.manifests import read_dir
from gatekeeper.errors import AuthError, ConfigError, ExpressionError
from gatekeeper.expr import compile_claims, compile_rule
from gatekeeper.jwt.auth import JWTAuth
from gatekeeper.jwt.jws import parse_compact
from gatekeeper.jwt.mint import mint
from gatekeeper.ops.echo import named_echo_app
from tests.conftest import RunningServer, exchange, status_of

EXAMPLES = int(os.environ.get("GATEKEEPER_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize="GATEKEEPER_FUZZ_EXAMPLES" not in os.environ,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large, HealthCheck.filter_too_much])
SECRET = "fuzz-secret-0123456789abcdef"

# --- expression parser ----------------------------------------------------------------------------

WORDS = ["Host", "Path", "PathPrefix", "Method", "Header", "Query", "HostRegexp", "PathRegexp", "ClientIP",
         "Equals", "Prefix", "Contains", "OneOf", "And", "Or", "Not", "HeaderRegexp", "QueryRegexp"]
PIECES = st.one_of(st.sampled_from([*WORDS, "(", ")", ",", "&&", "||", "!", " ", "`", '"', "'", "`a`",
                                           "`/x`", '"b"', "`[`", "`(?P<`", "`\\`", "\n", "\x00"]),
                   st.text(max_size=6))
EXPRESSIONS = st.one_of(st.text(max_size=60), st.lists(PIECES, max_size=20).map("".join))


@FUZZ
@given(text=EXPRESSIONS)
@pytest.mark.parametrize("compile_text", [compile_rule, compile_claims], ids=["rule", "claims"])
def test_expression_parser_raises_only_expression_error(compile_text, text):
    try:
        compile_text(text)
    except ExpressionError as err:
        assert 0 <= err.column <= len(text) + 1, err
        str(err)


# --- compact JWS and token extraction -------------------------------------------------------------

B64 = string.ascii_letters + string.digits + "-_"
JWS_PART = st.one_of(st.text(B64, max_size=40), st.text(max_size=20),
                     st.sampled_from(["eyJhbGciOiJIUzI1NiJ9", "eyJhbGciOiJub25lIn0", "e30", "W10", "bnVsbA", ""]))
TOKENS = st.one_of(
    st.text(max_size=120),
    st.lists(JWS_PART, min_size=1, max_size=6).map(".".join),
    st.builds(lambda claims: mint(claims, secret=SECRET)[:-1] + "A",
              st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3)),
)


@FUZZ
@given(token=TOKENS)
def test_compact_jws_parser_raises_only_auth_errors(token):
    try:
        parsed = parse_compact(token)
    except AuthError as err:
        assert err.reason
    else:
        assert isinstance(parsed.alg, str)


@pytest.fixture(scope="module")
def auth() -> JWTAuth:
    return JWTAuth.from_config({"signingSecret": SECRET, "tokenKey": "jwt",
                                "tokenSource": {"header": "Authorization", "headerAuthScheme": "Bearer",
                                                "query": "jwt", "cookie": "jwt"}})


HEADER_TEXT = st.text(st.characters(min_codepoint=0, max_codepoint=0xff), max_size=80)
ASCII_TEXT = st.text(st.characters(min_codepoint=0, max_codepoint=0x7f), max_size=80)


@FUZZ
@given(authorization=HEADER_TEXT, query=HEADER_TEXT, cookie=ASCII_TEXT)
def test_token_extraction_and_verify_raise_only_auth_errors(auth, authorization, query, cookie):
    environ = {"HTTP_AUTHORIZATION": authorization, "QUERY_STRING": query, "HTTP_COOKIE": cookie,
               "REQUEST_METHOD": "GET"}
    try:
        token = auth.find_token(environ)
        if token is not None:
            auth.verify(token)
    except AuthError as err:
        assert err.reason


def test_non_utf8_cookie_is_no_token(auth):
    assert auth.find_token({"HTTP_COOKIE": "jwt=\x80", "REQUEST_METHOD": "GET"}) in (None, "\x80")


# --- manifest loader ------------------------------------------------------------------------------

KEYS = st.sampled_from(["http", "routers", "services", "middlewares", "rule", "service", "loadBalancer",
                        "servers", "url", "weighted", "plugin", "jwt", "signingSecret", "publicKey",
                        "jwksFile", "priority", "entryPoints", "apiVersion", "kind", "metadata", "name", "tokenKey",
                        "spec", "routes", "match", "Claims", "forwardHeaders", "tokenSource"]) | st.text(max_size=6)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                    st.text(max_size=12),
                    st.sampled_from(["PathPrefix(`/`)", "http://127.0.0.1:1", "s", "Host(`[`)", "`", "-1"]))
YAML_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(KEYS, inner, max_size=5), max_leaves=25)
DOCUMENTS = st.one_of(YAML_VALUES.map(yaml.safe_dump),
                      st.dictionaries(st.just("http"), YAML_VALUES).map(yaml.safe_dump),
                      st.text(max_size=80))


@FUZZ
@given(documents=st.lists(DOCUMENTS, min_size=1, max_size=3))
def test_manifest_loader_reports_config_errors_only(tmp_path_factory, documents):
    root: Path = tmp_path_factory.mktemp("conf.d")
    for number, text in enumerate(documents):
        (root / f"m{number}.yaml").write_text(text)
    config = compile_config(read_dir(root))
    assert all(isinstance(err, ConfigError) for err in config.errors)
    for err in config.errors:
        str(err)


# --- the request path over a raw socket -----------------------------------------------------------

ROUTES = """
http:
  routers:
    open: {rule: "PathPrefix(`/open`) || Host(`a.example`)", service: s}
    header: {rule: "Header(`X-Env`, `canary`) && Query(`q`, `1`)", service: s}
    regexp: {rule: "PathRegexp(`^/re/[a-z]+$`) || HostRegexp(`^.+\\\\.example$`)", service: s}
    locked: {rule: "PathPrefix(`/locked`)", service: s, middlewares: [jwt]}
  middlewares:
    jwt:
      plugin:
        jwt: {signingSecret: "%s", tokenKey: jwt, forwardHeaders: {X-Sub: sub},
              tokenSource: {header: Authorization, headerAuthScheme: Bearer, query: jwt, cookie: jwt}}
  services:
    s: {loadBalancer: {servers: [{url: "%s"}]}}
"""


@pytest.fixture(scope="module")
def gateway_port(tmp_path_factory) -> Iterator[int]:
    upstream = RunningServer(named_echo_app("echo"))
    root = tmp_path_factory.mktemp("gw") / "conf.d"
    root.mkdir()
    (root / "routes.yaml").write_text(ROUTES % (SECRET, upstream.url))
    gateway = Gateway(root)
    assert not gateway.config.errors, gateway.config.errors
    server = RunningServer(gateway)
    yield server.port
    server.stop()
    upstream.stop()


TOKEN_CHARS = "!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits
METHODS = st.one_of(st.sampled_from(["GET", "POST", "HEAD", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE",
                                     "PRI", "get"]), st.text(TOKEN_CHARS, min_size=1, max_size=10))
PATH_CHARS = st.characters(min_codepoint=0x21, max_codepoint=0x7e)
PATHS = st.one_of(
    st.lists(st.sampled_from(["/", "open", "locked", "re", "abc", "..", ".", "%", "%2F", "%2e", "%00", "%ff",
                              "%zz", "?", "&", "=", "jwt=", "q=1", "#", "//", ";", "%25"])
             | st.text(PATH_CHARS, max_size=4),
             max_size=10).map(lambda parts: "/" + "".join(parts)),
    st.text(PATH_CHARS, min_size=1, max_size=40),
    st.sampled_from(["*", "//", "/open?jwt=a.b.c", "http://a.example/open", "http://a.example/locked/%2E%2E/open",
                     "http://a.example", "https://b.example/open?x=1"]),
)
HEADER_NAMES = st.one_of(st.sampled_from(["X-Env", "Authorization", "Connection", "X-Forwarded-For", "X-Sub",
                                          "Cookie", "Expect", "Te", "Upgrade", "Content-Type", "Accept-Encoding",
                                          "X-Real-Ip", "Forwarded", "Keep-Alive", "X_Sub"]),
                         st.text(TOKEN_CHARS, min_size=1, max_size=12))
HEADER_VALUES = st.one_of(st.sampled_from(["canary", "Bearer a.b.c", "Bearer ", "X-Sub, close", "keep-alive",
                                           "100-continue", "websocket", "trailers", "1.2.3.4", "%00", "chunked"]),
                          st.text(st.characters(min_codepoint=0x20, max_codepoint=0xff,
                                                blacklist_characters="\x7f"), max_size=40))
HOSTS = st.one_of(st.sampled_from(["a.example", "b.example", "A.EXAMPLE:80", "[::1]:80", "127.0.0.1", "", ":",
                                   "x.example:99999", "a.example.", "%41.example", "a..example"]),
                  st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e), max_size=20))


@FUZZ
@given(method=METHODS, path=PATHS, host=HOSTS, headers=st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=6))
def test_request_path_answers_cleanly(gateway_port, method, path, host, headers):
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", *(f"{name}: {value}" for name, value in headers),
             "Connection: close"]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    answer = exchange(gateway_port, request)
    if not answer:
        return  # the server may close on a request it cannot parse; it must not hang or answer 500
    assert status_of(answer) < 500 or status_of(answer) in (501, 505), answer[:300]


def test_non_utf8_cookie_is_401_not_500(gateway_port):
    answer = exchange(gateway_port, b"GET /locked HTTP/1.1\r\nHost: x\r\nCookie: jwt=\x80\r\nConnection: close\r\n\r\n")
    assert status_of(answer) == 401, answer[:300]


@FUZZ
@given(raw=st.binary(max_size=200))
def test_raw_bytes_never_crash_the_server(gateway_port, raw):
    answer = exchange(gateway_port, raw + b"\r\n\r\n")
    if answer:
        assert status_of(answer) != 500, answer[:300]
    assert status_of(exchange(gateway_port, b"GET /open HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")) == 200


# --- path confusion against a normalising upstream -----------------------------------------------------

@pytest.fixture(scope="module")
def site_ports(tmp_path_factory) -> Iterator[dict]:
    """The site routes (``PathPrefix(/)`` public, ``/admin`` behind a JWT) over Python's ``http.server``,
    which decodes %XX and resolves ``..``: on the fast server and on pywsgi."""
    from tests.test_request_path import FileUpstream, write_conf, write_site
    root = tmp_path_factory.mktemp("site")
    files = FileUpstream(write_site(root / "www"))
    echo = RunningServer(named_echo_app("echo"))
    gateway = Gateway(write_conf(root, files.url, echo.url))
    assert not gateway.config.errors, gateway.config.errors
    servers = {name: RunningServer(gateway, server=name) for name in ("fast", "pywsgi")}
    yield {name: server.port for name, server in servers.items()}
    for server in servers.values():
        server.stop()
    echo.stop()
    files.stop()


TARGET_STARTS = st.sampled_from(["/", "", "//", "/public/", "http://x", "http://x/", "HTTP://x/public/", "https://x",
                                 "a1://x/", "http:/", "http:", "/public/..", "\\"])
TARGET_PIECES = st.sampled_from(["..", ".", "/", "//", "%2F", "%2f", "%2e", "%2E", "%2e%2e", ".%2E", "%5C", "%5c",
                                 "\\", ";", "..;", "%3B", "%00", "%25", "%252e", "%3F", "?", "#", "%23", "admin",
                                 "Admin", "ADMIN", "%61dmin", "%41DMIN", "adm%69n", "public", "secret.txt",
                                 "secret%2Etxt", "%20", "~", "x"])
TARGET_ENDS = st.sampled_from(["", "admin/secret.txt", "/admin/secret.txt", "%2Fadmin%2Fsecret.txt",
                               "%2e%2e/admin/secret.txt"])
TARGETS = st.builds(lambda start, pieces, end: start + "".join(pieces) + end,
                    TARGET_STARTS, st.lists(TARGET_PIECES, max_size=8), TARGET_ENDS)


@settings(FUZZ, max_examples=2 * EXAMPLES)
@given(server=st.sampled_from(["fast", "pywsgi"]), target=TARGETS)
def test_no_spelling_of_a_path_serves_admin_without_a_token(site_ports, server, target):
    from tests.test_request_path import SECRET_TEXT
    request = f"GET {target} HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n".encode("latin-1")
    answer = exchange(site_ports[server], request)
    assert SECRET_TEXT.encode() not in answer, (target, answer[:300])
    if answer:
        assert status_of(answer) != 500, answer[:300]
