"""The default HTTP/1.1 WSGI server: gevent's StreamServer with httptools' C parser (llhttp), following
the contract of :mod:`gatekeeper.server.base` as the pywsgi layer does, behind the same ``make_server``.

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
from collections import deque
from typing import Any, Callable, Deque, Dict, Optional, Tuple
from urllib.parse import unquote

import gevent
import gevent.event
import httptools
from gevent.server import StreamServer

from gatekeeper.server.base import (
    ClientConnection,
    ConnectionTracking,
    Refusal,
    ServerLimits,
    header_deadline,
    with_handshake_deadline,
)
from gatekeeper.server.message import Input, Reply, Request
from gatekeeper.wsgi import RAW_URI, Environ, WSGIApp
from gatekeeper.wsgi import environ_key as header_environ_key

RECV_SIZE = 64 * 1024
FEED_SLICE = 4096          # bytes handed to the parser at a time once a request is waiting (pipelining)
MAX_TARGET = 8192          # request-target bytes (pywsgi's request-line cap): 414 past it
HEADER_KEY_CACHE_SIZE = 512

RESPONSE_400 = (b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n"
                b"Content-Length: 12\r\n\r\nBad Request\n")
RESPONSE_414 = (b"HTTP/1.1 414 URI Too Long\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n"
                b"Content-Length: 13\r\n\r\nURI Too Long\n")
REFUSALS = {400: RESPONSE_400, 414: RESPONSE_414}   # 431: base's, with its skip and report

_header_keys: Dict[bytes, Optional[str]] = {}
_UNSEEN = ""   # a name not in _header_keys (every cached key is None or starts with HTTP_ or CONTENT_)


def environ_key(name: bytes) -> Optional[str]:
    """The environ key of a header name as llhttp hands it over, ``b"X-Foo"`` -> ``"HTTP_X_FOO"``: the
    server's own, beside :func:`gatekeeper.wsgi.environ_key` (whose rule it applies), because its input is
    bytes off the wire, it is cached for the common names (it runs for every header of every request), and
    it gives None for names with ``_``: pywsgi drops those, as they would be indistinguishable from ``-`` in
    the environ (a spoofing route).

    >>> environ_key(b"X-Foo"), environ_key(b"Content-Length"), environ_key(b"X_Foo")
    ('HTTP_X_FOO', 'CONTENT_LENGTH', None)
    """
    if name in _header_keys:
        return _header_keys[name]
    text = name.decode("latin-1")
    key = None if "_" in text else header_environ_key(text)
    if len(_header_keys) < HEADER_KEY_CACHE_SIZE:
        _header_keys[name] = key
    return key

class Refused(Exception):
    """The request is answered by the server itself (400/414/431) and the connection closed."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status

