"""Prometheus metrics: the metric objects, the request observer, reload bookkeeping and the exposition.

With several workers, prometheus_client's multiprocess mode aggregates what every worker counted: the
parent sets ``PROMETHEUS_MULTIPROC_DIR`` before any worker imports this module (workers.py), each worker
writes its values to memory-mapped files there, and a scrape in any worker reads them all. Gauges say
how to combine per-process values (``livesum`` for in-flight and connections, ``liveall`` for the
configuration generation, which each worker reloads on its own).

In one process, the per-request metrics (requests, latency, response bytes, JWT outcomes, in flight) are
plain integers in dicts, turned into metric families when scraped (:class:`RequestCounts`): a request
costs a few increments instead of several ``prometheus_client`` calls, each taking a lock. With workers
the ``prometheus_client`` objects count, since only their memory-mapped files add up across processes.

Traefik's families (entry point, router, service; ``code``, ``method``, ``protocol``) are summed at scrape time
from one detail row per request (families.py). No ``_created`` series: prometheus_client's are turned off.

Usage::

    app = instrument(gateway, access_log=AccessLog("text"))
    body = exposition()          # for GET /metrics
"""
from __future__ import annotations

import bisect
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from gatekeeper.jwt import remote as jwks
from gatekeeper.ops import families
from gatekeeper.ops.exchange import DEFAULT_ENTRYPOINT, Exchange, fan_out, observe
from gatekeeper.ops.families import (
    DETAIL_LABELS,
    LATENCY_BUCKETS,
    NO_UPSTREAM,
    DetailKey,
    Row,
)
from gatekeeper.options import safe_url
from gatekeeper.proxy import health
from gatekeeper.wsgi import WSGIApp

# a `_created` series doubled every counter; Traefik has none
disable_created_metrics()  # type: ignore[no-untyped-call]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# A client can send any method name; unknown ones share one label value so cardinality stays bounded.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"})
NO_ROUTER = "none"
# Decided at import: with --workers the parent sets the directory before any worker imports this module.
MULTIPROCESS = bool(os.environ.get(MULTIPROC_ENV))
_PER_REQUEST = REGISTRY if MULTIPROCESS else None   # in one process, RequestCounts exposes these instead

JWT_HELP = "JWT middleware decisions, by router and outcome (accepted, or the refusal reason)"
IN_FLIGHT = Gauge("gatekeeper_requests_in_flight", "Requests being answered now", multiprocess_mode="livesum")
CONNECTIONS = Gauge("gatekeeper_open_connections", "Client connections open now, by entry point and protocol "
                    "(TCP)", ["entrypoint", "protocol"], multiprocess_mode="livesum")
JWT_OUTCOMES = Counter("gatekeeper_jwt_outcomes", JWT_HELP, ["router", "outcome"], registry=_PER_REQUEST)
UPSTREAM_ERRORS = Counter("gatekeeper_upstream_errors",
                          "Requests the proxy could not complete upstream, by router and cause (connection_refused, "
                          "dns, timeout, reset, tls, bad_gateway, aborted)", ["router", "kind"])
MIDDLEWARE_OUTCOMES = Counter("gatekeeper_middleware_outcomes",
                              "Requests a middleware answered instead of the service (rate_limited, "
                              "ip_denied, unauthorized, redirected...), by router, middleware and outcome",
                              ["router", "middleware", "outcome"])
RELOADS = Counter("gatekeeper_config_reloads", "Configurations swapped in (the first load included)")
LAST_RELOAD_SUCCESS = Gauge("gatekeeper_config_last_reload_success", "Unix time of the last reload that swapped "
                            "in a configuration (Traefik's traefik_config_last_reload_success)",
                            multiprocess_mode="max")
RELOAD_ERRORS = Counter("gatekeeper_config_reload_errors",
                        "Reloads that could not read conf.d, or whose new configuration reports errors")
GENERATION = Gauge("gatekeeper_config_generation", "Generation number of the configuration being served",
                   multiprocess_mode="liveall")
CONFIG_ERRORS = Gauge("gatekeeper_config_errors", "Problems reported by the configuration being served",
                      multiprocess_mode="liveall")
STALE_OBJECTS = Gauge("gatekeeper_config_stale_objects", "Objects serving their last good version because their "
                      "new definition is in error (a fresh process would not serve them), by kind",
                      ["kind"], multiprocess_mode="liveall")
KEYSET_FETCHES = Counter("gatekeeper_keyset_fetches",
                         "Remote key set fetch attempts (jwksUrl, trustedIssuers; a discovery and its key set "
                         "count one), by key set URL", ["url"])
