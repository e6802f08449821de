"""The only module that imports gevent's server: sockets, the WSGI handler, listeners, limits and drain.

pywsgi decodes ``PATH_INFO``; a gateway must forward the path exactly as received, so the handler also
puts the raw request target in ``environ["RAW_URI"]`` (the name gunicorn uses). The handler also enforces
the client-side limits of operations.md: a total request-header budget (431 past it), an idle timeout on
client sockets, and a graceful drain that closes idle keep-alive connections at once and lets busy ones
finish their current request.
"""
from __future__ import annotations

import email.parser
import logging
import socket
import ssl
from dataclasses import dataclass
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import gevent
import gevent.event
from gevent.pywsgi import (  # pywsgi answers these with 400
    _BAD_REQUEST_RESPONSE,
    WSGIHandler,
    WSGIServer,
    _InvalidClientRequest,
)

from gatekeeper.proxy.balancer import log_path
from gatekeeper.proxy.client import UpstreamAborted

WSGIApp = Callable[[dict, Callable], Iterable[bytes]]
BODY_REFUSED = "gatekeeper.body_refused"
SKIP_AFTER_431 = 1024 * 1024   # header bytes read past the limit before answering 431, so the client sees it
RESPONSE_431 = (b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n"
                b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: 43\r\n\r\n"
                b"431 Request Header Fields Too Large: limit\r\n")


@dataclass(frozen=True)
class ServerLimits:
    """Client-side limits (operations.md "Limits"): header bytes, idle seconds, optional body bytes."""

    max_header_bytes: int = 64 * 1024
    idle_timeout: float = 60.0
    max_body_bytes: Optional[int] = None


class HeadersTooLarge(ValueError):
    """The request's header block is larger than ``ServerLimits.max_header_bytes``."""


class ObsFold(_InvalidClientRequest):
    """A folded header line: answered 400 by pywsgi."""


def read_header_block(rfile, budget: int) -> bytes:
    """The header lines up to and including the empty line; HeadersTooLarge past ``budget`` bytes."""
    lines: List[bytes] = []
    used = 0
    while True:
        line = rfile.readline(budget - used + 1)
        used += len(line)
        if used > budget:
            raise HeadersTooLarge(f"request headers larger than {budget} bytes")
        if line[:1] in (b" ", b"\t"):
            # obs-fold (RFC 9112 5.2): refuse rather than guess how an upstream would join the lines
            raise ObsFold("obsolete line folding in request headers")
        lines.append(line)
        if line in (b"\r\n", b"\n", b""):
            return b"".join(lines)


def skip_header_block(rfile, limit: int) -> None:
    """Read (and drop) the rest of a too-large header block, at most ``limit`` bytes, so the client is
    reading when the 431 arrives instead of being reset mid-send."""
    skipped = 0
    try:
        while skipped < limit:
            line = rfile.readline(64 * 1024)
            skipped += len(line)
            if line in (b"\r\n", b"\n", b""):
                return
    except OSError:
        return


def parse_header_block(block: bytes):
    """What pywsgi's own parser returns (http.client's parse, minus its 100-header cap)."""
    from gevent.pywsgi import OldMessage  # type: ignore[attr-defined]
    return email.parser.Parser(_class=OldMessage).parsestr(block.decode("iso-8859-1"))


COALESCE_LIMIT = 64 * 1024  # a first body chunk up to this size is sent with the response head
RESPONSE_500 = (b"HTTP/1.1 500 Internal Server Error\r\nConnection: close\r\nContent-Type: text/plain; "
                b"charset=utf-8\r\nContent-Length: 22\r\n\r\nInternal Server Error\n")
RESPONSE_502 = (b"HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\nContent-Type: text/plain; "
                b"charset=utf-8\r\nContent-Length: 16\r\n\r\n502 Bad Gateway\n")
server_log = logging.getLogger("gatekeeper.server")


