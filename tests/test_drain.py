"""Graceful stop: SIGTERM/SIGINT stop accepting, let in-flight requests finish (up to --grace), exit 0."""
import signal
import socket
import time

import gevent
import gevent.event
import pytest
import requests
from serve_process import Gatekeeper, lb_manifest, wait_for


class SlowUpstream:
    """Answers after ``delay`` seconds; ``arrived`` is set when a request reached it."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.arrived = gevent.event.Event()

    def __call__(self, environ, start_response):
        self.arrived.set()
        gevent.sleep(self.delay)
        body = b"slow answer\n" * 1000
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]


def start(conf_d, wsgi_server, tmp_path, delay, *args):
    upstream = SlowUpstream(delay)
    server = wsgi_server(upstream)
    conf_d("api.yaml", lb_manifest('slow: {rule: "PathPrefix(`/`)", service: s}', server.url))
    return upstream, Gatekeeper(conf_d.root, tmp_path / "gk.log", *args)


def refused(url: str) -> bool:
    host, port = url.rsplit("/", 1)[1].split(":")
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.parametrize("signum, workers", [(signal.SIGTERM, "1"), (signal.SIGINT, "1"), (signal.SIGTERM, "2")],
                         ids=["sigterm", "sigint", "sigterm-2-workers"])
def test_in_flight_request_completes_during_shutdown(signum, workers, conf_d, wsgi_server, tmp_path):
    upstream, gk = start(conf_d, wsgi_server, tmp_path, 1.0, "--workers", workers)
    try:
        pending = gevent.spawn(requests.get, gk.url + "/slow", timeout=10)
        assert upstream.arrived.wait(10)
        gk.signal(signum)
        assert wait_for(lambda: refused(gk.url), timeout=5)   # stopped accepting while the request runs
        response = pending.get(timeout=10)
        assert response.status_code == 200 and response.content == b"slow answer\n" * 1000
        assert gk.proc.wait(timeout=10) == 0
    finally:
        gk.close()


def test_idle_keep_alive_connection_does_not_hold_the_stop(conf_d, wsgi_server, tmp_path):
    _, gk = start(conf_d, wsgi_server, tmp_path, 0.0)
    try:
        session = requests.Session()
        assert session.get(gk.url + "/x", timeout=5).ok   # the connection stays open, idle
        began = time.monotonic()
        gk.signal(signal.SIGTERM)
        assert gk.proc.wait(timeout=10) == 0
        assert time.monotonic() - began < 3   # not the 10 s grace, nor the 60 s idle timeout
    finally:
        gk.close()


def test_grace_bounds_the_wait(conf_d, wsgi_server, tmp_path):
    upstream, gk = start(conf_d, wsgi_server, tmp_path, 30.0, "--grace", "0.5")
    try:
        pending = gevent.spawn(requests.get, gk.url + "/stuck", timeout=20)
        assert upstream.arrived.wait(10)
        began = time.monotonic()
        gk.signal(signal.SIGTERM)
        assert gk.proc.wait(timeout=10) == 0
        assert time.monotonic() - began < 3
        with pytest.raises(requests.ConnectionError):
            pending.get(timeout=10)
    finally:
        gk.close()
