"""The ``mirroring`` service through a real Gateway and real upstreams: the main service answers, mirrors get
their share of copies (same method, target, body and forwarded headers), a mirror never sees what the router's
middlewares refused, and a slow, dead or saturated mirror never delays the client.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List

import gevent
import pytest
import requests

from gatekeeper.app import Gateway
from gatekeeper.config.compile import CompileOptions
from gatekeeper.jwt.mint import mint
from gatekeeper.proxy.balancer import ProxyLimits, ServerSpec, make_load_balancer
from gatekeeper.proxy.mirror import make_mirroring
from tests.conftest import RunningServer, wait_until

SECRET = "mirroring-secret-0123456789abcdef"
FAST = CompileOptions(limits=ProxyLimits(connect_timeout=1.0, response_timeout=3.0))


class Recorder:
    """A WSGI upstream writing down what it received: method, target, body and headers."""

    def __init__(self, name: str, delay: float = 0.0) -> None:
        self.name, self.delay = name, delay
        self.seen: List[Dict[str, str]] = []

    def __call__(self, environ, start_response):
        body = environ["wsgi.input"].read()
        if self.delay:
            gevent.sleep(self.delay)
        self.seen.append({"method": environ["REQUEST_METHOD"], "target": environ.get("RAW_URI", ""),
                          "body": body.decode("latin-1"),
                          "xff": environ.get("HTTP_X_FORWARDED_FOR", ""),
                          "host": environ.get("HTTP_X_FORWARDED_HOST", ""),
                          "auth": environ.get("HTTP_AUTHORIZATION", "")})
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [self.name.encode()]


@pytest.fixture
def servers() -> Iterator[Callable[..., RunningServer]]:
    started: List[RunningServer] = []

    def start(app) -> RunningServer:
        started.append(RunningServer(app))
        return started[-1]
    yield start
    for server in started:
        server.stop()


@pytest.fixture
def gateway(tmp_path: Path, servers) -> Callable[[str], str]:
    """``gateway(yaml)`` -> base URL of a Gateway serving that configuration (no configuration errors)."""
    def start(text: str) -> str:
        root = tmp_path / "conf.d"
        root.mkdir()
        (root / "routes.yaml").write_text(text)
        gw = Gateway(root, options=FAST)
        assert not gw.config.errors, gw.config.errors
        return servers(gw).url
    return start


def config(main: str, mirrors: str, options: str = "", middlewares: str = "") -> str:
    return f"""
http:
  routers:
    app: {{rule: "PathPrefix(`/`)", service: mirrored{middlewares}}}
  middlewares:
    auth: {{plugin: {{jwt: {{signingSecret: "{SECRET}"}}}}}}
  services:
    mirrored: {{mirroring: {{service: main, mirrors: [{mirrors}]{options}}}}}
    main: {{loadBalancer: {{servers: [{{url: "{main}"}}]}}}}
