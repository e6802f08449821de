"""The gateway's request path, top to bottom, and the one request-edge stack every entry builds.

A request goes, in this order:

1. the edge (:func:`edge_stack`): metrics and the access log see every request, then the body limit (413);
2. the entry (:class:`Gateway`): the Host is checked and the canonical path decided once (requestpath.py:
   the path that routes is the path forwarded), a client's forwarding headers are dropped unless its peer is
   a trusted proxy;
3. routing: the current configuration is read once, so a reload mid-request cannot change what it sees;
4. the router's handler, built when the configuration compiled: middlewares, then the service (the proxy).

``gatekeeper serve`` (cli/serve.py) wraps each listener's Gateway in :func:`edge_stack`; :func:`create_app`,
gunicorn's entry, builds the same stack.
"""
from __future__ import annotations

from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Dict, Iterable, Optional, Sequence, TextIO, cast

from gatekeeper.config.compile import CompileOptions
from gatekeeper.config.table import Config
from gatekeeper.requestpath import (
    PathPolicy,
    PathSettings,
    compile_path_policy,
    drop_forwarding_headers,
    has_forwarding_headers,
    parse_allowed,
    strip_connection_headers,
)
from gatekeeper.server.base import ServerLimits
from gatekeeper.wsgi import (
    BODY_REFUSED,
    ROUTER,
    ROUTER_ERROR,
    SERVICE,
    Environ,
    StartResponse,
    WSGIApp,
    error_response,
)

if TYPE_CHECKING:
    from gatekeeper.config.reload import ConfigLoader

NOT_FOUND = error_response(404, "Not Found")
DEFAULT_PATHS = PathSettings()
_BAD_REQUESTS: Dict[str, WSGIApp] = {}


def bad_request(reason: str) -> WSGIApp:
    """The canned 400 for one refusal reason (a handful of fixed texts, built once each)."""
    answer = _BAD_REQUESTS.get(reason)
    if answer is None:
        answer = _BAD_REQUESTS[reason] = error_response(400, reason)
    return answer


class Gateway:
    """WSGI app routing requests by the routers of a conf.d directory. Usage::

        gateway = Gateway("conf.d")            # loads conf.d now; errors are in gateway.config.errors
        gateway.loader.reload()                # re-read conf.d (the watcher does this on every change)

    Under gunicorn: ``gunicorn -k gevent 'gatekeeper.app:create_app("conf.d")'``.
    """

    def __init__(self, conf_d: "str | Path", *, entrypoint: Optional[str] = None,
                 options: Optional[CompileOptions] = None, loader: Optional[ConfigLoader] = None,
                 trusted_proxies: Sequence[str] = (), request_path: PathSettings = DEFAULT_PATHS) -> None:
        from gatekeeper.config.reload import ConfigLoader  # here: importing app starts no watchdog import

        self.trusted_proxies = tuple(ip_network(n, strict=False) for n in trusted_proxies)
        self.request_path = request_path
        self.decide_path = compile_path_policy(request_path.policy(entrypoint))

        self.loader = loader or ConfigLoader(conf_d, options=options)
        if self.loader.config is None:
            self.loader.load()
        self.entrypoint = entrypoint

    @property
    def config(self) -> Config:
        """The configuration being served (the loader loaded one before the Gateway was made)."""
        return cast(Config, self.loader.config)

    def for_entrypoint(self, name: str) -> "Gateway":
        """The same configuration seen from one entry point (serves routers naming it or none)."""
        return Gateway(self.loader.conf_d, entrypoint=name, loader=self.loader,
                       trusted_proxies=[str(n) for n in self.trusted_proxies], request_path=self.request_path)

    def trusts(self, peer: str) -> bool:
        """Whether the peer is a proxy whose forwarding headers (``X-Forwarded-*``, ``Forwarded``, ...) are kept."""
        if not self.trusted_proxies:
            return False
        try:
            address = ip_address(peer)
        except ValueError:
            return False
        return any(address in network for network in self.trusted_proxies)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        # entry: the canonical path before routing (the path that routes is the path forwarded)
        refused = self.decide_path(environ)
        if refused is not None:
            return bad_request(refused)(environ, start_response)
        if has_forwarding_headers(environ) and not self.trusts(environ.get("REMOTE_ADDR", "")):
            drop_forwarding_headers(environ)  # a client's claims about earlier hops are not passed on
        # routing: the configuration is read once
        router = self.config.match(environ, self.entrypoint)
        if router is None:
            return NOT_FOUND(environ, start_response)
        environ[ROUTER] = router.name
        environ[SERVICE] = router.definition.service
        # the router's handler. Before any middleware sets headers, so that `Connection: X-User` cannot
        # drop a header the gateway set (routing saw the client's headers as they came).
        strip_connection_headers(environ)
        if router.error is not None:
            environ[ROUTER_ERROR] = router.error  # its 503's reason, for the access log (never the body)
        return router.handler(environ, start_response)


# --- the request edge: what every entry (serve, gunicorn) wraps around the Gateway -------------------

