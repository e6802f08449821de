"""What every middleware of this wing shares: the wrapper type, what a factory may ask of the configuration
being built (:class:`Context`), the request target split and rewritten in step, and the refusal that counts
an outcome for metrics and the access log.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Optional, Protocol, Tuple, Union
from urllib.parse import unquote

from gatekeeper.wsgi import (
    MIDDLEWARE_OUTCOME,
    RAW_URI,
    Environ,
    Headers,
    StartResponse,
    WSGIApp,
    error_response,
    raw_target,
)

Wrapper = Callable[[WSGIApp], WSGIApp]


class Context(Protocol):
    """What a factory may ask of the configuration being built (``config.compile`` answers)."""

    @property
    def name(self) -> str:
        """The middleware's qualified name (``ratelimit@file``): metric labels, shared counters' keys."""

    @property
    def root(self) -> str:
        """The conf.d directory, or empty when the manifests do not come from one."""

    @property
    def manifest(self) -> str:
        """The manifest that defines the middleware, relative to ``root`` (files it names are relative to it)."""

    def service(self, name: str) -> Union[WSGIApp, str]:
        """The WSGI app of a service (``name`` as the manifest wrote it, qualified like a router's service),
        or why there is none (``"is in error"``, ``"does not exist"``)."""


OptionsFactory = Callable[[Mapping[str, Any]], Wrapper]
ContextFactory = Callable[[Mapping[str, Any], Context], Wrapper]


def split_target(environ: Environ) -> Tuple[str, str]:
    """The raw path and the ``?query`` part (with its ``?``, or empty) of the request target.

    >>> split_target({"RAW_URI": "/a%2Fb?x=1"})
    ('/a%2Fb', '?x=1')
    """
    path, sep, query = raw_target(environ).partition("?")
    return path, sep + query


def set_path(environ: Environ, raw_path: str, query: str) -> None:
    """Change the forwarded target and the routed path together, so they never disagree."""
    environ[RAW_URI] = raw_path + query
    environ["PATH_INFO"] = unquote(raw_path, "latin-1")


def mark(environ: Environ, middleware: str, outcome: str) -> None:
    """Say which middleware answered instead of the service, and why (one word): metrics count it by router
    (``gatekeeper_middleware_outcomes_total``) and the access log shows it.

    >>> env = {}
    >>> mark(env, "limit@file", "rate_limited"); env["gatekeeper.middleware"]
    ('limit@file', 'rate_limited')
    """
    environ[MIDDLEWARE_OUTCOME] = (middleware, outcome)


def refusal(status: int, message: str, middleware: str, outcome: str,
            headers: Optional[Headers] = None) -> WSGIApp:
    """An app answering ``status`` with a short text body (built once) that marks ``outcome`` first."""
    answer = error_response(status, message, headers)

    def refuse(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        mark(environ, middleware, outcome)
        return answer(environ, start_response)
    return refuse
