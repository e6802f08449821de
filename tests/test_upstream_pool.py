"""The upstream pool stays in step with its connections: bytes no request asked for (a body sent after a
HEAD, 204 or 304 answer, which arrives in the same read as the head) make the connection unfit for reuse,
instead of being read as the next request's response (a 502 for an innocent client).
"""
from __future__ import annotations

import socket
import threading
from typing import Iterator, List

import pytest

from gatekeeper.proxy.client import ConnectionPool, Request

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


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
        data = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                _, _, data = data.partition(b"\r\n\r\n")
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