def log_request_error(environ: dict, exc: BaseException) -> None:
    """The one line a failed request leaves in the error log, on both servers.

    gevent's own hooks (pywsgi's ``handle_error``, the hub's) print the whole WSGI environ: the
    ``Authorization`` and ``Cookie`` headers, a ``?jwt=`` query, the verified claims. This line holds the
    exception type and message, the router, the method, the path without its query string and the
    upstream, nothing else. An upstream that failed mid-response is a warning without a traceback (it is
    the upstream's fault, and expected); anything else is an error, with a traceback at DEBUG level.
    """
    where = (f"router {environ.get('gatekeeper.router') or '-'}, {environ.get('REQUEST_METHOD', '-')} "
             f"{log_path(environ)}")
    message = " ".join(str(exc).split())[:300]
    if isinstance(exc, UpstreamAborted):
        server_log.warning("response cut: upstream %s failed (%s): %s",
                           environ.get("gatekeeper.upstream") or "-", where, message)
    else:
        server_log.error("request failed (%s): %s: %s", where, type(exc).__name__, message,
                         exc_info=exc if server_log.isEnabledFor(logging.DEBUG) else None)


def failure_response(exc: BaseException) -> bytes:
    """What the client gets when the app fails before anything was sent: 502 for an upstream, else 500."""
    return RESPONSE_502 if isinstance(exc, UpstreamAborted) else RESPONSE_500


class GatewayHandler(WSGIHandler):
    """pywsgi's handler, plus ``RAW_URI``, header and idle limits, connection tracking and drain."""

    waiting_for_request = False

    def get_environ(self) -> dict:
        env = super().get_environ()
        env["RAW_URI"] = self.path
        return env

    def _write_with_headers(self, data: bytes) -> None:
        """pywsgi's, but the head and a small first chunk go out in one send (one packet, not two)."""
        if not data or len(data) > COALESCE_LIMIT:
            return super()._write_with_headers(data)
        self.headers_sent = True
        self.finalize_headers()
        out = bytearray(b"HTTP/1.1 ")
        out += self.status
        out += b"\r\n"
        for header, value in self.response_headers:
            out += header + b": " + value + b"\r\n"
        out += b"\r\n"
        if self.response_use_chunked:
            out += b"%x\r\n" % len(data) + data + b"\r\n"
        else:
            out += data
        self._sendall(out)

    def handle(self) -> None:
        server = self.server
        self.socket.settimeout(server.limits.idle_timeout)  # idle keep-alive, and stalled reads/writes
        server.connection_opened(self)
        try:
            super().handle()
        finally:
            server.connection_closed(self)

    def read_requestline(self) -> str:
        if self.server.draining:
            return ""  # closes the connection: no new request once the drain began
        self.waiting_for_request = True
        try:
            return super().read_requestline()
        finally:
            self.waiting_for_request = False

    def MessageClass(self, rfile, *args):
        # The idle timeout bounds each read; this bounds the whole header block, so a client trickling a
        # byte at a time (slowloris) cannot hold a connection past it.
        deadline = socket.timeout("request headers not received in time")
        with gevent.Timeout(self.server.limits.idle_timeout, deadline):
            block = read_header_block(rfile, self.server.limits.max_header_bytes)
        return parse_header_block(block)

    def _handle_client_error(self, ex: BaseException):
        """400 (431 for too many header bytes) with one line of our own: pywsgi's quotes the request line,
        which may carry a ``?jwt=`` token, and prints a traceback for some errors."""
        if isinstance(ex, HeadersTooLarge):
            skip_header_block(self.rfile, SKIP_AFTER_431)
            self.server.request_refused(self, 431)
            return ("431", RESPONSE_431)
        peer = self.client_address[0] if isinstance(self.client_address, tuple) else "-"
        server_log.info("bad request from %s: %s", peer, str(ex).partition(":")[0][:100])
        return ("400", _BAD_REQUEST_RESPONSE)

    def handle_error(self, t, v, tb) -> None:
        """An app or body failure: our one-line record (never pywsgi's, which prints the environ), then
        500 (502 for an upstream) if nothing was sent yet, else the connection is cut."""
        if not isinstance(v, gevent.GreenletExit):
            log_request_error(self.environ or {}, v)
        self.close_connection = True
        if not self.headers_sent:
            try:
                self._sendall(failure_response(v))
            except OSError:
                pass

    def _log_error(self, t, v, tb) -> None:
        """Anything else pywsgi reports through the hub gets the same record, without the environ."""
        if not isinstance(v, gevent.GreenletExit):
            log_request_error(self.environ or {}, v)

    def log_request(self) -> None:
        """pywsgi's own access line is replaced by accesslog.py's, written by the app wrapper."""

    def run_application(self) -> None:
        try:
            super().run_application()
        finally:
            if self.environ.get(BODY_REFUSED):
                # The body was refused unread: close instead of reading (discarding) it all.
                self.wsgi_input._chunked_input_error = True
                self.close_connection = True

    def wake_if_idle(self) -> None:
        """During a drain: an idle keep-alive connection is closed now rather than after idle_timeout."""
        sock = self.socket if self.waiting_for_request else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass


