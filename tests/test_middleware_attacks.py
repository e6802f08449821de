"""Attacks on the HTTP middlewares in composition with ``plugin.jwt`` (issue 18's review), each through a real
Gateway, real upstreams and real sockets: every test here passes because the gateway refuses the attack.

The attacker's goals: reach a route protected by ``plugin.jwt``, basicAuth, forwardAuth or ipAllowList without
valid credentials; read a credential (a header sent to the wrong server); or stall the gateway with one
request. Attacks that succeeded before a fix say so in their docstring.
"""
from __future__ import annotations

import base64
import json
import socket
import textwrap
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import bcrypt
import gevent
import gevent.event
import pytest
import requests

from gatekeeper.jwt.mint import mint
from gatekeeper.middlewares.htpasswd import sha_line
from gatekeeper.requestpath import PathPolicy, PathSettings
from tests.conftest import exchange, status_of
from tests.middleware_gateway import built, file_server

DEFAULT_POLICY = PathPolicy()
SECRET = "attacks-secret-0123456789abcdef0123"
ALICE = sha_line("alice", "pa:ss\u00e9")   # a colon and a non-ASCII letter in the password
JWT = f'{{plugin: {{jwt: {{signingSecret: "{SECRET}", forwardHeaders: {{X-User: sub}}}}}}}}'


def token(sub: str = "alice") -> str:
    return mint({"sub": sub, "exp": int(time.time()) + 300}, secret=SECRET)


def bearer(sub: str = "alice") -> Dict[str, str]:
    return {"Authorization": f"Bearer {token(sub)}"}


def headers_of(echoed: Dict[str, Any], name: str) -> List[str]:
    return [v for n, v in echoed["headers"] if n.lower() == name.lower()]


def body_of(answer: bytes) -> Dict[str, Any]:
    return json.loads(answer.partition(b"\r\n\r\n")[2])


class Recorder:
    """A WSGI upstream that remembers every request's environ (headers, path, body) and answers ``reply``."""

    def __init__(self, reply: Optional[Callable[[Dict[str, Any]], Any]] = None) -> None:
        self.seen: List[Dict[str, Any]] = []
        self.reply = reply

    def __call__(self, environ, start_response):
        body = environ["wsgi.input"].read()
        seen = {k: v for k, v in environ.items() if k.startswith("HTTP_") or k in ("CONTENT_LENGTH", "PATH_INFO")}
        seen.update(body=body, target=environ.get("RAW_URI") or environ.get("PATH_INFO"))
        self.seen.append(seen)
        if self.reply is not None:
            return self.reply(environ, start_response)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "8")])
        return [b"upstream"]


@pytest.fixture
def gateway(conf_d, wsgi_server) -> Callable[..., Any]:
    """``gateway(yaml, policy=..., trusted=[...])``: a Gateway over one manifest (``http:`` block), served."""
    def start(manifest: str, policy: PathPolicy = DEFAULT_POLICY, trusted: tuple = ()) -> Any:
        conf_d("routes.yaml", manifest)
        return wsgi_server(built(conf_d.root, request_path=PathSettings(policy), trusted_proxies=trusted))
    return start


@pytest.fixture
def files_upstream(tmp_path: Path) -> Iterator[str]:
    """Python's http.server over pub/hello.txt and admin/secret.txt: it decodes the path and resolves ``..``
    and ``.`` segments, as many upstreams do."""
    with file_server(tmp_path / "files", {"pub/hello.txt": "hello", "admin/secret.txt": "admin secret"}) as url:
        yield url


# --- path rewrites against a normalising upstream ---------------------------------------------------------

def files_routes(files: str, middleware: str) -> str:
    """A public router on /pub (rewritten by ``middleware``) and a JWT-protected one on /admin, one upstream."""
    return f"""
        http:
          routers:
            public: {{rule: "PathPrefix(`/pub`)", service: files, middlewares: [rewrite]}}
            admin: {{rule: "PathPrefix(`/admin`)", service: files, middlewares: [auth]}}
          middlewares:
            auth: {JWT}
            rewrite: {middleware}
          services:
            files: {{loadBalancer: {{servers: [{{url: "{files}"}}]}}}}
        """


@pytest.mark.parametrize("middleware, sent", [
    ("{stripPrefix: {prefixes: [/pub]}}", "/pub./admin/secret.txt"),
    ("{stripPrefix: {prefixes: [/pub]}}", "/pub../admin/secret.txt"),
    ("{stripPrefix: {prefixes: [/pub]}}", "/pub..%2Fadmin%2Fsecret.txt"),
    ("{stripPrefixRegex: {regex: ['^/pub']}}", "/pub./admin/secret.txt"),
    ("{stripPrefixRegex: {regex: ['^/pub']}}", "/pub../admin/secret.txt"),
    ("{replacePathRegex: {regex: '^/pub(.*)', replacement: '/pub$1'}}", "/pub/..%2Fadmin/secret.txt"),
    ("{replacePathRegex: {regex: '^/pub(.*)', replacement: '$1'}}", "/pub./admin/secret.txt"),
], ids=["stripPrefix-dot", "stripPrefix-dotdot", "stripPrefix-encoded-slash", "stripPrefixRegex-dot",
        "stripPrefixRegex-dotdot", "replacePathRegex-encoded-slash", "replacePathRegex-dot"])
