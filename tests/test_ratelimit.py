"""rateLimit in process through a real Gateway and real upstreams: the bucket's arithmetic and Retry-After, a
refused request never reaching the upstream, the per-user limit after JWT (the key cannot be spoofed),
bounded memory, the outcome in a real /metrics, and ``gatekeeper check`` refusing bad options."""
from __future__ import annotations

import time
from typing import Callable, Dict, Iterable, List

import pytest
import requests

from gatekeeper.app import Gateway
from gatekeeper.jwt.mint import mint
from gatekeeper.middlewares.bucket import Buckets
from gatekeeper.ops.echo import named_echo_app
from tests.conftest import RunningServer
from tests.middleware_gateway import built, check_refuses, config_errors, jwt_options, one_middleware, routes_yaml
from tests.serve_process import Gatekeeper, metric_value, wait_for

SECRET = "ratelimit-test-secret-0123456789abcdef"


class CountingUpstream:
    """An echo upstream that counts the requests it got."""

    def __init__(self) -> None:
        self.hits = 0
        self.echo = named_echo_app("echo")

    def __call__(self, environ: Dict, start_response: Callable) -> Iterable[bytes]:
        self.hits += 1
        return self.echo(environ, start_response)


@pytest.fixture
def limited(conf_d, wsgi_server) -> Callable[..., tuple]:
    """``limited(limit_options, middlewares)`` -> (gateway url, upstream): one router to a counting upstream."""
    started: List[RunningServer] = []

    def start(limit: str, middlewares: str = "[limit]") -> tuple:
        upstream = CountingUpstream()
        server = wsgi_server(upstream)
        conf_d("routes.yaml", routes_yaml(f"""
            limit: {{rateLimit: {limit}}}
            jwt: {jwt_options(SECRET, "forwardHeaders: {X-User: sub}")}
            """, middlewares, server.url))
        gw = built(conf_d.root)
        started.append(RunningServer(gw))
        return started[-1].url, upstream
    yield start
    for server in started:
        server.stop()


def statuses(url: str, n: int, **kwargs) -> List[int]:
    return [requests.get(url, timeout=5, **kwargs).status_code for _ in range(n)]


def test_burst_passes_then_429_with_retry_after_and_a_token_comes_back(limited):
    url, upstream = limited("{average: 4, period: 1s, burst: 3}")
    assert statuses(url + "/x", 3) == [200, 200, 200]
    refused = requests.get(url + "/x", timeout=5)
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "1"
    assert refused.text.startswith("429 Too Many Requests")
    assert upstream.hits == 3                      # the refused request never reached the upstream
    time.sleep(0.3)                                # 4 tokens a second: one is back after 0.25 s
    assert statuses(url + "/x", 2) == [200, 429]
    assert upstream.hits == 4


def test_period_sets_the_rate_and_retry_after_in_whole_seconds(limited):
    url, upstream = limited("{average: 1, period: 1m, burst: 2}")
    assert statuses(url, 4) == [200, 200, 429, 429]
    retry_after = int(requests.get(url, timeout=5).headers["Retry-After"])
    assert 58 <= retry_after <= 60                 # one token a minute
    assert upstream.hits == 2


def test_average_zero_means_no_limit(limited):
    url, upstream = limited("{average: 0, burst: 1}")
    assert statuses(url, 5) == [200] * 5 and upstream.hits == 5


def test_per_user_limit_after_jwt_cannot_be_spoofed(limited):
    url, upstream = limited("{average: 1, period: 1m, burst: 2, sourceCriterion: {requestHeaderName: X-User}}",
                            "[jwt, limit]")

    def as_user(sub: str, **headers: str) -> requests.Response:
        token = mint({"sub": sub, "exp": int(time.time()) + 300}, secret=SECRET, alg="HS256")
        return requests.get(url, headers={"Authorization": f"Bearer {token}", **headers}, timeout=5)

    # carol claims to be bob: the JWT middleware replaces X-User with her verified sub, so she spends her own
    first = as_user("carol", **{"X-User": "bob"})
    assert first.status_code == 200
    seen = [value for name, value in first.json()["headers"] if name == "X-User"]
    assert seen == ["carol"]                       # the client's own X-User was stripped
    assert as_user("carol", **{"X-User": "bob"}).status_code == 200
    assert as_user("carol", **{"X-User": "bob"}).status_code == 429     # nor can she escape her own limit
    assert as_user("carol", **{"X-User": "dave"}).status_code == 429
    # bob's budget is whole; alice's burst used up does not limit bob
    assert [as_user("alice").status_code for _ in range(3)] == [200, 200, 429]
    assert [as_user("bob").status_code for _ in range(3)] == [200, 200, 429]
    assert requests.get(url, timeout=5).status_code == 401            # no token: the limit never sees it
    assert upstream.hits == 6


