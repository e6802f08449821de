"""The gateway as a WSGI callable: decides the request's canonical path once (requestpath.py), reads the
current configuration once per request and hands the request to the matching router's pre-built handler.
"""
from __future__ import annotations

from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import IO, Any, Callable, Dict, Iterable, Optional, Sequence

from gatekeeper.config.compile import CompileOptions, Config
from gatekeeper.proxy.balancer import error_response, strip_connection_headers
from gatekeeper.requestpath import PathSettings, compile_path_policy, drop_forwarding_headers, has_forwarding_headers
from gatekeeper.wsgi import BODY_REFUSED, Environ, StartResponse, WSGIApp
from gatekeeper.wsgi import error_response as wsgi_error_response

NOT_FOUND = error_response(404, "Not Found")
_BAD_REQUESTS: Dict[str, Callable] = {}


def bad_request(reason: str) -> Callable:
    """The canned 400 for one refusal reason (a handful of fixed texts, built once each)."""
    answer = _BAD_REQUESTS.get(reason)
    if answer is None:
        answer = _BAD_REQUESTS[reason] = error_response(400, reason)
    return answer


class Gateway:
    """WSGI app routing requests by the routers of a conf.d directory.

    >>> gateway = Gateway("conf.d")            # loads conf.d now; errors are in gateway.config.errors
    >>> gateway.loader.reload()                # re-read conf.d (the watcher does this on every change)

    Under gunicorn: ``gunicorn -k gevent 'gatekeeper.app:create_app("conf.d")'``.
    """

    def __init__(self, conf_d: "str | Path", *, entrypoint: Optional[str] = None,
                 options: Optional[CompileOptions] = None, loader: Optional["ConfigLoader"] = None,
                 trusted_proxies: Sequence[str] = (), request_path: PathSettings = PathSettings()) -> None:
        from gatekeeper.config.reload import ConfigLoader

        self.trusted_proxies = tuple(ip_network(n, strict=False) for n in trusted_proxies)
        self.request_path = request_path
        self.decide_path = compile_path_policy(request_path.policy(entrypoint))

        self.loader = loader or ConfigLoader(conf_d, options=options)
        if self.loader.config is None:
            self.loader.load()
        self.entrypoint = entrypoint

    @property
    def config(self) -> Config:
        return self.loader.config  # type: ignore[return-value]

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

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        refused = self.decide_path(environ)  # before routing: the path that routes is the path forwarded
        if refused is not None:
            return bad_request(refused)(environ, start_response)
        if has_forwarding_headers(environ) and not self.trusts(environ.get("REMOTE_ADDR", "")):
            drop_forwarding_headers(environ)  # a client's claims about earlier hops are not passed on
        config = self.loader.config  # read once: a reload mid-request cannot change what this request sees
        router = config.match(environ, self.entrypoint)
        if router is None:
            return NOT_FOUND(environ, start_response)
        environ["gatekeeper.router"] = router.name
        # Before any middleware sets headers: `Connection: X-User` must not drop a header the gateway set.
        strip_connection_headers(environ)
        return router.handler(environ, start_response)


def create_app(conf_d: str = "conf.d", watch: bool = True, trusted_proxies: Sequence[str] = ()) -> Gateway:
    """Factory for WSGI servers such as gunicorn: a Gateway over conf_d, watching it for changes.

    Call it in the serving process (gunicorn without ``--preload`` does, in each worker): it starts the
    conf.d watcher and the key-set fetchers, which a fork would not carry into a child. Under
    ``--preload`` a worker's key sets restart their fetchers on first use (jwks.py resets them after a
    fork), but the watcher stays the master's: use ``watch=False`` there and reload by restarting.
    """
    from gatekeeper.jwt import remote as jwks
    gateway = Gateway(conf_d, trusted_proxies=trusted_proxies)
    jwks.enable_prefetch()  # fetch the loaded key sets now, and each new one as a reload builds it
    if watch:
        gateway.loader.watch()
    return gateway


# --- the request edge: what every entry (serve, gunicorn, workers) wraps around the Gateway -------------

def edge_stack(app: WSGIApp, *, max_body_bytes: Optional[int] = None,
               access_log: Optional[Callable[..., None]] = None) -> WSGIApp:
    """``app`` behind the request edge: the body limit, then metrics and the access log (outermost, so a
    413 is counted and logged too)."""
    # imported here: prometheus_client must see PROMETHEUS_MULTIPROC_DIR, which the workers' parent sets
    # before forking and never imports metrics itself (server/workers.py)
    from gatekeeper.ops import metrics

    if max_body_bytes is not None:
        app = limit_body(app, max_body_bytes)
    return metrics.instrument(app, access_log)


def limit_body(app: WSGIApp, max_bytes: int) -> WSGIApp:
    """Answer 413 to a request whose Content-Length exceeds ``max_bytes``, and close the connection.

    A chunked body is counted as it streams; past the limit its read fails, which the proxy turns
    into an error answer (the status line may already be on its way, so it cannot be 413).
    """
    too_large = wsgi_error_response(413, f"request body larger than {max_bytes} bytes")

    def limited(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        length = environ.get("CONTENT_LENGTH")
        if length and int(length) > max_bytes:
            environ[BODY_REFUSED] = True
            return too_large(environ, lambda s, h, *a: start_response(s, h + [("Connection", "close")], *a))
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
