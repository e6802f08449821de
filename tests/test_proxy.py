"""The streaming proxy against real upstreams: echo apps, and raw socket servers for misbehaviour."""
from __future__ import annotations

import hashlib
import http.client
import json
import platform
import socket
import struct
from typing import Callable, Dict, Iterator, List, Optional

import gevent
import pytest
import requests
from gevent.server import StreamServer

from gatekeeper.errors import ConfigError
from gatekeeper.ops.echo import echo_app, named_echo_app
from gatekeeper.proxy.balancer import ProxyLimits, ServerSpec, make_load_balancer, make_weighted
from gatekeeper.proxy.client import request_head
from gatekeeper.requestpath import strip_connection_headers
from gatekeeper.wsgi import error_response
from tests.conftest import wait_until

FAST = ProxyLimits(connect_timeout=1.0, response_timeout=0.5)


# --- helpers --------------------------------------------------------------------------------------

@pytest.fixture
def proxy(wsgi_server) -> Callable:
    """``proxy(*upstream_urls, **load_balancer_kwargs)`` -> RunningServer of a load balancer."""
    def start(*urls: str, **kwargs):
        return wsgi_server(make_load_balancer([ServerSpec(u) for u in urls], **kwargs))
    return start


@pytest.fixture
def raw_upstream() -> Iterator[Callable]:
    """``raw_upstream(handler)`` -> port of a TCP server calling ``handler(sock)`` per connection."""
    servers: List[StreamServer] = []

    def start(handler: Callable[[socket.socket], None]) -> int:
        server = StreamServer(("127.0.0.1", 0), lambda sock, addr: handler(sock))
        server.start()
        servers.append(server)
        return server.server_port
    yield start
    for server in servers:
        server.stop(timeout=1)


