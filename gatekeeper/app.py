"""The gateway as a WSGI callable: reads the current configuration once per request and hands the request
to the matching router's pre-built handler.
"""
from __future__ import annotations

from pathlib import Path
from ipaddress import ip_address, ip_network
from typing import Callable, Iterable, Optional, Sequence
from urllib.parse import unquote

from .compile import CompileOptions, Config
from .proxy import error_response, strip_connection_headers

NOT_FOUND = error_response(404, "Not Found")
SINGLE_DOTS = {".", "%2e"}
DOUBLE_DOTS = {"..", "%2e%2e", ".%2e", "%2e."}


def origin_form(environ: dict, raw: str) -> Optional[str]:
    """``GET http://host/p?q`` -> ``/p?q``, with the URI's authority as the Host (RFC 9112 3.2.2), so routing,
    dot-segment resolution and forwarding all see one path. ``*`` and other forms are left alone."""
    scheme, sep, rest = raw.partition("://")
    if not sep or not scheme.isalpha():
        return None
    authority, slash, path = rest.partition("/")
    if slash:
        target = "/" + path
    else:  # http://host or http://host?q
        authority, mark, query = authority.partition("?")
        target = "/" + mark + query
    environ["HTTP_HOST"] = authority
    environ["RAW_URI"] = target
    environ["PATH_INFO"] = unquote(target.partition("?")[0], "latin-1")
    return target


def remove_dot_segments(environ: dict) -> None:
    """Resolve ``.`` and ``..`` segments (also percent-encoded) in the request path before routing.

    Otherwise ``/api/%2E%2E/admin`` would match ``PathPrefix(`/api`)`` and reach an upstream that resolves it
    to ``/admin``, past the middlewares of the router that owns ``/admin``. Routing and forwarding both use the
    resolved path, as Traefik does with ``sanitizePath`` (RFC 3986 section 5.2.4).
    """
    raw = environ.get("RAW_URI")
    if not raw:
        return
    if raw[0] != "/":
        raw = origin_form(environ, raw)
        if raw is None:
            return
    path, sep, query = raw.partition("?")
    if "." not in path and "%2" not in path:
        return
    segments = path.split("/")[1:]
    if not any(seg.lower() in SINGLE_DOTS or seg.lower() in DOUBLE_DOTS for seg in segments):
        return
    kept: list = []
    for seg in segments:
        low = seg.lower()
        if low in SINGLE_DOTS:
            continue
        if low in DOUBLE_DOTS:
            if kept:
                kept.pop()
            continue
        kept.append(seg)
    trailing = "/" if segments[-1].lower() in SINGLE_DOTS | DOUBLE_DOTS and kept else ""
    clean = "/" + "/".join(kept) + trailing
    environ["RAW_URI"] = clean + sep + query
    environ["PATH_INFO"] = unquote(clean, "latin-1")


class Gateway:
    """WSGI app routing requests by the routers of a conf.d directory.

    >>> gateway = Gateway("conf.d")            # loads conf.d now; errors are in gateway.config.errors
    >>> gateway.loader.reload()                # re-read conf.d (the watcher does this on every change)

    Under gunicorn: ``gunicorn -k gevent 'gatekeeper.app:create_app("conf.d")'``.
    """

    def __init__(self, conf_d: "str | Path", *, entrypoint: Optional[str] = None,
                 options: Optional[CompileOptions] = None, loader: Optional["ConfigLoader"] = None,
                 trusted_proxies: Sequence[str] = ()) -> None:
        from .reload import ConfigLoader

        self.trusted_proxies = tuple(ip_network(n, strict=False) for n in trusted_proxies)

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
                       trusted_proxies=[str(n) for n in self.trusted_proxies])

    def trusts(self, peer: str) -> bool:
        """Whether the peer is a proxy whose ``X-Forwarded-For`` is kept (in front of its own address)."""
        if not self.trusted_proxies:
            return False
        try:
            address = ip_address(peer)
        except ValueError:
            return False
        return any(address in network for network in self.trusted_proxies)

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        remove_dot_segments(environ)
        if "HTTP_X_FORWARDED_FOR" in environ and not self.trusts(environ.get("REMOTE_ADDR", "")):
            del environ["HTTP_X_FORWARDED_FOR"]  # a client's claim about other hops is replaced, not kept
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
    from . import jwks
    gateway = Gateway(conf_d, trusted_proxies=trusted_proxies)
    jwks.enable_prefetch()  # fetch the loaded key sets now, and each new one as a reload builds it
    if watch:
        gateway.loader.watch()
    return gateway