def test_a_rewrite_never_reaches_a_protected_file_on_a_normalising_upstream(gateway, files_upstream,
                                                                          middleware, sent):
    """Before the fix, stripPrefix forwarded ``/pub./admin/secret.txt`` as ``/./admin/secret.txt`` (and
    ``/pub../admin/...`` as ``/../admin/...``): http.server resolved it and served the JWT-protected file
    to a client without a token."""
    server = gateway(files_routes(files_upstream, middleware), policy=PathPolicy(allowed=frozenset({"%2F"})))
    answer = exchange(server.port, f"GET {sent} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode())
    assert b"admin secret" not in answer
    assert status_of(answer) in (400, 404)
    plain = requests.get(server.url + "/pub/hello.txt", timeout=5)
    assert plain.status_code in (200, 404)  # the rewrite still works for a clean path
    assert requests.get(server.url + "/admin/secret.txt", timeout=5).status_code == 401



def test_an_encoded_slash_entry_point_does_not_route_around_a_protected_prefix(gateway, files_upstream):
    """Found while attacking the rewrites, outside them: no middleware was needed, the router on ``/pub``
    forwarded ``/pub/..%2F..%2Fadmin/secret.txt`` and http.server resolved it to the protected file. The
    entry point now refuses an encoded slash that hides a dot segment (requestpath.hides_dot_segment)."""
    server = gateway(files_routes(files_upstream, "{headers: {customRequestHeaders: {X-A: b}}}"),
                     policy=PathPolicy(allowed=frozenset({"%2F"})))
    answer = exchange(server.port, b"GET /pub/..%2F..%2Fadmin/secret.txt HTTP/1.1\r\nHost: a\r\n"
                                   b"Connection: close\r\n\r\n")
    assert b"admin secret" not in answer
    assert answer.startswith(b"HTTP/1.1 400 ")

# --- headers a middleware sets, sent by the client ---------------------------------------------------------

def recorded_routes(upstream: str, chain: str, middlewares: str) -> str:
    return f"""
        http:
          routers:
            app: {{rule: "PathPrefix(`/`)", service: app, middlewares: {chain}}}
          middlewares:
            auth: {JWT}
{textwrap.indent(textwrap.dedent(middlewares), " " * 12)}
          services:
            app: {{loadBalancer: {{servers: [{{url: "{upstream}"}}]}}}}
        """


SPOOFS = [  # (header as the client spells it, value): case variants and repeats of what a middleware sets
    ("X-WebAuth-User", "admin"), ("x-webauth-user", "admin"), ("X-WEBAUTH-USER", "root"),
    ("X-Auth-User", "admin"), ("x-auth-user", "admin"), ("X-User", "admin"), ("x-user", "root"),
    ("X-Replaced-Path", "/admin"), ("X-Forwarded-Prefix", "/admin"), ("X-Forwarded-User", "admin"),
]


def raw_request(port: int, target: str, headers: List[tuple], body: bytes = b"") -> bytes:
    lines = [f"GET {target} HTTP/1.1", "Host: a", "Connection: close", *(f"{n}: {v}" for n, v in headers)]
    if body:
        lines[0] = f"POST {target} HTTP/1.1"
        lines.append(f"Content-Length: {len(body)}")
    return exchange(port, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)


@pytest.mark.parametrize("chain", ["[basic, auth]", "[auth, basic]", "[both]"], ids=["basic-jwt", "jwt-basic", "chain"])
def test_a_client_cannot_set_the_user_headers_basic_auth_and_jwt_set(gateway, wsgi_server, chain):
    """Spoofed copies (any case, repeated, with ``_`` for ``-``, named in ``Connection`` to drop the real one)
    never reach the upstream: it sees exactly the values the middlewares set."""
    recorder = Recorder()
    upstream = wsgi_server(recorder)
    server = gateway(recorded_routes(upstream.url, chain, f"""
        basic: {{basicAuth: {{users: ["{ALICE}"], headerField: X-WebAuth-User}}}}
        both: {{chain: {{middlewares: [basic, auth]}}}}
        """))
    credentials = "Basic " + base64.b64encode("alice:pa:ss\u00e9".encode()).decode()
    jwt_header = bearer("bob")["Authorization"]
    # basicAuth and jwt both read Authorization: two headers are joined, and neither accepts the pair
    sent = [("Authorization", credentials), ("Authorization", jwt_header), *SPOOFS,
            ("X_WebAuth_User", "admin"), ("X_User", "admin"), ("Connection", "X-WebAuth-User, X-User")]
    assert status_of(raw_request(server.port, "/x", sent)) == 401
    assert recorder.seen == []


def test_basic_auth_header_field_cannot_be_spoofed_or_dropped(gateway, wsgi_server):
    recorder = Recorder()
    upstream = wsgi_server(recorder)
    server = gateway(recorded_routes(upstream.url, "[basic]", f"""
        basic: {{basicAuth: {{users: ["{ALICE}"], headerField: X-WebAuth-User, removeHeader: true}}}}
        """))
    credentials = "Basic " + base64.b64encode("alice:pa:ss\u00e9".encode()).decode()
    sent = [("Authorization", credentials), *SPOOFS, ("X_WebAuth_User", "admin"),
            ("Connection", "X-WebAuth-User")]
    assert status_of(raw_request(server.port, "/x", sent)) == 200
    seen = recorder.seen[-1]
    assert seen["HTTP_X_WEBAUTH_USER"] == "alice"
    assert "HTTP_AUTHORIZATION" not in seen
    assert "HTTP_X_FORWARDED_PREFIX" not in seen  # the entry drops it from a peer that is no trusted proxy


def test_jwt_forward_headers_cannot_be_spoofed_or_dropped_after_a_rewrite(gateway, wsgi_server):
    recorder = Recorder()
    upstream = wsgi_server(recorder)
    server = gateway(recorded_routes(upstream.url, "[auth, rewrite]", """
        rewrite: {replacePathRegex: {regex: '^/nomatch/(.*)', replacement: '/x/$1'}}
        """))
    sent = [*bearer("bob").items(), *SPOOFS, ("X_User", "admin"), ("Connection", "X-User")]
    assert status_of(raw_request(server.port, "/x", sent)) == 200
    seen = recorder.seen[-1]
    assert seen["HTTP_X_USER"] == "bob"
    assert "HTTP_X_REPLACED_PATH" not in seen, "a path that was not rewritten carries no client X-Replaced-Path"


# --- forwardAuth ------------------------------------------------------------------------------------------

def auth_server(status: str = "200 OK", headers: tuple = (), body: bytes = b"", chunked: bool = False) -> Recorder:
    """An auth server answering ``status`` with ``headers`` and ``body`` (streamed without a length when
    ``chunked``), remembering what it was asked."""
    def reply(environ, start_response):
        sent = list(headers) if chunked else [*headers, ("Content-Length", str(len(body)))]
        start_response(status, sent)
        return iter([body[:1], body[1:]]) if chunked else [body]
    return Recorder(reply)


def forward_auth_routes(upstream: str, auth: str, chain: str, extra: str = "") -> str:
    return recorded_routes(upstream, chain, f"""
        sso: {{forwardAuth: {{address: "{auth}/check", {extra}}}}}
        """)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("extra", [
    "authResponseHeadersRegex: '.*'",
    "authResponseHeaders: [X-Auth-User, Content-Length, Transfer-Encoding, Connection, Host, Keep-Alive, Te, "
    "Trailer, Upgrade, Content-Type]",
], ids=["regex-all", "named"])
def test_an_auth_answer_cannot_reframe_the_request_it_lets_through(gateway, wsgi_server, extra, chunked):
    """Before the fix, the auth server's own ``Content-Length: 2`` (or ``Transfer-Encoding: chunked``) was set
    on the request when the copy list or regexp matched it: the upstream got a 2-byte body, or a chunked header
    over a body with a length, and the rest of the client's body was left to be read as another request.
    As Go's client does for Traefik, framing, hop-by-hop headers and Host are never taken from the answer."""
    recorder, auth = Recorder(), auth_server(headers=(("X-Auth-User", "alice"), ("Connection", "keep-alive"),
                                                      ("Keep-Alive", "timeout=5"), ("Content-Type", "text/x-auth")),
                                             body=b"ok", chunked=chunked)
    upstream, auth_srv = wsgi_server(recorder), wsgi_server(auth)
    server = gateway(forward_auth_routes(upstream.url, auth_srv.url, "[sso]", extra))
    body = b"hello, this is the client's whole body"
    with requests.Session() as session:
        for _ in range(2):  # the same connection serves the next request: nothing of the body was left behind
            answer = session.post(server.url + "/x", data=body, headers={"Content-Type": "text/plain"}, timeout=5)
            assert answer.status_code == 200 and answer.content == b"upstream"
    for seen in recorder.seen:
        assert seen["body"] == body
        assert seen["CONTENT_LENGTH"] == str(len(body))
        assert seen["HTTP_X_AUTH_USER"] == "alice"
        assert seen["HTTP_HOST"] == f"127.0.0.1:{server.port}"
        assert "HTTP_TRANSFER_ENCODING" not in seen and "HTTP_KEEP_ALIVE" not in seen
    assert len(recorder.seen) == 2


def test_an_auth_servers_2xx_body_and_cookies_stay_with_it(gateway, wsgi_server):
    """The auth server's 2xx body and cookies never reach the client (only ``addAuthCookiesToResponse``'s)."""
    auth = auth_server(headers=(("Set-Cookie", "auth-session=s3cret"), ("Set-Cookie", "ok=1")),
                       body=b"AUTH-SERVER-BODY")
    upstream, auth_srv = wsgi_server(Recorder()), wsgi_server(auth)
    server = gateway(forward_auth_routes(upstream.url, auth_srv.url, "[sso]", "addAuthCookiesToResponse: [ok]"))
    answer = requests.get(server.url + "/x", timeout=5)
    assert answer.content == b"upstream"
    assert answer.headers.get("Set-Cookie") == "ok=1"


@pytest.mark.parametrize("chain", ["[sso, auth]", "[auth, sso]"], ids=["forwardAuth-jwt", "jwt-forwardAuth"])
def test_a_client_cannot_smuggle_auth_response_headers_or_redirect_the_auth_request(gateway, wsgi_server, chain):
    """A client naming its own X-Auth-User, or an absolute-form target and Host of another server, reaches
    neither the upstream with that user nor another auth server: the address is the configuration's."""
    recorder, auth = Recorder(), auth_server()  # 2xx with no X-Auth-User
    upstream, auth_srv = wsgi_server(recorder), wsgi_server(auth)
    server = gateway(forward_auth_routes(upstream.url, auth_srv.url, chain,
                                         "authResponseHeaders: [X-Auth-User], trustForwardHeader: true"))
    sent = [*bearer("bob").items(), ("X-Auth-User", "admin"), ("x-auth-user", "root"), ("X_Auth_User", "admin"),
            ("Connection", "X-Auth-User"), ("X-Forwarded-Uri", "/public"), ("X-Forwarded-Method", "OPTIONS"),
            ("X-Forwarded-Host", "public.example")]
    target = f"http://127.0.0.1:{upstream.port}/x"  # absolute form naming the upstream, not the auth server
    assert status_of(raw_request(server.port, target, sent)) == 200
    assert "HTTP_X_AUTH_USER" not in recorder.seen[-1]
    assert [seen["target"] for seen in auth.seen] == ["/check"]
    assert auth.seen[-1]["HTTP_X_FORWARDED_URI"] == "/x"  # the target as forwarded, not the client's claim
    assert auth.seen[-1]["HTTP_X_FORWARDED_METHOD"] == "GET"  # not the client's: it is no trusted proxy
    assert auth.seen[-1]["HTTP_X_FORWARDED_HOST"] != "public.example"
    assert status_of(raw_request(server.port, "/x", [("X-Auth-User", "admin")])) == (401 if "auth" in chain else 200)


def test_an_auth_refusal_is_framed_by_the_gateway(gateway, wsgi_server):
    """A refusal whose auth server answers chunked with a lying header set reaches the client well framed,
    and the connection serves the next request; an oversized refusal body is 401, not streamed."""
    auth = auth_server("403 Forbidden", headers=(("Content-Length", "999"), ("X-Why", "no")), body=b"denied",
                       chunked=True)
    upstream, auth_srv = wsgi_server(Recorder()), wsgi_server(auth)
    server = gateway(forward_auth_routes(upstream.url, auth_srv.url, "[sso]", "maxResponseBodySize: 4"))
    with requests.Session() as session:
        for _ in range(2):
            answer = session.get(server.url + "/x", timeout=5)
            assert answer.status_code == 401 and b"denied" not in answer.content


# --- errors: what the page service is sent, what the client gets -------------------------------------------

def error_page_routes(upstream: str, pages: str, jwt_options: str, rewrites: str = "") -> str:
    return f"""
        http:
          routers:
            app: {{rule: "PathPrefix(`/`)", service: app, middlewares: [pages, auth]}}
          middlewares:
            auth: {{plugin: {{jwt: {{signingSecret: "{SECRET}", {jwt_options}}}}}}}
            pages: {{errors: {{status: ["401", "500-599"], service: pages, query: "/{{status}}.html"{rewrites}}}}}
          services:
            app: {{loadBalancer: {{servers: [{{url: "{upstream}"}}]}}}}
            pages: {{loadBalancer: {{servers: [{{url: "{pages}"}}]}}}}
        """


CREDENTIAL_HEADERS = ("HTTP_AUTHORIZATION", "HTTP_COOKIE", "HTTP_X_API_TOKEN", "HTTP_PROXY_AUTHORIZATION")


@pytest.mark.parametrize("jwt_options, sent, path", [
    ("tokenSource: {header: X-Api-Token}", {"X-Api-Token": "expired-or-forged"}, "/x"),
    ("tokenSource: {header: X-Api-Token}, forwardAuthorization: true", {"X-Api-Token": "VALID"}, "/status/503"),
    ("tokenSource: {header: X-Api-Token, headerAuthScheme: Token}", {"X-Api-Token": "Token VALID"}, "/status/500"),
    ("tokenKey: jwt", {}, "/x?jwt=forged&other=1"),
], ids=["refused-custom-header", "forwarded-custom-header", "custom-scheme", "query-token"])
def test_an_error_page_request_carries_no_credential(gateway, wsgi_server, jwt_options, sent, path):
    """Before the fix, a token in a custom header (``tokenSource.header``) was sent to the page service, a
    less trusted service than the one it was meant for (Authorization and Cookie were already dropped)."""
    pages, upstream = Recorder(), Recorder()
    pages_srv = wsgi_server(pages)
    upstream_srv = wsgi_server(partial(named_status_app, upstream))
    server = gateway(error_page_routes(upstream_srv.url, pages_srv.url, jwt_options))
    headers = {name: value.replace("VALID", token()) for name, value in sent.items()}
    headers.update({"Cookie": "session=s3cret", "Authorization": "Basic YWxpY2U6c2VjcmV0",
                    "Proxy-Authorization": "Basic eDp5"})
    answer = requests.get(server.url + path, headers=headers, timeout=5)
    assert answer.status_code in (401, 500, 503) and answer.content == b"upstream"  # the page's body
    assert len(pages.seen) == 1
    seen = pages.seen[0]
    assert [key for key in CREDENTIAL_HEADERS if key in seen] == []
    assert "jwt=" not in seen["target"] and "forged" not in str(seen)


def named_status_app(recorder: Recorder, environ, start_response):
    """The protected upstream: ``/status/NNN`` answers NNN, anything else a secret 200."""
    recorder(environ, lambda *a: None)
    path = environ["PATH_INFO"]
    status = path[len("/status/"):] + " X" if path.startswith("/status/") else "200 OK"
    start_response(status, [("Content-Length", "16")])
    return [b"PROTECTED ANSWER"]


def test_a_status_rewrite_never_shows_the_protected_answer(gateway, wsgi_server):
    """``statusRewrites`` turning a 401 into a 200 gives the page service's answer, never the upstream's:
    a request without a token still never reaches it."""
    pages, upstream = Recorder(), Recorder()
    pages_srv, upstream_srv = wsgi_server(pages), wsgi_server(partial(named_status_app, upstream))
    server = gateway(error_page_routes(upstream_srv.url, pages_srv.url, "forwardHeaders: {X-User: sub}",
                                       ', statusRewrites: {"401": 200, "500-599": 200}'))
    answer = requests.get(server.url + "/secret", timeout=5)
    assert (answer.status_code, answer.content) == (200, b"upstream")
    assert upstream.seen == []
    answer = requests.get(server.url + "/secret", headers=bearer(), timeout=5)
    assert (answer.status_code, answer.content) == (200, b"PROTECTED ANSWER")
    answer = requests.get(server.url + "/status/502", headers=bearer(), timeout=5)
    assert (answer.status_code, answer.content) == (200, b"upstream")  # the page, not the upstream's body


# --- CORS -------------------------------------------------------------------------------------------------

CORS = ("{headers: {accessControlAllowOriginList: ['https://app.example'], accessControlAllowCredentials: true, "
        "accessControlAllowOriginListRegex: ['^https://[a-z]+\\.example\\.com$'], accessControlAllowMethods: [GET], "
        "addVaryHeader: true}}")


@pytest.mark.parametrize("chain", ["[cors, auth]", "[auth, cors]"], ids=["cors-jwt", "jwt-cors"])
def test_a_preflight_never_reaches_the_upstream_and_other_options_need_a_token(gateway, wsgi_server, chain):
    recorder = Recorder()
    server = gateway(recorded_routes(wsgi_server(recorder).url, chain, f"cors: {CORS}"))
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "DELETE"}
    answer = requests.options(server.url + "/x", headers=preflight, timeout=5)
    if chain == "[cors, auth]":
        assert answer.status_code == 200 and answer.content == b""
        assert answer.headers["Access-Control-Allow-Origin"] == "https://app.example"
    else:
        assert answer.status_code == 401  # jwt first: the preflight needs a token like anything else
    assert requests.options(server.url + "/x", headers={"Origin": "https://app.example"}, timeout=5).status_code == 401
    evil = requests.options(server.url + "/x", headers={**preflight, "Origin": "https://evil.example"}, timeout=5)
    assert "Access-Control-Allow-Origin" not in evil.headers
    assert recorder.seen == []