def read_request(sock: socket.socket) -> bytes:
    """Read one request head (and a Content-Length body) from a raw socket; b'' at EOF."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
            while len(body) < length:
                body += sock.recv(65536)
    return head


def canned(*responses: bytes) -> Callable[[socket.socket], None]:
    """A raw handler answering successive requests on a connection with ``responses``, then closing."""
    def handler(sock: socket.socket) -> None:
        for response in responses:
            if not read_request(sock):
                break
            sock.sendall(response)
        sock.close()
    return handler


def raw_get(url: str, target: str, headers: Optional[Dict[str, str]] = None, method: str = "GET",
            body=None, **kwargs) -> http.client.HTTPResponse:
    """http.client sends the target byte for byte (requests would re-quote it)."""
    host, port = url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.request(method, target, body=body, headers=headers or {}, **kwargs)
    response = conn.getresponse()
    response.conn = conn  # type: ignore[attr-defined]  # keep it open while the body is read
    return response


def echoed(response) -> dict:
    assert response.status == 200, response.read()
    return json.loads(response.read())


def header_values(echo: dict, name: str) -> List[str]:
    return [value for key, value in echo["headers"] if key.lower() == name.lower()]


# --- request line, body, methods ------------------------------------------------------------------

@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_method_forwarded(proxy, echo_upstream, method):
    gateway = proxy(echo_upstream.url)
    assert echoed(raw_get(gateway.url, "/m", method=method, body=b"x"))["method"] == method


def test_head_answers_headers_without_body(proxy, echo_upstream):
    response = raw_get(proxy(echo_upstream.url).url, "/h", method="HEAD")
    assert response.status == 200 and int(response.getheader("Content-Length")) > 0
    assert response.read() == b""


@pytest.mark.parametrize("target", [
    "/plain", "/a%2Fb/c?x=1&y", "/sp%20ace?q=a+b&q=c;d&e=%zz&f=%2F", "/%7Euser/?", "/x?a=1&a=2&&b=",
    "/unicode/%C3%A9?%C3%A9=%E2%82%AC",
], ids=["plain", "encoded-slash", "odd-query", "tilde-empty-query", "repeated-params", "utf8"])
def test_path_and_query_byte_for_byte(proxy, echo_upstream, target):
    assert echoed(raw_get(proxy(echo_upstream.url).url, target))["uri"] == target


@pytest.mark.parametrize("base", ["/base", "/base/"], ids=["base", "base-trailing-slash"])
def test_server_base_path_prefixes_target(proxy, echo_upstream, base):
    gateway = proxy(echo_upstream.url + base)
    assert echoed(raw_get(gateway.url, "/x%2Fy?q=1"))["uri"] == "/base/x%2Fy?q=1"


def test_target_rebuilt_from_path_info_without_raw_uri(wsgi_server, echo_upstream):
    balancer = make_load_balancer([ServerSpec(echo_upstream.url)])

    def without_raw_uri(environ, start_response):
        del environ["RAW_URI"]
        environ["PATH_INFO"] = "/a b/é".encode().decode("latin-1")  # PEP 3333: the path's bytes as latin-1
        return balancer(environ, start_response)
    gateway = wsgi_server(without_raw_uri)
    assert echoed(raw_get(gateway.url, "/ignored?k=v"))["uri"] == "/a%20b/%C3%A9?k=v"


def test_chunked_request_body_streamed_chunked(proxy, echo_upstream):
    parts = [b"alpha-", b"beta-" * 1000, b"gamma"]
    echo = echoed(raw_get(proxy(echo_upstream.url).url, "/up", method="POST", body=iter(parts),
                          encode_chunked=True))
    assert echo["body_size"] == sum(map(len, parts))
    assert echo["body_sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()
    assert header_values(echo, "Transfer-Encoding") == ["chunked"]
    assert header_values(echo, "Content-Length") == []


def test_repeated_request_headers_arrive(proxy, echo_upstream):
    gateway = proxy(echo_upstream.url)
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=5)
    conn.putrequest("GET", "/r", skip_accept_encoding=True)
    for value in ("one", "two"):
        conn.putheader("X-Multi", value)
    conn.endheaders()
    echo = json.loads(conn.getresponse().read())
    assert header_values(echo, "X-Multi") == ["one,two"]  # pywsgi joins repeats, as RFC 9110 allows


def test_header_value_with_newline_is_never_sent(wsgi_server, raw_upstream):
    requests_seen: List[bytes] = []

    def recording(sock: socket.socket) -> None:
        requests_seen.append(read_request(sock))
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        sock.close()
    balancer = make_load_balancer([ServerSpec(f"http://127.0.0.1:{raw_upstream(recording)}")])

    def injecting_middleware(environ, start_response):
        environ["HTTP_X_USER"] = "alice\r\nX-Admin: 1"
        return balancer(environ, start_response)
    assert raw_get(wsgi_server(injecting_middleware).url, "/").status == 500
    assert wait_until(lambda: requests_seen)  # the connection was opened, then closed unused
    assert requests_seen == [b""]


# --- headers --------------------------------------------------------------------------------------

def test_hop_by_hop_request_headers_removed(proxy, echo_upstream):
    echo = echoed(raw_get(proxy(echo_upstream.url).url, "/h", headers={
        "Connection": "keep-alive, X-Secret, Upgrade", "X-Secret": "s", "Keep-Alive": "timeout=5",
        "TE": "trailers", "Upgrade": "h2c", "Proxy-Authorization": "Basic eA==", "Trailer": "X-T",
        "Proxy-Connection": "keep-alive", "X-Kept": "k"}))
    names = {key.lower() for key, _ in echo["headers"]}
    for hop in ("connection", "x-secret", "keep-alive", "te", "upgrade", "proxy-authorization", "trailer",
                "proxy-connection"):
        assert hop not in names
    assert header_values(echo, "X-Kept") == ["k"]


@pytest.mark.parametrize("connection, forwarded_for", [
    ("keep-alive", "203.0.113.9, 127.0.0.1"),
    ("X-Forwarded-For, X-Real-Ip, X-Forwarded-Host, X-Forwarded-Proto, X-Forwarded-Port, Host", "127.0.0.1"),
], ids=["client-values", "connection-names-gateway-headers"])
def test_forwarded_headers_are_the_gateways(proxy, echo_upstream, connection, forwarded_for):
    gateway = proxy(echo_upstream.url)
    echo = echoed(raw_get(gateway.url, "/f", headers={
        "Host": "api.example", "Connection": connection, "X-Forwarded-For": "203.0.113.9",
        "X-Real-Ip": "6.6.6.6", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil",
        "X-Forwarded-Port": "1"}))
    assert header_values(echo, "X-Forwarded-For") == [forwarded_for]
    assert header_values(echo, "X-Real-Ip") == ["127.0.0.1"]
    assert header_values(echo, "X-Forwarded-Proto") == ["http"]
    assert header_values(echo, "X-Forwarded-Host") == ["api.example"]
    assert header_values(echo, "X-Forwarded-Port") == [str(gateway.port)]
    assert header_values(echo, "Host") == ["api.example"]


@pytest.mark.parametrize("strip_first, x_user", [(True, ["from-middleware"]), (False, [])],
                         ids=["stripped-at-entry", "proxy-only"])
def test_connection_cannot_remove_middleware_headers(wsgi_server, echo_upstream, strip_first, x_user):
    balancer = make_load_balancer([ServerSpec(echo_upstream.url)])

    def gateway_with_middleware(environ, start_response):
        if strip_first:
            strip_connection_headers(environ)
        environ["HTTP_X_USER"] = "from-middleware"
        return balancer(environ, start_response)
    echo = echoed(raw_get(wsgi_server(gateway_with_middleware).url, "/", headers={
        "Connection": "X-User, X-Forwarded-For, Host", "X-User": "forged", "X-Forwarded-For": "1.2.3.4"}))
    assert header_values(echo, "X-User") == x_user
    assert header_values(echo, "X-Forwarded-For") == ["127.0.0.1"]
    assert header_values(echo, "Host") != []


@pytest.mark.parametrize("pass_host, expected", [(True, "api.example"), (False, "127.0.0.1:{port}")],
                         ids=["pass-host", "server-host"])
def test_pass_host_header(proxy, echo_upstream, pass_host, expected):
    gateway = proxy(echo_upstream.url, pass_host_header=pass_host)
    echo = echoed(raw_get(gateway.url, "/", headers={"Host": "api.example"}))
    assert header_values(echo, "Host") == [expected.format(port=echo_upstream.port)]


def test_response_headers_hop_by_hop_removed_and_repeats_kept(proxy, raw_upstream):
    port = raw_upstream(canned(
        b"HTTP/1.1 201 Made\r\nContent-Length: 2\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n"
        b"Connection: X-Internal\r\nX-Internal: secret\r\nKeep-Alive: timeout=5\r\n"
        b"Proxy-Authenticate: Basic\r\nX-Public: p\r\n\r\nok"))
    response = raw_get(proxy(f"http://127.0.0.1:{port}").url, "/")
    assert (response.status, response.reason, response.read()) == (201, "Made", b"ok")
    assert response.headers.get_all("Set-Cookie") == ["a=1", "b=2"]
    assert response.getheader("X-Public") == "p"
    for hop in ("X-Internal", "Keep-Alive", "Proxy-Authenticate"):
        assert response.getheader(hop) is None


@pytest.mark.parametrize("upstream_body, expected", [
    (b"Transfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n4\r\ndefg\r\n0\r\nX-Trailer: t\r\n\r\n",
     b"abcdefg"),
    (b"Connection: close\r\n\r\nuntil-close", b"until-close"),
    (b"Content-Length: 5, 5\r\n\r\nhello", b"hello"),
    (b"\r\n", b""),
], ids=["chunked-with-trailer", "close-delimited", "repeated-equal-length", "http10-empty"])
def test_response_framings(proxy, raw_upstream, upstream_body, expected):
    version = b"HTTP/1.0" if upstream_body == b"\r\n" else b"HTTP/1.1"
    port = raw_upstream(canned(version + b" 200 OK\r\n" + upstream_body))
    response = raw_get(proxy(f"http://127.0.0.1:{port}").url, "/")
    assert (response.status, response.read()) == (200, expected)


def test_interim_1xx_responses_skipped(proxy, raw_upstream):
    port = raw_upstream(canned(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                               b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal"))
    response = raw_get(proxy(f"http://127.0.0.1:{port}").url, "/")
    assert (response.status, response.read()) == (200, b"real")


# --- balancing ------------------------------------------------------------------------------------

def test_weighted_round_robin_is_smooth_and_exact(wsgi_server, proxy):
    a, b = wsgi_server(named_echo_app("a")), wsgi_server(named_echo_app("b"))
    balancer = make_load_balancer([ServerSpec(a.url, 3), ServerSpec(b.url, 1), ServerSpec(b.url, 0)])
    gateway = wsgi_server(balancer)
    with requests.Session() as session:
        seen = [session.get(gateway.url + "/w", timeout=5).json()["server"] for _ in range(40)]
    assert seen[:4] == ["a", "a", "b", "a"]
    assert (seen.count("a"), seen.count("b")) == (30, 10)


def test_weighted_services(wsgi_server):
    def service(name):
        return make_load_balancer([ServerSpec(wsgi_server(named_echo_app(name)).url)])
    gateway = wsgi_server(make_weighted([(service("x"), 1), (service("y"), 2), (service("z"), 0)]))
    with requests.Session() as session:
        seen = [session.get(gateway.url, timeout=5).json()["server"] for _ in range(30)]
    assert (seen.count("x"), seen.count("y"), seen.count("z")) == (10, 20, 0)


# --- failures -------------------------------------------------------------------------------------

def reset_after_request(sock: socket.socket) -> None:
    read_request(sock)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST
    sock.close()


def slow_answer(sock: socket.socket) -> None:
    read_request(sock)
    gevent.sleep(3)
    sock.close()


@pytest.mark.parametrize("handler, status", [
    (reset_after_request, 502),
    (canned(b"garbage\r\n\r\n"), 502),
    (canned(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"), 502),
    (canned(b"HTTP/1.1 200 OK\r\nBad Header: y\r\n\r\n"), 502),
    (canned(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"), 502),
    (canned(), 502),
    (slow_answer, 504),
], ids=["reset", "garbled-status", "bad-length", "bad-header", "conflicting-lengths", "closed", "slow"])
def test_upstream_failures_before_response(proxy, raw_upstream, handler, status):
    gateway = proxy(f"http://127.0.0.1:{raw_upstream(handler)}", limits=FAST)
    response = raw_get(gateway.url, "/")
    assert response.status == status
    assert response.read().startswith(str(status).encode())


def test_refused_port_is_502(proxy, free_port):
    response = raw_get(proxy(f"http://127.0.0.1:{free_port}").url, "/")
    assert (response.status, response.read()) == (502, b"502 Bad Gateway\n")


def test_no_servers_is_503(wsgi_server):
    response = raw_get(wsgi_server(make_load_balancer([])).url, "/")
    assert (response.status, response.read()) == (503, b"503 Service Unavailable: no server available\n")


def test_failure_mid_body_cuts_client_and_discards_connection(proxy, raw_upstream):
    accepted: List[int] = []

    def short_then_ok(sock: socket.socket) -> None:
        accepted.append(1)
        read_request(sock)
        if len(accepted) == 1:
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
        else:
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            read_request(sock)
        sock.close()
    gateway = proxy(f"http://127.0.0.1:{raw_upstream(short_then_ok)}")
    with pytest.raises(http.client.IncompleteRead):
        raw_get(gateway.url, "/").read()
    assert raw_get(gateway.url, "/").read() == b"ok"
    assert len(accepted) == 2


def test_client_leaving_mid_body_closes_upstream(proxy, raw_upstream):
    upstream_closed = []

    def endless(sock: socket.socket) -> None:
        read_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            while True:
                sock.sendall(b"10000\r\n" + b"x" * 0x10000 + b"\r\n")
        except OSError:
            upstream_closed.append(True)
        sock.close()
    gateway = proxy(f"http://127.0.0.1:{raw_upstream(endless)}")
    response = raw_get(gateway.url, "/")
    assert len(response.read(100_000)) == 100_000
    response.conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    response.conn.close()
    assert wait_until(lambda: upstream_closed, timeout=5)


# --- pooling --------------------------------------------------------------------------------------

def test_connections_are_pooled_and_reused(wsgi_server):
    ports: List[str] = []

    def counting_echo(environ, start_response):
        ports.append(environ["REMOTE_PORT"])
        return echo_app(environ, start_response)
    upstream = wsgi_server(counting_echo)
    gateway = wsgi_server(make_load_balancer([ServerSpec(upstream.url)]))
    with requests.Session() as session:
        for _ in range(5):
            assert session.post(gateway.url, data=b"body", timeout=5).status_code == 200
    assert len(ports) == 5 and len(set(ports)) == 1


def test_idle_connection_closed_by_upstream_is_replaced(proxy, raw_upstream):
    answered = []

    def one_per_connection(sock: socket.socket) -> None:
        read_request(sock)
        answered.append(1)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        sock.close()  # keep-alive was promised, the connection is closed anyway
    gateway = proxy(f"http://127.0.0.1:{raw_upstream(one_per_connection)}")
    for expected in (1, 2, 3):
        assert raw_get(gateway.url, "/").read() == b"ok"
        assert len(answered) == expected


# --- large bodies with bounded memory -------------------------------------------------------------

def peak_rss_reset() -> bool:
    """Reset the process's peak RSS (VmHWM); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