KEYSET_FAILURES = Counter("gatekeeper_keyset_fetch_failures",
                          "Remote key set fetch attempts that failed (the keys held keep serving), by key set URL",
                          ["url"])
KEYSET_KEYS = Gauge("gatekeeper_keyset_keys", "Keys held by each remote key set, per worker",
                    ["url"], multiprocess_mode="liveall")
SERVICE_RETRIES = Counter("gatekeeper_service_retries", "Retries the retry middleware made, by the router's service "
                          "(Traefik's traefik_service_retries_total)", ["service"])
TLS_NOT_AFTER = Gauge("gatekeeper_tls_certs_not_after", "Expiry (Unix time) of each entry point's certificate, by "
                      "cn, sans and serial (Traefik's traefik_tls_certs_not_after)", ["cn", "sans", "serial"],
                      multiprocess_mode="max")
SERVICE_SERVER_UP = Gauge("gatekeeper_service_server_up", "1 while a load balancer's active health check finds "
                          "the server up, else 0 (Traefik's traefik_service_server_up; per worker)", ["service", "url"],
                          multiprocess_mode="liveall")
SERVER_UP = Gauge("gatekeeper_server_up", "1 while a load balancer's active health check finds the server up, "
                  "else 0 (per worker: each runs its own checks)", ["service", "server"], multiprocess_mode="liveall")

# --workers: one detail row per request in memory-mapped files, summed into Traefik's families when scraped
DETAIL_LATENCY = Histogram("gatekeeper_detail_request_duration_seconds", "detail row (not shown)", DETAIL_LABELS,
                           buckets=LATENCY_BUCKETS, registry=_PER_REQUEST)
DETAIL_BYTES_IN = Counter("gatekeeper_detail_requests_bytes", "detail row (not shown)", DETAIL_LABELS,
                          registry=_PER_REQUEST)
DETAIL_BYTES_OUT = Counter("gatekeeper_detail_responses_bytes", "detail row (not shown)", DETAIL_LABELS,
                           registry=_PER_REQUEST)

_detail_children: Dict[DetailKey, Tuple[Histogram, Counter, Counter]] = {}


def _detail(key: DetailKey) -> Tuple[Histogram, Counter, Counter]:
    """With workers: the detail row's histogram and byte counters for ``key``, looked up once and cached.

    The upstream in ``key`` is already shown without userinfo or query (safe_url), which could hold a
    credential; one value per configured server, so the cardinality stays that of the configuration."""
    found = _detail_children.get(key)
    if found is None:
        found = _detail_children[key] = (DETAIL_LATENCY.labels(*key), DETAIL_BYTES_IN.labels(*key),
                                          DETAIL_BYTES_OUT.labels(*key))
    return found


_labelled_children: Dict[Tuple[Any, ...], Any] = {}