@pytest.mark.parametrize("origin", [
    "https://app.example.evil.net", "https://evil.example.com.evil.net", "https://app.example:443",
    "http://app.example", "null", "https://APP.example", "https://a.b.example.com", "https://app.example/",
    "https://app.example, https://evil.example", "https://evil.example, https://app.example",
])
def test_credentials_are_never_offered_to_an_origin_not_allowed(gateway, wsgi_server, origin):
    server = gateway(recorded_routes(wsgi_server(Recorder()).url, "[cors, auth]", f"cors: {CORS}"))
    for headers in ({"Origin": origin, **bearer()}, {"Origin": origin, "Access-Control-Request-Method": "GET"}):
        method = "OPTIONS" if "Access-Control-Request-Method" in headers else "GET"
        answer = requests.request(method, server.url + "/x", headers=headers, timeout=5)
        assert "Access-Control-Allow-Origin" not in answer.headers
        assert "Access-Control-Allow-Credentials" not in answer.headers
    allowed = requests.get(server.url + "/x", headers={"Origin": "https://api.example.com", **bearer()}, timeout=5)
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://api.example.com"



@pytest.mark.parametrize("origin", ["https://app.example.com.evil.net", "https://evil.net#https://admin.example.com"])
def test_an_alternation_does_not_unanchor_an_origin_pattern(gateway, wsgi_server, origin):
    """Before the fix, ``^https://app\\.example\\.com|https://admin\\.example\\.com$`` passed the anchoring
    check (it starts with ``^`` and ends with ``$``) while each branch was anchored at one end only:
    ``https://app.example.com.evil.net`` got its origin echoed with credentials allowed."""
    cors = ("{headers: {accessControlAllowCredentials: true, accessControlAllowOriginListRegex: "
            "['^https://app\\.example\\.com|https://admin\\.example\\.com$']}}")
    server = gateway(recorded_routes(wsgi_server(Recorder()).url, "[cors, auth]", f"cors: {cors}"))
    answer = requests.get(server.url + "/x", headers={"Origin": origin, **bearer()}, timeout=5)
    assert "Access-Control-Allow-Origin" not in answer.headers
    for allowed in ("https://app.example.com", "https://admin.example.com"):
        answer = requests.get(server.url + "/x", headers={"Origin": allowed, **bearer()}, timeout=5)
        assert answer.headers["Access-Control-Allow-Origin"] == allowed

