"""One request as the access log and metrics see it: :class:`Exchange`, filled from ``environ`` as the
request begins and ends, and :func:`observe`, the wrapper that makes one per request and hands it on.

Usage::

    app = observe(app, finish=lambda exchange: print(exchange.status, exchange.duration))
"""
from __future__ import annotations

import os
import random
import re
import time
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Sequence, Tuple

from gatekeeper.ops.logs import format_time
from gatekeeper.wsgi import (
    CLAIMS,
    ENTRYPOINT,
    JWT_REASON,
    MIDDLEWARE_OUTCOME,
    RAW_URI,
    RETRY_ATTEMPTS,
    ROUTER,
    ROUTER_ERROR,
    SERVICE,
    TUNNEL_BYTES_IN,
    TUNNEL_BYTES_OUT,
    UPSTREAM,
    UPSTREAM_CAUSE,
    UPSTREAM_ERROR,
    USER,
    Environ,
    Headers,
    StartResponse,
    WSGIApp,
    environ_key,
    log_host,
    without_credentials,
)

DEFAULT_ENTRYPOINT = "default"   # the --listen listener (and gunicorn's), which has no name
REQUEST_ID_HEADER = "HTTP_X_REQUEST_ID"
# no ".": a JWT (three dot-separated parts) is never taken for an id and logged; 64 characters hold a UUID
_REQUEST_ID = re.compile(r"[A-Za-z0-9_:@/+=-]{1,64}")
def request_id(environ: Environ) -> str:
    """The client's ``X-Request-Id`` when well-formed (up to 64 of ``A-Za-z0-9_:@/+=-``), else a new one
    (16 hex digits), put back in ``environ`` so the upstream receives the id that is logged.

    >>> environ = {"HTTP_X_REQUEST_ID": "a.b.c"}      # a JWT's shape: replaced
    >>> made = request_id(environ)
    >>> made != "a.b.c", environ["HTTP_X_REQUEST_ID"] == made, request_id({"HTTP_X_REQUEST_ID": "r-1"})
    (True, True, 'r-1')
    """
    given = environ.get(REQUEST_ID_HEADER)
    if given is not None and _REQUEST_ID.fullmatch(given):
        return str(given)
    made = environ[REQUEST_ID_HEADER] = f"{random.getrandbits(64):016x}"
    return made


