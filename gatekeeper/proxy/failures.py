"""An upstream that failed before anything went to the client: one answer (502, or 504 on a timeout), one
log line at most per upstream per second, and the cause noted for the access log and metrics. Shared by
plain requests (balancer.py) and upgrades (tunnel.py)."""
from __future__ import annotations

import logging
import socket
import ssl
import time
from typing import Dict, Iterable, List, Optional, Protocol

from gatekeeper.errors import GatewayTimeout
from gatekeeper.wsgi import (
    ROUTER,
    UPSTREAM,
    UPSTREAM_CAUSE,
    UPSTREAM_ERROR,
    Environ,
    StartResponse,
    error_response,
    log_path,
)

log = logging.getLogger("gatekeeper.proxy")

__all__ = ["BAD_GATEWAY", "FAILURE_LOG", "GATEWAY_TIMEOUT", "FailureLogThrottle", "failure_cause", "upstream_failed"]

BAD_GATEWAY = error_response(502)
GATEWAY_TIMEOUT = error_response(504)


class Closable(Protocol):
    def close(self) -> None: ...


class FailureLogThrottle:
    """At most one failure line per upstream per ``interval``: a dead upstream under load must not write
    a log line per request (the chaos run saw 1,400 lines in 0.2 s). Metrics still count every failure.

    Keyed by the server's origin, so it holds one entry per configured server.

    >>> throttle = FailureLogThrottle(interval=60)
    >>> throttle.admit("http://a:80"), throttle.admit("http://a:80"), throttle.admit("http://b:80")
    (0, None, 0)
    """

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._last: Dict[str, List[float]] = {}   # origin -> [time of the last line, failures not logged since]

    def admit(self, origin: str) -> Optional[int]:
        """None: do not log; else how many failures were left unlogged since the last line."""
        now = time.monotonic()
        entry = self._last.get(origin)
        if entry is not None and now - entry[0] < self.interval:
            entry[1] += 1
            return None
        hidden = int(entry[1]) if entry is not None else 0
        self._last[origin] = [now, 0]
        return hidden


FAILURE_LOG = FailureLogThrottle()


def upstream_failed(environ: Environ, start_response: StartResponse, exc: BaseException, *,
                    body: Optional[Closable] = None, doing: str = "") -> Iterable[bytes]:
    """Nothing was sent to the client yet: close what was read of the upstream's answer, log the cause
    (no header, no query string), answer 504 for a timeout, else 502. ``doing`` names what failed
    (``" an upgrade"``)."""
    if body is not None:
        body.close()
    timeout = isinstance(exc, GatewayTimeout)
    origin = environ.get(UPSTREAM, "-")
    hidden = FAILURE_LOG.admit(origin)
    if hidden is not None:
        more = f" ({hidden} more failure(s) of this upstream in the last second not logged)" if hidden else ""
        log.warning("upstream %s failed%s (router %s, %s %s): %s%s", origin, doing, environ.get(ROUTER, "-"),
                    environ.get("REQUEST_METHOD", "-"), log_path(environ), exc, more)
    environ[UPSTREAM_ERROR] = "timeout" if timeout else "bad_gateway"
    environ[UPSTREAM_CAUSE] = failure_cause(exc)
    return (GATEWAY_TIMEOUT if timeout else BAD_GATEWAY)(environ, start_response)


_CAUSES = ((ConnectionRefusedError, "connection_refused"), (socket.gaierror, "dns"), (socket.timeout, "timeout"),
           (ssl.SSLError, "tls"), (ssl.CertificateError, "tls"),
           ((ConnectionResetError, BrokenPipeError, ConnectionAbortedError), "reset"))


def failure_cause(exc: BaseException) -> str:
    """The cause of an upstream failure for metrics and the access log, from the error and what it was raised
    from: ``connection_refused``, ``dns``, ``timeout``, ``tls``, ``reset``, else ``bad_gateway`` (a malformed
    or missing answer).

    >>> failure_cause(GatewayTimeout("slow")), failure_cause(ConnectionRefusedError())
    ('timeout', 'connection_refused')
    """
    if isinstance(exc, GatewayTimeout):
        return "timeout"
    seen: Optional[BaseException] = exc
    for _ in range(8):   # a cause chain is short; bounded all the same
        if seen is None:
            break
        for kinds, cause in _CAUSES:
            if isinstance(seen, kinds):
                return cause
        seen = seen.__cause__ or seen.__context__
    return "bad_gateway"
