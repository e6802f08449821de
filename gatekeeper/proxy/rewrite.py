"""What the proxy sends upstream and hands back: the request target behind a server's base path, the
forwarded headers (the client's minus hop-by-hop ones, plus the gateway's own ``X-Forwarded-*``), the
request body's framing, and the response headers a client may see.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple
from urllib.parse import urlsplit

from gatekeeper.requestpath import connection_tokens
from gatekeeper.wsgi import Environ, Headers, environ_key, raw_target

# RFC 9110 7.6.1 hop-by-hop headers, plus Expect: pywsgi answers 100-continue to the client itself, and
# HTTP2-Settings: it goes with an h2c offer (RFC 7540 3.2.1), which is never passed on (server/upgrade.py).
HOP_BY_HOP = frozenset({"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade",
                        "proxy-connection", "proxy-authenticate", "proxy-authorization", "expect",
                        "http2-settings"})
# Headers the gateway sets itself: a client's `Connection: X-Real-Ip` must not remove them.
GATEWAY_HEADERS = ("X-Forwarded-For", "X-Real-Ip", "X-Forwarded-Proto", "X-Forwarded-Host",
                   "X-Forwarded-Port")
PROTECTED = frozenset(h.lower() for h in GATEWAY_HEADERS) | {"host"}
# environ keys of headers the proxy rebuilds or drops, never copied from the client as they are.
SKIPPED_KEYS = frozenset(environ_key(h) for h in (*HOP_BY_HOP, *GATEWAY_HEADERS, "host"))
HEADER_NAME_CACHE_SIZE = 512
_header_names: Dict[str, str] = {}


def header_name(key: str) -> str:
    """The header name of an ``HTTP_`` environ key, as forwarded (``HTTP_X_USER`` -> ``X-User``); cached for
    the common keys, as it runs for every header of every request.

    >>> header_name("HTTP_X_USER"), header_name("HTTP_ACCEPT_ENCODING")
    ('X-User', 'Accept-Encoding')
    """
    name = _header_names.get(key)
    if name is None:
        name = key[5:].replace("_", "-").title()
        if len(_header_names) < HEADER_NAME_CACHE_SIZE:
            _header_names[key] = name
    return name


def upstream_target(environ: Environ, base_path: str) -> str:
    """Path and query exactly as received (``%2F`` stays encoded), behind the server's base path.

    >>> upstream_target({"RAW_URI": "/a%2Fb?q=1"}, "/api"), upstream_target({"PATH_INFO": "/a b"}, "")
    ('/api/a%2Fb?q=1', '/a%20b')
    """
    target = raw_target(environ)
    if not target.startswith("/"):  # absolute-form (GET http://host/path): keep path and query
        parts = urlsplit(target)
        target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
    return base_path + target if base_path else target


def forwarded_headers(environ: Environ, host: str) -> Headers:
    """Client headers minus hop-by-hop ones, then ``Host`` and the gateway's own X-Forwarded-* headers.

    Headers the client's ``Connection`` names are dropped, but never those the gateway sets: a
    ``Connection: X-Forwarded-For`` only drops the client's own prefix of that header.
    """
    named = connection_tokens(environ)
    dropped = named - PROTECTED
    headers: Headers = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            if key in SKIPPED_KEYS:
                continue
            name = header_name(key)
            if dropped and name.lower() in dropped:
                continue
            headers.append((name, value))
        elif key == "CONTENT_TYPE" and value:
            headers.append(("Content-Type", value))
    peer = environ.get("REMOTE_ADDR", "")
    prior = None if "x-forwarded-for" in named else environ.get("HTTP_X_FORWARDED_FOR")
    headers.append(("Host", host))
    headers.append(("X-Forwarded-For", f"{prior}, {peer}" if prior else peer))
    headers.append(("X-Real-Ip", peer))
    headers.append(("X-Forwarded-Proto", environ.get("wsgi.url_scheme", "http")))
    headers.append(("X-Forwarded-Host", environ.get("HTTP_HOST") or environ.get("SERVER_NAME", "")))
    headers.append(("X-Forwarded-Port", str(environ.get("SERVER_PORT", ""))))
    return headers


def body_reader(environ: Environ) -> Tuple[Optional[Callable[[int], bytes]], Optional[int]]:
    """(read callable, length): length None means chunked; (None, 0) means no body.

    >>> body_reader({"REQUEST_METHOD": "GET"})
    (None, 0)
    """
    length = environ.get("CONTENT_LENGTH")
    if length:
        return environ["wsgi.input"].read, int(length)
    if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        return environ["wsgi.input"].read, None
    return None, 0


def response_headers(headers: Headers) -> Headers:
    """Upstream headers minus hop-by-hop ones and those its ``Connection`` names; repeats kept.

    >>> response_headers([("Server", "a"), ("Connection", "keep-alive, X-Trace"), ("x-trace", "1"), ("Te", "x")])
    [('Server', 'a')]
    """
    dropped = HOP_BY_HOP
    for name, value in headers:
        if len(name) == 10 and name.lower() == "connection":
            dropped = dropped.union(t.strip().lower() for t in value.split(","))
    return [(n, v) for n, v in headers if n.lower() not in dropped]


def upgrade_headers(protocol: str, headers: Headers) -> Headers:
    """``headers`` (forwarded or response headers, hop-by-hop ones gone) plus the two a protocol switch
    needs on the next hop: ``Connection: Upgrade`` and the ``Upgrade`` value (proxy/tunnel.py).

    >>> upgrade_headers("websocket", [("Host", "a")])
    [('Host', 'a'), ('Connection', 'Upgrade'), ('Upgrade', 'websocket')]
    """
    return [*headers, ("Connection", "Upgrade"), ("Upgrade", protocol)]
