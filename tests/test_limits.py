"""Client and upstream limits: header bytes (431), body bytes (413), idle keep-alive, upstream timeout (504)."""
import socket
import time

import gevent
import pytest
import requests
from serve_process import Gatekeeper

from tests.conftest import exchange


def slow_app(environ, start_response):
    gevent.sleep(float(environ.get("QUERY_STRING") or 0))
    start_response("200 OK", [("Content-Length", "3")])
    return [b"ok\n"]


@pytest.fixture(params=["fast", "pywsgi"])
def gateway(request, conf_d, echo_upstream, wsgi_server, tmp_path):
    """A gateway process with small limits, on each server (``--server``) in turn."""
    slow = wsgi_server(slow_app)
    conf_d("api.yaml", f"""
    http:
      routers:
        echo: {{rule: "PathPrefix(`/`)", service: s}}
        slow: {{rule: "PathPrefix(`/slow`)", service: slow}}
      services:
        s: {{loadBalancer: {{servers: [{{url: "{echo_upstream.url}"}}]}}}}
        slow: {{loadBalancer: {{servers: [{{url: "{slow.url}"}}]}}}}
    """)
    gk = Gatekeeper(conf_d.root, tmp_path / "gk.log", "--max-header-bytes", "4096", "--max-body-bytes", "1000",
                    "--idle-timeout", "0.5", "--read-timeout", "1.5", "--upstream-timeout", "0.5",
                    "--server", request.param)
    yield gk
    assert gk.stop() == 0


def raw_request(url: str, data: bytes) -> bytes:
    """``data`` sent as is to the gateway at ``url``, the connection left open for the answer."""
    return exchange(int(url.rsplit(":", 1)[1]), data, half_close=False)


@pytest.mark.parametrize("headers, status", [
    ("X-Big: " + "a" * 3000 + "\r\n", b"200"),
    ("X-Big: " + "a" * 5000 + "\r\n", b"431"),
    ("".join(f"X-H{i}: {'b' * 40}\r\n" for i in range(200)), b"431"),
    ("".join(f"X-H{i}: v\r\n" for i in range(150)), b"200"),
    ("X-Huge: " + "c" * 300_000 + "\r\n", b"431"),
], ids=["under-limit", "one-header-over", "many-headers-over", "150-small-headers-ok", "far-over"])
def test_header_size_limit(gateway, headers, status):
    answer = raw_request(gateway.url, f"GET /h HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n".encode())
    assert answer.split(b" ")[1] == status, answer[:200]


def test_431_is_access_logged(gateway):
    raw_request(gateway.url, b"GET /h?token=t0ps3cret HTTP/1.1\r\nX: " + b"a" * 5000 + b"\r\n\r\n")
    lines = [line for line in gateway.access_lines() if "status=431" in line]
    assert len(lines) == 1 and "path=/h " in lines[0] and "t0ps3cret" not in gateway.log()


@pytest.mark.parametrize("size, status", [(1000, 200), (1001, 413)], ids=["at-limit", "over-limit"])
def test_body_size_limit(gateway, size, status):
    response = requests.post(gateway.url + "/b", data=b"x" * size, timeout=5)
    assert response.status_code == status
    if status == 200:
        assert response.json()["body_size"] == size
    else:
        assert response.headers["Connection"] == "close"


def test_a_body_dribbled_inside_the_idle_timeout_is_cut_by_the_read_timeout(gateway):
    """A chunk every 0.3 s never trips the 0.5 s idle timeout; the body as a whole must arrive within the
    1.5 s read timeout, so the connection (and the upstream one opened for it) is closed after it."""
    with socket.create_connection(("127.0.0.1", int(gateway.url.rsplit(":", 1)[1])), timeout=5) as sock:
        sock.sendall(b"POST /dribble HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        start = time.monotonic()
        while time.monotonic() - start < 6:
            try:
                sock.sendall(b"1\r\na\r\n")
                time.sleep(0.3)
            except OSError:
                break
        cut_after = time.monotonic() - start
    assert 1.5 <= cut_after < 4, cut_after


def test_idle_connection_closed_after_idle_timeout(gateway):
    host, port = gateway.url.rsplit("/", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        began = time.monotonic()
        assert sock.recv(1) == b""          # the gateway closed it
        assert 0.4 < time.monotonic() - began < 3


@pytest.mark.parametrize("delay, status", [("0.1", 200), ("2", 504)], ids=["in-time", "too-slow"])
def test_upstream_response_timeout(gateway, delay, status):
    began = time.monotonic()
    assert requests.get(gateway.url + "/slow?" + delay, timeout=10).status_code == status
    assert time.monotonic() - began < 1.5
