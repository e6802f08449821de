"""WebSocket (and any Upgrade) through routers, on both servers: a real WebSocket upstream (the ``websockets``
package's asyncio server, tests/ws_upstream.py, in its own process) and a real client (``websockets``'
sans-IO ClientProtocol over a gevent socket: its threaded sync client does not run under the test process's
monkey-patching). The router's middlewares run before the switch: a JWT-protected socket needs a token.
"""
from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Deque, Iterator, List, Optional

import gevent
import pytest
from gevent.server import StreamServer
from serve_process import Gatekeeper, metric_value, wait_for
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from gatekeeper.app import Gateway
from gatekeeper.jwt.mint import mint
from gatekeeper.server.base import ServerLimits
from tests.conftest import exchange, status_of, wait_until

SECRET = "websocket-secret-0123456789abcdef"
UPSTREAM_SCRIPT = Path(__file__).resolve().parent / "ws_upstream.py"
BIG = bytes(range(256)) * 16384   # 4 MiB: many TCP segments, one WebSocket frame


class WSClient:
    """A WebSocket client: websockets' protocol state machine, our socket."""

    def __init__(self, port: int, path: str, *, host: str = "public.test", token: Optional[str] = None,
                 tls: Optional[ssl.SSLContext] = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_hostname="127.0.0.1")
        scheme = "wss" if tls is not None else "ws"
        self.proto = ClientProtocol(parse_uri(f"{scheme}://127.0.0.1:{port}{path}"), max_size=None)
        request = self.proto.connect()
        del request.headers["Host"]
        request.headers["Host"] = host
        request.headers["X-Forwarded-For"] = "203.0.113.9"   # a client's claim: not passed on
        if token is not None:
            request.headers["Authorization"] = f"Bearer {token}"
        self.proto.send_request(request)
        self.flush()
        self.response: Optional[Response] = None
        self.frames: Deque[Frame] = deque()
        self.eof = False
        while self.response is None and not self.eof:
            self.feed()

    @property
    def status(self) -> int:
        assert self.response is not None
        return self.response.status_code

    def flush(self) -> None:
        for data in self.proto.data_to_send():
            if data:
                self.sock.sendall(data)
            else:   # the protocol's end of stream
                try:
                    self.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

    def feed(self) -> None:
        data = self.sock.recv(256 * 1024)
        if data:
            self.proto.receive_data(data)
        else:
            self.eof = True
            self.proto.receive_eof()
        self.flush()
        for event in self.proto.events_received():
            if isinstance(event, Response):
                self.response = event
            elif event.opcode not in (Opcode.PING, Opcode.PONG):
                self.frames.append(event)

    def recv(self) -> Frame:
        while not self.frames:
            if self.eof:
                raise EOFError("the connection closed")
            self.feed()
        return self.frames.popleft()

    def send(self, message: "str | bytes") -> None:
        if isinstance(message, str):
            self.proto.send_text(message.encode())
        else:
            self.proto.send_binary(message)
        self.flush()

    def wait_eof(self) -> None:
        while not self.eof:
            self.feed()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def ws_upstream(tmp_path_factory) -> Iterator[dict]:
    """The WebSocket upstream process: its URL and the file where it records handshakes and closes."""
    record = tmp_path_factory.mktemp("ws") / "record.txt"
    record.touch()
    proc = subprocess.Popen([sys.executable, str(UPSTREAM_SCRIPT), str(record)], stdout=subprocess.PIPE, text=True)
    try:
        with gevent.Timeout(15, AssertionError("the WebSocket upstream did not start")):
            port = int(proc.stdout.readline())
        yield {"url": f"http://127.0.0.1:{port}", "record": record}
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def recorded(upstream: dict) -> List[str]:
    return upstream["record"].read_text().splitlines()


class RawUpgrade:
    """A non-WebSocket Upgrade upstream (``Upgrade: echo``): answers 101, echoes bytes, and on the
    client's half-close sends ``bye`` and closes. Served by gevent in the test process."""

    def __init__(self) -> None:
        self.server = StreamServer(("127.0.0.1", 0), self.handle)
        self.server.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.heads: List[bytes] = []

    def handle(self, sock: socket.socket, _: object) -> None:
        sock.settimeout(5)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(4096)
        head, _, rest = data.partition(b"\r\n\r\n")
        self.heads.append(head)
        sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        while True:
            if rest:
                sock.sendall(rest)
            rest = sock.recv(4096)
            if not rest:
                sock.sendall(b"bye")
                sock.close()
                return


@pytest.fixture
def raw_upstream() -> Iterator[RawUpgrade]:
    upstream = RawUpgrade()
    yield upstream
    upstream.server.stop(timeout=1)


