"""The fast server (StreamServer + httptools): HTTP/1.1 framing, malformed requests, TLS and drain, most against
pywsgi too. The abuse, smuggling and limit scenarios run against both servers in test_abuse.py and
test_limits.py (their fixtures are parametrized over ``--server``).
"""
from __future__ import annotations

import signal
import socket
import ssl
import time
from typing import Callable, List

import gevent
import pytest
import requests

from gatekeeper.app import Gateway
from gatekeeper.ops.echo import named_echo_app
from tests.conftest import RunningServer, exchange, status_of, wait_until
from tests.test_drain import refused
from tests.test_drain import start as start_slow_gatekeeper

SERVERS = ["pywsgi", "fast"]


@pytest.fixture(params=SERVERS)
def serve(request, wsgi_server) -> Callable[..., RunningServer]:
    """Factory: ``serve(app, **make_server_kwargs)`` on each server in turn."""
    return lambda app, **kwargs: wsgi_server(app, server=request.param, **kwargs)


# --- strictness: what llhttp (fast) refuses and pywsgi refuses too -----------------------------------

STRICT_400 = {
    "negative-cl": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
    "bad-version": b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
    "space-in-target": b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
    "head-with-body": b"HEAD / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
    "garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
}
FAST_ONLY_400 = {   # pywsgi is lenient here (answers the request, harmlessly: see test_abuse); llhttp refuses
    "cl-and-te": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "duplicate-cl": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxy",
    "space-before-colon": b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
    "bare-lf": b"GET / HTTP/1.1\nHost: x\n\n",
    "nul-in-header": b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n",
    "unknown-method": b"FROB / HTTP/1.1\r\nHost: x\r\n\r\n",
    "http-0.9": b"GET /\r\n\r\n",
    "chunk-size-bare-lf": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n",
}


@pytest.mark.parametrize("raw", list(STRICT_400.values()), ids=list(STRICT_400))
def test_malformed_requests_are_400(serve, raw):
    server = serve(named_echo_app("e"))
    answer = exchange(server.port, raw)
    assert status_of(answer) == 400, answer[:200]


@pytest.mark.parametrize("raw", list(FAST_ONLY_400.values()), ids=list(FAST_ONLY_400))
def test_fast_server_refuses_what_pywsgi_tolerates(wsgi_server, raw):
    server = wsgi_server(named_echo_app("e"), server="fast")
    answer = exchange(server.port, raw)
    assert status_of(answer) == 400, answer[:200]


