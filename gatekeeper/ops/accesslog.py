"""One access-log line per request, as text (``key=value``) or JSON, with nothing secret in it.

What a line may hold is decided here, once: time, pid, client, method, *path without its query string*,
router, status, upstream, duration, bytes, user (from ``usernameClaim``), the JWT failure reason and, for a
response cut short, who cut it (``aborted=upstream|error|client``). The
query is dropped because a ``tokenKey`` or ``tokenSource.query`` token travels there; headers are never
logged, so neither is ``Authorization`` nor a token cookie.

Usage::

    log = AccessLog("json")                      # writes to stderr, whole lines only
    app = observe(app, finish=log)               # or metrics.instrument(app, access_log=log)

Written in batches under load: while other requests are still being answered, the lines finished as the
gevent loop runs its ready greenlets go out together when that loop iteration ends (``loop.run_callback``),
so a line is never held longer than one iteration, nor past a drain (the drain's waiter wakes through a
callback queued after the flush). The last request running, and any line outside a gevent greenlet (a
threaded server, a test calling the app), is written at once: no batch to gain there.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from select import PIPE_BUF
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, TextIO, Tuple

from gevent import Greenlet, get_hub, getcurrent

from gatekeeper.wsgi import (
    CLAIMS,
    JWT_REASON,
    MIDDLEWARE_OUTCOME,
    RAW_URI,
    ROUTER,
    TUNNEL_BYTES_IN,
    TUNNEL_BYTES_OUT,
    UPSTREAM,
    UPSTREAM_ERROR,
    USER,
    Environ,
    Headers,
    StartResponse,
    WSGIApp,
)

FIELDS = ("time", "pid", "client", "method", "path", "router", "status", "upstream", "duration_ms", "bytes",
          "bytes_in", "user", "jwt_reason", "aborted")


class Exchange:
    """One request and its answer, filled in as the response goes out."""

    __slots__ = (
        "aborted",
        "bytes",
        "bytes_in",
        "client",
        "clock",
        "duration",
        "jwt_ok",
        "jwt_reason",
        "method",
        "middleware",
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
        self.bytes = 0                      # to the client (after a 101: what the upstream sent through)
        self.bytes_in = 0                   # from the client after a 101 (an upgraded connection), else 0
        self.user: Optional[str] = None
        self.jwt_reason: Optional[str] = None
        self.jwt_ok = False
        self.middleware: Optional[Tuple[str, str]] = None  # (name, outcome): a middleware answered instead
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
        self.middleware = environ.get(MIDDLEWARE_OUTCOME)
        if TUNNEL_BYTES_OUT in environ:     # an upgraded connection: the bytes relayed both ways
            self.bytes = environ[TUNNEL_BYTES_OUT]
            self.bytes_in = environ.get(TUNNEL_BYTES_IN, 0)

    def fields(self) -> Dict[str, Any]:
        return {"time": format_time(self.started), "pid": os.getpid(), "client": self.client,
                "method": self.method, "path": self.path, "router": self.router, "status": self.status,
                "upstream": self.upstream, "duration_ms": round(self.duration * 1000, 3), "bytes": self.bytes,
                "bytes_in": self.bytes_in, "user": self.user, "jwt_reason": self.jwt_reason, "aborted": self.aborted,
                "middleware": self.middleware[0] if self.middleware else None,
                "middleware_outcome": self.middleware[1] if self.middleware else None}


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


ACTIVE = [0]        # requests between observe()'s start and their finish, in this process
BATCH_LINES = 256   # a batch this long goes out at once, without waiting for the loop iteration's end


class AccessLog:
    """Writes one line per :class:`Exchange` to ``stream``, whole lines per ``write`` so workers sharing
    stderr never interleave within a line; under gevent, a loop iteration's lines in one ``write``.

    >>> import tempfile
    >>> with tempfile.TemporaryFile("w+") as out:
    ...     AccessLog("text", out)(Exchange("127.0.0.1", "GET", "/a"))
    ...     _ = out.seek(0)
    ...     out.read().count("method=GET path=/a")
    1
    """

    def __init__(self, fmt: str = "text", stream: Optional[TextIO] = None) -> None:
        if fmt not in ("text", "json"):
            raise ValueError(f"log format must be text or json, not {fmt!r}")
        self.line = json_line if fmt == "json" else text_line
        self.fd = (stream or sys.stderr).fileno()
        self.pending: List[str] = []

    def __call__(self, exchange: Exchange) -> None:
        line = self.line(exchange)
        if not isinstance(getcurrent(), Greenlet):   # no event loop to flush (a threaded server)
            self.write([line])
            return
        pending = self.pending
        pending.append(line)
        if not ACTIVE[0] or len(pending) >= BATCH_LINES:   # the last request running: nothing to wait for
            self.flush()
        elif len(pending) == 1:
            get_hub().loop.run_callback(self.flush)   # at the end of this loop iteration

    def flush(self) -> None:
        """Write the pending lines now."""
        if self.pending:
            lines, self.pending = self.pending, []
            self.write(lines)

    def write(self, lines: List[str]) -> None:
        """``lines`` in as few ``write`` calls as keep each one whole: at most PIPE_BUF bytes a call (what a
        pipe writes atomically, so workers sharing one never split each other's lines), or one longer line."""
        chunk: List[bytes] = []
        size = 0
        for line in lines:
            data = (line + "\n").encode("utf-8", "backslashreplace")
            if chunk and size + len(data) > PIPE_BUF:
                self.write_bytes(b"".join(chunk))
                chunk, size = [], 0
            chunk.append(data)
            size += len(data)
        self.write_bytes(b"".join(chunk))

    def write_bytes(self, data: bytes) -> None:
        try:
            while data:
                data = data[os.write(self.fd, data):]
        except OSError:  # a closed stderr must not fail requests
            pass


def text_line(e: Exchange) -> str:
    """:func:`format_text` of ``e.fields()``, built directly (no dict, a value check only where text can vary)."""
    return (f"time={format_time(e.started)} pid={os.getpid()} client={text_value(e.client)} "
            f"method={text_value(e.method)} path={text_value(e.path)} router={text_value(e.router)} "
            f"status={e.status} upstream={text_value(e.upstream)} duration_ms={round(e.duration * 1000, 3)} "
            f"bytes={e.bytes} bytes_in={e.bytes_in} user={text_value(e.user)} jwt_reason={text_value(e.jwt_reason)} "
            f"aborted={text_value(e.aborted)}")


def json_line(e: Exchange) -> str:
    return format_json(e.fields())


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
            ACTIVE[0] -= 1
            self.finish(exchange)


def observe(app: WSGIApp, finish: Callable[[Exchange], None],
            start: Optional[Callable[[], None]] = None) -> WSGIApp:
    """``app`` wrapped so ``finish(exchange)`` runs once per request, after the body went out (or failed).

    ``start()`` runs as a request begins (the in-flight gauge). An app that raises is recorded as 500.
    """
    def observed(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        exchange = Exchange.begin(environ)
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
