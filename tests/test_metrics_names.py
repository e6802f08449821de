"""Traefik's metric families and label names on a real ``/metrics`` (one process and ``--workers 2``): entry
point, router and service levels with ``code``/``method``/``protocol``, no ``_created`` series, ``process_*``
present (per worker with ``pid``), upstream failure causes kept."""
from __future__ import annotations

import re
import time
from collections import defaultdict
from typing import Dict, Set

import pytest
import requests
from serve_process import Gatekeeper, metric_value, wait_for

from gatekeeper.jwt.mint import mint
from gatekeeper.ops.families import LATENCY_BUCKETS
from gatekeeper.ops.metrics import RequestCounts

SECRET = "names-secret-0123456789abcdef0123"
LEVEL_LABELS = {
    "gatekeeper_entrypoint_requests_total": {"code", "method", "protocol", "entrypoint"},
    "gatekeeper_router_requests_total": {"code", "method", "protocol", "router", "service"},
    "gatekeeper_service_requests_total": {"code", "method", "protocol", "service"},
    "gatekeeper_entrypoint_request_duration_seconds_count": {"code", "method", "protocol", "entrypoint"},
    "gatekeeper_router_responses_bytes_total": {"code", "method", "protocol", "router", "service"},
    "gatekeeper_service_requests_bytes_total": {"code", "method", "protocol", "service"},
    "gatekeeper_service_server_up": {"service", "url"},
    "gatekeeper_open_connections": {"entrypoint", "protocol"},
}


def manifest(upstream: str, dead: str) -> str:
    return f"""
http:
  routers:
    a: {{rule: "PathPrefix(`/a`)", service: s, middlewares: [jwt]}}
    down: {{rule: "PathPrefix(`/down`)", service: d}}
  services:
    s: {{loadBalancer: {{servers: [{{url: "{upstream}"}}], healthCheck: {{path: /, interval: 1s}}}}}}
    d: {{loadBalancer: {{servers: [{{url: "{dead}"}}]}}}}
  middlewares:
    jwt: {{plugin: {{jwt: {{signingSecret: "{SECRET}"}}}}}}
"""


def label_names(text: str) -> Dict[str, Set[frozenset]]:
    """Sample name -> the label-name sets seen (``le`` left out)."""
    seen: Dict[str, Set[frozenset]] = defaultdict(set)
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        name, _, labels = line.partition(" ")[0].partition("{")
        seen[name].add(frozenset(re.findall(r'(\w+)="', labels)) - {"le"})
    return seen


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "2-workers"])
def test_traefik_families_and_labels_on_a_real_scrape(conf_d, echo_upstream, free_port, tmp_path, workers):
    dead = f"http://127.0.0.1:{free_port}"
    conf_d("api.yaml", manifest(echo_upstream.url, dead))
    gk = Gatekeeper(conf_d.root, tmp_path / "gk.log", "--entrypoint", "web=127.0.0.1:0", "--admin",
                    "127.0.0.1:0", "--workers", str(workers))
    started = time.time()
    try:
        good = {"Authorization": "Bearer " + mint({"sub": "alice"}, secret=SECRET)}
        codes = [requests.get(gk.url + "/a", headers=good, timeout=5).status_code for _ in range(2)]
        codes += [requests.get(gk.url + path, timeout=5).status_code for path in ("/a", "/down", "/nowhere")]
        assert codes == [200, 200, 401, 502, 404]
        assert wait_for(lambda: metric_value(gk.metrics(), "gatekeeper_entrypoint_requests_total") == 5)
        assert wait_for(lambda: metric_value(gk.metrics(), "gatekeeper_service_server_up") == workers, timeout=15)
        text = gk.metrics()
    finally:
        assert gk.stop() == 0

    def value(name: str, **labels: str) -> float:
        found = metric_value(text, name, **labels)
        assert found is not None, (name, labels, text)
        return found

    assert "_created" not in text and "gatekeeper_detail_" not in text
    seen = label_names(text)
    for name, labels in LEVEL_LABELS.items():
        per_worker = workers > 1 and name == "gatekeeper_service_server_up"   # each worker checks: pid label
        assert seen[name] == {frozenset(labels | ({"pid"} if per_worker else set()))}, (name, seen[name])
    web = {"entrypoint": "web", "method": "GET", "protocol": "http"}
    assert value("gatekeeper_entrypoint_requests_total", code="200", **web) == 2
    assert value("gatekeeper_entrypoint_requests_total", code="404", **web) == 1
    assert value("gatekeeper_entrypoint_request_duration_seconds_count", **web) == 5
    assert value("gatekeeper_entrypoint_request_duration_seconds_bucket", le="+Inf", **web) == 5
    assert value("gatekeeper_router_requests_total", router="a@file", service="s@file", code="401") == 1
    assert value("gatekeeper_router_requests_total") == 4                   # the 404 matched no router
    assert value("gatekeeper_service_requests_total", service="s@file", code="200") == 2
    assert metric_value(text, "gatekeeper_service_requests_total", code="401") is None   # never reached it
    assert value("gatekeeper_service_requests_total", service="d@file", code="502") == 1
    assert value("gatekeeper_service_responses_bytes_total", service="s@file") > 0
    assert value("gatekeeper_upstream_errors_total", router="down@file", kind="connection_refused") == 1
    assert value("gatekeeper_service_server_up", service="s@file", url=echo_upstream.url) == workers
    assert value("gatekeeper_open_connections", entrypoint="web", protocol="TCP") >= 0
    assert value("gatekeeper_config_reloads_total") == workers
    assert started - 60 < value("gatekeeper_config_last_reload_success") <= time.time()
    pids = set(re.findall(r'^process_resident_memory_bytes(?:\{pid="(\d+)"\})? ', text, re.M))
    if workers == 1:
        assert pids == {""}, pids                                       # this process, no label
    else:
        assert len(pids) == workers + 1 and str(gk.proc.pid) in pids, pids   # every worker and the parent
    assert value("process_cpu_seconds_total") > 0 and value("process_open_fds") > 0