class Exchange:
    """One request and its answer, filled in as the response goes out."""

    __slots__ = ("aborted", "bytes", "bytes_in", "client", "client_port", "clock", "duration", "entrypoint",
                 "headers", "host", "jwt_ok", "jwt_reason", "method", "middleware", "path", "protocol",
                 "request_id", "retries", "router", "router_error", "scheme", "service", "size_in", "started", "status",
                 "upstream", "upstream_cause", "upstream_error", "user")

    def __init__(self, client: str, method: str, path: str) -> None:
        self.started = time.time()
        self.clock = time.perf_counter()
        self.client, self.method, self.path = client, method, path
        self.client_port: Optional[str] = None
        self.host: Optional[str] = None        # the Host header as received (less any userinfo)
        self.protocol = "HTTP/1.1"
        self.scheme = "http"
        self.size_in = 0                       # request body: Content-Length (after a 101: bytes relayed in)
        self.request_id: Optional[str] = None
        self.headers: Tuple[Tuple[str, Optional[str]], ...] = ()   # --access-log-header values
        self.entrypoint: Optional[str] = None
        self.router: Optional[str] = None
        self.service: Optional[str] = None
        self.router_error: Optional[str] = None   # why the router answers 503 (a router in error)
        self.status = 0
        self.upstream: Optional[str] = None
        self.upstream_error: Optional[str] = None  # bad_gateway (502), timeout (504) or aborted (cut mid-body)
        self.upstream_cause: Optional[str] = None  # its cause: connection_refused, dns, timeout, reset, tls, ...
        self.retries = 0                       # retries the retry middleware made
        self.duration = 0.0
        self.bytes = 0                      # to the client (after a 101: what the upstream sent through)
        self.bytes_in = 0                   # from the client after a 101 (an upgraded connection), else 0
        self.user: Optional[str] = None
        self.jwt_reason: Optional[str] = None
        self.jwt_ok = False
        self.middleware: Optional[Tuple[str, str]] = None  # (name, outcome): a middleware answered instead
        self.aborted: Optional[str] = None  # the response was cut: "upstream", "error" or "client"

    @classmethod
    def begin(cls, environ: Environ, keep: Sequence[str] = ()) -> "Exchange":
        """Read the request as received, before any middleware rewrites its path or headers; give it an id."""
        raw = environ.get(RAW_URI) or environ.get("PATH_INFO") or "/"
        exchange = cls(environ.get("REMOTE_ADDR", "-"), environ.get("REQUEST_METHOD", "-"), without_credentials(raw))
        exchange.client_port = environ.get("REMOTE_PORT")
        exchange.host = log_host(environ)
        exchange.protocol = environ.get("SERVER_PROTOCOL", "HTTP/1.1")
        exchange.scheme = environ.get("wsgi.url_scheme", "http")
        length = environ.get("CONTENT_LENGTH")
        exchange.size_in = int(length) if length and length.isdigit() else 0
        exchange.entrypoint = environ.get(ENTRYPOINT)
        exchange.request_id = request_id(environ)
        if keep:
            exchange.headers = tuple((name, environ.get(environ_key(name))) for name in keep)
        return exchange

    def end(self, environ: Environ) -> None:
        """Collect what the router, the JWT middleware and the proxy left in ``environ``."""
        self.duration = time.perf_counter() - self.clock
        self.router = environ.get(ROUTER)
        self.service = environ.get(SERVICE)
        self.router_error = environ.get(ROUTER_ERROR)
        self.upstream = environ.get(UPSTREAM)
        error = self.upstream_error = environ.get(UPSTREAM_ERROR)
        # the proxy notes the cause with each failure answered; "aborted" (cut mid-body) is its own cause
        self.upstream_cause = environ.get(UPSTREAM_CAUSE, error) if error is not None and error != "aborted" else error
        self.retries = environ.get(RETRY_ATTEMPTS, 0)
        self.user = environ.get(USER)
        self.jwt_reason = environ.get(JWT_REASON)
        self.jwt_ok = CLAIMS in environ
        self.middleware = environ.get(MIDDLEWARE_OUTCOME)
        if TUNNEL_BYTES_OUT in environ:     # an upgraded connection: the bytes relayed both ways
            self.bytes = environ[TUNNEL_BYTES_OUT]
            self.bytes_in = self.size_in = environ.get(TUNNEL_BYTES_IN, 0)

    @property
    def origin_status(self) -> int:
        """The upstream's status; 0 when none answered (a middleware or the gateway did, or it failed)."""
        return self.status if self.upstream is not None and self.upstream_error in (None, "aborted") else 0

    def fields(self) -> Dict[str, Any]:
        """The text line's fields, in order (``FIELDS``)."""
        middleware = self.middleware or (None, None)
        return {"time": format_time(self.started), "pid": os.getpid(), "client": self.client,
                "method": self.method, "path": self.path, "router": self.router, "status": self.status,
                "upstream": self.upstream, "duration_ms": round(self.duration * 1000, 3), "bytes": self.bytes,
                "bytes_in": self.bytes_in, "user": self.user, "jwt_reason": self.jwt_reason, "aborted": self.aborted,
                "entrypoint": self.entrypoint or DEFAULT_ENTRYPOINT, "service": self.service, "host": self.host,
                "proto": self.protocol, "size_in": self.size_in, "request_id": self.request_id,
                "upstream_error": self.upstream_cause, "router_error": self.router_error,
                "middleware": middleware[0], "middleware_outcome": middleware[1], "retries": self.retries}

    def traefik_fields(self) -> Dict[str, Any]:
        """The JSON line, in the one schema of ops/logs.py: ``time`` (when the line is written), ``level``,
        ``logger: access``, ``msg`` (empty, as Traefik's), then Traefik's access-log names, then gatekeeper's
        own (absent when empty). One dict, built once a line."""
        origin = self.origin_status
        host = self.host or ""
        fields: Dict[str, Any] = {
            "time": format_time(self.started + self.duration), "level": "info", "logger": "access", "msg": "",
            "ClientAddr": f"{self.client}:{self.client_port}" if self.client_port else self.client,
            "ClientHost": self.client, "ClientPort": self.client_port, "RequestAddr": host,
            "RequestHost": host_of(host), "RequestMethod": self.method, "RequestPath": self.path,
            "RequestProtocol": self.protocol, "RequestScheme": self.scheme, "RequestContentSize": self.size_in,
            "entryPointName": self.entrypoint or DEFAULT_ENTRYPOINT, "RouterName": self.router,
            "ServiceName": self.service, "ServiceURL": self.upstream, "ServiceAddr": host_port(self.upstream),
            "OriginStatus": origin, "OriginContentSize": self.bytes if origin else 0,
            "DownstreamStatus": self.status, "DownstreamContentSize": self.bytes,
            "Duration": int(self.duration * 1e9), "StartUTC": format_time(self.started), "RetryAttempts": self.retries,
            "request_X-Request-Id": self.request_id, "pid": os.getpid()}
        for name, value in self.headers:
            if value is not None:
                fields["request_" + name] = value
        middleware = self.middleware or (None, None)
        for name, value in (("user", self.user), ("jwt_reason", self.jwt_reason), ("middleware", middleware[0]),
                            ("middleware_outcome", middleware[1]), ("upstream_error", self.upstream_cause),
                            ("router_error", self.router_error), ("aborted", self.aborted)):
            if value is not None:
                fields[name] = value
        return fields


