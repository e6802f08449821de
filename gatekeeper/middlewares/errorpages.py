"""Traefik's errors: an answer whose status is in ``status`` is replaced by a page from another service.

Whatever answers after the middleware counts (the service, or a middleware listed after it: a 401 from
``plugin.jwt``, a 429). The caught answer's body is never read (its connection is closed); the page is
fetched with a GET of ``query`` (``{status}``, ``{originalStatus}``, ``{url}`` replaced) from ``service``
and sent with the caught status, or the one ``statusRewrites`` maps it to. What the page service answers
is sent with that status whatever its own (Traefik does the same): if it is down, the client gets the
caught status with the proxy's short error text.

Choices where Traefik forwards more: the page request carries the client's headers except
``Authorization``, ``Proxy-Authorization`` and ``Cookie`` (the page service is another service; list them in
``errorRequestHeaders`` to send them), and ``{url}`` has no query string (a token may travel there).
"""
from __future__ import annotations

import io
from http import HTTPStatus
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple
from urllib.parse import quote_plus, unquote

from gatekeeper.errors import ConfigError
from gatekeeper.middlewares.base import Context, Wrapper, mark, split_target
from gatekeeper.middlewares.paths import is_clean
from gatekeeper.options import pick, type_name, want_int, want_str, want_str_list
from gatekeeper.wsgi import (
    CREDENTIAL_HEADERS,
    MIDDLEWARE_OUTCOME,
    RAW_URI,
    UPGRADE,
    Environ,
    Headers,
    StartResponse,
    WSGIApp,
    environ_key,
    error_response,
)

Ranges = Tuple[Tuple[int, int], ...]
OPTIONS = ("status", "service", "query", "statusRewrites", "errorRequestHeaders")
CREDENTIAL_KEYS = ("HTTP_AUTHORIZATION", "HTTP_PROXY_AUTHORIZATION", "HTTP_COOKIE")
BODY_KEYS = ("CONTENT_LENGTH", "CONTENT_TYPE", "HTTP_TRANSFER_ENCODING", UPGRADE, MIDDLEWARE_OUTCOME)


def status_ranges(items: List[str], where: str) -> Ranges:
    """Traefik's status list: ``"500"``, ``"500-599"``, comma-separated too (``"404,500-599"``).

    >>> status_ranges(["404", "500-503,505-599"], "errors.status")
    ((404, 404), (500, 503), (505, 599))
    """
    ranges = []
    for i, item in enumerate(items):
        for block in filter(None, (b.strip() for b in item.split(","))):
            low, _, high = block.partition("-")
            if block.startswith("!"):
                raise ConfigError(f"{where}[{i}]: {block!r}: Traefik v3 has no negation; list the codes to catch")
            if not (low.strip().isdigit() and (high or low).strip().isdigit()):
                raise ConfigError(f"{where}[{i}]: {block!r} is not a status code or a range like 500-599")
            first, last = int(low), int(high or low)
            if not 100 <= first <= last <= 599:
                raise ConfigError(f"{where}[{i}]: {block!r}: codes go from 100 to 599, low to high")
            ranges.append((first, last))
    if not ranges:
        raise ConfigError(f"{where}: at least one status code or range is required")
    return tuple(ranges)


def status_rewrites(value: Any, where: str) -> List[Tuple[Ranges, int]]:
    """``statusRewrites``: ``{"418": 404, "502-504": 500}``, as (ranges, new code) pairs in order."""
    if value is None:
        return []
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping of codes or ranges to a code, got {type_name(value)}")
    rewrites = []
    for key, code in value.items():
        new = want_int(code, f"{where}.{key}", minimum=100)
        if new > 599:
            raise ConfigError(f"{where}.{key}: must be at most 599")
        rewrites.append((status_ranges([str(key)], f"{where}.{key}"), new))
    return rewrites


def caught(code: int, ranges: Ranges) -> bool:
    return any(low <= code <= high for low, high in ranges)


def page_service(value: Any, context: Context) -> WSGIApp:
    """The WSGI app of the ``service`` option; ConfigError when there is none."""
    if isinstance(value, Mapping):
        raise ConfigError("errors.service: a Kubernetes Service reference ({name, port}) is not supported; "
                          "define this middleware in a file-provider manifest, naming a service (pages@file)")
    name = want_str(value, "errors.service")
    found = context.service(name)
    if isinstance(found, str):
        raise ConfigError(f'errors.service: service "{name}" {found}')
    return found


def page_query(value: Any) -> str:
    """``query`` as Traefik uses it: one leading ``/``; no spaces or control characters."""
    query = "/" + want_str(value if value is not None else "", "errors.query", empty_ok=True).lstrip("/")
    if not query.isprintable() or " " in query or "#" in query:
        raise ConfigError("errors.query: must not hold spaces, # or control characters (percent-encode them)")
    return query


def header_filter(value: Any) -> Callable[[str], bool]:
    """Which request headers (environ keys) the page request keeps: ``errorRequestHeaders`` when given,
    else all but credentials."""
    if value is None:
        return lambda key: key not in CREDENTIAL_KEYS
    keys = frozenset(environ_key(name) for name in want_str_list(value, "errors.errorRequestHeaders"))
    return lambda key: key in keys