# --- basicAuth --------------------------------------------------------------------------------------------

def basic(user: bytes, password: bytes) -> str:
    return "Basic " + base64.b64encode(user + b":" + password).decode()


@pytest.fixture(scope="module")
def bcrypt_line() -> str:
    """alice with a 72-byte password (bcrypt reads no further), cost 10."""
    return "alice:" + bcrypt.hashpw(b"p" * 72, bcrypt.gensalt(10)).decode()


@pytest.mark.parametrize("authorization", [
    basic(b"alice", b"p" * 72 + b"extra"),            # bcrypt would ignore what follows byte 72
    basic(b"alice", b"p" * 71),
    basic(b"alice\xff", b"p" * 72), basic(b"\xc3\x28", b"x"), basic(b"alice", b"p" * 72 + b"\xff"),
    basic(b"alice", b"p" * 72)[:-2], "Basic " + "A" * 5000, basic(b"alice", b"x" * 3000),
    basic(b"alice", b"p" * 72) + ", Basic eDp5", "Bearer " + basic(b"alice", b"p" * 72)[6:],
    "Basic\t" + basic(b"alice", b"p" * 72)[6:] + "\t", basic(b"ALICE", b"p" * 72), basic(b"alice ", b"p" * 72),
    basic(b"alice:", b"p" * 72),
], ids=["past-72-bytes", "71-bytes", "user-not-utf8", "bad-utf8", "password-not-utf8", "truncated-base64",
        "huge-header", "huge-password", "two-headers", "other-scheme", "tabs", "case", "trailing-space",
        "colon-in-user"])
