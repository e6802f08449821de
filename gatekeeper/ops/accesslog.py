"""One access-log line per request, as text (``key=value``) or JSON, with nothing secret in it.

What a line may hold is decided here, once: time, pid, client, method, *path without its query string*,
router, status, upstream, duration, bytes, user (from ``usernameClaim``), the JWT failure reason and, for a
response cut short, who cut it (``aborted=upstream|error|client``). The
query is dropped because a ``tokenKey`` or ``tokenSource.query`` token travels there; headers are never
logged, so neither is ``Authorization`` nor a token cookie.

Usage::

    log = AccessLog("json")                      # writes to stderr, one write() per line
    app = observe(app, finish=log)               # or metrics.instrument(app, access_log=log)
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, TextIO

from gatekeeper.wsgi import (
    CLAIMS,
    JWT_REASON,
    RAW_URI,
    ROUTER,
    UPSTREAM,
    UPSTREAM_ERROR,
    USER,
    Environ,
    Headers,
    StartResponse,
    WSGIApp,
)

FIELDS = ("time", "pid", "client", "method", "path", "router", "status", "upstream", "duration_ms", "bytes",
          "user", "jwt_reason", "aborted")


class Exchange:
    """One request and its answer, filled in as the response goes out."""

    __slots__ = (
        "aborted",
        "bytes",
        "client",
        "clock",
        "duration",
        "jwt_ok",
        "jwt_reason",
        "method",
        "path",
        "router",
        "started",
        "status",
        "upstream",
        "upstream_error",
        "user",
    )

    def __init__(self, client: str, method: str, path: str) -> None:
        self.started = time.time()
        self.clock = time.perf_counter()
        self.client, self.method, self.path = client, method, path
        self.router: Optional[str] = None
        self.status = 0
        self.upstream: Optional[str] = None
        self.upstream_error: Optional[str] = None
        self.duration = 0.0
        self.bytes = 0
        self.user: Optional[str] = None
        self.jwt_reason: Optional[str] = None
        self.jwt_ok = False
        self.aborted: Optional[str] = None  # the response was cut: "upstream", "error" or "client"

    @classmethod
    def begin(cls, environ: Environ) -> "Exchange":
        """Read client, method and path before any middleware rewrites the path."""
        raw = environ.get(RAW_URI) or environ.get("PATH_INFO") or "/"
        return cls(environ.get("REMOTE_ADDR", "-"), environ.get("REQUEST_METHOD", "-"), raw.partition("?")[0])

    def end(self, environ: Environ) -> None:
        """Collect what the router, the JWT middleware and the proxy left in ``environ``."""
        self.duration = time.perf_counter() - self.clock
        self.router = environ.get(ROUTER)
        self.upstream = environ.get(UPSTREAM)
        self.upstream_error = environ.get(UPSTREAM_ERROR)
        self.user = environ.get(USER)
        self.jwt_reason = environ.get(JWT_REASON)
        self.jwt_ok = CLAIMS in environ

    def fields(self) -> Dict[str, Any]:
        return {"time": format_time(self.started), "pid": os.getpid(), "client": self.client,
                "method": self.method, "path": self.path, "router": self.router, "status": self.status,
                "upstream": self.upstream, "duration_ms": round(self.duration * 1000, 3), "bytes": self.bytes,
                "user": self.user, "jwt_reason": self.jwt_reason, "aborted": self.aborted}


_second_cache: List[object] = [-1, ""]


def format_time(epoch: float) -> str:
    """RFC 3339 UTC with milliseconds: ``2024-05-01T12:00:00.123Z`` (the seconds part formatted once a second)."""
    second = int(epoch)
    if _second_cache[0] != second:
        _second_cache[:] = [second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))]
    return f"{_second_cache[1]}.{int(epoch * 1000) % 1000:03d}Z"


_PLAIN = re.compile(r"[!#-<>-\[\]-~]+")  # printable ASCII but space, '"', '=' and backslash


def text_value(value: object) -> str:
    """``-`` for nothing; values with spaces, quotes, ``=``, backslashes or anything non-ASCII are JSON-quoted."""
    if value is None or value == "":
        return "-"
    text = value if type(value) is str else str(value)
    return text if _PLAIN.fullmatch(text) else json.dumps(text)


class AccessLog:
    """Writes one line per :class:`Exchange` to ``stream``; one ``write`` per line so workers sharing
    stderr never interleave within a line."""

    def __init__(self, fmt: str = "text", stream: Optional[TextIO] = None) -> None:
        if fmt not in ("text", "json"):
            raise ValueError(f"log format must be text or json, not {fmt!r}")
        self.format_line = format_json if fmt == "json" else format_text
        self.fd = (stream or sys.stderr).fileno()

    def __call__(self, exchange: Exchange) -> None:
        line = self.format_line(exchange.fields()) + "\n"
        try:
            os.write(self.fd, line.encode("utf-8", "backslashreplace"))
        except OSError:  # a closed stderr must not fail requests
            pass


def format_text(fields: Dict[str, Any]) -> str:
    return " ".join(f"{name}={text_value(fields[name])}" for name in FIELDS)


def format_json(fields: Dict[str, Any]) -> str:
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False)


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
            self.finish(exchange)


def observe(app: WSGIApp, finish: Callable[[Exchange], None],
            start: Optional[Callable[[], None]] = None) -> WSGIApp:
    """``app`` wrapped so ``finish(exchange)`` runs once per request, after the body went out (or failed).

    ``start()`` runs as a request begins (the in-flight gauge). An app that raises is recorded as 500.
    """
    def observed(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        exchange = Exchange.begin(environ)
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