class Connection(ClientConnection):
    """One client connection: reads, parses (this object is httptools' protocol), runs the app per request
    in order, writes the response with its framing."""

    def __init__(self, server: FastServer, sock: socket.socket, address: Any) -> None:
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
        self.upgrade_tail = b""   # bytes after an upgrade request's head
        self.eof = False
        self.head_sent = False
        self.peer = (str(address[0]), str(address[1])) if isinstance(address, tuple) else ("", "")

    # --- httptools protocol -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.parsing = Request(self.server.environ.copy())

    def on_url(self, url: bytes) -> None:
        request = self.parsing
        assert request is not None   # llhttp calls back only between message begin and complete
        request.target += url
        if len(request.target) > MAX_TARGET:
            raise Refused(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self.parsing
        assert request is not None   # llhttp calls back only between message begin and complete
        request.size += len(name) + len(value) + 4
        if request.size > self.limits.max_header_bytes:
            raise Refused(431)
        if not request.in_head:
            return   # a chunked body's trailer: it arrives after routing and the checks ran, never a header
        key = _header_keys.get(name, _UNSEEN)   # the cache without a call: this runs for every header
        if key is _UNSEEN:
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
        assert request is not None   # llhttp calls back only between message begin and complete
        parser = self.parser
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise Refused(400)
        environ = request.environ
        method = parser.get_method().decode("ascii")
        if method == "HEAD" and int(environ.get("CONTENT_LENGTH") or 0):
            raise Refused(400)   # pywsgi: "Unexpected Content-Length"
        target = request.target.decode("latin-1")
        path, _, query = target.partition("?")
        environ["REQUEST_METHOD"] = method
        environ[RAW_URI] = target
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
        assert request is not None   # llhttp calls back only between message begin and complete
        if not request.discard:
            request.body.append(body)

    def on_message_complete(self) -> None:
        assert self.parsing is not None
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
        except httptools.HttpParserUpgrade as exc:
            # Served as a plain request, then closed: nothing after it is parsed. What follows its head is
            # the new protocol's, kept for a switch (server/upgrade.py).
            self.upgrade = True
            offset = exc.args[0] if exc.args and isinstance(exc.args[0], int) else len(data)
            self.upgrade_tail, self.backlog = data[offset:] + self.backlog, b""
        except httptools.HttpParserError as exc:
            self.refused = exc.__context__.status if isinstance(exc.__context__, Refused) else 400
            self.backlog, self.refused_in = b"", data
            if self.pending and self.pending[-1] is self.parsing:
                # llhttp refuses some heads only after on_headers_complete queued them (an unknown
                # Transfer-Encoding): such a request is answered 400, never served
                self.pending.pop()
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
                    deadline = header_deadline(self.limits)
                    deadline.start()
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
        try:
            if status == 431:
                self.send(self.server.headers_too_large(self, self.sock.recv, self.refused_in))
            else:
                self.send(REFUSALS[status])
        except OSError:
            pass

    def client_socket(self) -> socket.socket:
        return self.sock

    def switchable(self) -> bool:
        """Whether the request being served is the one llhttp paused at for an upgrade (nothing after it
        was parsed), so its connection may be handed over."""
        return self.upgrade and not self.pending

    def refused_request(self) -> Tuple[str, str, str]:
        request = self.parsing
        target = request.target.decode("latin-1") if request is not None else ""
        try:
            method = self.parser.get_method().decode("ascii")
        except Exception:
            method = "-"
        return self.peer[0], method, target

    # --- writing ------------------------------------------------------------------------------

    def send(self, data: bytes | bytearray) -> None:
        sent = self.sock.send(data)
        if sent < len(data):
            self.sock.sendall(memoryview(data)[sent:])

    def serve(self) -> None:
        """Requests in order until one ends the connection, one per turn of the event loop."""
        while True:
            request = self.next_request()
            if request is None:
                return
            self.take_turn()
            if not Reply(self, request).run():
                return

class FastServer(ConnectionTracking, StreamServer):  # type: ignore[misc]
    """A WSGI server on StreamServer + httptools with :class:`ServerLimits`, connection tracking and drain.

    The same hooks as the pywsgi layer: ``on_refused(Refusal)`` sees requests refused before the app
    (431); ``on_connection(+1/-1)`` follows open connections (the metrics gauge).

    Usage (not run here: it binds a port)::

        server = FastServer(listen_socket("127.0.0.1", 8080), app, limits=ServerLimits(idle_timeout=30))
        server.serve_forever()
    """

    def __init__(self, listener: socket.socket, application: WSGIApp, *, limits: Optional[ServerLimits] = None,
                 on_refused: Optional[Callable[[Refusal], None]] = None,
                 on_connection: Optional[Callable[[int], None]] = None, log: Optional[object] = None,
                 error_log: Optional[object] = None, environ: Optional[Environ] = None, **kwargs: Any) -> None:
        # ssl_context=: the handshake runs before handle_connection, so it gets its own deadline
        kwargs = with_handshake_deadline(kwargs, limits)
        super().__init__(listener, self.handle_connection, **kwargs)
        self.application = application
        self.init_tracking(limits, on_refused, on_connection)
        self.environ = self.base_environ(error_log, environ or {})

    def base_environ(self, error_log: Optional[object], extra: Environ) -> Environ:
        """The environ keys that are the same for every request, built once."""
        address = self.address
        host, port = (address[0], str(address[1])) if isinstance(address, tuple) else ("", "")
        environ: Environ = {
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

    def handle_connection(self, sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Connection(self, sock, address)
        try:
            with self.tracking(conn):
                conn.serve()
        finally:
            try:
                sock.close()
            except OSError:
                pass
