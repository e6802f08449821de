"""Server health: active checks (Traefik's ``healthCheck``) and passive marks (``passiveHealthCheck``).

An :class:`ActiveChecker` probes each server of one load balancer in its own background loop and reports
up/down changes through a callback; the load balancer takes a server that is down out of its rotation.
Checkers are background work, so they start only in a serving process, after any fork: a compiled
configuration registers its checkers, and :func:`enable_checks` (called by ``serve_process`` and
``create_app`` next to ``enable_prefetch``) starts them, and every checker built after it at once. Closing
the load balancer (a reload retired its service) stops its checker. ``gatekeeper check`` never starts one.

Usage::

    checker = ActiveChecker(targets, definition, report=lambda index, up, why: ...)
    register(checker)        # runs now if checks are enabled, else when enable_checks() is called
    checker.stop()
"""
from __future__ import annotations

import logging
import os
import threading
import weakref
from dataclasses import dataclass
from typing import Callable, List, Optional, Protocol, Sequence, Tuple
from urllib.parse import urljoin, urlsplit

from gatekeeper.errors import BadGateway, GatewayTimeout
from gatekeeper.proxy.client import ConnectionPool, ProxyLimits, Request, Response

log = logging.getLogger("gatekeeper.health")

__all__ = ["STATE_OBSERVERS", "ActiveChecker", "HealthCheckDef", "PassiveHealthDef", "PassiveMarks", "Target",
           "enable_checks", "register"]

MAX_REDIRECTS = 10  # as Go's http.Client, which Traefik's checks use
REDIRECTS = (301, 302, 303, 307, 308)



class ProbePool(Protocol):
    """What a check needs of a pool (balancer.py's UpstreamPool)."""

    def send(self, request: Request) -> Response: ...

    def close(self) -> None: ...


PoolMaker = Callable[[str, str, int, ProxyLimits], ProbePool]
Report = Callable[[int, bool, str], None]
# (service, server origin, up): called on each server's first check result and on every change, in the
# process running the checks (ops/metrics keeps the gatekeeper_server_up gauge from it)
STATE_OBSERVERS: List[Callable[[str, str, bool], None]] = []


@dataclass(frozen=True)
class HealthCheckDef:
    """A loadBalancer's active ``healthCheck`` (Traefik's options, durations in seconds)."""

    path: str
    method: str = "GET"
    status: int = 0                             # 0: any 2xx or 3xx is healthy
    scheme: str = ""                            # "": the server's own
    port: int = 0                               # 0: the server's own
    hostname: str = ""                          # "": the server's own host[:port]
    headers: Tuple[Tuple[str, str], ...] = ()
    interval: float = 30.0
    unhealthy_interval: float = 0.0             # 0: the interval (Traefik's default)
    timeout: float = 5.0
    follow_redirects: bool = True


@dataclass(frozen=True)
class PassiveHealthDef:
    """``passiveHealthCheck``: ``max_failed_attempts`` failed requests within ``failure_window`` seconds take
    a server out of the rotation for ``failure_window`` seconds."""

    failure_window: float = 10.0
    max_failed_attempts: int = 1


@dataclass(frozen=True)
class Target:
    """Where one server is checked: its own scheme/host/port unless the check overrides them."""

    scheme: str
    host: str
    port: int
    authority: str   # Host header: the server's host[:port] unless ``hostname`` is set


def probe_target(target: Target, check: HealthCheckDef) -> Target:
    """The server's target with the check's ``scheme``, ``port`` and ``hostname`` applied.

    >>> probe_target(Target("http", "10.0.0.1", 80, "10.0.0.1"), HealthCheckDef("/h", port=8081)).port
    8081
    """
    scheme = check.scheme or target.scheme
    port = check.port or target.port
    if check.hostname:
        authority = check.hostname
    elif check.port == 0 and scheme == target.scheme:
        authority = target.authority
    else:
        shown = f"[{target.host}]" if ":" in target.host else target.host
        authority = shown if port == (443 if scheme == "https" else 80) else f"{shown}:{port}"
    return Target(scheme, target.host, port, authority)


def healthy_status(status: int, check: HealthCheckDef) -> bool:
    """Traefik's rule: the configured ``status`` if any, else any 2xx or 3xx."""
    return status == check.status if check.status else 200 <= status < 400


