"""The dashboard served by a real ``gatekeeper serve --admin``: escaping, no secrets, traffic, reloads.

The browser half (a real Chromium running the page's script) is tests/test_dashboard_browser.py.
"""
import html
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from serve_process import Gatekeeper, jwt_middleware, lb_manifest, wait_for

from gatekeeper.jwt.mint import mint
from gatekeeper.ops.cells import PAGE_SIZE, build_view, jwt_outcomes_text, plural
from gatekeeper.ops.dashboard import make_dashboard, sparkline_svg
from gatekeeper.ops.sampler import Traffic, what_broke
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


def view(gk, query: str = "") -> dict:
    answer = requests.get(gk.admin + "/dashboard/state.json" + query, timeout=5)
    assert answer.status_code == 200
    return answer.json()


def texts(table_rows: list) -> list:
    return [[c.get("text", c.get("spark")) for c in row] for row in table_rows]


def rows(gk, table: str, query: str = "") -> list:
    """The table's rows as lists of cell texts (sparkline cells as their values)."""
    return texts(view(gk, query)["tables"][table]["rows"])


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
    assert int(seen["headers"]["Content-Length"]) == len(body) or (method == "HEAD" and body == b"")
    assert status != 405 or seen["headers"]["Allow"] == "GET, HEAD"


def test_traffic_and_jwt_outcomes_per_router(gateway):
    good = mint({"sub": "alice"}, secret=SECRET)
    forged = mint({"sub": "mallory"}, secret="not-the-secret-at-all-0123456789")
    calls = [("/open/a", None)] * 3 + [("/locked/x", good)] * 2 + [("/locked/x", forged), ("/locked/x", None)]
    statuses = [requests.get(gateway.url + path, timeout=5,
                             headers={"Authorization": f"Bearer {t}"} if t else {}).status_code
                for path, t in calls]
    assert statuses == [200] * 5 + [401, 401]
    assert wait_for(lambda: row_named(gateway, "routers", "open")[6] == "3")
    locked = next(row for row in view(gateway)["tables"]["routers"]["rows"] if row[0]["text"] == "locked")
    assert locked[6] == {"text": "4", "cls": "num", "title": "since start, by status: 200: 2, 401: 2"}
    assert row_named(gateway, "middlewares", "jwt")[3].endswith(
        "accepted 2 · 401 bad_signature 1 · 401 missing_token 1")
    # After a second sample the sparklines have points: a rate and a latency for every router seen.
    assert wait_for(lambda: len(row_named(gateway, "routers", "open")[10]) >= 1)
    assert all(v >= 0 for v in row_named(gateway, "routers", "open")[11])
    # the last minute's 4xx rate of the JWT-refused router (2 refusals over the samples so far)
    assert wait_for(lambda: float(row_named(gateway, "routers", "locked")[8]) > 0)
    assert row_named(gateway, "routers", "open")[8:10] == ["0", "0"]


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
    assert view(gateway)["summary"].startswith("generation 2 · 4 routers · 0 stale objects · 1 error ·")


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
    assert traffic.sparks("r")["rateSeries"] == pytest.approx(rate)
    assert traffic.sparks("r")["latencyMs"] == pytest.approx(latency_ms)


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


# --- one vocabulary, what broke, health, search and pages, detail, sampling from the start -------------------

TYPO = "signingSecrt"


def test_live_typo_is_stale_everywhere_and_the_reload_says_what_broke(gateway, conf_d, echo_upstream):
    api = conf_d.root / "api.yaml"
    api.write_text(api.read_text().replace("signingSecret", TYPO))
    assert wait_for(lambda: view(gateway)["summary"].startswith("generation 2"))
    shown = view(gateway)
    assert "1 stale object ·" in shown["summary"] and "middleware jwt (since " in shown["notice"]
    assert row_named(gateway, "middlewares", "jwt")[2] == "stale"
    problem = next(row for row in rows(gateway, "problems") if "jwt" in row[1])
    assert problem[3] == "stale" and TYPO in problem[2]                       # the same word in both tables
    newest = rows(gateway, "reloads")[0]
    assert newest[5].startswith('stale: middleware "jwt@file" (api.yaml:') and TYPO in newest[5]
    api.write_text(api.read_text().replace(TYPO, "signingSecret"))
    assert wait_for(lambda: rows(gateway, "reloads")[0][0] == "3")
    assert rows(gateway, "reloads")[0][5] == "fixed: middleware \"jwt@file\""
    assert row_named(gateway, "middlewares", "jwt")[2] == "ok"


def test_service_answering_502_is_down(conf_d, tmp_path, free_port):
    conf_d("api.yaml", lb_manifest('dead: {rule: "PathPrefix(`/`)", service: s}', f"http://127.0.0.1:{free_port}"))
    gk = Gatekeeper(conf_d.root, tmp_path / "gk.log", "--admin", "127.0.0.1:0")
    try:
        assert [requests.get(gk.url + "/x", timeout=5).status_code for _ in range(3)] == [502] * 3
        assert wait_for(lambda: row_named(gk, "services", "s")[4] == "down")
        health = next(row for row in view(gk)["tables"]["services"]["rows"] if row[0]["text"] == "s")[4]
        assert health["title"] == "3 of 3 answers 5xx in the last minute" and health["cls"] == "health-down"
        assert row_named(gk, "services", "s")[3] == "ok"                        # its state: defined fine
    finally:
        assert gk.stop() == 0


