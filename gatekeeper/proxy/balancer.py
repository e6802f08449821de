"""Streaming reverse proxy: load-balanced services, canned 502/503/504 answers, upstream failures.

Everything decidable at config compile time is decided there: a :class:`ServerSpec` parses and checks its
URL once, each server gets one keep-alive :class:`~gatekeeper.proxy.client.ConnectionPool`, and the smooth
weighted round-robin order is precomputed. Per request the proxy only rebuilds the headers (rewrite.py)
and moves bytes (client.py, response.py).

Usage::

    app = make_load_balancer([ServerSpec("http://127.0.0.1:9000", weight=3),
                              ServerSpec("http://127.0.0.1:9001")])
    split = make_weighted([(app, 3), (other_app, 1)])
"""
from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Callable, Dict, Iterable, Optional, Protocol, Sequence, Tuple
from urllib.parse import urlsplit

from gatekeeper.errors import BadGateway, ConfigError, GatewayTimeout
from gatekeeper.options import safe_url, type_name
from gatekeeper.proxy import tunnel
from gatekeeper.proxy.client import (
    DEFAULT_LIMITS,
    ClientBodyError,
    ConnectionPool,
    ProxyLimits,
    Request,
    Response,
)
from gatekeeper.proxy.composite import NO_SERVER, Balancer, Failover, Weighted, is_healthy
from gatekeeper.proxy.failures import upstream_failed
from gatekeeper.proxy.health import (
    STATE_OBSERVERS,
    ActiveChecker,
    HealthCheckDef,
    PassiveHealthDef,
    PassiveMarks,
    Target,
    register,
)
from gatekeeper.proxy.response import Relay
from gatekeeper.proxy.rewrite import body_reader, forwarded_headers, response_headers, upstream_target
from gatekeeper.proxy.sticky import StickyCookie, StickyDef
from gatekeeper.wsgi import (
    UPGRADE,
    UPSTREAM,
    UPSTREAM_ERROR,
    Environ,
    StartResponse,
    WSGIApp,
    error_response,
)

log = logging.getLogger("gatekeeper.proxy")

__all__ = ["ProxyLimits", "ServerSpec", "is_healthy", "make_failover", "make_load_balancer", "make_weighted"]


class UpstreamPool(Protocol):
    """What a server's pool does: :class:`~gatekeeper.proxy.client.ConnectionPool`, or scripts/bench_proxy's
    urllib3 contender."""

    def send(self, request: Request) -> Response: ...

    def close(self) -> None: ...


PoolFactory = Callable[[str, str, int, ProxyLimits], UpstreamPool]


@dataclass(frozen=True)
class ServerSpec:
    """One upstream server, ``http[s]://host[:port][/base]``, checked once when the config compiles.

    >>> ServerSpec("http://127.0.0.1:9000/api", weight=2).base_path
    '/api'
    """

    url: str
    weight: int = 1
    scheme: str = field(init=False, repr=False, compare=False)
    host: str = field(init=False, repr=False, compare=False)
    port: int = field(init=False, repr=False, compare=False)
    base_path: str = field(init=False, repr=False, compare=False)
    authority: str = field(init=False, repr=False, compare=False)  # Host header when not passed
    origin: str = field(init=False, repr=False, compare=False)  # scheme://host:port, for logs and metrics

    def __post_init__(self) -> None:
        if isinstance(self.weight, bool) or not isinstance(self.weight, int) or self.weight < 0:
            raise ConfigError(f"server {safe_url(self.url)!r}: weight must be a whole number >= 0, "
                              f"not {self.weight!r}")
        parts = parse_server_url(self.url)
        for name, value in zip(("scheme", "host", "port", "base_path", "authority"), parts):
            object.__setattr__(self, name, value)
        shown = f"[{self.host}]" if ":" in self.host else self.host
        object.__setattr__(self, "origin", f"{self.scheme}://{shown}:{self.port}")


def parse_server_url(url: str) -> Tuple[str, str, int, str, str]:
    """``url`` -> (scheme, host, port, base path without trailing slash, Host header value); remembered by
    text, so 10,000 services naming one upstream parse it once (~7 us each; an error is not remembered)."""
    if not isinstance(url, str):
        raise ConfigError(f"server url: {type_name(url)}, not a string (expected http://host[:port][/path])")
    return _parse_url_text(url)


