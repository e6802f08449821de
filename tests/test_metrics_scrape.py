"""``GET /metrics`` on the admin listener of a real ``gatekeeper serve`` (one process and ``--workers 2``),
after real traffic: every metric docs/operations.md names is there, with the values that traffic implies."""
from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Dict

import pytest
import requests
from serve_process import Gatekeeper, metric_value, wait_for
from test_remote_keys import IdP, jwk, pems, serve_idp  # noqa: F401 - pems is a fixture used here

from gatekeeper.jwt.mint import mint
from gatekeeper.ops.metrics import NO_UPSTREAM
from gatekeeper.options import safe_url

DOCS = Path(__file__).resolve().parent.parent / "docs" / "operations.md"
SECRET = "s3cret-api-key"    # in a key set URL's query: must never reach a label


def manifest(upstream: str, dead: str, idp: str) -> str:
    return f"""
http:
  routers:
    a: {{rule: "PathPrefix(`/a`)", service: s, middlewares: [jwt]}}
    b: {{rule: "PathPrefix(`/b`)", service: s, middlewares: [unreachable-keys]}}
    down: {{rule: "PathPrefix(`/down`)", service: d}}
  services:
    s: {{loadBalancer: {{servers: [{{url: "{upstream}"}}], healthCheck: {{path: /, interval: 1s}}}}}}
    d: {{loadBalancer: {{servers: [{{url: "{dead}"}}]}}}}
  middlewares:
    jwt: {{plugin: {{jwt: {{jwksUrl: "{idp}/keys?key={SECRET}"}}}}}}
    unreachable-keys:
      plugin: {{jwt: {{jwksUrl: "{dead}/keys", clientConfig: {{maxRetries: 0, timeoutSeconds: 1}}}}}}
"""


def documented_metrics() -> list:
    text = DOCS.read_text()   # gatekeeper's own table, and the second column of the Traefik mapping
    names = re.findall(r"^\| `(gatekeeper_\w+)`", text, re.M) + re.findall(
        r"^\| `traefik_\w+`[^|]*\| `(gatekeeper_\w+)`", text, re.M)
    for elsewhere in ("gatekeeper_tls_certs_not_after", "gatekeeper_service_retries_total"):
        names.remove(elsewhere)   # no TLS entry point nor retry here: test_metrics_names/test_accesslog check them
    assert len(names) >= 14, names
    return names


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "2-workers"])
def test_metrics_after_real_traffic(conf_d, echo_upstream, wsgi_server, free_port, pems, tmp_path, workers):  # noqa: F811
    idp = IdP(jwk(pems["a"], "a"))
    serve_idp(wsgi_server, idp)
    dead = f"http://127.0.0.1:{free_port}"
    conf_d("api.yaml", manifest(echo_upstream.url, dead, idp.issuer))
    gk = Gatekeeper(conf_d.root, tmp_path / "gk.log", "--workers", str(workers), "--admin", "127.0.0.1:0")
    try:
        keys_url = safe_url(idp.issuer + "/keys")
        # every worker fetched both sets (prefetch), the unreachable one failing
        assert wait_for(lambda: metric_value(gk.metrics(), "gatekeeper_keyset_fetch_failures_total",
                                             url=dead + "/keys") == workers, timeout=15), gk.metrics()
        good = {"Authorization": "Bearer " + mint({"sub": "alice"}, key_pem=pems["a"], kid="a")}
        sent = {"a200": 6, "a401": 2, "b401": 1, "down": 2, "none": 1}
        statuses = ([requests.get(gk.url + "/a", headers=good, timeout=5).status_code for _ in range(6)]
                    + [requests.get(gk.url + "/a", timeout=5).status_code for _ in range(2)]
                    + [requests.get(gk.url + "/b", headers=good, timeout=5).status_code]
                    + [requests.get(gk.url + "/down", timeout=5).status_code for _ in range(2)]
                    + [requests.get(gk.url + "/nowhere", timeout=5).status_code])
        assert statuses == [200] * 6 + [401] * 3 + [502] * 2 + [404]
        conf_d("broken.yaml", "http: {routers: [not a mapping\n")       # a reload whose file has an error
        gk.signal(signal.SIGHUP)
        assert wait_for(lambda: len(re.findall(r"^gatekeeper_config_generation(\{[^}]*\})? 2\.0$",
                                               gk.metrics(), re.M)) == workers, timeout=15), gk.metrics()
        assert wait_for(lambda: metric_value(gk.metrics(), "gatekeeper_requests_total") == sum(sent.values()))
        text = gk.metrics()
    finally:
        assert gk.stop() == 0

    for name in documented_metrics():
        assert re.search(rf"^{name}(_bucket|_count)?[{{ ]", text, re.M), f"{name} missing from /metrics"

    def value(name: str, **labels: str) -> float:
        found = metric_value(text, name, **labels)
        assert found is not None, (name, labels)
        return found

    expected: Dict[tuple, float] = {
        ("gatekeeper_requests_total", (("router", "a@file"), ("status", "200"), ("upstream", echo_upstream.url))): 6,
        ("gatekeeper_requests_total", (("router", "a@file"), ("status", "401"), ("upstream", NO_UPSTREAM))): 2,
        ("gatekeeper_requests_total", (("router", "b@file"), ("status", "401"))): 1,
        ("gatekeeper_requests_total", (("router", "down@file"), ("status", "502"), ("upstream", dead))): 2,
        ("gatekeeper_requests_total", (("router", "none"), ("status", "404"), ("method", "GET"))): 1,
        ("gatekeeper_request_duration_seconds_count", (("router", "a@file"),)): 8,
        ("gatekeeper_jwt_outcomes_total", (("router", "a@file"), ("outcome", "accepted"))): 6,
        ("gatekeeper_jwt_outcomes_total", (("router", "a@file"), ("outcome", "missing_token"))): 2,
        ("gatekeeper_jwt_outcomes_total", (("router", "b@file"), ("outcome", "no_keys"))): 1,
        ("gatekeeper_upstream_errors_total", (("router", "down@file"),)): 2,
        ("gatekeeper_requests_in_flight", ()): 0,            # the scrape itself is on the admin listener
        ("gatekeeper_keyset_fetches_total", (("url", keys_url),)): workers,   # one prefetch per worker
        ("gatekeeper_keyset_fetch_failures_total", (("url", keys_url),)): 0,
        ("gatekeeper_keyset_keys", (("url", keys_url),)): workers,           # 1 key, in each worker
        ("gatekeeper_server_up", (("service", "s@file"), ("server", echo_upstream.url))): workers,  # checked: up
        ("gatekeeper_config_reloads_total", ()): 2 * workers,  # each worker's first load and the SIGHUP one
        ("gatekeeper_config_reload_errors_total", ()): workers,
        ("gatekeeper_config_errors", ()): workers,            # one problem, in each worker
    }
    got = {key: value(key[0], **dict(key[1])) for key in expected}
    assert got == expected
    assert value("gatekeeper_response_bytes_total", router="a@file") > 0
    assert value("gatekeeper_keyset_fetches_total", url=dead + "/keys") >= workers
    assert value("gatekeeper_open_connections") >= 0
    assert re.search(r'^gatekeeper_request_duration_seconds_bucket\{le="0.001",router="a@file"\}', text, re.M) \
        or re.search(r'^gatekeeper_request_duration_seconds_bucket\{router="a@file",le="0.001"\}', text, re.M)
    assert SECRET not in text and "key=" not in text
    assert len(set(re.findall(r'upstream="([^"]*)"', text))) == 3   # the two servers and none: bounded


