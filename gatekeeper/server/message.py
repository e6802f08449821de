"""The fast server's side of one exchange: the parsed :class:`Request`, its body as ``wsgi.input``
(:class:`Input`), and the :class:`Reply` that runs the app and frames what it returns.

Split from fast.py, which reads and parses the connection; both follow gatekeeper.server.base's contract.
"""
from __future__ import annotations

import socket
import time
from collections import deque
from email.utils import formatdate
from typing import Any, Callable, Deque, Iterable, Iterator, List, Optional, Protocol, Tuple

from gatekeeper.server.base import (
    BodyDeadline,
    ServerLimits,
    body_refused,
    chunk,
    failure_response,
    log_request_error,
    send_head,
)
from gatekeeper.server.upgrade import Offer, offered, switching_head
from gatekeeper.wsgi import UPGRADE, Environ, Headers, WSGIApp


class Server(Protocol):
    @property
    def application(self) -> WSGIApp: ...

    @property
    def draining(self) -> bool: ...


class Connection(Protocol):
    """What an exchange needs of its connection (fast.py's Connection): this module never imports fast.py,
    which imports it."""

    head_sent: bool
    limits: ServerLimits
    refused: Optional[int]
    sock: socket.socket
    upgrade_tail: bytes

    @property
    def server(self) -> Server: ...

    def send(self, data: bytes | bytearray) -> None: ...

    def fill_body(self) -> int: ...

    def refuse(self, status: int) -> None: ...

    def switchable(self) -> bool: ...

MAX_DISCARD = 4 * 1024 * 1024  # unread request body read and dropped after a response before closing instead
NO_BODY_STATUS = frozenset({204, 304})
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _Date:
    """The ``Date`` header value, formatted once a second."""

    second = -1
    value = b""

    @classmethod
    def now(cls) -> bytes:
        second = int(time.time())
        if second != cls.second:
            cls.second, cls.value = second, formatdate(second, usegmt=True).encode("ascii")
        return cls.value


class Request:
    """One parsed request: its environ, body chunks as llhttp delimits them, and whether it is complete."""

    __slots__ = (
        "body",
        "complete",
        "deadline",
        "discard",
        "environ",
        "expect_continue",
        "in_head",
        "keep_alive",
        "raw",
        "size",
        "target",
    )

    def __init__(self, environ: Environ) -> None:
        self.environ = environ
        self.target = b""
        self.body: Deque[bytes] = deque()
        self.complete = False
        self.keep_alive = True
        self.expect_continue = False
        self.discard = False
        self.deadline: Optional[BodyDeadline] = None   # the body's, from its first wait (BodyDeadline)
        self.size = 0          # header bytes, as pywsgi counts its header block
        self.raw = 0           # bytes received while this request's head was incomplete
        self.in_head = True

    def body_deadline(self, limits: ServerLimits) -> BodyDeadline:
        """The body's ``--read-timeout``, the same for the app's reads and the server's discarding."""
        if self.deadline is None:
            self.deadline = BodyDeadline(limits.read_timeout)
        return self.deadline


class Input:
    """``wsgi.input``: streams the body llhttp delimits (Content-Length or chunked), never buffering it
    whole; sends ``100 Continue`` on the first read when the client asked for it."""

    def __init__(self, conn: "Connection", request: Request) -> None:
        self.conn, self.request = conn, request

    def _more(self) -> bool:
        """Wait for body bytes; False at the end of the body."""
        request = self.request
        if request.expect_continue:
            request.expect_continue = False
            if not self.conn.head_sent:
                self.conn.send(CONTINUE)
        while not request.body:
            if request.complete:
                return False
            request.body_deadline(self.conn.limits).check()
            self.conn.fill_body()
        return True

    def read(self, size: Optional[int] = -1) -> bytes:
        body = self.request.body
        if size is None or size < 0:
            parts = []
            while self._more():
                parts.append(body.popleft())
            return b"".join(parts)
        if size == 0 or not self._more():
            return b""
        chunk = body.popleft()
        if len(chunk) > size:
            body.appendleft(chunk[size:])
            chunk = chunk[:size]
        return chunk

    def readline(self, size: Optional[int] = -1) -> bytes:
        body = self.request.body
        line = bytearray()
        while (size is None or size < 0 or len(line) < size) and self._more():
            chunk = body.popleft()
            end = chunk.find(b"\n") + 1 or len(chunk)
            if size is not None and size >= 0:
                end = min(end, size - len(line))
            line += chunk[:end]
            if end < len(chunk):
                body.appendleft(chunk[end:])
            if line.endswith(b"\n"):
                break
        return bytes(line)

    def readlines(self, hint: Optional[int] = None) -> List[bytes]:
        return list(self)

    def __iter__(self) -> Iterator[bytes]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line


