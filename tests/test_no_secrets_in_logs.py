"""No credential in any log line, from either server, on the error paths: gevent's own hooks (pywsgi's
``handle_error``, the hub's) print the whole WSGI environ, ``Authorization``, ``Cookie``, a ``?jwt=``
query and the verified claims included. Every request here carries all of them; the logs must hold none.
"""
from __future__ import annotations

import logging
import socket
import struct
from typing import Callable, Iterator, List

import pytest
import requests
from gevent.server import StreamServer
from serve_process import Gatekeeper, lb_manifest

from gatekeeper.jwt.mint import mint
from tests.conftest import exchange, status_of
from tests.test_proxy import read_request

SECRET = "no-secrets-signing-key-0123456789abcdef"
CLAIM = "claim-value-7f3a9c"        # a verified claim's value: in the environ as gatekeeper.claims
COOKIE = "cookie-value-5b8e2d41"
BEARER = mint({"sub": CLAIM, "grp": "ops"}, secret=SECRET)
IN_QUERY = mint({"sub": CLAIM, "n": 2}, secret=SECRET)
SERVERS = ["fast", "pywsgi"]


def secrets() -> List[str]:
    """What must never be logged: the tokens' payloads and signatures, the cookie, the claim, the key."""
    parts = [part for token in (BEARER, IN_QUERY) for part in token.split(".")[1:]]
    return [*parts, COOKIE, CLAIM, SECRET, "Bearer "]


def assert_no_secret(text: str) -> None:
    for secret in secrets():
        assert secret not in text, f"{secret!r} found in:\n{text}"


def reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def faulty_upstream(sock: socket.socket) -> None:
    """``/drop``: a 200 with half its body, then a reset. ``/garbled``: echoes the request back (not HTTP).
    Anything else: a small 200."""
    head = read_request(sock)
    if b" /drop" in head:
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhalf")
        reset(sock)
    elif b" /garbled" in head:
        sock.sendall(head + b"\r\n\r\n")
    else:
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


@pytest.fixture
def upstream() -> Iterator[str]:
    server = StreamServer(("127.0.0.1", 0), lambda sock, addr: faulty_upstream(sock))
    server.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.stop(timeout=1)


def raw_request(target: str, version: str = "HTTP/1.1") -> bytes:
    return (f"GET {target} {version}\r\nHost: gw\r\nAuthorization: Bearer {BEARER}\r\n"
            f"Cookie: session={COOKIE}\r\nConnection: close\r\n\r\n").encode()


@pytest.mark.parametrize("server", SERVERS)
def test_serve_logs_no_credential_on_failing_paths(server, conf_d, upstream, tmp_path):
    """A real ``gatekeeper serve``: an upstream dropping mid-response (cut), a middleware leaving a header
    value the proxy cannot send (500), an upstream echoing the request instead of answering (502), and a
    malformed request line carrying ``?jwt=`` (400); stderr holds one line per failure and no secret."""
    conf_d("routes.yaml", lb_manifest("""
        drop: {rule: "PathPrefix(`/drop`)", service: s, middlewares: [jwt]}
        raise: {rule: "PathPrefix(`/raise`)", service: s, middlewares: [jwt, latin]}
        garbled: {rule: "PathPrefix(`/garbled`)", service: s, middlewares: [jwt]}
    """, upstream, f"""
        middlewares:
          jwt:
            plugin:
              jwt: {{signingSecret: "{SECRET}", forwardHeaders: {{X-Sub: sub}}}}
          latin:
            headers:
              customRequestHeaders: {{X-Currency: "€"}}
    """))
    gk = Gatekeeper(conf_d.root, tmp_path / "gk.log", "--server", server)
    port = int(gk.url.rsplit(":", 1)[1])
    try:
        dropped = exchange(port, raw_request(f"/drop/a?jwt={IN_QUERY}"), half_close=False)
        assert status_of(dropped) == 200 and dropped.endswith(b"\r\n\r\nhalf")
        assert status_of(exchange(port, raw_request(f"/raise/b?jwt={IN_QUERY}"), half_close=False)) == 500
        assert status_of(exchange(port, raw_request(f"/garbled/c?jwt={IN_QUERY}"), half_close=False)) == 502
        assert status_of(exchange(port, raw_request(f"/drop/d?jwt={IN_QUERY}", "HTTP/1.1 junk"),
                                  half_close=False)) == 400
        assert requests.get(gk.url + "/drop/e", timeout=5).status_code == 401  # still serving
    finally:
        assert gk.stop() == 0
    log = gk.log()
    assert_no_secret(log)
    assert "Traceback" not in log and "HTTP_" not in log and "wsgi.input" not in log, log
    lines = log.splitlines()
    assert sum("response cut" in line and "/drop/a" in line for line in lines) == 1, log
    assert sum("UnicodeEncodeError" in line and "/raise/b" in line for line in lines) == 1, log
    assert sum("garbled status line" in line and "garbled@file" in line for line in lines) == 1, log


