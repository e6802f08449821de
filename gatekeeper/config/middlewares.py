"""Build-time factories for the non-JWT middlewares: ``stripPrefix``, ``addPrefix``, ``headers``,
``encodedCharacters``.

Each factory validates its options once and returns a *wrapper*: ``wrap(app) -> app``. A router's handler is
its wrappers applied in order around the service app, built when the configuration compiles. Path
middlewares keep ``RAW_URI`` (forwarded byte for byte) and ``PATH_INFO`` in step.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple
from urllib.parse import unquote

from gatekeeper.config.providers.fields import pick, want_bool, want_str, want_str_list, want_str_map
from gatekeeper.errors import ConfigError
from gatekeeper.proxy.balancer import error_response
from gatekeeper.requestpath import ALL_ENCODED, ENCODED_CHARACTERS

WSGIApp = Callable[[dict, Callable], Iterable[bytes]]
Wrapper = Callable[[WSGIApp], WSGIApp]


def split_target(environ: dict) -> Tuple[str, str]:
    """The raw path and the ``?query`` part (with its ``?``, or empty) of the request target."""
    raw = environ.get("RAW_URI")
    if raw is None:
        from urllib.parse import quote
        query = environ.get("QUERY_STRING", "")
        return quote(environ.get("PATH_INFO", ""), safe="/%:@!$&'()*+,;="), ("?" + query if query else "")
    path, sep, query = raw.partition("?")
    return path, sep + query


def set_path(environ: dict, raw_path: str, query: str) -> None:
    environ["RAW_URI"] = raw_path + query
    environ["PATH_INFO"] = unquote(raw_path, "latin-1")


def strip_prefix(options: Mapping[str, Any]) -> Wrapper:
    """Traefik's stripPrefix: the first matching prefix is removed and sent as ``X-Forwarded-Prefix``."""
    fields = pick(options, ("prefixes", "forceSlash"), "stripPrefix")
    prefixes = want_str_list(fields.get("prefixes", []), "stripPrefix.prefixes")
    if not prefixes:
        raise ConfigError("stripPrefix.prefixes: at least one prefix is required")
    want_bool(fields.get("forceSlash", True), "stripPrefix.forceSlash")  # deprecated in Traefik; accepted

    def wrap(app: WSGIApp) -> WSGIApp:
        def stripped(environ: dict, start_response: Callable) -> Iterable[bytes]:
            path, query = split_target(environ)
            for prefix in prefixes:
                if path.startswith(prefix):
                    rest = path[len(prefix):]
                    set_path(environ, rest if rest.startswith("/") else "/" + rest, query)
                    environ["HTTP_X_FORWARDED_PREFIX"] = prefix
                    break
            return app(environ, start_response)
        return stripped
    return wrap


def add_prefix(options: Mapping[str, Any]) -> Wrapper:
    """Traefik's addPrefix: ``prefix`` is put in front of the path."""
    fields = pick(options, ("prefix",), "addPrefix")
    prefix = want_str(fields.get("prefix"), "addPrefix.prefix")
    if not prefix.startswith("/"):
        raise ConfigError("addPrefix.prefix: must start with /")
    prefix = prefix.rstrip("/")

    def wrap(app: WSGIApp) -> WSGIApp:
        def prefixed(environ: dict, start_response: Callable) -> Iterable[bytes]:
            path, query = split_target(environ)
            set_path(environ, prefix + path, query)
            return app(environ, start_response)
        return prefixed
    return wrap


def environ_key(header: str) -> str:
    name = header.upper().replace("-", "_")
    return name if name in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + name


def headers(options: Mapping[str, Any]) -> Wrapper:
    """Traefik's headers middleware, custom request and response headers; an empty value removes the header."""
    fields = pick(options, ("customRequestHeaders", "customResponseHeaders"), "headers")
    request = want_str_map(fields.get("customRequestHeaders"), "headers.customRequestHeaders")
    response = want_str_map(fields.get("customResponseHeaders"), "headers.customResponseHeaders")
    for name, value in {**request, **response}.items():
        if not name or any(c in name for c in " :\r\n\0") or any(c in value for c in "\r\n\0"):
            raise ConfigError(f"headers: invalid header {name!r}")
    request_ops = [(environ_key(k), v) for k, v in request.items()]
    drop_response = {k.lower() for k in response}
    add_response = [(k, v) for k, v in response.items() if v]

    def wrap(app: WSGIApp) -> WSGIApp:
        def with_headers(environ: dict, start_response: Callable) -> Iterable[bytes]:
            for key, value in request_ops:
                if value:
                    environ[key] = value
                else:
                    environ.pop(key, None)
            if not drop_response:
                return app(environ, start_response)

            def start(status: str, headers: List[Tuple[str, str]], exc_info: Optional[Any] = None) -> Callable:
                kept = [(k, v) for k, v in headers if k.lower() not in drop_response]
                return start_response(status, kept + add_response, exc_info)
            return app(environ, start)
        return with_headers
    return wrap


def encoded_characters(options: Mapping[str, Any]) -> Wrapper:
    """Traefik's encodedCharacters: 400 for a path carrying an encoded character this router does not allow
    (all refused unless ``allowEncoded...: true``). The entry point has already refused what it does not
    allow, before routing; this can only refuse more (Traefik applies both checks).
    """
    names = [option for option, _ in ENCODED_CHARACTERS.values()]
    fields = pick(options, names, "encodedCharacters")
    allowed = {escape for option, escape in ENCODED_CHARACTERS.values()
               if want_bool(fields.get(option, False), f"encodedCharacters.{option}")}
    denied = tuple(sorted(ALL_ENCODED - allowed))
    deny_backslash = "%5C" in denied
    refusals = {escape: error_response(400, f"encoded {escape} in the path is refused") for escape in denied}
    if deny_backslash:
        refusals["\\"] = error_response(400, "a backslash in the path is refused")

    def wrap(app: WSGIApp) -> WSGIApp:
        if not refusals:
            return app

        def checked(environ: dict, start_response: Callable) -> Iterable[bytes]:
            path = split_target(environ)[0]
            if "%" in path or (deny_backslash and "\\" in path):
                found = refused_escape(path, refusals)
                if found is not None:
                    return refusals[found](environ, start_response)
            return app(environ, start_response)
        return checked
    return wrap


def refused_escape(path: str, refusals: Mapping[str, WSGIApp]) -> Optional[str]:
    """The first refused escape (any case) or backslash in ``path``, else None."""
    if "\\" in path and "\\" in refusals:
        return "\\"
    for part in path.split("%")[1:]:
        escape = "%" + part[:2].upper()
        if escape in refusals:
            return escape
    return None


FACTORIES: Dict[str, Callable[[Mapping[str, Any]], Wrapper]] = {
    "stripPrefix": strip_prefix,
    "addPrefix": add_prefix,
    "headers": headers,
    "encodedCharacters": encoded_characters,
}


def chain_members(options: Mapping[str, Any]) -> List[str]:
    """The middleware names a ``chain`` applies, in order."""
    fields = pick(options, ("middlewares",), "chain")
    names = want_str_list(fields.get("middlewares", []), "chain.middlewares")
    if not names:
        raise ConfigError("chain.middlewares: at least one middleware is required")
    return names


def compose(wrappers: List[Wrapper], app: WSGIApp) -> WSGIApp:
    """Apply wrappers so the first one listed sees the request first."""
    for wrap in reversed(wrappers):
        app = wrap(app)
    return app