def manifest(ws_url: str, raw_url: str = "http://127.0.0.1:9") -> str:
    return f"""
http:
  routers:
    public: {{rule: "Host(`public.test`)", service: ws}}
    secure: {{rule: "Host(`secure.test`)", service: ws, middlewares: [jwt]}}
    raw: {{rule: "Host(`raw.test`)", service: raw}}
    retried: {{rule: "Host(`retried.test`)", service: ws, middlewares: [retry, jwt]}}
    down: {{rule: "Host(`down.test`)", service: down}}
  services:
    ws: {{loadBalancer: {{servers: [{{url: "{ws_url}"}}]}}}}
    raw: {{loadBalancer: {{servers: [{{url: "{raw_url}"}}]}}}}
    down: {{loadBalancer: {{servers: [{{url: "http://127.0.0.1:9"}}]}}}}
  middlewares:
    jwt: {{plugin: {{jwt: {{signingSecret: "{SECRET}", usernameClaim: sub}}}}}}
    retry: {{retry: {{attempts: 2}}}}
"""


@pytest.fixture(params=["fast", "pywsgi"])
def gateway(request, wsgi_server, conf_d, ws_upstream, raw_upstream):
    """Factory: a Gateway on the parametrized server, with ``idle`` seconds of idle timeout."""
    def start(idle: float = 5.0):
        conf_d("ws.yaml", manifest(ws_upstream["url"], raw_upstream.url))
        return wsgi_server(Gateway(conf_d.root), server=request.param, limits=ServerLimits(idle_timeout=idle))
    return start


def tag(request) -> str:
    return request.node.name.replace("[", "-").replace("]", "").replace("/", "-")


GOOD = mint({"sub": "alice"}, secret=SECRET)


@pytest.mark.parametrize("message", ["hello, socket", BIG, "é" * 70000], ids=["text", "binary-4MiB", "text-140KB"])
@pytest.mark.parametrize("host", ["secure.test", "retried.test"])
def test_messages_go_both_ways(gateway, message, host):
    server = gateway()
    client = WSClient(server.port, "/echo", host=host, token=GOOD)
    try:
        assert client.status == 101
        for _ in range(2):
            client.send(message)
            frame = client.recv()
            assert frame.data == (message.encode() if isinstance(message, str) else message)
    finally:
        client.close()


def test_upstream_speaks_first_and_sees_a_clean_handshake(gateway):
    server = gateway()
    client = WSClient(server.port, "/headers?x=1", host="secure.test", token=GOOD)
    try:
        seen = json.loads(client.recv().data)
    finally:
        client.close()
    headers = {name.lower(): value for name, value in seen["headers"].items()}
    assert seen["path"] == "/headers?x=1"
    assert headers["upgrade"] == "websocket" and headers["connection"] == "Upgrade"
    assert headers["x-forwarded-for"] == "127.0.0.1"   # the client's own claim was dropped
    assert headers["host"] == "secure.test"
    hello = WSClient(server.port, "/hello")
    try:
        assert hello.recv().data == b"hello"
    finally:
        hello.close()


@pytest.mark.parametrize("host, token, status, reached", [
    ("secure.test", None, 401, False),
    ("secure.test", mint({"sub": "mallory"}, secret="another-secret-0123456789abcdef"), 401, False),
    ("public.test", None, 403, True),          # the upstream's own refusal, relayed as it is
    ("down.test", None, 502, False),
], ids=["no-token", "forged-token", "upstream-refuses", "upstream-down"])
def test_refused_before_the_switch(gateway, ws_upstream, request, host, token, status, reached):
    server = gateway()
    path = f"/nope?{tag(request)}"
    client = WSClient(server.port, path, host=host, token=token)
    try:
        assert client.status == status
        if status == 403:
            assert client.response.body == b"nope\n"
    finally:
        client.close()
    assert (f"open {path}" in recorded(ws_upstream)) is reached


def test_close_handshake_ends_both_sides(gateway, ws_upstream, request):
    server = gateway()
    path = f"/echo?{tag(request)}"
    client = WSClient(server.port, path)
    client.send("one")
    assert client.recv().data == b"one"
    client.proto.send_close(1000, "done")
    client.flush()
    closing = client.recv()
    assert closing.opcode == Opcode.CLOSE
    client.wait_eof()
    client.close()
    assert wait_until(lambda: f"closed {path}" in recorded(ws_upstream), timeout=5)
    assert wait_until(lambda: not server.server.connections, timeout=5)


def test_upstream_vanishing_closes_the_client(gateway):
    server = gateway()
    client = WSClient(server.port, "/vanish")
    try:
        client.send("go")
        started = time.monotonic()
        client.wait_eof()
        assert time.monotonic() - started < 3
    finally:
        client.close()
    assert wait_until(lambda: not server.server.connections, timeout=5)


def test_client_vanishing_closes_the_upstream_socket(gateway, ws_upstream, request):
    server = gateway()
    path = f"/echo?{tag(request)}"
    client = WSClient(server.port, path)
    client.send("x")
    assert client.recv().data == b"x"
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    client.close()   # a reset, no close frame
    assert wait_until(lambda: f"closed {path}" in recorded(ws_upstream), timeout=5)
    assert wait_until(lambda: not server.server.connections, timeout=5)