def error_pages(options: Mapping[str, Any], context: Context) -> Wrapper:
    """Traefik's errors middleware (``status``, ``service``, ``query``, ``statusRewrites``,
    ``errorRequestHeaders``)."""
    fields = pick(options, OPTIONS, "errors")
    ranges = status_ranges(want_str_list(fields.get("status", []), "errors.status"), "errors.status")
    rewrites = status_rewrites(fields.get("statusRewrites"), "errors.statusRewrites")
    service = page_service(fields.get("service"), context)
    query = page_query(fields.get("query"))
    keeps = header_filter(fields.get("errorRequestHeaders"))
    pages = ErrorPages(ranges, rewrites, service, query, keeps=keeps, name=context.name,
                       named=fields.get("errorRequestHeaders") is not None)
    return pages.wrap


class ErrorPages:
    """One ``errors`` middleware, built: what it catches and where its pages come from."""

    def __init__(self, ranges: Ranges, rewrites: List[Tuple[Ranges, int]], service: WSGIApp, query: str, *,
                 keeps: Callable[[str], bool], name: str, named: bool = False) -> None:
        self.ranges, self.rewrites, self.service = ranges, rewrites, service
        self.query, self.keeps, self.name = query, keeps, name
        self.named = named  # errorRequestHeaders given: it names every header sent, credentials included

    def wrap(self, app: WSGIApp) -> WSGIApp:
        def with_error_pages(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
            url = self.request_url(environ)
            catcher = Catcher(start_response, self.ranges)
            result = app(environ, catcher)
            if catcher.started:
                return result if catcher.code is None else self.page(environ, start_response, catcher.code,
                                                                     url, result)
            return self.lazy(environ, start_response, catcher, url, result)
        return with_error_pages

    def lazy(self, environ: Environ, start_response: StartResponse, catcher: "Catcher", url: str,
             result: Iterable[bytes]) -> Iterable[bytes]:
        """An app that calls start_response only when its body is first iterated: look then."""
        iterator = iter(result)
        first = next(iterator, b"")
        if catcher.code is not None:
            yield from self.page(environ, start_response, catcher.code, url, result)
            return
        try:
            yield first
            yield from iterator
        finally:
            close(result)

    def request_url(self, environ: Environ) -> str:
        """The request's URL without its query, as ``{url}`` gives it."""
        scheme = environ.get("wsgi.url_scheme", "http")
        return f"{scheme}://{environ.get('HTTP_HOST', '')}{split_target(environ)[0]}"

    def page(self, environ: Environ, start_response: StartResponse, code: int, url: str,
             result: Iterable[bytes]) -> Iterable[bytes]:
        """Close the caught answer, then send the page service's answer with the caught (or rewritten) code."""
        close(result)
        status = next((new for ranges, new in self.rewrites if caught(code, ranges)), code)
        if environ.get(MIDDLEWARE_OUTCOME) is None:
            mark(environ, self.name, "error_page")
        target = (self.query.replace("{status}", str(status)).replace("{originalStatus}", str(code))
                  .replace("{url}", quote_plus(url, safe="", encoding="latin-1")))
        line = f"{status} {phrase(status)}"
        if not is_clean(target.partition("?")[0]):  # {url} holds the client's Host: "Host: .." must not
            return error_response(status)(environ, start_response)  # make the page /admin/... upstream

        def with_status(_status: str, headers: Headers, exc_info: Any = None) -> Callable[[bytes], Any]:
            return start_response(line, headers, exc_info) if exc_info else start_response(line, headers)
        try:
            return self.service(self.page_environ(environ, target), with_status)
        except Exception:  # the page service must not turn a 404 into a traceback
            return error_response(status)(environ, start_response)

    def page_environ(self, environ: Environ, target: str) -> Environ:
        """A GET of ``target`` with the client's kept headers and no body. Unless ``errorRequestHeaders``
        names them, no header a later middleware read a credential from or set as one (``plugin.jwt``'s
        ``tokenSource.header``, forwardAuth's copied headers: :data:`~gatekeeper.wsgi.CREDENTIAL_HEADERS`) goes to
        the page service."""
        credentials = () if self.named else environ.get(CREDENTIAL_HEADERS, ())
        page: Dict[str, Any] = {key: value for key, value in environ.items()
                                if not (key.startswith("HTTP_") and not self.keeps(key)) and key not in BODY_KEYS
                                and key not in credentials}
        path, _, query = target.partition("?")
        page.update({"REQUEST_METHOD": "GET", RAW_URI: target, "PATH_INFO": unquote(path, "latin-1"),
                     "QUERY_STRING": query, "wsgi.input": io.BytesIO(b"")})
        if environ.get("HTTP_HOST"):
            page["HTTP_HOST"] = environ["HTTP_HOST"]  # Traefik sends the client's Host (passHostHeader)
        return page


class Catcher:
    """``start_response`` for the wrapped app: a status to catch is held back (``code``), others go on."""

    def __init__(self, start_response: StartResponse, ranges: Ranges) -> None:
        self.start_response, self.ranges = start_response, ranges
        self.started = False
        self.code: Optional[int] = None

    def __call__(self, status: str, headers: Headers, exc_info: Any = None) -> Callable[[bytes], Any]:
        self.started = True
        code = int(status[:3])
        if code >= 200 and caught(code, self.ranges) and not exc_info:
            self.code = code
            return lambda data: None
        return self.start_response(status, headers, exc_info) if exc_info else self.start_response(status, headers)


def phrase(code: int) -> str:
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "Unknown"


def close(result: Iterable[bytes]) -> None:
    closer = getattr(result, "close", None)
    if closer is not None:
        closer()
