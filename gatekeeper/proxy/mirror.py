"""Traefik's ``mirroring`` service: the main service answers, copies go to mirror services off the request path.

A mirroring service is a service, so it only sees requests that passed the router's middlewares: a mirror
never receives what the gate refused. Each copy carries the request as the main service gets it (method,
target, headers, hence the same forwarded headers) and runs in its own greenlet once the main service has
answered; its answer is read and discarded. A slow or dead mirror never delays the client: at most
``max_in_flight`` copies per mirror run at once, the rest are dropped and counted (``Mirror.dropped``), and each
copy is bounded by the mirror service's own upstream timeouts.

``percent`` follows Traefik's counter: after ``n`` requests a mirror has received ``n * percent / 100``
copies, rounded up (deterministic, no randomness). With ``mirror_body`` the body is buffered to copy it, up to
``max_body_size`` bytes (-1: no limit of its own; the entry point's body limit still applies); a larger body
goes to the main service untouched and is not mirrored.

Usage::

    app = make_mirroring(main_app, [(shadow_app, 10)], mirror_body=True, max_body_size=1 << 20)
"""
from __future__ import annotations

import io
import logging
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple

import gevent

from gatekeeper.wsgi import Environ, StartResponse, WSGIApp, error_response

log = logging.getLogger("gatekeeper.proxy.mirror")

__all__ = ["MAX_IN_FLIGHT", "Mirror", "Mirroring", "make_mirroring"]

MAX_IN_FLIGHT = 64      # copies in flight per mirror (per process); more are dropped
READ_CHUNK = 64 * 1024
BAD_BODY = error_response(400, "incomplete request body")


class Mirror:
    """One mirror: its service app, its share of requests and its counters."""

    __slots__ = ("app", "count", "dropped", "in_flight", "max_in_flight", "percent", "sent")

    def __init__(self, app: WSGIApp, percent: int, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self.app, self.percent, self.max_in_flight = app, percent, max_in_flight
        self.count = 0          # requests chosen for this mirror (Traefik's counter)
        self.sent = 0           # copies started
        self.dropped = 0        # copies not started: max_in_flight already running
        self.in_flight = 0

    def chosen(self, total: int) -> bool:
        """Traefik's rule: this request is mirrored while ``count * 100 < total * percent``."""
        if self.count * 100 < total * self.percent:
            self.count += 1
            return True
        return False


class PrefixedInput:
    """``wsgi.input`` for a body already partly read: the bytes read first, then the rest of the stream."""

    def __init__(self, head: bytes, rest: Any) -> None:
        self.head, self.rest = head, rest

    def read(self, size: int = -1) -> bytes:
        if self.head:
            if size is None or size < 0:
                data, self.head = self.head + self.rest.read(), b""
                return bytes(data)
            data, self.head = self.head[:size], self.head[size:]
            return data
        return bytes(self.rest.read(size))


def has_body(environ: Environ) -> bool:
    return bool(environ.get("CONTENT_LENGTH") not in (None, "", "0")
                or "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower())


def read_body(environ: Environ, limit: int) -> Tuple[bytes, bool]:
    """(the body's first bytes, whether it is whole): reads at most ``limit + 1`` bytes (limit < 0: all)."""
    stream = environ["wsgi.input"]
    parts: List[bytes] = []
    size = 0
    while limit < 0 or size <= limit:
        want = READ_CHUNK if limit < 0 else min(READ_CHUNK, limit + 1 - size)
        data = stream.read(want)
        if not data:
            return b"".join(parts), True
        parts.append(data)
        size += len(data)
    return b"".join(parts), False


class Mirroring:
    """The WSGI app of a ``mirroring`` service (see the module docstring)."""

    def __init__(self, main: WSGIApp, mirrors: Sequence[Mirror], mirror_body: bool, max_body_size: int,
                 spawn: Callable[..., object] = gevent.spawn) -> None:
        self.main, self.mirrors = main, list(mirrors)
        self.mirror_body, self.max_body_size = mirror_body, max_body_size
        self.total = 0
        self.spawn = spawn

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        self.total += 1
        chosen = [m for m in self.mirrors if m.chosen(self.total)]
        if not chosen:
            return self.main(environ, start_response)
        body: Optional[bytes] = b""
        if has_body(environ):
            try:
                body = self.buffer_body(environ) if self.mirror_body else b""
            except Exception as exc:  # the client's body failed before anything went upstream
                log.info("mirroring: client body: %s", exc)
                return BAD_BODY(environ, start_response)
            if body is None:
                return self.main(environ, start_response)  # too large: not mirrored
        copy = {k: v for k, v in environ.items() if isinstance(v, str)}  # before the main service changes it
        result = self.main(environ, start_response)
        for mirror in chosen:
            if mirror.in_flight >= mirror.max_in_flight:
                mirror.dropped += 1
                continue
            mirror.in_flight += 1
            mirror.sent += 1
            self.spawn(send_copy, mirror, copy, body)
        return result

    def buffer_body(self, environ: Environ) -> Optional[bytes]:
        """The whole body, now also the main service's input; None when over ``max_body_size`` (the main
        service then reads the bytes taken so far and the rest of the stream)."""
        head, whole = read_body(environ, self.max_body_size)
        if not whole:
            environ["wsgi.input"] = PrefixedInput(head, environ["wsgi.input"])
            return None
        length = environ.get("CONTENT_LENGTH")
        if length and length.isdigit() and int(length) != len(head):
            raise ValueError(f"body ended {int(length) - len(head)} bytes short")
        environ["wsgi.input"] = io.BytesIO(head)
        environ["CONTENT_LENGTH"] = str(len(head))
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        return head


def discard(status: str, headers: object, exc_info: object = None) -> Callable[[bytes], None]:
    return lambda data: None


def send_copy(mirror: Mirror, copy: Environ, body: Optional[bytes]) -> None:
    """Run one copy through the mirror's service and drop its answer; never raises."""
    environ = dict(copy)
    environ.pop("HTTP_TRANSFER_ENCODING", None)
    environ["wsgi.input"] = io.BytesIO(body or b"")
    if body:
        environ["CONTENT_LENGTH"] = str(len(body))
    else:
        environ.pop("CONTENT_LENGTH", None)
    result: Optional[Iterable[bytes]] = None
    try:
        result = mirror.app(environ, discard)
        for _ in result:
            pass
    except Exception as exc:  # a mirror's failure is its own: logged, never the client's problem
        log.debug("mirror copy failed: %s", exc)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # closing a discarded answer
                log.debug("mirror copy: close failed")
        mirror.in_flight -= 1


def make_mirroring(main: WSGIApp, mirrors: Sequence[Tuple[WSGIApp, int]], *, mirror_body: bool = True,
                   max_body_size: int = -1, max_in_flight: int = MAX_IN_FLIGHT) -> Mirroring:
    """A mirroring service: ``main`` answers, each (app, percent) of ``mirrors`` gets its share of copies."""
    return Mirroring(main, [Mirror(app, percent, max_in_flight) for app, percent in mirrors],
                     mirror_body, max_body_size)
