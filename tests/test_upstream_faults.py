"""Upstreams that let the gateway down, through a real Gateway on both servers (fast and pywsgi): each fault
has a defined answer (502/504 while nothing went to the client, a cleanly cut client connection once the
response had started), one log line without a traceback, an access-log record of what the client got, and
the gateway stays healthy afterwards.
"""
from __future__ import annotations

import http.client
import logging
import socket
import struct
import time
from pathlib import Path
from typing import Callable, Iterator, List

import gevent
import pytest
import requests
from gevent.server import StreamServer
from prometheus_client import REGISTRY

from gatekeeper.app import Gateway
from gatekeeper.config.compile import CompileOptions
from gatekeeper.ops import metrics
from gatekeeper.ops.accesslog import Exchange
from gatekeeper.ops.echo import named_echo_app
from gatekeeper.proxy.balancer import ProxyLimits
from tests.conftest import RunningServer, exchange, status_of, wait_until
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
def exchanges() -> List[Exchange]:
    """The access-log records (and metrics) of the requests the ``gateway`` fixture served."""
    return []


@pytest.fixture(params=["fast", "pywsgi"])
def gateway(request, tmp_path: Path, exchanges: List[Exchange]) -> Iterator[Callable]:
    """``gateway(faulty_url)`` -> URL of a Gateway routing ``/healthy`` to an echo and the rest to faulty,
    served by each server, instrumented as ``gatekeeper serve`` does (records land in ``exchanges``)."""
    running: List = []

    def start(faulty_url: str) -> str:
        healthy = RunningServer(named_echo_app("healthy"))
        root = tmp_path / "conf.d"
        root.mkdir()
        (root / "routes.yaml").write_text(ROUTES % (faulty_url, healthy.url))
        gw = Gateway(root, options=FAST)
        assert not gw.config.errors
        server = RunningServer(metrics.instrument(gw, access_log=exchanges.append), server=request.param)
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


# --- every point of failure: 502/504 while nothing was sent, a clean cut after -------------------------

HEAD_200 = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"
CHUNKED_200 = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


def send_then_reset(*chunks: bytes) -> Callable[[socket.socket], None]:
    """A handler reading one request, sending ``chunks``, then resetting the connection."""
    def handler(sock: socket.socket) -> None:
        read_request(sock)
        for chunk in chunks:
            sock.sendall(chunk)
        gevent.sleep(0.05)  # let the gateway read what was sent before the reset discards it
        reset(sock)
    return handler


@pytest.mark.parametrize("handler, status", [
    (answer(HEAD_200), 502),
    (send_then_reset(HEAD_200), 502),
    (answer(CHUNKED_200), 502),
    (answer(CHUNKED_200 + b"zz\r\nhalf\r\n0\r\n\r\n"), 502),
    (answer(CHUNKED_200 + b"-4\r\nhalf\r\n0\r\n\r\n"), 502),
    (answer(CHUNKED_200 + b"1_0\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n"), 502),
    (answer(b"HTTP/1.1 200 OK\r\nX-Odd: a\rb\r\nContent-Length: 2\r\n\r\nok"), 502),
    (answer(HEAD_200, b"late", pause=3.0), 504),
], ids=["length-closed-before-body", "length-reset-before-body", "chunked-closed-before-body",
        "garbled-chunk-size", "negative-chunk-size", "underscore-chunk-size",
        "bare-cr-in-header", "headers-then-silence"])