def _labelled(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, looked up once (a labels() call costs ~2 µs; this a dict lookup)."""
    key = (id(metric), *labels)
    child = _labelled_children.get(key)
    if child is None:
        child = _labelled_children[key] = metric.labels(*labels)
    return child


class RequestCounts(Collector):
    """The per-request metrics of one process as plain numbers, exposed as metric families when scraped.

    ``detail[(entrypoint, router, service, upstream shown, method, code, protocol)]`` is a
    :class:`families.Row`; a scrape sums the rows into the per-router families and Traefik's three levels.
    ``outcomes[(router, outcome)] = [count, created]``; ``in_flight[0]``. ``requests`` and ``routers`` are
    the per-router sums, for the dashboard's sampler.

    >>> counts = RequestCounts()
    >>> counts.request(("web", "api@file", "s@file", "none", "GET", "200", "http"), 0.002, 17, outcome="accepted")
    >>> samples = [s for family in counts.collect() for s in family.samples]
    >>> [(s.name, s.value) for s in samples if s.labels.get("le") in (None, "0.001", "0.0025")][:7]
    ... # doctest: +NORMALIZE_WHITESPACE
    [('gatekeeper_requests_total', 1), ('gatekeeper_request_duration_seconds_bucket', 0.0),
     ('gatekeeper_request_duration_seconds_bucket', 1.0), ('gatekeeper_request_duration_seconds_count', 1.0),
     ('gatekeeper_request_duration_seconds_sum', 0.002), ('gatekeeper_response_bytes_total', 17),
     ('gatekeeper_jwt_outcomes_total', 1)]
    """

    def __init__(self) -> None:
        self.detail: Dict[DetailKey, Row] = {}
        self.outcomes: Dict[Tuple[str, str], List[float]] = {}
        self.in_flight = [0]

    def request(self, key: DetailKey, duration: float, sent: int, received: int = 0, *,
                outcome: Optional[str] = None) -> None:
        """Count one finished request: a dict look-up and a few increments."""
        row = self.detail.get(key)
        if row is None:
            row = self.detail[key] = Row()
        row.count += 1
        row.seconds += duration
        row.bytes_in += received
        row.bytes_out += sent
        row.buckets[bisect.bisect_left(LATENCY_BUCKETS, duration)] += 1   # le: the first bound >= duration
        if outcome is not None:
            seen = self.outcomes.get((key[1], outcome))
            if seen is None:
                seen = self.outcomes[(key[1], outcome)] = [0, time.time()]
            seen[0] += 1

    @property
    def requests(self) -> Dict[Tuple[str, str, int, str], List[float]]:
        """``[(router, method, status, upstream)] = [count, 0]``, summed from the detail rows."""
        summed: Dict[Tuple[str, str, int, str], List[float]] = {}
        for (_entrypoint, router, _service, upstream, method, code, _protocol), row in list(self.detail.items()):
            entry = summed.setdefault((router, method, int(code), upstream), [0, 0.0])
            entry[0] += row.count
        return summed

    @property
    def routers(self) -> Dict[str, List[float]]:
        """``[router] = [count, duration sum, bytes, 0, count per bucket ...]``, summed from the detail rows."""
        summed: Dict[str, List[float]] = {}
        for key, row in list(self.detail.items()):
            entry = summed.setdefault(key[1], [0, 0.0, 0, 0.0] + [0] * (len(LATENCY_BUCKETS) + 1))
            entry[0] += row.count
            entry[1] += row.seconds
            entry[2] += row.bytes_out
            for i, count in enumerate(row.buckets):
                entry[4 + i] += count
        return summed

    def collect(self) -> Iterator[Metric]:
        rows = list(self.detail.items())
        yield from families.legacy_families(rows)
        outcomes = CounterMetricFamily("gatekeeper_jwt_outcomes", JWT_HELP, labels=["router", "outcome"])
        for (router, outcome), (count, _created) in list(self.outcomes.items()):
            outcomes.add_metric([router, outcome], count)
        yield outcomes
        yield from families.traefik_families(rows)


COUNTS = RequestCounts()
if not MULTIPROCESS:
    REGISTRY.register(COUNTS)
    IN_FLIGHT.set_function(lambda: COUNTS.in_flight[0])


def start_request() -> None:
    """A request begins (the in-flight gauge)."""
    if MULTIPROCESS:
        IN_FLIGHT.inc()
    else:
        COUNTS.in_flight[0] += 1


_shown_upstreams: Dict[Optional[str], str] = {None: NO_UPSTREAM}


def shown_upstream(upstream: Optional[str]) -> str:
    """The upstream label: the server URL without userinfo or query (safe_url), computed once per URL."""
    shown = _shown_upstreams.get(upstream)
    if shown is None:
        shown = _shown_upstreams[upstream] = safe_url(upstream or "")
    return shown


def detail_key(exchange: Exchange, router: str) -> DetailKey:
    """The request's detail row: entry point, router, service, upstream shown, method (unknown ones: ``OTHER``),
    code and protocol (``websocket`` for an upgraded connection, else ``http``)."""
    return (exchange.entrypoint or DEFAULT_ENTRYPOINT, router, exchange.service or "none",
            shown_upstream(exchange.upstream), exchange.method if exchange.method in METHODS else "OTHER",
            str(exchange.status), "websocket" if exchange.status == 101 else "http")


def record(exchange: Exchange) -> None:
    """Count one finished request (the observer :func:`instrument` installs)."""
    router = exchange.router or NO_ROUTER
    key = detail_key(exchange, router)
    outcome = exchange.jwt_reason if exchange.jwt_reason is not None else "accepted" if exchange.jwt_ok else None
    if not MULTIPROCESS:
        COUNTS.in_flight[0] -= 1
        COUNTS.request(key, exchange.duration, exchange.bytes, exchange.size_in, outcome=outcome)
    else:
        IN_FLIGHT.dec()
        latency, received, sent = _detail(key)
        latency.observe(exchange.duration)
        if exchange.size_in:
            received.inc(exchange.size_in)
        if exchange.bytes:
            sent.inc(exchange.bytes)
        if outcome is not None:
            _labelled(JWT_OUTCOMES, router, outcome).inc()
    if exchange.upstream_cause is not None:
        _labelled(UPSTREAM_ERRORS, router, exchange.upstream_cause).inc()
    if exchange.middleware is not None:
        _labelled(MIDDLEWARE_OUTCOMES, router, *exchange.middleware).inc()
    if exchange.retries:
        _labelled(SERVICE_RETRIES, key[2]).inc(exchange.retries)


def record_key_fetch(keyset: "jwks.RemoteKeySet", ok: bool) -> None:
    """Count one key set fetch attempt (a jwks.FETCH_OBSERVERS hook), in the fetching worker.

    Counted as they happen rather than read from ``RemoteKeySet.status()`` at scrape time: with workers,
    a scrape is answered by one worker, and only counters in the multiprocess directory add up all of them.
    """
    url = keyset.name   # shown without userinfo or query already (safe_url)
    _labelled(KEYSET_FETCHES, url).inc()
    failures = _labelled(KEYSET_FAILURES, url)   # shown from the first fetch on, at 0 until one fails
    if not ok:
        failures.inc()
    _labelled(KEYSET_KEYS, url).set(keyset.status()["keys"])


jwks.FETCH_OBSERVERS.append(record_key_fetch)


def record_server_state(service: str, server: str, up: bool) -> None:
    """A health check's first result for a server, or a change (a proxy.health.STATE_OBSERVERS hook)."""
    SERVER_UP.labels(service, safe_url(server)).set(1 if up else 0)
    SERVICE_SERVER_UP.labels(service, safe_url(server)).set(1 if up else 0)


health.STATE_OBSERVERS.append(record_server_state)


def instrument(app: WSGIApp, access_log: Optional[Callable[[Exchange], None]] = None) -> WSGIApp:
    """``app`` measured (and access-logged when ``access_log`` is given, with the headers it keeps)."""
    return observe(app, fan_out(record, access_log), start=start_request, keep=getattr(access_log, "keep", ()))


def record_certificate(path: str) -> None:
    """The expiry of the leaf certificate in ``path`` (PEM, the first of a chain); a file that cannot be read is
    left out (the listener refused it already, naming it)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError):
        return
    cn = ", ".join(str(attribute.value) for attribute in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME))
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = ",".join(str(name.value) for name in names)
    except x509.ExtensionNotFound:
        sans = ""
    TLS_NOT_AFTER.labels(cn, sans, format(cert.serial_number, "x")).set(cert.not_valid_after_utc.timestamp())


def connection_counter(entrypoint: Optional[str]) -> Callable[[int], None]:
    """The servers' ``on_connection(+1/-1)`` for one entry point's listener: ``gatekeeper_open_connections``."""
    return _labelled(CONNECTIONS, entrypoint or DEFAULT_ENTRYPOINT, "TCP").inc  # type: ignore[no-any-return]


def record_refused(exchange: Exchange) -> None:
    """Count a request the server refused before it reached the app (431 headers too large)."""
    start_request()
    record(exchange)


def record_reload(loader: Any, swapped: bool) -> None:
    """After a load or reload (``swapped``: a new configuration went in): counts, generation, errors.

    A reload is in error when it could not read conf.d or its configuration reports problems
    (``loader.last_reload.errors``).
    """
    if swapped:
        RELOADS.inc()
        LAST_RELOAD_SUCCESS.set(time.time())
    last = getattr(loader, "last_reload", None)
    if last is not None and last.errors:
        RELOAD_ERRORS.inc()
    config = loader.config
    if config is not None:
        GENERATION.set(config.generation)
        CONFIG_ERRORS.set(len(config.errors))
        from gatekeeper.ops.sampler import stale_now
        stale = [kind for kind, _ in stale_now(config)]
        for kind in ("router", "middleware", "service", "file"):
            STALE_OBJECTS.labels(kind).set(stale.count(kind))


def exposition() -> Tuple[bytes, str]:
    """(body, content type) of the Prometheus text format, all workers aggregated in multiprocess mode:
    Traefik's families summed from the detail rows, and ``process_*`` of every worker and the parent."""
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        collector = multiprocess.MultiProcessCollector(None)  # type: ignore[no-untyped-call]
        shown, rows = families.from_multiprocess(collector.collect())  # type: ignore[no-untyped-call]
        pids = sorted({*families.live_pids(directory), os.getpid(), os.getppid()})
        registry = families.registry_of([*shown, *families.legacy_families(rows.items()),
                                         *families.traefik_families(rows.items()), *families.process_families(pids)])
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