class ConnectionTracking:
    """Connection tracking, refused-request reporting and graceful drain, shared by both servers.

    ``on_refused(exchange)`` sees requests refused before the app (431); ``on_connection(+1/-1)`` follows
    open connections (the metrics gauge). Each tracked connection offers ``wake_if_idle()``.
    """

    # One accept per wake-up: with --workers, every worker is woken for the shared socket, and accepting
    # up to 100 at once (gevent's default) let one worker take a whole burst of new connections.
    max_accept = 1

    def init_tracking(self, limits: Optional["ServerLimits"], on_refused: Optional[Callable],
                      on_connection: Optional[Callable[[int], None]]) -> None:
        self.limits = limits or ServerLimits()
        self.on_refused = on_refused
        self.on_connection = on_connection
        self.connections: set = set()
        self.draining = False
        self.drained = gevent.event.Event()
        self.drained.set()

    def connection_opened(self, conn) -> None:
        self.connections.add(conn)
        self.drained.clear()
        if self.on_connection is not None:
            self.on_connection(1)

    def connection_closed(self, conn) -> None:
        self.connections.discard(conn)
        if self.on_connection is not None:
            self.on_connection(-1)
        if not self.connections:
            self.drained.set()

    def report_refused(self, peer: str, method: str, target: str, status: int) -> None:
        if self.on_refused is None:
            return
        from gatekeeper.ops.accesslog import Exchange
        exchange = Exchange(peer or "-", method or "-", target.partition("?")[0] or "-")
        exchange.status = status
        exchange.end({})
        self.on_refused(exchange)

    def begin_drain(self) -> None:
        """Stop accepting, and close connections that wait for a next request."""
        self.draining = True
        self.close()  # type: ignore[attr-defined]
        for conn in list(self.connections):
            conn.wake_if_idle()


class GatewayServer(ConnectionTracking, WSGIServer):
    """pywsgi's server with :class:`ServerLimits`, connection tracking and :meth:`drain`.

    ``on_refused(exchange)`` sees requests refused before the app (431); ``on_connection(+1/-1)``
    follows open connections (the metrics gauge).
    """

    def __init__(self, listener, application: WSGIApp, *, limits: Optional[ServerLimits] = None,
                 on_refused: Optional[Callable] = None, on_connection: Optional[Callable[[int], None]] = None,
                 **kwargs) -> None:
        kwargs.setdefault("handler_class", GatewayHandler)
        super().__init__(listener, application, **kwargs)
        self.init_tracking(limits, on_refused, on_connection)

    def request_refused(self, handler: GatewayHandler, status: int) -> None:
        method, _, rest = (handler.requestline or "").partition(" ")
        peer = handler.client_address[0] if isinstance(handler.client_address, tuple) else "-"
        self.report_refused(peer, method, rest.rpartition(" ")[0], status)


def drain(servers: Sequence[GatewayServer], grace: float) -> bool:
    """Stop every server from accepting, then wait up to ``grace`` seconds for in-flight requests.

    True when everything finished in time (what is left is cut when the process exits).
    """
    for server in servers:
        server.begin_drain()
    deadline = gevent.get_hub().loop.now() + grace
    for server in servers:
        if not server.drained.wait(max(0.0, deadline - gevent.get_hub().loop.now())):
            return False
    return True


