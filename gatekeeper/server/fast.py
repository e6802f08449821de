"""A lean HTTP/1.1 WSGI server: gevent's StreamServer with httptools' C parser (llhttp), as strict as
serve.py's pywsgi handler and behind the same ``make_server`` interface.

Why: pywsgi spends about 90 µs of CPU a request here (an email-based header parser, a buffered file per
connection, several sends); llhttp parses a request in a few µs. Measured in docs/performance.md.

Strictness comes mostly from llhttp in its default (non-lenient) mode, checked by tests/test_fastserver.py
against the same table as pywsgi: both Content-Length and Transfer-Encoding, duplicate or malformed
Content-Length, obs-fold, bare LF, invalid methods and targets are 400. This module adds what llhttp does
not check: HTTP versions other than 1.0/1.1, a header byte budget (431), a request-target cap (414), a
whole-header deadline (slowloris), and HEAD with a body.

Framing is llhttp's alone: the body the app reads is what llhttp delimited, and the parser is fed only up
to the next request while one is waiting (pipelining is served in order, never parsed far ahead).
"""
from __future__ import annotations

import socket
import sys
import time
from collections import deque
from email.utils import formatdate
from typing import Callable, Deque, List, Optional, Tuple
from urllib.parse import unquote

import gevent
import gevent.event
import httptools
from gevent.server import StreamServer

from gatekeeper.server.pywsgi import (
    BODY_REFUSED,
    COALESCE_LIMIT,
    RESPONSE_431,
    SKIP_AFTER_431,
    ConnectionTracking,
    ServerLimits,
    failure_response,
    log_request_error,
    with_handshake_deadline,
)

RECV_SIZE = 64 * 1024
FEED_SLICE = 4096          # bytes handed to the parser at a time once a request is waiting (pipelining)
MAX_TARGET = 8192          # request-target bytes (pywsgi's request-line cap): 414 past it
MAX_DISCARD = 4 * 1024 * 1024  # unread request body read and dropped after a response before closing instead
NO_BODY_STATUS = frozenset({204, 304})
HEADER_KEY_CACHE_SIZE = 512

RESPONSE_400 = (b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n"
                b"Content-Length: 12\r\n\r\nBad Request\n")
RESPONSE_414 = (b"HTTP/1.1 414 URI Too Long\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n"
                b"Content-Length: 13\r\n\r\nURI Too Long\n")
REFUSALS = {400: RESPONSE_400, 414: RESPONSE_414, 431: RESPONSE_431}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

_header_keys: dict = {}


def environ_key(name: bytes) -> Optional[str]:
    """``b"X-Foo"`` -> ``"HTTP_X_FOO"``; None for names with ``_`` (pywsgi drops them: they would be
    indistinguishable from ``-`` in the environ, a spoofing route). Cached for the common names."""
    key = _header_keys.get(name, False)
    if key is not False:
        return key
    text = name.decode("latin-1")
    if "_" in text:
        key = None
    else:
        key = text.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
    if len(_header_keys) < HEADER_KEY_CACHE_SIZE:
        _header_keys[name] = key
    return key


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


