"""``--server pywsgi``: gevent's WSGI server as a thin layer over :mod:`gatekeeper.server.base`.

pywsgi parses the request itself; this layer plugs the shared contract into its hooks: the header block
read under base's budget and deadline, base's 431 path, head + first chunk in one send, refused bodies
left unread, one log line per failure (never pywsgi's, which prints the environ). pywsgi decodes
``PATH_INFO``; a gateway must forward the path exactly as received, so the raw request target goes in
``environ["RAW_URI"]`` (the name gunicorn uses). A request offering an upgrade gets base's hand-off of the
socket (server/upgrade.py), with the bytes pywsgi's reader already holds.

Kept as the fallback and the independent parser the differential tests compare the fast server with;
it costs about 4x the fast server's CPU a request (hello world, server CPU from /proc: 95-125 µs against
22-27 µs at one connection), so it is not the default.
"""
from __future__ import annotations

import email.message
import socket
import ssl
from typing import Any, Callable, Optional, Tuple

import gevent
from gevent.pywsgi import _BAD_REQUEST_RESPONSE, Input, WSGIHandler, WSGIServer  # pywsgi answers these with 400

from gatekeeper.server.base import (
    BodyDeadline,
    ClientConnection,
    ConnectionTracking,
    HeadersTooLarge,
    Refusal,
    ServerLimits,
    body_refused,
    chunk,
    failure_response,
    header_deadline,
    log_request_error,
    parse_header_block,
    peer_of,
    read_header_block,
    send_head,
    server_log,
)
from gatekeeper.server.upgrade import Offer, offered, switching_head
from gatekeeper.wsgi import RAW_URI, UPGRADE, Environ, WSGIApp


class DeadlineReader:
    """pywsgi's body reads (``read``, ``readline``) through the connection's reader, each first checking
    the body's :class:`~gatekeeper.server.base.BodyDeadline`."""

    def __init__(self, rfile: Any, deadline: BodyDeadline) -> None:
        self.rfile, self.deadline = rfile, deadline

    def read(self, *args: Any) -> bytes:
        self.deadline.check()
        data: bytes = self.rfile.read(*args)
        return data

    def readline(self, *args: Any) -> bytes:
        self.deadline.check()
        line: bytes = self.rfile.readline(*args)
        return line


class GatewayHandler(ClientConnection, WSGIHandler):  # type: ignore[misc]
    """pywsgi's handler following base's contract (limits, tracking, drain, failures)."""

    headers_sent: bool   # pywsgi's, unannotated there

    def client_socket(self) -> socket.socket:
        sock: socket.socket = self.socket
        return sock

    def refused_request(self) -> Tuple[str, str, str]:
        method, _, rest = (self.requestline or "").partition(" ")
        return peer_of(self.client_address), method, rest.rpartition(" ")[0]

    def get_environ(self) -> Environ:
        env: Environ = super().get_environ()
        env[RAW_URI] = self.path
        body = env.get("wsgi.input")
        if isinstance(body, Input):   # an upgrade's is the connection's raw reader: not bounded
            body.rfile = DeadlineReader(self.rfile, BodyDeadline(self.server.limits.read_timeout))
        protocols = offered(env)
        if protocols:
            env[UPGRADE] = Offer(protocols, self.detach)
        return env

    def detach(self) -> Tuple[socket.socket, bytes]:
        """server/upgrade.py's hand-off: the 101 head the app set goes out, the connection leaves HTTP."""
        if self.headers_sent or self.status is None:
            raise ValueError("the response already started: too late to switch protocols")
        status = bytes(self.status).decode("latin-1")
        headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in self.response_headers]
        self._sendall(switching_head(status, headers))
        self.headers_sent = self.close_connection = True
        self.response_use_chunked = False
        return self.socket, self.buffered()

    def buffered(self) -> bytes:
        """What pywsgi's reader holds past the request head, without waiting for more."""
        sock, timeout = self.socket, self.socket.gettimeout()
        sock.settimeout(0)
        try:
            return self.rfile.read1(64 * 1024) or b""
        except (BlockingIOError, ssl.SSLWantReadError):
            return b""
        finally:
            sock.settimeout(timeout)

    def _write_with_headers(self, data: bytes) -> None:
        """pywsgi's, with base's one send for the head and a small first chunk."""
        self.headers_sent = True
        self.finalize_headers()
        head = bytearray(b"HTTP/1.1 ")
        head += self.status
        head += b"\r\n"
        for header, value in self.response_headers:
            head += header + b": " + value + b"\r\n"
        head += b"\r\n"
        send_head(self._sendall, head, chunk(data) if data and self.response_use_chunked else data)

    def handle(self) -> None:
        with self.server.tracking(self):
            super().handle()

    def read_requestline(self) -> str:
        self.take_turn()   # first: a drain that begins while this connection waits its turn still counts
        if self.server.draining:
            return ""  # closes the connection: no new request once the drain began
        self.waiting_for_request = True
        try:
            line: str = super().read_requestline()
            return line
        finally:
            self.waiting_for_request = False

    def MessageClass(self, rfile: Any, *args: Any) -> email.message.Message:
        with header_deadline(self.server.limits):
            block = read_header_block(rfile, self.server.limits.max_header_bytes)
        return parse_header_block(block)

    def _handle_client_error(self, ex: BaseException) -> Tuple[str, bytes]:
        """400 (431 for too many header bytes) with one line of our own: pywsgi's quotes the request line,
        which may carry a ``?jwt=`` token, and prints a traceback for some errors."""
        if isinstance(ex, HeadersTooLarge):
            return ("431", self.server.headers_too_large(self, self.rfile.read1, ex.tail))
        server_log.info("bad request from %s: %s", peer_of(self.client_address), str(ex).partition(":")[0][:100])
        return ("400", _BAD_REQUEST_RESPONSE)

    def handle_error(self, t: Any, v: BaseException, tb: Any) -> None:
        """An app or body failure: base's one-line record, then 500 (502 for an upstream) if nothing was
        sent yet, else the connection is cut."""
        if not isinstance(v, gevent.GreenletExit):
            log_request_error(self.environ or {}, v)
        self.close_connection = True
        if not self.headers_sent:
            try:
                self._sendall(failure_response(v))
            except OSError:
                pass

    def _log_error(self, t: Any, v: BaseException, tb: Any) -> None:
        """Anything else pywsgi reports through the hub gets the same record, without the environ."""
        if not isinstance(v, gevent.GreenletExit):
            log_request_error(self.environ or {}, v)

    def log_request(self) -> None:
        """pywsgi's own access line is replaced by the access log the app edge writes."""

    def run_application(self) -> None:
        try:
            super().run_application()
        finally:
            if body_refused(self.environ):
                self.wsgi_input._chunked_input_error = True
                self.close_connection = True


class GatewayServer(ConnectionTracking, WSGIServer):  # type: ignore[misc]
    """pywsgi's server with :class:`ServerLimits`, connection tracking and drain (base's contract)."""

    def __init__(self, listener: socket.socket, application: WSGIApp, *, limits: Optional[ServerLimits] = None,
                 on_refused: Optional[Callable[[Refusal], None]] = None,
                 on_connection: Optional[Callable[[int], None]] = None, **kwargs: Any) -> None:
        kwargs.setdefault("handler_class", GatewayHandler)
        super().__init__(listener, application, **kwargs)
        self.init_tracking(limits, on_refused, on_connection)


__all__ = ["GatewayHandler", "GatewayServer"]
