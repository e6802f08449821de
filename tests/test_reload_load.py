"""Reload under load: clients hammer a real ``gatekeeper serve`` over keep-alive connections while the route's
manifest is rewritten 100 times (a quarter of them broken); every request is answered by the old or the new
upstream, none is lost or answered 404/5xx because of a reload.
"""
from __future__ import annotations

from collections import Counter
from typing import List

import gevent
import requests
from test_reload import gatekeeper_process, manifest  # noqa: F401  (gatekeeper_process is a fixture)

from gatekeeper.ops.echo import named_echo_app

REWRITES = 100
CLIENTS = 4


def versions(urls: dict) -> List[str]:
    """Consecutive versions always differ: good a, unparsable YAML, good b, a router rule that fails."""
    good_a, good_b = manifest(urls["a"]), manifest(urls["b"])
    broken_yaml = good_b[: good_b.index("servers:")] + "servers:\n  - [\n"
    broken_rule = good_b.replace("PathPrefix(`/api`)", "PathPrefix(`/api`")
    cycle = [good_a, broken_yaml, good_b, broken_rule]
    return [cycle[i % len(cycle)] for i in range(1, REWRITES + 1)]


class Hammer:
    """``CLIENTS`` greenlets, each on one keep-alive ``requests.Session``, counting every request."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sent = 0
        self.answered: Counter = Counter()      # (status, server) -> count
        self.failures: List[str] = []
        self.running = True
        self.clients = [gevent.spawn(self.client) for _ in range(CLIENTS)]

    def client(self) -> None:
        with requests.Session() as session:
            while self.running:
                self.sent += 1
                try:
                    answer = session.get(self.url, timeout=5)
                    server = answer.json().get("server") if answer.status_code == 200 else answer.text[:80]
                    self.answered[(answer.status_code, server)] += 1
                except Exception as exc:  # counted: the test fails on any
                    self.failures.append(repr(exc))

    def stop(self) -> None:
        self.running = False
        gevent.joinall(self.clients, timeout=10)


def test_rewrites_under_load_lose_nothing(conf_d, wsgi_server, gatekeeper_process):  # noqa: F811
    urls = {name: wsgi_server(named_echo_app(name)).url for name in ("a", "b")}
    path = conf_d("routes.yaml", manifest(urls["a"]))
    gk = gatekeeper_process(conf_d.root, "--debounce-ms", "50", "--log-level", "info")
    hammer = Hammer(gk.url + "/api/load")
    try:
        for number, text in enumerate(versions(urls), start=2):
            path.write_text(text)
            assert gk.wait_for_generation(number), f"rewrite {number - 1} was not reloaded"
    finally:
        hammer.stop()
    answered = sum(hammer.answered.values())
    assert hammer.failures == []
    assert hammer.sent == answered
    assert set(hammer.answered) == {(200, "a"), (200, "b")}, hammer.answered
    assert answered > REWRITES * CLIENTS