"""


def mirror_service(name: str, url: str) -> str:
    return f'    {name}: {{loadBalancer: {{servers: [{{url: "{url}"}}]}}}}\n'


@pytest.mark.parametrize("percents", [(100, 50), (10, 0), (33, 100)], ids=["100-and-50", "10-and-0", "33-and-100"])
def test_each_mirror_gets_its_percent_of_copies_identical_to_what_main_gets(gateway, servers, percents):
    main, first, second = Recorder("main"), Recorder("first"), Recorder("second")
    main_url, first_url, second_url = (servers(app).url for app in (main, first, second))
    text = config(main_url, f"{{name: first, percent: {percents[0]}}}, {{name: second, percent: {percents[1]}}}")
    url = gateway(text + mirror_service("first", first_url) + mirror_service("second", second_url))
    for i in range(20):
        response = requests.post(f"{url}/orders/{i}?x=1", data=f"body-{i}", headers={"Host": "shop.test"},
                                 timeout=5)
        assert response.text == "main"
    expected = [-(-20 * p // 100) for p in percents]  # Traefik: ceil(n * percent / 100) after n requests
    assert wait_until(lambda: [len(first.seen), len(second.seen)] == expected), (first.seen, second.seen)
    gevent.sleep(0.1)
    assert [len(first.seen), len(second.seen)] == expected and len(main.seen) == 20
    by_target = {seen["target"]: seen for seen in main.seen}
    for copy in first.seen + second.seen:
        assert copy == by_target[copy["target"]]  # same method, target, body, X-Forwarded-* headers
        assert copy["host"] == "shop.test" and copy["xff"] == "127.0.0.1"


def test_a_mirror_never_receives_a_request_the_router_refused(gateway, servers):
    main, shadow = Recorder("main"), Recorder("shadow")
    text = config(servers(main).url, "{name: shadow, percent: 100}", middlewares=", middlewares: [auth]")
    url = gateway(text + mirror_service("shadow", servers(shadow).url))
    assert requests.get(url + "/secret", timeout=5).status_code == 401
    bad = mint({"sub": "mallory"}, secret="not-the-secret-0123456789abcdef")
    assert requests.get(url + "/secret", headers={"Authorization": f"Bearer {bad}"}, timeout=5).status_code == 401
    good = mint({"sub": "alice"}, secret=SECRET)
    assert requests.get(url + "/secret", headers={"Authorization": f"Bearer {good}"}, timeout=5).status_code == 200
    assert wait_until(lambda: len(shadow.seen) == 1)
    gevent.sleep(0.1)
    assert shadow.seen == main.seen and len(main.seen) == 1  # the copy is what the main service got


@pytest.mark.parametrize("kind", ["slow", "dead"])
def test_a_slow_or_dead_mirror_never_delays_the_client(gateway, servers, free_port, kind):
    main, slow = Recorder("main"), Recorder("slow", delay=1.5)
    mirror_url = servers(slow).url if kind == "slow" else f"http://127.0.0.1:{free_port}"
    url = gateway(config(servers(main).url, "{name: shadow, percent: 100}") + mirror_service("shadow", mirror_url))
    started = time.monotonic()
    for _ in range(3):
        assert requests.get(url + "/x", timeout=5).text == "main"
    assert time.monotonic() - started < 1.0
    if kind == "slow":
        assert wait_until(lambda: len(slow.seen) == 3)


@pytest.mark.parametrize("options, body, mirrored_body", [
    (", maxBodySize: 10", "0123456789", "0123456789"),
    (", maxBodySize: 10", "0123456789A", None),
    (", mirrorBody: false", "payload", ""),
    ("", "x" * 300_000, "x" * 300_000),
], ids=["at-max-body-size", "over-max-body-size", "mirror-body-false", "large-body-no-limit"])
def test_the_body_is_mirrored_within_max_body_size_and_main_always_gets_it_whole(
        gateway, servers, options, body, mirrored_body):
    main, shadow = Recorder("main"), Recorder("shadow")
    url = gateway(config(servers(main).url, "{name: shadow, percent: 100}", options)
                  + mirror_service("shadow", servers(shadow).url))
    for chunked in (False, True):
        data = iter([body.encode()]) if chunked else body
        assert requests.put(url + "/upload", data=data, timeout=5).text == "main"
    assert [seen["body"] for seen in main.seen] == [body, body]
    if mirrored_body is None:
        gevent.sleep(0.3)
        assert shadow.seen == []
    else:
        assert wait_until(lambda: len(shadow.seen) == 2)
        assert [seen["body"] for seen in shadow.seen] == [mirrored_body, mirrored_body]


def test_copies_beyond_the_in_flight_bound_are_dropped_and_counted(servers):
    main, slow = Recorder("main"), Recorder("slow", delay=1.0)
    apps = [make_load_balancer([ServerSpec(servers(app).url)], limits=FAST.limits) for app in (main, slow)]
    mirroring = make_mirroring(apps[0], [(apps[1], 100)], max_in_flight=2)
    url = servers(mirroring).url
    started = time.monotonic()
    for _ in range(5):
        assert requests.get(url + "/x", timeout=5).text == "main"
    assert time.monotonic() - started < 0.8
    mirror = mirroring.mirrors[0]
    assert (mirror.sent, mirror.dropped) == (2, 3)
    assert wait_until(lambda: mirror.in_flight == 0 and len(slow.seen) == 2)
    for app in apps:
        app.close()


@pytest.mark.parametrize("mirroring, error", [
    ("{service: main, mirrors: [{name: main, percent: 101}]}", "mirrors[0].percent: must be from 0 to 100"),
    ("{service: main, mirrors: [{percent: 5}]}", "mirrors[0].name: required"),
    ("{mirrors: [{name: main, percent: 5}]}", "mirroring.service: required"),
    ("{service: main, maxBodySize: -2}", "maxBodySize"),
    ("{service: main, healthCheck: {}}", "mirroring.healthCheck: not supported"),
    ("{service: main, mirrors: [{name: nowhere, percent: 5}]}", 'mirror "nowhere@file" does not exist'),
    ("{service: mirrored}", 'service "mirrored@file" refers back to itself'),
], ids=["percent-over-100", "mirror-without-name", "no-service", "bad-max-body-size", "health-check",
        "missing-mirror", "cycle"])
def test_mistakes_are_refused_and_the_router_answers_503(tmp_path, servers, mirroring, error):
    main = servers(Recorder("main"))
    root = tmp_path / "conf.d"
    root.mkdir()
    (root / "routes.yaml").write_text(f"""
http:
  routers:
    app: {{rule: "PathPrefix(`/`)", service: mirrored}}
  services:
    mirrored: {{mirroring: {mirroring}}}
    main: {{loadBalancer: {{servers: [{{url: "{main.url}"}}]}}}}
""")
    gw = Gateway(root, options=FAST)
    assert any(error in str(err) for err in gw.config.errors), [str(e) for e in gw.config.errors]
    url = servers(gw).url
    assert requests.get(url + "/x", timeout=5).status_code == 503


def test_mirrors_work_in_every_worker_process(conf_d, tmp_path, servers):
    """Copies are greenlets each serving process starts per request (after the fork): under ``--workers 2``
    every worker mirrors."""
    import re

    from tests.serve_process import Gatekeeper, wait_for

    main, shadow = Recorder("main"), Recorder("shadow")
    conf_d("routes.yaml", config(servers(main).url, "{name: shadow, percent: 100}")
           + mirror_service("shadow", servers(shadow).url))
    gk = Gatekeeper(conf_d.root, tmp_path / "gk.log", "--workers", "2")
    try:
        def workers_seen() -> int:
            return len(set(re.findall(r"pid=(\d+)", "\n".join(gk.access_lines()))))

        sent = 0
        while sent < 200 and (sent < 20 or workers_seen() < 2):  # which worker accepts is the kernel's call
            with requests.Session() as session:  # a new connection each: both workers get some
                assert session.post(f"{gk.url}/w/{sent}", data=b"x", timeout=5).text == "main"
            sent += 1
            if sent % 20 == 0:
                wait_for(lambda n=sent: len(gk.access_lines()) >= n, timeout=5)
        assert wait_for(lambda: len(shadow.seen) == sent, timeout=10), (len(shadow.seen), sent)
        assert sorted(s["target"] for s in shadow.seen) == sorted(s["target"] for s in main.seen)
        assert wait_for(lambda: len(gk.access_lines()) >= sent)
        assert workers_seen() == 2
    finally:
        assert gk.stop() == 0
