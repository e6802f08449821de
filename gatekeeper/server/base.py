"""What every HTTP server of the gateway shares: the client-side limits of operations.md, the one contract
both connection types follow (431 budget, slowloris deadline, idle wake-up, head + first chunk in one send,
refused bodies, failure answers), connection tracking with graceful drain, and the listeners (sockets,
addresses, entry points, TLS with a handshake deadline).

The server knows WSGI and callbacks only: what a refused request or a new connection means to metrics
and the access log is the caller's (``on_refused``, ``on_connection``).
"""
from __future__ import annotations

import contextlib
import email.message
import email.parser
import logging
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import gevent
import gevent.event
from gevent.pywsgi import _InvalidClientRequest

from gatekeeper.errors import UpstreamAborted
from gatekeeper.wsgi import BODY_REFUSED, ROUTER, UPSTREAM, Environ, log_path

SKIP_AFTER_431 = 1024 * 1024   # header bytes read past the limit before answering 431, so the client sees it
COALESCE_LIMIT = 64 * 1024     # a first body chunk up to this size is sent with the response head
RESPONSE_431 = (b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n"
                b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: 43\r\n\r\n"
                b"431 Request Header Fields Too Large: limit\r\n")
RESPONSE_500 = (b"HTTP/1.1 500 Internal Server Error\r\nConnection: close\r\nContent-Type: text/plain; "
                b"charset=utf-8\r\nContent-Length: 22\r\n\r\nInternal Server Error\n")
RESPONSE_502 = (b"HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\nContent-Type: text/plain; "
                b"charset=utf-8\r\nContent-Length: 16\r\n\r\n502 Bad Gateway\n")
HEADER_BLOCK_ENDS = (b"\n\r\n", b"\n\n")   # an empty line after a line: the end of a header block
ACCEPT_BATCH = 100            # connections accepted per wake-up of a listener (gevent's own default)
TURN_BURST = 16               # requests a connection may start in one loop iteration while no other is ready
server_log = logging.getLogger("gatekeeper.server")


@dataclass(frozen=True)
class ServerLimits:
    """Client-side limits (operations.md "Limits"): header bytes, idle seconds, optional body bytes."""

    max_header_bytes: int = 64 * 1024
    idle_timeout: float = 60.0
    max_body_bytes: Optional[int] = None
    read_timeout: float = 60.0    # a request body, from its first read to its end (Traefik's readTimeout)


# --- the header block: budget (431), folding, deadline (slowloris) --------------------------------------

class HeadersTooLarge(ValueError):
    """The request's header block is larger than ``ServerLimits.max_header_bytes``; ``tail`` holds the
    last bytes read, where the block's end may already be."""

    def __init__(self, message: str, tail: bytes = b"") -> None:
        super().__init__(message)
        self.tail = tail


class ObsFold(_InvalidClientRequest):  # type: ignore[misc]
    """A folded header line: answered 400 (pywsgi's client-error path)."""


def read_header_block(rfile: Any, budget: int) -> bytes:
    """The header lines up to and including the empty line; HeadersTooLarge past ``budget`` bytes."""
    lines: List[bytes] = []
    used = 0
    while True:
        line = rfile.readline(budget - used + 1)
        used += len(line)
        if used > budget:
            raise HeadersTooLarge(f"request headers larger than {budget} bytes", (lines[-1:] or [b""])[0] + line)
        if line[:1] in (b" ", b"\t"):
            # obs-fold (RFC 9112 5.2): refuse rather than guess how an upstream would join the lines
            raise ObsFold("obsolete line folding in request headers")
        lines.append(line)
        if line in (b"\r\n", b"\n", b""):
            return b"".join(lines)


