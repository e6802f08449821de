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
"""
from __future__ import annotations

import re
import select
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Tuple

from gatekeeper.errors import BadGateway, ConfigError, GatewayTimeout

CHUNK = 64 * 1024
MAX_LINE = 64 * 1024
CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
Headers = List[Tuple[str, str]]

# What a reused keep-alive connection may do if the upstream closed it while idle: these before any
# response byte mean "stale connection", and a request without a body is sent again on a fresh one.
STALE_ERRORS = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


@dataclass(frozen=True)
class ProxyLimits:
    """Upstream timeouts and pool sizes (operations.md "Limits"), in seconds and bytes.

    >>> ProxyLimits(connect_timeout=2.0, response_timeout=30.0)
    """

    connect_timeout: float = 5.0
    response_timeout: float = 60.0  # for the response head, and for each read of the body
    max_idle_per_server: int = 64
    idle_timeout: float = 30.0
    max_header_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "response_timeout", "idle_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"{name} must be a positive number of seconds, not {value!r}")


@dataclass
class Request:
    """One request to send: ``body`` is a read(n) callable, ``length`` its size or None for chunked."""

    method: str
    target: str
    headers: Headers
    body: Optional[Callable[[int], bytes]] = None
    length: Optional[int] = 0


class UpstreamClosed(BadGateway):
    """The upstream closed the connection before sending a response (stale keep-alive if reused)."""


class Connection:
    """One socket to an upstream, with a buffered reader for the responses."""

    __slots__ = ("idle_since", "reader", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = sock.makefile("rb", CHUNK)
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
        """True when the reader holds no unread bytes; never blocks (the socket was found idle)."""
        sock = self.sock
        timeout = sock.gettimeout()
        sock.settimeout(0)
        try:
            return not self.reader.peek(1)
        except (ssl.SSLWantReadError, BlockingIOError):
            return True
        except (OSError, ValueError):
            return False
        finally:
            sock.settimeout(timeout)

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

    def __init__(self, scheme: str, host: str, port: int, limits: ProxyLimits = ProxyLimits()) -> None:
        self.host, self.port, self.limits = host, port, limits
        self.tls = ssl.create_default_context() if scheme == "https" else None
        self.idle: List[Connection] = []
        self.closed = False

    def connect(self) -> Connection:
        """A fresh connection: refused/unreachable -> BadGateway, connect timeout -> GatewayTimeout."""
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.limits.connect_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_hostname=self.host)
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

    def send(self, request: Request) -> "Response":
        """Send ``request`` and read the response head; the body streams from ``response.body``.

        A reused connection found dead before any response byte is retried once on a fresh
        connection when the request has no body to replay.
        """
        conn, reused = self.acquire()
        try:
            return exchange(self, conn, request)
        except (UpstreamClosed, *STALE_ERRORS):
            if not (reused and not request.length and request.body is None):
                raise_translated(conn)
            conn = self.connect()
            try:
                return exchange(self, conn, request)
            except BaseException:
                raise_translated(conn)
        except BaseException:
            raise_translated(conn)


def raise_translated(conn: Connection) -> None:
    """Close ``conn`` and re-raise the current exception as BadGateway / GatewayTimeout."""
    conn.close()
    try:
        raise
    except (BadGateway, GatewayTimeout):
        raise
    except socket.timeout as exc:
        raise GatewayTimeout("upstream did not answer in time") from exc
    except OSError as exc:
        raise BadGateway(f"upstream connection failed: {exc.strerror or exc}") from exc


def exchange(pool: ConnectionPool, conn: Connection, request: Request) -> "Response":
    """Write the request on ``conn`` and read the response head."""
    head = [f"{request.method} {request.target} HTTP/1.1\r\n"]
    head.extend(f"{name}: {value}\r\n" for name, value in request.headers)
    if request.length is None:
        head.append("Transfer-Encoding: chunked\r\n")
    elif request.length or request.body is not None:
        head.append(f"Content-Length: {request.length}\r\n")
    head.append("\r\n")
    text = "".join(head)
    if text.count("\n") != len(head) or text.count("\r") != len(head):
        # a CR or LF inside a value (say, a claim copied into a header) would forge headers upstream
        raise ValueError("refusing to send a header value containing CR or LF")
    send_small(conn.sock, text.encode("latin-1"))
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


@dataclass
class Response:
    """A response head, and its body as an iterable with ``close()`` (the WSGI response iterable)."""

    status: int
    reason: str
    headers: Headers
    body: "ResponseBody"


def read_response(pool: ConnectionPool, conn: Connection, method: str, limit: int) -> Response:
    """Parse the status line and headers (skipping 1xx interim responses), then frame the body."""
    while True:
        version, status, reason, headers = read_head(conn.reader, limit)
        if status >= 200:
            break
        if status == 101:
            raise BadGateway("upstream switched protocols, which was not asked for")
    keep_alive = version == "HTTP/1.1"
    length: Optional[int] = None
    chunked = False
    for name, value in headers:
        lower = name.lower()
        if lower == "connection":
            tokens = {t.strip().lower() for t in value.split(",")}
            keep_alive = "close" not in tokens and (keep_alive or "keep-alive" in tokens)
        elif lower == "transfer-encoding":
            chunked = value.lower().rsplit(",", 1)[-1].strip() == "chunked"
            if not chunked:
                keep_alive = False  # read until close
        elif lower == "content-length":
            length = parse_length(value, length)
    if length is not None and sum(n.lower() == "content-length" for n, _ in headers) + \
            sum(v.count(",") for n, v in headers if n.lower() == "content-length") > 1:
        # "5, 5" or two equal headers: pass on one clean value, as clients may refuse the list
        headers = [(n, v) for n, v in headers if n.lower() != "content-length"]
        headers.append(("Content-Length", str(length)))
    if method == "HEAD" or status in (204, 304):
        if method == "HEAD" and (chunked or length):
            # Some servers (gevent's pywsgi among them) send the body of a HEAD answer anyway; bytes arriving
            # after the pool's liveness check would be read as the next client's response. Never reuse it.
            keep_alive = False
        mode, length = "none", 0
    elif chunked:
        mode = "chunked"
    elif length is not None:
        mode = "length"
    else:
        mode, keep_alive = "close", False
    return Response(status, reason, headers, ResponseBody(pool, conn, mode, length or 0, keep_alive))


def parse_length(value: str, previous: Optional[int]) -> int:
    """A Content-Length value (``5, 5`` allowed); differing or non-numeric values are refused."""
    values = {v.strip() for v in value.split(",")}
    if len(values) != 1 or not next(iter(values)).isdigit():
        raise BadGateway(f"upstream sent an invalid Content-Length: {value!r}")
    length = int(values.pop())
    if previous is not None and previous != length:
        raise BadGateway("upstream sent conflicting Content-Length headers")
    return length


def read_head(reader, limit: int) -> Tuple[str, int, str, Headers]:
    """One response head: (version, status, reason, headers); garbled or oversized -> BadGateway."""
    line = reader.readline(MAX_LINE)
    if not line:
        raise UpstreamClosed("upstream closed the connection without answering")
    parts = line.rstrip(b"\r\n").split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3 \
            or not parts[1].isdigit():
        raise BadGateway(f"upstream sent a garbled status line ({len(line)} bytes, starting {line[:8]!r})")
    size = len(line)
    headers: Headers = []
    while True:
        line = reader.readline(MAX_LINE)
        size += len(line)
        if size > limit:
            raise BadGateway("upstream response head is too large")
        if line in (b"\r\n", b"\n"):
            break
        if not line.endswith(b"\n"):
            raise BadGateway("upstream closed the connection inside the response head")
        if line[:1] in (b" ", b"\t") and headers:  # obsolete line folding
            name, value = headers.pop()
            headers.append((name, value + " " + line.strip().decode("latin-1")))
            continue
        name, sep, value = line.partition(b":")
        value = value.strip()
        if not sep or not name or b" " in name or b"\t" in name or b"\r" in value or b"\0" in value:
            # no space in or around a name; a bare CR or NUL in a value would make the server refuse it
            raise BadGateway(f"upstream sent a garbled header line (name {name[:40]!r})")
        headers.append((name.decode("latin-1"), value.decode("latin-1")))
    reason = parts[2].decode("latin-1") if len(parts) > 2 else ""
    return parts[0].decode("latin-1"), int(parts[1]), reason, headers


class UpstreamAborted(BadGateway):
    """The upstream failed after the response had started going to the client: the only honest answer
    left is to cut the client connection (no 500 page after a 200 head). Servers recognise it and close
    the connection with one log line and no traceback."""


class ResponseBody:
    """The upstream body as a WSGI iterable: chunks of at most 64 KiB, never the whole body.

    :meth:`read_first` reads the first piece before the status goes to the client, so an upstream failing
    right after its head is still answered 502 (504 on a timeout). A failure after that raises
    :class:`UpstreamAborted` from the iteration, and the server cuts the client connection rather than
    pretending the short body is complete.

    ``close()`` (called by the WSGI server, also when the client went away) returns the connection to
    the pool only if the body was read to its end and the upstream keeps it alive; otherwise the
    connection is closed.
    """

    __slots__ = ("conn", "done", "first", "keep_alive", "length", "mode", "pieces", "pool")

    def __init__(self, pool: ConnectionPool, conn: Connection, mode: str, length: int,
                 keep_alive: bool) -> None:
        self.pool, self.conn, self.mode, self.length = pool, conn, mode, length
        self.keep_alive = keep_alive
        self.done = mode == "none"
        self.pieces: Optional[Iterator[bytes]] = None
        self.first = b""

    def read_first(self) -> bytes:
        """The first piece of the body (``b""`` when there is none); BadGateway / GatewayTimeout when the
        upstream fails before it. Sets ``done`` when that piece is the whole body."""
        if self.done:
            return b""
        self.pieces = self.read_pieces()
        first = next(self.pieces, b"")
        if self.mode == "length" and len(first) == self.length:
            self.done = True
        self.first = first
        return first

    def __iter__(self) -> Iterator[bytes]:
        if self.pieces is None:
            self.read_first()
        first, self.first = self.first, b""
        if first:
            yield first
        if self.done:
            return
        try:
            yield from self.pieces  # type: ignore[misc]
        except (BadGateway, GatewayTimeout) as exc:
            raise UpstreamAborted(f"{exc} (after the response started)") from exc

    def read_pieces(self) -> Iterator[bytes]:
        """The body as framed, with socket errors translated; sets ``done`` at its end."""
        try:
            if self.mode == "length":
                yield from self.read_length(self.length)
            elif self.mode == "chunked":
                yield from self.read_chunked()
            elif self.mode == "close":
                yield from self.read_to_close()
        except socket.timeout as exc:
            raise GatewayTimeout("upstream timed out in the middle of the body") from exc
        except OSError as exc:
            raise BadGateway(f"upstream failed in the middle of the body: {exc.strerror or exc}") from exc
        self.done = True

    def read_length(self, remaining: int) -> Iterator[bytes]:
        read1 = self.conn.reader.read1
        while remaining > 0:
            data = read1(min(CHUNK, remaining))
            if not data:
                raise BadGateway(f"upstream body ended {remaining} bytes short")
            remaining -= len(data)
            yield data

    def read_chunked(self) -> Iterator[bytes]:
        reader = self.conn.reader
        while True:
            line = reader.readline(MAX_LINE)
            if not line.endswith(b"\n"):
                raise BadGateway("upstream closed the connection inside a chunked body")
            size_text = line.split(b";", 1)[0].strip()
            if not CHUNK_SIZE.fullmatch(size_text):  # int(x, 16) would take "-1", "0x10", "1_0"
                raise BadGateway("upstream sent a garbled chunk size")
            size = int(size_text, 16)
            if size == 0:
                break
            yield from self.read_length(size)
            if reader.readline(MAX_LINE) not in (b"\r\n", b"\n"):
                raise BadGateway("upstream chunk not followed by CRLF")
        while reader.readline(MAX_LINE) not in (b"\r\n", b"\n", b""):
            pass  # trailers: hop-by-hop, dropped

    def read_to_close(self) -> Iterator[bytes]:
        read1 = self.conn.reader.read1
        while True:
            data = read1(CHUNK)
            if not data:
                return
            yield data

    def close(self) -> None:
        if self.conn is None:
            return
        conn, self.conn = self.conn, None
        if self.done and self.keep_alive:
            self.pool.release(conn)
        else:
            conn.close()