class Reply:
    """One request through the app and back: start_response, framing, head + first chunk in one send."""

    __slots__ = (
        "bodyless",
        "chunked",
        "close",
        "conn",
        "head",
        "headers",
        "remaining",
        "request",
        "status",
    )

    def __init__(self, conn: Connection, request: Request) -> None:
        self.conn, self.request = conn, request
        self.status: Optional[str] = None
        self.headers: Headers = []
        self.head: Optional[bytearray] = None   # built, not yet sent
        self.chunked = self.bodyless = False
        self.remaining: Optional[int] = None   # Content-Length bytes still to send
        self.close = not request.keep_alive

    def start_response(self, status: str, headers: Headers, exc_info: Any = None) -> Callable[[bytes], None]:
        if exc_info:
            try:
                if self.conn.head_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        for name, value in headers:
            if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
                raise ValueError(f"carriage return or newline in response header {name!r}")
        if "\r" in status or "\n" in status:
            raise ValueError("carriage return or newline in status")
        self.status, self.headers = status, headers
        return self.write

    def build_head(self, result: Optional[Iterable[bytes]]) -> bytearray:
        """Status line and headers, with the framing this response needs."""
        status = self.status or ""
        code = int(status[:3])
        environ = self.request.environ
        head = bytearray(b"HTTP/1.1 ")
        head += status.encode("latin-1")
        head += b"\r\n"
        length, date, connection = self.copy_headers(head)
        if date is None:
            head += b"Date: " + _Date.now() + b"\r\n"
        self.bodyless = code in NO_BODY_STATUS or code < 200 or environ["REQUEST_METHOD"] == "HEAD"
        self.frame(head, result, length)
        if (connection is not None and "close" in connection) or self.conn.server.draining:
            self.close = True
        if self.close and connection is None:
            head += b"Connection: close\r\n"
        elif not self.close and environ["SERVER_PROTOCOL"] == "HTTP/1.0" and connection is None:
            head += b"Connection: keep-alive\r\n"
        head += b"\r\n"
        return head

    def copy_headers(self, head: bytearray) -> Tuple[Optional[str], Optional[str], Optional[str]]:
        """The app's headers into ``head``; (Content-Length, Date, Connection in lower case) as it set them."""
        length = date = connection = None
        lines = []
        for name, value in self.headers:
            if len(name) in (4, 10, 14):   # date, connection, content-length: lower() only those lengths
                lower = name.lower()
                if lower == "content-length":
                    length = value
                elif lower == "date":
                    date = value
                elif lower == "connection":
                    connection = value.lower()
            lines.append(f"{name}: {value}\r\n")
        head += "".join(lines).encode("latin-1")   # one encode for the whole block
        return length, date, connection

    def frame(self, head: bytearray, result: Optional[Iterable[bytes]], length: Optional[str]) -> None:
        """How the body is delimited: the app's Content-Length, one computed for a list, chunked (1.1),
        or the connection's end (1.0); nothing for a bodyless response."""
        if length is not None:
            self.remaining = int(length) if length.isdigit() else None
            if self.remaining is None:
                self.close = True
        elif not self.bodyless:
            self.frame_unsized(head, result)
        if self.bodyless:
            self.remaining, self.chunked = 0, False

    def frame_unsized(self, head: bytearray, result: Optional[Iterable[bytes]]) -> None:
        """A body without the app's Content-Length: one computed for a list, else chunked (1.1) or until
        the connection's end (1.0)."""
        if isinstance(result, (list, tuple)):
            total = sum(len(chunk) for chunk in result)
            head += b"Content-Length: %d\r\n" % total
            self.remaining = total
        elif self.request.environ["SERVER_PROTOCOL"] == "HTTP/1.1":
            self.chunked = True
            head += b"Transfer-Encoding: chunked\r\n"
        else:
            self.close = True   # HTTP/1.0 without a length: the body ends when the connection does

    def write(self, data: bytes) -> None:
        if self.status is None:
            raise AssertionError("write() before start_response()")
        head = self.head
        if head is not None:
            self.head = None
        elif not self.conn.head_sent:
            head = self.build_head(None)
        if self.bodyless:
            data = b""
        elif self.remaining is not None:
            if len(data) > self.remaining:
                data = data[:self.remaining]
                self.close = True
            self.remaining -= len(data)
        elif self.chunked and data:
            data = chunk(data)
        if head is not None:
            self.conn.head_sent = True
            send_head(self.conn.send, head, data)
        elif data:
            self.conn.send(data)

    def run(self) -> bool:
        """Run the app for this request; True when the connection stays open for the next one."""
        conn = self.conn
        conn.head_sent = False
        environ = self.request.environ
        result: Optional[Iterable[bytes]] = None
        protocols = offered(environ) if conn.switchable() else None
        if protocols:
            environ[UPGRADE] = Offer(protocols, self.detach)
        try:
            result = conn.server.application(environ, self.start_response)
            self.send_result(result)
        except OSError:
            if conn.refused is not None and not conn.head_sent:
                conn.refuse(conn.refused)   # a malformed body (llhttp refused it): 400, as pywsgi answers
            return False   # else the client went away (or stalled past the idle timeout)
        except Exception as exc:
            self.fail(exc)
            return False
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                try:
                    close()
                except Exception as exc:
                    log_request_error(environ, exc)
        return not self.close and self.finish_body()

    def detach(self) -> Tuple[socket.socket, bytes]:
        """server/upgrade.py's hand-off: the 101 head the app set goes out, the connection leaves HTTP."""
        conn = self.conn
        if conn.head_sent or self.status is None:
            raise ValueError("switch protocols: start_response('101 ...') first, and nothing sent before")
        conn.send(switching_head(self.status, self.headers))
        conn.head_sent = self.close = self.bodyless = True
        self.remaining, self.chunked = 0, False
        tail, conn.upgrade_tail = conn.upgrade_tail, b""
        return conn.sock, tail

    def send_result(self, result: Iterable[bytes]) -> None:
        """What the app returned, framed; the head goes with the first non-empty chunk (or alone)."""
        conn = self.conn
        for data in result:
            if data:
                if self.status is None:
                    raise AssertionError("body before start_response()")
                if not conn.head_sent and self.head is None:
                    self.head = self.build_head(result)
                self.write(data)
        if not conn.head_sent:
            if self.status is None:
                raise AssertionError("the application never called start_response()")
            if self.head is None:
                self.head = self.build_head(result)
            self.write(b"")
        if self.chunked:
            conn.send(b"0\r\n\r\n")
        if self.remaining:
            self.close = True   # the app sent less than its Content-Length: the client must see EOF

    def fail(self, exc: Exception) -> None:
        """One line of our own (the hub's handle_error would print the environ: tokens, cookies, claims);
        500 (502 for an upstream) if nothing went out yet, else the connection is cut: no byte after what
        was sent, no chunked terminator, so the client sees the truncation."""
        log_request_error(self.request.environ, exc)
        if not self.conn.head_sent:
            try:
                self.conn.send(failure_response(exc))
            except OSError:
                pass

    def finish_body(self) -> bool:
        """Read and drop what the app left of the request body, so the next request parses; False when
        the connection should close instead (refused body, too much left, client gone)."""
        request = self.request
        if not request.complete and body_refused(request.environ):
            return False
        request.discard, dropped = True, sum(len(chunk) for chunk in request.body)
        request.body.clear()
        conn = self.conn
        try:
            while not request.complete:
                if dropped > MAX_DISCARD:
                    return False
                request.body_deadline(conn.limits).check()
                dropped += conn.fill_body()
        except OSError:
            return False
        return True
