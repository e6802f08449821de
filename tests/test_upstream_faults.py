"""Upstreams that let the gateway down, through a real Gateway: each fault has a defined answer (502/504,
or a cut client connection once the response had started), and the gateway stays healthy afterwards.
"""
from __future__ import annotations

import http.client
import socket
import struct
from pathlib import Path
from typing import Callable, Iterator, List

import gevent
import pytest
import requests
from gevent.server import StreamServer

from gatekeeper.app import Gateway
from gatekeeper.compile import CompileOptions
from gatekeeper.echo import named_echo_app
from gatekeeper.proxy import ProxyLimits
from tests.conftest import RunningServer, wait_until
from tests.test_proxy import read_request

FAST = CompileOptions(limits=ProxyLimits(connect_timeout=1.0, response_timeout=0.5))
ROUTES = """
http:
  routers:
    faulty: {rule: "PathPrefix(`/`)", service: faulty}
    healthy: {rule: "PathPrefix(`/healthy`)", service: healthy}
  services:
    faulty: {loadBalancer: {servers: [{url: "%s"}]}}
    healthy: {loadBalancer: {servers: [{url: "%s"}]}}
"""


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Callable]:
    """``gateway(faulty_url)`` -> URL of a Gateway routing ``/healthy`` to an echo and the rest to faulty."""
    running: List = []

    def start(faulty_url: str) -> str:
        healthy = RunningServer(named_echo_app("healthy"))
        root = tmp_path / "conf.d"
        root.mkdir()
        (root / "routes.yaml").write_text(ROUTES % (faulty_url, healthy.url))
        gw = Gateway(root, options=FAST)
        assert not gw.config.errors
        server = RunningServer(gw)
        running.extend([healthy, server])
        return server.url
    yield start
    for server in running:
        server.stop()


class RawUpstream:
    """A TCP upstream calling ``handler(sock)`` per connection; counts accepted and closed connections."""

    def __init__(self, handler: Callable[[socket.socket], None]) -> None:
        self.accepted = 0
        self.closed_by_peer = 0
        self.handler = handler
        self.server = StreamServer(("127.0.0.1", 0), self.serve)
        self.server.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def serve(self, sock: socket.socket, _addr) -> None:
        self.accepted += 1
        try:
            self.handler(sock)
        except OSError:
            self.closed_by_peer += 1
        finally:
            sock.close()


@pytest.fixture
def upstream() -> Iterator[Callable]:
    started: List[RawUpstream] = []

    def start(handler: Callable[[socket.socket], None]) -> RawUpstream:
        started.append(RawUpstream(handler))
        return started[-1]
    yield start
    for up in started:
        up.server.stop(timeout=1)


def assert_healthy(url: str) -> None:
    response = requests.get(url + "/healthy", timeout=5)
    assert response.status_code == 200 and response.json()["server"] == "healthy"


def answer(*chunks: bytes, pause: float = 0.0) -> Callable[[socket.socket], None]:
    """A handler reading one request, then sending ``chunks`` with ``pause`` seconds between them."""
    def handler(sock: socket.socket) -> None:
        read_request(sock)
        for chunk in chunks:
            sock.sendall(chunk)
            gevent.sleep(pause)
    return handler


def reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def reset_mid_response(sock: socket.socket) -> None:
    read_request(sock)
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhalf")
    reset(sock)


def reset_before_response(sock: socket.socket) -> None:
    read_request(sock)
    reset(sock)


@pytest.mark.parametrize("handler, status", [
    (reset_before_response, 502),
    (answer(b"garbage\r\n\r\n"), 502),
    (answer(b"HTTP/1.1 abc OK\r\n\r\n"), 502),
    (answer(b"\x00\xff\r\n\r\n"), 502),
    (answer(b""), 502),
    (answer(b"HTTP/1.1 200 OK\r\n", b"X-Slow: 1\r\n\r\n", pause=3.0), 504),
], ids=["reset-before-response", "garbage-status-line", "non-numeric-status", "binary", "closed-silently",
        "very-slow-headers"])
def test_fault_before_response_has_defined_answer(gateway, upstream, handler, status):
    url = gateway(upstream(handler).url)
    response = requests.get(url + "/x", timeout=10)
    assert response.status_code == status
    assert response.text.startswith(str(status))
    assert_healthy(url)


def test_refused_is_502(gateway, free_port):
    url = gateway(f"http://127.0.0.1:{free_port}")
    assert requests.get(url + "/x", timeout=5).status_code == 502
    assert_healthy(url)


def raw(url: str, path: str = "/x") -> http.client.HTTPResponse:
    host, port = url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.request("GET", path)
    response = conn.getresponse()
    response.conn = conn  # type: ignore[attr-defined]
    return response


@pytest.mark.parametrize("handler", [
    reset_mid_response,
    answer(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\ntruncated"),
    answer(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nslow", b"body", pause=3.0),
    answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nhalf\r\nzz\r\n"),
], ids=["reset-mid-response", "truncated-content-length", "very-slow-body", "bad-chunk"])
def test_fault_mid_response_cuts_the_client(gateway, upstream, handler):
    up = upstream(handler)
    url = gateway(up.url)
    response = raw(url)
    assert response.status == 200
    with pytest.raises((http.client.IncompleteRead, ConnectionError, socket.timeout)):
        response.read()
    assert_healthy(url)
    # the broken connection was not pooled: the next request opens a fresh one
    before = up.accepted
    raw(url).conn.close()
    assert wait_until(lambda: up.accepted == before + 1)


def test_endless_response_cancelled_by_client_closes_upstream(gateway, upstream):
    """A '10 GB' (endless) chunked response: when the client leaves, the upstream connection is closed,
    not kept in the pool, and the next request gets a new connection."""
    def endless(sock: socket.socket) -> None:
        read_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        while True:
            sock.sendall(b"10000\r\n" + b"x" * 0x10000 + b"\r\n")
    up = upstream(endless)
    url = gateway(up.url)
    response = raw(url)
    assert len(response.read(1_000_000)) == 1_000_000
    reset(response.conn.sock)
    response.conn.close()
    assert wait_until(lambda: up.closed_by_peer == 1, timeout=5)
    response = raw(url)
    assert len(response.read(1000)) == 1000
    response.conn.close()
    assert up.accepted == 2
    assert_healthy(url)


def test_many_faults_leave_no_leaked_connections(gateway, upstream):
    up = upstream(reset_mid_response)
    url = gateway(up.url)
    for _ in range(30):
        response = raw(url)
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            response.read()
        response.conn.close()
    assert up.accepted == 30
    assert_healthy(url)