def host_of(host: str) -> str:
    """The Host header without its port: ``api.example:8080`` -> ``api.example``, ``[::1]:80`` -> ``[::1]``."""
    name, sep, port = host.rpartition(":")
    return name if sep and port.isdigit() and (not name.startswith("[") or name.endswith("]")) else host


def host_port(url: Optional[str]) -> Optional[str]:
    """``http://10.0.0.9:9000`` -> ``10.0.0.9:9000`` (Traefik's ServiceAddr)."""
    return url.partition("://")[2] or None if url else None


ACTIVE = [0]        # requests between observe()'s start and their finish, in this process


def with_entrypoint(app: WSGIApp, name: Optional[str]) -> WSGIApp:
    """``app`` with ``environ[ENTRYPOINT] = name`` set first: the listener's name for logs and metrics."""
    if name is None:
        return app

    def named(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        environ[ENTRYPOINT] = name
        return app(environ, start_response)
    return named


class ObservedBody:
    """The response iterable, counting bytes; ``close()`` finishes the exchange (WSGI calls it once).

    Records what the client got: when the body fails before a byte went out, the server answers 502
    (an upstream, ``gatekeeper.upstream.error`` set by the proxy) or 500 instead of the status the app
    chose; after that the status stands and ``aborted`` says who cut the response (``upstream``, the app:
    ``error``, or ``client`` when the server stopped reading the body early because the client left).
    """

    __slots__ = ("environ", "exchange", "finish", "finished", "result")

    def __init__(self, result: Iterable[bytes], exchange: Exchange, environ: Environ,
                 finish: Callable[[Exchange], None]) -> None:
        self.result, self.exchange, self.environ, self.finish = result, exchange, environ, finish
        self.finished = False

    def __iter__(self) -> Iterator[bytes]:
        exchange = self.exchange
        try:
            for chunk in self.result:
                exchange.bytes += len(chunk)
                yield chunk
        except Exception:
            upstream = self.environ.get(UPSTREAM_ERROR) == "aborted"
            if exchange.bytes:
                exchange.aborted = "upstream" if upstream else "error"
            else:  # nothing was sent: both servers answer this themselves (serve.failure_response)
                exchange.status = 502 if upstream else 500
            self.finished = True
            raise
        self.finished = True

    def close(self) -> None:
        exchange = self.exchange
        if not self.finished:
            exchange.aborted = "client"
        try:
            close = getattr(self.result, "close", None)
            if close is not None:
                close()
        finally:
            exchange.end(self.environ)
            ACTIVE[0] -= 1
            self.finish(exchange)


def observe(app: WSGIApp, finish: Callable[[Exchange], None],
            start: Optional[Callable[[], None]] = None, keep: Sequence[str] = ()) -> WSGIApp:
    """``app`` wrapped so ``finish(exchange)`` runs once per request, after the body went out (or failed).

    ``start()`` runs as a request begins (the in-flight gauge). An app that raises is recorded as 500.
    ``keep``: request headers the exchange records as received (``--access-log-header``).
    """
    def observed(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        exchange = Exchange.begin(environ, keep)
        ACTIVE[0] += 1
        if start is not None:
            start()

        def capture(status: str, headers: Headers, exc_info: Any = None) -> Callable[[bytes], Any]:
            exchange.status = int(status[:3])
            return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)
        try:
            result = app(environ, capture)
        except BaseException:
            exchange.status = 500
            exchange.end(environ)
            ACTIVE[0] -= 1
            finish(exchange)
            raise
        return ObservedBody(result, exchange, environ, finish)
    return observed


def fan_out(*observers: Optional[Callable[[Exchange], None]]) -> Callable[[Exchange], None]:
    """One finish callback calling each of ``observers`` (None entries skipped)."""
    live = [o for o in observers if o is not None]
    if len(live) == 1:
        return live[0]

    def finish(exchange: Exchange) -> None:
        for observer in live:
            observer(exchange)
    return finish