def test_memory_is_bounded_when_sources_rotate():
    buckets = Buckets(rate=1.0, burst=1, max_sources=1000)
    for i in range(10_000):
        assert buckets.take(f"10.0.{i // 256}.{i % 256}", now=1.0) == 0.0
    assert len(buckets) == 1000
    assert buckets.take("10.0.39.15", now=1.0) > 0      # a recent source keeps its (empty) bucket
    long_key = "x" * 10_000
    buckets.take(long_key, now=1.0)
    assert long_key not in buckets.buckets              # a long header value is kept as a digest


def test_outcome_counted_in_metrics_from_a_real_admin_listener(conf_d, wsgi_server, tmp_path):
    upstream = wsgi_server(named_echo_app("echo"))
    conf_d("routes.yaml", one_middleware("rateLimit", "{average: 1, period: 1m, burst: 1}", "limit", upstream.url))
    gk = Gatekeeper(conf_d.root, tmp_path / "gk.log", "--admin", "127.0.0.1:0")
    try:
        assert statuses(gk.url, 3) == [200, 429, 429]
        assert wait_for(lambda: metric_value(gk.metrics(), "gatekeeper_middleware_outcomes_total",
                                             middleware="limit@file", outcome="rate_limited") == 2)
        lines = [line for line in gk.metrics().splitlines()
                 if line.startswith("gatekeeper_middleware_outcomes_total{") and 'outcome="rate_limited"' in line]
        assert lines and 'router="app@file"' in lines[0], lines
    finally:
        gk.stop()


BAD_OPTIONS = [
    ("{average: lots}", "rateLimit.average: expected a number"),
    ("{average: -1}", "rateLimit.average: must be at least 0"),
    ("{average: 5, period: soon}", 'rateLimit.period: expected a duration such as "10s"'),
    ("{average: 5, period: -5}", "rateLimit.period: must not be negative"),
    ("{average: 5, burst: 1.5}", "rateLimit.burst: expected a whole number"),
    ("{average: 5, sourceCriterion: {requestHost: true, requestHeaderName: X-User}}",
     "rateLimit.sourceCriterion: set only one of ipStrategy, requestHeaderName, requestHost"),
    ("{average: 5, avrage: 3}", 'rateLimit: unknown field "avrage"'),
    ("{average: 5, redis: {endpoints: [a:1, b:2]}}", "rateLimit.redis.endpoints: give exactly one host:port"),
    ("{average: 5, redis: {minIdleConns: 3}}", "rateLimit.redis.minIdleConns: not supported"),
    ("{average: 5, redis: {readTimeout: 0s}}", "rateLimit.redis.readTimeout: must be more than 0"),
    ("{average: 5, redis: {password: 'urn:k8s:secret:redis:password'}}",
     "rateLimit.redis.password: unresolved Kubernetes Secret reference"),
    ("{average: 5, redis: {tls: {cert: /nonexistent.pem, key: /nonexistent.key}}}",
     "rateLimit.redis.tls.cert: no such file"),
    ("{average: 5, redis: {secret: redis-creds}}", "rateLimit.redis.secret: not supported"),
]


def test_check_refuses_bad_options_with_a_clear_error(conf_d):
    """One ``gatekeeper check`` run (a real subprocess) over one middleware per mistake."""
    check_refuses(conf_d, "rateLimit", BAD_OPTIONS, prefix="limit", file="limits.yaml")


@pytest.mark.parametrize("options, message", [
    ("{limit: 5}", "distributedRateLimit.store.redis: required"),
    ("{limit: 5, store: {redis: {}}}", "distributedRateLimit.store.redis.endpoints: required"),
    ("{limit: 5, store: {redis: {endpoints: [a:1], cluster: true}}}", "store.redis.cluster: Redis Cluster is not"),
    ("{limit: 5, store: {redis: {endpoints: [a:1], sentinel: {masterSet: m}}}}",
     "store.redis.sentinel: Redis Sentinel"),
    ("{limit: 5, store: {redis: {endpoints: [a:1], timeout: 0s}}}", "store.redis.timeout: must be more than 0"),
    ("{limit: 5, store: {redis: {endpoints: [a:1], password: 'urn:k8s:secret:redis:password'}}}",
     "distributedRateLimit.store.redis.password: unresolved Kubernetes Secret reference"),
    ("{limit: 5, denyOnError: maybe, store: {redis: {endpoints: [a:1]}}}",
     "distributedRateLimit.denyOnError: expected true or false"),
    ("{limit: 5, limt: 3, store: {redis: {endpoints: [a:1]}}}", 'distributedRateLimit: unknown field "limt"'),
    ("{limit: lots, store: {redis: {endpoints: [a:1]}}}", "distributedRateLimit.limit: expected a number"),
], ids=["no-store", "no-endpoints", "cluster", "sentinel", "no-timeout", "secret-ref-in-file", "deny-on-error",
        "unknown", "limit-text"])
def test_distributed_rate_limit_bad_options_put_it_in_error(conf_d, options, message):
    conf_d("limits.yaml", one_middleware("plugin", f"{{distributedRateLimit: {options}}}", "shared"))
    errors = config_errors(Gateway(conf_d.root))
    assert any(message in e and 'middleware "shared@file"' in e for e in errors), errors