def probe(target: Target, check: HealthCheckDef, make_pool: PoolMaker = ConnectionPool) -> Tuple[bool, str]:
    """One check of one server (its own target: the check's scheme, port and hostname are applied here):
    (healthy, why not). Connecting and each read are bounded by ``check.timeout``."""
    limits = ProxyLimits(connect_timeout=check.timeout, response_timeout=check.timeout, max_idle_per_server=0)
    method, path, current = check.method, check.path, probe_target(target, check)
    for _ in range(MAX_REDIRECTS + 1):
        headers = [("Host", current.authority), ("User-Agent", "gatekeeper-healthcheck"),
                   ("Connection", "close"), *check.headers]
        pool = make_pool(current.scheme, current.host, current.port, limits)
        try:
            response = pool.send(Request(method, path, headers, None, 0))
            response.body.close()
        except (BadGateway, GatewayTimeout, OSError) as exc:
            return False, str(exc) or type(exc).__name__
        finally:
            pool.close()
        location = {k.lower(): v for k, v in response.headers}.get("location")
        if not (check.follow_redirects and response.status in REDIRECTS and location):
            if healthy_status(response.status, check):
                return True, ""
            return False, f"answered {response.status}"
        base = f"{current.scheme}://{current.authority}{path}"
        moved = urlsplit(urljoin(base, location))
        if moved.scheme not in ("http", "https") or not moved.hostname:
            return False, "redirected to an unusable location"
        port = moved.port or (443 if moved.scheme == "https" else 80)
        current = Target(moved.scheme, moved.hostname, port, moved.netloc.rpartition("@")[2])
        path = (moved.path or "/") + (f"?{moved.query}" if moved.query else "")
        if response.status == 303 or (response.status in (301, 302) and method == "POST"):
            method = "GET"
    return False, "too many redirects"


class ActiveChecker:
    """Checks each target every ``interval`` (``unhealthyInterval`` while it is down) and calls
    ``report(index, up, why)`` after every check; one background loop per server."""

    def __init__(self, targets: Sequence[Target], check: HealthCheckDef, report: Report,
                 make_pool: PoolMaker = ConnectionPool) -> None:
        self.targets = list(targets)
        self.check, self.report, self.make_pool = check, report, make_pool
        self.stopped = threading.Event()
        self.threads: List[threading.Thread] = []

    def start(self) -> None:
        if self.threads or self.stopped.is_set():
            return
        for index in range(len(self.targets)):
            thread = threading.Thread(target=self.loop, args=(index,), daemon=True,
                                      name=f"healthcheck {self.targets[index].authority}")
            self.threads.append(thread)
            thread.start()

    def loop(self, index: int) -> None:
        while not self.stopped.is_set():
            try:
                up, why = probe(self.targets[index], self.check, self.make_pool)
            except Exception as exc:  # a bug in one check must not end the loop (and leave a server down)
                log.exception("health check of %s failed", self.targets[index].authority)
                up, why = False, type(exc).__name__
            if self.stopped.is_set():
                return
            self.report(index, up, why)
            self.stopped.wait(self.check.interval if up else (self.check.unhealthy_interval or self.check.interval))

    def stop(self) -> None:
        self.stopped.set()

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self.threads)


class PassiveMarks:
    """``passiveHealthCheck``: failed requests per server; ``max_failed_attempts`` of them within
    ``failure_window`` seconds put a server out of the rotation until the window has passed."""

    def __init__(self, size: int, definition: PassiveHealthDef) -> None:
        self.definition = definition
        self.failures: List[List[float]] = [[] for _ in range(size)]

    def failed(self, index: int, now: float) -> Optional[float]:
        """Record a failure; the time the server is out until, when this failure takes it out."""
        window = self.definition.failure_window
        recent = [t for t in self.failures[index] if now - t < window] + [now]
        if len(recent) >= self.definition.max_failed_attempts:
            self.failures[index] = []
            return now + window
        self.failures[index] = recent
        return None


# --- the process's checkers: started only once the serving process enables them -------------------------

class _Registry:
    def __init__(self) -> None:
        self.checkers: "weakref.WeakSet[ActiveChecker]" = weakref.WeakSet()
        self.enabled = False


_REGISTRY = _Registry()


def register(checker: ActiveChecker) -> None:
    """Keep ``checker`` to start with :func:`enable_checks`, or start it now if checks are enabled."""
    _REGISTRY.checkers.add(checker)
    if _REGISTRY.enabled:
        checker.start()


def enable_checks() -> None:
    """For the serving process (each worker, after the fork): start every registered checker and every
    checker registered from now on. Never called by ``gatekeeper check``, which stays offline."""
    _REGISTRY.enabled = True
    for checker in list(_REGISTRY.checkers):
        checker.start()


def running_checkers() -> List[ActiveChecker]:
    return [c for c in list(_REGISTRY.checkers) if c.running]


def _after_fork_in_child() -> None:
    """A forked child has none of its parent's threads: its checkers start afresh with enable_checks()."""
    _REGISTRY.enabled = False
    for checker in list(_REGISTRY.checkers):
        checker.threads = []


os.register_at_fork(after_in_child=_after_fork_in_child)
