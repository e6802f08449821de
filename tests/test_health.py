"""Active health checks (Traefik's ``healthCheck``), passive health, and their options, against real upstreams.

A checked server that fails leaves the rotation and comes back when it passes again; none up -> 503; checks
run in the background only once started (per process), stop when a reload retires the service, and run in
every worker under ``--workers 2``.
"""
from __future__ import annotations

import json
import socket
import textwrap
from typing import Any, Callable, Dict, Iterator, List

import pytest
import requests
from serve_process import Gatekeeper, metric_value

from gatekeeper.config.model import Source
from gatekeeper.config.providers.file import read_service
from gatekeeper.config.reload import ConfigLoader
from gatekeeper.errors import ConfigError
from gatekeeper.ops.view import config_document
from gatekeeper.proxy import health
from gatekeeper.proxy.balancer import ServerSpec, make_load_balancer
from gatekeeper.proxy.health import HealthCheckDef, PassiveHealthDef, Target, probe
from tests.conftest import wait_until


@pytest.fixture
def checks_enabled() -> Iterator[None]:
    health.enable_checks()
    yield
    health._REGISTRY.enabled = False


@pytest.fixture
def balancers() -> Iterator[Callable[..., Any]]:
    made: List[Any] = []

    def make(*args: Any, **kwargs: Any) -> Any:
        lb = make_load_balancer(*args, **kwargs)
        made.append(lb)
        return lb
    yield make
    for lb in made:
        lb.close()
    assert wait_until(lambda: not any(lb.checker and lb.checker.running for lb in made))


def dead_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def answer(lb: Any, path: str = "/") -> str:
    out: Dict[str, str] = {}
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "gk",
               "SERVER_PORT": "80", "HTTP_HOST": "gk", "wsgi.input": None, "REMOTE_ADDR": "127.0.0.1",
               "wsgi.url_scheme": "http", "SERVER_PROTOCOL": "HTTP/1.1"}
    body = b"".join(lb(environ, lambda status, headers, exc=None: out.setdefault("status", status)))
    code = out["status"][:3]
    return f"{code} {body.decode()}" if code == "200" else code


FAST = HealthCheckDef("/health", interval=0.05, timeout=1.0)


# --- options, as Traefik writes them -------------------------------------------------------------------

@pytest.mark.parametrize("check, expected", [
    ({"path": "/health"}, HealthCheckDef("/health")),
    ({"path": "/h?x=1", "interval": "10s", "timeout": "500ms", "unhealthyInterval": "1m"},
     HealthCheckDef("/h?x=1", interval=10.0, timeout=0.5, unhealthy_interval=60.0)),
    ({"path": "/h", "interval": 7}, HealthCheckDef("/h", interval=7.0)),
    ({"Path": "/h", "method": "head", "status": 204, "scheme": "HTTPS", "port": 8443, "hostname": "svc.local",
      "headers": {"X-Probe": "1"}, "followRedirects": False, "mode": "http"},
     HealthCheckDef("/h", method="HEAD", status=204, scheme="https", port=8443, hostname="svc.local",
                    headers=(("X-Probe", "1"),), follow_redirects=False)),
], ids=["defaults", "durations", "bare-seconds", "every-option"])
def test_health_check_options_read_as_traefik_documents(check, expected):
    definition = read_service("s@file", {"loadBalancer": {"servers": [{"url": "http://a"}], "healthCheck": check}},
                              Source("t.yaml"))
    assert definition.health_check == expected


