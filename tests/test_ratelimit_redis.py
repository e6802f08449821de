"""rateLimit.redis and plugin.distributedRateLimit against a real redis-server: two ``gatekeeper serve``
processes sharing one limit, what Redis holds, Redis stopped (denyOnError, Traefik's fail-closed 500, a
throttled log line without the password) and the limit recovering when Redis comes back.

redis-server comes from ``scripts/install-redis`` (Debian's package); when it cannot be had these tests fail
with the reason, they do not skip.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator, List, Optional

import gevent
import pytest
import redis
import requests

from gatekeeper.ops.echo import named_echo_app
from tests.serve_process import Gatekeeper, wait_for

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "redis-test-password-7f3a9c"


def redis_server_path() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    result = subprocess.run([str(ROOT / "scripts" / "install-redis")], capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        pytest.fail(f"redis-server is needed and scripts/install-redis could not provide it: {result.stderr.strip()}")
    return result.stdout.strip().splitlines()[-1]


class RedisServer:
    """A throwaway redis-server on a free loopback port (no persistence, a password), restartable in place."""

    def __init__(self, workdir: Path) -> None:
        self.binary, self.workdir = redis_server_path(), workdir
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        self.proc: Optional[subprocess.Popen] = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.workdir), "--requirepass", PASSWORD],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert wait_for(self.answers), "redis-server did not start"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=PASSWORD, socket_timeout=1,
                           socket_connect_timeout=1)

    def answers(self) -> bool:
        client = self.client()
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[List[Gatekeeper]]:
    started: List[Gatekeeper] = []
    yield started
    for gk in started:
        gk.stop()


def manifest(upstream_url: str, port: int) -> str:
    redis_at = f'endpoints: ["127.0.0.1:{port}"], password: "{PASSWORD}"'
    slow = "period: 1m, burst: 3"
    return f"""
http:
  routers:
    traefik: {{rule: "PathPrefix(`/traefik`)", service: app, middlewares: [traefik]}}
    hub: {{rule: "PathPrefix(`/hub`)", service: app, middlewares: [hub]}}
    open: {{rule: "PathPrefix(`/open`)", service: app, middlewares: [open]}}
  middlewares:
    traefik: {{rateLimit: {{average: 1, {slow}, sourceCriterion: {{requestHeaderName: X-Api-Key}},
                           redis: {{{redis_at}, dialTimeout: 500ms, readTimeout: 500ms}}}}}}
    hub: {{plugin: {{distributedRateLimit: {{limit: 1, {slow}, responseHeaders: true, denyOnError: true,
                                            store: {{redis: {{{redis_at}, timeout: 500ms}}}}}}}}}}
    open: {{plugin: {{distributedRateLimit: {{limit: 1, {slow}, denyOnError: false,
                                             store: {{redis: {{{redis_at}, timeout: 500ms}}}}}}}}}}
  services:
    app: {{loadBalancer: {{servers: [{{url: "{upstream_url}"}}]}}}}
