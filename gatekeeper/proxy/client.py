"""A lean HTTP/1.1 client for upstreams: pooled keep-alive connections, streamed bodies both ways.

Chosen over urllib3 by measurement (``scripts/bench_proxy``, figures in docs/proxy.md): the gateway
needs one thing from a client, to move bytes between two sockets with correct framing, and urllib3's
generality (retries, redirects, decoding, http.client's email-based header parser) costs more per request
than the rest of the proxy. Sockets come from the ``socket`` module, so under ``gevent.monkey`` they are
cooperative; every upstream socket gets ``TCP_NODELAY`` (without it: Nagle + delayed ACK, ~40 ms a request).

Usage::

    pool = ConnectionPool("http", "127.0.0.1", 9000, ProxyLimits())
    response = pool.send(Request("GET", "/hello", [("Host", "example")]))
    for chunk in response.body: ...
    response.body.close()        # back to the pool if the body was read to its end

This module keeps the connections and writes requests; response.py reads what comes back.
"""
from __future__ import annotations

import select
import socket
import ssl
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

from gatekeeper.errors import BadGateway, ConfigError, GatewayTimeout
from gatekeeper.proxy.response import (
    CHUNK,
    Response,
    ResponseBody,
    SocketReader,
    UpstreamClosed,
    read_response,
)
from gatekeeper.proxy.upstream_tls import UpstreamTLS, client_context
from gatekeeper.wsgi import Headers

# Response and ResponseBody are part of what a pool's user handles (balancer.py, scripts/bench_proxy), so
# they are importable from here too.
__all__ = ["REQUEST_WRITTEN", "ClientBodyError", "Connection", "ConnectionPool", "Headers", "ProxyLimits",
           "Request", "Response", "ResponseBody", "UpstreamClosed"]

# What a reused keep-alive connection may do if the upstream closed it while idle: these before any
# response byte mean "stale connection", and a request without a body is sent again on a fresh one.
STALE_ERRORS = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)

# Set by the retry middleware around one attempt: a list that gets an entry as soon as a byte of the request
# is about to go to an upstream. Empty after a failure means the request never reached one (connection
# refused, connect timeout, TLS handshake failure), so sending it again cannot repeat it. A context variable
# (per greenlet under gevent) rather than an environ key, because the client never sees the environ.
REQUEST_WRITTEN: ContextVar[Optional[List[bool]]] = ContextVar("gatekeeper_request_written", default=None)


@dataclass(frozen=True)
class ProxyLimits:
    """Upstream timeouts and pool sizes (operations.md "Limits"), in seconds and bytes.

    >>> ProxyLimits(connect_timeout=2.0, response_timeout=30.0).idle_timeout
    30.0
    """

    connect_timeout: float = 5.0
    response_timeout: float = 60.0  # for the response head, and for each read of the body
    max_idle_per_server: int = 64
    idle_timeout: float = 30.0
    max_header_bytes: int = 64 * 1024
    tls: Optional[UpstreamTLS] = None  # HTTPS servers: a serversTransport's TLS (None: verify, system roots)

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "response_timeout", "idle_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"{name} must be a positive number of seconds, not {value!r}")


DEFAULT_LIMITS = ProxyLimits()


@dataclass
class Request:
    """One request to send: ``body`` is a read(n) callable, ``length`` its size or None for chunked."""

    method: str
    target: str
    headers: Headers
    body: Optional[Callable[[int], bytes]] = None
    length: Optional[int] = 0


class Connection:
    """One socket to an upstream, with its reader for the responses."""

    __slots__ = ("idle_since", "reader", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = SocketReader(sock)
        self.idle_since = 0.0

    def looks_alive(self) -> bool:
        """False when the idle connection has something to read: EOF (the upstream closed it) or bytes
        no request asked for, either in the socket or already in the reader's buffer (a body an upstream
        sent after a HEAD, 204 or 304 answer arrives with the head). Reusing such a connection would read
        those bytes as the next response: the pool would be out of step.

        A non-blocking MSG_PEEK rather than select(), which fails for descriptors past 1023. Under gevent
        the peek goes straight to the non-blocking OS socket: one syscall.
        """
        sock = self.sock
        if isinstance(sock, ssl.SSLSocket):  # no MSG_PEEK through TLS
            try:
                if select.select([sock], [], [], 0)[0] or sock.pending():
                    return False
            except (OSError, ValueError):
                return False
        else:
            raw = getattr(sock, "_sock", None)  # gevent's cooperative socket wraps a non-blocking one
            if raw is None or raw.gettimeout() != 0.0:
                raw = None
            if not peek_is_empty(raw or sock, adjust_timeout=raw is None):
                return False
        return self.buffer_is_empty()

    def buffer_is_empty(self) -> bool:
        """True when the reader holds no unread bytes (no system call: the reader's own buffer)."""
        return not self.reader.holds_bytes()

    def close(self) -> None:
        try:
            self.reader.close()
        finally:
            self.sock.close()


def peek_is_empty(sock: socket.socket, adjust_timeout: bool = False) -> bool:
    """True when ``sock`` has nothing to read (open and idle); ``adjust_timeout`` makes the peek
    non-blocking on a socket that has a timeout."""
    timeout = sock.gettimeout() if adjust_timeout else None
    if adjust_timeout:
        sock.settimeout(0)
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        if adjust_timeout:
            sock.settimeout(timeout)
    return False  # EOF or unexpected bytes


def send_small(sock: socket.socket, data: bytes) -> None:
    """``sendall`` for data that usually fits the socket buffer: one ``send`` and, rarely, the rest.

    gevent's ``sendall`` asks the kernel for SO_SNDBUF on every call; a request head goes in one send.
    """
    sent = sock.send(data)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])