PASSWORD = "S3cretPassw0rd"


@pytest.mark.parametrize("log_format", ["text", "json"])
@pytest.mark.parametrize("server", SERVERS)
def test_refused_targets_and_hosts_log_no_userinfo(server, log_format, conf_d, upstream, tmp_path):
    """``GET http://alice:PASSWORD@x/pub`` and ``Host: alice:PASSWORD@gw`` are refused (400), and a fragment
    (``#access_token=...``) too, but the access line wrote the target up to ``?`` and the Host as sent."""
    conf_d("routes.yaml", lb_manifest('pub: {rule: "PathPrefix(`/`)", service: s}', upstream))
    gk = Gatekeeper(conf_d.root, tmp_path / "gk.log", "--server", server, "--log-format", log_format)
    port = int(gk.url.rsplit(":", 1)[1])
    try:
        for head in (f"GET http://alice:{PASSWORD}@x/pub HTTP/1.1\r\nHost: gw",
                     f"GET https://alice:{PASSWORD}@x HTTP/1.1\r\nHost: gw",
                     f"GET /pub HTTP/1.1\r\nHost: alice:{PASSWORD}@gw",
                     f"GET /pub#access_token={PASSWORD} HTTP/1.1\r\nHost: gw"):
            answer = exchange(port, f"{head}\r\nConnection: close\r\n\r\n".encode(), half_close=False)
            assert status_of(answer) == 400, (head, answer[:200])
    finally:
        assert gk.stop() == 0
    lines = gk.access_lines()
    assert len(lines) == 4 and PASSWORD not in gk.log(), lines
    assert "http://x/pub" in lines[0] and "https://x" in lines[1] and "gw" in lines[2], lines


# --- in-process: every way an app can fail, on both servers --------------------------------------------

def claims_in_environ(app: Callable) -> Callable:
    """Puts verified claims in the environ, as the JWT middleware does, then calls ``app``."""
    def with_claims(environ, start_response):
        environ["gatekeeper.claims"] = {"sub": CLAIM}
        environ["gatekeeper.router"] = "api@file"
        return app(environ, start_response)
    return with_claims


def raises_before_start(environ, start_response):
    raise RuntimeError("app failed before answering")


def raises_after_start(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    raise RuntimeError("app failed after start_response")


def raises_mid_body(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])

    def body():
        yield b"first piece"
        raise RuntimeError("app failed mid-body")
    return body()


class FailingClose:
    def __init__(self, environ, start_response) -> None:
        start_response("200 OK", [("Content-Length", "2")])

    def __iter__(self):
        yield b"ok"

    def close(self) -> None:
        raise RuntimeError("close failed")


def middleware_raises(environ, start_response):
    """A middleware failing after the JWT middleware verified the token (claims already in the environ)."""
    raise KeyError("x-tenant")


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("app, status, body, message", [
    (raises_before_start, 500, b"Internal Server Error\n", "RuntimeError: app failed before answering"),
    (raises_after_start, 500, b"Internal Server Error\n", "RuntimeError: app failed after start_response"),
    (raises_mid_body, 200, b"b\r\nfirst piece\r\n", "RuntimeError: app failed mid-body"),  # no terminator
    (FailingClose, 200, b"ok", "RuntimeError: close failed"),
    (middleware_raises, 500, b"Internal Server Error\n", "KeyError: 'x-tenant'"),
], ids=["before-start-response", "after-start-response", "mid-body", "in-close", "middleware"])
def test_app_failure_leaves_one_line_without_credentials(wsgi_server, server, app, status, body, message,
                                                         caplog, capfd):
    running = wsgi_server(claims_in_environ(app), server=server)
    with caplog.at_level(logging.INFO):  # not DEBUG: that level adds the traceback (no environ either)
        got = exchange(running.port, raw_request(f"/api/x?jwt={IN_QUERY}"), half_close=False)
    assert status_of(got) == status
    assert got.partition(b"\r\n\r\n")[2] == body
    records = [r for r in caplog.records if r.name == "gatekeeper.server"]
    assert [r.getMessage() for r in records] == [
        f"request failed (router api@file, GET /api/x): {message}"]
    assert records[0].exc_info is None
    err = capfd.readouterr().err
    assert_no_secret(err + "\n".join(r.getMessage() for r in caplog.records))
    assert "Traceback" not in err


def test_debug_level_adds_a_traceback_but_no_environ(wsgi_server, caplog, capfd):
    running = wsgi_server(claims_in_environ(raises_before_start))
    with caplog.at_level(logging.DEBUG, logger="gatekeeper.server"):
        got = exchange(running.port, raw_request(f"/api/x?jwt={IN_QUERY}"), half_close=False)
    assert status_of(got) == 500
    records = [r for r in caplog.records if r.name == "gatekeeper.server"]
    assert len(records) == 1 and records[0].exc_info is not None
    assert_no_secret(caplog.text + capfd.readouterr().err)
