"""Turn-taking between connections on both servers: a client whose requests are always ready (pipelined, or
answered faster than the gateway works) lets the others go once they are ready (at the latest after a short
burst), and a burst of new connections is accepted in one wake-up of the listener instead of one connection
per loop iteration.

The app records the order it served requests in; every assertion is on that order, not on timings.
"""
from __future__ import annotations

import socket
import time
from typing import List

import gevent
import pytest

SERVERS = ["fast", "pywsgi"]
PIPELINED = 200


def recording_app(served: List[str], work: float = 0.0):
    """Answers every request without waiting on anything, noting its path in ``served``; a ``/greedy/``
    request first computes for ``work`` seconds (a request that costs CPU, as a proxied one does)."""
    def app(environ, start_response):
        path = environ["PATH_INFO"]
        served.append(path)
        if path.startswith("/greedy/"):
            deadline = time.perf_counter() + work
            while time.perf_counter() < deadline:
                pass
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]
    return app


def read_responses(sock: socket.socket, count: int) -> int:
    """Read until ``count`` complete 2-byte-body responses arrived (or the peer closed); how many did."""
    data = b""
    while data.count(b"\r\n\r\nok") < count:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.count(b"\r\n\r\nok")


@pytest.mark.parametrize("server", SERVERS)
def test_a_pipelining_client_does_not_hold_the_loop(wsgi_server, server):
    """200 pipelined requests of 1 ms each arrive on one connection; 20 ms later another client asks once.
    Without turns, that client's request was only read once all 200 had been served."""
    served: List[str] = []
    running = wsgi_server(recording_app(served, work=0.001), server=server)
    greedy = socket.create_connection(("127.0.0.1", running.port))
    other = socket.create_connection(("127.0.0.1", running.port))
    try:
        greedy.sendall(b"".join(b"GET /greedy/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(PIPELINED)))
        gevent.sleep(0.02)
        other.sendall(b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_responses(other, 1) == 1
        assert read_responses(greedy, PIPELINED) == PIPELINED
    finally:
        greedy.close()
        other.close()
    position = served.index("/other")
    assert position < PIPELINED // 2, f"/other was served after {position} pipelined requests"
    assert [p for p in served if p != "/other"] == [f"/greedy/{i}" for i in range(PIPELINED)]


def keep_asking(port: int, name: str, count: int, answered: List[int]) -> None:
    """One keep-alive client: ``count`` requests one after another, each sent once the last is answered."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        for i in range(count):
            sock.sendall(b"GET /%s/%d HTTP/1.1\r\nHost: x\r\n\r\n" % (name.encode(), i))
            if read_responses(sock, 1) != 1:
                return
            answered.append(1)


@pytest.mark.parametrize("server", SERVERS)
def test_a_burst_of_connections_is_accepted_at_once(wsgi_server, server):
    """40 clients connect together, each then asking 10 times in a row. Accepting one connection per loop
    iteration, the first clients had finished all 10 requests before the last one was even accepted."""
    served: List[str] = []
    running = wsgi_server(recording_app(served), server=server)
    answered: List[int] = []
    clients = [gevent.spawn(keep_asking, running.port, f"c{n}", 10, answered) for n in range(40)]
    gevent.joinall(clients, timeout=30, raise_error=True)
    assert len(answered) == 400
    firsts = [served.index(f"/c{n}/0") for n in range(40)]
    before_last = served[:max(firsts)]
    most = max(sum(1 for p in before_last if p.startswith(f"/c{n}/")) for n in range(40))
    assert most <= 3, f"a client had {most} requests served before the last client's first"