def test_fault_before_first_body_byte_is_an_answer(gateway, upstream, exchanges, handler, status, caplog):
    """Nothing went to the client yet: it gets a clean 502/504 (was: 500, or a 200 head and a cut), one
    warning names the router, the upstream and the cause, and the access log records the status sent."""
    up = upstream(handler)
    url = gateway(up.url)
    with caplog.at_level(logging.INFO):
        answer_ = exchange(int(url.rsplit(":", 1)[1]), b"GET /x HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert status_of(answer_) == status
    assert answer_.endswith(b"%d %s\n" % (status, b"Bad Gateway" if status == 502 else b"Gateway Timeout"))
    warnings = warnings_about(caplog, up.url)
    assert len(warnings) == 1 and warnings[0].exc_info is None, [r.getMessage() for r in warnings]
    line = warnings[0].getMessage()
    assert "faulty@file" in line and up.url in line and "/x" in line, line
    assert wait_until(lambda: len(exchanges) == 1)
    record = exchanges[0]
    assert (record.status, record.aborted, record.upstream) == (status, None, up.url)
    assert record.upstream_error == ("timeout" if status == 504 else "bad_gateway")
    assert_healthy(url)


def warnings_about(caplog, upstream_url: str) -> List[logging.LogRecord]:
    """Warnings and worse naming ``upstream_url`` (a previous test's upstream may still log late)."""
    return [r for r in caplog.records if r.levelno >= logging.WARNING and upstream_url in r.getMessage()]


def metric_sum(name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (other labels summed over)."""
    total = 0.0
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


@pytest.mark.parametrize("handler, body, sent", [
    (send_then_reset(HEAD_200 + b"half"), b"half", 4),
    (answer(HEAD_200 + b"truncated"), b"truncated", 9),
    (answer(HEAD_200 + b"slow", b"body", pause=3.0), b"slow", 4),
    (answer(CHUNKED_200 + b"4\r\nha"), b"2\r\nha\r\n", 2),
    (answer(CHUNKED_200 + b"4\r\nhalf\r\nzz\r\n"), b"4\r\nhalf\r\n", 4),
    (answer(CHUNKED_200 + b"4\r\nhalf\r\n4\r\nha"), b"4\r\nhalf\r\n2\r\nha\r\n", 6),
    (send_then_reset(b"HTTP/1.1 200 OK\r\n\r\nto-close"), b"8\r\nto-close\r\n", 8),
], ids=["length-reset", "length-closed", "length-timeout", "closed-mid-first-chunk", "garbled-second-chunk",
        "closed-mid-second-chunk", "read-to-close-reset"])
def test_fault_after_first_body_byte_cuts_the_client_cleanly(gateway, upstream, exchanges, handler, body,
                                                            sent, caplog, capfd):
    """The head is gone: the client gets exactly what was sent (no 500 page, no chunk terminator) and then
    EOF; one warning without a traceback names the cause, the router and the upstream; the access log keeps
    the status with ``aborted=upstream`` and the bytes really sent, and the metrics count the same."""
    up = upstream(handler)
    url = gateway(up.url)
    before = metric_sum("gatekeeper_upstream_errors_total", router="faulty@file", kind="aborted")
    with caplog.at_level(logging.INFO):
        got = exchange(int(url.rsplit(":", 1)[1]), b"GET /x?jwt=abc HTTP/1.1\r\nHost: gw\r\n\r\n",
                       half_close=False)
    assert status_of(got) == 200
    _, _, got_body = got.partition(b"\r\n\r\n")
    assert got_body == body  # exactly what was sent: no 500 page, no "0\r\n\r\n" terminator, then EOF
    warnings = warnings_about(caplog, up.url)
    assert len(warnings) == 1 and warnings[0].exc_info is None, [r.getMessage() for r in warnings]
    line = warnings[0].getMessage()
    assert "faulty@file" in line and up.url in line and "/x" in line and "jwt" not in line, line
    assert "Traceback" not in capfd.readouterr().err
    assert wait_until(lambda: len(exchanges) == 1)
    record = exchanges[0]
    assert (record.status, record.aborted, record.bytes) == (200, "upstream", sent)
    assert metric_sum("gatekeeper_upstream_errors_total", router="faulty@file", kind="aborted") == before + 1
    assert_healthy(url)


def test_a_dead_upstream_under_load_logs_one_line_a_second(gateway, free_port, exchanges, caplog):
    """50 requests to a refused upstream within a second: 50 answers of 502 and 50 records, 1-2 log lines."""
    url = gateway(f"http://127.0.0.1:{free_port}")
    started = time.monotonic()
    with caplog.at_level(logging.INFO), requests.Session() as session:
        statuses = [session.get(url + "/x", timeout=5).status_code for _ in range(50)]
    elapsed = time.monotonic() - started
    assert statuses == [502] * 50
    assert sum(1 for e in exchanges if e.status == 502) == 50
    lines = warnings_about(caplog, f"127.0.0.1:{free_port}")
    assert 1 <= len(lines) <= int(elapsed) + 1, [r.getMessage() for r in lines]
