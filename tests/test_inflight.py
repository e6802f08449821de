"""inFlightReq through a real Gateway and real upstreams: ``amount`` requests at once per source (by default
the Host), the next answered 429 without reaching the upstream, and the count released however an answer
ends: sent whole, the client gone mid-stream, the upstream failing."""
from __future__ import annotations

import socket
from typing import Callable, Dict, Iterable, Iterator, List

import gevent
import gevent.event
import pytest
import requests

from gatekeeper.app import Gateway
from tests.conftest import RunningServer, wait_until
from tests.middleware_gateway import built, config_errors, one_middleware, routes_yaml


class SlowUpstream:
    """``/hold`` waits until released; ``/stream`` sends a chunk every 20 ms until its client is gone."""

    def __init__(self) -> None:
        self.release = gevent.event.Event()
        self.holding = 0
        self.streams_closed = 0
        self.hits = 0

    def __call__(self, environ: Dict, start_response: Callable) -> Iterable[bytes]:
        self.hits += 1
        if environ["PATH_INFO"] == "/stream":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return self.stream()
        if environ["PATH_INFO"] == "/hold":
            self.holding += 1
            try:
                self.release.wait(timeout=10)
            finally:
                self.holding -= 1
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    def stream(self) -> Iterator[bytes]:
        try:
            for _ in range(500):
                yield b"x" * 1024
                gevent.sleep(0.02)
        finally:
            self.streams_closed += 1


@pytest.fixture
def gateway(conf_d, wsgi_server, free_port) -> Iterator[Callable[..., tuple]]:
    started: List[RunningServer] = []

    def start(inflight: str) -> tuple:
        upstream = SlowUpstream()
        server = wsgi_server(upstream)
        conf_d("routes.yaml", routes_yaml(
            f"inflight: {{inFlightReq: {inflight}}}", "[inflight]", server.url,
            routers='down: {rule: "PathPrefix(`/down`)", service: down, middlewares: [inflight], priority: 100}',
            services=f'down: {{loadBalancer: {{servers: [{{url: "http://127.0.0.1:{free_port}"}}]}}}}'))
        gw = built(conf_d.root)
        started.append(RunningServer(gw))
        return started[-1], upstream
    yield start
    for server in started:
        server.stop()


def get(url: str, **kwargs) -> int:
    return requests.get(url, timeout=10, **kwargs).status_code


def test_amount_in_flight_per_host_then_429_and_released_when_answers_end(gateway):
    server, upstream = gateway("{amount: 2}")
    held = [gevent.spawn(get, server.url + "/hold") for _ in range(2)]
    assert wait_until(lambda: upstream.holding == 2)
    refused = requests.get(server.url + "/hold", timeout=5)
    assert refused.status_code == 429 and refused.text.startswith("429 Too Many Requests")
    assert upstream.hits == 2                                            # the refused one never got there
    assert get(server.url + "/x", headers={"Host": "other.example"}) == 200     # another Host, another count
    upstream.release.set()
    assert [g.get(timeout=10) for g in held] == [200, 200]
    assert [get(server.url + "/x") for _ in range(3)] == [200, 200, 200]      # both slots came back


def test_a_client_gone_mid_stream_releases_its_slot(gateway):
    server, upstream = gateway("{amount: 1}")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: a.example\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        assert get(server.url + "/x", headers={"Host": "a.example"}) == 429   # the stream holds the slot
    assert wait_until(lambda: upstream.streams_closed == 1, timeout=5)
    assert wait_until(lambda: get(server.url + "/x", headers={"Host": "a.example"}) == 200, timeout=5)


def test_a_stream_closed_early_by_a_reading_client_releases_its_slot(gateway):
    server, upstream = gateway("{amount: 1}")
    response = requests.get(server.url + "/stream", headers={"Host": "b.example"}, stream=True, timeout=5)
    next(response.iter_content(1024))
    assert get(server.url + "/x", headers={"Host": "b.example"}) == 429
    response.close()
    assert wait_until(lambda: upstream.streams_closed == 1, timeout=5)      # the gateway closed the upstream's too
    assert wait_until(lambda: get(server.url + "/x", headers={"Host": "b.example"}) == 200, timeout=5)


def test_an_upstream_error_releases_its_slot(gateway):
    server, _ = gateway("{amount: 1}")
    assert [get(server.url + "/down") for _ in range(4)] == [502] * 4          # never 429: each one released
    assert get(server.url + "/x") == 200


def test_source_criterion_header(gateway):
    server, upstream = gateway("{amount: 1, sourceCriterion: {requestHeaderName: X-Tenant}}")
    held = gevent.spawn(get, server.url + "/hold", headers={"X-Tenant": "a"})
    assert wait_until(lambda: upstream.holding == 1)
    assert get(server.url + "/x", headers={"X-Tenant": "a"}) == 429
    assert get(server.url + "/x", headers={"X-Tenant": "b"}) == 200
    upstream.release.set()
    assert held.get(timeout=10) == 200


@pytest.mark.parametrize("options, message", [
    ("{}", "inFlightReq.amount: required"),
    ("{amount: 0}", "inFlightReq.amount: must be at least 1"),
    ("{amount: many}", "inFlightReq.amount: expected a whole number"),
    ("{amount: 1, sourceCriterion: {requestHost: true, ipStrategy: {depth: 1}}}",
     "inFlightReq.sourceCriterion: set only one of"),
    ("{amount: 1, amout: 2}", 'inFlightReq: unknown field "amout"'),
], ids=["missing", "zero", "text", "two-strategies", "unknown"])
def test_bad_options_are_refused_and_the_router_answers_503(conf_d, options, message):
    conf_d("routes.yaml", one_middleware("inFlightReq", options, "inflight"))
    errors = config_errors(Gateway(conf_d.root))
    assert any(message in e and 'middleware "inflight@file"' in e for e in errors), errors