LARGE = 100 * 1024 * 1024
BLOCK = b"\x5a" * (1024 * 1024)


@pytest.mark.skipif(platform.python_implementation() == "PyPy",
                    reason="PyPy's GC frees large buffers late: 350-475 MiB here (docs/performance.md, PyPy)")
def test_100mb_upload_and_download_with_bounded_memory(wsgi_server, proxy, echo_upstream):
    def big_download(environ, start_response):
        start_response("200 OK", [("Content-Length", str(LARGE))])
        return (BLOCK for _ in range(LARGE // len(BLOCK)))
    downloads = wsgi_server(big_download)
    up, down = proxy(echo_upstream.url), proxy(downloads.url)
    expected_sha = hashlib.sha256()
    for _ in range(100):
        expected_sha.update(BLOCK)
    if not peak_rss_reset():
        pytest.skip("cannot reset peak RSS here")
    before = rss_kib("VmRSS")

    echo = echoed(raw_get(up.url, "/big", method="POST", body=(BLOCK for _ in range(100)),
                          headers={"Content-Length": str(LARGE)}))
    assert echo["body_size"] == LARGE
    assert echo["body_sha256"] == expected_sha.hexdigest()
    response, received = raw_get(down.url, "/big"), 0
    while chunk := response.read(1 << 20):
        received += len(chunk)
    assert received == LARGE

    growth_mib = (rss_kib("VmHWM") - before) / 1024
    print(f"peak RSS growth streaming 2 x 100 MiB: {growth_mib:.1f} MiB")
    assert growth_mib < 60


# --- configuration objects ------------------------------------------------------------------------

@pytest.mark.parametrize("url, scheme, host, port, base, authority", [
    ("http://127.0.0.1:9000", "http", "127.0.0.1", 9000, "", "127.0.0.1:9000"),
    ("http://svc/api/", "http", "svc", 80, "/api", "svc"),
    ("https://svc:443", "https", "svc", 443, "", "svc"),
    ("http://[::1]:8080/x", "http", "::1", 8080, "/x", "[::1]:8080"),
], ids=["ip-port", "default-port-base", "https-default", "ipv6"])
def test_server_spec_parses_url(url, scheme, host, port, base, authority):
    spec = ServerSpec(url)
    assert (spec.scheme, spec.host, spec.port, spec.base_path, spec.authority) == \
        (scheme, host, port, base, authority)


@pytest.mark.parametrize("url, weight, reason", [
    ("ftp://x", 1, "scheme must be http or https"),
    ("127.0.0.1:9000", 1, "scheme must be http or https"),
    ("http://", 1, "no host"),
    ("http://x:99999", 1, "port must be a number"),
    ("http://u:p@x", 1, "credentials"),
    ("http://x/?q=1", 1, "no query"),
    ("http://x", -1, "weight must be a whole number"),
    ("http://x", True, "weight must be a whole number"),
], ids=["ftp", "no-scheme", "no-host", "bad-port", "userinfo", "query", "negative-weight", "bool-weight"])
def test_server_spec_rejects(url, weight, reason):
    with pytest.raises(ConfigError, match=reason):
        ServerSpec(url, weight)


@pytest.mark.parametrize("message, body", [
    ("no router matches", b"404 Not Found: no router matches\n"), ("Not Found", b"404 Not Found\n"),
    ("", b"404 Not Found\n")], ids=["message", "phrase-not-repeated", "no-message"])
def test_error_response_is_short_text(wsgi_server, message, body):
    response = raw_get(wsgi_server(error_response(404, message)).url, "/")
    assert response.status == 404
    assert response.getheader("Content-Type") == "text/plain; charset=utf-8"
    assert response.read() == body


@pytest.mark.parametrize("headers, framing", [
    ([("X-User", "a\r\nX-Admin: 1")], ()),
    ([("X-User", "a\nX-Admin: 1")], ()),
    ([("X-User", "a\rb")], ("Content-Length: 3\r\n",)),
    ([("X-Us\ner", "a")], ("Transfer-Encoding: chunked\r\n",)),
], ids=["crlf-in-value", "lf-in-value", "cr-in-value-with-length", "lf-in-name-chunked"])
def test_a_request_head_never_carries_a_forged_line(headers, framing):
    with pytest.raises(ValueError, match="CR or LF"):
        request_head("GET", "/a", [("Host", "h"), *headers], framing)
    assert request_head("POST", "/a", [("Host", "h")], ("Content-Length: 3\r\n",)) == (
        b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n")
