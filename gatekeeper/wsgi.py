"""WSGI vocabulary shared by every wing: the types, the ``environ`` keys the gateway sets, header names as
environ keys, and canned error answers. It imports nothing of the package, so anything may import it.
"""
from __future__ import annotations

from http import HTTPStatus
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

Environ = Dict[str, Any]
Headers = List[Tuple[str, str]]
StartResponse = Callable[..., Callable[[bytes], Any]]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

# --- environ keys the gateway sets (read by middlewares, the proxy, metrics and the access log) --------
RAW_URI = "RAW_URI"                            # the request target as forwarded (gunicorn's name)
ROUTER = "gatekeeper.router"                   # name of the router that matched
CLAIMS = "gatekeeper.claims"                   # verified JWT claims (a deep copy, the app's to change)
USER = "gatekeeper.user"                       # the usernameClaim's value, for the access log
JWT_REASON = "gatekeeper.jwt.reason"           # why a token was refused: a reason word, never the token
UPSTREAM = "gatekeeper.upstream"               # scheme://host:port of the server the request went to
UPSTREAM_ERROR = "gatekeeper.upstream.error"   # timeout, bad_gateway or aborted
BODY_REFUSED = "gatekeeper.body_refused"       # the server refused the body (too large, bad framing)

_BODY_HEADERS = ("CONTENT_TYPE", "CONTENT_LENGTH")


def environ_key(header: str) -> str:
    """The environ key of a header name, as WSGI servers set it.

    >>> environ_key("X-Api-Key"), environ_key("content-type")
    ('HTTP_X_API_KEY', 'CONTENT_TYPE')
    """
    key = header.upper().replace("-", "_")
    return key if key in _BODY_HEADERS else "HTTP_" + key


def error_response(status_code: int, message: str = "",
                   extra_headers: Optional[Headers] = None) -> WSGIApp:
    """A WSGI app answering ``status_code`` with a short text body, built once.

    >>> not_found = error_response(404, "no router matches this request")
    >>> sent = []
    >>> not_found({}, lambda status, headers: sent.append(status))
    [b'404 Not Found: no router matches this request\\n']
    >>> sent
    ['404 Not Found']
    """
    phrase = HTTPStatus(status_code).phrase
    status = f"{status_code} {phrase}"
    body = f"{status}{': ' + message if message and message != phrase else ''}\n".encode()
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
               *(extra_headers or ())]

    def answer(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response(status, list(headers))
        return [body]
    return answer