EXCHANGES = [
    (("web", "a@file", "s@file", "http://u:1", "GET", "200", "http"), 0.0004, 17, 3),
    (("web", "a@file", "s@file", "none", "GET", "401", "http"), 0.00002, 40, 0),
    (("web", "none", "none", "none", "OTHER", "404", "http"), 1.5, 19, 0),
    (("admin", "b@file", "t@file", "http://u:2", "POST", "200", "websocket"), 61, 0, 100),
]


def test_summed_levels_equal_prometheus_client_objects_fed_the_same():
    """What a scrape sums from the detail rows is what prometheus_client's own objects show for each level."""
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    counts = RequestCounts()
    theirs = CollectorRegistry()
    objects = {}
    for level, labels in (("entrypoint", ["code", "method", "protocol", "entrypoint"]),
                          ("router", ["code", "method", "protocol", "router", "service"]),
                          ("service", ["code", "method", "protocol", "service"])):
        objects[level] = (labels,
                          Counter(f"gatekeeper_{level}_requests", "x", labels, registry=theirs),
                          Histogram(f"gatekeeper_{level}_request_duration_seconds", "x", labels,
                                    buckets=LATENCY_BUCKETS, registry=theirs),
                          Counter(f"gatekeeper_{level}_requests_bytes", "x", labels, registry=theirs),
                          Counter(f"gatekeeper_{level}_responses_bytes", "x", labels, registry=theirs))
    for key, seconds, sent, received in EXCHANGES:
        counts.request(key, seconds, sent, received)
        named = dict(zip(("entrypoint", "router", "service", "upstream", "method", "code", "protocol"), key))
        for level, (labels, requests_, latency, bytes_in, bytes_out) in objects.items():
            skipped = named["router" if level == "router" else "upstream"] == "none"
            if level != "entrypoint" and skipped:
                continue
            values = [named[name] for name in labels]
            requests_.labels(*values).inc()
            latency.labels(*values).observe(seconds)
            bytes_in.labels(*values).inc(received)
            bytes_out.labels(*values).inc(sent)
    ours = CollectorRegistry()
    ours.register(counts)

    def samples(registry) -> list:
        return sorted(line for line in generate_latest(registry).decode().splitlines()
                      if line.startswith(("gatekeeper_entrypoint", "gatekeeper_router", "gatekeeper_service"))
                      and "_created" not in line)
    assert samples(ours) == samples(theirs) and len(samples(ours)) > 40


def test_an_entry_point_certificate_s_expiry(conf_d, echo_upstream, pki, tmp_path):
    conf_d("api.yaml", manifest(echo_upstream.url, echo_upstream.url))
    gk = Gatekeeper(conf_d.root, tmp_path / "gk.log", "--entrypoint",
                    f"secure=127.0.0.1:0,tls={pki['server']}:{pki['server.key']}", "--admin", "127.0.0.1:0")
    try:
        text = gk.metrics()
    finally:
        assert gk.stop() == 0
    expiry = metric_value(text, "gatekeeper_tls_certs_not_after", cn="gatekeeper test server", sans="127.0.0.1")
    assert expiry is not None and abs(expiry - (time.time() + 86400)) < 3600, text   # the test PKI: one day
    assert re.search(r'^gatekeeper_tls_certs_not_after\{cn="gatekeeper test server",sans="127.0.0.1",'
                     r'serial="[0-9a-f]+"\}', text, re.M)
