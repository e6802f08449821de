"""WebSocket, and any other ``Upgrade``: the request goes upstream with its ``Connection: Upgrade``, the
upstream's ``101 Switching Protocols`` goes back to the client, then bytes flow both ways until a side
closes or the tunnel has been idle for the server's idle timeout.

The request got here as any other: path canonicalised, forwarding headers cleaned, routed, and through the
router's middlewares (a JWT-protected socket needs a valid token: without one the middleware answered 401
and nothing reached the upstream). Only a request whose server offered the hand-off of its connection
(``environ["gatekeeper.upgrade"]``, server/upgrade.py) comes here; elsewhere (gunicorn) the ``Upgrade`` is
dropped as hop-by-hop and the request proxied as a plain one.

An upstream that does not switch answers as usual: its response is relayed as for any request (a 401, 403
or 426 of its own, say). A failure before the answer is a 502 (504 on a timeout), as in balancer.py.

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
from gatekeeper.proxy.client import Connection, ConnectionPool, translated
from gatekeeper.proxy.response import CHUNK, Relay, ResponseBody, framing, one_content_length, read_head
from gatekeeper.proxy.rewrite import response_headers, upgrade_headers
from gatekeeper.wsgi import (
    ROUTER,
    TUNNEL_BYTES_IN,
    TUNNEL_BYTES_OUT,
    UPSTREAM,
    UPSTREAM_ERROR,
    Environ,
    Headers,
    StartResponse,
    error_response,
    log_path,
)

DEFAULT_IDLE = 60.0                         # when the client socket has no timeout (ServerLimits' default)

log = logging.getLogger("gatekeeper.proxy")
BAD_GATEWAY = error_response(502)
GATEWAY_TIMEOUT = error_response(504)


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
        send_request(conn, environ["REQUEST_METHOD"], target, upgrade_headers(offer.protocol, headers))
        while True:
            _, status, reason, answer = read_head(conn.reader, pool.limits.max_header_bytes)
            if status == 101 or status >= 200:
                break   # 100 Continue, 103 Early Hints: interim, skipped
        body = None if status == 101 else answer_body(pool, conn, environ["REQUEST_METHOD"], status, answer)
        if body is not None:
            body.read_first()   # a failure before the first byte is still a 502/504
    except (BadGateway, GatewayTimeout, OSError) as exc:
        failure = exc if conn is None else translated(conn, exc)
        return upstream_failed(environ, start_response, failure)
    if body is None:
        protocol = next((v for n, v in answer if n.lower() == "upgrade"), offer.protocol)
        start_response(f"101 {reason or 'Switching Protocols'}", upgrade_headers(protocol, response_headers(answer)))
        return Tunnel(environ, offer, conn)
    try:
        start_response(f"{status} {reason}".rstrip(), response_headers(answer))
    except BaseException:
        body.close()
        raise
    return Relay(body, environ)


def send_request(conn: Connection, method: str, target: str, headers: Headers) -> None:
    """The request head (an upgrade request has no body); a CR or LF in a value is refused."""
    lines = [f"{method} {target} HTTP/1.1\r\n", *(f"{name}: {value}\r\n" for name, value in headers), "\r\n"]
    text = "".join(lines)
    if text.count("\n") != len(lines) or text.count("\r") != len(lines):
        raise BadGateway("refusing to send a header value containing CR or LF")
    conn.sock.sendall(text.encode("latin-1"))


def answer_body(pool: ConnectionPool, conn: Connection, method: str, status: int, headers: Headers) -> ResponseBody:
    """The body of an answer that did not switch, framed as response.read_response frames any answer."""
    length, chunked, keep_alive = framing(headers, keep_alive=True)
    if length is not None:
        headers[:] = one_content_length(headers, length)
    if method == "HEAD" or status in (204, 304):
        return ResponseBody(pool, conn, "none", 0, keep_alive=False)
    if chunked:
        return ResponseBody(pool, conn, "chunked", 0, keep_alive)
    if length is not None:
        return ResponseBody(pool, conn, "length", length, keep_alive)
    return ResponseBody(pool, conn, "close", 0, keep_alive=False)


def upstream_failed(environ: Environ, start_response: StartResponse, exc: BaseException) -> Iterable[bytes]:
    """Nothing went to the client yet: one log line (no header, no query), then 504 or 502."""
    timeout = isinstance(exc, GatewayTimeout)
    log.warning("upstream %s failed an upgrade (router %s, %s %s): %s", environ.get(UPSTREAM, "-"),
                environ.get(ROUTER, "-"), environ.get("REQUEST_METHOD", "-"), log_path(environ), exc)
    environ[UPSTREAM_ERROR] = "timeout" if timeout else "bad_gateway"
    return (GATEWAY_TIMEOUT if timeout else BAD_GATEWAY)(environ, start_response)


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
