"""The ``buffering`` middleware through a real Gateway: bodies read whole before forwarding (413 past the
maximum, Content-Length or chunked, never forwarded), spilled to a deleted temporary file past the memory
threshold, answers read whole (500 past the maximum), the server's --max-body-bytes agreeing, and a slow
uploader holding only its own request."""
from __future__ import annotations

import hashlib
import os
import socket
import tempfile
import time
from typing import Any, Callable, Dict, Iterable, List, Set

import pytest
import requests

from gatekeeper.app import Gateway, edge_stack
from gatekeeper.ops.echo import echo_app
from tests.conftest import status_of
from tests.middleware_gateway import config_errors, one_middleware, serve_routes


def spooled_files() -> Set[str]:
    """This process's open files that are deleted temporary files (a spilled body; pytest's capture files
    too, hence the tests compare with what was open before)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(tempfile.gettempdir()) and target.endswith("(deleted)"):
            found.add(target)
    return found


class Upstream:
    """The echo app, counting calls and noting whether a spooled temporary file was open meanwhile; ``/big/N``
    answers N bytes in 1000-byte chunks without a Content-Length."""

    def __init__(self) -> None:
        self.calls: List[Dict[str, Any]] = []
        self.before = spooled_files()

    def __call__(self, environ: Dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        self.calls.append({"spooled": len(spooled_files() - self.before)})
        if environ["PATH_INFO"].startswith("/big/"):
            size = int(environ["PATH_INFO"][5:])
            start_response("200 OK", [("Content-Type", "application/octet-stream")])
            return (b"z" * 1000 for _ in range(size // 1000))
        return echo_app(environ, start_response)


@pytest.fixture
def upstream() -> Upstream:
    return Upstream()


@pytest.fixture
def serve(conf_d, wsgi_server, upstream):
    """``serve(buffering_options, max_body_bytes=None)`` -> url of a gateway with [buffer] before upstream."""
    backend = wsgi_server(upstream)

    def start(options: str, max_body_bytes=None) -> str:
        return serve_routes(conf_d, wsgi_server, one_middleware("buffering", options, "buffer", backend.url),
                            wrap=lambda gateway: edge_stack(gateway, max_body_bytes=max_body_bytes))
    return start


def chunks(data: bytes, size: int = 1000) -> Iterable[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("size, status", [(10_000, 200), (10_001, 413)], ids=["at-max", "over-max"])
def test_max_request_body_bytes(serve, upstream, chunked, size, status):
    url = serve("{maxRequestBodyBytes: 10000}")
    body = os.urandom(size)
    response = requests.post(url + "/x", data=chunks(body) if chunked else body, timeout=5)
    assert response.status_code == status
    if status == 413:
        assert upstream.calls == []
        return
    echoed = response.json()
    assert echoed["body_size"] == size and echoed["body_sha256"] == hashlib.sha256(body).hexdigest()
    names = {name.lower(): value for name, value in echoed["headers"]}
    assert names["content-length"] == str(size) and "transfer-encoding" not in names


def test_a_body_past_mem_request_body_bytes_goes_to_a_deleted_file_closed_after(serve, upstream):
    url = serve("{memRequestBodyBytes: 1000}")
    body = os.urandom(200_000)
    echoed = requests.post(url + "/x", data=body, timeout=5).json()
    assert echoed["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert upstream.calls[-1]["spooled"] >= 1            # on disk while the upstream read it
    assert spooled_files() == upstream.before             # and gone once answered
    requests.post(url + "/x", data=b"small", timeout=5)
    assert upstream.calls[-1]["spooled"] == 0             # a body under the threshold stays in memory


@pytest.mark.parametrize("size, status", [(5000, 200), (5001, 500)], ids=["at-max", "over-max"])
def test_max_response_body_bytes(serve, upstream, size, status):
    url = serve("{maxResponseBodyBytes: 5000, memResponseBodyBytes: 1000}")
    response = requests.get(url + f"/big/{size if size % 1000 == 0 else size + 999}", timeout=5)
    assert response.status_code == status
    if status == 200:
        assert response.headers["Content-Length"] == str(size) and response.content == b"z" * size
    assert spooled_files() == upstream.before


def test_the_answer_is_sent_whole_with_its_length(serve):
    url = serve("{}")
    response = requests.get(url + "/big/50000", timeout=5)
    assert response.headers["Content-Length"] == "50000" and "Transfer-Encoding" not in response.headers


def test_the_server_limit_and_the_middleware_agree_on_413(serve, upstream):
    url = serve("{maxRequestBodyBytes: 100000}", max_body_bytes=2000)
    assert requests.post(url + "/x", data=b"a" * 3000, timeout=5).status_code == 413              # server
    assert requests.post(url + "/x", data=chunks(b"a" * 3000), timeout=5).status_code == 413      # server, chunked
    assert requests.post(url + "/x", data=b"a" * 1500, timeout=5).status_code == 200
    assert len(upstream.calls) == 1


def test_a_slow_uploader_holds_only_its_own_request(serve):
    url = serve("{maxRequestBodyBytes: 100000}")
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as slow:
        slow.sendall(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n" + b"a" * 10)
        started = time.monotonic()
        for _ in range(3):
            assert requests.post(url + "/y", data=b"quick", timeout=5).status_code == 200
        assert time.monotonic() - started < 1.0
        slow.sendall(b"a" * 990)
        assert status_of(slow.recv(65536)) == 200


@pytest.mark.parametrize("options, message", [
    ("{maxRequestBodyBytes: -1}", "buffering.maxRequestBodyBytes: must be at least 0"),
    ("{memResponseBodyBytes: lots}", "buffering.memResponseBodyBytes: expected a whole number"),
    ("{retryExpression: 'IsNetworkError()'}", "buffering.retryExpression: not supported"),
    ("{maxBodyBytes: 1}", 'buffering: unknown field "maxBodyBytes"'),
], ids=["negative", "not-a-number", "retry-expression", "unknown"])
def test_bad_options_fail_closed(conf_d, options, message):
    conf_d("routes.yaml", one_middleware("buffering", options, "buffer"))
    errors = config_errors(Gateway(conf_d.root))
    assert errors and 'middleware "buffer@file": ' + message in errors[0], errors


def test_an_upgrade_passes_through_unbuffered(conf_d, wsgi_server):
    from tests.test_websocket import RawUpgrade

    raw = RawUpgrade()
    try:
        conf_d("routes.yaml", f"""
            http:
              routers:
                app: {{rule: "PathPrefix(`/`)", service: raw, middlewares: [buffer]}}
              middlewares:
                buffer: {{buffering: {{maxResponseBodyBytes: 10}}}}
              services:
                raw: {{loadBalancer: {{servers: [{{url: "{raw.url}"}}]}}}}
            """)
        port = wsgi_server(Gateway(conf_d.root)).port
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(4096)
            assert status_of(head) == 101
            sock.sendall(b"ping" * 10)
            echoed = b""
            while len(echoed) < 40:
                echoed += sock.recv(4096)
            assert echoed == b"ping" * 10
    finally:
        raw.server.stop(timeout=1)