def test_basic_auth_refuses_near_misses(gateway, wsgi_server, bcrypt_line, authorization):
    recorder = Recorder()
    server = gateway(recorded_routes(wsgi_server(recorder).url, "[basic]", f"""
        basic: {{basicAuth: {{users: ["{bcrypt_line}"]}}}}
        """))
    with requests.Session() as session:
        assert session.get(server.url + "/x", headers={"Authorization": basic(b"alice", b"p" * 72)},
                           timeout=5).status_code == 200  # the right one passes (and is cached)
        answer = session.get(server.url + "/x", headers={"Authorization": authorization}, timeout=5)
    assert answer.status_code == 401 and answer.headers["WWW-Authenticate"] == 'Basic realm="traefik"'
    assert len(recorder.seen) == 1


def test_an_unknown_user_costs_a_full_check(gateway, wsgi_server, bcrypt_line):
    """Timing does not tell which names exist: a failed check costs what the slowest hash costs, whatever the
    name (a SHA1 check takes microseconds, a cost-10 bcrypt tens of milliseconds). Before the fix, with a
    SHA1 user listed first, an unknown name was checked against that SHA1 hash: it answered at once where a
    bcrypt user's name took tens of milliseconds, and a SHA1 user's wrong password answered at once too."""
    server = gateway(recorded_routes(wsgi_server(Recorder()).url, "[basic]", f"""
        basic: {{basicAuth: {{users: ["{sha_line('bob', 'hunter2')}", "{bcrypt_line}"]}}}}
        """))

    def timed(user: bytes) -> float:
        start = time.perf_counter()
        assert requests.get(server.url + "/x", headers={"Authorization": basic(user, b"guess")},
                            timeout=10).status_code == 401
        return time.perf_counter() - start
    known = sorted(timed(b"alice") for _ in range(3))[1]
    unknown = sorted(timed(b"mallory") for _ in range(3))[1]
    cheap = sorted(timed(b"bob") for _ in range(3))[1]
    assert unknown > known / 3 and cheap > known / 3, (known, unknown, cheap)
    assert requests.get(server.url + "/x", headers={"Authorization": basic(b"bob", b"hunter2")},
                        timeout=5).status_code == 200


