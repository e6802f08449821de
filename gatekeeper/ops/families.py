"""The request metric families, built at scrape time from one row per (entry point, router, service, upstream,
method, code, protocol), and the ``process_*`` families of every worker.

A request updates one detail row (metrics.py): in one process plain numbers, with ``--workers`` a
prometheus_client histogram and two counters whose memory-mapped files add up across workers. A scrape sums
the rows into gatekeeper's own per-router families (``gatekeeper_requests_total`` ...) and Traefik's families
and labels, prefixed ``gatekeeper_`` (docs/operations.md has the mapping):

- ``gatekeeper_entrypoint_requests_total{code,method,protocol,entrypoint}``, ``..._request_duration_seconds``,
  ``..._requests_bytes_total``, ``..._responses_bytes_total``: every request;
- the same for ``router`` (``{code,method,protocol,router,service}``): requests a router matched;
- the same for ``service`` (``{code,method,protocol,service}``): requests that reached the service's servers.

Usage::

    rows = {("web", "api@file", "s@file", "http://10.0.0.9:80", "GET", "200", "http"): Row()}
    families = list(traefik_families(rows.items()))
"""
from __future__ import annotations

import os
import re
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import CollectorRegistry
from prometheus_client.utils import floatToGoString

__all__ = ["DETAIL_LABELS", "LATENCY_BUCKETS", "Row", "from_multiprocess", "legacy_families", "process_families",
           "traefik_families"]

LATENCY_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60)
BUCKET_LABELS = (*(floatToGoString(b) for b in LATENCY_BUCKETS), "+Inf")  # type: ignore[no-untyped-call]
# One detail row's labels; upstream: the server URL shown (safe_url), "none" when no server was contacted
DETAIL_LABELS = ("entrypoint", "router", "service", "upstream", "method", "code", "protocol")
DetailKey = Tuple[str, str, str, str, str, str, str]
NO_ROUTER = "none"
NO_UPSTREAM = "none"
REQUESTS_HELP = "Requests answered, by router, method, status code and upstream server (none: not proxied)"
LATENCY_HELP = "Time from the request reaching the gateway to the last response byte sent, by router"
BYTES_HELP = "Response body bytes sent, by router"
# (family, its labels taken from the detail key, which rows count in it)
LEVELS = (("entrypoint", ("code", "method", "protocol", "entrypoint")),
          ("router", ("code", "method", "protocol", "router", "service")),
          ("service", ("code", "method", "protocol", "service")))
_POSITION = {name: i for i, name in enumerate(DETAIL_LABELS)}


class Row:
    """One detail row: count, duration sum, request and response bytes, count per bucket (not cumulative)."""

    __slots__ = ("buckets", "bytes_in", "bytes_out", "count", "seconds")

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0
        self.bytes_in = 0
        self.bytes_out = 0
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)


def counts(level: str, key: DetailKey) -> bool:
    """Whether a request of ``key`` counts at ``level``: routers only when one matched, services only when
    reached (a 401 of a JWT middleware never reached it, as in Traefik)."""
    if level == "router":
        return key[1] != NO_ROUTER
    if level == "service":
        return key[3] != NO_UPSTREAM
    return True


def traefik_families(rows: Iterable[Tuple[DetailKey, Row]]) -> Iterator[Metric]:
    """The entry point, router and service families summed from ``rows``.

    >>> row = Row(); row.count, row.seconds, row.bytes_out = 2, 0.004, 10; row.buckets[1] = 2
    >>> families = list(traefik_families([(("web", "a@file", "s@file", "http://u:1", "GET", "200", "http"), row)]))
    >>> [(s.name, s.labels["entrypoint"], s.value) for s in families[0].samples]
    [('gatekeeper_entrypoint_requests_total', 'web', 2)]
    """
    rows = list(rows)
    for level, labels in LEVELS:
        positions = [_POSITION[name] for name in labels]
        summed: Dict[Tuple[str, ...], Row] = {}
        for key, row in rows:
            if counts(level, key):
                add_row(summed, tuple(key[i] for i in positions), row)
        if summed:   # no empty family: a scrape shows what was counted
            yield from level_families(level, list(labels), summed)


def add_row(summed: Dict[Any, Row], key: Any, row: Row) -> None:
    """``summed[key] += row``."""
    total = summed.get(key)
    if total is None:
        total = summed[key] = Row()
    total.count += row.count
    total.seconds += row.seconds
    total.bytes_in += row.bytes_in
    total.bytes_out += row.bytes_out
    total.buckets = [a + b for a, b in zip(total.buckets, row.buckets)]


def legacy_families(rows: Iterable[Tuple[DetailKey, Row]]) -> Iterator[Metric]:
    """gatekeeper's own per-router families: ``gatekeeper_requests_total{router,method,status,upstream}``, the
    latency histogram and response bytes by router (the dashboard and existing alerts read them)."""
    per_request: Dict[Tuple[str, str, str, str], int] = {}
    per_router: Dict[str, Row] = {}
    for (_entrypoint, router, _service, upstream, method, code, _protocol), row in rows:
        key = (router, method, code, upstream)
        per_request[key] = per_request.get(key, 0) + row.count
        add_row(per_router, router, row)
    requests = CounterMetricFamily("gatekeeper_requests", REQUESTS_HELP,
                                   labels=["router", "method", "status", "upstream"])
    for labels, count in per_request.items():
        requests.add_metric(list(labels), count)
    latency = HistogramMetricFamily("gatekeeper_request_duration_seconds", LATENCY_HELP, labels=["router"])
    sent = CounterMetricFamily("gatekeeper_response_bytes", BYTES_HELP, labels=["router"])
    for router, row in per_router.items():
        latency.add_metric([router], cumulative(row.buckets), row.seconds)
        if row.bytes_out:
            sent.add_metric([router], row.bytes_out)
    yield from (requests, latency, sent)