def listen_socket(host: str, port: int, backlog: int = 1024) -> socket.socket:
    """A listening TCP socket with TCP_NODELAY set, so accepted sockets inherit it on Linux.

    Without it pywsgi answered 22 req/s at one connection here (Nagle + delayed ACK).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    return sock


DEFAULT_SERVER = "fast"


def make_server(sock: socket.socket, app: Callable, *, log: Optional[object] = None,
                error_log: Optional[object] = None, server: str = DEFAULT_SERVER, **kwargs) -> GatewayServer:
    """A server on ``sock`` (``limits=ServerLimits(...)`` optional): pywsgi with :class:`GatewayHandler`,
    or ``server="fast"``, the StreamServer + httptools one of fastserver.py (same hooks and limits).
    With ``ssl_context=`` the TLS handshake must finish within the idle timeout (:class:`HandshakeDeadline`)."""
    kwargs = with_handshake_deadline(kwargs, kwargs.get("limits"))
    if server == "fast":
        from gatekeeper.server.fast import FastServer
        return FastServer(sock, app, log=log, error_log=error_log, **kwargs)
    return GatewayServer(sock, app, log=log, error_log=error_log, **kwargs)


def limit_body(app: WSGIApp, max_bytes: int) -> WSGIApp:
    """Answer 413 to a request whose Content-Length exceeds ``max_bytes``, and close the connection.

    A chunked body is counted as it streams; past the limit its read fails, which the proxy turns
    into an error answer (the status line may already be on its way, so it cannot be 413).
    """
    from gatekeeper.proxy.balancer import error_response

    too_large = error_response(413, f"request body larger than {max_bytes} bytes")

    def limited(environ: dict, start_response: Callable) -> Iterable[bytes]:
        length = environ.get("CONTENT_LENGTH")
        if length and int(length) > max_bytes:
            environ[BODY_REFUSED] = True
            return too_large(environ, lambda s, h, *a: start_response(s, h + [("Connection", "close")], *a))
        if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            environ["wsgi.input"] = CappedInput(environ["wsgi.input"], max_bytes)
        return app(environ, start_response)
    return limited


class BodyTooLarge(IOError):
    """A chunked request body went past ``--max-body-bytes``."""


class CappedInput:
    """``wsgi.input`` that fails once more than ``limit`` bytes were read."""

    def __init__(self, stream, limit: int) -> None:
        self.stream, self.limit, self.seen = stream, limit, 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.seen += len(data)
        if self.seen > self.limit:
            raise BodyTooLarge(f"request body larger than {self.limit} bytes")
        return data

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def parse_address(text: str) -> Tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) -> (host, port); ValueError when it does not parse."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"not an address HOST:PORT: {text!r}")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


@dataclass(frozen=True)
class Entrypoint:
    """One traffic listener: ``--entrypoint NAME=HOST:PORT[,tls=CERT:KEY]`` (name None: plain --listen)."""

    name: Optional[str]
    host: str
    port: int
    cert: Optional[str] = None
    key: Optional[str] = None

    @property
    def scheme(self) -> str:
        return "https" if self.cert else "http"


def parse_entrypoint(text: str) -> Entrypoint:
    """``web=0.0.0.0:8080`` or ``secure=127.0.0.1:8443,tls=cert.pem:key.pem``; ValueError otherwise."""
    name, sep, rest = text.partition("=")
    if not sep or not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"expected NAME=HOST:PORT[,tls=CERT:KEY], not {text!r}")
    address, _, option = rest.partition(",")
    host, port = parse_address(address)
    if not option:
        return Entrypoint(name, host, port)
    key, sep, value = option.partition("=")
    cert, colon, keyfile = value.partition(":")
    if key != "tls" or not sep or not colon or not cert or not keyfile:
        raise ValueError(f"expected ,tls=CERT:KEY after the address, not {option!r}")
    return Entrypoint(name, host, port, cert, keyfile)


def tls_context(entrypoint: Entrypoint) -> ssl.SSLContext:
    """A server context (TLS 1.2+) with the entry point's certificate chain and key."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(entrypoint.cert, entrypoint.key)
    return context