@functools.lru_cache(maxsize=4096)
def _parse_url_text(url: str) -> Tuple[str, str, int, str, str]:
    def bad(reason: str) -> ConfigError:  # the URL shown without the userinfo or query that may hold a password
        return ConfigError(f"server url {safe_url(url)!r}: {reason} (expected http://host[:port][/path])")
    try:
        parts = urlsplit(url.strip())
    except ValueError:  # an unclosed "[" (IPv6)
        raise bad("not a URL") from None
    if parts.scheme not in ("http", "https"):
        raise bad("scheme must be http or https")
    if not parts.hostname:
        raise bad("no host")
    if parts.username is not None or parts.password is not None:
        raise bad("credentials in the url are not supported")
    if parts.query or parts.fragment:
        raise bad("no query or fragment allowed")
    try:
        port = parts.port
    except ValueError:
        raise bad("port must be a number from 1 to 65535") from None
    default = 443 if parts.scheme == "https" else 80
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    authority = shown if port in (None, default) else f"{shown}:{port}"
    return parts.scheme, host, port or default, parts.path.rstrip("/"), authority


# --- canned answers -------------------------------------------------------------------------------

BAD_REQUEST_BODY = error_response(400, "incomplete request body")


# --- forwarding -----------------------------------------------------------------------------------

class Server:
    """A :class:`ServerSpec` with its connection pool, made once per compiled configuration."""

    __slots__ = ("pool", "spec")

    def __init__(self, spec: ServerSpec, limits: ProxyLimits, pool_factory: PoolFactory) -> None:
        self.spec = spec
        self.pool = pool_factory(spec.scheme, spec.host, spec.port, limits)

    def host_header(self, environ: Environ, pass_host_header: bool) -> str:
        """The client's Host (passHostHeader, the default), else the server's own host[:port]."""
        return (pass_host_header and environ.get("HTTP_HOST")) or self.spec.authority

    def forward(self, environ: Environ, start_response: StartResponse, pass_host_header: bool) -> Iterable[bytes]:
        """Send the request to this server and stream its answer.

        The first piece of the body is read before ``start_response``: until then nothing went to the
        client, so any upstream failure is still a 502 (504 on a timeout). After it, a failure cuts the
        client connection (:class:`Relay`). A body that came whole with the first piece goes back as a
        list, its connection already back in the pool.
        """
        environ[UPSTREAM] = self.spec.origin  # for the access log and metrics
        target = upstream_target(environ, self.spec.base_path)
        headers = forwarded_headers(environ, self.host_header(environ, pass_host_header))
        offer = environ.get(UPGRADE)
        if offer is not None and isinstance(self.pool, ConnectionPool):
            # WebSocket or another Upgrade the server can hand over: the 101, then bytes both ways
            return tunnel.forward(environ, start_response, offer, self.pool, target=target, headers=headers)
        read, length = body_reader(environ)
        request = Request(environ["REQUEST_METHOD"], target, headers, read, length)
        body = None
        try:
            response = self.pool.send(request)
            body = response.body
            first = body.read_first()
        except (GatewayTimeout, BadGateway) as exc:
            return upstream_failed(environ, start_response, exc, body=body)
        except ClientBodyError as exc:
            log.info("client body: %s", exc)
            return BAD_REQUEST_BODY(environ, start_response)
        status = f"{response.status} {response.reason or phrase(response.status)}"
        try:
            start_response(status, response_headers(response.headers))
        except BaseException:
            body.close()
            raise
        if body.done:
            body.close()  # read to its end: the connection goes back to the pool now
            return [first] if first else []
        return Relay(body, environ)


def phrase(code: int) -> str:
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "Unknown"


