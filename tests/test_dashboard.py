"""The dashboard served by a real ``gatekeeper serve --admin``: escaping, no secrets, traffic, reloads.

The browser half (a real Chromium running the page's script) is tests/test_dashboard_browser.py.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from serve_process import Gatekeeper, jwt_middleware, lb_manifest, wait_for

from gatekeeper.jwt.mint import mint
from gatekeeper.ops.dashboard import jwt_outcomes_text, make_dashboard, sparkline_svg
from gatekeeper.ops.sampler import Traffic
from gatekeeper.ops.view import mask_secrets, secret_values

SECRET = "dashboard-test-secret-value-0123456789"
EVIL = "<script>alert(1)</script>"
BROKEN_YAML = "http:\n  routers: [\n"


def manifest(upstream_url: str) -> str:
    return lb_manifest(f"""
        open: {{rule: "PathPrefix(`/open`)", service: s}}
        locked: {{rule: "PathPrefix(`/locked`)", service: s, middlewares: [jwt]}}
        "{EVIL}": {{rule: "Path(`/{EVIL}`)", service: s}}
    """, upstream_url, jwt_middleware(SECRET))


@pytest.fixture
def gateway(conf_d, echo_upstream, tmp_path):
    conf_d("api.yaml", manifest(echo_upstream.url))
    conf_d("broken.yaml", BROKEN_YAML)
    gk = Gatekeeper(conf_d.root, tmp_path / "gk.log", "--admin", "127.0.0.1:0")
    yield gk
    assert gk.stop() == 0


def view(gk) -> dict:
    answer = requests.get(gk.admin + "/dashboard/state.json", timeout=5)
    assert answer.status_code == 200
    return answer.json()


def rows(gk, table: str) -> list:
    """The table's rows as lists of cell texts (sparkline cells as their values)."""
    return [[c.get("text", c.get("spark")) for c in row] for row in view(gk)["tables"][table]]


def row_named(gk, table: str, name: str) -> list:
    return next((row for row in rows(gk, table) if row[0] == name), [])


def test_page_escapes_names_and_shows_no_secret(gateway):
    page = requests.get(gateway.admin + "/dashboard/", timeout=5)
    feed = requests.get(gateway.admin + "/dashboard/state.json", timeout=5)
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert EVIL not in page.text and "<script>alert" not in page.text
    assert page.text.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 2      # the name and the rule
    assert page.text.count("<script>") == 1                                     # the page's own script
    assert "<" not in feed.text and EVIL in json.dumps(feed.json())           # raw in the data, not markup
    for body in (page.text, feed.text, requests.get(gateway.admin + "/config", timeout=5).text):
        assert SECRET not in body
    assert "key source: signingSecret" in page.text
    assert "broken.yaml:3" in page.text and "not valid YAML" in page.text      # server-rendered: no JS needed


@pytest.mark.parametrize("method,path,status,content_type,location", [
    ("GET", "/dashboard", 308, "text/plain", "/dashboard/"),
    ("GET", "/dashboard/", 200, "text/html; charset=utf-8", None),
    ("HEAD", "/dashboard/", 200, "text/html; charset=utf-8", None),
    ("GET", "/dashboard/state.json", 200, "application/json", None),
    ("GET", "/dashboard/nothing", 404, "text/plain", None),
    ("POST", "/dashboard/", 405, None, None),
], ids=["bare-prefix-redirects", "page", "head", "feed", "unknown-404", "post-refused"])
def test_dashboard_paths(method, path, status, content_type, location):
    doc = {"generation": 1, "routers": [], "middlewares": {}, "services": {}, "problems": [], "reloads": []}
    app = make_dashboard(lambda: doc)
    seen = {}
    body = b"".join(app({"REQUEST_METHOD": method, "PATH_INFO": path},
                        lambda s, h: seen.update(status=int(s[:3]), headers=dict(h))))
    assert seen["status"] == status
    assert content_type is None or seen["headers"]["Content-Type"] == content_type
    assert seen["headers"].get("Location") == location
    assert int(seen["headers"]["Content-Length"]) == len(body)


def test_traffic_and_jwt_outcomes_per_router(gateway):
    good = mint({"sub": "alice"}, secret=SECRET)
    forged = mint({"sub": "mallory"}, secret="not-the-secret-at-all-0123456789")
    calls = [("/open/a", None)] * 3 + [("/locked/x", good)] * 2 + [("/locked/x", forged), ("/locked/x", None)]
    statuses = [requests.get(gateway.url + path, timeout=5,
                             headers={"Authorization": f"Bearer {t}"} if t else {}).status_code
                for path, t in calls]
    assert statuses == [200] * 5 + [401, 401]
    assert wait_for(lambda: row_named(gateway, "routers", "open")[7:8] == ["3 (200: 3)"])
    assert row_named(gateway, "routers", "locked")[7] == "4 (200: 2, 401: 2)"
    assert row_named(gateway, "middlewares", "jwt")[3].endswith(
        "accepted 2 · 401 bad_signature 1 · 401 missing_token 1")
    # After a second sample the sparklines have points: a rate and a latency for every router seen.
    assert wait_for(lambda: len(row_named(gateway, "routers", "open")[8]) >= 1)
    assert all(v >= 0 for v in row_named(gateway, "routers", "open")[9])