@pytest.mark.parametrize("spec, message", [
    ({"loadBalancer": {"healthCheck": {"interval": "10s"}}}, "loadBalancer.healthCheck.path: required"),
    ({"loadBalancer": {"healthCheck": {"path": "/h", "mode": "grpc"}}}, "grpc health checks are not"),
    ({"loadBalancer": {"healthCheck": {"path": "/h", "interval": "soon"}}}, 'expected a duration such as "10s"'),
    ({"loadBalancer": {"healthCheck": {"path": "/h", "timeout": "0s"}}}, "timeout: must be more than 0"),
    ({"loadBalancer": {"healthCheck": {"path": "/h", "status": 999}}}, "status: expected an HTTP status code"),
    ({"loadBalancer": {"healthCheck": {"path": "/h", "scheme": "ftp"}}}, "scheme: expected http or https"),
    ({"loadBalancer": {"healthCheck": {"path": "/h", "headers": {"Bad Name": "x"}}}}, "is not a valid header"),
    ({"loadBalancer": {"healthCheck": {"path": "/h", "intervall": "1s"}}}, 'unknown field "intervall"'),
    ({"loadBalancer": {"passiveHealthCheck": {"maxFailedAttempts": 0}}}, "maxFailedAttempts: must be at least 1"),
    ({"loadBalancer": {"sticky": {"cookie": {"sameSite": "sometimes"}}}}, "sameSite: expected none, lax or strict"),
    ({"loadBalancer": {"sticky": {"cookie": {"name": "a b"}}}}, "name: not a valid cookie name"),
    ({"loadBalancer": {"sticky": {}}}, "sticky.cookie: required"),
    ({"weighted": {"services": [{"name": "a"}], "healthCheck": {"path": "/h"}}}, 'unknown field "path"'),
    ({"failover": {"service": "a"}}, "failover.fallback: required"),
], ids=["no-path", "grpc", "bad-duration", "zero-timeout", "bad-status", "bad-scheme", "bad-header",
        "misspelt", "zero-attempts", "same-site", "cookie-name", "no-cookie", "weighted-options", "no-fallback"])
def test_bad_options_refused_with_where_and_what(spec, message):
    with pytest.raises(ConfigError) as caught:
        read_service("s@file", spec, Source("t.yaml"))
    assert message in str(caught.value)


# --- what a check sends, and what counts as healthy ------------------------------------------------------

def target_of(server: Any) -> Target:
    return Target("http", "127.0.0.1", server.port, f"127.0.0.1:{server.port}")


@pytest.mark.parametrize("check, status, expected_up, sent", [
    (HealthCheckDef("/health"), 200, True, {"method": "GET", "path": "/health", "host": "{authority}"}),
    (HealthCheckDef("/health"), 302, True, {}),
    (HealthCheckDef("/health"), 500, False, {}),
    (HealthCheckDef("/health", status=204), 200, False, {}),
    (HealthCheckDef("/health", status=204), 204, True, {}),
    (HealthCheckDef("/health?deep=1", method="HEAD", hostname="svc.internal", headers=(("X-Probe", "yes"),)), 200,
     True, {"method": "HEAD", "query": "deep=1", "host": "svc.internal", "probe": "yes"}),
    (HealthCheckDef("/health/redirect"), 200, False, {"path": "/health/target"}),
    (HealthCheckDef("/health/redirect", follow_redirects=False), 200, True, {"path": "/health/redirect"}),
], ids=["defaults", "3xx-is-healthy", "5xx-is-not", "status-other", "status-match", "method-host-headers-query",
        "redirect-followed", "redirect-not-followed"])
def test_probe(upstreams, check, status, expected_up, sent):
    ((app, server),) = upstreams("a")
    app.status = status
    up, why = probe(target_of(server), check)
    assert up is expected_up, why
    last = app.seen[-1]
    for key, value in sent.items():
        assert last[key] == value.format(authority=f"127.0.0.1:{server.port}")


def test_probe_port_override_and_unreachable(upstreams):
    ((app, server),) = upstreams("a")
    elsewhere = Target("http", "127.0.0.1", dead_port(), "x")
    assert probe(elsewhere, HealthCheckDef("/health", port=server.port))[0] is True  # the check's port is live
    assert app.seen[-1]["host"] == f"127.0.0.1:{server.port}"
    up, why = probe(elsewhere, HealthCheckDef("/health", timeout=0.5))
    assert not up and "refused" in why.lower()


# --- in the rotation and out of it ------------------------------------------------------------------

def test_unhealthy_server_leaves_and_returns(upstreams, balancers, checks_enabled):
    (a, sa), (b, sb) = upstreams("a", "b")
    lb = balancers([ServerSpec(sa.url), ServerSpec(sb.url)], name="s@file", health_check=FAST)
    assert {answer(lb) for _ in range(4)} == {"200 a", "200 b"}
    b.status = 503
    assert wait_until(lambda: lb.server_status()[sb.url] == "DOWN")
    assert {answer(lb) for _ in range(6)} == {"200 a"}
    a.status = 500
    assert wait_until(lambda: not lb.healthy())
    assert answer(lb) == "503"
    b.status = 200
    assert wait_until(lambda: lb.server_status()[sb.url] == "UP")
    assert {answer(lb) for _ in range(4)} == {"200 b"}


