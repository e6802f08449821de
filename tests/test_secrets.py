"""No token, signing secret or Authorization value in anything a run produces: gatekeeper's log records
(caplog, debug level), a real ``gatekeeper serve``'s stderr (logs and access log), error bodies,
``/config`` and ``/metrics``.
"""
from __future__ import annotations

import logging
import time
from typing import List

import requests

from gatekeeper.app import Gateway
from gatekeeper.jwt.mint import mint
from tests.conftest import RunningServer
from tests.serve_process import Gatekeeper, jwt_middleware, lb_manifest

SECRET = "s3cr3t-signing-value-do-not-leak-0123456789"
OTHER_SECRET = "attacker-secret-value-also-never-logged-987"
OPAQUE = "opaque-credential-value-never-logged-5551212"
MIDDLEWARE = jwt_middleware(SECRET)
ROUTERS = """
open: {rule: "PathPrefix(`/open`)", service: s}
locked: {rule: "PathPrefix(`/locked`)", service: s, middlewares: [jwt]}
"""


def credentials() -> List[str]:
    """Authorization values a client sends: good, forged, expired, malformed, another scheme."""
    now = int(time.time())
    return [f"Bearer {mint({'sub': 'alice', 'exp': now + 60}, secret=SECRET)}",
            f"Bearer {mint({'sub': 'mallory', 'exp': now + 60}, secret=OTHER_SECRET)}",
            f"Bearer {mint({'sub': 'late', 'exp': now - 600}, secret=SECRET)}",
            f"Bearer {OPAQUE}.x.y", f"Basic {OPAQUE}", f"Bearer {OPAQUE}"]


def send_traffic(url: str) -> str:
    """Every credential to every path, in the header, the query and a cookie; returns the error answers
    (a 200 comes from the echo upstream, which reflects what it was sent by design)."""
    bodies = []
    for value in credentials():
        token = value.split(" ", 1)[1]
        for path in ("/open", "/locked", "/missing"):
            for kwargs in ({"headers": {"Authorization": value}}, {"params": {"token": token}},
                           {"cookies": {"token": token}}):
                response = requests.get(url + path, timeout=5, **kwargs)
                if response.status_code != 200:
                    bodies.append(f"{response.status_code} {response.headers} {response.text}")
    return "\n".join(bodies)


def leaked(text: str) -> List[str]:
    """The secrets, tokens and credential values found in ``text`` (the echo's own reflection excepted)."""
    needles = [SECRET, OTHER_SECRET, OPAQUE] + [v.split(" ", 1)[1] for v in credentials()[:3]]
    return [needle[:20] + "..." for needle in needles if needle in text]


def test_in_process_logs_and_error_bodies_hold_no_secret(conf_d, echo_upstream, caplog):
    conf_d("api.yaml", lb_manifest(ROUTERS, echo_upstream.url, MIDDLEWARE))
    caplog.set_level(logging.DEBUG, logger="gatekeeper")
    server = RunningServer(Gateway(conf_d.root))
    try:
        bodies = send_traffic(server.url)
    finally:
        server.stop()
    assert not leaked(caplog.text)
    assert not leaked("\n".join(str(r.__dict__) for r in caplog.records))
    assert bodies.count("401 ") >= 10 and not leaked(bodies)


def test_serve_process_stderr_config_and_metrics_hold_no_secret(conf_d, echo_upstream, tmp_path):
    conf_d("api.yaml", lb_manifest(ROUTERS, echo_upstream.url, MIDDLEWARE))
    conf_d("broken.yaml", f'http: {{middlewares: {{bad: {{plugin: {{jwt: {{signingSecret: "{OTHER_SECRET}", '
                          f'nonsense: 1}}}}}}}}}}\n')
    gk = Gatekeeper(conf_d.root, tmp_path / "gk.log", "--admin", "127.0.0.1:0", "--log-level", "debug")
    try:
        bodies = send_traffic(gk.url)
        admin = requests.get(gk.admin + "/config", timeout=5).text + gk.metrics()
    finally:
        assert gk.stop() == 0
    log = gk.log()
    assert "401" in log and "/locked" in log, log[-2000:]  # the access log saw the refusals
    assert not leaked(log), log[-2000:]
    assert not leaked(admin)
    assert bodies.count("401 ") >= 10 and not leaked(bodies)
