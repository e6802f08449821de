"""WebSocket, and any other ``Upgrade``: the request goes upstream with its ``Connection: Upgrade``, the
upstream's ``101 Switching Protocols`` goes back to the client, then bytes flow both ways until a side
closes or the tunnel has been idle for the server's idle timeout.

The request got here as any other: path canonicalised, forwarding headers cleaned, routed, and through the
router's middlewares (a JWT-protected socket needs a valid token: without one the middleware answered 401
and nothing reached the upstream). Only a request whose server offered the hand-off of its connection
(``environ["gatekeeper.upgrade"]``, server/upgrade.py) comes here; elsewhere (gunicorn) the ``Upgrade`` is
dropped as hop-by-hop and the request proxied as a plain one.

An upstream that does not switch answers as usual: its response is relayed as for any request (a 401, 403
or 426 of its own, say). A failure before the answer is a 502 (504 on a timeout), as in balancer.py, and so
is a 101 to a protocol that was not offered (or without ``Upgrade``): that connection is closed, never
tunnelled.

Usage (balancer.py's ``Server.forward``)::

    offer = environ.get(UPGRADE)
    if offer is not None:
        return forward(environ, start_response, offer, pool, target=target, headers=headers)
"""
from __future__ import annotations

import logging
import socket
import ssl
import time
from typing import Callable, Iterable, Iterator, List, Optional, Protocol, Tuple

import gevent

from gatekeeper.errors import BadGateway, GatewayTimeout
from gatekeeper.proxy.client import Connection, ConnectionPool, request_head, translated
from gatekeeper.proxy.failures import upstream_failed
from gatekeeper.proxy.response import CHUNK, Relay, frame_body, read_head
from gatekeeper.proxy.rewrite import response_headers, upgrade_headers
from gatekeeper.requestpath import header_tokens
from gatekeeper.wsgi import (
    TUNNEL_BYTES_IN,
    TUNNEL_BYTES_OUT,
    Environ,
    Headers,
    StartResponse,
)

DEFAULT_IDLE = 60.0                         # when the client socket has no timeout (ServerLimits' default)

log = logging.getLogger("gatekeeper.proxy")


class Offer(Protocol):
    """server/upgrade.py's Offer, as the proxy uses it (the proxy never imports the server wing)."""

    protocol: str

    def detach(self) -> Tuple[socket.socket, bytes]: ...


def forward(environ: Environ, start_response: StartResponse, offer: Offer, pool: ConnectionPool, *, target: str,
            headers: Headers) -> Iterable[bytes]:
    """Ask the upstream to switch; a 101 becomes a :class:`Tunnel`, anything else is relayed as it is."""
    conn: Optional[Connection] = None
    try:
        conn = pool.connect()   # a fresh connection: a switched one never goes back to the pool
        try:  # an upgrade request has no body
            head = request_head(environ["REQUEST_METHOD"], target, upgrade_headers(offer.protocol, headers))
        except ValueError as exc:
            raise BadGateway(str(exc)) from None
        conn.sock.sendall(head)
        while True:
            version, status, reason, answer = read_head(conn.reader, pool.limits.max_header_bytes)
            if status == 101 or status >= 200:
                break   # 100 Continue, 103 Early Hints: interim, skipped
        if status == 101:
            check_switch(offer.protocol, answer)
        body = None
        if status != 101:
            answer, body = frame_body(pool, conn, method=environ["REQUEST_METHOD"], status=status, version=version,
                                      headers=answer)
            body.read_first()   # a failure before the first byte is still a 502/504
    except (BadGateway, GatewayTimeout, OSError) as exc:
        failure = exc if conn is None else translated(conn, exc)
        return upstream_failed(environ, start_response, failure, doing=" an upgrade")
    if body is None:
        protocol = upgrade_value(answer)
        start_response(f"101 {reason or 'Switching Protocols'}", upgrade_headers(protocol, response_headers(answer)))
        return Tunnel(environ, offer, conn)
    try:
        start_response(f"{status} {reason}".rstrip(), response_headers(answer))
    except BaseException:
        body.close()
        raise
    return Relay(body, environ)


