"""The upstream pool stays in step with its connections: bytes no request asked for (a body sent after a
HEAD, 204 or 304 answer, which arrives in the same read as the head) make the connection unfit for reuse,
instead of being read as the next request's response (a 502 for an innocent client).
"""
from __future__ import annotations

import socket
import threading
import time
from typing import Callable, Iterator, List

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatekeeper.errors import BadGateway
from gatekeeper.proxy.client import ConnectionPool, Request
from gatekeeper.proxy.response import HEAD_END, header_fields, header_lines
from gatekeeper.wsgi import Headers

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def request_heads(conn: socket.socket) -> Iterator[bytes]:
    """Each request head (bodiless requests) a client sends on ``conn``, until it closes."""
    data = b""
    while True:
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, data = data.partition(b"\r\n\r\n")
        yield head


class ScriptedUpstream:
    """Answers the first request it sees with ``first`` (raw bytes, in one send), every later one with OK."""

    def __init__(self, first: bytes) -> None:
        self.first = first
        self.connections = 0
        self.requests = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn: socket.socket) -> None:
        with conn:
            for _ in request_heads(conn):
                self.requests += 1
                conn.sendall(self.first if self.requests == 1 else OK)

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def scripted() -> Iterator:
    started: List[ScriptedUpstream] = []

    def start(first: bytes) -> ScriptedUpstream:
        started.append(ScriptedUpstream(first))
        return started[-1]
    yield start
    for upstream in started:
        upstream.close()


def fetch(pool: ConnectionPool, method: str) -> tuple:
    response = pool.send(Request(method, "/", [("Host", "upstream")]))
    try:
        return response.status, b"".join(response.body)
    finally:
        response.body.close()


@pytest.mark.parametrize("method, first, fresh_connection", [
    ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", True),
    ("GET", b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello", True),
    ("GET", b"HTTP/1.1 304 Not Modified\r\n\r\nhello", True),
    ("GET", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA", True),
    ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", False),
    ("GET", b"HTTP/1.1 204 No Content\r\n\r\n", False),
], ids=["body-after-HEAD", "body-after-204", "body-after-304", "bytes-past-content-length",
        "clean-HEAD-reused", "clean-204-reused"])
def test_unasked_bytes_retire_the_connection(scripted, method, first, fresh_connection):
    upstream = scripted(first)
    pool = ConnectionPool("http", "127.0.0.1", upstream.port)
    try:
        fetch(pool, method)
        assert fetch(pool, "GET") == (200, b"ok")
        assert upstream.connections == (2 if fresh_connection else 1)
    finally:
        pool.close()


# --- the reader: one recv for a head and a small body, the same answer however the bytes arrive ----------

class TricklingUpstream(ScriptedUpstream):
    """Sends each answer in the pieces ``split`` cuts it into, pausing between them (one TCP segment each)."""

    def __init__(self, answer: bytes, split: Callable[[bytes], List[bytes]]) -> None:
        self.answer, self.split = answer, split
        super().__init__(answer)

    def serve(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            for _ in request_heads(conn):
                self.requests += 1
                for piece in self.split(self.answer):
                    conn.sendall(piece)
                    time.sleep(0.002)


ANSWER = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
          b"HTTP/1.1 200 OK\r\nServer: up\r\nX-Folded: a\r\n  b\r\nContent-Length: 10\r\n\r\n0123456789")


@pytest.mark.parametrize("split", [
    lambda data: [data],
    lambda data: [data[i:i + 1] for i in range(len(data))],
    lambda data: [data[:30], data[30:95], data[95:-4], data[-4:]],
    lambda data: [data[:-10], data[-10:]],
], ids=["one-send", "byte-by-byte", "cut-mid-lines", "head-then-body"])
def test_a_response_reads_the_same_however_it_arrives(split):
    upstream = TricklingUpstream(ANSWER, split)
    pool = ConnectionPool("http", "127.0.0.1", upstream.port)
    try:
        for _ in range(3):
            response = pool.send(Request("GET", "/", [("Host", "upstream")]))
            try:
                assert (response.status, response.headers) == (
                    200, [("Server", "up"), ("X-Folded", "a b"), ("Content-Length", "10")])
                assert b"".join(response.body) == b"0123456789"
            finally:
                response.body.close()
        assert (upstream.requests, upstream.connections) == (3, 1)   # read to its end: reused
    finally:
        pool.close()
        upstream.close()


def outcome(parse: Callable[[], Headers]) -> object:
    try:
        return parse()
    except BadGateway as exc:
        return str(exc)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.text(alphabet="Ab-:_ \t\r\0\x0b\xa0\xff", max_size=12), max_size=6))
def test_the_one_pass_header_parse_agrees_with_the_line_by_line_one(lines):
    """header_fields' regex pass takes a head only when every line is a plain field; otherwise (and in any
    case) the answer, or the error, is the line-by-line parser's."""
    block = ("HTTP/1.1 200 OK\r\n" + "".join(line + "\r\n" for line in lines) + "\r\n").encode("latin-1")
    if not HEAD_END.search(block, 16) or HEAD_END.search(block, 16).end() != len(block):
        return   # a line that is itself blank ends the head earlier: not a head of these lines
    split = block.split(b"\n")
    assert outcome(lambda: header_fields(block, 17, split)) == outcome(lambda: header_lines(split[1:-2]))
