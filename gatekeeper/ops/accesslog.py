"""One access-log line per request, as text (``key=value``) or JSON (Traefik's field names), nothing secret.

What a line may hold is decided here, once: the client, the request line *without its query string* (a
``tokenKey`` or ``tokenSource.query`` token travels there), host, protocol, sizes, entry point, router,
service and server, statuses, durations, the request id, the user (from ``usernameClaim``), why the JWT
middleware refused, which middleware answered, why a router in error answered 503, what failed upstream
and, for a response cut short, who cut it. Request headers are dropped, as Traefik's
``fields.headers.defaultMode: drop`` does; ``--access-log-header NAME`` keeps one (never a credential's).

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
from select import PIPE_BUF
from typing import Any, Dict, List, Optional, Sequence, TextIO, Tuple

from gevent import Greenlet, get_hub, getcurrent

from gatekeeper.ops.exchange import ACTIVE, DEFAULT_ENTRYPOINT, Exchange, fan_out, observe
from gatekeeper.ops.logs import LineSink, encode_json, format_time

__all__ = ["ACTIVE", "AccessLog", "Exchange", "fan_out", "format_text", "json_line", "observe", "parse_statuses",
           "text_line"]

FIELDS = ("time", "pid", "client", "method", "path", "router", "status", "upstream", "duration_ms", "bytes",
          "bytes_in", "user", "jwt_reason", "aborted", "entrypoint", "service", "host", "proto", "size_in",
          "request_id", "upstream_error", "router_error", "middleware", "middleware_outcome", "retries")
# never kept by --access-log-header: they carry credentials (a token header of tokenSource is named by the
# operator, so any name holding one of these words is refused too)
SECRET_HEADER_WORDS = ("authorization", "cookie", "token", "secret", "password", "key", "auth", "session", "jwt")


def kept_header_names(names: Sequence[str]) -> Tuple[str, ...]:
    """``--access-log-header`` names, checked: ValueError for one that may carry a credential.

    >>> kept_header_names(["User-Agent"])
    ('User-Agent',)
    >>> kept_header_names(["X-Api-Key"])
    Traceback (most recent call last):
    ...
    ValueError: header X-Api-Key may carry a credential: never logged
    """
    for name in names:
        if not re.fullmatch(r"[A-Za-z0-9-]+", name):
            raise ValueError(f"not a header name: {name!r}")
        if any(word in name.lower() for word in SECRET_HEADER_WORDS):
            raise ValueError(f"header {name} may carry a credential: never logged")
    return tuple(names)


_PLAIN = re.compile(r"[!#-<>-\[\]-~]+")  # printable ASCII but space, '"', '=' and backslash


def text_value(value: object) -> str:
    """``-`` for nothing; values with spaces, quotes, ``=``, backslashes or anything non-ASCII are JSON-quoted."""
    if value is None or value == "":
        return "-"
    text = value if type(value) is str else str(value)
    return text if _PLAIN.fullmatch(text) else json.dumps(text)


def parse_statuses(text: str) -> Tuple[Tuple[int, int], ...]:
    """``--access-log-status 400-599,304`` -> ((400, 599), (304, 304)); ValueError when it does not parse.

    >>> parse_statuses("400-599, 304")
    ((400, 599), (304, 304))
    """
    ranges = []
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        if not low.isdigit() or not (high or low).isdigit() or not 100 <= int(low) <= int(high or low) <= 599:
            raise ValueError(f"not a status code or range 100-599: {part.strip()!r}")
        ranges.append((int(low), int(high or low)))
    return tuple(ranges)


BATCH_LINES = 256   # a batch this long goes out at once, without waiting for the loop iteration's end


class AccessLog:
    """Writes one line per :class:`Exchange` to ``stream`` (or the file ``path``), whole lines per ``write`` so
    workers sharing stderr never interleave within a line; under gevent, a loop iteration's lines in one ``write``.

    Filters are Traefik's (``filters.statusCodes``, ``filters.minDuration``, ``filters.retryAttempts``): with
    any given, a line is kept when it passes one of them.

    >>> import tempfile
    >>> with tempfile.TemporaryFile("w+") as out:
    ...     AccessLog("text", out)(Exchange("127.0.0.1", "GET", "/a"))
    ...     _ = out.seek(0)
    ...     out.read().count("method=GET path=/a")
    1
    """

    def __init__(self, fmt: str = "text", stream: Optional[TextIO] = None, *, path: Optional[str] = None,
                 statuses: Sequence[Tuple[int, int]] = (), min_duration: Optional[float] = None,
                 retried: bool = False, headers: Sequence[str] = ()) -> None:
        if fmt not in ("text", "json"):
            raise ValueError(f"log format must be text or json, not {fmt!r}")
        self.line = json_line if fmt == "json" else text_line
        self.sink = LineSink(path)
        if stream is not None and path is None:
            self.sink.fd = stream.fileno()
        self.statuses = tuple(statuses)
        self.min_duration = min_duration
        self.retried = retried
        self.filtered = bool(self.statuses) or min_duration is not None or retried
        self.keep = kept_header_names(headers)
        self.pending: List[str] = []

    def wanted(self, exchange: Exchange) -> bool:
        """Whether a filter keeps this line (any of them, as Traefik's filters)."""
        if self.min_duration is not None and exchange.duration >= self.min_duration:
            return True
        if self.retried and exchange.retries:
            return True
        return any(low <= exchange.status <= high for low, high in self.statuses)

    def __call__(self, exchange: Exchange) -> None:
        if self.filtered and not self.wanted(exchange):
            return
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
                self.sink.write(b"".join(chunk))
                chunk, size = [], 0
            chunk.append(data)
            size += len(data)
        self.sink.write(b"".join(chunk))

    def close(self) -> None:
        self.flush()
        self.sink.close()


def text_line(e: Exchange) -> str:
    """:func:`format_text` of ``e.fields()``, built directly (no dict, a value check only where text can vary)."""
    middleware = e.middleware or (None, None)
    return (f"time={format_time(e.started)} pid={os.getpid()} client={text_value(e.client)} "
            f"method={text_value(e.method)} path={text_value(e.path)} router={text_value(e.router)} "
            f"status={e.status} upstream={text_value(e.upstream)} duration_ms={round(e.duration * 1000, 3)} "
            f"bytes={e.bytes} bytes_in={e.bytes_in} user={text_value(e.user)} jwt_reason={text_value(e.jwt_reason)} "
            f"aborted={text_value(e.aborted)} entrypoint={text_value(e.entrypoint or DEFAULT_ENTRYPOINT)} "
            f"service={text_value(e.service)} host={text_value(e.host)} proto={text_value(e.protocol)} "
            f"size_in={e.size_in} request_id={e.request_id or '-'} "
            f"upstream_error={text_value(e.upstream_cause)} router_error={text_value(e.router_error)} "
            f"middleware={text_value(middleware[0])} middleware_outcome={text_value(middleware[1])} "
            f"retries={e.retries}")


def json_line(e: Exchange) -> str:
    """The one JSON schema (ops/logs.py), with Traefik's field names: :meth:`Exchange.traefik_fields`."""
    return encode_json(e.traefik_fields())


def format_text(fields: Dict[str, Any]) -> str:
    return " ".join(f"{name}={text_value(fields[name])}" for name in FIELDS)