def synthetic_doc(routers: int) -> dict:
    return {"generation": 1, "routers": [
        {"name": f"r{i:05d}@file", "rule": f"Host(`h{i}.example`) && PathPrefix(`/v{i % 7}`)", "service": "s@file",
         "middlewares": [], "entryPoints": [], "priority": 0, "source": f"r.yaml:{i}",
         "state": "error" if i % 1000 == 0 else "ok", "error": "answers 503" if i % 1000 == 0 else None}
        for i in range(routers)], "middlewares": {}, "services": {}, "problems": [], "reloads": [], "traffic": {}}


@pytest.mark.parametrize("query, matching, page, first", [
    ({}, 10_000, 1, "r00000"),
    ({"page_routers": "3"}, 10_000, 3, "r00100"),
    ({"page_routers": "999"}, 10_000, 200, "r09950"),
    ({"page_routers": "x"}, 10_000, 1, "r00000"),
    ({"q": "H42.example"}, 1, 1, "r00042"),
    ({"q": "r0999"}, 10, 1, "r09990"),
    ({"state": "error"}, 10, 1, "r00000"),
    ({"state": "stale"}, 0, 1, None),
], ids=["first-page", "third-page", "past-the-end-clamped", "bad-page", "rule-search-any-case", "name-search",
        "state-filter", "nothing-matches"])
def test_search_filter_and_pages(query, matching, page, first):
    doc = synthetic_doc(10_000)
    table = build_view(doc, query)["tables"]["routers"]
    assert (table["matching"], table["page"], table["total"]) == (matching, page, 10_000)
    assert len(table["rows"]) == min(PAGE_SIZE, max(matching - (page - 1) * PAGE_SIZE, 0))
    assert (table["rows"][0][0]["text"] if table["rows"] else None) == first


def test_ten_thousand_routers_build_one_page_fast():
    doc = synthetic_doc(10_000)
    started = time.perf_counter()
    view_ = build_view(doc, {"q": "example", "page_routers": "7"})
    spent = time.perf_counter() - started
    assert len(view_["tables"]["routers"]["rows"]) == PAGE_SIZE
    assert spent < 1.0, f"{spent:.3f} s"          # measured ~0.1 s here; the page's poll is once a second
    page = make_dashboard(lambda: doc)
    seen = {}
    body = b"".join(page({"REQUEST_METHOD": "GET", "PATH_INFO": "/dashboard/", "QUERY_STRING": "page_routers=2"},
                         lambda s, h: seen.update(status=s)))
    assert seen["status"].startswith("200") and body.count(b"<tr>") < PAGE_SIZE + 20
    assert b"page 2 of 200" in body and b'href="?page_routers=3"' in body


def test_router_detail_shows_middleware_options_masked_and_no_secret(gateway):
    detail = view(gateway, "?kind=router&name=locked%40file")["detail"]
    fields = {label: value for label, value, _ in detail["fields"]}
    assert detail["title"] == "router locked@file" and fields["Rule"] == "PathPrefix(`/locked`)"
    assert fields["Middleware jwt@file"] == 'plugin.jwt {"keySource": "signingSecret", "usernameClaim": "sub"}'
    assert fields["State"] == "ok" and fields["Service"] == "s@file"
    service = {label: value for label, value, _ in view(gateway, "?kind=service&name=s%40file")["detail"]["fields"]}
    assert service["Health"].startswith("up") and "locked@file" in service["Used by"]
    assert view(gateway, "?kind=router&name=nothing")["detail"] is None
    page = requests.get(gateway.admin + "/dashboard/?kind=middleware&name=jwt%40file", timeout=5).text
    assert '<section id="detail"><h2>middleware jwt@file' in page and SECRET not in page


def test_sampling_starts_with_the_process(gateway):
    """Traffic sent before anyone opened the dashboard is already in the charts at the first look."""
    for _ in range(5):
        requests.get(gateway.url + "/open/a", timeout=5)
    time.sleep(2.5)   # the sampler's own pace (one sample a second) is what is under test
    assert len(row_named(gateway, "routers", "open")[10]) >= 2


@pytest.mark.parametrize("count, word, shown", [(0, "problem", "0 problems"), (1, "problem", "1 problem"),
                                                (2, "stale object", "2 stale objects"), (10_000, "router",
                                                                                         "10,000 routers")])
def test_plurals(count, word, shown):
    assert plural(count, word) == shown


