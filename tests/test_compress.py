"""The ``compress`` middleware through a real Gateway and a real upstream: negotiation (q-values, ``*``,
``q=0``), the threshold, excluded and included types, answers left alone (already encoded, HEAD, 204, 206),
a streamed answer that keeps flowing, and ``gatekeeper check`` refusing bad options."""
from __future__ import annotations

import gzip
import http.client
import zlib
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional
from urllib.parse import urlsplit

import brotli
import gevent.event
import pytest
import requests
import zstandard

from gatekeeper.app import Gateway
from gatekeeper.ops.exchange import Exchange, observe
from tests.conftest import RunningServer
from tests.middleware_gateway import built, check_refuses, new_conf_d
from tests.test_upstream_faults import RawUpstream, read_request, reset

STREAM_GO = gevent.event.Event()


def payload(size: int) -> bytes:
    """A JSON-looking body of exactly ``size`` bytes (compressible, as an API answer is)."""
    row = b'{"id": 12345, "name": "gatekeeper", "tags": ["a", "b"]},'
    return (b"[" + row * (size // len(row) + 1))[:size]


def upstream(environ, start_response) -> Iterable[bytes]:
    """``/<router>/<kind>/<size>``: what the test asks of the answer; X-Seen-Accept-Encoding echoes the
    Accept-Encoding the upstream received."""
    _, _, kind, size_text = [*environ["PATH_INFO"].split("/"), "", "", "", "0"][:4]
    size = int(size_text or 0)
    seen = [("X-Seen-Accept-Encoding", environ.get("HTTP_ACCEPT_ENCODING", "-"))]
    body = payload(size)
    if kind == "json":
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(size)),
                                  ("ETag", '"v1"'), *seen])
        return [body]
    if kind == "chunked":  # no Content-Length: the gateway must buffer to decide
        start_response("200 OK", [("Content-Type", "application/json"), *seen])
        return iter([body[:size // 3], body[size // 3:]])
    if kind == "png":
        start_response("200 OK", [("Content-Type", "image/png"), ("Content-Length", str(size)), *seen])
        return [body]
    if kind == "encoded":
        data = gzip.compress(body)
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Encoding", "gzip"),
                                  ("Content-Length", str(len(data))), *seen])
        return [data]
    if kind == "empty":
        start_response("204 No Content", seen)
        return []
    if kind == "range":
        start_response("206 Partial Content", [("Content-Type", "application/json"), *seen,
                                               ("Content-Range", f"bytes 0-{size - 1}/{size * 2}"),
                                               ("Content-Length", str(size))])
        return [body]
    if kind == "stream":
        start_response("200 OK", [("Content-Type", "text/event-stream"), *seen])
        return event_stream()
    start_response("404 Not Found", [("Content-Length", "0")])
    return []


def event_stream() -> Iterator[bytes]:
    yield b"data: first event, sent before the upstream is done\n\n" * 4
    assert STREAM_GO.wait(10), "the test never saw the first event"
    yield b"data: last\n\n"


@pytest.fixture
def gateway(tmp_path: Path, wsgi_server) -> Iterator[str]:
    gw = make_gateway(tmp_path, wsgi_server(upstream).url)
    server = RunningServer(gw)
    yield server.url
    server.stop()


@pytest.fixture
def running_raw() -> Iterator[Callable[..., RawUpstream]]:
    started: List[RawUpstream] = []

    def start(handler: Callable) -> RawUpstream:
        started.append(RawUpstream(handler))
        return started[-1]
    yield start
    for raw in started:
        raw.server.stop(timeout=1)


def make_gateway(tmp_path: Path, backend: str) -> Gateway:
    root = new_conf_d(tmp_path, "routes.yaml", f"""
http:
  routers:
    d: {{rule: "PathPrefix(`/d/`)", service: app, middlewares: [plain]}}
    t: {{rule: "PathPrefix(`/t/`)", service: app, middlewares: [small]}}
    x: {{rule: "PathPrefix(`/x/`)", service: app, middlewares: [nopng]}}
    i: {{rule: "PathPrefix(`/i/`)", service: app, middlewares: [onlyjson]}}
    g: {{rule: "PathPrefix(`/g/`)", service: app, middlewares: [gzipdefault]}}
  middlewares:
    plain: {{compress: {{}}}}
    small: {{compress: {{minResponseBodyBytes: 10}}}}
    nopng: {{compress: {{excludedContentTypes: ["Image/PNG"]}}}}
    onlyjson: {{compress: {{includedContentTypes: ["application/json"]}}}}
    gzipdefault: {{compress: {{encodings: [gzip, br], defaultEncoding: gzip}}}}
  services:
    app: {{loadBalancer: {{servers: [{{url: "{backend}"}}]}}}}
""")
    return built(root)


class Answer:
    """An answer as sent on the wire (http.client decodes nothing)."""

    def __init__(self, status_code: int, headers: http.client.HTTPMessage, raw_bytes: bytes) -> None:
        self.status_code, self.headers, self.raw_bytes = status_code, headers, raw_bytes


def get(url: str, accept: Optional[str], method: str = "GET") -> Answer:
    """``accept`` None: no Accept-Encoding at all (http.client would add ``identity`` otherwise)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    try:
        conn.putrequest(method, parts.path, skip_accept_encoding=True)
        if accept is not None:
            conn.putheader("Accept-Encoding", accept)
        conn.endheaders()
        response = conn.getresponse()
        return Answer(response.status, response.headers, response.read())
    finally:
        conn.close()


def decoded(response: Answer) -> bytes:
    encoding = response.headers.get("Content-Encoding")
    raw = response.raw_bytes
    if encoding == "gzip":
        return gzip.decompress(raw)
    if encoding == "br":
        return brotli.decompress(raw)
    if encoding == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(raw)
    assert encoding is None, encoding
    return raw


@pytest.mark.parametrize("accept, chosen", [
    ("gzip", "gzip"),
    ("br", "br"),
    ("zstd", "zstd"),
    ("gzip, br", "br"),                      # equal q: the configured order (zstd, br, gzip)
    ("gzip, deflate, br, zstd", "zstd"),     # what browsers send
    ("gzip;q=1.0, br;q=0.5", "gzip"),
    ("br;q=0, gzip;q=0.1", "gzip"),
    ("*", "zstd"),
    ("*;q=0.5, zstd;q=0", "br"),             # * stands for what is not named; zstd is refused by name
    ("identity", None),
    ("gzip;q=0, br;q=0", None),
    ("", None),                              # present and empty: no compression
    (None, None),                            # absent, no defaultEncoding
    ("deflate", None),
], ids=["gzip", "br", "zstd", "order", "browser", "q-wins", "q0-refuses", "star", "star-not-refused", "identity",
        "all-refused", "empty", "absent", "unknown"])
def test_negotiation_with_q_values(gateway, accept, chosen):
    response = get(f"{gateway}/d/json/5000", accept)
    assert response.status_code == 200
    assert response.headers.get("Content-Encoding") == chosen
    assert decoded(response) == payload(5000)
    if chosen:
        assert response.headers["Vary"] == "Accept-Encoding"
        assert response.headers["ETag"] == 'W/"v1"'
        assert response.headers["X-Seen-Accept-Encoding"] == "-"  # the upstream was asked for identity
        assert int(response.headers["Content-Length"]) == len(response.raw_bytes) < 5000
    else:
        assert response.headers["ETag"] == '"v1"' and "Vary" not in response.headers


@pytest.mark.parametrize("accept, chosen", [(None, "gzip"), ("*", "gzip"), ("br", "br"), ("", None)],
                         ids=["absent-default", "star-default", "named-wins", "empty-none"])
def test_default_encoding(gateway, accept, chosen):
    response = get(f"{gateway}/g/json/5000", accept)
    assert response.headers.get("Content-Encoding") == chosen
    assert decoded(response) == payload(5000)


@pytest.mark.parametrize("path, compressed", [
    ("/d/json/1023", False), ("/d/json/1024", True), ("/t/json/10", True), ("/t/json/9", False),
    ("/d/chunked/1000", False), ("/d/chunked/1100", True), ("/d/chunked/100000", True),
], ids=["below-1024", "at-1024", "own-threshold", "below-own", "streamed-small", "streamed-over",
        "streamed-large"])
def test_threshold(gateway, path, compressed):
    response = get(gateway + path, "gzip")
    assert (response.headers.get("Content-Encoding") == "gzip") is compressed
    assert decoded(response) == payload(int(path.rsplit("/", 1)[1]))
    if compressed and "chunked" in path:
        assert "Content-Length" not in response.headers


@pytest.mark.parametrize("path, compressed", [
    ("/x/png/5000", False), ("/x/json/5000", True), ("/i/png/5000", False), ("/i/json/5000", True),
    ("/d/png/5000", True),
], ids=["excluded", "not-excluded", "not-included", "included", "default-all-types"])
def test_content_types(gateway, path, compressed):
    response = get(gateway + path, "gzip")
    assert (response.headers.get("Content-Encoding") == "gzip") is compressed
    assert decoded(response) == payload(5000)


def test_an_answer_already_encoded_is_kept(gateway):
    response = get(f"{gateway}/d/encoded/5000", "br")
    assert response.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(response.raw_bytes) == payload(5000)


@pytest.mark.parametrize("method, path, status", [
    ("HEAD", "/d/json/5000", 200), ("GET", "/d/empty/0", 204), ("GET", "/d/range/5000", 206),
], ids=["head", "204", "206"])
def test_answers_never_compressed(gateway, method, path, status):
    response = get(gateway + path, "gzip, br", method)
    assert response.status_code == status
    assert "Content-Encoding" not in response.headers
    if status == 206:
        assert response.raw_bytes == payload(5000)
    if method == "HEAD":
        assert response.headers["Content-Length"] == "5000" and response.raw_bytes == b""


STREAM_DECODERS = {
    "gzip": lambda: zlib.decompressobj(16 + zlib.MAX_WBITS).decompress,
    "br": lambda: brotli.Decompressor().process,
    "zstd": lambda: zstandard.ZstdDecompressor().decompressobj().decompress,
}


@pytest.mark.parametrize("encoding", sorted(STREAM_DECODERS))
def test_a_streamed_answer_arrives_in_pieces_before_the_upstream_finishes(gateway, encoding):
    STREAM_GO.clear()
    with requests.get(f"{gateway}/t/stream/0", headers={"Accept-Encoding": encoding}, stream=True,
                      timeout=5) as response:
        assert response.headers["Content-Encoding"] == encoding
        decode = STREAM_DECODERS[encoding]()
        pieces = response.raw.stream(1024, decode_content=False)
        first = b""
        while not first.endswith(b"\n\n"):
            first += decode(next(pieces))
        assert first.startswith(b"data: first event")  # before the upstream was let go
        STREAM_GO.set()
        rest = b"".join(decode(piece) for piece in pieces)
    assert first + rest == b"data: first event, sent before the upstream is done\n\n" * 4 + b"data: last\n\n"


@pytest.mark.parametrize("path", ["/d/json/20000", "/d/chunked/300000", "/d/json/100"],
                         ids=["whole", "streamed", "small"])
def test_the_access_log_counts_the_bytes_sent(tmp_path, wsgi_server, path):
    exchanges: List[Exchange] = []
    server = RunningServer(observe(make_gateway(tmp_path, wsgi_server(upstream).url), finish=exchanges.append))
    try:
        response = get(server.url + path, "gzip")
    finally:
        server.stop()
    assert decoded(response) == payload(int(path.rsplit("/", 1)[1]))
    assert [e.bytes for e in exchanges] == [len(response.raw_bytes)]


def test_requests_client_decodes_both_encodings(gateway):
    """urllib3 2.8 decodes gzip and br itself (zstd only through backports.zstd, not installed here)."""
    for accept in ("gzip", "br"):
        response = requests.get(f"{gateway}/d/json/20000", headers={"Accept-Encoding": accept}, timeout=5)
        assert response.headers["Content-Encoding"] == accept
        assert response.content == payload(20000)


BAD_OPTIONS = [
    ("{excludedContentTypes: [text/html], includedContentTypes: [text/css]}", "mutually exclusive"),
    ("{encodings: [deflate]}", "'deflate' is not an encoding Traefik knows"),
    ("{encodings: []}", "at least one encoding"),
    ("{encodings: [gzip], defaultEncoding: br}", "defaultEncoding: 'br' is not one of the encodings"),
    ("{minResponseBodyBytes: -1}", "minResponseBodyBytes: must be at least 0"),
    ("{minResponseBodyBytes: 999999999}", "minResponseBodyBytes: at most"),
    ("{excludedContentTypes: [html]}", "excludedContentTypes[0]: expected a media type"),
    ("{level: 9}", 'unknown field "level"'),
]


def test_check_refuses_bad_options(conf_d):
    """One ``gatekeeper check`` run (a real subprocess) over one middleware per mistake."""
    check_refuses(conf_d, "compress", BAD_OPTIONS, prefix="zip")


def test_an_upstream_failing_mid_body_cuts_the_compressed_answer(tmp_path, running_raw):
    """Head and first bytes sent, then a reset: the client sees a cut connection, never a clean end."""
    def handler(sock):
        read_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
                     + payload(5000))
        gevent.sleep(0.2)
        reset(sock)
    server = RunningServer(make_gateway(tmp_path, running_raw(handler).url))
    try:
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            requests.get(f"{server.url}/d/json/0", headers={"Accept-Encoding": "gzip"}, timeout=5)
    finally:
        server.stop()


def test_an_upstream_failing_while_the_threshold_is_read_is_a_502(tmp_path, running_raw):
    def handler(sock):
        read_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"64\r\n" + payload(100) + b"\r\n")
        gevent.sleep(0.2)
        reset(sock)
    exchanges: List[Exchange] = []
    server = RunningServer(observe(make_gateway(tmp_path, running_raw(handler).url), finish=exchanges.append))
    try:
        response = requests.get(f"{server.url}/d/json/0", headers={"Accept-Encoding": "gzip"}, timeout=5)
    finally:
        server.stop()
    assert response.status_code == 502 and "Content-Encoding" not in response.headers
    assert [e.status for e in exchanges] == [502]  # the access log says what the client got
