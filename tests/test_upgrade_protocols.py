"""Which protocol an upgrade may switch to (server/upgrade.py, proxy/tunnel.py), on both servers.

The gateway has no HTTP/2: an h2c switch upstream would carry every later request on the connection past the
router and the JWT check. So h2c is never offered upstream (nor its ``HTTP2-Settings``), and only a 101 to a
protocol the client offered, and the gateway forwarded, is tunnelled; any other 101 is a 502, as in Go's
ReverseProxy (Traefik). The upstream here is a raw socket server that takes whatever it is told to.
"""
from __future__ import annotations

import socket
from typing import Callable, Iterator, List, Optional

import pytest
from gevent.server import StreamServer

from gatekeeper.app import Gateway
from tests.conftest import exchange, public_and_private, status_of, wait_until

SECRET = "upgrade-protocols-secret-0123456789"
SMUGGLED = b"GET /private/secret HTTP/1.1\r\nHost: x\r\n\r\n"   # stands for HTTP/2 frames after an h2c switch

# Which protocol the upstream switches to, given the protocols offered to it (None: it answers 200)
Choice = Callable[[List[str]], Optional[str]]


def takes_h2c(offered: List[str]) -> Optional[str]:
    """An upstream that speaks h2c (Apache with ``Protocols h2c``), else takes the first protocol offered."""
    lowered = [p.lower() for p in offered]
    if "h2c" in lowered:
        return "h2c"
    return offered[0] if offered else None


def always(protocol: str) -> Choice:
    """An upstream that answers 101 with this ``Upgrade`` value (``""``: none) whatever was offered."""
    return lambda offered: protocol


class Switcher:
    """A raw upstream: records each request head, answers 101 to the protocol ``choose`` picks (then records
    every byte after it until EOF) or 200, and counts the connections that ended."""

    def __init__(self, choose: Choice) -> None:
        self.choose = choose
        self.heads: List[bytes] = []
        self.switched: List[bytes] = []   # bytes received after each 101
        self.closed = 0
        self.server = StreamServer(("127.0.0.1", 0), self.handle)
        self.server.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def handle(self, sock: socket.socket, _: object) -> None:
        sock.settimeout(5)
        try:
            self.serve(sock)
        except OSError:
            pass
        finally:
            self.closed += 1
            sock.close()

    def serve(self, sock: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                return
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        self.heads.append(head)
        protocol = self.choose(offered_in(head))
        if protocol is None:
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            return
        upgrade = b"Upgrade: %s\r\n" % protocol.encode() if protocol else b""
        sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n" + upgrade + b"\r\n")
        received = rest
        while chunk := sock.recv(4096):
            received += chunk
        self.switched.append(received)

    def stop(self) -> None:
        self.server.stop(timeout=1)


def offered_in(head: bytes) -> List[str]:
    """The protocols of a request head's ``Upgrade`` header."""
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "upgrade":
            return [p.strip() for p in value.split(",") if p.strip()]
    return []


def header_names(head: bytes) -> List[str]:
    return [line.partition(b":")[0].decode("latin-1").lower() for line in head.split(b"\r\n")[1:]]


@pytest.fixture(params=["fast", "pywsgi"])
def gateway(request, wsgi_server, conf_d) -> Iterator[Callable[[Choice], "tuple[int, Switcher]"]]:
    """Factory: ``gateway(choose)`` -> (port of a Gateway on the parametrized server, its Switcher upstream)."""
    started: List[Switcher] = []

    def start(choose: Choice) -> "tuple[int, Switcher]":
        upstream = Switcher(choose)
        started.append(upstream)
        conf_d("up.yaml", public_and_private(upstream.url, SECRET))
        return wsgi_server(Gateway(conf_d.root), server=request.param).port, upstream

    yield start
    for upstream in started:
        upstream.stop()


def upgrade_request(offer: bytes) -> bytes:
    return (b"GET /public/x HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: " + offer + b"\r\n"
            b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")


@pytest.mark.parametrize("offer, forwarded", [
    (b"websocket, h2c", "websocket"),
    (b"h2c, websocket", "websocket"),
    (b"h2c, foo/1, h2c", "foo/1"),
    (b"H2C , Echo", "Echo"),
], ids=["websocket-then-h2c", "h2c-then-websocket", "h2c-around-foo", "upper-case"])
def test_h2c_is_never_offered_upstream(gateway, offer: bytes, forwarded: str) -> None:
    """The rest of the list is offered, without h2c and without HTTP2-Settings: an upstream that takes h2c
    never gets the chance, and what the client sends after the head is tunnelled to the protocol offered."""
    port, upstream = gateway(takes_h2c)
    answer = exchange(port, upgrade_request(offer) + SMUGGLED)
    assert status_of(answer) == 101, answer[:300]
    assert b"\r\nUpgrade: " + forwarded.encode() + b"\r\n" in answer
    [head] = upstream.heads
    assert offered_in(head) == [forwarded]
    assert "http2-settings" not in header_names(head)
    assert wait_until(lambda: upstream.switched == [SMUGGLED])   # to the offered protocol, not h2c


def test_h2c_alone_is_no_upgrade(gateway) -> None:
    """Only h2c offered: not an upgrade at all; the request goes upstream as a plain one, HTTP2-Settings gone."""
    port, upstream = gateway(takes_h2c)
    answer = exchange(port, upgrade_request(b"h2c"))
    assert status_of(answer) == 200, answer[:300]
    [head] = upstream.heads
    assert not {"upgrade", "http2-settings"} & set(header_names(head)), head
    assert upstream.switched == []


@pytest.mark.parametrize("switched_to", ["h2c", "websocket2", "websocket, h2c", ""],
                         ids=["h2c", "another", "more-than-offered", "no-upgrade-header"])
def test_101_to_a_protocol_not_offered_is_a_502(gateway, switched_to: str) -> None:
    """The client offers websocket; the upstream switches to something else. Nothing is tunnelled: the
    client gets 502 and the upstream connection is closed. The client's next bytes never reach the upstream:
    pywsgi answers them as a request of their own (routed and checked: 401 without a token), the fast server
    closes the connection after an upgrade request that did not switch."""
    port, upstream = gateway(always(switched_to))
    answer = exchange(port, upgrade_request(b"websocket") + SMUGGLED)
    assert status_of(answer) == 502, answer[:300]
    later = answer.partition(b"502 Bad Gateway\n")[2]
    assert later == b"" or status_of(later) == 401, answer[:600]
    assert wait_until(lambda: upstream.closed == 1)
    assert upstream.switched == [b""] and len(upstream.heads) == 1


def test_101_to_the_offered_protocol_in_another_case_is_tunnelled(gateway) -> None:
    """Protocol names compare without regard to case (RFC 9110 7.8)."""
    port, upstream = gateway(always("WebSocket"))
    answer = exchange(port, upgrade_request(b"websocket") + b"hello")
    assert status_of(answer) == 101, answer[:300]
    assert b"\r\nUpgrade: WebSocket\r\n" in answer
    assert wait_until(lambda: upstream.switched == [b"hello"])