def test_what_broke_compares_problems_by_file_and_object():
    before = [{"file": "a.yaml:3", "object": 'router "r"', "reason": "x", "state": "error"}]
    same_elsewhere = [{"file": "a.yaml:4", "object": 'router "r"', "reason": "x", "state": "error"}]
    now_stale = [{"file": "a.yaml:3", "object": 'router "r"', "reason": "x", "state": "stale"}]
    assert what_broke(before, same_elsewhere) == ([], [])                  # a line moved: nothing new
    assert what_broke(before, now_stale) == (now_stale, [])
    assert what_broke(before, []) == ([], before)


@pytest.mark.parametrize("name", ["%SCRIPT%", "%FORM%", "%TABLES%", '"><img src=x onerror=alert(1)>'],
                         ids=["script-placeholder", "form-placeholder", "tables-placeholder", "attribute-break"])
def test_names_are_text_in_the_page(name):
    """A name spelling one of the template's placeholders, or breaking out of an attribute, stays text."""
    from gatekeeper.ops.dashboard import page_html
    doc = synthetic_doc(1)
    doc["routers"][0].update(name=name, rule=f"Path(`/{name}`)")
    query = {"q": name, "kind": "router", "name": name}
    page = page_html(build_view(doc, query), query)
    assert page.count("<script>") == 1 and page.count("<form") == 1 and page.count('<table id="routers"') == 1
    assert "<img" not in page and page.count('"use strict"') == 1             # the script is inlined once
    assert '<a href="?kind=router&amp;name=' in page and html.escape(name) in page.split('<table id="routers"')[1]


@pytest.mark.slow
def test_sampling_under_workers_adds_every_worker(conf_d, echo_upstream, tmp_path):
    """With --workers 2 the sampler of the worker answering reads every worker's counters (their files)."""
    conf_d("api.yaml", lb_manifest('open: {rule: "PathPrefix(`/open`)", service: s}', echo_upstream.url))
    gk = Gatekeeper(conf_d.root, tmp_path / "gk.log", "--admin", "127.0.0.1:0", "--workers", "2")
    try:
        sent, pids = 0, set()

        def both_workers_answered() -> bool:   # new connections until both have (the kernel picks the worker)
            nonlocal sent
            with requests.Session() as fresh:
                assert fresh.get(gk.url + "/open/x", timeout=5).status_code == 200
            sent += 1
            pids.update(line.split("pid=")[1].split()[0] for line in gk.access_lines() if "pid=" in line)
            return sent >= 20 and len(pids) == 2
        assert wait_for(both_workers_answered, timeout=30), "the test needs both workers to answer"
        assert wait_for(lambda: row_named(gk, "routers", "open")[6] == str(sent), timeout=15)
        assert wait_for(lambda: len(row_named(gk, "routers", "open")[10]) >= 2, timeout=15)
    finally:
        assert gk.stop() == 0


@pytest.mark.parametrize("service, traffic, health, why", [
    ({"state": "error"}, {}, "down", "not serving: its definition is in error"),
    ({"state": "ok", "serverStatus": {"http://a": "DOWN", "http://b": "DOWN"}}, {}, "down", "0/2 servers up"),
    ({"state": "ok", "serverStatus": {"http://a": "UP", "http://b": "DOWN"}}, {}, "degraded", "1/2 servers up"),
    ({"state": "ok", "serverStatus": {"http://a": "UP"}}, {"recent": 4, "recent5xx": 0}, "up",
     "1/1 server up; 0 of 4 answers 5xx in the last minute"),
    ({"state": "stale"}, {"recent": 4, "recent5xx": 1}, "degraded", "1 of 4 answers 5xx in the last minute"),
    ({"state": "ok"}, {"recent": 2, "recent5xx": 2}, "down", "2 of 2 answers 5xx in the last minute"),
    ({"state": "ok", "health": "serving the fallback (main is down)"}, {}, "degraded",
     "serving the fallback (main is down)"),
    ({"state": "ok"}, {}, "up", "no health check, no 5xx in the last minute"),
], ids=["in-error", "all-checked-down", "some-checked-down", "checked-up-no-5xx", "stale-some-5xx", "only-5xx",
        "failover-fallback", "nothing-known"])
def test_service_health(service, traffic, health, why):
    from gatekeeper.ops.cells import service_health
    doc = {"traffic": {"r@file": traffic}}
    assert service_health(doc, "s@file", service, ["r@file"]) == (health, why)


def test_a_file_that_no_longer_parses_is_a_stale_file(gateway, conf_d):
    api = conf_d.root / "api.yaml"
    api.write_text(api.read_text() + "\n  : [\n")
    assert wait_for(lambda: view(gateway)["summary"].startswith("generation 2"))
    stale = requests.get(gateway.admin + "/readyz", timeout=5).json()["stale"]
    assert [(s["kind"], s["name"]) for s in stale] == [("file", "api.yaml")] and "not valid YAML" in stale[0]["error"]
    problem = next(row for row in rows(gateway, "problems") if row[0].startswith("api.yaml"))
    assert problem[3] == "stale" and rows(gateway, "reloads")[0][5].startswith("stale: api.yaml:")
    assert requests.get(gateway.url + "/open/x", timeout=5).status_code == 200       # the last good version serves