class LoadBalancer:
    """WSGI app for a ``loadBalancer`` service; ``close()`` stops its health checks and drops idle upstream
    connections.

    Servers a health check found down, or that passive health took out, leave the rotation (the WRR order
    is rebuilt over the others); with none left the service answers 503. ``healthy()`` tells a parent
    (weighted, failover) whether any server is up.
    """

    def __init__(self, servers: Sequence[ServerSpec], pass_host_header: bool, limits: ProxyLimits,
                 pool_factory: PoolFactory, *, name: str = "", health_check: Optional[HealthCheckDef] = None,
                 passive: Optional[PassiveHealthDef] = None, sticky: Optional[StickyDef] = None) -> None:
        self.name = name
        self.servers = [Server(spec, limits, pool_factory) for spec in servers]
        self.pass_host_header = pass_host_header
        self.up = [True] * len(self.servers)            # active health: servers start up, as in Traefik
        self.out_until = [0.0] * len(self.servers)      # passive health: out of the rotation until then
        self.passive = PassiveMarks(len(self.servers), passive) if passive is not None else None
        self.sticky = StickyCookie(sticky, name, [s.spec.url for s in self.servers]) if sticky else None
        self.checks_active = health_check is not None
        self.announced = [False] * len(self.servers)    # whose first check result observers have seen
        self.rebuild()
        self.checker: Optional[ActiveChecker] = None
        if health_check is not None:
            targets = [Target(s.spec.scheme, s.spec.host, s.spec.port, s.spec.authority) for s in self.servers]
            self.checker = ActiveChecker(targets, health_check, self.report, pool_factory)
            register(self.checker)

    def usable(self, index: int, now: float) -> bool:
        return self.up[index] and self.out_until[index] <= now

    def rebuild(self) -> None:
        """The WRR order over the usable servers; when the next passive mark ends, rebuild again."""
        now = time.monotonic()
        usable = [i for i in range(len(self.servers)) if self.usable(i, now)]
        self.balancer = Balancer([(i, self.servers[i].spec.weight) for i in usable])
        self.any_up = bool(usable)
        later = [t for t in self.out_until if t > now]
        self.rebuild_at = min(later) if later else float("inf")

    def report(self, index: int, up: bool, why: str) -> None:
        """An active check's result (from the checker's loop)."""
        origin = self.servers[index].spec.origin
        if self.up[index] == up and self.announced[index]:
            return
        if not self.announced[index] or self.up[index] != up:
            self.announced[index] = True
            for observe in STATE_OBSERVERS:
                observe(self.name, origin, up)
        if self.up[index] == up:
            return
        self.up[index] = up
        if up:
            log.info("service %s: server %s is healthy again", self.name or "-", origin)
        else:
            log.warning("service %s: server %s is unhealthy (%s): out of the rotation", self.name or "-", origin,
                        why)
        self.rebuild()

    def healthy(self) -> bool:
        if time.monotonic() >= self.rebuild_at:
            self.rebuild()
        return self.any_up

    def server_status(self) -> Dict[str, str]:
        """``{url: "UP" | "DOWN"}`` as Traefik's API shows it (for /config, the dashboard and metrics)."""
        now = time.monotonic()
        return {s.spec.url: "UP" if self.usable(i, now) else "DOWN" for i, s in enumerate(self.servers)}

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if self.checker is not None and not self.checker.threads:
            # a request is served in the serving process, after any fork: checks start here at the latest
            self.checker.start()
        now = time.monotonic()
        if now >= self.rebuild_at:
            self.rebuild()
        index = self.sticky.chosen(environ) if self.sticky is not None else None
        if index is None or not self.usable(index, now):
            index = self.balancer.pick()
            if index is None:
                return NO_SERVER(environ, start_response)
            if self.sticky is not None:
                start_response = self.sticky.setting(start_response, index)
        result = self.servers[index].forward(environ, start_response, self.pass_host_header)
        if self.passive is not None and environ.get(UPSTREAM_ERROR) in ("bad_gateway", "timeout"):
            out_until = self.passive.failed(index, now)
            if out_until is not None:
                log.warning("service %s: server %s failed: out of the rotation for %gs (passive health)",
                            self.name or "-", self.servers[index].spec.origin, out_until - now)
                self.out_until[index] = out_until
                self.rebuild()
        return result

    def close(self) -> None:
        if self.checker is not None:
            self.checker.stop()
        for server in self.servers:
            server.pool.close()


def make_load_balancer(servers: Sequence[ServerSpec], *, pass_host_header: bool = True,
                       limits: ProxyLimits = DEFAULT_LIMITS, pool_factory: PoolFactory = ConnectionPool,
                       name: str = "", health_check: Optional[HealthCheckDef] = None,
                       passive: Optional[PassiveHealthDef] = None, sticky: Optional[StickyDef] = None
                       ) -> LoadBalancer:
    """A WSGI app proxying to ``servers`` in smooth weighted round robin; no servers (or none up): 503.

    ``pool_factory(scheme, host, port, limits)`` exists for scripts/bench_proxy's client comparison.
    ``health_check`` checkers start with :func:`gatekeeper.proxy.health.enable_checks`.
    """
    return LoadBalancer(servers, pass_host_header, limits, pool_factory, name=name, health_check=health_check,
                        passive=passive, sticky=sticky)


def make_weighted(children: Sequence[Tuple[WSGIApp, int]], *, name: str = "", sticky: Optional[StickyDef] = None,
                  skip_down: bool = False, identities: Sequence[str] = ()) -> Weighted:
    """A WSGI app handing each request to one of ``children`` (app, weight) in smooth WRR order.

    ``skip_down`` (Traefik's ``weighted.healthCheck``): members whose ``healthy()`` is false are left out.
    ``identities`` name the members for a sticky cookie (default: their positions).
    """
    return Weighted(children, name=name, sticky=sticky, skip_down=skip_down,
                    identities=identities or [str(i) for i in range(len(children))])


def make_failover(main: WSGIApp, fallback: WSGIApp) -> Failover:
    """``main`` while it has a server up (it must have ``healthy()``), else ``fallback``."""
    return Failover(main, fallback)
