"""Traefik's headers middleware: custom request and response headers (and, to come, its CORS options)."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Optional

from gatekeeper.errors import ConfigError
from gatekeeper.middlewares.base import Context, Wrapper
from gatekeeper.options import pick, want_str_map
from gatekeeper.wsgi import Environ, Headers, StartResponse, WSGIApp, environ_key


def headers(options: Mapping[str, Any], context: Context) -> Wrapper:
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
        def with_headers(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
            for key, value in request_ops:
                if value:
                    environ[key] = value
                else:
                    environ.pop(key, None)
            if not drop_response:
                return app(environ, start_response)

            def start(status: str, headers: Headers, exc_info: Optional[Any] = None) -> Callable[[bytes], Any]:
                kept = [(k, v) for k, v in headers if k.lower() not in drop_response]
                return start_response(status, kept + add_response, exc_info)
            return app(environ, start)
        return with_headers
    return wrap
