"""The server's half of an ``Upgrade`` (WebSocket and any other ``101 Switching Protocols``): which requests
may switch, and the hand-off of the client socket to the app.

A request that offers an upgrade (HTTP/1.1, ``Connection: upgrade``, an ``Upgrade`` header naming a protocol
other than h2c, no body, not CONNECT) gets ``environ["gatekeeper.upgrade"]``, an :class:`Offer`: ``protocol``
is what goes upstream (the client's ``Upgrade`` list without h2c), and ``detach()`` the callable the app
calls *after* ``start_response("101 ...", headers)``. It
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
...          "HTTP_UPGRADE": "h2c, websocket"})
'websocket'
>>> offered({"SERVER_PROTOCOL": "HTTP/1.1", "REQUEST_METHOD": "POST", "HTTP_CONNECTION": "upgrade",
...          "HTTP_UPGRADE": "echo", "CONTENT_LENGTH": "5"}) is None
True
>>> offered({"SERVER_PROTOCOL": "HTTP/1.1", "REQUEST_METHOD": "GET", "HTTP_CONNECTION": "Upgrade",
...          "HTTP_UPGRADE": "h2c"}) is None
True
"""
from __future__ import annotations

import socket
from typing import Callable, Optional, Tuple

from gatekeeper.requestpath import connection_tokens, header_tokens
from gatekeeper.wsgi import Environ

Detach = Callable[[], Tuple[socket.socket, bytes]]


class Offer:
    """What ``environ["gatekeeper.upgrade"]`` holds: the protocols to offer upstream and the server's hand-off."""

    __slots__ = ("detach", "protocol")

    def __init__(self, protocol: str, detach: Detach) -> None:
        self.protocol, self.detach = protocol, detach


def offered(environ: Environ) -> Optional[str]:
    """The ``Upgrade`` value to offer upstream, or None when the request asks for no switch the gateway can
    tunnel. h2c is never offered: HTTP/2 over cleartext is the entry point's business (Traefik's answers it
    itself) and the gateway has none, so it ignores that offer and answers in HTTP/1.1, as RFC 9113 3.1 lets a
    server do. Passed on, an upstream's h2c switch would carry every later request past routing and the JWT."""
    if not environ.get("HTTP_UPGRADE") or environ.get("SERVER_PROTOCOL") != "HTTP/1.1":
        return None
    if environ.get("REQUEST_METHOD") == "CONNECT" or environ.get("HTTP_TRANSFER_ENCODING"):
        return None
    if environ.get("CONTENT_LENGTH") not in (None, "", "0"):
        return None
    if "upgrade" not in connection_tokens(environ):
        return None
    protocols = [p for p in header_tokens(environ["HTTP_UPGRADE"]) if p.lower() != "h2c"]
    return ", ".join(protocols) or None


def switching_head(status: str, headers: "list[tuple[str, str]]") -> bytes:
    """The 101 head as the app set it; anything but a 101 is a programming error (ValueError).

    >>> switching_head("101 Switching Protocols", [("Upgrade", "websocket")])
    b'HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: websocket\\r\\n\\r\\n'
    """
    if not status.startswith("101"):
        raise ValueError(f"the connection is handed over only after a 101 answer, not {status!r}")
    lines = [f"HTTP/1.1 {status}\r\n"] + [f"{name}: {value}\r\n" for name, value in headers] + ["\r\n"]
    return "".join(lines).encode("latin-1")