def test_idle_tunnel_is_closed_a_busy_one_is_not(gateway):
    server = gateway(idle=0.5)
    busy = WSClient(server.port, "/echo")
    quiet = WSClient(server.port, "/echo")
    started = time.monotonic()
    try:
        while time.monotonic() - started < 1.5:   # three idle timeouts
            busy.send("tick")
            assert busy.recv().data == b"tick"
            gevent.sleep(0.1)
        assert quiet.eof or (quiet.wait_eof() is None)
        quiet_closed = time.monotonic() - started
    finally:
        busy.close()
        quiet.close()
    assert 0.4 < quiet_closed < 3.0


def test_any_upgrade_keeps_early_bytes_and_half_close(gateway, raw_upstream):
    server = gateway()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    try:
        # the head and the new protocol's first bytes in one packet: the server must not lose them
        sock.sendall(b"GET /raw HTTP/1.1\r\nHost: raw.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nearly")
        data = b""
        while not data.endswith(b"early"):
            chunk = sock.recv(4096)
            assert chunk, data
            data += chunk
        assert data.startswith(b"HTTP/1.1 101 ")
        assert b"\r\nUpgrade: echo\r\n" in data
        sock.sendall(b" more")
        assert sock.recv(4096) == b" more"
        sock.shutdown(socket.SHUT_WR)   # the upstream sees EOF, answers, closes
        rest = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            rest += chunk
        assert rest == b"bye"
    finally:
        sock.close()
    assert b"Connection: Upgrade" in raw_upstream.heads[0] and b"Upgrade: echo" in raw_upstream.heads[0]


@pytest.mark.parametrize("server_kind", ["fast", "pywsgi"])
@pytest.mark.parametrize("protocol, forwarded", [("websocket", True), ("echo", True), ("h2c", False)])
def test_upstream_that_ignores_the_upgrade_answers_as_usual(wsgi_server, conf_d, echo_upstream, server_kind,
                                                           protocol, forwarded):
    """The Upgrade goes upstream for any protocol but h2c (HTTP/2 is the entry point's, which has none: the
    offer is ignored and the request served in HTTP/1.1); a 200 instead of a 101 is relayed as any response."""
    conf_d("ws.yaml", manifest(echo_upstream.url).replace("Host(`public.test`)", "PathPrefix(`/`)"))
    server = wsgi_server(Gateway(conf_d.root), server=server_kind)
    answer = exchange(server.port, b"GET /plain HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                                   b"Upgrade: %s\r\n\r\n" % protocol.encode())
    assert status_of(answer) == 200
    seen = json.loads(answer.partition(b"\r\n\r\n")[2])
    headers = {name.lower(): value for name, value in seen["headers"]}
    if forwarded:
        assert headers["upgrade"] == protocol and headers["connection"] == "Upgrade"
    else:
        assert "upgrade" not in headers and "connection" not in headers


@pytest.mark.parametrize("server_kind", ["fast", "pywsgi"])
def test_over_tls_entry_point(wsgi_server, conf_d, ws_upstream, tls_files, server_kind):
    """A TLS client socket has no half-close: an upstream that goes away ends both sides at once."""
    ca, cert, key = tls_files
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    conf_d("ws.yaml", manifest(ws_upstream["url"]))
    server = wsgi_server(Gateway(conf_d.root), server=server_kind, ssl_context=context)
    client_tls = ssl.create_default_context(cafile=str(ca))
    client = WSClient(server.port, "/echo", host="secure.test", token=GOOD, tls=client_tls)
    try:
        for message in ("over tls", BIG):
            client.send(message)
            assert client.recv().data == (message.encode() if isinstance(message, str) else message)
    finally:
        client.close()
    vanishing = WSClient(server.port, "/vanish", tls=client_tls)
    try:
        vanishing.send("go")
        vanishing.wait_eof()
    finally:
        vanishing.close()
    assert wait_until(lambda: not server.server.connections, timeout=5)


def test_workers_log_and_count_each_socket_when_it_closes(conf_d, ws_upstream, tmp_path):
    conf_d("ws.yaml", manifest(ws_upstream["url"]))
    gk = Gatekeeper(conf_d.root, tmp_path / "gk.log", "--workers", "2", "--admin", "127.0.0.1:0")
    port = int(gk.url.rsplit(":", 1)[1])
    try:
        for _ in range(4):
            client = WSClient(port, "/echo", host="secure.test", token=GOOD)
            assert client.status == 101
            client.send("hi")
            assert client.recv().data == b"hi"
            gevent.sleep(0.3)
            client.proto.send_close(1000)
            client.flush()
            client.wait_eof()
            client.close()
        assert wait_for(lambda: len([line for line in gk.access_lines() if "status=101" in line]) == 4)
        lines = [line for line in gk.access_lines() if "status=101" in line]
        assert all("router=secure@file" in line and "user=alice" in line for line in lines)
        assert all(float(line.split("duration_ms=")[1].split()[0]) >= 300 for line in lines)
        # the frames both ways ("hi" and the close handshake: masked from the client, plain back)
        assert all(int(line.split(" bytes=")[1].split()[0]) >= 4 for line in lines)
        assert all(int(line.split(" bytes_in=")[1].split()[0]) >= 8 for line in lines)
        assert metric_value(gk.metrics(), "gatekeeper_requests_total", status="101") == 4
    finally:
        assert gk.stop() == 0
    assert GOOD not in gk.log()