def upgrade_value(headers: Headers) -> str:
    """The ``Upgrade`` header of an answer ("" without one)."""
    return next((value for name, value in headers if name.lower() == "upgrade"), "")


def check_switch(offered: str, answer: Headers) -> None:
    """A 101 must switch to protocols the gateway offered (BadGateway otherwise, as Go's ReverseProxy
    answers): an upstream that switched to another, h2c say, would take the client's next bytes as requests
    that no router and no middleware ever saw.

    >>> check_switch("websocket, foo", [("Upgrade", "WebSocket")])
    >>> check_switch("websocket", [("Upgrade", "h2c")])
    Traceback (most recent call last):
    gatekeeper.errors.BadGateway: upstream tried to switch to 'h2c' when 'websocket' was offered
    """
    switched = header_tokens(upgrade_value(answer))
    allowed = {protocol.lower() for protocol in header_tokens(offered)}
    if not switched or any(protocol.lower() not in allowed for protocol in switched):
        raise BadGateway(f"upstream tried to switch to {upgrade_value(answer)!r} when {offered!r} was offered")


class Tunnel:
    """The switched connection as a WSGI iterable: iterating it takes the client socket from the server
    (which sends the 101 head then) and relays both ways, one greenlet a direction; it yields nothing.

    A side that closes is passed on as a half-close (the other side's writing half is shut) and the other
    direction runs on until it closes too; an error on either side ends both. Each read waits at most the
    server's idle timeout (set on the client socket), and the tunnel ends when no byte moved either way
    for that long: an idle socket cannot hold a connection forever. The byte counts are left in the environ
    (``gatekeeper.tunnel.bytes_in`` / ``bytes_out``) for the access log line, written when the tunnel ends.
    """

    def __init__(self, environ: Environ, offer: Offer, conn: Connection) -> None:
        self.environ, self.offer, self.conn = environ, offer, conn
        self.pumps: List[gevent.Greenlet] = []
        self.last = time.monotonic()
        environ[TUNNEL_BYTES_IN] = environ[TUNNEL_BYTES_OUT] = 0

    def __iter__(self) -> Iterator[bytes]:
        client, tail = self.offer.detach()
        idle = client.gettimeout() or DEFAULT_IDLE
        upstream = self.conn.sock
        upstream.settimeout(idle)
        early = buffered(self.conn)
        self.last = time.monotonic()
        self.pumps = [gevent.spawn(self.pump, client.recv, upstream, tail, TUNNEL_BYTES_IN, idle),
                      gevent.spawn(self.pump, upstream.recv, client, early, TUNNEL_BYTES_OUT, idle)]
        try:
            first = gevent.wait(self.pumps, count=1)
            if first and first[0].value:   # a clean close, passed on: let the other direction finish
                gevent.wait(self.pumps)
        finally:
            self.close()
        yield from ()

    def pump(self, read: Callable[[int], bytes], sink: socket.socket, first: bytes, key: str, idle: float) -> bool:
        """Copy ``read`` to ``sink`` until EOF (True, ``sink`` half-closed), an error or idleness (False)."""
        environ = self.environ
        try:
            data = first
            while True:
                if data:
                    sink.sendall(data)   # a stalled receiver times out after the idle timeout too
                    environ[key] += len(data)
                    self.last = time.monotonic()
                try:
                    data = read(CHUNK)
                except socket.timeout:
                    if time.monotonic() - self.last >= idle:
                        return False
                    data = b""
                    continue
                if not data:
                    if hasattr(sink, "unwrap"):
                        return False   # TLS: no half-close (shutdown would drop the TLS layer): end both
                    sink.shutdown(socket.SHUT_WR)
                    return True
        except OSError:
            return False

    def close(self) -> None:
        """Stop both directions and close the upstream connection (the server closes the client's)."""
        gevent.killall(self.pumps)
        self.conn.close()


def buffered(conn: Connection) -> bytes:
    """What the connection's reader already holds past the 101 head (the upstream's first frames)."""
    sock, timeout = conn.sock, conn.sock.gettimeout()
    sock.settimeout(0)
    try:
        return conn.reader.read1(CHUNK) or b""
    except (BlockingIOError, ssl.SSLWantReadError):
        return b""
    finally:
        sock.settimeout(timeout)