# --- ipAllowList ------------------------------------------------------------------------------------------

LAN = "lan: {ipAllowList: {sourceRange: ['10.0.0.0/8', '2001:db8::/32'], ipStrategy: {depth: 1}}}"
PEER_ONLY = "lan: {ipAllowList: {sourceRange: ['10.0.0.0/8', '2001:db8::/32']}}"


@pytest.mark.parametrize("trusted, middleware, forwarded, allowed", [
    (False, LAN, ["10.0.0.1"], False),                     # a client naming its own address: dropped at the entry
    (False, PEER_ONLY, ["10.0.0.1"], False),
    (True, PEER_ONLY, ["10.0.0.1"], False),                # no ipStrategy: the peer (the proxy) is the client
    (True, LAN, ["10.0.0.1, 192.0.2.9"], False),           # the proxy's own hop is the last one
    (True, LAN, ["192.0.2.9, 10.0.0.1"], True),
    (True, LAN, ["10.0.0.1", "192.0.2.9"], False),         # two headers: joined in order, the last hop counts
    (True, LAN, ["192.0.2.9,10.0.0.1 "], True),
    (True, LAN, ["10.0.0.1, 192.0.2.9, "], False),         # an empty last hop is skipped, not read as allowed
    (True, LAN, ["::ffff:10.0.0.1"], True),                # IPv4-mapped IPv6 counts as its IPv4 address
    (True, LAN, ["::ffff:192.0.2.9"], False),
    (True, LAN, ["[2001:db8::1]"], True),
    (True, LAN, ["fe80::1%eth0"], False), (True, LAN, ["2001:db8::1%eth0"], True),
    (True, LAN, ["10.0.0.1%eth0"], False), (True, LAN, ["10.0.0.1%"], False),
    (True, LAN, ["10.0.0.1:8080"], False),                 # odd spellings are no address: refused
    (True, LAN, ["010.0.0.1"], False), (True, LAN, ["0x0a000001"], False), (True, LAN, ["10.1"], False),
    (True, LAN, ["10.0.0.1/8"], False), (True, LAN, ["10.0.0.1 192.0.2.9"], False), (True, LAN, [""], False),
    (True, LAN, ["unknown"], False), (True, LAN, [], False),
])
def test_ip_allow_list_reads_only_the_hop_it_trusts(gateway, wsgi_server, trusted, middleware, forwarded, allowed):
    recorder = Recorder()
    server = gateway(recorded_routes(wsgi_server(recorder).url, "[lan, auth]", middleware),
                     trusted=("127.0.0.1/32",) if trusted else ())
    sent = [("X-Forwarded-For", value) for value in forwarded]
    assert status_of(raw_request(server.port, "/x", sent)) == (401 if allowed else 403)  # allowed: then the token
    assert status_of(raw_request(server.port, "/x", [*sent, *bearer().items()])) == (200 if allowed else 403)
    assert len(recorder.seen) == (1 if allowed else 0)


def test_jwt_before_ip_allow_list_still_refuses_a_valid_token_from_outside(gateway, wsgi_server):
    recorder = Recorder()
    server = gateway(recorded_routes(wsgi_server(recorder).url, "[auth, lan]", PEER_ONLY))
    assert status_of(raw_request(server.port, "/x", [*bearer().items(), ("X-Forwarded-For", "10.0.0.1"),
                                                     ("X-Real-Ip", "10.0.0.1")])) == 403
    assert status_of(raw_request(server.port, "/x", [("X-Forwarded-For", "10.0.0.1")])) == 401
    assert recorder.seen == []


# --- buffering and compress: one request must not stall the gateway or hold unbounded memory ----------------

@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_buffering_before_jwt_refuses_a_large_body_and_never_forwards_it(gateway, wsgi_server, chunked):
    recorder = Recorder()
    server = gateway(recorded_routes(wsgi_server(recorder).url, "[buffer, auth]", """
        buffer: {buffering: {maxRequestBodyBytes: 1000, memRequestBodyBytes: 10}}
        """))
    body = b"x" * 5000
    data = iter([body[:2500], body[2500:]]) if chunked else body
    answer = requests.post(server.url + "/x", data=data, headers=bearer(), timeout=5)
    assert answer.status_code == 413
    small = requests.post(server.url + "/x", data=b"y" * 999, headers=bearer(), timeout=5)
    assert small.status_code == 200
    assert [seen["body"] for seen in recorder.seen] == [b"y" * 999]


