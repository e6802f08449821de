"""The HTTP servers: ``base`` (limits, the shared contract, connection tracking, drain, listeners),
``fast`` (the default: StreamServer + httptools), ``pywsgi`` (gevent's, the fallback) and ``workers``
(the pre-fork supervisor). The server knows WSGI and callbacks only; it imports nothing above it.
"""
from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any, Union

from gatekeeper.wsgi import WSGIApp

if TYPE_CHECKING:
    from gatekeeper.server.fast import FastServer
    from gatekeeper.server.pywsgi import GatewayServer

Server = Union["FastServer", "GatewayServer"]   # what make_server returns: both follow base's contract
SERVERS = ("fast", "pywsgi")
DEFAULT_SERVER = "fast"


def make_server(sock: socket.socket, app: WSGIApp, *, server: str = DEFAULT_SERVER,
                **kwargs: Any) -> Server:
    """A server on ``sock``: ``server="fast"`` (the default) or ``"pywsgi"``, with the same hooks and
    limits (``limits=ServerLimits(...)``, ``on_refused``, ``on_connection``). With ``ssl_context=`` the TLS
    handshake must finish within the idle timeout (base.HandshakeDeadline).

    Usage (not run here: it binds a port)::

        server = make_server(listen_socket("127.0.0.1", 8080), app, limits=ServerLimits(idle_timeout=30))
        server.serve_forever()
    """
    from gatekeeper.server.base import with_handshake_deadline

    kwargs = with_handshake_deadline(kwargs, kwargs.get("limits"))
    if server == "fast":
        from gatekeeper.server.fast import FastServer
        return FastServer(sock, app, **kwargs)
    if server == "pywsgi":
        from gatekeeper.server.pywsgi import GatewayServer
        return GatewayServer(sock, app, **kwargs)
    raise ValueError(f"unknown server {server!r}: expected one of {', '.join(SERVERS)}")
