"""Prometheus metrics: the metric objects, the request observer, reload bookkeeping and the exposition.

With several workers, prometheus_client's multiprocess mode aggregates what every worker counted: the
parent sets ``PROMETHEUS_MULTIPROC_DIR`` before any worker imports this module (workers.py), each worker
writes its values to memory-mapped files there, and a scrape in any worker reads them all. Gauges say
how to combine per-process values (``livesum`` for in-flight and connections, ``liveall`` for the
configuration generation, which each worker reloads on its own).

Usage::

    app = instrument(gateway, access_log=AccessLog("text"))
    body = exposition()          # for GET /metrics
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, Optional, Tuple

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from gatekeeper.jwt import remote as jwks
from gatekeeper.jwt.fetch import safe_url
from gatekeeper.ops.accesslog import Exchange, fan_out, observe
from gatekeeper.wsgi import WSGIApp

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# A client can send any method name; unknown ones share one label value so cardinality stays bounded.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"})
NO_ROUTER = "none"
NO_UPSTREAM = "none"   # the request was answered without contacting an upstream (404, 401, a redirect ...)
LATENCY_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60)

REQUESTS = Counter("gatekeeper_requests",
                   "Requests answered, by router, method, status code and upstream server (none: not proxied)",
                   ["router", "method", "status", "upstream"])
LATENCY = Histogram("gatekeeper_request_duration_seconds",
                    "Time from the request reaching the gateway to the last response byte sent, by router",
                    ["router"], buckets=LATENCY_BUCKETS)
RESPONSE_BYTES = Counter("gatekeeper_response_bytes", "Response body bytes sent, by router", ["router"])
IN_FLIGHT = Gauge("gatekeeper_requests_in_flight", "Requests being answered now", multiprocess_mode="livesum")
CONNECTIONS = Gauge("gatekeeper_open_connections", "Client connections open now", multiprocess_mode="livesum")
JWT_OUTCOMES = Counter("gatekeeper_jwt_outcomes",
                       "JWT middleware decisions, by router and outcome (accepted, or the refusal reason)",
                       ["router", "outcome"])
UPSTREAM_ERRORS = Counter("gatekeeper_upstream_errors",
                          "Requests the proxy could not complete upstream, by router and kind", ["router", "kind"])
RELOADS = Counter("gatekeeper_config_reloads", "Configurations swapped in (the first load included)")
RELOAD_ERRORS = Counter("gatekeeper_config_reload_errors",
                        "Reloads that could not read conf.d, or whose new configuration reports errors")
GENERATION = Gauge("gatekeeper_config_generation", "Generation number of the configuration being served",
                   multiprocess_mode="liveall")
CONFIG_ERRORS = Gauge("gatekeeper_config_errors", "Problems reported by the configuration being served",
                      multiprocess_mode="liveall")
KEYSET_FETCHES = Counter("gatekeeper_keyset_fetches",
                         "Remote key set fetch attempts (jwksUrl, trustedIssuers; a discovery and its key set "
                         "count one), by key set URL", ["url"])
KEYSET_FAILURES = Counter("gatekeeper_keyset_fetch_failures",
                          "Remote key set fetch attempts that failed (the keys held keep serving), by key set URL",
                          ["url"])
KEYSET_KEYS = Gauge("gatekeeper_keyset_keys", "Keys held by each remote key set, per worker",
                    ["url"], multiprocess_mode="liveall")

_request_children: Dict[Tuple[str, str, int, Optional[str]], Tuple[Counter, Histogram, Counter]] = {}


def _children(router: str, method: str, status: int, upstream: Optional[str]) -> Tuple[Counter, Histogram, Counter]:
    """The labelled metric children for one (router, method, status, upstream), looked up once and cached.

    ``upstream`` is the server URL the proxy used (``environ["gatekeeper.upstream"]``): one value per
    configured server, so the cardinality stays that of the configuration. Shown without userinfo or
    query (safe_url), which could hold a credential.
    """
    key = (router, method, status, upstream)
    found = _request_children.get(key)
    if found is None:
        shown = NO_UPSTREAM if upstream is None else safe_url(upstream)
        found = (REQUESTS.labels(router, method, str(status), shown), LATENCY.labels(router),
                 RESPONSE_BYTES.labels(router))
        _request_children[key] = found
    return found


_labelled_children: Dict[Tuple[Any, ...], Any] = {}


def _labelled(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, looked up once (a labels() call costs ~2 µs; this a dict lookup)."""
    key = (id(metric), *labels)
    child = _labelled_children.get(key)
    if child is None:
        child = _labelled_children[key] = metric.labels(*labels)
    return child


def record(exchange: Exchange) -> None:
    """Count one finished request (the observer :func:`instrument` installs)."""
    IN_FLIGHT.dec()
    router = exchange.router or NO_ROUTER
    method = exchange.method if exchange.method in METHODS else "OTHER"
    requests, latency, sent = _children(router, method, exchange.status, exchange.upstream)
    requests.inc()
    latency.observe(exchange.duration)
    if exchange.bytes:
        sent.inc(exchange.bytes)
    if exchange.jwt_reason is not None:
        _labelled(JWT_OUTCOMES, router, exchange.jwt_reason).inc()
    elif exchange.jwt_ok:
        _labelled(JWT_OUTCOMES, router, "accepted").inc()
    if exchange.upstream_error is not None:
        _labelled(UPSTREAM_ERRORS, router, exchange.upstream_error).inc()


def record_key_fetch(keyset: "jwks.RemoteKeySet", ok: bool) -> None:
    """Count one key set fetch attempt (a jwks.FETCH_OBSERVERS hook), in the fetching worker.

    Counted as they happen rather than read from ``RemoteKeySet.status()`` at scrape time: with workers,
    a scrape is answered by one worker, and only counters in the multiprocess directory add up all of them.
    """
    url = safe_url(keyset.name)
    _labelled(KEYSET_FETCHES, url).inc()
    failures = _labelled(KEYSET_FAILURES, url)   # shown from the first fetch on, at 0 until one fails
    if not ok:
        failures.inc()
    _labelled(KEYSET_KEYS, url).set(keyset.status()["keys"])


jwks.FETCH_OBSERVERS.append(record_key_fetch)


def instrument(app: WSGIApp, access_log: Optional[Callable[[Exchange], None]] = None) -> WSGIApp:
    """``app`` measured (and access-logged when ``access_log`` is given)."""
    return observe(app, fan_out(record, access_log), start=IN_FLIGHT.inc)


def record_refused(exchange: Exchange) -> None:
    """Count a request the server refused before it reached the app (431 headers too large)."""
    IN_FLIGHT.inc()
    record(exchange)


def record_reload(loader: Any, swapped: bool) -> None:
    """After a load or reload (``swapped``: a new configuration went in): counts, generation, errors.

    A reload is in error when it could not read conf.d or its configuration reports problems
    (``loader.last_reload.errors``).
    """
    if swapped:
        RELOADS.inc()
    last = getattr(loader, "last_reload", None)
    if last is not None and last.errors:
        RELOAD_ERRORS.inc()
    config = loader.config
    if config is not None:
        GENERATION.set(config.generation)
        CONFIG_ERRORS.set(len(config.errors))


def exposition() -> Tuple[bytes, str]:
    """(body, content type) of the Prometheus text format, all workers aggregated in multiprocess mode."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST

