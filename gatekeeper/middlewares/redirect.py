"""Traefik's redirectScheme and redirectRegex: answer a redirect instead of calling the service.

Both work as Traefik's: the request URL is rebuilt (``scheme://host[:port]/path?query``), the middleware
works out the new URL, and a request whose new URL is the URL it came with goes on to the service. The
status is 302 for a GET and 307 otherwise; ``permanent``: 301 for a GET, 308 otherwise.

Where the URL's parts come from: the scheme is the entry point's (``https`` on a TLS listener), or, for
redirectScheme, ``X-Forwarded-Proto`` when it reached the middleware (the entry drops it from a peer that
is not a ``--trusted-proxy``); the host is the ``Host`` header (``X-Forwarded-Host`` is never read); the path
and query are the target as forwarded at this point (canonical, after earlier middlewares' rewrites).

A ``Location`` never carries a control character, a space or a non-ASCII byte: they are percent-encoded
(the target cannot hold raw ones, but a Host header or a replacement might try).
"""
from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any, Iterable, Mapping, Optional, Tuple
from urllib.parse import quote

from gatekeeper.errors import ConfigError
from gatekeeper.middlewares.base import Context, Wrapper, mark, refusal
from gatekeeper.middlewares.paths import Template, compile_option, replace_all
from gatekeeper.options import pick, want_bool, want_int, want_str
from gatekeeper.wsgi import Environ, StartResponse, WSGIApp, raw_target

DEFAULT_PORTS = {"http": "80", "https": "443"}
# A Host header the URL may be built from: a name or an IPv6 literal, then an optional port (Traefik's
# uriPattern); anything else would let the header change what the Location points at beyond its host.
HOST = re.compile(r"(\[[\w:.]+\]|[\w._-]+)(?::(\d+))?\Z", re.ASCII)
SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*\Z")
LOCATION_SAFE = "".join(chr(c) for c in range(0x21, 0x7F))  # printable ASCII, "%" included


def redirect_answer(location: str, permanent: bool, environ: Environ, start_response: StartResponse,
                    ) -> Iterable[bytes]:
    """The redirect, as Traefik answers it: the status text as the body."""
    get = environ.get("REQUEST_METHOD") == "GET"
    code = (301 if get else 308) if permanent else (302 if get else 307)
    phrase = HTTPStatus(code).phrase
    body = phrase.encode()
    start_response(f"{code} {phrase}", [("Location", safe_location(location)),
                                        ("Content-Type", "text/plain; charset=utf-8"),
                                        ("Content-Length", str(len(body)))])
    return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]


def safe_location(url: str) -> str:
    """``url`` with control characters, spaces and non-ASCII bytes percent-encoded (``%`` kept).

    >>> safe_location("https://a/x\\r\\nSet-Cookie: y")
    'https://a/x%0D%0ASet-Cookie:%20y'
    """
    return quote(url, safe=LOCATION_SAFE, encoding="latin-1", errors="replace")


def split_host(environ: Environ) -> Optional[Tuple[str, str]]:
    """(host, port or "") of the Host header (``SERVER_NAME`` when there is none), None when malformed."""
    found = HOST.match(environ.get("HTTP_HOST") or environ.get("SERVER_NAME", ""))
    return (found.group(1), found.group(2) or "") if found else None


def request_scheme(environ: Environ, forwarded: bool) -> str:
    """The scheme the client used: ``X-Forwarded-Proto`` (``ws``/``wss`` count as ``http``/``https``;
    another value is ignored) when ``forwarded``, else the entry point's."""
    scheme = str(environ.get("wsgi.url_scheme", "http"))
    proto = environ.get("HTTP_X_FORWARDED_PROTO", "").strip().lower() if forwarded else ""
    if proto in ("http", "ws"):
        return "http"
    if proto in ("https", "wss"):
        return "https"
    return scheme


def redirect_scheme(options: Mapping[str, Any], context: Context) -> Wrapper:
    """Traefik's redirectScheme: ``scheme`` (required), ``port`` (none: the default port, dropped from the
    URL), ``permanent``. A request whose URL already has that scheme and port goes on."""
    fields = pick(options, ("scheme", "port", "permanent"), "redirectScheme")
    scheme = want_str(fields.get("scheme"), "redirectScheme.scheme").strip()
    if not SCHEME.match(scheme):
        raise ConfigError("redirectScheme.scheme: not a URL scheme (https, http, wss, ...)")
    port = ""
    if fields.get("port") not in (None, ""):
        port = str(want_int(fields["port"], "redirectScheme.port", minimum=1))
        if int(port) > 65535:
            raise ConfigError("redirectScheme.port: must be at most 65535")
    permanent = want_bool(fields.get("permanent", False), "redirectScheme.permanent")
    new_port = "" if DEFAULT_PORTS.get(scheme) == port else port
    bad_host = refusal(400, "the Host header is not host[:port]", context.name, "bad_host")

    def wrap(app: WSGIApp) -> WSGIApp:
        def redirecting(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
            host_port = split_host(environ)
            if host_port is None:
                return bad_host(environ, start_response)
            host, old_port = host_port
            old_scheme = request_scheme(environ, forwarded=True)
            if DEFAULT_PORTS.get(old_scheme) == old_port:
                old_port = ""
            if (old_scheme, old_port) == (scheme, new_port):
                return app(environ, start_response)
            mark(environ, context.name, "redirected")
            location = f"{scheme}://{host}{':' + new_port if new_port else ''}{raw_target(environ)}"
            return redirect_answer(location, permanent, environ, start_response)
        return redirecting
    return wrap


def redirect_regex(options: Mapping[str, Any], context: Context) -> Wrapper:
    """Traefik's redirectRegex: ``regex`` (RE2) matched against ``scheme://host/path?query``, every match
    replaced by ``replacement`` (``$1``, ``${name}``); ``permanent``. A URL the replacement leaves as it
    was goes on."""
    fields = pick(options, ("regex", "replacement", "permanent"), "redirectRegex")
    regexp = compile_option(fields.get("regex"), "redirectRegex.regex")
    replacement = want_str(fields.get("replacement"), "redirectRegex.replacement")
    if not replacement.isprintable() or " " in replacement:
        raise ConfigError("redirectRegex.replacement: must not hold spaces or control characters "
                          "(percent-encode them)")
    template = Template(replacement, regexp)
    permanent = want_bool(fields.get("permanent", False), "redirectRegex.permanent")

    def wrap(app: WSGIApp) -> WSGIApp:
        def redirecting(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
            scheme = request_scheme(environ, forwarded=False)
            host = environ.get("HTTP_HOST") or environ.get("SERVER_NAME", "")
            old = f"{scheme}://{host}{raw_target(environ)}".encode("latin-1", "replace")
            match = regexp.search(old)
            if match is None:
                return app(environ, start_response)
            new = replace_all(regexp, old, template, match)
            if new == old:
                return app(environ, start_response)
            mark(environ, context.name, "redirected")
            return redirect_answer(new.decode("latin-1"), permanent, environ, start_response)
        return redirecting
    return wrap
