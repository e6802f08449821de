"""``forwardAuth`` through a real Gateway, a real upstream and a real authentication server: 2xx lets the
request on with the chosen headers (the client's copies never), anything else is the auth server's answer,
the X-Forwarded-* it is sent, authRequestHeaders, TLS to it, an auth server down or slow (500), and
mistakes refused with 503."""
from __future__ import annotations

import logging
import ssl
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import pytest
import requests

from gatekeeper.app import edge_stack
from gatekeeper.middlewares import forwardauth
from gatekeeper.ops.echo import named_echo_app
from tests.conftest import exchange, status_of
from tests.middleware_gateway import Gateways, check_refuses, config_errors, one_middleware


class AuthServer:
    """Answers by path: ``/ok`` (200 with user headers and cookies), ``/bare`` (200, nothing), ``/deny``
    (401 with a body), ``/redirect`` (302 to a relative path), ``/slow`` (2 s); records what it was sent."""

    def __init__(self) -> None:
        self.seen: List[Dict[str, Any]] = []

    def __call__(self, environ: Dict[str, Any], start_response: Callable) -> List[bytes]:
        self.seen.append({"method": environ["REQUEST_METHOD"], "body": environ["wsgi.input"].read(),
                          "headers": {k[5:].replace("_", "-").lower(): v for k, v in environ.items()
                                      if k.startswith("HTTP_")}})
        path = environ["PATH_INFO"]
        if path == "/ok":
            start_response("200 OK", [("X-Auth-User", "alice"), ("X-Auth-Role", "admin"), ("X-Auth-Role", "ops"),
                                      ("X-Other", "1"), ("Set-Cookie", "session=abc; Path=/"),
                                      ("Set-Cookie", "other=z"), ("Content-Length", "2")])
            return [b"ok"]
        if path == "/deny":
            body = b"go away, you are not on the list"
            start_response("401 Unauthorized", [("WWW-Authenticate", 'Bearer realm="sso"'), ("X-Reason", "expired"),
                                                ("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
            return [body]
        if path == "/redirect":
            start_response("302 Found", [("Location", "/login?next=x"), ("Content-Length", "0")])
            return []
        if path == "/slow":
            time.sleep(2)
        start_response("200 OK", [("Content-Length", "0")])
        return []


@pytest.fixture
def auth_server(wsgi_server) -> Iterator[Any]:
    server = AuthServer()
    running = wsgi_server(server)
    server.url = running.url  # type: ignore[attr-defined]
    yield server


@pytest.fixture
def upstream(wsgi_server) -> Any:
    seen: List[Dict[str, str]] = []
    echo = named_echo_app("echo")

    def app(environ: Dict[str, Any], start_response: Callable) -> Any:
        seen.append({k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")})
        return echo(environ, lambda s, h, *a: start_response(s, [*h, ("Set-Cookie", "session=upstream")], *a))
    running = wsgi_server(app)
    running.seen = seen  # type: ignore[attr-defined]
    return running


@pytest.fixture
def gateway(tmp_path: Path, upstream) -> Iterator[Callable[..., str]]:
    gateways = Gateways(tmp_path)

    def start(fwd: str, trusted: List[str] = [], errors_ok: bool = False) -> str:  # noqa: B006
        start.last = gateways.start(one_middleware("forwardAuth", fwd, "fwd", upstream.url),  # type: ignore
                                    errors_ok=errors_ok, trusted_proxies=trusted)
        return str(gateways.last.url)
    yield start
    gateways.stop()


def test_a_2xx_lets_the_request_on_with_the_chosen_headers_and_never_the_clients_copies(gateway, auth_server,
                                                                                           upstream):
    url = gateway(f"{{address: '{auth_server.url}/ok', authResponseHeaders: [X-Auth-User, X-Auth-Role]}}")
    response = requests.get(url + "/x", headers={"X-Auth-User": "root", "X-Other": "mine"}, timeout=5)
    assert response.status_code == 200 and response.json()["path"] == "/x"
    seen = upstream.seen[-1]
    assert seen["x-auth-user"] == "alice" and seen["x-auth-role"] == "admin, ops" and seen["x-other"] == "mine"
    assert response.headers["Set-Cookie"] == "session=upstream"  # no addAuthCookiesToResponse: none added

    url = gateway(f"{{address: '{auth_server.url}/bare', authResponseHeaders: [X-Auth-User]}}")
    assert requests.get(url + "/x", headers={"X-Auth-User": "admin"}, timeout=5).status_code == 200
    assert "x-auth-user" not in upstream.seen[-1]


def test_headers_matching_the_regex_are_copied_and_the_clients_removed(gateway, auth_server, upstream):
    url = gateway(f"{{address: '{auth_server.url}/ok', authResponseHeadersRegex: '^X-Auth-'}}")
    assert requests.get(url + "/x", headers={"X-Auth-Spoof": "1", "X-Keep": "k"}, timeout=5).status_code == 200
    seen = upstream.seen[-1]
    assert seen["x-auth-user"] == "alice" and seen["x-auth-role"] == "admin, ops" and seen["x-keep"] == "k"
    assert "x-auth-spoof" not in seen and "x-other" not in seen


def test_any_other_answer_is_the_auth_servers_and_the_service_is_never_asked(gateway, auth_server, upstream):
    url = gateway(f"{{address: '{auth_server.url}/deny'}}")
    response = requests.get(url + "/x", timeout=5)
    assert response.status_code == 401 and response.text == "go away, you are not on the list"
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="sso"' and response.headers["X-Reason"] == "expired"
    assert upstream.seen == []


@pytest.mark.parametrize("preserve, location", [("false", "/login?next=x"), ("true", "/login?next=x")],
                         ids=["made-absolute", "preserved"])
def test_a_redirect_goes_to_the_client(gateway, auth_server, preserve, location):
    url = gateway(f"{{address: '{auth_server.url}/redirect', preserveLocationHeader: {preserve}}}")
    response = requests.get(url + "/x", allow_redirects=False, timeout=5)
    assert response.status_code == 302
    expected = location if preserve == "true" else auth_server.url + location
    assert response.headers["Location"] == expected


def test_what_the_auth_server_is_sent(gateway, auth_server):
    url = gateway(f"{{address: '{auth_server.url}/bare'}}")
    assert requests.post(url + "/some/path?q=1", data=b"secret body",
                         headers={"Cookie": "s=1", "User-Agent": "client/1"}, timeout=5).status_code == 200
    sent = auth_server.seen[-1]
    assert sent["method"] == "GET" and sent["body"] == b""
    headers = sent["headers"]
    assert headers["x-forwarded-method"] == "POST" and headers["x-forwarded-uri"] == "/some/path?q=1"
    assert headers["x-forwarded-proto"] == "http" and headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-host"] == url.split("//")[1] and headers["cookie"] == "s=1"
    assert headers["x-forwarded-port"] == url.rsplit(":", 1)[1] and headers["user-agent"] == "client/1"

    answer = exchange(int(url.rsplit(":", 1)[1]), b"GET /raw HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n")
    assert status_of(answer) == 200 and "user-agent" not in auth_server.seen[-1]["headers"]  # none of its own

    url = gateway(f"{{address: '{auth_server.url}/bare', authRequestHeaders: [X-Keep], preserveRequestMethod: true}}")
    assert requests.post(url + "/p", data=b"body", headers={"X-Keep": "1", "X-Drop": "2", "Cookie": "s=1"},
                         timeout=5).status_code == 200
    sent = auth_server.seen[-1]
    assert sent["method"] == "POST" and sent["body"] == b""
    assert sent["headers"]["x-keep"] == "1" and "x-drop" not in sent["headers"] and "cookie" not in sent["headers"]
    assert sent["headers"]["x-forwarded-uri"] == "/p"


@pytest.mark.parametrize("trusted, trust, uri", [
    ([], "true", "/real"),                 # an untrusted peer's X-Forwarded-* never arrive
    (["127.0.0.1"], "false", "/real"),      # a trusted proxy's, but the middleware does not trust them
    (["127.0.0.1"], "true", "/claimed"),
], ids=["untrusted-peer", "not-trusted", "trusted"])
def test_trust_forward_header(gateway, auth_server, trusted, trust, uri):
    url = gateway(f"{{address: '{auth_server.url}/bare', trustForwardHeader: {trust}}}", trusted=trusted)
    headers = {"X-Forwarded-Uri": "/claimed", "X-Forwarded-Method": "DELETE", "X-Forwarded-For": "10.9.9.9"}
    assert requests.get(url + "/real", headers=headers, timeout=5).status_code == 200
    sent = auth_server.seen[-1]["headers"]
    assert sent["x-forwarded-uri"] == uri
    assert sent["x-forwarded-method"] == ("DELETE" if uri == "/claimed" else "GET")
    assert sent["x-forwarded-for"] == ("10.9.9.9, 127.0.0.1" if uri == "/claimed" else "127.0.0.1")


def test_auth_cookies_are_added_to_the_answer_over_the_services(gateway, auth_server):
    url = gateway(f"{{address: '{auth_server.url}/ok', addAuthCookiesToResponse: [session]}}")
    response = requests.get(url + "/x", timeout=5)
    assert response.status_code == 200
    assert response.raw.headers.getlist("Set-Cookie") == ["session=abc; Path=/"]


def test_an_auth_server_down_or_slow_is_a_500_and_one_log_line_without_secrets(gateway, free_port, upstream,
                                                                                 auth_server, caplog, monkeypatch):
    url = gateway(f"{{address: 'http://user:pw@127.0.0.1:{free_port}/check?key=s3cret'}}")
    with caplog.at_level(logging.WARNING, logger="gatekeeper.middlewares"):
        statuses = [requests.get(url + "/x", headers={"Authorization": "Bearer tok3n"}, timeout=5).status_code
                    for _ in range(3)]
    assert statuses == [500] * 3 and upstream.seen == []
    lines = [r.getMessage() for r in caplog.records if "auth server" in r.getMessage()]
    assert len(lines) == 1 and f"http://127.0.0.1:{free_port}/check" in lines[0]
    assert not any(s in lines[0] for s in ("s3cret", "pw@", "tok3n"))

    for bound in ("READ_TIMEOUT", "TOTAL_TIMEOUT"):  # silent for 2 s: the read bound cuts it, or the whole one
        monkeypatch.setattr(forwardauth, bound, 0.3)
        url = gateway(f"{{address: '{auth_server.url}/slow'}}")
        started = time.monotonic()
        assert requests.get(url + "/x", timeout=5).status_code == 500
        assert time.monotonic() - started < 1.5 and upstream.seen == []
        monkeypatch.undo()


def test_tls_to_the_auth_server(gateway, wsgi_server, pki, upstream):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki["server"], pki["server.key"])
    server = AuthServer()
    running = wsgi_server(server, ssl_context=context)
    address = f"https://127.0.0.1:{running.port}/bare"
    assert requests.get(gateway(f"{{address: '{address}', tls: {{ca: '{pki['ca']}'}}}}") + "/x",
                        timeout=5).status_code == 200
    assert requests.get(gateway(f"{{address: '{address}'}}") + "/x", timeout=5).status_code == 500  # unknown CA
    insecure = gateway(f"{{address: '{address}', tls: {{insecureSkipVerify: true}}}}")
    assert requests.get(insecure + "/x", timeout=5).status_code == 200
    assert len(server.seen) == 2


@pytest.mark.parametrize("fwd, error", [
    ("{}", "forwardAuth.address: required"),
    ("{address: 'ftp://auth/'}", "forwardAuth.address: expected an http:// or https:// URL"),
    ("{address: 'http://a/', authResponseHeadersRegex: '(a)\\1'}", "forwardAuth.authResponseHeadersRegex:"),
    ("{address: 'http://a/', forwardBody: maybe}", "forwardAuth.forwardBody: expected true or false"),
    ("{address: 'http://a/', maxBodySize: -2}", "forwardAuth.maxBodySize: must be at least -1"),
    ("{address: 'http://a/', maxResponseBodySize: lots}", "forwardAuth.maxResponseBodySize: expected a whole"),
    ("{address: 'http://a/', headerField: 'X User'}", "forwardAuth.headerField[0]: 'X User' is not a header"),
    ("{address: 'http://a/', authResponseHeaders: ['X User']}", "forwardAuth.authResponseHeaders[0]: 'X User'"),
    ("{address: 'http://a/', tls: {cert: /nonexistent.pem}}", "forwardAuth.tls.cert: no such file"),
    ("{address: 'http://a/', tls: {ca: '-----BEGIN CERTIFICATE-----'}}", "forwardAuth.tls.ca: give the path"),
    ("{address: 'http://a/', trustForwardHeader: yes}", "forwardAuth.trustForwardHeader: expected true or"),
    ("{address: 'http://a/', adress: x}", 'unknown field "adress"'),
], ids=["no-address", "bad-scheme", "backreference", "forward-body", "body-size", "answer-size", "header-field",
        "bad-header", "missing-cert",
        "inline-pem", "bad-bool", "typo"])
def test_mistakes_are_refused_and_the_router_answers_503(gateway, fwd, error):
    url = gateway(fwd, errors_ok=True)
    errors = config_errors(gateway.last)
    assert any(error in e and "routes.yaml" in e for e in errors), errors
    assert requests.get(url + "/x", timeout=5).status_code == 503


def test_gatekeeper_check_names_each_access_mistake(conf_d):
    """The command line an operator runs before a deploy: one line per refused middleware, file and line."""
    out = check_refuses(conf_d, "", [
        ("{ipAllowList: {sourceRange: [10.0.0.300]}}", "'10.0.0.300' is not an IP address or CIDR range"),
        ('{basicAuth: {users: ["alice:hunter2"]}}', 'user "alice": the password is not hashed'),
        ('{forwardAuth: {address: "ftp://auth/"}}', "forwardAuth.address: expected an http:// or https:// URL"),
    ], file="access.yaml")
    assert "hunter2" not in out


def chunks(data: bytes) -> Iterator[bytes]:
    yield data[:5]
    yield data[5:]


@pytest.mark.parametrize("send", [lambda body: body, chunks], ids=["content-length", "chunked"])
def test_forward_body_sends_the_body_to_both_within_max_body_size(gateway, auth_server, upstream, send):
    url = gateway(f"{{address: '{auth_server.url}/bare', forwardBody: true, maxBodySize: 20}}")
    response = requests.post(url + "/x", data=send(b"twenty bytes of it!!"), timeout=5)
    assert response.status_code == 200 and response.json()["body"] == "twenty bytes of it!!"
    assert auth_server.seen[-1]["body"] == b"twenty bytes of it!!"
    refused = requests.post(url + "/x", data=send(b"twenty-one bytes: no!"), timeout=5)
    assert refused.status_code == 401 and len(upstream.seen) == 1 and len(auth_server.seen) == 1


def test_an_answer_over_max_response_body_size_is_401_and_a_401_can_send_to_signin(gateway, auth_server, upstream):
    url = gateway(f"{{address: '{auth_server.url}/deny', maxResponseBodySize: 10}}")
    response = requests.get(url + "/x", timeout=5)
    assert response.status_code == 401 and "go away" not in response.text
    url = gateway(f"{{address: '{auth_server.url}/deny', authSigninURL: 'https://sso.example/login'}}")
    response = requests.get(url + "/x", allow_redirects=False, timeout=5)
    assert response.status_code == 302 and response.headers["Location"] == "https://sso.example/login"
    assert upstream.seen == []


def test_the_access_log_names_the_outcome_and_the_user_from_header_field(gateway, auth_server, wsgi_server):
    exchanges: List[Any] = []
    gateway(f"{{address: '{auth_server.url}/ok', headerField: X-Auth-User}}")
    allowed = wsgi_server(edge_stack(gateway.last, access_log=exchanges.append))
    assert requests.get(allowed.url + "/x", timeout=5).status_code == 200
    gateway(f"{{address: '{auth_server.url}/deny'}}")
    denied = wsgi_server(edge_stack(gateway.last, access_log=exchanges.append))
    assert requests.get(denied.url + "/x", timeout=5).status_code == 401
    time.sleep(0.1)
    assert [(e.user, e.middleware) for e in exchanges] == [("alice", None), (None, ("fwd@file", "auth_denied"))]


def test_a_slow_auth_server_stalls_no_other_request(gateway, auth_server):
    """The auth request waits in its own greenlet: the event loop (shared by every gateway in this process)
    keeps answering others meanwhile."""
    import gevent

    slow = gateway(f"{{address: '{auth_server.url}/slow'}}")
    fast = gateway(f"{{address: '{auth_server.url}/bare'}}")
    waiting = gevent.spawn(requests.get, slow + "/x", timeout=10)
    gevent.sleep(0.1)
    started = time.monotonic()
    assert requests.get(fast + "/x", timeout=5).status_code == 200
    assert time.monotonic() - started < 0.5 and not waiting.ready()
    assert waiting.get(timeout=10).status_code == 200