class HandshakeAbandoned(gevent.GreenletExit):
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

    >>> server = make_server(sock, app, ssl_context=tls_context(ep), limits=ServerLimits(idle_timeout=30))
    """

    def __init__(self, context: ssl.SSLContext, seconds: float) -> None:
        self.context, self.seconds = context, seconds

    def wrap_socket(self, sock: socket.socket, server_side: bool = True, **kwargs) -> ssl.SSLSocket:
        sock.settimeout(self.seconds)
        tls = self.context.wrap_socket(sock, server_side=server_side, do_handshake_on_connect=False, **kwargs)
        try:
            with gevent.Timeout(self.seconds, socket.timeout("TLS handshake not finished in time")):
                tls.do_handshake()
        except (OSError, gevent.Timeout) as exc:   # ssl.SSLError and socket.timeout are OSErrors
            tls.close()
            log_abandoned_handshake(exc)
            raise HandshakeAbandoned() from exc
        return tls


def log_abandoned_handshake(exc: BaseException) -> None:
    """One debug line: a client can cause this at will, so it is no warning (no peer data is in it)."""
    import logging
    logging.getLogger("gatekeeper.tls").debug("TLS handshake abandoned: %s", exc)


def with_handshake_deadline(kwargs: dict, limits: Optional[ServerLimits]) -> dict:
    """``kwargs`` with a bare ``ssl_context`` replaced by a :class:`HandshakeDeadline` of the idle timeout."""
    context = kwargs.get("ssl_context")
    if isinstance(context, ssl.SSLContext):
        kwargs = {**kwargs, "ssl_context": HandshakeDeadline(context, (limits or ServerLimits()).idle_timeout)}
    return kwargs


def configure_logging(fmt: str, level: str) -> None:
    """Log lines to stderr, as text or one JSON object per line."""
    import json
    import logging

    class JSONFormatter(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return json.dumps({"time": self.formatTime(record), "level": record.levelname.lower(),
                               "logger": record.name, "message": record.getMessage()})

    handler = logging.StreamHandler()
    handler.setFormatter(JSONFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class Listeners:
    """Every socket this process serves, bound before any worker forks so all workers share them."""

    def __init__(self, entrypoints: Sequence[Entrypoint], admin: Optional[Tuple[str, int]]) -> None:
        self.entrypoints = list(entrypoints)
        self.sockets: List[socket.socket] = []
        self.admin: Optional[socket.socket] = None
        try:
            for ep in self.entrypoints:
                self.sockets.append(listen_socket(ep.host, ep.port))
                if ep.cert:
                    try:
                        tls_context(ep)  # fail now, in the parent, on a bad certificate or key
                    except (OSError, ssl.SSLError) as exc:
                        raise OSError(f"entry point {ep.name}: cannot load tls={ep.cert}:{ep.key}: "
                                      f"{exc.strerror or exc}") from exc
            if admin is not None:
                self.admin = listen_socket(*admin)
        except BaseException:
            self.close()
            raise

    def all(self) -> List[socket.socket]:
        return self.sockets + ([self.admin] if self.admin is not None else [])

    def close(self) -> None:
        for sock in self.all():
            sock.close()

    def describe(self) -> str:
        """``http://127.0.0.1:8080`` or ``web=http://...:8080, secure=https://...:8443``."""
        shown = []
        for ep, sock in zip(self.entrypoints, self.sockets):
            host, port = sock.getsockname()[:2]
            url = f"{ep.scheme}://{'[' + host + ']' if ':' in host else host}:{port}"
            shown.append(url if ep.name is None else f"{ep.name}={url}")
        return ", ".join(shown)


def plan_entrypoints(args) -> List[Entrypoint]:
    """``--entrypoint`` listeners, or the single ``--listen`` one serving every router."""
    if getattr(args, "entrypoint", None):
        return list(args.entrypoint)
    host, port = args.listen
    return [Entrypoint(None, host, port)]


def make_loader(args):
    """A ConfigLoader with the upstream limits of the command line, counting its reloads in metrics."""
    from gatekeeper.config.compile import CompileOptions
    from gatekeeper.config.reload import ConfigLoader
    from gatekeeper.proxy.balancer import ProxyLimits

    def record_reload(loader: ConfigLoader, swapped: bool) -> None:
        # imported late: prometheus_client must see PROMETHEUS_MULTIPROC_DIR, set before workers fork
        from gatekeeper.ops.metrics import record_reload as record
        record(loader, swapped)

    limits = ProxyLimits(connect_timeout=args.upstream_connect_timeout, response_timeout=args.upstream_timeout)
    loader = ConfigLoader(args.conf_d, options=CompileOptions(limits=limits), debounce=args.debounce_ms / 1000.0)
    loader.on_reload.append(record_reload)
    return loader


def server_limits(args) -> ServerLimits:
    return ServerLimits(max_header_bytes=args.max_header_bytes, idle_timeout=args.idle_timeout,
                        max_body_bytes=args.max_body_bytes)