@pytest.mark.parametrize("url, shown", [
    ("https://idp.example/keys", "https://idp.example/keys"),
    ("https://user:pw@idp.example:8443/keys?api_key=x#f", "https://idp.example:8443/keys"),
    ("http://127.0.0.1:9000", "http://127.0.0.1:9000"),
], ids=["plain", "userinfo-query-fragment-dropped", "server-url"])
def test_urls_in_labels_carry_no_credential(url, shown):
    assert safe_url(url) == shown


# --- one process: plain counts exposed at scrape time, as prometheus_client's own objects would show them ---

EXCHANGES = {
    "one-ok": [("api@file", "GET", 200, "http://10.0.0.1:80", 0.0004, 17, "accepted")],
    "bucket-bounds": [("api@file", "GET", 200, "none", d, 0, None) for d in (0.0, .001, .0010001, .0025, 1, 60, 61)],
    "mixed": [("a@file", "GET", 200, "http://u:1", 0.02, 100, "accepted"),
              ("a@file", "POST", 401, "none", 0.0001, 0, "missing_token"),
              ("none", "OTHER", 404, "none", 0.00002, 19, None),
              ("a@file", "GET", 200, "http://u:1", 0.3, 5, "accepted"),
              ("b@file", "GET", 502, "http://dead:9", 5.5, 0, "accepted")],
}


def count_by(exchanges) -> dict:
    counted: dict = {}
    for router, method, status, upstream, *_ in exchanges:
        counted[(router, method, status, upstream)] = counted.get((router, method, status, upstream), 0) + 1
    return counted


@pytest.mark.parametrize("exchanges", list(EXCHANGES.values()), ids=list(EXCHANGES))
def test_request_counts_expose_what_prometheus_client_objects_would(exchanges):
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    from gatekeeper.ops.families import BYTES_HELP, LATENCY_BUCKETS, LATENCY_HELP, REQUESTS_HELP
    from gatekeeper.ops.metrics import JWT_HELP, RequestCounts

    ours, theirs = CollectorRegistry(), CollectorRegistry()
    counts = RequestCounts()
    ours.register(counts)
    requests_ = Counter("gatekeeper_requests", REQUESTS_HELP, ["router", "method", "status", "upstream"],
                        registry=theirs)
    latency = Histogram("gatekeeper_request_duration_seconds", LATENCY_HELP, ["router"], buckets=LATENCY_BUCKETS,
                        registry=theirs)
    sent = Counter("gatekeeper_response_bytes", BYTES_HELP, ["router"], registry=theirs)
    outcomes = Counter("gatekeeper_jwt_outcomes", JWT_HELP, ["router", "outcome"], registry=theirs)
    for router, method, status, upstream, duration, size, outcome in exchanges:
        counts.request(("web", router, "s@file", upstream, method, str(status), "http"), duration, size,
                       outcome=outcome)
        requests_.labels(router, method, str(status), upstream).inc()
        latency.labels(router).observe(duration)
        if size:
            sent.labels(router).inc(size)
        if outcome is not None:
            outcomes.labels(router, outcome).inc()

    def shown(registry) -> list:   # gatekeeper's own families (test_metrics_names.py checks Traefik's)
        levels = re.compile(r"^(# \w+ )?gatekeeper_(entrypoint|router|service)_")
        return sorted(line for line in generate_latest(registry).decode().splitlines()
                      if "_created" not in line and not levels.match(line))
    assert shown(ours) == shown(theirs)
    assert counts.requests == {(r, m, s, u): [n, 0.0] for (r, m, s, u), n in count_by(exchanges).items()}