def skip_header_block(recv: Callable[[int], bytes], seen: bytes, limit: int = SKIP_AFTER_431) -> None:
    """Read (and drop) the rest of a too-large header block, at most ``limit`` bytes, so the client is
    reading when the 431 arrives instead of being reset mid-send. ``seen``: the bytes read last."""
    if any(end in seen for end in HEADER_BLOCK_ENDS):
        return
    skipped, tail = 0, seen[-2:]
    try:
        while skipped < limit:
            data = recv(64 * 1024)
            if not data or any(end in tail + data for end in HEADER_BLOCK_ENDS):
                return
            skipped += len(data)
            tail = data[-2:]
    except OSError:
        return


def parse_header_block(block: bytes) -> email.message.Message:
    """What pywsgi's own parser returns (http.client's parse, minus its 100-header cap)."""
    from gevent.pywsgi import OldMessage
    message: email.message.Message = email.parser.Parser(_class=OldMessage).parsestr(block.decode("iso-8859-1"))
    return message


class BodyDeadline:
    """``--read-timeout`` for one request body, from its first wait for bytes. The idle timeout bounds each
    read; this bounds them all, so a body dribbled a byte at a time just inside the idle timeout cannot hold
    the connection, and the upstream connection opened for it, for ever (Traefik's ``readTimeout``)."""

    __slots__ = ("at", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds, self.at = seconds, 0.0

    def check(self) -> None:
        """Before waiting for more body bytes: ConnectionError (the body is incomplete) once it passed."""
        now = time.monotonic()
        if not self.at:
            self.at = now + self.seconds
        elif now > self.at:
            raise ConnectionError("request body incomplete: not received within --read-timeout")


def header_deadline(limits: ServerLimits) -> gevent.Timeout:
    """The whole header block must arrive within the idle timeout: the timeout bounds each read, this
    bounds them all, so a client trickling a byte at a time (slowloris) cannot hold a connection."""
    return gevent.Timeout(limits.idle_timeout, socket.timeout("request headers not received in time"))


# --- the response: head + first chunk, failures, refused bodies -------------------------------------------

def chunk(data: bytes) -> bytes:
    """One chunk of a chunked response body."""
    return b"%x\r\n" % len(data) + data + b"\r\n"


def send_head(send: Callable[[Union[bytes, bytearray]], Any], head: bytearray, data: bytes) -> None:
    """Send the response head and the first (framed) body bytes; a first chunk up to COALESCE_LIMIT goes
    in the same send: one packet, not two (wrk saw +25-30% req/s, docs/performance.md)."""
    if data and len(data) <= COALESCE_LIMIT:
        head += data
        data = b""
    send(head)
    if data:
        send(data)


def body_refused(environ: Environ) -> bool:
    """Whether the app refused the request body unread (413): the connection then closes instead of
    reading and discarding the whole body to reach the next request."""
    return bool(environ.get(BODY_REFUSED))


def log_request_error(environ: Environ, exc: BaseException) -> None:
    """The one line a failed request leaves in the error log, on every server.

    gevent's own hooks (pywsgi's ``handle_error``, the hub's) print the whole WSGI environ: the
    ``Authorization`` and ``Cookie`` headers, a ``?jwt=`` query, the verified claims. This line holds the
    exception type and message, the router, the method, the path without its query string and the
    upstream, nothing else. An upstream that failed mid-response is a warning without a traceback (it is
    the upstream's fault, and expected); anything else is an error, with a traceback at DEBUG level.
    """
    where = f"router {environ.get(ROUTER) or '-'}, {environ.get('REQUEST_METHOD', '-')} {log_path(environ)}"
    message = " ".join(str(exc).split())[:300]
    if isinstance(exc, UpstreamAborted):
        server_log.warning("response cut: upstream %s failed (%s): %s", environ.get(UPSTREAM) or "-", where, message)
    else:
        server_log.error("request failed (%s): %s: %s", where, type(exc).__name__, message,
                         exc_info=exc if server_log.isEnabledFor(logging.DEBUG) else None)


def failure_response(exc: BaseException) -> bytes:
    """What the client gets when the app fails before anything was sent: 502 for an upstream, else 500."""
    return RESPONSE_502 if isinstance(exc, UpstreamAborted) else RESPONSE_500


# --- connections: tracking, refusals, drain ---------------------------------------------------------------

@dataclass(frozen=True)
class Refusal:
    """A request the server answered itself, before any app (431): what ``on_refused`` is told."""

    peer: str
    method: str
    path: str      # without the query string: a token may travel there
    status: int

    @classmethod
    def of(cls, peer: str, method: str, target: str, status: int) -> Refusal:
        return cls(peer or "-", method or "-", target.partition("?")[0] or "-", status)


class ClientConnection:
    """One client connection as :class:`ConnectionTracking` sees it, on either server."""

    waiting_for_request = False   # between requests: a drain may close it at once
    turn_taken_in = -1            # the event-loop iteration this connection last started a request in
    turns_in_a_row = 0            # requests it started in that iteration

    def client_socket(self) -> socket.socket:
        raise NotImplementedError

    def refused_request(self) -> Tuple[str, str, str]:
        """(peer, method, target) of the request being refused, as far as it was read."""
        raise NotImplementedError

    def take_turn(self) -> None:
        """Called before each request: a connection that already started one in this event-loop iteration
        lets the others go first when any is ready, and after ``TURN_BURST`` requests in a row regardless.

        A connection whose next request is already there (pipelined, or a client and an upstream that
        answer faster than the gateway) never waits on a socket, so it never gives the loop back: one
        client held the process for hundreds of requests while every other connection waited. Ready
        others are the watchers this iteration's poll found and not yet run (``pendingcnt``); what arrived
        since, the next poll finds, within a burst. The yield is a timer of 0 s: it fires in the next
        iteration, after its poll (``sleep(0)`` is a callback, run again before any I/O; a timer of 1 µs
        could make libev's poll block for its 1 ms minimum when the timer is not yet due). With nothing
        else ready (one client) a connection yields once per burst, not once per request.
        """
        hub = gevent.get_hub()
        loop = hub.loop
        if loop.iteration != self.turn_taken_in:
            self.turn_taken_in, self.turns_in_a_row = loop.iteration, 1
            return
        self.turns_in_a_row += 1
        if loop.pendingcnt or self.turns_in_a_row > TURN_BURST:
            with loop.timer(0) as turn:   # already due: the poll before it does not block
                hub.wait(turn)
            self.turn_taken_in, self.turns_in_a_row = loop.iteration, 1

    def wake_if_idle(self) -> None:
        """During a drain: an idle keep-alive connection is closed now rather than after idle_timeout."""
        if self.waiting_for_request:
            try:
                self.client_socket().shutdown(socket.SHUT_RD)
            except OSError:
                pass


class ConnectionTracking:
    """Connection tracking, refused-request reporting and graceful drain, shared by both servers.

    ``on_refused(Refusal)`` sees requests refused before the app (431); ``on_connection(+1/-1)`` follows
    open connections (the metrics gauge).
    """

    # A whole burst of new connections per wake-up of the listener: accepting one a loop iteration, a burst
    # waited behind every busy connection's turn (the 64th of wrk's connections got its first answer 320 ms
    # late; c64 p99 was 5-14x p50). Workers each have their own socket (listen.listen_group).
    max_accept = ACCEPT_BATCH

    def init_tracking(self, limits: Optional[ServerLimits], on_refused: Optional[Callable[[Refusal], None]],
                      on_connection: Optional[Callable[[int], None]]) -> None:
        self.limits = limits or ServerLimits()
        self.on_refused = on_refused
        self.on_connection = on_connection
        self.connections: set[ClientConnection] = set()
        self.draining = False
        self.drained = gevent.event.Event()
        self.drained.set()

    @contextlib.contextmanager
    def tracking(self, conn: ClientConnection) -> Iterator[None]:
        """While a connection is served: the idle timeout on its socket (idle keep-alive, and stalled
        reads and writes), counted in the gauge, seen by a drain."""
        conn.client_socket().settimeout(self.limits.idle_timeout)
        self.connections.add(conn)
        self.drained.clear()
        if self.on_connection is not None:
            self.on_connection(1)
        try:
            yield
        finally:
            self.connections.discard(conn)
            if self.on_connection is not None:
                self.on_connection(-1)
            if not self.connections:
                self.drained.set()

    def headers_too_large(self, conn: ClientConnection, recv: Callable[[int], bytes], seen: bytes) -> bytes:
        """The 431 path of both servers: skip the rest of the block, report the refusal, the answer."""
        skip_header_block(recv, seen)
        if self.on_refused is not None:
            self.on_refused(Refusal.of(*conn.refused_request(), 431))
        return RESPONSE_431

    def begin_drain(self) -> None:
        """Stop accepting, and close connections that wait for a next request."""
        self.draining = True
        self.close()  # type: ignore[attr-defined]
        for conn in list(self.connections):
            conn.wake_if_idle()


def drain(servers: Sequence[ConnectionTracking], grace: float) -> bool:
    """Stop every server from accepting, then wait up to ``grace`` seconds for in-flight requests.

    True when everything finished in time (what is left is cut when the process exits).
    """
    for server in servers:
        server.begin_drain()
    deadline = gevent.get_hub().loop.now() + grace
    return all(server.drained.wait(max(0.0, deadline - gevent.get_hub().loop.now())) for server in servers)


def peer_of(address: Any) -> str:
    """The client's IP address, or ``-`` (a UNIX socket has none)."""
    return str(address[0]) if isinstance(address, tuple) else "-"


class HandshakeAbandoned(gevent.GreenletExit):  # type: ignore[misc]
    """A TLS handshake that failed or did not finish in time; the connection is closed.

    A GreenletExit, so the connection's greenlet ends quietly: a client can cause it at will, and gevent
    would otherwise print a traceback per connection.
    """


class HandshakeDeadline:
    """An ``ssl_context`` for gevent's servers whose handshake must finish within ``seconds``, or the
    connection is closed.

    gevent wraps an accepted socket and handshakes before the handler runs, with no timeout: a client that
    connected and never sent its ClientHello (or trickled it a byte at a time) held the connection, and a
    file descriptor, forever. The socket timeout bounds each read; a gevent.Timeout bounds the whole.
    :func:`with_handshake_deadline` puts one in place of a plain context (``make_server`` does).
    """

    def __init__(self, context: ssl.SSLContext, seconds: float) -> None:
        self.context, self.seconds = context, seconds

    def wrap_socket(self, sock: socket.socket, server_side: bool = True, **kwargs: Any) -> ssl.SSLSocket:
        sock.settimeout(self.seconds)
        tls = self.context.wrap_socket(sock, server_side=server_side, do_handshake_on_connect=False, **kwargs)
        try:
            with gevent.Timeout(self.seconds, socket.timeout("TLS handshake not finished in time")):
                tls.do_handshake()
        except (OSError, gevent.Timeout) as exc:   # ssl.SSLError and socket.timeout are OSErrors
            tls.close()
            # debug: a client can cause this at will, so it is no warning (no peer data is in it)
            logging.getLogger("gatekeeper.tls").debug("TLS handshake abandoned: %s", exc)
            raise HandshakeAbandoned() from exc
        return tls


def with_handshake_deadline(kwargs: Dict[str, Any], limits: Optional[ServerLimits]) -> Dict[str, Any]:
    """``kwargs`` with a bare ``ssl_context`` replaced by a :class:`HandshakeDeadline` of the idle timeout."""
    context = kwargs.get("ssl_context")
    if isinstance(context, ssl.SSLContext):
        kwargs = {**kwargs, "ssl_context": HandshakeDeadline(context, (limits or ServerLimits()).idle_timeout)}
    return kwargs