def serve_process(args, loader, listeners: Listeners, announce: Callable[[], None] = lambda: None) -> int:
    """Serve every listener in this process until SIGTERM/SIGINT, then drain; SIGHUP reloads.

    Runs as the whole program with one worker, or in each forked worker. ``announce()`` runs once the
    signal handlers are in place, so whoever reads the start line may signal at once.
    """
    import signal

    from gatekeeper.app import Gateway
    from gatekeeper.jwt import remote as jwks
    from gatekeeper.ops import metrics
    from gatekeeper.ops.accesslog import AccessLog, fan_out
    from gatekeeper.ops.admin import admin_hosts, make_admin_app
    from gatekeeper.requestpath import path_settings_from_args

    access_log = AccessLog(args.log_format)
    limits = server_limits(args)
    engine = getattr(args, "server", None) or DEFAULT_SERVER
    gateway = Gateway(loader.conf_d, loader=loader, trusted_proxies=args.trusted_proxy,
                      request_path=path_settings_from_args(args))
    servers = []
    for ep, sock in zip(listeners.entrypoints, listeners.sockets):
        app = gateway if ep.name is None else gateway.for_entrypoint(ep.name)
        if limits.max_body_bytes is not None:
            app = limit_body(app, limits.max_body_bytes)
        extra = {"ssl_context": tls_context(ep)} if ep.cert else {}
        servers.append(make_server(sock, metrics.instrument(app, access_log), limits=limits,
                                   on_refused=fan_out(metrics.record_refused, access_log),
                                   on_connection=metrics.CONNECTIONS.inc, server=engine, **extra))
    if listeners.admin is not None:
        servers.append(make_server(listeners.admin, make_admin_app(loader, hosts=admin_hosts(args)),
                                   limits=limits, server=engine))
    for server in servers:
        server.start()
    # Background work starts here, in the serving process (with --workers: in each worker, after the
    # fork). A thread (a greenlet under gevent) started before fork() does not exist in the child: a key
    # set whose fetcher the parent had started answered every token 401 in every worker. The dashboard's
    # sampler starts on its first view, which a worker serves.
    if not args.no_watch:
        loader.watch()
    jwks.enable_prefetch()  # fetch the loaded key sets now, and each new one as a reload builds it

    stopping = gevent.event.Event()
    gevent.signal_handler(signal.SIGHUP, lambda: gevent.spawn(loader.reload, "signal"))
    gevent.signal_handler(signal.SIGTERM, stopping.set)
    gevent.signal_handler(signal.SIGINT, stopping.set)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})  # a worker held it until now (workers.py)
    metrics.record_reload(loader, True)  # last: a worker's generation gauge also says it is fully up
    announce()
    stopping.wait()
    loader.stop()
    drain(servers, args.grace)
    return 0


def run(args) -> int:
    """``gatekeeper serve``: patch, load conf.d, bind every listener, then serve here or in N workers.

    The parent starts no background work (no watcher, no key-set fetch): each serving process starts
    its own in :func:`serve_process`; the load here only builds, never fetches (as ``check`` does)."""
    from gevent import monkey

    # queue=False: a fully patched queue stops watchdog delivering events (STYLE.md, measured trap).
    monkey.patch_all(queue=False)
    import sys

    configure_logging(args.log_format, args.log_level)
    loader = make_loader(args)
    try:
        config = loader.load()
    except OSError as exc:
        print(f"gatekeeper: cannot read conf.d {args.conf_d}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    entrypoints = plan_entrypoints(args)
    try:
        listeners = Listeners(entrypoints, args.admin)
    except (OSError, ssl.SSLError) as exc:
        print(f"gatekeeper: cannot listen: {exc.strerror or exc}", file=sys.stderr)
        return 1
    def announce() -> None:
        extra = ""
        if listeners.admin is not None:
            host, port = listeners.admin.getsockname()[:2]
            extra += f", admin on http://{host}:{port}"
        if args.workers > 1:
            extra += f", {args.workers} workers"
        print(f"gatekeeper listening on {listeners.describe()} (conf.d {args.conf_d}: "
              f"{len(config.routers)} routers, {len(config.errors)} errors){extra}", flush=True)

    if args.workers > 1:
        from gatekeeper.server.workers import supervise
        return supervise(args.workers, lambda: serve_process(args, loader, listeners), grace=args.grace,
                         listeners=listeners.all(), announce=announce)
    return serve_process(args, loader, listeners, announce)