def test_reload_history_and_a_new_router(gateway, conf_d, echo_upstream):
    assert wait_for(lambda: [r[2] for r in rows(gateway, "reloads")] == ["start"])
    conf_d("fresh.yaml", f"""
        http:
          routers: {{fresh: {{rule: "PathPrefix(`/fresh`)", service: s2}}}}
          services: {{s2: {{loadBalancer: {{servers: [{{url: "{echo_upstream.url}"}}]}}}}}}
        """)
    assert wait_for(lambda: row_named(gateway, "routers", "fresh") != [])
    assert wait_for(lambda: len(rows(gateway, "reloads")) == 2)
    newest = rows(gateway, "reloads")[0]
    assert newest[0] == "2" and newest[2] == "watch"
    assert "routers added: fresh" in newest[4] and "services added: s2" in newest[4]
    assert view(gateway)["summary"].startswith("generation 2 · 4 routers · 1 problems")


@pytest.mark.parametrize("samples,rate,latency_ms", [
    ([(0, 0, 0.0, 0)], [], []),
    ([(0, 0, 0.0, 0), (1, 10, 0.5, 10)], [10.0], [50.0]),
    ([(0, 5, 0.1, 5), (2, 5, 0.1, 5)], [0.0], [0.0]),
    ([(0, 0, 0.0, 0), (1, 4, 0.4, 4), (3, 8, 0.6, 8)], [4.0, 2.0], [100.0, 50.0]),
    ([(0, 9, 0.9, 9), (1, 0, 0.0, 0)], [0.0], [0.0]),
], ids=["one-sample-no-point", "ten-in-a-second", "idle", "two-intervals", "counter-reset-not-negative"])
def test_traffic_series(samples, rate, latency_ms):
    traffic = Traffic()
    for at, requests_done, seconds_spent, timed in samples:
        traffic.add(at, {"r": {"requests": requests_done, "latency_sum": seconds_spent, "latency_count": timed}})
    assert list(traffic.rate.get("r", [])) == pytest.approx(rate)
    assert list(traffic.latency_ms.get("r", [])) == pytest.approx(latency_ms)


@pytest.mark.parametrize("outcomes,shown", [
    ({}, "no requests yet"),
    ({"accepted": 3.0}, "accepted 3"),
    ({"claims": 1.0, "expired": 2.0, "accepted": 5.0}, "accepted 5 · 401 expired 2 · 403 claims 1"),
], ids=["none", "accepted-only", "accepted-401-403"])
def test_jwt_outcomes_text(outcomes, shown):
    assert jwt_outcomes_text(outcomes) == shown


@pytest.mark.parametrize("options,text,shown", [
    ({"signingSecret": "hunter2-secret"}, "bad value hunter2-secret here", "bad value *** here"),
    ({"SigningSecret": "abcdefgh"}, "abcdefgh", "***"),
    ({"clientConfig": {"headers": {"X-Key": "api-key-value"}}}, "x api-key-value", "x ***"),
    ({"publicKey": "-----BEGIN PUBLIC KEY-----"}, "-----BEGIN PUBLIC KEY-----", "***"),
    ({"usernameClaim": "subject"}, "subject", "subject"),
], ids=["signing-secret", "option-name-any-case", "client-config-nested", "public-key", "harmless-option"])
def test_secret_option_values_are_masked(options, text, shown):
    assert mask_secrets({"rows": [text]}, secret_values(options)) == {"rows": [shown]}


@pytest.mark.parametrize("values,points", [([], 0), ([1.0], 1), ([0.0, 0.0], 2), ([1, 5, 2], 3)],
                         ids=["empty", "one", "all-zero", "three"])
def test_sparkline_svg(values, points):
    svg = sparkline_svg(values, "req/s")
    if not values:
        assert "no data" in svg and "<svg" not in svg
    else:
        polyline = svg.split('points="')[1].split('"')[0]
        assert len(polyline.split(" ")) == points
        assert svg.endswith(f"{values[-1]:g} req/s</span>")


INSTALLED_PAGE = """
from gatekeeper.ops import dashboard
app = dashboard.make_dashboard(lambda: {})
sent = []
page = b"".join(app({"PATH_INFO": "/dashboard/", "REQUEST_METHOD": "GET"}, lambda s, h: sent.append(s)))
print(dashboard.__file__, sent[0].split()[0], b"<script>// Builds" in page and b'"use strict"' in page)
"""


def test_page_is_served_from_an_installed_package(tmp_path):
    """The page (static/dashboard.html and .js) is package data: a build of the package carries it, and the
    dashboard imported from that build (not from this checkout) serves it."""
    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path)], cwd=root,
                   check=True, capture_output=True)
    assert sorted(p.name for p in (tmp_path / "gatekeeper/ops/static").iterdir()) == ["dashboard.html",
                                                                                      "dashboard.js"]
    done = subprocess.run([sys.executable, "-c", INSTALLED_PAGE], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)}, check=True)
    module, status, served = done.stdout.split()
    assert module.startswith(str(tmp_path)) and status == "200" and served == "True"