"""


@pytest.mark.slow
def test_two_gateways_share_one_limit_through_redis(conf_d, wsgi_server, redis_server, gateways, tmp_path):
    upstream = wsgi_server(named_echo_app("echo"))
    conf_d("limits.yaml", manifest(upstream.url, redis_server.port))
    # the second gateway forks two workers: each creates its own Redis client, after the fork
    gateways.extend(Gatekeeper(conf_d.root, tmp_path / f"gk{i}.log", *args)
                    for i, args in enumerate([(), ("--workers", "2")]))
    urls = [gk.url for gk in gateways]
    key = {"X-Api-Key": "sk_live_do-not-store-me"}

    traefik = [requests.get(urls[i % 2] + "/traefik", headers=key, timeout=5).status_code for i in range(12)]
    assert traefik.count(200) == 3 and traefik[:3] == [200, 200, 200], traefik
    hub = [requests.get(urls[i % 2] + "/hub", timeout=5) for i in range(12)]
    assert [r.status_code for r in hub].count(200) == 3, [r.status_code for r in hub]
    assert [r.headers["X-RateLimit-Remaining"] for r in hub[:4]] == ["2", "1", "0", "0"]
    assert hub[0].headers["X-RateLimit-Limit"] == "1" and int(hub[3].headers["Retry-After"]) >= 58

    client = redis_server.client()
    try:
        keys = sorted(k.decode() for k in client.keys("*"))
        assert len(keys) == 2 and all(k.startswith("gatekeeper:ratelimit:") for k in keys), keys
        assert {k.split(":")[2] for k in keys} == {"traefik@file", "hub@file"}
        assert not any("sk_live" in k for k in keys)   # the source is stored as a digest, never raw
        assert all(0 < client.ttl(k) <= 182 for k in keys)    # idle keys expire once the bucket is full again
    finally:
        client.close()


@pytest.mark.slow
def test_redis_down_deny_on_error_then_the_limit_recovers(conf_d, wsgi_server, redis_server, gateways, tmp_path):
    upstream = wsgi_server(named_echo_app("echo"))
    conf_d("limits.yaml", manifest(upstream.url, redis_server.port))
    gateways.append(Gatekeeper(conf_d.root, tmp_path / "gk.log", "--admin", "127.0.0.1:0"))
    gk = gateways[0]
    assert requests.get(gk.url + "/hub", timeout=5).status_code == 200

    redis_server.stop()
    started = time.monotonic()
    down = {path: requests.get(gk.url + path, timeout=5) for path in ("/hub", "/open", "/traefik")}
    assert time.monotonic() - started < 3                 # refused connections answer at once
    assert down["/hub"].status_code == 503 and down["/hub"].headers["Retry-After"] == "1"   # denyOnError: true
    assert down["/open"].status_code == 200                                                  # denyOnError: false
    assert down["/traefik"].status_code == 500                                               # Traefik: fail closed
    for _ in range(5):
        requests.get(gk.url + "/open", timeout=5)
    assert wait_for(lambda: "middleware hub@file: Redis 127.0.0.1" in gk.log())
    warnings = [line for line in gk.log().splitlines() if "Redis 127.0.0.1" in line]
    assert len(warnings) <= 3, warnings                   # one line per middleware per 10 s, not per request

    redis_server.start()
    assert [requests.get(gk.url + "/hub", timeout=5).status_code for _ in range(4)] == [200, 200, 200, 429]
    assert wait_for(lambda: "middleware hub@file: Redis 127.0.0.1:%d answers again" % redis_server.port in gk.log())
    assert [requests.get(gk.url + "/open", timeout=5).status_code for _ in range(4)] == [200, 200, 200, 429]

    shown = requests.get(gk.admin + "/config", timeout=5).text
    assert "limits.yaml" in shown or "hub@file" in shown
    assert PASSWORD not in shown and PASSWORD not in gk.log()


@pytest.mark.slow
def test_a_kubernetes_secret_reference_is_the_redis_password(conf_d, wsgi_server, redis_server, gateways, tmp_path):
    upstream = wsgi_server(named_echo_app("echo"))
    conf_d("k8s.yaml", f"""
apiVersion: traefik.io/v1alpha1
kind: Middleware
metadata: {{name: shared, namespace: apps}}
spec:
  plugin:
    distributedRateLimit:
      limit: 1
      period: 1m
      burst: 2
      denyOnError: true
      store: {{redis: {{endpoints: ["127.0.0.1:{redis_server.port}"], password: "urn:k8s:secret:redis:password"}}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: redis, namespace: apps}}
stringData: {{password: {PASSWORD}}}
""")
    conf_d("routes.yaml", f"""
http:
  routers:
    app: {{rule: "PathPrefix(`/`)", service: app, middlewares: [apps-shared@kubernetescrd]}}
  services:
    app: {{loadBalancer: {{servers: [{{url: "{upstream.url}"}}]}}}}
""")
    gateways.append(Gatekeeper(conf_d.root, tmp_path / "gk.log"))
    # a wrong or unresolved password would make Redis refuse, and denyOnError answer 503
    assert [requests.get(gateways[0].url, timeout=5).status_code for _ in range(3)] == [200, 200, 429]
    assert PASSWORD not in gateways[0].log()


@pytest.mark.slow
def test_a_redis_that_never_answers_costs_one_timeout_and_stalls_no_one(conf_d, wsgi_server, gateways, tmp_path):
    upstream = wsgi_server(named_echo_app("echo"))
    silent = socket.socket()                       # accepts connections (the kernel's backlog), never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        conf_d("routes.yaml", f"""
http:
  routers:
    limited: {{rule: "PathPrefix(`/limited`)", service: app, middlewares: [hub]}}
    free: {{rule: "PathPrefix(`/free`)", service: app}}
  middlewares:
    hub: {{plugin: {{distributedRateLimit: {{limit: 1, denyOnError: true,
          store: {{redis: {{endpoints: ["127.0.0.1:{silent.getsockname()[1]}"], timeout: 300ms}}}}}}}}}}
  services:
    app: {{loadBalancer: {{servers: [{{url: "{upstream.url}"}}]}}}}
""")
        gateways.append(Gatekeeper(conf_d.root, tmp_path / "gk.log"))
        url = gateways[0].url
        started = time.monotonic()
        limited = gevent.spawn(requests.get, url + "/limited", timeout=10)
        gevent.sleep(0.05)
        free_started = time.monotonic()
        assert requests.get(url + "/free", timeout=5).status_code == 200
        assert time.monotonic() - free_started < 0.2        # served while the other waits on Redis
        assert limited.get(timeout=10).status_code == 503
        assert 0.25 < time.monotonic() - started < 2.0      # bounded by the 300 ms timeout
    finally:
        silent.close()