@pytest.mark.parametrize("te", [b"identity", b"gzip", b"xchunked"])
def test_a_transfer_encoding_llhttp_refuses_never_reaches_the_app(wsgi_server, te):
    """llhttp refuses such a head only after on_headers_complete queued it: it is answered 400, not served
    first (it was routed and forwarded upstream, then refused)."""
    calls: List[str] = []

    def app(environ, start_response):
        calls.append(environ["PATH_INFO"])
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    server = wsgi_server(app, server="fast")
    answer = exchange(server.port, b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: " + te + b"\r\n\r\n"
                                   b"0\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status_of(answer), calls) == (400, [])


def test_trailer_fields_never_become_request_headers(serve):
    """A chunked body's trailer arrives after routing and the middlewares' checks (while a buffering
    middleware or a mirror reads the body): ``X-User: admin`` there made the JWT middleware's ``X-User``
    ``alice,admin`` upstream, and ``X-Forwarded-For`` chose the address ``ipAllowList`` saw."""
    def app(environ, start_response):
        body = environ["wsgi.input"].read()
        seen = f"{environ.get('HTTP_X_USER')}|{environ.get('HTTP_X_FORWARDED_FOR')}|{environ['HTTP_HOST']}|"
        answer = seen.encode() + body
        start_response("200 OK", [("Content-Length", str(len(answer)))])
        return [answer]

    server = serve(app)
    answer = exchange(server.port, b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                                   b"Connection: close\r\n\r\n5\r\nhello\r\n0\r\nX-User: admin\r\n"
                                   b"X-Forwarded-For: 10.0.0.5\r\nHost: evil\r\n\r\n")
    assert answer.partition(b"\r\n\r\n")[2] == b"None|None|x|hello"


# --- framing ----------------------------------------------------------------------------------------

def chunks_app(environ, start_response):
    """Echoes the request body back in three chunks (no Content-Length: chunked on HTTP/1.1)."""
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return iter([b"got:", body, b":end"])


def status_app(environ, start_response):
    """``/NNN`` answers NNN; a body (with its Content-Length) unless the status forbids one."""
    code = environ["PATH_INFO"].strip("/") or "200"
    start_response(f"{code} X", [("Content-Type", "text/plain")] + ([("Content-Length", "4")] if code == "200" else []))
    return [b"body"] if code == "200" and environ["REQUEST_METHOD"] != "HEAD" else []


def test_fast_server_drops_a_body_sent_for_head(wsgi_server):
    """pywsgi sends what the app returns for HEAD (the echo upstream was fixed for it); fast drops it, so a
    careless app cannot desynchronise the keep-alive stream."""
    server = wsgi_server(chunks_app, server="fast")
    answer = read_all(server.port, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nConnection: close\r\n\r\n")
    first, _, second = answer.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200") and second.startswith(b"HTTP/1.1 200"), answer


def read_all(port: int, data: bytes) -> bytes:
    """Send ``data`` (its last request says Connection: close) and read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        received = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return received
            received += chunk


def test_chunked_body_in_and_chunked_response_out(serve):
    server = serve(chunks_app)
    answer = exchange(server.port, b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close"
                                   b"\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head and b"Content-Length" not in head
    assert body == b"4\r\ngot:\r\n5\r\nabcde\r\n4\r\n:end\r\n0\r\n\r\n"


def test_large_body_streams_through_requests(serve):
    server = serve(named_echo_app("e"))
    body = b"z" * (3 * 1024 * 1024 + 7)
    seen = requests.post(server.url + "/big", data=body, timeout=10).json()
    assert seen["body_size"] == len(body)
    chunked = requests.post(server.url + "/big", data=iter([body[:1000], body[1000:]]), timeout=10).json()
    assert chunked["body_size"] == len(body)


def test_pipelined_requests_with_bodies_answered_in_order(serve):
    server = serve(chunks_app)
    answer = read_all(server.port, b"POST /1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\none"
                                   b"POST /2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                   b"3\r\ntwo\r\n0\r\n\r\n"
                                   b"GET /3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    bodies = [part.split(b"\r\n\r\n", 1)[1] for part in answer.split(b"HTTP/1.1 200")[1:]]
    assert bodies == [b"4\r\ngot:\r\n3\r\none\r\n4\r\n:end\r\n0\r\n\r\n",
                      b"4\r\ngot:\r\n3\r\ntwo\r\n4\r\n:end\r\n0\r\n\r\n",
                      b"4\r\ngot:\r\n4\r\n:end\r\n0\r\n\r\n"]


@pytest.mark.parametrize("connection, stays_open", [(b"", False), (b"Connection: keep-alive\r\n", True)],
                         ids=["default-close", "keep-alive"])
def test_http_1_0(serve, connection, stays_open):
    server = serve(status_app)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET /200 HTTP/1.0\r\n" + connection + b"\r\n")
        data = b""
        while not data.endswith(b"body"):
            data += sock.recv(65536)
        assert b"Transfer-Encoding" not in data
        sock.settimeout(1.0)
        try:
            closed = sock.recv(1) == b""
        except socket.timeout:
            closed = False
    assert closed is not stays_open


def test_http_1_0_unframed_body_ends_with_the_connection(wsgi_server):
    """No Content-Length and no chunked coding in HTTP/1.0: the close is the only end of the body."""
    server = wsgi_server(chunks_app, server="fast")
    answer = read_all(server.port, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert answer.endswith(b"\r\n\r\ngot::end") and b"Connection: close" in answer


@pytest.mark.parametrize("path, method", [("/200", "HEAD"), ("/204", "GET"), ("/304", "GET")])
def test_responses_without_body(serve, path, method):
    server = serve(status_app)
    answer = read_all(server.port, f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n"
                                   "GET /200 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    first, _, second = answer.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding" not in first
    assert second.startswith(b"HTTP/1.1 200") and second.endswith(b"body")   # no stray body in between


def test_expect_100_continue(serve):
    server = serve(chunks_app)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        interim = sock.recv(65536)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n"), interim
        sock.sendall(b"body")
        answer = interim.partition(b"\r\n\r\n")[2]
        while not answer.endswith(b"0\r\n\r\n"):
            answer += sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"got:\r\n4\r\nbody\r\n4\r\n:end\r\n0\r\n\r\n")


def test_keep_alive_reuses_the_connection(serve):
    server = serve(named_echo_app("e"))
    ports = set()

    def peer_port(environ, start_response):
        ports.add(environ["REMOTE_PORT"])
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]
    server = serve(peer_port)
    with requests.Session() as session:
        for _ in range(5):
            assert session.get(server.url, timeout=5).text == "ok"
    assert len(ports) == 1


def test_environ_as_pep_3333_with_raw_uri(serve):
    seen = {}

    def capture(environ, start_response):
        seen.update(environ)
        start_response("200 OK", [("Content-Length", "0")])
        return []
    server = serve(capture)
    exchange(server.port, b"GET /a%2Fb%20c?q=1&r=%41 HTTP/1.1\r\nHost: h.example\r\nX-Dup: 1\r\nX-Dup: 2\r\n"
                          b"Cookie: a=1\r\nCookie: b=2\r\nX_Under: spoof\r\nContent-Type: text/x\r\n"
                          b"Connection: close\r\n\r\n")
    assert (seen["REQUEST_METHOD"], seen["RAW_URI"], seen["PATH_INFO"], seen["QUERY_STRING"]) == \
        ("GET", "/a%2Fb%20c?q=1&r=%41", "/a/b c", "q=1&r=%41")
    assert (seen["HTTP_X_DUP"], seen["HTTP_COOKIE"], seen["CONTENT_TYPE"]) == ("1,2", "a=1; b=2", "text/x")
    assert "HTTP_X_UNDER" not in seen and "HTTP_CONTENT_TYPE" not in seen
    assert (seen["SERVER_PROTOCOL"], seen["wsgi.url_scheme"], seen["REMOTE_ADDR"], seen["SCRIPT_NAME"]) == \
        ("HTTP/1.1", "http", "127.0.0.1", "")
    assert seen["SERVER_PORT"] == str(server.port) and seen["wsgi.version"] == (1, 0)


def test_response_header_injection_is_refused(serve):
    def injecting(environ, start_response):
        start_response("200 OK", [("X-Evil", "a\r\nSet-Cookie: owned=1")])
        return [b"x"]
    server = serve(injecting)
    answer = exchange(server.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status_of(answer) == 500 and b"owned" not in answer


def test_tls(serve, tls_files):
    ca, cert, key = tls_files
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    server = serve(named_echo_app("e"), ssl_context=context)
    url = server.url.replace("http://", "https://")
    with requests.Session() as session:
        for _ in range(2):
            assert session.get(url + "/tls", verify=str(ca), timeout=5).json()["path"] == "/tls"


def test_client_disconnect_mid_body_closes_the_upstream(serve, tmp_path):
    """The gateway streams a request body upstream; the client vanishing mid-body must not leave the
    upstream waiting for the rest (nor let the pooled connection be reused)."""
    upstream = socket.socket()
    upstream.bind(("127.0.0.1", 0))
    upstream.listen(8)
    received: List[int] = []

    def upstream_reads_until_eof():
        conn, _ = upstream.accept()
        conn.settimeout(10)
        total = 0
        while True:
            data = conn.recv(65536)
            if not data:
                break
            total += len(data)
        received.append(total)
        conn.close()
    reader = gevent.spawn(upstream_reads_until_eof)
    root = tmp_path / "conf.d"
    root.mkdir()
    (root / "r.yaml").write_text('http:\n  routers:\n    r: {rule: "PathPrefix(`/`)", service: s}\n  services:\n'
                                 '    s: {loadBalancer: {servers: [{url: "http://127.0.0.1:%d"}]}}\n'
                                 % upstream.getsockname()[1])
    server = serve(Gateway(root))
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as client:
        client.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"b" * 5000)
        assert wait_until(lambda: reader.dead or False, timeout=0.3) is False   # upstream still reading
    reader.join(timeout=10)
    upstream.close()
    assert received and received[0] < 100000


# --- drain, through the real process -----------------------------------------------------------------

def test_fast_server_drains_in_flight_and_idle(conf_d, wsgi_server, tmp_path):
    upstream, gk = start_slow_gatekeeper(conf_d, wsgi_server, tmp_path, 1.0, "--server", "fast")
    try:
        idle = requests.Session()
        assert idle.get(gk.url + "/warm", timeout=5).ok   # this connection now stays idle
        upstream.arrived.clear()
        pending = gevent.spawn(requests.get, gk.url + "/slow", timeout=10)
        assert upstream.arrived.wait(10)
        began = time.monotonic()
        gk.signal(signal.SIGTERM)
        assert wait_until(lambda: refused(gk.url), timeout=5)
        response = pending.get(timeout=10)
        assert response.status_code == 200 and response.content == b"slow answer\n" * 1000
        assert gk.proc.wait(timeout=10) == 0
        assert time.monotonic() - began < 3
    finally:
        gk.close()