class Refused(Exception):
    """The request is answered by the server itself (400/414/431) and the connection closed."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class Request:
    """One parsed request: its environ, body chunks as llhttp delimits them, and whether it is complete."""

    __slots__ = (
        "body",
        "complete",
        "discard",
        "environ",
        "expect_continue",
        "in_head",
        "keep_alive",
        "raw",
        "size",
        "target",
    )

    def __init__(self, environ: dict) -> None:
        self.environ = environ
        self.target = b""
        self.body: Deque[bytes] = deque()
        self.complete = False
        self.keep_alive = True
        self.expect_continue = False
        self.discard = False
        self.size = 0          # header bytes, as pywsgi counts its header block
        self.raw = 0           # bytes received while this request's head was incomplete
        self.in_head = True


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

    def __iter__(self):
        while True:
            line = self.readline()
            if not line:
                return
            yield line


class Connection:
    """One client connection: reads, parses (this object is httptools' protocol), runs the app per request
    in order, writes the response with its framing."""

    def __init__(self, server: "FastServer", sock, address) -> None:
        self.server = server
        self.sock = sock
        self.address = address
        self.limits: ServerLimits = server.limits
        self.parser = httptools.HttpRequestParser(self)
        self.pending: Deque[Request] = deque()
        self.parsing: Optional[Request] = None
        self.backlog = b""            # received, not yet given to the parser
        self.refused: Optional[int] = None   # a parse error: answer it once pending requests are served
        self.refused_in = b""                # the bytes that held it (a 431 skips to the header block's end)
        self.upgrade = False
        self.eof = False
        self.waiting_for_request = False
        self.head_sent = False
        self.peer = (str(address[0]), str(address[1])) if isinstance(address, tuple) else ("", "")

    # --- httptools protocol -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.parsing = Request(self.server.environ.copy())

    def on_url(self, url: bytes) -> None:
        request = self.parsing
        request.target += url
        if len(request.target) > MAX_TARGET:
            raise Refused(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self.parsing
        request.size += len(name) + len(value) + 4
        if request.size > self.limits.max_header_bytes:
            raise Refused(431)
        key = environ_key(name)
        if key is None:
            return
        environ = request.environ
        text = value.decode("latin-1").strip()
        if key in environ:
            environ[key] += ("; " if key == "HTTP_COOKIE" else ",") + text
        else:
            environ[key] = text

    def on_headers_complete(self) -> None:
        request = self.parsing
        parser = self.parser
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            raise Refused(400)
        environ = request.environ
        method = parser.get_method().decode("ascii")
        if method == "HEAD" and int(environ.get("CONTENT_LENGTH") or 0):
            raise Refused(400)   # pywsgi: "Unexpected Content-Length"
        if "HTTP_TRANSFER_ENCODING" in environ:
            environ.pop("CONTENT_LENGTH", None)   # llhttp refuses both; pywsgi's rule, kept for clarity
        target = request.target.decode("latin-1")
        path, _, query = target.partition("?")
        environ["REQUEST_METHOD"] = method
        environ["RAW_URI"] = target
        environ["PATH_INFO"] = unquote(path, "latin-1") if "%" in path else path
        environ["QUERY_STRING"] = query
        environ["SERVER_PROTOCOL"] = "HTTP/" + version
        environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = self.peer
        environ["wsgi.input"] = Input(self, request)
        request.keep_alive = parser.should_keep_alive()
        request.expect_continue = version == "1.1" and environ.get("HTTP_EXPECT", "").lower() == "100-continue"
        request.in_head = False
        self.pending.append(request)

    def on_body(self, body: bytes) -> None:
        request = self.parsing
        if not request.discard:
            request.body.append(body)

    def on_message_complete(self) -> None:
        self.parsing.complete = True
        self.parsing = None

    # --- reading ------------------------------------------------------------------------------

    def feed(self) -> int:
        """Give the parser received bytes (all of them while no request waits, else a slice and keep the
        rest); how many it got, 0 at EOF."""
        data = self.backlog
        if not data:
            data = self.sock.recv(RECV_SIZE)
            if not data:
                self.eof = True
                return 0
        if self.pending and len(data) > FEED_SLICE:
            self.backlog, data = data[FEED_SLICE:], data[:FEED_SLICE]
        else:
            self.backlog = b""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.upgrade = True   # served as a plain request, then closed: nothing after it is parsed
            self.backlog = b""
        except httptools.HttpParserError as exc:
            self.refused = exc.__context__.status if isinstance(exc.__context__, Refused) else 400
            self.backlog, self.refused_in = b"", data
            return len(data)
        request = self.parsing
        if request is not None and request.in_head:
            # A header still arriving is buffered by httptools until its line ends: bound that too.
            request.raw += len(data)
            if request.raw > self.limits.max_header_bytes + MAX_TARGET + RECV_SIZE:
                self.refused, self.refused_in = 431, data
        return len(data)

    def fill_body(self) -> int:
        """More bytes for the body of the request being served; IOError when there are none to come."""
        if self.refused is not None or self.eof or self.upgrade:
            raise ConnectionError("request body incomplete: the client closed or sent a malformed body")
        count = self.feed()
        if self.eof:
            raise ConnectionError("request body incomplete: the client closed the connection")
        return count

    def next_request(self) -> Optional[Request]:
        """The next request whose headers are complete, or None: close (EOF, idle, drain, refused)."""
        deadline = None
        try:
            while not self.pending:
                if self.server.draining or self.eof or self.upgrade:
                    return None
                if self.refused is not None:
                    self.refuse(self.refused)
                    return None
                if deadline is None and self.parsing is not None and self.parsing.in_head:
                    # The idle timeout bounds each read; this bounds the whole header block (slowloris).
                    deadline = gevent.Timeout.start_new(self.limits.idle_timeout, socket.timeout)
                self.waiting_for_request = self.parsing is None
                try:
                    self.feed()
                finally:
                    self.waiting_for_request = False
        except OSError:
            return None
        finally:
            if deadline is not None:
                deadline.cancel()
        if self.server.draining:
            return None
        return self.pending.popleft()

    def refuse(self, status: int) -> None:
        """Answer a request the server refuses itself, then let the connection close."""
        if status == 431:
            self.skip_header_block()
            self.server.request_refused(self, status)
        try:
            self.send(REFUSALS[status])
        except OSError:
            pass

    def skip_header_block(self) -> None:
        """Read (and drop) the rest of a too-large header block, at most SKIP_AFTER_431 bytes, so the
        client is reading when the 431 arrives instead of being reset mid-send."""
        seen, tail = 0, self.refused_in[-3:]
        if b"\r\n\r\n" in self.refused_in:
            return
        try:
            while seen < SKIP_AFTER_431:
                data = self.sock.recv(RECV_SIZE)
                if not data or b"\r\n\r\n" in tail + data:
                    return
                seen += len(data)
                tail = data[-3:]
        except OSError:
            return

    # --- writing ------------------------------------------------------------------------------

    def send(self, data) -> None:
        sent = self.sock.send(data)
        if sent < len(data):
            self.sock.sendall(memoryview(data)[sent:])

    def serve(self) -> None:
        """Requests in order until one ends the connection."""
        while True:
            request = self.next_request()
            if request is None:
                return
            if not Reply(self, request).run():
                return

    def wake_if_idle(self) -> None:
        """During a drain: an idle keep-alive connection is closed now rather than after idle_timeout."""
        if self.waiting_for_request:
            try:
                self.sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass


class Reply:
    """One request through the app and back: start_response, framing, head + first chunk in one send."""

    __slots__ = (
        "bodyless",
        "chunked",
        "close",
        "code",
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
        self.headers: List[Tuple[str, str]] = []
        self.head: Optional[bytearray] = None   # built, not yet sent
        self.chunked = self.bodyless = False
        self.remaining: Optional[int] = None   # Content-Length bytes still to send
        self.close = not request.keep_alive

    def start_response(self, status: str, headers: List[Tuple[str, str]], exc_info=None) -> Callable:
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

    def build_head(self, result) -> bytearray:
        """Status line and headers, with the framing this response needs."""
        code = self.code = int(self.status[:3])
        environ = self.request.environ
        head = bytearray(b"HTTP/1.1 ")
        head += self.status.encode("latin-1")
        head += b"\r\n"
        length = date = connection = None
        for name, value in self.headers:
            lower = name.lower()
            if lower == "content-length":
                length = value
            elif lower == "date":
                date = value
            elif lower == "connection":
                connection = value.lower()
            head += name.encode("latin-1") + b": " + value.encode("latin-1") + b"\r\n"
        if date is None:
            head += b"Date: " + _Date.now() + b"\r\n"
        bodyless = code in NO_BODY_STATUS or code < 200 or environ["REQUEST_METHOD"] == "HEAD"
        if length is not None:
            self.remaining = int(length) if length.isdigit() else None
            if self.remaining is None:
                self.close = True
        elif not bodyless:
            if isinstance(result, (list, tuple)):
                total = sum(len(chunk) for chunk in result)
                head += b"Content-Length: %d\r\n" % total
                self.remaining = total
            elif environ["SERVER_PROTOCOL"] == "HTTP/1.1":
                self.chunked = True
                head += b"Transfer-Encoding: chunked\r\n"
            else:
                self.close = True   # HTTP/1.0 without a length: the body ends when the connection does
        self.bodyless = bodyless
        if bodyless:
            self.remaining, self.chunked = 0, False
        if connection is not None and "close" in connection:
            self.close = True
        if self.conn.server.draining:
            self.close = True
        if self.close and connection is None:
            head += b"Connection: close\r\n"
        elif not self.close and environ["SERVER_PROTOCOL"] == "HTTP/1.0" and connection is None:
            head += b"Connection: keep-alive\r\n"
        head += b"\r\n"
        return head

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
            data = b"%x\r\n" % len(data) + data + b"\r\n"
        if head is not None:
            self.conn.head_sent = True
            if data and len(data) <= COALESCE_LIMIT:
                head += data
                data = b""
            self.conn.send(head)
        if data:
            self.conn.send(data)

    def run(self) -> bool:
        """Run the app for this request; True when the connection stays open for the next one."""
        conn = self.conn
        conn.head_sent = False
        environ = self.request.environ
        result = None
        try:
            result = conn.server.application(environ, self.start_response)
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
        except OSError:
            if conn.refused is not None and not conn.head_sent:
                conn.refuse(conn.refused)   # a malformed body (llhttp refused it): 400, as pywsgi answers
            return False   # else the client went away (or stalled past the idle timeout)
        except Exception as exc:
            # One line of our own (the hub's handle_error would print the environ: tokens, cookies,
            # claims); 500 (502 for an upstream) if nothing went out yet, else the connection is cut:
            # no byte after what was sent, no chunked terminator, so the client sees the truncation.
            log_request_error(environ, exc)
            if not conn.head_sent:
                try:
                    conn.send(failure_response(exc))
                except OSError:
                    pass
            return False
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                try:
                    close()
                except Exception as exc:
                    log_request_error(environ, exc)
        return not self.close and self.finish_body()

    def finish_body(self) -> bool:
        """Read and drop what the app left of the request body, so the next request parses; False when
        the connection should close instead (refused body, too much left, client gone)."""
        request = self.request
        if request.complete:
            return True
        if request.environ.get(BODY_REFUSED):
            return False
        request.discard, dropped = True, sum(len(chunk) for chunk in request.body)
        request.body.clear()
        conn = self.conn
        try:
            while not request.complete:
                if dropped > MAX_DISCARD:
                    return False
                dropped += conn.fill_body()
        except OSError:
            return False
        return True


class FastServer(ConnectionTracking, StreamServer):
    """A WSGI server on StreamServer + httptools with :class:`ServerLimits`, connection tracking and drain.

    Drop-in for serve.GatewayServer: ``on_refused(exchange)`` sees requests refused before the app
    (431); ``on_connection(+1/-1)`` follows open connections (the metrics gauge).

    >>> server = FastServer(listen_socket("127.0.0.1", 8080), app, limits=ServerLimits(idle_timeout=30))
    >>> server.serve_forever()
    """

    def __init__(self, listener, application: Callable, *, limits: Optional[ServerLimits] = None,
                 on_refused: Optional[Callable] = None, on_connection: Optional[Callable[[int], None]] = None,
                 log: Optional[object] = None, error_log: Optional[object] = None,
                 environ: Optional[dict] = None, **kwargs) -> None:
        # ssl_context=: the handshake runs before handle_connection, so it gets its own deadline
        kwargs = with_handshake_deadline(kwargs, limits)
        super().__init__(listener, self.handle_connection, **kwargs)
        self.application = application
        self.init_tracking(limits, on_refused, on_connection)
        self.environ = self.base_environ(error_log, environ or {})

    def base_environ(self, error_log, extra: dict) -> dict:
        """The environ keys that are the same for every request, built once."""
        address = self.address
        host, port = (address[0], str(address[1])) if isinstance(address, tuple) else ("", "")
        environ = {
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_SOFTWARE": "gatekeeper-fast gevent/%d.%d Python/%d.%d"
                               % (gevent.version_info[:2] + sys.version_info[:2]),
            "SERVER_NAME": host, "SERVER_PORT": port, "SCRIPT_NAME": "",
            "wsgi.version": (1, 0), "wsgi.url_scheme": "https" if self.ssl_enabled else "http",
            "wsgi.errors": error_log if error_log is not None else sys.stderr,
            "wsgi.multithread": False, "wsgi.multiprocess": False, "wsgi.run_once": False,
            "wsgi.input_terminated": True,
        }
        environ.update(extra)
        return environ

    def handle_connection(self, sock, address) -> None:
        sock.settimeout(self.limits.idle_timeout)  # idle keep-alive, and stalled reads/writes
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Connection(self, sock, address)
        self.connection_opened(conn)
        try:
            conn.serve()
        finally:
            self.connection_closed(conn)
            try:
                sock.close()
            except OSError:
                pass

    def request_refused(self, conn: Connection, status: int) -> None:
        request = conn.parsing
        target = request.target.decode("latin-1") if request is not None else ""
        try:
            method = conn.parser.get_method().decode("ascii")
        except Exception:
            method = "-"
        self.report_refused(conn.peer[0], method, target, status)
