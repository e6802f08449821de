"""The server's half of an ``Upgrade`` (WebSocket and any other ``101 Switching Protocols``): which requests
may switch, and the hand-off of the client socket to the app.

A request that offers an upgrade (HTTP/1.1, ``Connection: upgrade``, an ``Upgrade`` header, no body, not
CONNECT) gets ``environ["gatekeeper.upgrade"]``, an :class:`Offer`: ``protocol`` is the client's ``Upgrade``
value, and ``detach()`` the callable the app calls *after* ``start_response("101 ...", headers)``. It
sends that 101 head to the client, takes the connection out of HTTP (no body framing, no next request, the
connection closes when the app's iterable ends) and returns ``(socket, tail)``: the client socket, with the
server's idle timeout still set on it, and the bytes the client sent after its request head that the
server already read. The app relays from then on (proxy/tunnel.py) and returns an
iterable that yields nothing.

The key is set before the app runs, while the client's ``Connection`` and ``Upgrade`` headers are still in
the environ (the gateway's entry strips them as hop-by-hop); a client cannot set it (headers are
``HTTP_*`` keys). Without the key (gunicorn, any other WSGI server) the proxy forwards the request as a
plain one, without its ``Upgrade``.

>>> offered({"SERVER_PROTOCOL": "HTTP/1.1", "REQUEST_METHOD": "GET", "HTTP_CONNECTION": "keep-alive, Upgrade",
...          "HTTP_UPGRADE": "websocket"})
True
>>> offered({"SERVER_PROTOCOL": "HTTP/1.1", "REQUEST_METHOD": "POST", "HTTP_CONNECTION": "upgrade",
...          "HTTP_UPGRADE": "echo", "CONTENT_LENGTH": "5"})
False
>>> offered({"SERVER_PROTOCOL": "HTTP/1.1", "REQUEST_METHOD": "GET", "HTTP_CONNECTION": "Upgrade",
...          "HTTP_UPGRADE": "h2c"})
False
"""
from __future__ import annotations

import socket
from typing import Callable, Tuple

from gatekeeper.wsgi import Environ

Detach = Callable[[], Tuple[socket.socket, bytes]]


class Offer:
    """What ``environ["gatekeeper.upgrade"]`` holds: the protocol asked for and the server's hand-off."""

    __slots__ = ("detach", "protocol")

    def __init__(self, protocol: str, detach: Detach) -> None:
        self.protocol, self.detach = protocol, detach


def offered(environ: Environ) -> bool:
    """Whether the request asks to switch protocols in a way the gateway can tunnel."""
    if not environ.get("HTTP_UPGRADE") or environ.get("SERVER_PROTOCOL") != "HTTP/1.1":
        return False
    if environ.get("REQUEST_METHOD") == "CONNECT" or environ.get("HTTP_TRANSFER_ENCODING"):
        return False
    if environ.get("CONTENT_LENGTH") not in (None, "", "0"):
        return False
    protocols = {t.strip().lower() for t in environ["HTTP_UPGRADE"].split(",")}
    if protocols <= {"h2c", ""}:
        # HTTP/2 over cleartext is the entry point's business (Traefik's answers it itself); the gateway
        # has no HTTP/2, so it ignores the offer and answers in HTTP/1.1, as RFC 9113 3.1 lets a server do
        return False
    tokens = {t.strip().lower() for t in environ.get("HTTP_CONNECTION", "").split(",")}
    return "upgrade" in tokens


def switching_head(status: str, headers: "list[tuple[str, str]]") -> bytes:
    """The 101 head as the app set it; anything but a 101 is a programming error (ValueError).

    >>> switching_head("101 Switching Protocols", [("Upgrade", "websocket")])
    b'HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: websocket\\r\\n\\r\\n'
    """
    if not status.startswith("101"):
        raise ValueError(f"the connection is handed over only after a 101 answer, not {status!r}")
    lines = [f"HTTP/1.1 {status}\r\n"] + [f"{name}: {value}\r\n" for name, value in headers] + ["\r\n"]
    return "".join(lines).encode("latin-1")
