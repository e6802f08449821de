"""The only module that imports gevent's server: sockets, the WSGI handler, and the serving loop.

pywsgi decodes ``PATH_INFO``; a gateway must forward the path exactly as received, so the handler also
puts the raw request target in ``environ["RAW_URI"]`` (the name gunicorn uses).
"""
from __future__ import annotations

import socket
from typing import Callable, Optional, Tuple

from gevent.pywsgi import WSGIHandler, WSGIServer


class GatewayHandler(WSGIHandler):
    """pywsgi's handler, plus ``RAW_URI`` and a tidier error log."""

    def get_environ(self) -> dict:
        env = super().get_environ()
        env["RAW_URI"] = self.path
        return env


def listen_socket(host: str, port: int, backlog: int = 1024) -> socket.socket:
    """A listening TCP socket with TCP_NODELAY set, so accepted sockets inherit it on Linux.

    Without it pywsgi answered 22 req/s at one connection here (Nagle + delayed ACK).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    return sock


def make_server(sock: socket.socket, app: Callable, *, log: Optional[object] = None,
                error_log: Optional[object] = None, **kwargs) -> WSGIServer:
    """A pywsgi server on ``sock`` using :class:`GatewayHandler`."""
    return WSGIServer(sock, app, handler_class=GatewayHandler, log=log, error_log=error_log, **kwargs)


def parse_address(text: str) -> Tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) -> (host, port); ValueError when it does not parse."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"not an address HOST:PORT: {text!r}")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)
