"""Per-router request totals for the dashboard's sampler, read the cheapest way available: this process's
counters (``metrics.COUNTS``), every worker's prometheus_client files, or, as a last resort, the metrics text.

Usage::

    totals = counted_totals(metrics.COUNTS)          # {router: {requests, status, latency_sum, ...}}
"""
from __future__ import annotations

import glob
import json
import os
from typing import Any, Dict, Mapping, Optional, Tuple

import gevent

Totals = Dict[str, Dict[str, Any]]            # per router: requests, status counts, latency sum/count, jwt


def empty_totals() -> Dict[str, Any]:
    return {"requests": 0.0, "status": {}, "latency_sum": 0.0, "latency_count": 0.0, "jwt": {}}


LEGACY = ("gatekeeper_requests_total", "gatekeeper_request_duration_seconds_sum",
          "gatekeeper_request_duration_seconds_count")
TRAEFIK = ("gatekeeper_router_requests_total", "gatekeeper_router_request_duration_seconds_sum",
           "gatekeeper_router_request_duration_seconds_count")


def metric_totals(exposition_text: str) -> Totals:
    """Per router from the Prometheus text (all workers): requests, by status, latency sum/count, JWT outcomes.

    Read from ``gatekeeper_requests_total{router,status}`` when the text has it, else from Traefik's
    ``gatekeeper_router_requests_total{router,code}`` (never both: they count the same requests)."""
    from prometheus_client.parser import text_string_to_metric_families

    samples = [sample for family in text_string_to_metric_families(exposition_text) for sample in family.samples
               if "router" in sample.labels]
    names = LEGACY if any(s.name == LEGACY[0] for s in samples) else TRAEFIK
    totals: Totals = {}
    for sample in samples:
        name, value, entry = sample.name, sample.value, totals.setdefault(sample.labels["router"], empty_totals())
        if name == names[0]:
            entry["requests"] += value
            status = sample.labels.get("status", sample.labels.get("code", "?"))
            entry["status"][status] = entry["status"].get(status, 0) + value
        elif name == names[1]:
            entry["latency_sum"] += value
        elif name == names[2]:
            entry["latency_count"] += value
        elif name == "gatekeeper_jwt_outcomes_total":
            outcome = sample.labels.get("outcome", "?")
            entry["jwt"][outcome] = entry["jwt"].get(outcome, 0) + value
    return {router: entry for router, entry in totals.items() if entry["requests"] or entry["jwt"]}


WORKER_KEYS = ('["gatekeeper_detail_request_duration_seconds", ', '["gatekeeper_requests", ',
               '["gatekeeper_request_duration_seconds", ', '["gatekeeper_jwt_outcomes", ')


YIELD_EVERY = 2000  # values read between two yields to the hub (a few ms of work)


def worker_file_totals(directory: str) -> Optional[Totals]:
    """The totals of every worker read from prometheus_client's multiprocess files, only the samples the
    dashboard needs (requests by router and status, latency, JWT outcomes); None when the files hold none of
    them. Formatting and parsing the whole exposition took ~11 s for 1,000 routers with traffic and 2 workers,
    and would stall the worker sampling it; these reads take milliseconds.

    Requests and latency come from the per-request detail histogram (``gatekeeper_detail_*``, its buckets
    stored one count each: their sum is the count) or, with metrics of the earlier shape, from
    ``gatekeeper_requests_total`` and ``gatekeeper_request_duration_seconds``: never both."""
    from prometheus_client.mmap_dict import MmapedDict

    detail: Totals = {}
    legacy: Totals = {}
    jwt: Dict[str, Dict[str, float]] = {}
    for path in glob.glob(os.path.join(directory, "counter_*.db")) + glob.glob(os.path.join(directory,
                                                                                          "histogram_*.db")):
        try:
            values = MmapedDict.read_all_values_from_file(path)  # type: ignore[no-untyped-call]
        except FileNotFoundError:   # a worker's files removed between the glob and the read
            continue
        for count, (key, value, _timestamp, _position) in enumerate(values):
            if count % YIELD_EVERY == YIELD_EVERY - 1:
                gevent.sleep(0)   # the hub serves requests between slices of a long read
            parsed = parsed_key(key)
            if parsed is None:
                continue
            name, labels = parsed
            if name == "gatekeeper_jwt_outcomes_total":
                mine = jwt.setdefault(labels["router"], {})
                mine[labels["outcome"]] = mine.get(labels["outcome"], 0) + value
            else:
                add_worker_value(detail if name.startswith("gatekeeper_detail_") else legacy, name, labels, value)
    totals = detail or legacy
    for router, outcomes in jwt.items():
        totals.setdefault(router, empty_totals())["jwt"] = outcomes
    return totals or None


_KEYS: Dict[str, Optional[Tuple[str, Dict[str, str]]]] = {}


def parsed_key(key: str) -> Optional[Tuple[str, Dict[str, str]]]:
    """(sample name, labels) of a multiprocess file's key when the dashboard wants it; each key's JSON is parsed
    once (a worker's files hold the same keys sample after sample)."""
    if key not in _KEYS:
        if len(_KEYS) > 500_000:
            _KEYS.clear()
        _KEYS[key] = tuple(json.loads(key)[1:3]) if key.startswith(WORKER_KEYS) else None
    return _KEYS[key]


def add_worker_value(totals: Totals, name: str, labels: Mapping[str, str], value: float) -> None:
    entry = totals.setdefault(labels.get("router", "none"), empty_totals())
    if name in ("gatekeeper_requests_total", "gatekeeper_detail_request_duration_seconds_bucket"):
        status = labels.get("status", labels.get("code", "?"))
        entry["requests"] += value
        entry["status"][status] = entry["status"].get(status, 0) + value
    if name.endswith("_duration_seconds_sum"):
        entry["latency_sum"] += value
    elif name.endswith("_duration_seconds_bucket"):   # stored per bucket: their sum is the count
        entry["latency_count"] += value


def counted_totals(counts: Any) -> Totals:
    """The same totals read straight from one process's counters (``metrics.COUNTS``): no text to format and
    parse (20,000 detail rows: ~15 ms; through the per-router sums of the counters' properties ~240 ms)."""
    totals: Totals = {}
    detail = getattr(counts, "detail", None)
    if detail is not None:   # one row per (entrypoint, router, service, upstream, method, code, protocol)
        for key, row in list(detail.items()):
            entry = totals.get(key[1]) or totals.setdefault(key[1], empty_totals())
            entry["requests"] += row.count
            entry["status"][key[5]] = entry["status"].get(key[5], 0) + row.count
            entry["latency_sum"] += row.seconds
            entry["latency_count"] += row.count
    else:                    # counters of the earlier shape: per (router, method, status, upstream) and router
        for (router, _method, status, _upstream), (count, _created) in list(counts.requests.items()):
            entry = totals.setdefault(router, empty_totals())
            entry["requests"] += count
            entry["status"][str(status)] = entry["status"].get(str(status), 0) + count
        for router, row in list(counts.routers.items()):
            entry = totals.setdefault(router, empty_totals())
            entry["latency_sum"], entry["latency_count"] = row[1], row[0]
    for (router, outcome), (count, _created) in list(counts.outcomes.items()):
        jwt = totals.setdefault(router, empty_totals())["jwt"]
        jwt[outcome] = jwt.get(outcome, 0) + count
    return totals
