"""Traefik's ``retry`` middleware: send a request again when no upstream got it, with exponential backoff.

A request is sent again only when the attempt failed before any byte of it went to an upstream (connection
refused, connect timeout, TLS handshake failure): sending it again cannot repeat it, whatever its method, and
its body has not been read, so it is whole for the next attempt. As Traefik does, an upstream that answered,
whatever the status, ends the retries; so does a failure after the request was written (a reset or a timeout
while waiting for the answer), since the upstream may have acted on it, and so does an answer produced before
the proxy (a middleware's 401). Nothing goes to the client until an attempt is kept: a failed attempt's canned
502/504 is discarded, so a retry never follows bytes sent to the client.

Every attempt starts from the request as ``retry`` received it (:func:`restart`): the middlewares after it
rewrite the environ in place (``stripPrefix``, ``addPrefix``, the JWT middleware removing ``Authorization``),
and a second pass over the first attempt's result would strip ``/api`` twice, sending
``/api/api/admin/x`` to ``/admin/x`` past the router that guards it.

The waits follow Traefik (cenkalti/backoff): the first is ``initial_interval``, each next one grows by
``2 ** (1 / (attempts - 1))`` so the last stays within twice the first, each randomised by +-50%;
``initial_interval`` 0 retries at once.

Usage::

    app = retry(attempts=4, initial_interval=0.1)(service_app)
"""
from __future__ import annotations

import random
from typing import Any, Callable, Iterable, List, Optional, Tuple, cast

import gevent

from gatekeeper.proxy.client import REQUEST_WRITTEN
from gatekeeper.wsgi import RETRY_ATTEMPTS, UPSTREAM_ERROR, Environ, Headers, StartResponse, WSGIApp

__all__ = ["backoff_waits", "retry"]

RANDOMIZATION = 0.5     # cenkalti/backoff's default, which Traefik keeps
RETRIED = ("bad_gateway", "timeout")


def backoff_waits(attempts: int, initial_interval: float) -> List[float]:
    """The waits before attempts 2..n, before randomisation.

    >>> [round(w, 3) for w in backoff_waits(3, 0.1)]
    [0.1, 0.141]
    """
    if attempts < 2 or initial_interval <= 0:
        return [0.0] * max(attempts - 1, 0)
    multiplier = 2 ** (1 / (attempts - 1))
    return [initial_interval * multiplier ** i for i in range(attempts - 1)]


class Attempt:
    """One try of the wrapped app with the client's ``start_response`` held back until it is kept."""

    def __init__(self) -> None:
        self.head: Optional[Tuple[str, Headers, Any]] = None
        self.passthrough: Optional[StartResponse] = None

    def start_response(self, status: str, headers: Headers, exc_info: Any = None) -> Callable[[bytes], Any]:
        if self.passthrough is not None:  # the attempt is kept: a late start_response goes straight through
            return self.passthrough(status, headers, exc_info)
        self.head = (status, headers, exc_info)
        return self.write

    def write(self, data: bytes) -> Any:
        raise RuntimeError("retry: write() before the response started")  # the proxy never uses write()

    def keep(self, start_response: StartResponse) -> None:
        self.passthrough = start_response
        if self.head is not None:
            start_response(*self.head)


def retry(attempts: int, initial_interval: float = 0.0,
          sleep: Callable[[float], Any] = gevent.sleep) -> Callable[[WSGIApp], WSGIApp]:
    """A wrapper sending a request up to ``attempts`` times in all (see the module docstring)."""
    waits = backoff_waits(attempts, initial_interval)

    def wrap(app: WSGIApp) -> WSGIApp:
        if attempts <= 1:
            return app

        def retried(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
            original = dict(environ)
            for wait in waits:
                environ.pop(UPSTREAM_ERROR, None)
                attempt, written = Attempt(), cast(List[bool], [])
                token = REQUEST_WRITTEN.set(written)
                try:
                    result = app(environ, attempt.start_response)
                finally:
                    REQUEST_WRITTEN.reset(token)
                if written or attempt.head is None or environ.get(UPSTREAM_ERROR) not in RETRIED:
                    attempt.keep(start_response)
                    return result
                close = getattr(result, "close", None)
                if close is not None:
                    close()
                if wait > 0:
                    sleep(wait * (1 + RANDOMIZATION * (2 * random.random() - 1)))  # jitter, as Traefik
                restart(environ, original, environ.get(RETRY_ATTEMPTS, 0) + 1)
            return app(environ, start_response)  # the last attempt answers the client, whatever happens
        return retried
    return wrap


def restart(environ: Environ, original: Environ, attempts: int) -> None:
    """``environ`` as ``retry`` received it, in place (the edge's access log and metrics keep this dict), with
    the count of attempts made so far for them."""
    environ.clear()
    environ.update(original)
    environ[RETRY_ATTEMPTS] = attempts