def cumulative(counts_per_bucket: List[int]) -> List[Tuple[str, float]]:
    """(le, cumulative count) pairs as a histogram shows them."""
    total = 0
    buckets = []
    for bound, count in zip(BUCKET_LABELS, counts_per_bucket):
        total += count
        buckets.append((bound, float(total)))
    return buckets


def level_families(level: str, labels: List[str], summed: Dict[Tuple[str, ...], Row]) -> Iterator[Metric]:
    prefix = f"gatekeeper_{level}"
    requests = CounterMetricFamily(f"{prefix}_requests", f"Requests, by {', '.join(labels)} (Traefik's "
                                   f"traefik_{level}_requests_total)", labels=labels)
    latency = HistogramMetricFamily(f"{prefix}_request_duration_seconds", "Time from the request reaching the "
                                    "gateway to the last response byte sent", labels=labels)
    bytes_in = CounterMetricFamily(f"{prefix}_requests_bytes", "Request body bytes received", labels=labels)
    bytes_out = CounterMetricFamily(f"{prefix}_responses_bytes", "Response body bytes sent", labels=labels)
    for values, row in summed.items():
        requests.add_metric(list(values), row.count)
        latency.add_metric(list(values), cumulative(row.buckets), row.seconds)
        bytes_in.add_metric(list(values), row.bytes_in)
        bytes_out.add_metric(list(values), row.bytes_out)
    yield from (requests, latency, bytes_in, bytes_out)


DETAIL_PREFIX = "gatekeeper_detail_"


def from_multiprocess(families: Iterable[Metric]) -> Tuple[List[Metric], Dict[DetailKey, Row]]:
    """Split what prometheus_client's MultiProcessCollector read: the families to show as they are, and the
    detail rows (``gatekeeper_detail_*``, never shown) to sum into Traefik's families."""
    shown: List[Metric] = []
    rows: Dict[DetailKey, Row] = {}
    for family in families:
        if not family.name.startswith(DETAIL_PREFIX):
            shown.append(family)
            continue
        for sample in family.samples:
            key = tuple(sample.labels.get(name, "") for name in DETAIL_LABELS)
            row = rows.get(key)  # type: ignore[arg-type]
            if row is None:
                row = rows[key] = Row()  # type: ignore[index]
            add_sample(row, sample.name, sample.labels.get("le"), sample.value)
    for row in rows.values():   # cumulative buckets back to counts per bucket
        row.buckets = [row.buckets[0]] + [b - a for a, b in zip(row.buckets, row.buckets[1:])]
    return shown, rows


def add_sample(row: Row, name: str, le: Optional[str], value: float) -> None:
    if name.endswith("_bucket") and le is not None:
        row.buckets[BUCKET_LABELS.index(le)] += int(value)
    elif name.endswith("duration_seconds_count"):
        row.count += int(value)
    elif name.endswith("duration_seconds_sum"):
        row.seconds += value
    elif name.startswith(DETAIL_PREFIX + "requests_bytes"):
        row.bytes_in += int(value)
    elif name.startswith(DETAIL_PREFIX + "responses_bytes"):
        row.bytes_out += int(value)


_LIVE_FILE = re.compile(r"^gauge_live\w*?_(\d+)\.db$")


def live_pids(directory: str) -> List[int]:
    """Workers alive in the multiprocess directory: each holds live gauge files (the configuration
    generation, set as it starts), which ``mark_process_dead`` removes when it exits."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return sorted({int(m.group(1)) for m in map(_LIVE_FILE.match, names) if m})


def process_families(pids: Sequence[int]) -> Iterator[Metric]:
    """``process_*`` (CPU, memory, file descriptors, start time) of each process in ``pids``, with a ``pid``
    label: under ``--workers`` every worker and the supervising parent, so ``sum()`` is the whole gateway."""
    merged: Dict[str, Metric] = {}
    for pid in pids:
        collector = ProcessCollector(pid=lambda pid=pid: pid, registry=None)  # type: ignore[misc]
        for family in collector.collect():
            target = merged.get(family.name)
            if target is None:
                target = merged[family.name] = Metric(family.name, family.documentation, family.type)
            for sample in family.samples:
                target.add_sample(sample.name, {**sample.labels, "pid": str(pid)}, sample.value)
    yield from merged.values()


def registry_of(families: Iterable[Metric]) -> CollectorRegistry:
    """A registry exposing exactly ``families`` (for generate_latest)."""
    fixed = list(families)

    class Fixed:
        def collect(self) -> Iterator[Metric]:
            return iter(fixed)

    registry = CollectorRegistry()
    registry.register(Fixed())
    return registry