def test_checks_wait_for_the_serving_process(upstreams, balancers):
    """Before enable_checks() (``gatekeeper check``, a parent before fork) no checker runs; the first
    request (always in a serving process) starts it."""
    ((a, sa),) = upstreams("a")
    lb = balancers([ServerSpec(sa.url)], health_check=FAST)
    assert not lb.checker.running and a.seen == []
    assert answer(lb) == "200 a"
    assert wait_until(lambda: len(a.seen) >= 2)


def test_passive_health_takes_a_failing_server_out_for_the_window(upstreams, balancers):
    ((_a, sa),) = upstreams("a")
    dead = f"http://127.0.0.1:{dead_port()}"
    lb = balancers([ServerSpec(dead), ServerSpec(sa.url)],
                   passive=PassiveHealthDef(failure_window=0.4, max_failed_attempts=2))
    answers = [answer(lb) for _ in range(4)]
    assert answers.count("502") == 2   # two failures within the window: out
    assert lb.server_status()[dead] == "DOWN"
    assert {answer(lb) for _ in range(6)} == {"200 a"}
    assert wait_until(lambda: lb.server_status()[dead] == "UP", timeout=2)
    assert "502" in {answer(lb) for _ in range(2)}  # back in the rotation after the window


# --- reloads and workers ----------------------------------------------------------------------------

def manifest(*urls: str, interval: str = "50ms") -> str:
    servers = ", ".join(f'{{url: "{u}"}}' for u in urls)
    return textwrap.dedent(f"""\
        http:
          routers:
            r: {{rule: "PathPrefix(`/`)", service: s}}
          services:
            s:
              loadBalancer:
                servers: [{servers}]
                healthCheck: {{path: /health, interval: {interval}, timeout: 1s}}
        """)


def test_reload_keeps_unchanged_checkers_and_stops_retired_ones(upstreams, conf_d, checks_enabled):
    (a, sa), (b, sb) = upstreams("a", "b")
    conf_d("api.yaml", manifest(sa.url))
    loader = ConfigLoader(conf_d.root)
    try:
        first = loader.load().services["s@file"].app
        assert wait_until(lambda: first.checker.running)
        conf_d("other.yaml", "http:\n  routers:\n    o: {rule: \"Path(`/o`)\", service: s@file}\n")
        assert loader.reload("test")
        assert loader.config.services["s@file"].app is first  # unchanged: the same checker goes on
        conf_d("api.yaml", manifest(sb.url))
        assert loader.reload("test")
        second = loader.config.services["s@file"].app
        assert second is not first
        assert wait_until(lambda: not first.checker.running and second.checker.running)
        seen = len(a.seen)
        assert wait_until(lambda: len(b.seen) >= 3)
        assert len(a.seen) <= seen + 1   # the retired checker stopped (one check may have been in flight)
        b.status = 500
        assert wait_until(lambda: config_document(loader)["services"]["s@file"]["serverStatus"] == {sb.url: "DOWN"})
        assert config_document(loader)["services"]["s@file"]["health"] == "0/1 servers up"
    finally:
        for built in loader.config.services.values():
            built.app.close()


def test_checks_run_in_every_worker(upstreams, conf_d, tmp_path):
    (_a, sa), (b, sb) = upstreams("a", "b")
    b.status = 500
    conf_d("api.yaml", manifest(sa.url, sb.url, interval="100ms"))
    gk = Gatekeeper(conf_d.root, tmp_path / "gk.log", "--workers", "2", "--admin", "127.0.0.1:0")
    try:
        # fresh connections land on either worker; every answer after the checks ran comes from "a"
        for _ in range(30):
            requests.get(gk.url + "/", timeout=5, headers={"Connection": "close"})
        checked_by = set()

        def both_workers_checked() -> bool:
            doc = json.loads(requests.get(gk.admin + "/config", timeout=5).text)
            if doc["services"]["s@file"].get("serverStatus", {}).get(sb.url) == "DOWN":
                checked_by.add(doc["pid"])
            return len(checked_by) == 2
        assert wait_until(both_workers_checked, timeout=15), checked_by
        answers = {requests.get(gk.url + "/", timeout=5, headers={"Connection": "close"}).text for _ in range(20)}
        assert answers == {"a"}
        # gatekeeper_server_up: one sample per worker and server (liveall), summed over the workers here
        scrape = gk.metrics()
        assert metric_value(scrape, "gatekeeper_server_up", service="s@file", server=sb.url) == 0
        assert metric_value(scrape, "gatekeeper_server_up", service="s@file", server=sa.url) == 2
    finally:
        assert gk.stop() == 0