@pytest.mark.parametrize("middleware", [
    "slow: {buffering: {memRequestBodyBytes: 10}}",
    "slow: {forwardAuth: {address: 'http://127.0.0.1:1/never', forwardBody: true}}",
], ids=["buffering", "forwardAuth-forwardBody"])
def test_a_trickled_body_holds_only_its_own_request(gateway, wsgi_server, middleware):
    """A slowloris body to a middleware that reads it whole waits on its socket only: another client is
    answered at once meanwhile."""
    recorder = Recorder()
    server = gateway(recorded_routes(wsgi_server(recorder).url, "[slow]", middleware))
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as slow:
        slow.sendall(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n" + b"x" * 10)
        gevent.sleep(0.1)
        timings = []
        for _ in range(3):
            start = time.perf_counter()
            requests.get(server.url + "/x", timeout=5)
            timings.append(time.perf_counter() - start)
            slow.sendall(b"x")
        assert max(timings) < 1.0, timings


@pytest.fixture
def lying_upstream() -> Iterator[int]:
    """A raw upstream announcing a 100,000-byte answer, sending 5,000 bytes, then closing."""
    from gevent.server import StreamServer

    def handle(sock, _address):
        sock.recv(65536)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100000\r\n\r\n" + b"a" * 5000)
        sock.close()
    server = StreamServer(("127.0.0.1", 0), handle)
    server.start()
    yield server.server_port
    server.stop(timeout=1)


@pytest.mark.parametrize("chain", ["[zip, auth]", "[auth, zip]", "[zip, buffer, auth]"])
def test_an_answer_shorter_than_its_length_never_hangs_the_client_or_the_gateway(gateway, lying_upstream, chain):
    server = gateway(recorded_routes(f"http://127.0.0.1:{lying_upstream}", chain, """
        zip: {compress: {minResponseBodyBytes: 100}}
        buffer: {buffering: {}}
        """))
    for _ in range(2):
        try:
            answer = requests.get(server.url + "/x", headers={**bearer(), "Accept-Encoding": "gzip"}, timeout=5)
            assert answer.status_code >= 500 or len(answer.content) < 100000
        except requests.exceptions.ChunkedEncodingError:
            pass  # cut mid-body: the client learns the answer is incomplete
    assert requests.get(server.url + "/x", timeout=5).status_code == 401  # still serving


def test_a_huge_compressed_answer_streams(gateway, wsgi_server):
    """The upstream sends 4 MiB and then waits for the client to have read compressed bytes: compress sends as
    it goes (memory: its threshold plus the encoder's window), never holding the answer whole."""
    client_read = gevent.event.Event()
    waited: List[bool] = []

    def huge(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        for _ in range(64):
            yield b"z" * 65536
        waited.append(client_read.wait(5))
        yield b"end"
    server = gateway(recorded_routes(wsgi_server(huge).url, "[auth, zip]", "zip: {compress: {}}"))
    with requests.get(server.url + "/x", headers={**bearer(), "Accept-Encoding": "gzip"}, stream=True,
                      timeout=10) as answer:
        assert answer.headers["Content-Encoding"] == "gzip"
        pieces = answer.iter_content(65536)
        total = len(next(pieces))
        client_read.set()
        total += sum(len(piece) for piece in pieces)
    assert waited == [True]
    assert total == 64 * 65536 + 3


# --- what /config shows of these middlewares ----------------------------------------------------------------

def test_config_shows_no_hash_or_auth_server_secret(gateway, wsgi_server, conf_d):
    """basicAuth ``users`` written as one comma-separated string (as Traefik's labels write it) shows no hash
    (it is masked whole), and a forwardAuth address shows no password."""
    from gatekeeper.ops.admin import make_admin_app

    bob = sha_line("bob", "hunter2")
    server = gateway(recorded_routes(wsgi_server(Recorder()).url, "[basic, sso]", f"""
        basic: {{basicAuth: {{users: "{ALICE},{bob}", headerField: X-User}}}}
        sso: {{forwardAuth: {{address: "http://svc:pw0rd@127.0.0.1:1/check", authRequestHeaders: [Cookie]}}}}
        """))
    admin = wsgi_server(make_admin_app(server.server.application.loader, lambda: (b"", "text/plain")))
    shown = requests.get(admin.url + "/config", timeout=5)
    assert shown.status_code == 200
    for secret in (ALICE.split(":", 1)[1], bob.split(":", 1)[1], "pw0rd"):
        assert secret not in shown.text
    assert shown.json()["middlewares"]["basic@file"]["options"]["users"] in (["alice", "bob"], "***")


# --- rateLimit / inFlightReq keyed by the request's Host ------------------------------------------------------

@pytest.mark.parametrize("middleware", [
    "limit: {inFlightReq: {amount: 1}}",
    "limit: {rateLimit: {average: 1, period: 1m, burst: 1, sourceCriterion: {requestHost: true}}}",
], ids=["inFlightReq", "rateLimit-requestHost"])
def test_host_spellings_share_one_count(gateway, wsgi_server, middleware):
    """Before the fix, ``Host: api.example:1``, ``:2``, ``API.example.`` ... were each their own source (the
    router's Host rule matches them all): one client escaped inFlightReq's default limit, and rateLimit's
    ``requestHost``, by changing the port it wrote in Host."""
    release = gevent.event.Event()

    def slow(environ, start_response):
        release.wait(5)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]
    upstream = wsgi_server(slow)
    server = gateway(f"""
        http:
          routers:
            app: {{rule: "Host(`api.example`)", service: app, middlewares: [limit]}}
          middlewares:
            {middleware}
          services:
            app: {{loadBalancer: {{servers: [{{url: "{upstream.url}"}}]}}}}
        """)
    first = gevent.spawn(exchange, server.port, b"GET / HTTP/1.1\r\nHost: api.example\r\nConnection: close\r\n\r\n")
    gevent.sleep(0.2)
    try:
        for host in ("api.example:1", "api.example:80", "API.Example", "api.example."):
            try:  # a request that passed the limit waits on the upstream: no answer within a second
                answer = exchange(server.port, f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
                                  .encode(), timeout=1)
            except socket.timeout:
                pytest.fail(f"Host: {host} passed the limit")
            assert status_of(answer) == 429, (host, answer[:100])
    finally:
        release.set()
        first.join(5)


def test_spooled_bodies_leave_no_file_open(gateway, wsgi_server):
    """Bodies past ``memRequestBodyBytes`` / ``memResponseBodyBytes`` go to temporary files that are gone
    (closed, and unlinked from the start) once the answer is sent, refused or cut; an answer over
    ``maxResponseBodyBytes`` is a 500 that shows none of it."""
    def big(environ, start_response):
        environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return iter([b"s" * 3000, b"s" * 3000])
    server = gateway(recorded_routes(wsgi_server(big).url, "[buffer]", """
        buffer: {buffering: {memRequestBodyBytes: 100, maxRequestBodyBytes: 5000, memResponseBodyBytes: 100,
                             maxResponseBodyBytes: 5000}}
        """))
    fds = len(list(Path("/proc/self/fd").iterdir()))
    with requests.Session() as session:
        for size in (4000, 6000, 4000):
            answer = session.post(server.url + "/x", data=b"b" * size, timeout=5)
            assert answer.status_code == (500 if size <= 5000 else 413)
            assert b"sss" not in answer.content
    gevent.sleep(0.1)
    assert len(list(Path("/proc/self/fd").iterdir())) <= fds + 2  # the session's sockets at most


@pytest.mark.parametrize("host", ["..", "../..", "a/../.."])
def test_a_page_request_never_resolves_outside_its_query(gateway, files_upstream, host):
    """``{url}`` carries the client's Host: ``Host: ../..`` made the page target of ``query: /{url}``
    ``/http%3A%2F%2F..%2F..%2Fadmin%2Fsecret.txt``, which a normalising page service resolves to
    ``/admin/secret.txt``. A page target whose decoded path is not clean is not fetched: the caught status
    goes with its short text."""
    server = gateway(f"""
        http:
          routers:
            app: {{rule: "PathPrefix(`/`)", service: files, middlewares: [pages, auth]}}
          middlewares:
            auth: {JWT}
            pages: {{errors: {{status: ["401"], service: files, query: "/{{url}}"}}}}
          services:
            files: {{loadBalancer: {{servers: [{{url: "{files_upstream}"}}]}}}}
        """)
    answer = exchange(server.port, f"GET /admin/secret.txt HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
                      .encode())
    assert b"admin secret" not in answer
    assert status_of(answer) in (400, 401)


def test_a_page_request_carries_no_header_the_auth_server_set(gateway, wsgi_server):
    """Before the fix, a token the auth server minted for the upstream (``authResponseHeaders: [X-Auth-Token]``)
    went along to the page service when the upstream answered 5xx."""
    pages, upstream = Recorder(), Recorder()
    auth = auth_server(headers=(("X-Auth-Token", "minted-for-the-upstream"), ("X-Auth-User", "alice")))
    pages_srv, auth_srv = wsgi_server(pages), wsgi_server(auth)
    upstream_srv = wsgi_server(partial(named_status_app, upstream))
    server = gateway(f"""
        http:
          routers:
            app: {{rule: "PathPrefix(`/`)", service: app, middlewares: [pages, sso]}}
          middlewares:
            sso: {{forwardAuth: {{address: "{auth_srv.url}/check", authResponseHeadersRegex: "^X-Auth-"}}}}
            pages: {{errors: {{status: ["500-599"], service: pages, query: "/{{status}}.html"}}}}
          services:
            app: {{loadBalancer: {{servers: [{{url: "{upstream_srv.url}"}}]}}}}
            pages: {{loadBalancer: {{servers: [{{url: "{pages_srv.url}"}}]}}}}
        """)
    answer = requests.get(server.url + "/status/502", timeout=5)
    assert (answer.status_code, answer.content) == (502, b"upstream")
    assert upstream.seen[-1]["HTTP_X_AUTH_TOKEN"] == "minted-for-the-upstream"
    assert "minted-for-the-upstream" not in str(pages.seen)


def test_a_page_request_carries_no_configured_request_header(gateway, wsgi_server):
    """Before the fix, an API key the operator configured for the upstream (``customRequestHeaders``, whose
    values ``/config`` hides for that reason) went along to the page service."""
    pages, upstream = Recorder(), Recorder()
    pages_srv, upstream_srv = wsgi_server(pages), wsgi_server(partial(named_status_app, upstream))
    server = gateway(f"""
        http:
          routers:
            app: {{rule: "PathPrefix(`/`)", service: app, middlewares: [pages, key]}}
          middlewares:
            key: {{headers: {{customRequestHeaders: {{X-Api-Key: "upstream-only-key", X-Drop: ""}}}}}}
            pages: {{errors: {{status: ["500-599"], service: pages, query: "/{{status}}.html"}}}}
          services:
            app: {{loadBalancer: {{servers: [{{url: "{upstream_srv.url}"}}]}}}}
            pages: {{loadBalancer: {{servers: [{{url: "{pages_srv.url}"}}]}}}}
        """)
    answer = requests.get(server.url + "/status/500", headers={"X-Drop": "client"}, timeout=5)
    assert (answer.status_code, answer.content) == (500, b"upstream")
    assert upstream.seen[-1]["HTTP_X_API_KEY"] == "upstream-only-key"
    assert "upstream-only-key" not in str(pages.seen)