class ConnectionPool:
    """Idle keep-alive connections to one server, most recently used first (warm, least likely stale)."""

    def __init__(self, scheme: str, host: str, port: int, limits: ProxyLimits = DEFAULT_LIMITS) -> None:
        self.host, self.port, self.limits = host, port, limits
        self.tls = client_context(limits.tls) if scheme == "https" else None
        self.server_name = (limits.tls.server_name if limits.tls is not None else "") or host
        self.idle: List[Connection] = []
        self.closed = False

    def connect(self) -> Connection:
        """A fresh connection: refused/unreachable -> BadGateway, connect timeout -> GatewayTimeout."""
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.limits.connect_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_hostname=self.server_name)
        except socket.timeout as exc:
            raise GatewayTimeout(f"connect to {self.host}:{self.port} timed out") from exc
        except OSError as exc:  # refused, unreachable, TLS failure
            raise BadGateway(f"connect to {self.host}:{self.port}: {exc.strerror or exc}") from exc
        sock.settimeout(self.limits.response_timeout)
        return Connection(sock)

    def acquire(self) -> Tuple[Connection, bool]:
        """An idle connection that still looks alive (reused=True), else a new one."""
        now = time.monotonic()
        while self.idle:
            conn = self.idle.pop()
            if now - conn.idle_since < self.limits.idle_timeout and conn.looks_alive():
                return conn, True
            conn.close()
        return self.connect(), False

    def release(self, conn: Connection) -> None:
        """Return a connection whose last response was read to its end."""
        if self.closed or len(self.idle) >= self.limits.max_idle_per_server:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self.idle.append(conn)

    def close(self) -> None:
        """Close the idle connections; connections in use are closed when released."""
        self.closed = True
        while self.idle:
            self.idle.pop().close()

    def send(self, request: Request) -> Response:
        """Send ``request`` and read the response head; the body streams from ``response.body``.

        A reused connection found dead before any response byte is retried once on a fresh
        connection when the request has no body to replay.
        """
        conn, reused = self.acquire()
        try:
            return exchange(self, conn, request)
        except (UpstreamClosed, *STALE_ERRORS) as exc:
            if not (reused and not request.length and request.body is None):
                raise translated(conn, exc)  # noqa: B904 (translated() chains the cause itself)
        except BaseException as exc:
            raise translated(conn, exc)  # noqa: B904
        conn.close()  # stale: the upstream closed it while idle
        conn = self.connect()
        try:
            return exchange(self, conn, request)
        except BaseException as exc:
            raise translated(conn, exc)  # noqa: B904


def translated(conn: Connection, exc: BaseException) -> BaseException:
    """Close ``conn``; what to raise for ``exc``: a socket timeout becomes GatewayTimeout, another OSError
    BadGateway (chained to it), anything else (BadGateway, GatewayTimeout, a refused header) as it is."""
    conn.close()
    if isinstance(exc, (BadGateway, GatewayTimeout)):
        return exc
    if isinstance(exc, socket.timeout):
        new: BaseException = GatewayTimeout("upstream did not answer in time")
    elif isinstance(exc, OSError):
        new = BadGateway(f"upstream connection failed: {exc.strerror or exc}")
    else:
        return exc
    new.__cause__ = exc
    return new


def request_head(method: str, target: str, headers: Headers, framing: Tuple[str, ...] = ()) -> bytes:
    """The request head as bytes; ValueError when a value holds CR or LF (say, a claim copied into a
    header), which would forge headers upstream.

    >>> request_head("GET", "/a", [("Host", "h")])
    b'GET /a HTTP/1.1\\r\\nHost: h\\r\\n\\r\\n'
    """
    lines = [f"{method} {target} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in headers]
    text = "\r\n".join(lines) + "\r\n" + "".join(framing) + "\r\n"
    expected = len(lines) + len(framing) + 1
    if text.count("\n") != expected or text.count("\r") != expected:
        raise ValueError("refusing to send a header value containing CR or LF")
    return text.encode("latin-1")


def exchange(pool: ConnectionPool, conn: Connection, request: Request) -> Response:
    """Write the request on ``conn`` and read the response head."""
    if request.length is None:
        framing: Tuple[str, ...] = ("Transfer-Encoding: chunked\r\n",)
    elif request.length or request.body is not None:
        framing = (f"Content-Length: {request.length}\r\n",)
    else:
        framing = ()
    head = request_head(request.method, request.target, request.headers, framing)
    written = REQUEST_WRITTEN.get()
    if written is not None:
        written.append(True)
    send_small(conn.sock, head)
    if request.body is not None:
        send_body(conn.sock, request.body, request.length)
    return read_response(pool, conn, request.method, pool.limits.max_header_bytes)


class ClientBodyError(Exception):
    """Reading the client's request body failed: the client's fault, not the upstream's."""


def send_body(sock: socket.socket, read: Callable[[int], bytes], length: Optional[int]) -> None:
    """Copy the client body to the upstream, with chunked framing when ``length`` is None."""
    remaining = length
    while remaining is None or remaining > 0:
        try:
            data = read(CHUNK if remaining is None else min(CHUNK, remaining))
        except Exception as exc:
            raise ClientBodyError(str(exc)) from exc
        if not data:
            break
        if remaining is None:
            sock.sendall(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            remaining -= len(data)
            sock.sendall(data)
    if remaining is None:
        sock.sendall(b"0\r\n\r\n")
    elif remaining:
        raise ClientBodyError(f"client body ended {remaining} bytes short")
