"""WSGI vocabulary shared by every wing: the types, the ``environ`` keys the gateway sets, header names as
environ keys, the raw request target and canned error answers. It imports nothing of the package, so
anything may import it.
"""
from __future__ import annotations

from http import HTTPStatus
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple
from urllib.parse import quote

Environ = Dict[str, Any]
Headers = List[Tuple[str, str]]
StartResponse = Callable[..., Callable[[bytes], Any]]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

# --- environ keys the gateway sets (read by middlewares, the proxy, metrics and the access log) --------
RAW_URI = "RAW_URI"                            # the request target as forwarded (gunicorn's name)
ROUTER = "gatekeeper.router"                   # name of the router that matched
SERVICE = "gatekeeper.service"                 # name of that router's service
CLAIMS = "gatekeeper.claims"                   # verified JWT claims (a deep copy, the app's to change)
USER = "gatekeeper.user"                       # the usernameClaim's value, for the access log
JWT_REASON = "gatekeeper.jwt.reason"           # why a token was refused: a reason word, never the token
UPSTREAM = "gatekeeper.upstream"               # scheme://host:port of the server the request went to
UPSTREAM_ERROR = "gatekeeper.upstream.error"   # timeout, bad_gateway or aborted
UPSTREAM_CAUSE = "gatekeeper.upstream.cause"   # connection_refused, dns, timeout, reset, tls or bad_gateway
ROUTER_ERROR = "gatekeeper.router.error"       # why a router in error answers 503: the access log's, never the body's
ENTRYPOINT = "gatekeeper.entrypoint"           # the listener's entry point name (unset: --listen, gunicorn)
RETRY_ATTEMPTS = "gatekeeper.retry.attempts"   # retries the retry middleware made (Traefik's RetryAttempts)
BODY_REFUSED = "gatekeeper.body_refused"       # the server refused the body (too large, bad framing)
UPGRADE = "gatekeeper.upgrade"                 # the server's Offer for an upgradable request (server/upgrade.py)
MIDDLEWARE_OUTCOME = "gatekeeper.middleware"   # (middleware, outcome): a middleware answered, not the service
CREDENTIAL_HEADERS = "gatekeeper.credential_headers"  # environ keys of headers a credential was read from
TUNNEL_BYTES_IN = "gatekeeper.tunnel.bytes_in"     # an upgraded connection: client -> upstream, after the 101
TUNNEL_BYTES_OUT = "gatekeeper.tunnel.bytes_out"   # ... upstream -> client

_BODY_HEADERS = ("CONTENT_TYPE", "CONTENT_LENGTH")
# What a path segment may hold unescaped besides the unreserved characters quote() always keeps
# (RFC 3986 3.3 pchar). "%" is not in it: PATH_INFO is decoded, so a "%" there was sent as "%25".
PATH_SAFE = "/!$&'()*+,;=:@"


UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")  # RFC 3986 2.3


def _canonical_escapes() -> Dict[str, str]:
    """Every spelling of a hex pair -> its canonical form (RFC 3986 6.2.2): ``41``/``7e`` -> ``A``/``~``
    (unreserved, decoded), ``2f``/``2F`` -> ``%2F`` (reserved, kept, upper-cased)."""
    table = {}
    for byte in range(256):
        char = chr(byte)
        canonical = char if char in UNRESERVED else f"%{byte:02X}"
        pair = f"{byte:02X}"
        high, low = pair[0], pair[1]
        for spelling in (high + low, high.lower() + low, high + low.lower(), high.lower() + low.lower()):
            table[spelling] = canonical
    return table


# "2f" -> "%2F", "7E" -> "~": the one table the entry (requestpath) and routing (expr.request) normalise with.
CANONICAL_ESCAPES = _canonical_escapes()


def environ_key(header: str) -> str:
    """The environ key of a header name, as WSGI servers set it.

    >>> environ_key("X-Api-Key"), environ_key("content-type")
    ('HTTP_X_API_KEY', 'CONTENT_TYPE')
    """
    key = header.upper().replace("-", "_")
    return key if key in _BODY_HEADERS else "HTTP_" + key


def quote_path(decoded: str) -> str:
    """The raw spelling of a decoded WSGI path (latin-1 characters standing for bytes), ``/`` when empty.

    The one rule for rebuilding a target from ``PATH_INFO`` (the request-path entry, path middlewares, the
    proxy).

    >>> quote_path("/a b/%/é"), quote_path("")
    ('/a%20b/%25/%E9', '/')
    """
    return quote(decoded.encode("latin-1", "replace"), safe=PATH_SAFE) or "/"


def raw_target(environ: Environ) -> str:
    """The request target as received: ``RAW_URI`` (our servers, gunicorn), ``REQUEST_URI`` (uWSGI and
    others), else rebuilt from ``SCRIPT_NAME``, ``PATH_INFO`` and ``QUERY_STRING``.

    >>> raw_target({"PATH_INFO": "/a b", "QUERY_STRING": "x=1"}), raw_target({"RAW_URI": "/%7e"})
    ('/a%20b?x=1', '/%7e')
    """
    raw = environ.get(RAW_URI) or environ.get("REQUEST_URI")
    if raw:
        return str(raw)
    query = environ.get("QUERY_STRING", "")
    path = quote_path(environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""))
    return path + "?" + query if query else path


def without_credentials(target: str) -> str:
    """A request target as a log may show it: no query (a token may travel there), no fragment
    (``#access_token=``) and no userinfo (``http://alice:password@host/``, refused but still logged).

    >>> without_credentials("http://alice:pw@x/a?jwt=t"), without_credentials("/a#access_token=t")
    ('http://x/a', '/a')
    """
    target = target.partition("?")[0].partition("#")[0]
    if target.startswith("/"):
        return target
    scheme, sep, rest = target.partition("://")
    if not sep:
        scheme, rest = "", target
    authority, slash, path = rest.partition("/")
    return scheme + sep + authority.rpartition("@")[2] + slash + path


def log_path(environ: Environ) -> str:
    """The request path for a log line or a span: :func:`without_credentials`, at most 200 characters.

    >>> log_path({"RAW_URI": "/a?jwt=secret"}), len(log_path({"PATH_INFO": "/x" * 300}))
    ('/a', 200)
    """
    path = without_credentials(str(environ.get(RAW_URI) or environ.get("PATH_INFO") or "/"))[:200]
    return path if path.isprintable() else ascii(path)


def log_host(environ: Environ) -> Optional[str]:
    """The Host header for a log line or a span, without the ``user:password@`` a malformed one may carry.

    >>> log_host({"HTTP_HOST": "alice:pw@api.example:80"}), log_host({})
    ('api.example:80', None)
    """
    host = environ.get("HTTP_HOST")
    return None if host is None else str(host).rpartition("@")[2]


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


class OnClose:
    """A response body that runs ``done`` once, after closing the body it wraps, when the server closes it
    (the answer sent, cut, or the client gone): releasing a slot, ending a span.

    >>> seen = []
    >>> body = OnClose([b"a"], lambda: seen.append("done")); list(body), body.close(), body.close(), seen
    ([b'a'], None, None, ['done'])
    """

    def __init__(self, body: Iterable[bytes], done: Callable[[], Any]) -> None:
        self.body: Iterable[bytes] = body
        self.done: Optional[Callable[[], Any]] = done

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.body)

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            self.finish()

    def finish(self) -> None:
        """Run ``done`` unless it already ran."""
        done, self.done = self.done, None
        if done is not None:
            done()