def edge_stack(app: WSGIApp, *, max_body_bytes: Optional[int] = None,
               access_log: Optional[Callable[..., None]] = None) -> WSGIApp:
    """``app`` behind the request edge: metrics and the access log outermost (a 413 is counted and logged
    too), then the request's trace span when tracing is on, then the body limit.

    ``access_log`` is an ``ops.accesslog.AccessLog`` (or any callable taking an ``Exchange``); None: none.
    """
    # imported here: prometheus_client must see PROMETHEUS_MULTIPROC_DIR, which the workers' parent sets
    # before forking and never imports metrics itself (server/workers.py)
    from gatekeeper.ops import metrics, tracing

    if max_body_bytes is not None:
        app = limit_body(app, max_body_bytes)
    tracer = tracing.tracer()  # None unless OTEL_* asks for traces (ops/tracing.py)
    if tracer is not None:
        app = tracing.traced(app, tracer)
    return metrics.instrument(app, access_log)


def limit_body(app: WSGIApp, max_bytes: int) -> WSGIApp:
    """Answer 413 to a request whose Content-Length exceeds ``max_bytes``, and close the connection.

    A chunked body is counted as it streams; past the limit its read fails, which the proxy turns
    into an error answer (the status line may already be on its way, so it cannot be 413).
    """
    too_large = error_response(413, f"request body larger than {max_bytes} bytes")

    def limited(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        length = environ.get("CONTENT_LENGTH")
        if length and int(length) > max_bytes:
            environ[BODY_REFUSED] = True
            return too_large(environ, lambda s, h, *a: start_response(s, [*h, ("Connection", "close")], *a))
        if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            environ["wsgi.input"] = CappedInput(environ["wsgi.input"], max_bytes)
        return app(environ, start_response)
    return limited


class BodyTooLarge(IOError):
    """A chunked request body went past ``--max-body-bytes``."""


class CappedInput:
    """``wsgi.input`` that fails once more than ``limit`` bytes were read."""

    def __init__(self, stream: IO[bytes], limit: int) -> None:
        self.stream, self.limit, self.seen = stream, limit, 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.seen += len(data)
        if self.seen > self.limit:
            raise BodyTooLarge(f"request body larger than {self.limit} bytes")
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


# --- gunicorn's entry -----------------------------------------------------------------------------

def create_app(conf_d: str = "conf.d", watch: bool = True, trusted_proxies: Sequence[str] = (), *,
               max_body_bytes: Optional[int] = ServerLimits.max_body_bytes, log_format: Optional[str] = "text",
               log_stream: Optional[TextIO] = None, allow_encoded: str = "", sanitize_path: bool = True,
               metrics_path: Optional[str] = None) -> WSGIApp:
    """Factory for WSGI servers such as gunicorn: a Gateway over conf_d behind the same edge as
    ``gatekeeper serve`` (body limit, metrics, access log), watching conf_d for changes.

    The options are ``gatekeeper serve``'s, with its defaults: ``max_body_bytes`` (``--max-body-bytes``),
    ``log_format`` of the access log (``"text"``, ``"json"``, or None for no access log; written to
    ``log_stream``, default stderr), ``allow_encoded`` (``--allow-encoded``, e.g. ``"slash,semicolon"``) and
    ``sanitize_path`` (False: ``--no-sanitize-path``). gunicorn has no admin listener: ``metrics_path``
    (e.g. ``"/metrics"``) answers Prometheus scrapes on the traffic listener (docs/operations.md).

    Call it in the serving process (gunicorn without ``--preload`` does, in each worker): it starts the
    conf.d watcher and the key-set fetchers, which a fork would not carry into a child. Under
    ``--preload`` a worker's key sets restart their fetchers on first use (jwt/remote.py resets them after
    a fork), but the watcher stays the master's: use ``watch=False`` there and reload by restarting.
    """
    from gatekeeper.jwt import remote
    from gatekeeper.ops import metrics
    from gatekeeper.ops.accesslog import AccessLog
    from gatekeeper.proxy import health

    policy = PathPolicy(allowed=parse_allowed(allow_encoded), sanitize=sanitize_path)
    gateway = Gateway(conf_d, trusted_proxies=trusted_proxies, request_path=PathSettings(policy))
    gateway.loader.on_reload.append(metrics.record_reload)
    metrics.record_reload(gateway.loader, True)
    remote.enable_prefetch()  # fetch the loaded key sets now, and each new one as a reload builds it
    health.enable_checks()  # active health checks, in this (serving) process
    if watch:
        gateway.loader.watch()
    access_log = AccessLog(log_format, log_stream) if log_format else None
    app = edge_stack(gateway, max_body_bytes=max_body_bytes, access_log=access_log)
    return app if metrics_path is None else with_metrics(app, metrics_path)


def with_metrics(app: WSGIApp, path: str) -> WSGIApp:
    """``app``, but ``GET path`` answers the Prometheus exposition (every worker's in multiprocess mode).

    Outside the edge stack, as the admin listener is under ``gatekeeper serve``: scrapes are not counted.
    """
    from gatekeeper.ops import metrics

    def scraped(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != path or environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return app(environ, start_response)
        body, content_type = metrics.exposition()
        start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
        return [body]
    return scraped
